"""kNN reference mapping: each query cell takes a distance-weighted vote of its k nearest reference cells.

It works in the reference's PCA space of the model's embedding (the head's ``space``), as reference mapping tools
do, so what it says is "which reference cells does this cell sit among". Weights are 1/distance; a query cell at
distance 0 from reference cells takes their vote alone (scikit-learn's ``weights="distance"`` convention). The
search is exact, so the same files give the same labels: squared distances from a matrix product (as
scikit-learn's brute force computes them), a block of query cells at a time so the distance block stays near
``BLOCK_BYTES`` whatever the reference, and a partial sort for the k nearest. A 100,000-cell query against
80,000 reference cells (a million-cell atlas at 10,000 cells per type) took 43 s through scikit-learn's
``NearestNeighbors``; see docs/BENCHMARKS.md for this search.
"""

from __future__ import annotations

import numpy as np

from inference.counts import AnnotationError
from inference.heads.base import Classifier, class_counts

DEFAULT_K = 15
BLOCK_BYTES = 256 * 2**20  # the distances of a block of query cells to every reference cell


def resolve_k(requested: int | None, counts: dict[str, int]) -> int:
    """The k a reference allows: a requested k must fit it (else a plain-words error); without one, 15 or the
    smallest class's size if smaller (a class of fewer than k cells can rarely win a vote)."""
    n = sum(counts.values())
    smallest, size = min(counts.items(), key=lambda kv: kv[1])
    if requested is None:
        return max(1, min(DEFAULT_K, size, n))
    if requested < 1:
        raise AnnotationError("k (the number of neighbours) must be at least 1.")
    if requested > n:
        raise AnnotationError(f"k = {requested} is larger than the reference ({n:,} labelled cells): choose "
                              f"k of at most {n:,}.")
    if requested > size:
        raise AnnotationError(f"k = {requested} is larger than the reference's class {smallest!r} ({size} cells): "
                              f"its cells could rarely win a vote. Choose k of at most {size}, or leave k out "
                              "(it then follows the smallest class).")
    return requested


class KnnHead(Classifier):
    kind = "knn"
    uses_space = True

    def __init__(self, classes: np.ndarray, points: np.ndarray, label_index: np.ndarray, k: int) -> None:
        self.classes, self.points, self.label_index, self.k = classes, points, label_index, int(k)
        self._points: np.ndarray | None = None  # float64, with their squared norms: made once per head
        self._norms: np.ndarray | None = None

    @classmethod
    def train(cls, x: np.ndarray, labels: np.ndarray, settings: dict, seed: int = 0) -> KnnHead:
        k = resolve_k(settings.get("k"), class_counts(labels))
        classes, index = np.unique(np.asarray(labels).astype(str), return_inverse=True)
        return cls(classes, np.asarray(x, dtype=np.float32), index.astype(np.int32), k)

    def neighbours(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(distances, indices) of each row's k nearest reference cells, nearest first."""
        if self._points is None:
            self._points = np.asarray(self.points, dtype=np.float64)
            self._norms = (self._points ** 2).sum(axis=1)
        points = self._points
        x = np.asarray(x, dtype=np.float64)
        k = self.k
        distances, indices = np.empty((len(x), k)), np.empty((len(x), k), dtype=np.int64)
        rows = max(1, BLOCK_BYTES // (8 * max(1, len(points))))
        for start in range(0, len(x), rows):
            q = x[start:start + rows]
            squared = (q ** 2).sum(axis=1)[:, None] - 2 * (q @ points.T) + self._norms[None, :]
            np.maximum(squared, 0, out=squared)
            nearest = np.argpartition(squared, k - 1, axis=1)[:, :k] if k < len(points) else \
                np.broadcast_to(np.arange(len(points)), (len(q), len(points))).copy()
            near = np.take_along_axis(squared, nearest, axis=1)
            order = np.lexsort((nearest, near), axis=1)  # by distance, ties by reference position
            indices[start:start + len(q)] = np.take_along_axis(nearest, order, axis=1)
            distances[start:start + len(q)] = np.sqrt(np.take_along_axis(near, order, axis=1))
        return distances, indices

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        distances, idx = self.neighbours(x)
        return vote(distances, self.label_index[idx], len(self.classes))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"classes": self.classes, "points": self.points, "label_index": self.label_index,
                "k": np.array(self.k)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> KnnHead:
        return cls(arrays["classes"], arrays["points"], arrays["label_index"], int(arrays["k"]))

    def describe(self) -> dict[str, object]:
        return {"kind": self.kind, "k": self.k, "reference_cells": int(len(self.points))}


def vote(distances: np.ndarray, neighbour_class: np.ndarray, n_classes: int) -> np.ndarray:
    """Distance-weighted class shares: weight 1/d, or only the neighbours at d = 0 when a cell has any."""
    exact = distances <= 0
    with np.errstate(divide="ignore"):
        weights = np.where(exact.any(axis=1, keepdims=True), exact.astype(np.float64), 1.0 / distances)
    proba = np.zeros((len(distances), n_classes))
    rows = np.repeat(np.arange(len(distances)), distances.shape[1])
    np.add.at(proba, (rows, neighbour_class.ravel()), weights.ravel())
    return proba / proba.sum(axis=1, keepdims=True)
