"""End-to-end runs through the runs service on a LocalCluster: submit -> results ready, against the pipeline's
own compute (the sum of its stage timings), cold (first run of a model: actor created, model loaded) and warm.

    python bench/runs.py --cells 500

Prints JSON lines and a markdown table. The overhead ratio (wall / compute) of a warm run is the cost of the
service, the cluster and the polling around the same work.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=500)
    p.add_argument("--models", nargs="+", default=["baseline", "geneformer", "scgpt"])
    args = p.parse_args()

    import anndata as ad

    from app.platform import Platform
    from app.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        cells = ad.read_h5ad(REPO / "tests" / "data" / "pbmc3k_subset.h5ad")[: args.cells].copy()
        path = Path(tmp) / "cells.h5ad"
        cells.write_h5ad(path)
        platform = Platform(Settings.from_env({"HELICAL_PLATFORM_HOME": f"{tmp}/home",
                                               "HELICAL_PLATFORM_DEVICE": "cpu"}))
        platform.compute(timeout=300)
        with open(path, "rb") as fh:
            ds = platform.datasets.ingest(fh, path.name)
        rows = []
        for model in args.models:
            for attempt in ("cold", "warm"):
                started = time.perf_counter()
                run = platform.runs.submit("cell-type-annotation", model, ds.id, label_column="celltype",
                                           options={"seed": 0 if attempt == "cold" else 1})
                while platform.runs.status(run.id)["status"] in ("queued", "running"):
                    time.sleep(0.05)
                wall = time.perf_counter() - started
                row = platform.runs.get(run.id)
                assert row.status == "done", row.error
                compute = sum(row.stage_timings.values())
                rows.append({"model": model, "run": attempt, "wall_s": round(wall, 2),
                             "compute_s": round(compute, 2), "ratio": round(wall / compute, 3),
                             "stages": row.stage_timings})
                print(json.dumps(rows[-1]), flush=True)
        platform.close()
    print("\n| model | run | submit → done (s) | pipeline compute (s) | ratio |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['run']} | {r['wall_s']} | {r['compute_s']} | {r['ratio']} |")


if __name__ == "__main__":
    main()
