"""Time and peak memory of the scIB integration metrics (inference/integration_metrics.py) at 10k and 100k cells,
in full and under the sampling rule.

    python bench/integration_metrics.py                                  # 10k and 100k, sampled; 10k full
    python bench/integration_metrics.py --cells 10000 100000 --full 10000 20000 40000

Data: real PBMCs (the shared pbmc3k_10x.h5ad, 2,700 cells, 8 types) resampled with replacement (seeded) and
thinned binomially (each UMI kept with probability 0.8), so no two cells are identical; two batches at random,
batch "b" with a simulated effect (the counts of a random 10 % of genes multiplied by 3); normalize_total, log1p,
2,000 HVGs, scale, PCA 50 = the unintegrated embedding. The "integrated" embedding is that PCA with each batch's
mean removed (a cheap stand-in for an integration method: the metrics' cost depends on the cells and the
dimensions, not on the method). Each measurement runs in a fresh subprocess (jax and numba compilation included,
as in a worker's first run); peak memory is that process's own high-water mark (VmHWM of /proc/self/status:
ru_maxrss would carry the parent's peak across fork + exec).
Prints one JSON line per measurement and a markdown table; embeddings are cached in bench/out/.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
DATA = REPO.parent / "shared" / "data" / "pbmc3k_10x.h5ad"
THINNING = 0.8


def make_data(n: int, data: Path = DATA, seed: int = 0) -> Path:
    """Embeddings, batches and labels of n resampled PBMCs with a simulated batch effect, cached as .npz."""
    path = OUT / f"integration_metrics_{n}_seed{seed}.npz"
    if path.exists():
        return path
    import anndata as ad
    import numpy as np
    import scanpy as sc
    import scipy.sparse as sp

    full = ad.read_h5ad(data)
    sc.pp.filter_genes(full, min_cells=3)
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, full.n_obs, n)
    x = sp.csr_matrix(full.X)[rows]
    x.data = rng.binomial(x.data.astype(np.int64), THINNING).astype(np.float32)
    batch = np.where(rng.random(n) < 0.5, "a", "b")
    genes = rng.choice(x.shape[1], x.shape[1] // 10, replace=False)
    scale = np.ones(x.shape[1], dtype=np.float32)
    scale[genes] = 3.0
    in_b = batch == "b"
    x = sp.vstack([x[~in_b], x[in_b] @ sp.diags(scale)]).tocsr()  # rows reordered: a first, then b
    order = np.concatenate([np.flatnonzero(~in_b), np.flatnonzero(in_b)])
    x.eliminate_zeros()
    sys.path.insert(0, str(REPO))
    from tests.multibatch import plain_pcs

    pcs = plain_pcs(ad.AnnData(x))
    batch = batch[order]
    labels = np.asarray(full.obs["celltype"], dtype=str)[rows][order]
    corrected = pcs.copy()
    for b in np.unique(batch):
        corrected[batch == b] -= corrected[batch == b].mean(axis=0)
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez(path, embedding=corrected, unintegrated=pcs, batch=batch, labels=labels)
    return path


def _steps(labels: bool) -> list[str]:
    """The names of integration_metrics' progress steps, in order: the neighbour graph, then each library call."""
    from dataclasses import asdict

    from scib_metrics.benchmark import BatchCorrection, BioConservation

    from inference.integration_metrics import LABEL_FREE

    calls = [name for collection in (BioConservation(), BatchCorrection()) for name, use in asdict(collection).items()
             if use is not False and (labels or name in LABEL_FREE)]
    return ["neighbours"] + calls


def _high_water_kib() -> int:
    """This process's peak resident memory (KiB) since its exec; ru_maxrss where /proc is missing."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _child(path: str, max_cells: int | None, labels: bool, warm: bool) -> None:
    """One measurement, in its own process: prints one JSON object with this process's peak RSS."""
    import numpy as np

    sys.path.insert(0, str(REPO))
    from inference.integration_metrics import integration_metrics

    d = np.load(path)
    args = (d["embedding"], d["batch"], d["labels"] if labels else None, d["unintegrated"])
    if warm:  # a worker's earlier run: numba's one-off compilation done (jax still compiles for new shapes)
        integration_metrics(*args, max_cells=3_000, seed=1)
    names = _steps(labels)
    steps: dict[str, list[float]] = {}  # name: [wall seconds, CPU seconds of the process, all threads]
    last = [0.0, 0.0]

    def progress(stage: str, done: int, total: int) -> None:
        now = [time.perf_counter(), time.process_time()]
        steps[names[done - 1]] = [round(now[0] - last[0], 1), round(now[1] - last[1], 1)]
        last[:] = now

    load = os.getloadavg()[0]
    start = last[:] = [time.perf_counter(), time.process_time()]
    out = integration_metrics(*args, max_cells=max_cells, progress=progress)
    seconds, cpu = time.perf_counter() - start[0], time.process_time() - start[1]
    peak = _high_water_kib()
    print(json.dumps({"seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1), "peak_rss_mib": round(peak / 1024),
                      "load_average": [round(load, 1), round(os.getloadavg()[0], 1)], "steps": steps, **out}))


def measure(n: int, max_cells: int | None, labels: bool = True, warm: bool = False) -> dict:
    """One size in a fresh subprocess (so its peak memory is its own)."""
    path = make_data(n)
    cmd = [sys.executable, __file__, "--child", str(path), str(max_cells or 0), str(int(labels)), str(int(warm))]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"cells": n, "max_cells": max_cells, "labels": labels, "warm": warm, **result}


def row(r: dict) -> str:
    s = r["sample"]
    how = f"sample of {s['cells']:,}" if s["sampled"] else "all cells"
    heavy = ", ".join(f"{k} {v[0]:g}" for k, v in sorted(r["steps"].items(), key=lambda kv: -kv[1][0])[:4])
    agg = r["aggregates"]
    score = " / ".join("–" if agg[k] is None else f"{agg[k]:.3f}" for k in ("Bio conservation", "Batch correction"))
    return (f"| {r['cells']:,} | {how} | {'yes' if r['labels'] else 'no'} | {'warm' if r['warm'] else 'cold'} | "
            f"{r['seconds']:.1f} | {r['cpu_seconds']:.1f} | {r['peak_rss_mib']:,} | {heavy} | {score} |")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], int(sys.argv[3]) or None, bool(int(sys.argv[4])), bool(int(sys.argv[5])))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sampled", type=int, nargs="*", default=[100_000],
                        help="sizes run under the default sampling rule (DEFAULT_MAX_CELLS)")
    parser.add_argument("--full", type=int, nargs="*", default=[10_000, 20_000, 40_000],
                        help="sizes run in full (no sampling)")
    parser.add_argument("--warm", type=int, nargs="*", default=[100_000],
                        help="sampled sizes also run warm (after a 3,000-cell run in the same process)")
    parser.add_argument("--no-labels", type=int, nargs="*", default=[100_000],
                        help="sampled sizes also run without labels (label-free metrics only)")
    parser.add_argument("--max-cells", type=int, nargs="*", default=[0],
                        help="the sampling rule's max_cells for the sampled runs (0: DEFAULT_MAX_CELLS)")
    args = parser.parse_args()
    rules = [m or None for m in args.max_cells]
    plan = ([(n, 10**12, True, False) for n in args.full]
            + [(n, m, True, False) for n in args.sampled for m in rules]
            + [(n, m, True, True) for n in args.warm for m in rules]
            + [(n, m, False, False) for n in args.no_labels for m in rules])
    results = []
    for n, max_cells, labels, warm in plan:
        r = measure(n, max_cells, labels, warm)
        print(json.dumps(r), flush=True)
        results.append(r)
    print("\n| cells | computed on | labels | process | seconds | CPU seconds | peak RSS MiB | slowest steps (s) "
          "| bio / batch |\n|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(row(r))


if __name__ == "__main__":
    main()
