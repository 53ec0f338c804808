"""UCE (Universal Cell Embeddings) through helical: helical loads, builds each cell's sentence and runs the model;
we give it what it needs to be right and batch cells so that none is padded.

Three things bare ``process_data`` + ``get_embeddings`` get wrong here, and how this path avoids them:
- genes outside UCE's protein-embedding table: helical writes the unfiltered counts to its counts file but reads
  them back with the filtered shape, so every cell's counts are misaligned. We subset to the table's genes first.
- padding: the attention mask helical passes is a float tensor, which PyTorch *adds* to the scores instead of
  masking, so a cell's embedding changes with the longest cell of its batch (up to 3e-3 measured). We batch only
  cells whose sentences have the same length: no padding, each cell gets what helical gives it alone.
- the counts file: helical writes ``./<name>_counts.npz`` in the working directory (and two workers with the
  default name overwrite each other's); ours goes to a temporary folder of its own.
Every file is opened by helical with ``torch.load(weights_only=True)``, JSON or CSV, after our sha256 check.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from inference.backends.base import Backend, Embedding, Progress, ShouldStop, check_stop
from inference.backends.common import autocast, effective_precision, helical_input, resolve_device
from inference.helical_env import isolated
from inference.weights import UCE_PROTEIN_EMBEDDINGS, UCE_VARIANTS, ResolvedWeights, WeightsError

ARCH_KEYS = ("token_dim", "d_hid", "n_layers", "output_dim", "CHROM_TOKEN_OFFSET", "sample_size", "pad_length")
CELLS_PER_BATCH = 24  # helical's default batch size; a batch holds cells of one sentence length only


class UCEBackend(Backend):
    backend = "uce"

    def __init__(self, weights: ResolvedWeights, device: str | None = None, precision: str = "helical") -> None:
        if weights.variant not in UCE_VARIANTS:
            raise WeightsError(f"Unknown UCE variant {weights.variant!r}.")
        self.variant = weights.variant
        self.weights = weights
        self.device = resolve_device(device)
        self.precision = precision
        self.architecture = self._architecture_from_args()
        self.model = None
        self.vocabulary: frozenset[str] = frozenset()
        self.load_info: dict[str, object] = {}

    def _architecture_from_args(self) -> dict[str, int]:
        """A generated checkpoint's architecture (``uce/args.json``); the releases use helical's defaults."""
        args = self.weights.root / "uce" / "args.json"
        if not args.is_file():
            return {}
        data = json.loads(args.read_text())
        return {k: int(data[k]) for k in ARCH_KEYS if k in data}

    def helical_config(self, batch_size: int = CELLS_PER_BATCH):
        """helical's own config, pointed at the resolved files; its downloader is given nothing to fetch."""
        from helical.models.uce import UCEConfig

        arch = {k: v for k, v in self.architecture.items() if k != "n_layers"}
        cfg = UCEConfig(model_name=self.variant, batch_size=batch_size, device=self.device, **arch)
        if "n_layers" in self.architecture:
            cfg.config["n_layers"] = self.architecture["n_layers"]
        cfg.config["model_path"] = self.weights.path(f"uce/{self.variant}.torch")
        cfg.config["token_file_path"] = self.weights.path("uce/all_tokens.torch")
        cfg.config["list_of_files_to_download"] = []  # verified by us: no HEAD request, no replacement
        return cfg

    def load(self) -> None:
        import torch

        started = time.perf_counter()
        with isolated():
            from helical.models.uce import UCE

            try:
                self.model = UCE(self.helical_config())
            except (OSError, ValueError, RuntimeError, KeyError) as exc:
                raise WeightsError(f"helical could not load UCE {self.variant} from {self.weights.root}: "
                                   f"{exc}") from exc
        table = torch.load(self.weights.path(UCE_PROTEIN_EMBEDDINGS), map_location="cpu", weights_only=True,
                           mmap=True)
        self.vocabulary = frozenset(str(k).lower() for k in table)
        cfg = self.model.config
        self.load_info = {"architecture": {k: cfg[k] for k in ARCH_KEYS}, "vocabulary": len(self.vocabulary),
                          "load_s": round(time.perf_counter() - started, 3)}
        self.loads += 1

    def prepare(self, adata: AnnData, workdir: Path):  # noqa: ANN201 - helical's UCEDataset
        """helical's ``process_data`` on the cells' counts restricted to UCE's genes (unique symbols, CSR)."""
        import scipy.sparse as sp

        prepared = helical_input(adata)
        symbols = pd.Series(prepared.var["gene_symbol"].to_numpy()).str.lower()
        keep = symbols.isin(self.vocabulary) & ~symbols.duplicated()
        if not keep.any():
            raise ValueError("None of the file's genes is in UCE's protein-embedding table: UCE needs human gene "
                             "symbols or Ensembl ids.")
        prepared = prepared[:, keep.to_numpy()].copy()
        prepared.X = sp.csr_matrix(prepared.X)
        # helical writes "<name>_counts.npz" relative to the working directory: name it into our own folder
        name = os.path.relpath(workdir / "cells", os.getcwd())
        with isolated():
            return self.model.process_data(prepared, gene_names="gene_symbol", name=name), int(keep.sum())

    def embed(self, adata: AnnData, progress: Progress | None = None,
              should_stop: ShouldStop | None = None) -> Embedding:
        import torch

        net = self.model.model
        device = next(net.parameters()).device
        n = adata.n_obs
        out = np.empty((n, int(self.model.config["output_dim"])), dtype=np.float32)
        with tempfile.TemporaryDirectory(prefix="uce-") as tmp:
            dataset, genes = self.prepare(adata, Path(tmp))
            sentences, lengths = [], np.empty(n, dtype=np.int64)
            for i in range(n):  # helical's sentence of each cell (its genes sampled with a seed of its own)
                sentence, _mask, _idx, length, _ = dataset[i]  # sentence: [1, pad_length] token rows
                sentences.append(sentence[0, :length])
                lengths[i] = length
            done = 0
            for length in np.unique(lengths):
                same = np.flatnonzero(lengths == length)
                for start in range(0, len(same), CELLS_PER_BATCH):
                    check_stop(should_stop)
                    idx = same[start:start + CELLS_PER_BATCH]
                    tokens = torch.stack([sentences[i] for i in idx]).long().to(device).permute(1, 0)
                    mask = torch.ones(len(idx), int(length), device=device)
                    with torch.no_grad(), autocast(device.type, self.precision):
                        tokens = torch.nn.functional.normalize(net.pe_embedding(tokens), dim=2)
                        _, embedding = net.forward(tokens, mask=mask)
                    out[idx] = embedding.float().cpu().numpy()
                    done += len(idx)
                    if progress:
                        progress(done, n)
        return Embedding(features=out, basis=out, genes_used=genes)

    def embedding_settings(self) -> dict[str, object]:
        cfg = self.model.config if self.model is not None else {}
        return {"sample_size": cfg.get("sample_size"), "pad_length": cfg.get("pad_length"), "emb_mode": "cell"}

    @property
    def embedding_precision(self) -> str:
        return effective_precision(self.device, self.precision)

    def describe(self) -> dict[str, object]:
        return {"backend": self.backend, "variant": self.variant, "device": self.device,
                "embedding_dim": self.model.config["output_dim"] if self.model else 1280,
                "context": self.model.config["pad_length"] if self.model else 1536, "precision": self.precision,
                "weights": self.weights.describe(), **self.load_info}
