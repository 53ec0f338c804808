"""kNN reference mapping: each query cell takes a distance-weighted vote of its k nearest reference cells.

It works in the reference's PCA space of the model's embedding (the head's ``space``), as reference mapping tools
do, so what it says is "which reference cells does this cell sit among". Weights are 1/distance; a query cell at
distance 0 from reference cells takes their vote alone (scikit-learn's ``weights="distance"`` convention). The
search is exact (scikit-learn), so the same files give the same labels.
"""

from __future__ import annotations

import os

import numpy as np

from inference.counts import AnnotationError
from inference.heads.base import Classifier, class_counts

DEFAULT_K = 15


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
        self._index = None

    @classmethod
    def train(cls, x: np.ndarray, labels: np.ndarray, settings: dict, seed: int = 0) -> KnnHead:
        k = resolve_k(settings.get("k"), class_counts(labels))
        classes, index = np.unique(np.asarray(labels).astype(str), return_inverse=True)
        return cls(classes, np.asarray(x, dtype=np.float32), index.astype(np.int32), k)

    def neighbours(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The search may use every core this process may run on: a Dask worker starts with one OpenMP thread
        (so that its tasks run side by side), and scikit-learn's search then took 37.5 s for 100,000 cells among
        100,000 where two threads took 20.3 s; two such searches at once on two cores took the same time with one
        or two threads each (docs/BENCHMARKS.md)."""
        from sklearn.neighbors import NearestNeighbors
        from threadpoolctl import threadpool_limits

        if self._index is None:
            self._index = NearestNeighbors(n_neighbors=self.k).fit(self.points)
        with threadpool_limits(limits=len(os.sched_getaffinity(0)), user_api="openmp"):
            return self._index.kneighbors(np.asarray(x, dtype=np.float32), n_neighbors=self.k)

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
