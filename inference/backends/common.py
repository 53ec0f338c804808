"""What the foundation-model backends share: device choice, helical's input, the completeness check."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from inference.backends.base import Progress, ShouldStop, check_stop
from inference.batching import length_batches, run_with_oom_retry
from inference.devices import choose_device
from inference.genes import resolve_gene_ids
from inference.weights import WeightsError


def resolve_device(requested: str | None = None, requires_gpu: bool = False, model: str = "This model") -> str:
    """Where this worker runs the model: ``choose_device`` with the GPUs torch sees here (a GPU-only backend,
    run in-process by the command line or a notebook, is refused here rather than failing inside helical)."""
    import torch

    return choose_device(requested, torch.cuda.device_count(), requires_gpu, model, "torch sees none here")


def helical_input(adata: AnnData) -> AnnData:
    """A fresh AnnData sharing ``adata``'s counts, with ``ensembl_id`` and ``gene_symbol`` columns.

    helical writes into the obs and var of what it is given; this keeps the caller's object untouched
    without copying the matrix.
    """
    ids = resolve_gene_ids(adata.var, adata.var_names)
    x = adata.X if not getattr(adata, "isbacked", False) else adata.to_memory().X
    if sp.issparse(x) and not isinstance(x, sp.csr_matrix):
        x = sp.csr_matrix(x)
    var = pd.DataFrame({"ensembl_id": ids.ensembl_id, "gene_symbol": ids.symbol},
                       index=pd.Index([str(v) for v in adata.var_names]))
    out = AnnData(X=x, obs=pd.DataFrame(index=adata.obs_names.astype(str)), var=var)
    out.uns["gene_ids"] = ids.report()
    return out


def check_complete(model_state: Mapping[str, object], checkpoint_shapes: Mapping[str, tuple[int, ...]],
                   prefixes: Iterable[str], what: str) -> dict[str, int]:
    """Count the tensors the embedding uses that the checkpoint supplied; refuse a partial load.

    helical's scGPT loads with ``strict=False`` and keeps random tensors where names or shapes differ; a
    mismatched configuration then loads a handful of tensors and embeds with random weights, silently.
    """
    needed = {k: tuple(v.shape) for k, v in model_state.items() if any(k.startswith(p) for p in prefixes)}
    loaded = [k for k, shape in needed.items() if checkpoint_shapes.get(k) == shape]
    if len(loaded) < len(needed):
        wrong = [k for k in needed if k in checkpoint_shapes and checkpoint_shapes[k] != needed[k]]
        absent = [k for k in needed if k not in checkpoint_shapes]
        example = (f"{wrong[0]} is {checkpoint_shapes[wrong[0]]} in the checkpoint but {needed[wrong[0]]} in the "
                   "model" if wrong else f"{absent[0]} is not in the checkpoint")
        raise WeightsError(
            f"{what}: only {len(loaded)} of {len(needed)} tensors of the encoder loaded ({example}). The "
            "checkpoint does not match the model configuration; refusing to embed with random weights. Check "
            "the architecture in the weights folder (config.json / args.json) against the checkpoint.")
    return {"tensors_loaded": len(loaded), "tensors_needed": len(needed)}


def embed_in_batches(step: Callable[[np.ndarray], np.ndarray], lengths: np.ndarray, max_tokens: int,
                     progress: Progress | None = None, should_stop: ShouldStop | None = None) -> np.ndarray:
    """Run ``step`` on length-sorted batches (halving on CUDA out-of-memory), report progress, stop when
    asked between batches, and return the rows in the cells' own order."""
    parts, done = [], 0
    for idx in length_batches(lengths, max_tokens):
        check_stop(should_stop)
        parts += run_with_oom_retry(step, idx)
        done += len(idx)
        if progress:
            progress(done, len(lengths))
    return restore_order(parts, len(lengths))


def restore_order(parts: list[tuple[np.ndarray, np.ndarray]], n: int) -> np.ndarray:
    """Put batch results computed in length order back into the cells' own order."""
    dim = parts[0][1].shape[1]
    out = np.empty((n, dim), dtype=np.float32)
    for idx, values in parts:
        out[idx] = values
    return out


def effective_precision(device: str, precision: str = "helical") -> str:
    """What ``autocast`` computes in: fp32 on the CPU whatever was asked, else fp16 (helical's), bf16 or fp32."""
    if not str(device).startswith("cuda") or precision == "fp32":
        return "fp32"
    return "bf16" if precision == "bf16" else "fp16"


def autocast(device: str, precision: str = "helical"):  # noqa: ANN201 - a context manager
    """Mixed precision on CUDA: ``helical`` (fp16 autocast, as helical runs it), ``bf16``, or ``fp32``."""
    import torch

    on_cuda = str(device).startswith("cuda")
    if precision not in ("helical", "bf16", "fp32"):
        raise ValueError(f"precision {precision!r}: choose helical, bf16 or fp32.")
    if not on_cuda or precision == "fp32":
        return torch.amp.autocast("cuda", enabled=False) if on_cuda else contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.amp.autocast("cuda", dtype=dtype)
