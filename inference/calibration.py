"""Are a head's probabilities honest? Temperature scaling, expected calibration error, a reliability diagram.

Temperature scaling (Guo et al., 2017) divides the logits by one number fitted on cells the head did not see:
it changes no prediction, only how sure the head says it is. ECE is the cell-weighted gap between confidence and
accuracy over equal-width confidence bins, the number a reliability diagram draws.
"""

from __future__ import annotations

import numpy as np

ECE_BINS = 15
MIN_CALIBRATION_CELLS = 30  # fewer held-back reference cells than this: no temperature is fitted (T = 1)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, truth_index: np.ndarray) -> float:
    """The T in [0.05, 20] that minimises the negative log-likelihood of ``softmax(logits / T)``."""
    from scipy.optimize import minimize_scalar

    rows = np.arange(len(truth_index))

    def nll(log_t: float) -> float:
        z = logits / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[rows, truth_index]))

    best = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(best.x))


def calibration_split(labels: np.ndarray, fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """Boolean mask of reference cells held back to fit the temperature: ``fraction`` of every class with at
    least 5 cells (smaller classes stay whole in training: the head must see them)."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(labels), dtype=bool)
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        if len(idx) >= 5:
            held[rng.choice(idx, size=max(1, int(round(len(idx) * fraction))), replace=False)] = True
    return held


def uncalibrated(proba: np.ndarray, temperature: float) -> np.ndarray:
    """The probabilities before temperature scaling: softmax(T * log p) (the logits up to a per-row constant)."""
    return softmax(temperature * np.log(np.clip(proba.astype(np.float64), 1e-30, None)))


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> dict[str, object]:
    """ECE and the diagram's bins (only bins holding cells), for cells whose truth is known."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows, ece, n = [], 0.0, len(confidence)
    for b in range(bins):
        m = which == b
        if not m.any():
            continue
        conf, acc = float(confidence[m].mean()), float(correct[m].mean())
        ece += m.sum() / n * abs(acc - conf)
        rows.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": int(m.sum()),
                     "confidence": round(conf, 4), "accuracy": round(acc, 4)})
    return {"ece": round(float(ece), 4) if n else None, "n_cells": int(n), "bins": rows}
