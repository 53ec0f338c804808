"""How a baseline run's time and memory grow with the cells: 1k, 10k, 100k query cells, end to end through the
runs service on a LocalCluster (the embedded default), against a real labelled pbmc3k reference.

    python bench/scaling.py --cells 1000 10000 100000                # the shipped 599-cell subset as reference
    python bench/scaling.py --data pbmc3k_10x.h5ad --cells 1000 ...  # the full 2,700-cell pbmc3k (10x, CC BY 4.0)

Queries are made by resampling pbmc3k's cells with replacement (seeded) and thinning each copy's counts
binomially (each UMI kept with probability 0.8), labels unchanged, cell names made unique. Every worker compiles
umap-learn's kernels (both neighbour searches) before the first size is timed. Memory is the resident set of
the whole platform (this process, which hosts the server side and the scheduler, plus every Dask worker process),
sampled every 0.2 s; each sample is attributed to the run's stage at that moment. Writes bench/out/scaling.json
and docs/images/scaling.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as _platform
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30
THINNING = 0.8


def tree_rss(pid: int) -> int:
    import psutil

    root = psutil.Process(pid)
    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def resample(data: Path, n: int, out: Path, seed: int = 0) -> Path:
    import anndata as ad
    import numpy as np
    import scipy.sparse as sp

    full = ad.read_h5ad(data)
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, full.n_obs, n)
    query = full[rows].copy()
    # each copy keeps each UMI with probability 0.8 (binomial thinning, as a shallower sequencing of the same
    # cell): real expression structure, but no two cells identical (exact duplicates distort nearest neighbours)
    x = sp.csr_matrix(query.X)
    x.data = rng.binomial(x.data.astype(np.int64), THINNING).astype(np.float32)
    x.eliminate_zeros()
    query.X = x
    query.obs_names = [f"{name}-{i}" for i, name in enumerate(full.obs_names[rows])]
    query.write_h5ad(out)
    return out


def warm_workers(client) -> None:  # noqa: ANN001
    """Compile umap-learn's and the over-clustering's numba kernels on every worker first: a cold worker adds ~30 s
    to its first UMAP and ~50 s to its first majority voting. 5,000 points: above 4,096 umap-learn searches
    neighbours with NN-descent, below exactly; both get compiled."""
    def warm() -> None:
        import numpy as np

        from inference.consensus import over_cluster
        from inference.layout import umap_layout

        basis = np.random.default_rng(0).normal(size=(5_000, 10)).astype(np.float32)
        umap_layout(basis[:500])
        umap_layout(basis)
        over_cluster(basis)

    client.run(warm)


def run_once(platform, ref_id: str, query_id: str, options: dict | None = None) -> dict:  # noqa: ANN001
    """Submit, follow the stage and the memory every 0.2 s; the peak resident set per stage."""
    pid = os.getpid()
    before = tree_rss(pid)
    started = time.perf_counter()
    run = platform.runs.submit("cell-type-annotation", "baseline", query_id, reference_id=ref_id,
                               label_column="celltype", truth_column="celltype", options=options)
    peaks: dict[str, int] = {}
    while True:
        status = platform.runs.status(run.id)
        rss = tree_rss(pid)
        peaks[status["stage"]] = max(peaks.get(status["stage"], 0), rss)
        if status["status"] not in ("queued", "running"):
            break
        time.sleep(0.2)
    wall = time.perf_counter() - started
    row = platform.runs.get(run.id)
    if row.status != "done":
        raise RuntimeError(row.error)
    return {"wall_s": round(wall, 2), "stage_s": row.stage_timings, "rss_before_gib": round(before / GIB, 2),
            "peak_rss_gib": round(max(peaks.values()) / GIB, 2),
            "peak_rss_by_stage_gib": {k: round(v / GIB, 2) for k, v in peaks.items()},
            "macro_f1": row.metrics.get("macro_f1"), "umap": row.provenance.get("umap", {})}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [r["cells"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.loglog(cells, [r["wall_s"] for r in rows], "o-", label="submit → done")
    for stage in ("embedding reference", "embedding query", "majority voting", "UMAP", "writing"):
        # a stage a run skipped (the reference, once its head is cached) is left out, not drawn as zero
        a.loglog(cells, [r["stage_s"].get(stage, float("nan")) for r in rows], ".--", label=stage)
    a.loglog(cells, [rows[0]["wall_s"] * c / cells[0] for c in cells], ":", color="grey", label="linear")
    a.set_xlabel("query cells")
    a.set_ylabel("seconds")
    a.legend(fontsize=8)
    a.set_title("Time")
    b.semilogx(cells, [r["peak_rss_gib"] for r in rows], "o-", label="peak (server + workers)")
    b.semilogx(cells, [r["rss_before_gib"] for r in rows], "s--", label="before the run")
    b.axhline(8, color="red", linestyle=":", label="8 GiB goal")
    b.set_xlabel("query cells")
    b.set_ylabel("GiB resident")
    b.legend(fontsize=8)
    b.set_title("Memory")
    fig.suptitle("Baseline annotation, end to end through the runs service (2-worker LocalCluster, CPU)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO / "tests" / "data" / "pbmc3k_subset.h5ad",
                   help="pbmc3k .h5ad with raw counts and obs['celltype'] (default: the shipped subset)")
    p.add_argument("--cells", type=int, nargs="+", default=[1000, 10_000, 100_000])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--generator", choices=["resample", "atlas"], default="resample",
                   help="resample: the query made in memory (as published up to 100k); atlas: bench/atlas_data.py, "
                        "block by block in two cell-type mixes (what a 1,000,000-cell query needs)")
    p.add_argument("--majority-voting", action="store_true", help="runs with majority voting (over-clustering)")
    p.add_argument("--plot-only", action="store_true", help="redraw the image from bench/out/scaling.json")
    p.add_argument("--name", default="scaling",
                   help="bench/out/<name>.json and docs/images/<name>.png (the atlas runs: scaling-atlas)")
    p.add_argument("--no-publish", action="store_true",
                   help="print the rows only; leave bench/out/scaling.json and docs/images/scaling.png as they are")
    args = p.parse_args()
    out, image = REPO / "bench" / "out" / f"{args.name}.json", REPO / "docs" / "images" / f"{args.name}.png"
    if args.plot_only:
        plot(json.loads(out.read_text())["rows"], image)
        return

    from app.platform import Platform
    from app.settings import Settings

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        platform = Platform(Settings.from_env({"HELICAL_PLATFORM_HOME": f"{tmp}/home",
                                               "HELICAL_PLATFORM_WORKERS": str(args.workers),
                                               "HELICAL_PLATFORM_GENERATE_WEIGHTS": "none",
                                               "HELICAL_PLATFORM_DEVICE": "cpu",
                                               "HELICAL_PLATFORM_MAX_UPLOAD_MB": "65536"}))
        warm_workers(platform.compute(timeout=300).client)
        with open(args.data, "rb") as fh:
            ref = platform.datasets.ingest(fh, "pbmc3k reference.h5ad")
        for n in args.cells:
            path = Path(tmp) / f"query-{n}.h5ad"
            if args.generator == "atlas":
                from atlas_data import make_atlas

                make_atlas(args.data, n, path)
            else:
                resample(args.data, n, path)
            with open(path, "rb") as fh:
                t = time.perf_counter()
                query = platform.datasets.ingest(fh, path.name)
                upload_s = time.perf_counter() - t
            path.unlink()
            result = {"cells": n, "store_and_check_s": round(upload_s, 2), **run_once(platform, ref.id, query.id,
                                                                             {"majority_voting": args.majority_voting})}
            result["s_per_1k_cells"] = round(1000 * result["wall_s"] / n, 3)
            rows.append(result)
            print(json.dumps(result), flush=True)
        platform.close()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    meta = {"date": datetime.now(UTC).isoformat(timespec="minutes"), "commit": commit, "host": _platform.node(),
            "cpus": os.cpu_count(), "workers": args.workers, "generator": args.generator,
            "majority_voting": args.majority_voting}
    print(json.dumps(meta))
    if not args.no_publish:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        plot(rows, image)
    print("\n| cells | submit → done (s) | s per 1k cells | embed query (s) | predicting (s) | majority voting (s) | "
          "UMAP (s) | UMAP fit on, start | writing (s) | peak GiB (stage) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s, u = r["stage_s"], r["umap"]
        stage = max(r["peak_rss_by_stage_gib"], key=r["peak_rss_by_stage_gib"].get)
        print(f"| {r['cells']:,} | {r['wall_s']} | {r['s_per_1k_cells']} | {s.get('embedding query', 0):.1f} | "
              f"{s.get('predicting', 0):.1f} | {s.get('majority voting', 0):.1f} | {s.get('UMAP', 0):.1f} | "
              f"{u.get('fit_on', 0):,}, {u.get('init', '')} | {s.get('writing', 0):.1f} | "
              f"{r['peak_rss_gib']} ({stage}) |")
    if len(rows) >= 2:
        print(f"\ntime per cell, {rows[-1]['cells']:,} vs {rows[-2]['cells']:,}: "
              f"{rows[-1]['s_per_1k_cells'] / rows[-2]['s_per_1k_cells']:.2f}x")


if __name__ == "__main__":
    main()
