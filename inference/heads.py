"""The classifier head: logistic regression on embeddings, stored as plain arrays (no pickle).

Why logistic regression and not helical's small MLP: on frozen embeddings it is as accurate in our measurements
(docs/BENCHMARKS.md), deterministic, fast on a CPU, needs no tuning of epochs, and its probabilities are
calibrated enough to threshold into "unassigned".
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inference.run_files import atomic_path

DEFAULT_HEAD = {"kind": "logistic_regression", "C": 1.0, "max_iter": 2000, "class_weight": None}


def head_cache_key(model_checksum: str, reference_sha256: str, label_column: str, settings: dict) -> str:
    payload = json.dumps([model_checksum, reference_sha256, label_column, settings], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


@dataclass
class Head:
    classes: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. the baseline's genes, scaler and PCA

    @classmethod
    def train(cls, features: np.ndarray, labels: np.ndarray, settings: dict, seed: int = 0) -> Head:
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=settings.get("C", 1.0), max_iter=settings.get("max_iter", 2000),
                                 class_weight=settings.get("class_weight"), random_state=seed)
        clf.fit(features, labels)
        return cls(classes=clf.classes_.astype(str), coef=clf.coef_, intercept=clf.intercept_)

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """As scikit-learn's LogisticRegression computes it (softmax; sigmoid for two classes)."""
        scores = features @ self.coef.T + self.intercept
        if len(self.classes) == 2:
            p = 1.0 / (1.0 + np.exp(-scores[:, 0]))
            return np.column_stack([1 - p, p])
        scores = scores - scores.max(axis=1, keepdims=True)
        e = np.exp(scores)
        return e / e.sum(axis=1, keepdims=True)

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, classes=self.classes, coef=self.coef, intercept=self.intercept,
                     **{f"extra__{k}": v for k, v in self.extra.items()})

    @classmethod
    def load(cls, path: Path) -> Head:
        with np.load(path, allow_pickle=False) as z:
            extra = {k[len("extra__"):]: z[k] for k in z.files if k.startswith("extra__")}
            return cls(classes=z["classes"], coef=z["coef"], intercept=z["intercept"], extra=extra)
