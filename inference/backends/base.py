"""The backend interface: load once, embed an AnnData, describe yourself."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from anndata import AnnData

Progress = Callable[[int, int], None]
ShouldStop = Callable[[], bool]


class Cancelled(RuntimeError):
    """Raised between batches when the caller asked to stop."""


@dataclass
class Embedding:
    """What a backend gives for a set of cells: ``features``, the embedding that is stored (embedding store, run
    folder, ``obsm``) and read by the views; ``basis``, the UMAP's (the same matrix for every backend today); and,
    only for a backend whose head reads something else, ``head_input`` (the baseline's 2,000 genes: recomputed
    from the counts whenever needed, never stored, as 2,000 numbers per cell would be 8 GB at a million cells)."""

    features: np.ndarray
    basis: np.ndarray
    genes_used: int
    head_input: np.ndarray | None = None

    @property
    def for_head(self) -> np.ndarray:
        """What a classifier head trains on and predicts from."""
        return self.features if self.head_input is None else self.head_input


class Backend(ABC):
    """A model that turns cells into vectors. ``load`` once; ``embed`` many times.

    It describes itself, so nothing outside a backend asks which one it is: ``provenance()`` is what a result
    records about it, ``state()``/``set_state()`` what it learnt from a reference (kept with a cached head), and
    ``needs_weights`` whether the catalog tracks weights for it, ``requires_gpu`` whether it can run only on a GPU.
    """

    backend: str = ""
    variant: str = ""
    loads: int = 0
    needs_weights: ClassVar[bool] = True
    corrects_batches: ClassVar[bool] = False  # an integration method: ``correct`` after ``embed``
    # helical runs it on CUDA only: its actor goes to a GPU worker, and a cluster without one refuses its runs
    requires_gpu: ClassVar[bool] = False
    # its head reads ``head_input`` (from the counts), not the stored embedding: a reused embedding does not feed it
    head_reads_counts: ClassVar[bool] = False
    weights = None  # inference.weights.ResolvedWeights, for backends that need them

    @property
    def key(self) -> str:
        return f"{self.backend}:{self.variant}" if self.variant else self.backend

    @abstractmethod
    def load(self) -> None: ...

    def fit(self, reference: AnnData) -> None:  # noqa: B027 - a no-op for the foundation models
        """Learn from the labelled reference what the embedding needs (only the baseline does)."""

    @abstractmethod
    def embed(self, adata: AnnData, progress: Progress | None = None,
              should_stop: ShouldStop | None = None) -> Embedding: ...

    @abstractmethod
    def describe(self) -> dict[str, object]: ...

    def provenance(self) -> dict[str, object]:
        """What a result records about the model: its weights' checksum, trained or generated, where from."""
        w = self.weights
        return {"backend": self.backend, "variant": self.variant, "checksum": w.checksum, "trained": w.trained,
                "weights": w.origin, "weights_root": str(w.root)}

    @property
    def has_state(self) -> bool:
        """Whether ``fit`` learns something the head needs again (then kept with the cached head)."""
        return False

    def state(self) -> dict[str, np.ndarray]:
        return {}

    def correct(self, embedding: np.ndarray, batch: np.ndarray, seed: int = 0) -> np.ndarray:
        """An integration method's correction of ``embedding`` across ``batch`` (``corrects_batches`` only)."""
        raise NotImplementedError(f"{self.key} does not correct for batches.")

    def fit_settings(self) -> dict[str, object]:
        """What ``fit`` depends on besides the cells (a backend fitted on the dataset it embeds is keyed by this
        and the dataset, so a stored embedding is found without fitting again)."""
        return {}

    def embedding_settings(self) -> dict[str, object]:
        """What besides the weights and precision changes this backend's embedding of a cell: part of the
        embedding store's key, so an entry is never served for other settings (a fitted backend: what it learnt)."""
        return {}

    @property
    def embedding_precision(self) -> str:
        """The arithmetic the embedding is computed in (part of the embedding store's key)."""
        return "fp32"

    def genes_present(self, adata: AnnData) -> tuple[int, int] | None:
        """(genes of ``adata`` this backend's fitted state reads, genes it reads), or None when its inputs are its
        vocabulary (checked with every upload instead)."""
        return None

    def set_state(self, state: dict[str, np.ndarray]) -> None:  # noqa: B027 - nothing to restore by default
        """Restore what ``state()`` returned."""

    def head_input(self, adata: AnnData, progress: Progress | None = None,
                   should_stop: ShouldStop | None = None) -> np.ndarray:
        """What the head reads for ``adata`` when it is not the embedding (``head_reads_counts`` backends only)."""
        raise NotImplementedError(f"{self.key}'s head reads its embedding.")


def check_stop(should_stop: ShouldStop | None) -> None:
    if should_stop is not None and should_stop():
        raise Cancelled("cancelled by the user")
