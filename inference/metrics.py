"""Metrics of predictions against true labels: macro-F1 first, since accuracy hides small classes."""

from __future__ import annotations

import numpy as np

UNASSIGNED = "unassigned"
# why a cell is unassigned (obs["unassigned_reason"]; empty for assigned cells)
LOW_CONFIDENCE = "low confidence"
NOT_IN_REFERENCE = "does not fit the reference"


def annotation_metrics(truth: np.ndarray, predicted: np.ndarray) -> dict[str, object]:
    """Accuracy, macro-F1 over the true classes, per-class precision/recall/F1/support, confusion matrix.

    Cells left "unassigned" count as wrong for their true class; "unassigned" is a column of the confusion
    matrix but not a class of the macro average (a reference cannot be asked to contain it).
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    truth = np.asarray(truth).astype(str)
    predicted = np.asarray(predicted).astype(str)
    classes = sorted(set(truth))
    columns = classes + sorted(set(predicted) - set(classes))
    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, labels=classes,
                                                                     zero_division=0)
    cm = confusion_matrix(truth, predicted, labels=columns)[: len(classes)]
    rows = cm.sum(axis=1, keepdims=True)
    return {
        "n_cells": int(len(truth)),
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, labels=classes, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(truth, predicted, labels=classes, average="weighted", zero_division=0)),
        "assigned_fraction": float(np.mean(predicted != UNASSIGNED)),
        "per_class": {c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for c, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)},
        "confusion_matrix": {
            "rows": classes, "columns": columns, "counts": cm.tolist(),
            "row_normalised": np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0).round(4).tolist(),
        },
    }
