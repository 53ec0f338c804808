"""Nicheformer through helical: helical loads, tokenises and embeds; we give it what it needs to be right and feed
it in blocks.

What bare ``process_data`` + ``get_embeddings`` would get wrong here, and how this path avoids it:
- context tokens: the tokenizer prepends [species, assay, modality] tokens only for the ``obs`` columns present,
  but the embedding always drops the first 3 positions; without the columns it drops each cell's 3 most expressed
  genes instead. An assay (or species, modality) it does not know silently becomes padding. We always set all
  three, to values helical knows (checked here), and record them in ``embedding_settings``.
- gene ids: symbols (or Ensembl ids under ``gene_names="index"``) send helical to its symbol table, fetched through
  its downloader. We give it Ensembl ids (mapped offline) with ``gene_names="ensembl_id"``; no mapping runs.
- memory: the tokenizer densifies the whole matrix (cells × the reference's ~20k genes, float64, several copies);
  we tokenise ``BLOCK_CELLS`` cells at a time. Every cell is padded to the 1,500-token context and its tokens
  depend on its own counts only, so blocks and batches do not change what a cell gets.
- the reference (``model.h5ad``): if helical cannot read it, it prints a warning and takes tokens from the file's
  own column order; a vocabulary gene missing from it shifts every later gene's token. Both are refused at load.
Every file is opened by helical (JSON, safetensors, h5ad; nothing unpickled) after our sha256 check.
"""

from __future__ import annotations

import functools
import json
import time
import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData, ImplicitModificationWarning

from inference.backends.base import Backend, Embedding, Progress, ShouldStop, check_stop
from inference.backends.common import autocast, check_complete, effective_precision, helical_input, resolve_device
from inference.batching import default_token_budget, run_with_oom_retry
from inference.helical_env import isolated
from inference.weights import NICHEFORMER_VARIANT, ResolvedWeights, WeightsError

AUX_TOKENS = 30  # the tokenizer's: a gene's token is 30 + its column in the reference
CONTEXT = 1_500  # the tokenizer pads every cell to this many tokens
BLOCK_CELLS = 512  # cells tokenised at once: 512 × ~20k genes × 8 bytes ≈ 80 MB per dense copy
ARCH_KEYS = ("dim_model", "nheads", "dim_feedforward", "nlayers", "n_tokens", "context_length")
SPECIES = ("auto", "human", "mouse")  # auto: mouse when most of the cells' Ensembl ids are ENSMUSG, else human
DEFAULT_ASSAY = "10x 3' v3"
MODALITIES = ("dissociated", "spatial")
PRECISIONS = ("helical", "bf16", "fp32")


@functools.lru_cache(maxsize=1)
def known_assays() -> tuple[str, ...]:
    """The assay names helical's tokenizer turns into a token (any other becomes padding)."""
    with isolated():
        from helical.models.nicheformer.tokenization_nicheformer import TECHNOLOGY_DICT
    return tuple(TECHNOLOGY_DICT)


class NicheformerBackend(Backend):
    backend = "nicheformer"

    def __init__(self, weights: ResolvedWeights, device: str | None = None, precision: str = "helical",
                 species: str = "auto", assay: str = DEFAULT_ASSAY, modality: str = "dissociated",
                 max_tokens: int | None = None) -> None:
        if weights.variant != NICHEFORMER_VARIANT:
            raise WeightsError(f"Unknown Nicheformer variant {weights.variant!r}.")
        if species not in SPECIES:
            raise ValueError(f"species {species!r}: choose {', '.join(SPECIES)}.")
        if assay not in known_assays():
            raise ValueError(f"assay {assay!r} is not one Nicheformer knows (it would become padding): choose "
                             f"{', '.join(repr(a) for a in known_assays())}.")
        if modality not in MODALITIES:
            raise ValueError(f"modality {modality!r}: choose {', '.join(MODALITIES)}.")
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: choose {', '.join(PRECISIONS)}.")
        self.variant = weights.variant
        self.weights = weights
        self.device = resolve_device(device)
        self.precision = precision
        # helical runs Nicheformer in fp32 (no autocast), so "helical" means fp32 here
        self._compute = "fp32" if precision == "helical" else precision
        self.species, self.assay, self.modality = species, assay, modality
        self.max_tokens = max_tokens or default_token_budget(self.device)
        self.model = None
        self.vocabulary: frozenset[str] = frozenset()
        self.load_info: dict[str, object] = {}

    def helical_config(self, batch_size: int = 32):
        """helical's own config, pointed at the resolved folder; its downloader is given nothing to fetch."""
        from helical.models.nicheformer import NicheformerConfig

        cfg = NicheformerConfig(batch_size=batch_size, device=self.device)
        cfg.list_of_files_to_download = []  # verified by us: no request, no replacement
        cfg.files_config["model_files_dir"] = self.weights.path("nicheformer")
        return cfg

    def load(self) -> None:
        from safetensors import safe_open

        started = time.perf_counter()
        with isolated():
            from helical.models.nicheformer import Nicheformer

            try:
                self.model = Nicheformer(self.helical_config(self.cells_per_batch))
            except (OSError, ValueError, RuntimeError, KeyError) as exc:
                raise WeightsError(f"helical could not load Nicheformer from {self.weights.root}: {exc}") from exc
        folder = self.weights.path("nicheformer")
        reference = self.model.tokenizer._reference_model_cache  # noqa: SLF001 - helical swallows its read error
        if reference is None:
            raise WeightsError(f"helical could not read {folder / 'model.h5ad'}: without it every gene's token "
                               "would follow the file's own column order. Stage the release's model.h5ad again.")
        vocab = json.loads((folder / "vocab.json").read_text())
        genes = frozenset(k for k in vocab if not k.startswith("["))
        missing = genes - set(map(str, reference.var_names))
        if missing:
            raise WeightsError(f"{len(missing)} genes of {folder / 'vocab.json'} (e.g. {sorted(missing)[0]}) are not "
                               "in model.h5ad: helical's outer join would add them and shift every later gene's "
                               "token. The two files are not of one release.")
        config = self.model.model.config
        if AUX_TOKENS + reference.n_vars > config.n_tokens + 5:
            raise WeightsError(f"model.h5ad has {reference.n_vars} genes but the model's table holds "
                               f"{config.n_tokens + 5} tokens (n_tokens in config.json).")
        with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
        self.load_info = check_complete(self.model.model.state_dict(), shapes, ["nicheformer."],
                                        f"Nicheformer ({folder / 'model.safetensors'})")
        self.vocabulary = genes
        self.load_info.update(architecture={k: getattr(config, k) for k in ARCH_KEYS}, vocabulary=len(genes),
                              load_s=round(time.perf_counter() - started, 3))
        self.loads += 1

    @property
    def cells_per_batch(self) -> int:
        """Cells per forward pass: the token budget over the fixed 1,500-token context."""
        return max(1, self.max_tokens // CONTEXT)

    def resolved_species(self, ensembl_ids: pd.Series) -> str:
        """The species token's value: the option, or (``auto``) mouse when most of the genes are ENSMUSG ids."""
        if self.species != "auto":
            return self.species
        mouse = ensembl_ids.str.startswith("ENSMUSG").sum()
        return "mouse" if mouse > len(ensembl_ids) - mouse else "human"

    def helical_cells(self, adata: AnnData) -> AnnData:
        """A fresh AnnData as helical wants it: the counts (CSR) of the vocabulary's genes, unique Ensembl ids as
        var_names, and the three context columns on every cell. Shares no array with ``adata``."""
        prepared = helical_input(adata)
        ids = pd.Series(prepared.var["ensembl_id"].to_numpy(), dtype=str)
        keep = (ids.isin(self.vocabulary) & ~ids.duplicated()).to_numpy()
        if not keep.any():
            raise ValueError("None of the file's genes is in Nicheformer's vocabulary: it needs human or mouse "
                             "Ensembl ids (or symbols that map to them).")
        x = prepared.X
        x = sp.csr_matrix(x[:, keep]) if sp.issparse(x) else sp.csr_matrix(np.asarray(x)[:, keep])
        obs = pd.DataFrame({"specie": self.resolved_species(ids[keep]), "assay": self.assay,
                            "modality": self.modality}, index=prepared.obs_names)
        return AnnData(X=x, obs=obs, var=pd.DataFrame(index=pd.Index(ids[keep].to_numpy())))

    def embed(self, adata: AnnData, progress: Progress | None = None,
              should_stop: ShouldStop | None = None) -> Embedding:
        cells = self.helical_cells(adata)
        n = cells.n_obs
        model = self.model
        out = np.empty((n, int(model.model.config.dim_model)), dtype=np.float32)
        per_batch = self.cells_per_batch
        done = 0
        for start in range(0, n, BLOCK_CELLS):
            check_stop(should_stop)
            block = cells[start:start + BLOCK_CELLS]
            block = AnnData(X=block.X.copy(), obs=block.obs.copy(), var=block.var.copy())  # helical writes into it
            with isolated(), warnings.catch_warnings():
                # helical's tokenizer restores obs dtypes on a view of its own copy: anndata warns, harmlessly
                warnings.simplefilter("ignore", ImplicitModificationWarning)
                dataset = model.process_data(block, gene_names="ensembl_id")

            def step(idx: np.ndarray, dataset=dataset) -> np.ndarray:  # noqa: ANN001 - helical's Dataset
                with isolated(), autocast(self.device, self._compute):
                    return np.asarray(model.get_embeddings(dataset.select(idx.tolist())), dtype=np.float32)

            for first in range(0, block.n_obs, per_batch):
                check_stop(should_stop)
                for idx, values in run_with_oom_retry(step, np.arange(first, min(first + per_batch, block.n_obs))):
                    out[start + idx] = values
                done += min(per_batch, block.n_obs - first)
                if progress:
                    progress(done, n)
        return Embedding(features=out, basis=out, genes_used=cells.n_vars)

    def embedding_settings(self) -> dict[str, object]:
        cfg = self.model.config if self.model is not None else {"layer": -1, "with_context": False}
        return {"species": self.species, "assay": self.assay, "modality": self.modality, "layer": cfg["layer"],
                "with_context": cfg["with_context"]}

    def provenance(self) -> dict[str, object]:
        """The weights, and the context tokens every cell was given (they change its embedding)."""
        return {**super().provenance(), "context_tokens": {"species": self.species, "assay": self.assay,
                                                           "modality": self.modality}}

    @property
    def embedding_precision(self) -> str:
        return effective_precision(self.device, self._compute)

    def describe(self) -> dict[str, object]:
        return {"backend": self.backend, "variant": self.variant, "device": self.device,
                "embedding_dim": int(self.model.model.config.dim_model) if self.model else 512, "context": CONTEXT,
                "cells_per_batch": self.cells_per_batch, "precision": self.precision,
                "context_tokens": {"species": self.species, "assay": self.assay, "modality": self.modality},
                "weights": self.weights.describe(), **self.load_info}
