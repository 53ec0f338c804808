"""Geneformer through helical: helical loads and tokenises; we run the encoder alone, batched by length.

Bare ``get_embeddings`` runs ``BertForMaskedLM`` whole, computing the full-vocabulary masked-LM head for every
token only to discard it, and pads batches in file order. The cell embedding it returns is the mean of the
chosen hidden layer over real tokens, which the encoder alone gives exactly; helical's own function computes
that mean here, so both paths share the arithmetic.
"""

from __future__ import annotations

import time

import numpy as np
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
from inference.weights import GENEFORMER_VARIANTS, ResolvedWeights, WeightsError


def checkpoint_shapes(path) -> dict[str, tuple[int, ...]]:  # noqa: ANN001 - a Path
    """Tensor names and shapes in a checkpoint, without unpickling anything untrusted."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return {k: tuple(v.shape) for k, v in state.items()}


class GeneformerBackend(Backend):
    backend = "geneformer"

    def __init__(self, weights: ResolvedWeights, device: str | None = None, max_tokens: int | None = None,
                 emb_layer: int = -1, precision: str = "helical") -> None:
        if weights.variant not in GENEFORMER_VARIANTS:
            raise WeightsError(f"Unknown Geneformer variant {weights.variant!r}.")
        self.variant = weights.variant
        self.weights = weights
        self.device = resolve_device(device)
        self.max_tokens = max_tokens or default_token_budget(self.device)
        self.emb_layer = emb_layer
        self.precision = precision
        self.model = None
        self.load_info: dict[str, object] = {}

    def helical_config(self, batch_size: int = 24):
        """helical's own config, pointed at the resolved files; its downloader is given nothing to fetch."""
        from helical.models.geneformer import GeneformerConfig

        cfg = GeneformerConfig(model_name=self.variant, batch_size=batch_size, emb_layer=self.emb_layer,
                               emb_mode="cell", device=self.device)
        version = GENEFORMER_VARIANTS[self.variant]["version"]
        base = self.weights.root / "geneformer" / str(version)
        cfg.list_of_files_to_download = []  # files verified by us: no HEAD request, no deletion
        cfg.files_config = {
            "model_files_dir": base / self.variant,
            "gene_median_path": base / "gene_median_dictionary.json",
            "token_path": base / "token_dictionary.json",
            "ensembl_dict_path": base / "ensembl_mapping_dict.json",
        }
        cfg.config["files_config"] = cfg.files_config
        return cfg

    def load(self) -> None:
        started = time.perf_counter()
        with isolated():
            from helical.models.geneformer import Geneformer

            try:
                self.model = Geneformer(self.helical_config())
            except (OSError, ValueError, RuntimeError) as exc:
                raise WeightsError(f"helical could not load Geneformer {self.variant} from "
                                   f"{self.weights.root}: {exc}") from exc
        weights_file = self.weights.root / next(r for r in self.weights.files if "/" + self.variant + "/" in r
                                                and r.endswith((".bin", ".safetensors")) and "training" not in r)
        shapes = checkpoint_shapes(weights_file)
        if not any(k.startswith("bert.") for k in shapes):
            shapes = {f"bert.{k}": v for k, v in shapes.items()}
        self.load_info = check_complete(self.model.model.state_dict(), shapes, ["bert.encoder.", "bert.embeddings."],
                                        f"Geneformer {self.variant} ({weights_file})")
        self.load_info["load_s"] = round(time.perf_counter() - started, 3)
        self.loads += 1

    def tokenize(self, adata: AnnData) -> tuple[object, AnnData]:
        """helical's ``process_data`` on a copy that carries Ensembl ids (mapped offline, never via the web);
        returns the tokenised dataset and the copy."""
        prepared = helical_input(adata)
        with isolated():
            return self.model.process_data(prepared, gene_names="ensembl_id"), prepared

    def embed(self, adata: AnnData, progress: Progress | None = None,
              should_stop: ShouldStop | None = None) -> Embedding:
        import torch
        from helical.models.geneformer.geneformer_utils import _compute_embeddings_depending_on_mode

        dataset, prepared = self.tokenize(adata)
        ids = dataset.with_format("numpy")["input_ids"]
        lengths = np.asarray(dataset["length"])
        m = self.model
        pad = m.pad_token_id
        encoder = m.model.bert

        def step(idx: np.ndarray) -> np.ndarray:
            batch_len = int(lengths[idx].max())
            input_ids = torch.full((len(idx), batch_len), pad, dtype=torch.long)
            for row, i in enumerate(idx):
                input_ids[row, : lengths[i]] = torch.as_tensor(ids[i])
            length_t = torch.as_tensor(lengths[idx])
            mask = (torch.arange(batch_len)[None, :] < length_t[:, None]).long()
            input_ids, mask, length_t = input_ids.to(self.device), mask.to(self.device), length_t.to(self.device)
            with torch.no_grad(), autocast(self.device, self.precision):
                out = encoder(input_ids=input_ids, attention_mask=mask,
                              output_hidden_states=self.emb_layer != -1)
                hidden = out.last_hidden_state if self.emb_layer == -1 else out.hidden_states[self.emb_layer]
                emb = _compute_embeddings_depending_on_mode(
                    hidden.float(), {"input_ids": input_ids, "length": length_t}, "cell", m.cls_present,
                    m.eos_present, m.tk.token_to_ensembl_dict)
            return np.asarray(emb, dtype=np.float32)

        features = embed_in_batches(step, lengths, self.max_tokens, progress, should_stop)
        vocab = m.tk.gene_token_dict
        genes = sum(1 for e in prepared.var["ensembl_id"] if e and e in vocab)
        return Embedding(features=features, basis=features, genes_used=genes)

    def embedding_settings(self) -> dict[str, object]:
        return {"emb_layer": self.emb_layer, "emb_mode": "cell"}

    @property
    def embedding_precision(self) -> str:
        return effective_precision(self.device, self.precision)

    def describe(self) -> dict[str, object]:
        spec = GENEFORMER_VARIANTS[self.variant]
        return {"backend": self.backend, "variant": self.variant, "device": self.device,
                "embedding_dim": self.model.model.config.hidden_size if self.model else spec["embsize"],
                "context": spec["input_size"], "max_tokens_per_batch": self.max_tokens, "precision": self.precision,
                "weights": self.weights.describe(), **self.load_info}
