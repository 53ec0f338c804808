"""The backend interface: load once, embed an AnnData, describe yourself."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from anndata import AnnData

Progress = Callable[[int, int], None]
ShouldStop = Callable[[], bool]


class Cancelled(RuntimeError):
    """Raised between batches when the caller asked to stop."""


@dataclass
class Embedding:
    """What a backend gives for a set of cells: features for the classifier head, and the basis of the UMAP
    (the same matrix for foundation models; a PCA of the features for the baseline)."""

    features: np.ndarray
    basis: np.ndarray
    genes_used: int


class Backend(ABC):
    """A model that turns cells into vectors. ``load`` once; ``embed`` many times."""

    backend: str = ""
    variant: str = ""
    loads: int = 0

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


def check_stop(should_stop: ShouldStop | None) -> None:
    if should_stop is not None and should_stop():
        raise Cancelled("cancelled by the user")
