"""scGPT through helical: helical loads and prepares; we batch by length and average over real tokens only.

Bare ``get_embeddings`` pads batches in file order and its cell embedding averages over the padding, so a cell's
vector depends on which cells share its batch. Here every cell gets what helical gives it in a batch of one:
same binning (seeded per cell by helical), same gene sampling above the context (seeded per cell by helical),
mean over the cell's own tokens, then helical's L2 normalisation.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
from anndata import AnnData

from inference.backends.base import Backend, Embedding, Progress, ShouldStop
from inference.backends.common import (
    autocast,
    check_complete,
    effective_precision,
    embed_in_batches,
    helical_input,
    resolve_device,
)
from inference.batching import default_token_budget
from inference.helical_env import isolated
from inference.weights import SCGPT_VARIANT, ResolvedWeights, WeightsError

ARCH_KEYS = ("embsize", "nheads", "d_hid", "nlayers", "n_layers_cls")


class ScGPTBackend(Backend):
    backend = "scgpt"

    def __init__(self, weights: ResolvedWeights, device: str | None = None, max_tokens: int | None = None,
                 architecture: dict[str, int] | None = None, precision: str = "helical") -> None:
        self.variant = SCGPT_VARIANT
        self.weights = weights
        self.device = resolve_device(device)
        self.max_tokens = max_tokens or default_token_budget(self.device)
        self.precision = precision
        self.architecture = architecture if architecture is not None else self._architecture_from_args()
        self.model = None
        self.load_info: dict[str, object] = {}

    def _architecture_from_args(self) -> dict[str, int]:
        """The architecture in ``args.json`` beside the checkpoint (as scGPT releases ship it); else helical's."""
        args = self.weights.root / "scgpt" / "scGPT_CP" / "args.json"
        if not args.is_file():
            return {}
        data = json.loads(args.read_text())
        return {k: int(data[k]) for k in ARCH_KEYS if k in data}

    def load(self) -> None:
        import torch

        started = time.perf_counter()
        with isolated():
            from helical.models.scgpt import scGPT, scGPTConfig

            cfg = scGPTConfig(batch_size=24, device=self.device, **self.architecture)
            cfg.config["model_path"] = self.weights.path("scgpt/scGPT_CP/best_model.pt")
            cfg.config["list_of_files_to_download"] = []  # verified by us: helical's downloader asks nothing
            try:
                self.model = scGPT(cfg)
            except (OSError, ValueError, RuntimeError, KeyError) as exc:
                raise WeightsError(f"helical could not load scGPT from {self.weights.root}: {exc}") from exc
        state = torch.load(cfg.config["model_path"], map_location="cpu", weights_only=True, mmap=True)
        shapes = {k.replace("Wqkv.", "in_proj_"): tuple(v.shape) for k, v in state.items()}
        arch = {k: cfg.config[k] for k in ARCH_KEYS}
        self.load_info = check_complete(self.model.model.state_dict(), shapes,
                                        ["encoder.", "value_encoder.", "transformer_encoder."],
                                        f"scGPT ({cfg.config['model_path']}, configured as {arch})")
        self.load_info["architecture"] = arch
        self.load_info["load_s"] = round(time.perf_counter() - started, 3)
        self.loads += 1

    def prepare(self, adata: AnnData):  # noqa: ANN201 - helical's scGPT Dataset
        """helical's ``process_data`` on a copy keyed by unique gene symbols (mapped offline)."""
        prepared = helical_input(adata)
        symbols = pd.Series(prepared.var["gene_symbol"].to_numpy())
        keep = (symbols != "") & ~symbols.str.match(r"^ENS[A-Z]*G\d{11}") & ~symbols.duplicated()
        prepared = prepared[:, keep.to_numpy()].copy()
        with isolated():
            return self.model.process_data(prepared, gene_names="gene_symbol"), prepared

    def embed(self, adata: AnnData, progress: Progress | None = None,
              should_stop: ShouldStop | None = None) -> Embedding:
        import torch
        from helical.models.scgpt.data_collator import DataCollator

        dataset, prepared = self.prepare(adata)
        cfg = self.model.config
        vocab = self.model.vocab
        pad_id = vocab[cfg["pad_token"]]
        max_len = cfg["MAX_LENGTH"]
        collator = DataCollator(do_padding=True, pad_token_id=pad_id, pad_value=cfg["pad_value"], do_mlm=False,
                                do_binning=True, max_length=max_len, sampling=True, keep_first_n_tokens=1)
        x = dataset.count_matrix
        nnz = np.diff(x.indptr) if hasattr(x, "indptr") else np.count_nonzero(np.asarray(x), axis=1)
        lengths = np.minimum(nnz + 1, max_len)  # +1 for <cls>; sampled down to the context above it
        net = self.model.model
        device = next(net.parameters()).device

        def step(idx: np.ndarray) -> np.ndarray:
            batch = collator([dataset[int(i)] for i in idx])
            genes = batch["gene"].to(device)
            padding = genes.eq(pad_id)
            with torch.no_grad(), autocast(device.type, self.precision):
                out = net._encode(genes, batch["expr"].to(device), src_key_padding_mask=padding)
            real = (~padding[:, 1:]).unsqueeze(-1).to(out.dtype)  # skip <cls>, count real genes only
            summed = (out[:, 1:, :] * real).sum(dim=1)
            mean = summed / real.sum(dim=1).clamp(min=1)
            return mean.float().cpu().numpy()

        features = embed_in_batches(step, lengths, self.max_tokens, progress, should_stop)
        features = features / np.linalg.norm(features, axis=1, keepdims=True)  # as helical normalises
        return Embedding(features=features, basis=features, genes_used=len(dataset.gene_ids))

    @property
    def embedding_precision(self) -> str:
        return effective_precision(self.device, self.precision)

    def describe(self) -> dict[str, object]:
        return {"backend": self.backend, "variant": self.variant, "device": self.device,
                "embedding_dim": self.model.config["embsize"] if self.model else None,
                "context": 1200, "max_tokens_per_batch": self.max_tokens, "precision": self.precision,
                "weights": self.weights.describe(), **self.load_info}
