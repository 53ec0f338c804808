"""Logistic regression on the features, with temperature scaling: the default head.

Why logistic regression and not helical's small MLP: on frozen embeddings it is as accurate in our measurements
(docs/BENCHMARKS.md), deterministic, fast on a CPU and needs no tuning of epochs. Its probabilities are made honest
by one temperature fitted on a fifth of the reference held back from a first fit; the head kept is then refitted
on the whole reference with that temperature.
"""

from __future__ import annotations

import numpy as np

from inference.calibration import MIN_CALIBRATION_CELLS, calibration_split, fit_temperature, softmax
from inference.heads.base import Classifier


def _fit(x: np.ndarray, labels: np.ndarray, settings: dict, seed: int):  # noqa: ANN202 - a LogisticRegression
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=settings.get("C", 1.0), max_iter=settings.get("max_iter", 2000),
                              class_weight=settings.get("class_weight"), random_state=seed).fit(x, labels)


def _logits(coef: np.ndarray, intercept: np.ndarray, x: np.ndarray) -> np.ndarray:
    """As scikit-learn's LogisticRegression scores (two classes: one score, i.e. logits [0, s])."""
    scores = np.asarray(x, dtype=np.float64) @ coef.T + intercept
    return np.column_stack([np.zeros(len(scores)), scores[:, 0]]) if coef.shape[0] == 1 else scores


class LogisticHead(Classifier):
    kind = "logistic_regression"

    def __init__(self, classes: np.ndarray, coef: np.ndarray, intercept: np.ndarray, temperature: float = 1.0,
                 calibration_cells: int = 0) -> None:
        self.classes, self.coef, self.intercept = classes, coef, intercept
        self.temperature, self.calibration_cells = float(temperature), int(calibration_cells)

    @classmethod
    def train(cls, x: np.ndarray, labels: np.ndarray, settings: dict, seed: int = 0) -> LogisticHead:
        temperature, n_cal, held_out = 1.0, 0, None
        if settings.get("calibrate", True):
            held = calibration_split(labels, seed=seed)
            n_cal = int(held.sum())
            if n_cal >= MIN_CALIBRATION_CELLS and len(np.unique(labels[~held])) == len(np.unique(labels)):
                first = _fit(x[~held], labels[~held], settings, seed)
                index = {c: i for i, c in enumerate(first.classes_)}
                logits = _logits(first.coef_, first.intercept_, x[held])
                temperature = fit_temperature(logits, np.array([index[v] for v in labels[held]]))
                held_out = (held, first.classes_.astype(str)[logits.argmax(axis=1)])
            else:
                n_cal = 0
        clf = _fit(x, labels, settings, seed)
        head = cls(clf.classes_.astype(str), clf.coef_, clf.intercept_, temperature, n_cal)
        head.held_out = held_out  # the first fit's calls on the held-back fifth: the head's check, for free
        return head

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return softmax(_logits(self.coef, self.intercept, x) / self.temperature)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"classes": self.classes, "coef": self.coef, "intercept": self.intercept,
                "temperature": np.array(self.temperature), "calibration_cells": np.array(self.calibration_cells)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> LogisticHead:
        return cls(arrays["classes"], arrays["coef"], arrays["intercept"],
                   float(arrays.get("temperature", 1.0)), int(arrays.get("calibration_cells", 0)))

    def describe(self) -> dict[str, object]:
        return {"kind": self.kind, "temperature": round(self.temperature, 4),
                "calibration_cells": self.calibration_cells}
