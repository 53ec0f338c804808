"""A 100,000-cell query mapped to a 1,000,000-cell reference (kNN head), end to end through the runs service, and
the sampled fit of a large reference against the full fit.

    python bench/large_reference.py --source pbmc3k_10x.h5ad               # 1,000,000-cell reference, 100k query
    python bench/large_reference.py --source pbmc3k_10x.h5ad --compare     # and the 100k-reference comparison

The source's cells are split in two halves (even and odd rows), so that no query cell is a thinned copy of a
reference cell: the reference is made from one half, the query from the other, both by ``bench/atlas_data.py``
(block by block; half of each file in mix B: the types drawn evenly and every gene scaled by another donor's
factor, a different donor for the reference and the query). Each row is one run through the runs service on a
2-worker LocalCluster (the embedded default), with the whole platform's peak resident memory (this process and
every worker, sampled every 0.2 s). A first run on a reference trains its head (the labels read at once; at most
at most 100,000 of its cells, a sample keeping each type's share, read from the file a block at a time); a second
run finds it cached.

``--compare`` adds a 100,000-cell reference, once trained on every cell (``max_reference_cells`` 0: the plain
recipe, the whole reference in memory) and once on a stratified sample of half of it (``--sample``), for both heads,
each scored on the same query: macro-F1 over all cells, over mix A (the source's proportions) and over mix B (the
types evenly, another donor's gene scales). Prints JSON rows and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as _platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

from atlas_data import make_atlas  # noqa: E402
from scaling import GIB, tree_rss, warm_workers  # noqa: E402


def halves(source: Path, folder: Path) -> tuple[Path, Path]:
    import anndata as ad

    full = ad.read_h5ad(source)
    one, other = folder / "source-even.h5ad", folder / "source-odd.h5ad"
    full[0::2].copy().write_h5ad(one)
    full[1::2].copy().write_h5ad(other)
    return one, other


def run(platform, query_id: str, ref_id: str, options: dict) -> dict:  # noqa: ANN001
    pid = os.getpid()
    started = time.perf_counter()
    submitted = platform.runs.submit("cell-type-annotation", "baseline", query_id, reference_id=ref_id,
                                     label_column="celltype", truth_column="celltype", options=options)
    peaks: dict[str, int] = {}
    while True:
        status = platform.runs.status(submitted.id)
        peaks[status["stage"]] = max(peaks.get(status["stage"], 0), tree_rss(pid))
        if status["status"] not in ("queued", "running"):
            break
        time.sleep(0.2)
    wall = time.perf_counter() - started
    row = platform.runs.get(submitted.id)
    if row.status != "done":
        raise RuntimeError(row.error)
    head = row.provenance["head"]
    return {"wall_s": round(wall, 1), "stage_s": row.stage_timings, "peak_rss_gib": round(max(peaks.values()) / GIB, 2),
            "peak_stage": max(peaks, key=peaks.get), "macro_f1": round(row.metrics["macro_f1"], 4),
            "head_reused": head["reused"], "reference_cells": head["reference_cells"],
            "reference_sample": head.get("reference_sample"), "run_id": row.id}


def by_mix(platform, run_id: str, query_path: Path) -> dict:  # noqa: ANN001
    """Macro-F1 over the query's mix A and mix B cells (the run's table and the query's obs, same order)."""
    import anndata as ad
    import pandas as pd

    from inference.metrics import annotation_metrics

    table = pd.read_parquet(Path(platform.runs.get(run_id).result_dir) / "predictions.parquet",
                            columns=["predicted_label", "true_label"])
    mix = ad.read_h5ad(query_path, backed="r").obs["mix"].astype(str).to_numpy()
    return {f"macro_f1_mix_{m}": round(annotation_metrics(table["true_label"].to_numpy()[mix == m],
                                                          table["predicted_label"].to_numpy()[mix == m])["macro_f1"],
                                       4) for m in ("A", "B")}


def ingest(platform, path: Path) -> tuple[str, float]:  # noqa: ANN001
    started = time.perf_counter()
    with open(path, "rb") as fh:
        ds = platform.datasets.ingest(fh, path.name)
    return ds.id, round(time.perf_counter() - started, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, default=REPO / "tests" / "data" / "pbmc3k_subset.h5ad",
                   help="labelled .h5ad of raw counts, obs['celltype'] (e.g. the full pbmc3k)")
    p.add_argument("--reference-cells", type=int, default=1_000_000)
    p.add_argument("--query-cells", type=int, default=100_000)
    p.add_argument("--compare", action="store_true", help="also the 100k reference: full fit against the sample")
    p.add_argument("--skip-large", action="store_true", help="only the comparison")
    p.add_argument("--sample", type=int, default=50_000, help="the sampled fit's max_reference_cells (--compare)")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()

    from app.platform import Platform
    from app.settings import Settings

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-large-ref-") as tmp:
        folder = Path(tmp)
        ref_source, query_source = halves(args.source, folder)
        platform = Platform(Settings.from_env({"HELICAL_PLATFORM_HOME": f"{tmp}/home",
                                               "HELICAL_PLATFORM_WORKERS": str(args.workers),
                                               "HELICAL_PLATFORM_GENERATE_WEIGHTS": "none",
                                               "HELICAL_PLATFORM_DEVICE": "cpu",
                                               "HELICAL_PLATFORM_MAX_UPLOAD_MB": "65536"}))
        try:
            warm_workers(platform.compute(timeout=300).client)
            query_path = folder / "query.h5ad"
            made = make_atlas(query_source, args.query_cells, query_path, seed=2)
            query_id, query_s = ingest(platform, query_path)
            print(json.dumps({"query": made, "store_and_check_s": query_s}), flush=True)
            sizes = [] if args.skip_large else [args.reference_cells]
            if args.compare:
                sizes.append(100_000)
            for n_ref in sizes:
                ref_path = folder / f"reference-{n_ref}.h5ad"
                made = make_atlas(ref_source, n_ref, ref_path, seed=1)
                ref_id, ref_s = ingest(platform, ref_path)
                ref_path.unlink()
                print(json.dumps({"reference": made, "store_and_check_s": ref_s}), flush=True)
                plans = [("knn", {"head": "knn"}), ("knn", {"head": "knn"})]  # trains, then cached
                if n_ref == 100_000 and args.compare:
                    plans = [(h, {"head": h, "max_reference_cells": cap}) for h in ("knn", "logistic_regression")
                             for cap in (0, args.sample)]
                for head, options in plans:
                    row = {"reference_cells_file": n_ref, "query_cells": args.query_cells, "head": head,
                           "max_reference_cells": options.get("max_reference_cells", 100_000),
                           **run(platform, query_id, ref_id, options)}
                    row.update(by_mix(platform, row["run_id"], query_path))
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        finally:
            platform.close()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    print(json.dumps({"date": datetime.now(UTC).isoformat(timespec="minutes"), "commit": commit,
                      "host": _platform.node(), "cpus": os.cpu_count(), "workers": args.workers,
                      "source": args.source.name}))
    print("\n| reference (file) | head | max cells | trained on | head | submit → done (s) | training (s) | "
          "embed + classify query (s) | UMAP (s) | peak GiB (stage) | macro-F1 | mix A | mix B |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s = r["stage_s"]
        training = s.get("embedding reference", 0) + s.get("training head", 0)
        query = s.get("embedding query", 0) + s.get("predicting", 0)
        print(f"| {r['reference_cells_file']:,} | {r['head']} | {r['max_reference_cells'] or 'all'} | "
              f"{r['reference_cells']:,} | {'cached' if r['head_reused'] else 'trained'} | {r['wall_s']} | "
              f"{training:.1f} | {query:.1f} | {s.get('UMAP', 0):.1f} | {r['peak_rss_gib']} ({r['peak_stage']}) | "
              f"{r['macro_f1']:.3f} | {r['macro_f1_mix_A']:.3f} | {r['macro_f1_mix_B']:.3f} |")


if __name__ == "__main__":
    main()
