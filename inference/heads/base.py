"""What every classifier head is: trained on the reference's features, it gives per-class probabilities.

A head is saved as plain arrays (no pickle), so a cached head can be read back by any later version that knows
its kind. New head kinds are new modules here plus one line in ``inference.heads.HEAD_KINDS``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np


class Classifier(ABC):
    """One head kind. ``uses_space``: it works in the reference's PCA space (kNN) rather than on the features."""

    kind: ClassVar[str] = ""
    uses_space: ClassVar[bool] = False
    trainable: ClassVar[bool] = True  # trained on features by ``train`` (a fine-tuned head is made with its model)
    classes: np.ndarray
    # (mask of held-back reference cells, their calls by a head trained without them), when training made one
    held_out: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    @abstractmethod
    def train(cls, x: np.ndarray, labels: np.ndarray, settings: dict, seed: int = 0) -> Classifier:
        """Learn from the reference: ``x`` is its features, or its coordinates in the PCA space."""

    @abstractmethod
    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Rows of probabilities over ``classes`` (each row sums to 1)."""

    @abstractmethod
    def arrays(self) -> dict[str, np.ndarray]:
        """What ``from_arrays`` needs, as plain arrays."""

    @classmethod
    @abstractmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Classifier: ...

    def describe(self) -> dict[str, object]:
        """What a result records about the trained head (settings as resolved, e.g. the k used)."""
        return {"kind": self.kind}


def class_counts(labels: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(np.asarray(labels).astype(str), return_counts=True)
    return {str(v): int(c) for v, c in zip(values, counts, strict=True)}
