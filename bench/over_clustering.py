"""Over-clustering a large query on a sample (every other cell joining the nearest cluster centre) against
over-clustering every cell: time, and how far the majority-voting consensus moves.

    python bench/over_clustering.py --cells 100000 --sample 20000

The query is made by ``bench/atlas_data.py`` from the shipped subset (or ``--source``), embedded by the baseline
fitted on the source; 15 % of the cells are given a wrong label at random (the "calls"), and each consensus is
scored against the true labels. One process, both cores; the first clustering also compiles numba's kernels, so
the whole-query clustering runs twice and the second time is reported.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

from atlas_data import SOURCE, make_atlas  # noqa: E402


def main() -> None:
    import anndata as ad
    import numpy as np

    from inference.backends.baseline import BaselineBackend
    from inference.consensus import majority_vote, over_cluster
    from inference.counts import Counts, DataInput

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, default=SOURCE)
    p.add_argument("--cells", type=int, default=100_000)
    p.add_argument("--sample", type=int, default=20_000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "query.h5ad"
        make_atlas(args.source, args.cells, path, seed=0)
        backend = BaselineBackend()
        backend.fit(ad.read_h5ad(args.source))
        with Counts(DataInput(str(path), path.name, "-")) as counts:
            basis = np.concatenate([backend.embed(block).basis for _, block in counts.blocks(10_000)])
            labels = counts.obs["celltype"].astype(str).to_numpy()
    rng = np.random.default_rng(0)
    calls = np.where(rng.random(len(labels)) < 0.15, rng.choice(np.unique(labels), len(labels)), labels)
    over_cluster(basis)  # compiles numba's kernels
    rows = {}
    for name, cap in (("every cell", len(basis)), (f"sample of {args.sample:,}", args.sample)):
        started = time.perf_counter()
        clusters = over_cluster(basis, max_cells=cap)
        seconds = time.perf_counter() - started
        rows[name] = (clusters, majority_vote(clusters, calls), seconds)
    (whole, whole_vote, _), (_, sampled_vote, _) = rows.values()
    for name, (clusters, vote, seconds) in rows.items():
        print(json.dumps({"clustered": name, "cells": len(basis), "seconds": round(seconds, 1),
                          "clusters": len(set(clusters)), "calls_accuracy": round(float((calls == labels).mean()), 4),
                          "consensus_accuracy": round(float((vote == labels).mean()), 5),
                          "consensus_agrees_with_every_cell": round(float((vote == whole_vote).mean()), 5)}))


if __name__ == "__main__":
    main()
