"""A foundation model with a fine-tuned backbone: a copy of the loaded backend with the tensors applied.

The worker's loaded backend serves every other run, so it is copied, never changed. The copy's embedding
settings carry the digest of the fine-tuned tensors: the embedding store keys its embeddings apart from the base
model's, and from every other fine-tuning's.
"""

from __future__ import annotations

import copy
import hashlib

import numpy as np
from anndata import AnnData

from inference.backends.base import Backend, Embedding, Progress, ShouldStop

BACKBONE_PREFIX = "ft__"  # the backbone's tensors among a head's extra arrays


def backbone_digest(backbone: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(backbone):
        a = np.ascontiguousarray(backbone[name])
        h.update(name.encode() + str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()


class FineTunedBackend(Backend):
    """``base``'s model with ``backbone`` (name -> array, as the fine-tuning adapter saved it) loaded."""

    def __init__(self, base: Backend, backbone: dict[str, np.ndarray]) -> None:
        import torch

        from inference.finetune import adapter_module

        self.base = copy.deepcopy(base)
        self.backend, self.variant, self.weights = base.backend, base.variant, base.weights
        self.digest = backbone_digest(backbone)
        adapter_module(base.backend).apply_backbone(self.base, {k: torch.from_numpy(np.asarray(v))
                                                               for k, v in backbone.items()})
        self.loads = base.loads

    def load(self) -> None:  # the base is loaded; the copy has the tuned tensors
        pass

    def embed(self, adata: AnnData, progress: Progress | None = None,
              should_stop: ShouldStop | None = None) -> Embedding:
        return self.base.embed(adata, progress, should_stop)

    def embedding_settings(self) -> dict[str, object]:
        return {**self.base.embedding_settings(), "fine_tuned": self.digest}

    @property
    def embedding_precision(self) -> str:
        return self.base.embedding_precision

    def describe(self) -> dict[str, object]:
        return {**self.base.describe(), "fine_tuned": self.digest}

    def provenance(self) -> dict[str, object]:
        return {**self.base.provenance(), "fine_tuned": self.digest}


def split_backbone(extra: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The fine-tuned backbone kept among a head's extra arrays (empty for other heads)."""
    return {k[len(BACKBONE_PREFIX):]: v for k, v in extra.items() if k.startswith(BACKBONE_PREFIX)}


def for_head(backend: Backend, extra: dict[str, np.ndarray]) -> Backend:
    """The backend a head's predictions need: ``backend`` itself, or its fine-tuned copy."""
    backbone = split_backbone(extra)
    return FineTunedBackend(backend, backbone) if backbone else backend
