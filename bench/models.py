"""Our embedding path against bare helical ``get_embeddings``: same checkpoint, same cells, same machine.

    python bench/models.py                 # CPU: gf-6L-10M-i2048 and scGPT, real-size random-init, 200 cells
    python bench/models.py --cells 50      # quicker
    python bench/models.py --backends uce --cells 40   # UCE (4-layer architecture; about 5 GB per process)
    python bench/models.py --backends nicheformer --cells 48   # Nicheformer (the release's 12 layers, 512-d)
    python bench/models.py --device cuda --variant gf-12L-38M-i4096 --precision bf16 fp32 --cells 2000
    python bench/models.py --device cuda --backends transcriptformer --cells 2000   # GPU only (helical: CUDA only)

Each measurement runs in a fresh process, so its peak memory (ru_maxrss) is its own. Bare helical is timed on
``process_data`` + ``get_embeddings`` at helical's default batch size (24; Nicheformer's 32, TranscriptFormer's
8); ours on ``embed``
(which calls the same ``process_data``). UCE's bare output differs from ours by about 1e-3: helical pads its
batches and its float attention mask shifts the shorter cells; ours equals helical's cell alone (tests/test_uce.py).
Bare Nicheformer gets what its user must give it: Ensembl ids as var_names and the three context columns (the
same values ours records); bare TranscriptFormer likewise (Ensembl ids, the assay column).
Prints one JSON line per measurement and a table; ``--markdown`` appends the table to a file. Checkpoints are
generated once into bench/out/weights (untrained: only the speed means anything).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
CELLS_FILE = REPO / "tests" / "data" / "pbmc3k_subset.h5ad"


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(args: argparse.Namespace) -> dict:
    """One path, in this (fresh) process."""
    import anndata as ad
    import numpy as np
    import torch

    from inference.backends import create_backend
    from inference.helical_env import isolated
    from inference.weights import WeightsLocations

    loc = WeightsLocations(staged=OUT / "none", generated=Path(args.weights), helical_cache=OUT / "none")
    variant = args.variant if args.backend == "geneformer" else None  # --variant names a Geneformer variant
    backend = create_backend(args.backend, variant, loc, device=args.device, precision=args.precision)
    backend.load()
    cells = ad.read_h5ad(CELLS_FILE)[: args.cells].copy()
    rss_loaded = rss_mib()
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    if args.path == "ours":
        emb = backend.embed(cells).features
    elif args.backend == "uce":  # helical's process_data needs its counts file while it embeds
        import tempfile

        with tempfile.TemporaryDirectory(prefix="bench-uce-") as tmp:
            prepared = backend.prepare(cells, Path(tmp))[0]
            with isolated():
                backend.model.config["batch_size"] = args.bare_batch
                emb = backend.model.get_embeddings(prepared)
    elif args.backend == "nicheformer":
        bare = cells.copy()
        bare.var_names = bare.var["gene_ids"].astype(str).to_numpy()
        bare.obs["specie"], bare.obs["assay"], bare.obs["modality"] = "human", backend.assay, backend.modality
        with isolated():
            backend.model.config["batch_size"] = args.bare_batch
            emb = backend.model.get_embeddings(backend.model.process_data(bare, gene_names="ensembl_id"))
    elif args.backend == "transcriptformer":
        bare = cells.copy()
        bare.var_names = bare.var["gene_ids"].astype(str).to_numpy()
        bare.obs["assay"] = backend.assay
        with isolated():
            backend.model.model.inference_config.batch_size = args.bare_batch
            emb = backend.model.get_embeddings(backend.model.process_data([bare])).float()
    else:
        prepared = backend.tokenize(cells)[0] if args.backend == "geneformer" else backend.prepare(cells)[0]
        with isolated():
            if args.backend == "scgpt":
                backend.model.config["batch_size"] = args.bare_batch
            else:
                backend.model.forward_batch_size = args.bare_batch
            emb = backend.model.get_embeddings(prepared)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    np.save(OUT / f"emb-{args.backend}-{args.path}-{args.precision}.npy", np.asarray(emb, dtype=np.float32))
    return {
        "backend": args.backend, "variant": backend.variant, "path": args.path, "precision": args.precision,
        "device": backend.device, "cells": args.cells, "seconds": round(seconds, 2),
        "cells_per_s": round(args.cells / seconds, 2), "peak_rss_mib": round(rss_mib()),
        "rss_after_load_mib": round(rss_loaded),
        "gpu_peak_mib": round(torch.cuda.max_memory_allocated() / 2**20) if args.device.startswith("cuda") else None,
        "threads": torch.get_num_threads(),
    }


def ensure_weights(folder: Path, size: str, variants: list[str], uce: bool = False,
                   nicheformer: bool = False, transcriptformer: bool = False) -> None:
    from inference.checkpoints import generate
    from inference.weights import (
        DEFAULT_TRANSCRIPTFORMER,
        DEFAULT_UCE,
        NICHEFORMER_VARIANT,
        WeightsError,
        WeightsLocations,
    )

    loc = WeightsLocations(staged=OUT / "none", generated=folder, helical_cache=OUT / "none")
    missing = []
    for v in variants:
        try:
            loc.resolve("geneformer", v, verify=False)
        except WeightsError:
            missing.append(v)
    try:
        loc.resolve("scgpt", "whole-human", verify=False)
        need_scgpt = False
    except WeightsError:
        need_scgpt = True
    need_uce = False
    if uce:
        try:
            loc.resolve("uce", DEFAULT_UCE, verify=False)
        except WeightsError:
            need_uce = True
    need_nf = False
    if nicheformer:
        try:
            loc.resolve("nicheformer", NICHEFORMER_VARIANT, verify=False)
        except WeightsError:
            need_nf = True
    need_tf = False
    if transcriptformer:
        try:
            loc.resolve("transcriptformer", DEFAULT_TRANSCRIPTFORMER, verify=False)
        except WeightsError:
            need_tf = True
    if missing or need_scgpt or need_uce or need_nf or need_tf:
        print(f"generating {size} checkpoints {missing} scgpt={need_scgpt} uce={need_uce} nicheformer={need_nf} "
              f"transcriptformer={need_tf} in {folder}", file=sys.stderr)
        generate(folder, size, missing, scgpt=need_scgpt, uce=need_uce, nicheformer=need_nf,
                 transcriptformer=need_tf)


def atlas_hours(cells_per_s: float, cells: int = 1_000_000) -> str:
    """The embedding time of a whole atlas on one device at the measured rate (a linear extrapolation: the
    model's cost per cell does not depend on how many cells a run holds, since batches are fixed-size)."""
    hours = cells / cells_per_s / 3600
    return f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.0f} min"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=200)
    p.add_argument("--device", default="cpu")
    p.add_argument("--variant", default="gf-6L-10M-i2048")
    p.add_argument("--backends", nargs="+", default=["geneformer", "scgpt"])
    p.add_argument("--precision", nargs="+", default=["helical"])
    p.add_argument("--size", default="real", choices=["tiny", "real"])
    p.add_argument("--bare-batch", type=int,
                   help="default: helical's default batch size (24; Nicheformer 32, TranscriptFormer 8)")
    p.add_argument("--markdown", help="append the table to this file")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--backend", help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        args.precision = args.precision[0]
        print(json.dumps(measure(args)))
        return

    OUT.mkdir(parents=True, exist_ok=True)
    weights = OUT / f"weights-{args.size}"
    ensure_weights(weights, args.size, [args.variant], uce="uce" in args.backends,
                   nicheformer="nicheformer" in args.backends, transcriptformer="transcriptformer" in args.backends)
    rows = []
    for backend in args.backends:
        for precision in args.precision:
            pair = {}
            for path in ("bare", "ours"):
                cmd = [sys.executable, __file__, "--one", "--backend", backend, "--path", path, "--weights",
                       str(weights), "--cells", str(args.cells), "--device", args.device, "--variant",
                       args.variant, "--precision", precision, "--bare-batch",
                       str(args.bare_batch or {"nicheformer": 32, "transcriptformer": 8}.get(backend, 24))]
                done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                                      env={**os.environ, "PYTHONPATH": str(REPO)})
                if done.returncode:
                    sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
                pair[path] = json.loads(done.stdout.strip().splitlines()[-1])
                print(json.dumps(pair[path]), flush=True)
            import numpy as np

            a = np.load(OUT / f"emb-{backend}-bare-{precision}.npy")
            b = np.load(OUT / f"emb-{backend}-ours-{precision}.npy")
            pair["ours"]["max_abs_diff_vs_bare"] = float(np.abs(a - b).max())
            rows.append(pair)
    lines = [
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} CPUs, "
        f"{args.device}); {args.cells} PBMCs from tests/data/pbmc3k_subset.h5ad; {args.size}-size generated "
        f"checkpoints (random weights); command: `python bench/models.py "
        f"{' '.join(sys.argv[1:]) if sys.argv[1:] else ''}`".replace("`python bench/models.py `",
                                                                      "`python bench/models.py`"),
        "",
        "| model | precision | bare helical cells/s | ours cells/s | speed-up | bare peak RSS | ours peak RSS "
        "| max abs diff | 1M-cell atlas, ours |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for pair in rows:
        bare, ours = pair["bare"], pair["ours"]
        lines.append(
            f"| {ours['backend']} {ours['variant']} | {ours['precision']} | {bare['cells_per_s']} | "
            f"{ours['cells_per_s']} | {ours['cells_per_s'] / bare['cells_per_s']:.2f}× | "
            f"{bare['peak_rss_mib']} MiB | {ours['peak_rss_mib']} MiB | {ours['max_abs_diff_vs_bare']:.1e} | "
            f"{atlas_hours(ours['cells_per_s'])} |")
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        with open(args.markdown, "a") as fh:
            fh.write(table + "\n\n")


if __name__ == "__main__":
    main()
