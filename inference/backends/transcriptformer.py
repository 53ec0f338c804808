"""TranscriptFormer through helical, on GPU workers only.

helical runs it on CUDA only: its config says ``device: cuda``, and ``create_block_mask`` (``model_dir/model.py``)
is called without a device, which torch resolves to CUDA on a CUDA build even with no GPU (the CPU run fails in
the attention-mask compile). So the backend ``requires_gpu``: the actor pool places it on a GPU worker and a
cluster without one refuses its runs (``inference/devices.py``). The tests run this same code on the CPU with
helical's ``create_block_mask`` given ``device="cpu"`` (in the test only) to check it against bare helical.

What bare ``process_data`` + ``get_embeddings`` would get wrong here, and how this path avoids it:
- ``config.json`` is handed to ``hydra.utils.instantiate``: its ``_target_`` names any Python callable, a code
  boundary like a pickle. We read the file first and refuse any ``_target_`` that is not one of helical's own
  TranscriptFormer classes, and any ``${…}`` interpolation (a resolver could build a target).
- gene ids: fewer than half Ensembl ids sends helical to its symbol table through its downloader. We give it the
  cells' Ensembl ids (mapped offline), restricted to the vocabulary; no mapping runs.
- the assay token: a missing ``assay`` column becomes ``unknown``; an assay helical's vocabulary lacks raises deep
  inside its tokenizer. The assay is an option checked against the vocabulary at load and recorded.
- memory: ``process_data`` densifies everything it is given; we hand it ``block_cells`` cells at a time. Every
  cell is padded to the same context and attends only to itself, so blocks and batches do not change its numbers.
- side effects: importing helical's module sets TF32 matmuls for the whole process; we restore the setting after
  the load, so other models on the worker keep their numbers, and set it only around TranscriptFormer's own
  batches at precision ``helical`` (``fp32``: full fp32 matmuls). Its tokenizer prints to stdout (silenced).
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData, ImplicitModificationWarning

from inference.backends.base import Backend, Embedding, Progress, ShouldStop, check_stop
from inference.backends.common import autocast, effective_precision, helical_input, resolve_device
from inference.batching import default_token_budget
from inference.helical_env import isolated
from inference.weights import TRANSCRIPTFORMER_SPECIES, ResolvedWeights, WeightsError

PACKAGE = "helical.models.transcriptformer"
ALLOWED_TARGETS = frozenset({f"{PACKAGE}.model_dir.model.Transcriptformer"} | {
    f"{PACKAGE}.data.dataclasses.{name}" for name in ("DataConfig", "ModelConfig", "LossConfig", "InferenceConfig")})
DEFAULT_ASSAY = "unknown"  # helical's own value for cells without an assay column
PRECISIONS = ("helical", "bf16", "fp32")
ARCH_KEYS = ("num_layers", "num_heads", "model_dim", "embed_dim", "seq_len", "aux_len")
MAX_BLOCK_CELLS = 512
_LOAD_LOCK = threading.Lock()  # helical reads its file paths from a module constant while loading


def check_config(path) -> dict:  # noqa: ANN001 - a Path
    """config.json, after checking that instantiating it can only build helical's own TranscriptFormer."""
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path} is not readable JSON ({exc}). Stage the release's config.json again.") from exc

    def walk(node: object, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "_target_" and value not in ALLOWED_TARGETS:
                    raise WeightsError(
                        f"{path}: {where}._target_ is {str(value)[:120]!r}. helical builds whatever this names "
                        f"(hydra.utils.instantiate); only helical's own TranscriptFormer classes are allowed. This "
                        "file is not a TranscriptFormer release: stage the release's config.json.")
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")
        elif isinstance(node, str) and "${" in node:
            raise WeightsError(f"{path}: {where} holds an interpolation ({node[:80]!r}); a release's config.json "
                               "has none, and a resolver could build an object helical would then call. Refused.")

    walk(config, "config")
    if not isinstance(config.get("model"), dict) or config["model"].get("_target_") not in ALLOWED_TARGETS:
        raise WeightsError(f"{path} has no model._target_ naming helical's Transcriptformer: not a release's "
                           "config.json.")
    return config


@contextlib.contextmanager
def _quiet_stdout():
    """helical's tokenizer prints the vocabulary's size on every call."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


class TranscriptFormerBackend(Backend):
    backend = "transcriptformer"
    requires_gpu = True

    def __init__(self, weights: ResolvedWeights, device: str | None = None, precision: str = "helical",
                 assay: str = DEFAULT_ASSAY, max_tokens: int | None = None) -> None:
        if weights.variant not in TRANSCRIPTFORMER_SPECIES:
            raise WeightsError(f"Unknown TranscriptFormer variant {weights.variant!r}.")
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: choose {', '.join(PRECISIONS)}.")
        self.variant = weights.variant
        self.weights = weights
        self.device = resolve_device(device, self.requires_gpu, "TranscriptFormer")
        self.precision = precision
        # helical's get_embeddings runs without autocast: "helical" means fp32 (with TF32 matmuls on CUDA) here
        self._compute = "fp32" if precision == "helical" else precision
        self.assay = assay
        self.max_tokens = max_tokens or default_token_budget(self.device)
        self.model = None
        self.vocabulary: frozenset[str] = frozenset()
        self.context = 0
        self.load_info: dict[str, object] = {}

    def load(self) -> None:
        import torch

        started = time.perf_counter()
        folder = self.weights.path(f"transcriptformer/{self.variant}")
        arch = check_config(folder / "config.json")["model"].get("model_config", {})
        matmul = torch.get_float32_matmul_precision()
        with _LOAD_LOCK, isolated(), _quiet_stdout():
            import helical.models.transcriptformer.model as helical_tf
            from helical.models.transcriptformer.transcriptformer_config import TranscriptFormerConfig

            cfg = TranscriptFormerConfig(model_name=self.variant, batch_size=1, emb_mode="cell", output_keys=[],
                                         gene_col_name="index")
            cfg.list_of_files_to_download = []  # verified by us: no HEAD request, no replacement
            saved = helical_tf.CACHE_DIR_HELICAL
            helical_tf.CACHE_DIR_HELICAL = str(self.weights.root)  # helical builds every path from this constant
            try:
                self.model = helical_tf.TranscriptFormer(cfg)
            except (OSError, ValueError, RuntimeError, KeyError, AssertionError) as exc:
                raise WeightsError(f"helical could not load TranscriptFormer {self.variant} from "
                                   f"{self.weights.root}: {exc}") from exc
            finally:
                helical_tf.CACHE_DIR_HELICAL = saved
                torch.set_float32_matmul_precision(matmul)
        self.model.config.model.inference_config.device = self.device
        net = self.model.model
        self.assays = tuple(net.aux_vocab_dict.get("assay", {}))
        if self.assay not in self.assays:
            raise ValueError(f"assay {self.assay!r} is not in TranscriptFormer's vocabulary "
                             f"({folder / 'vocabs/assay_vocab.json'}): choose {', '.join(map(repr, self.assays))}.")
        self.vocabulary = frozenset(k for k in net.gene_vocab_dict if k not in self.model.config.model.data_config
                                    .special_tokens)
        self.context = int(net.model_config.seq_len) + int(net.model_config.aux_len)
        self.load_info = {"architecture": {k: arch.get(k) for k in ARCH_KEYS}, "vocabulary": len(self.vocabulary),
                          "assays": len(self.assays), "load_s": round(time.perf_counter() - started, 3)}
        self.loads += 1

    @property
    def cells_per_batch(self) -> int:
        """Cells per forward pass: the token budget over the context (helical pads every cell to it)."""
        return max(1, self.max_tokens // max(self.context, 1))

    def helical_cells(self, adata: AnnData) -> AnnData:
        """A fresh AnnData as helical wants it: the counts (CSR) of the vocabulary's genes in the file's order,
        unique Ensembl ids as var_names, the assay on every cell. Shares no array with ``adata``."""
        prepared = helical_input(adata)
        ids = pd.Series(prepared.var["ensembl_id"].to_numpy(), dtype=str)
        keep = (ids.isin(self.vocabulary) & ~ids.duplicated()).to_numpy()
        if not keep.any():
            raise ValueError("None of the file's genes is in TranscriptFormer's vocabulary: it needs Ensembl ids of "
                             f"its species ({', '.join(TRANSCRIPTFORMER_SPECIES[self.variant])}) or symbols that "
                             "map to them.")
        x = prepared.X
        x = sp.csr_matrix(x[:, keep]) if sp.issparse(x) else sp.csr_matrix(np.asarray(x)[:, keep])
        obs = pd.DataFrame({"assay": self.assay}, index=prepared.obs_names)
        return AnnData(X=x, obs=obs, var=pd.DataFrame(index=pd.Index(ids[keep].to_numpy())))

    def _embed_block(self, block: AnnData) -> np.ndarray:
        """helical's process_data + get_embeddings on one block; on CUDA out-of-memory, smaller batches."""
        import torch

        inference = self.model.model.inference_config
        while True:
            matmul = torch.get_float32_matmul_precision()
            try:
                with isolated(), _quiet_stdout(), autocast(self.device, self._compute), warnings.catch_warnings():
                    warnings.simplefilter("ignore", ImplicitModificationWarning)  # helical re-indexes its copy
                    if self.precision == "helical":
                        torch.set_float32_matmul_precision("high")  # TF32 on CUDA, as importing helical sets it
                    dataset = self.model.process_data([block])
                    return np.asarray(self.model.get_embeddings(dataset).float(), dtype=np.float32)
            except torch.OutOfMemoryError:
                if inference.batch_size == 1:
                    raise
                torch.cuda.empty_cache()
                inference.batch_size = max(1, inference.batch_size // 2)
            finally:
                torch.set_float32_matmul_precision(matmul)

    def embed(self, adata: AnnData, progress: Progress | None = None,
              should_stop: ShouldStop | None = None) -> Embedding:
        cells = self.helical_cells(adata)
        n = cells.n_obs
        self.model.model.inference_config.batch_size = self.cells_per_batch
        per_block = min(MAX_BLOCK_CELLS, 8 * self.cells_per_batch)
        parts = []
        for start in range(0, n, per_block):
            check_stop(should_stop)
            block = cells[start:start + per_block]
            parts.append(self._embed_block(AnnData(X=block.X.copy(), obs=block.obs.copy(), var=block.var.copy())))
            if progress:
                progress(min(start + per_block, n), n)
        out = np.concatenate(parts) if parts else np.empty((0, 0), dtype=np.float32)
        return Embedding(features=out, basis=out, genes_used=cells.n_vars)

    def embedding_settings(self) -> dict[str, object]:
        return {"assay": self.assay, "emb_mode": "cell"}

    def provenance(self) -> dict[str, object]:
        """The weights, and the assay token every cell was given (it changes its embedding)."""
        return {**super().provenance(), "context_tokens": {"assay": self.assay}}

    @property
    def embedding_precision(self) -> str:
        return effective_precision(self.device, self._compute)

    def describe(self) -> dict[str, object]:
        dim = int(self.model.model.model_config.embed_dim) if self.model else 2048
        return {"backend": self.backend, "variant": self.variant, "device": self.device, "embedding_dim": dim,
                "context": self.context or 2048, "cells_per_batch": self.cells_per_batch if self.context else None,
                "precision": self.precision, "context_tokens": {"assay": self.assay},
                "weights": self.weights.describe(), **self.load_info}
