"""Fine-tuning speed: our epoch loop against bare helical ``GeneformerFineTuningModel.train``, same checkpoint,
same cells, same split, same machine.

    python bench/finetune.py --cells 40 --epochs 1             # CPU, real-size generated gf-6L-10M-i2048
    python bench/finetune.py --device cuda --cells 2000 --epochs 3 --variant gf-12L-38M-i4096

Both paths tokenise with helical's ``process_data`` and train with AdamW at the same learning rate, batch size
and frozen layers, then validate on the same held-back fifth; ours also keeps the best epoch's weights. Each path
runs in a fresh process (its own peak memory), alternating bare/ours ``--repeats`` times; the table gives each
run and the medians. Training cells per second per epoch = training cells x epochs / seconds. The checkpoint is
generated (untrained): only the speed means anything.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
CELLS_FILE = REPO / "tests" / "data" / "pbmc3k_subset.h5ad"


def measure(args: argparse.Namespace) -> dict:
    import anndata as ad
    import numpy as np
    import torch

    sys.path.insert(0, str(REPO))
    from inference.backends import create_backend
    from inference.backends.common import helical_input
    from inference.finetune import FineTuneSettings, fine_tune, validation_split
    from inference.finetune_geneformer import Adapter
    from inference.weights import WeightsLocations

    torch.set_num_threads(torch.get_num_threads())
    loc = WeightsLocations(staged=OUT / "none", generated=Path(args.weights), helical_cache=OUT / "none")
    backend = create_backend("geneformer", args.variant, loc, device=args.device)
    backend.load()
    cells = ad.read_h5ad(CELLS_FILE)[: args.cells].copy()
    labels = cells.obs["celltype"].astype(str).to_numpy()
    classes = sorted(set(labels))
    settings = FineTuneSettings(epochs=args.epochs, learning_rate=5e-5, frozen_layers=args.frozen_layers,
                                batch_size=args.batch_size, patience=args.epochs + 1)
    adapter = Adapter(backend, len(classes), args.batch_size, 0)
    held = validation_split(labels, settings.validation_fraction, settings.seed)
    started = time.perf_counter()
    if args.path == "ours":
        fine_tune(adapter, cells, labels, settings, {"checksum": "bench"})
    else:
        model = adapter.model
        with_labels = model.process_data(helical_input(cells), gene_names="ensembl_id").add_column(
            "cell_types", [classes.index(v) for v in labels])
        train = with_labels.select(np.flatnonzero(~held).tolist())
        val = with_labels.select(np.flatnonzero(held).tolist())
        model.train(train_dataset=train, validation_dataset=val, label="cell_types", epochs=args.epochs,
                    freeze_layers=args.frozen_layers, optimizer_params={"lr": 5e-5}, silent=True)
    seconds = time.perf_counter() - started
    train_cells = int((~held).sum())
    return {"path": args.path, "variant": args.variant, "device": args.device, "cells": args.cells,
            "train_cells": train_cells, "epochs": args.epochs, "seconds": round(seconds, 2),
            "train_cells_per_s": round(train_cells * args.epochs / seconds, 3),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=40)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=12)
    p.add_argument("--frozen-layers", type=int, default=2)
    p.add_argument("--variant", default="gf-6L-10M-i2048")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--size", default="real", choices=["real", "tiny"])
    p.add_argument("--path", choices=["ours", "bare"], help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    p.add_argument("--markdown", help="append the table to this file")
    args = p.parse_args()
    if args.path:
        print(json.dumps(measure(args)))
        return
    sys.path.insert(0, str(REPO))
    from bench.models import ensure_weights

    weights = OUT / f"weights-{args.size}"
    ensure_weights(weights, args.size, [args.variant])
    rows = []
    for _ in range(args.repeats):
        for path in ("bare", "ours"):
            cmd = [sys.executable, __file__, "--path", path, "--weights", str(weights), "--cells", str(args.cells),
                   "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--frozen-layers",
                   str(args.frozen_layers), "--variant", args.variant, "--device", args.device]
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            if done.returncode != 0:
                raise SystemExit(done.stderr[-3000:])
            row = json.loads(done.stdout.strip().splitlines()[-1])
            print(json.dumps(row), flush=True)
            rows.append(row)
    median = {path: round(statistics.median(r["train_cells_per_s"] for r in rows if r["path"] == path), 3)
              for path in ("bare", "ours")}
    peak = {path: max(r["peak_rss_mib"] for r in rows if r["path"] == path) for path in ("bare", "ours")}
    lines = [f"Machine: {platform.node()} ({platform.machine()}), {datetime.now(UTC):%Y-%m-%d}, "
             f"`python bench/finetune.py {' '.join(sys.argv[1:])}`", "",
             "| run | path | training cells/s per epoch | seconds | peak RSS |", "|---|---|---|---|---|"]
    lines += [f"| {i // 2 + 1} | {r['path']} | {r['train_cells_per_s']} | {r['seconds']} | {r['peak_rss_mib']} MiB |"
              for i, r in enumerate(rows)]
    lines += ["", f"Medians: bare {median['bare']}, ours {median['ours']} training cells/s "
                  f"(**{median['ours'] / median['bare']:.2f}×**); peak RSS bare {peak['bare']} MiB, ours "
                  f"{peak['ours']} MiB."]
    print("\n".join(lines))
    if args.markdown:
        with open(args.markdown, "a") as fh:
            fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
