"""The UMAP stage of a run computed, then reused: the same 2,500-cell query annotated twice with the baseline.

    python bench/umap_layout.py --data ../shared/data/pbmc3k_10x.h5ad

The query is 2,500 cells drawn (seed 0, without replacement) from pbmc3k, the reference the whole of pbmc3k
(label ``celltype``); both runs share one data home's embedding store, as two runs of one lab server do. The first
computes the embedding and the layout and keeps both; the second reuses both. Reports each run's UMAP stage and
total seconds, the ratio, whether the second said it reused the layout, and the machine, date, commit and command.
Writes bench/out/umap_layout.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "pbmc3k_10x.h5ad")
    parser.add_argument("--cells", type=int, default=2_500)
    args = parser.parse_args()

    import anndata as ad
    import numpy as np

    from app.annotate import sha256_of
    from inference.backends import create_backend
    from inference.layout_store import REUSED
    from inference.pipeline import AnnotationJob, DataInput, run_annotation

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        full = ad.read_h5ad(args.data)
        take = np.sort(np.random.default_rng(0).choice(full.n_obs, size=min(args.cells, full.n_obs), replace=False))
        query = home / "query.h5ad"
        full[take].copy().write_h5ad(query)

        def given(path: Path) -> DataInput:
            return DataInput(str(path), path.name, sha256_of(path))

        runs = []
        for name in ("first", "second"):
            said: list[str] = []
            job = AnnotationJob(model_id="baseline", query=given(query), reference=given(args.data),
                                label_column="celltype", truth_column="celltype", out_dir=str(home / name),
                                heads_dir=str(home / "heads"), embeddings_dir=str(home / "embeddings"))
            began = time.perf_counter()
            result = run_annotation(job, create_backend("baseline", None, None),
                                    {"checksum": "baseline:v1", "trained": True},
                                    progress=lambda stage, _d, _t, said=said: said.append(stage))
            umap = result["provenance"]["umap"]
            runs.append({"run": name, "total_s": round(time.perf_counter() - began, 2),
                         "umap_stage_s": result["stage_timings"]["UMAP"], "layout_reused": umap["reused"],
                         "stage_said_reused": f"UMAP: {REUSED}" in said, "layout_key": umap["layout_key"],
                         "method": umap["method"], "cells": umap["n_cells"]})
    first, second = runs
    out = {"runs": runs, "umap_ratio_first_over_reused": round(first["umap_stage_s"] / second["umap_stage_s"], 1),
           "machine": f"{platform.node()} · {platform.processor() or platform.machine()} · {os.cpu_count()} CPUs "
                      f"(load {os.getloadavg()[0]:.1f})",
           "date": datetime.datetime.now().isoformat(timespec="minutes"),
           "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                    text=True).stdout.strip(),
           "command": " ".join(["python", *sys.argv])}
    (REPO / "bench" / "out").mkdir(parents=True, exist_ok=True)
    (REPO / "bench" / "out" / "umap_layout.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
