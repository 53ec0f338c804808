"""Metrics of predictions against true labels: macro-F1 first, since accuracy hides small classes."""

from __future__ import annotations

import numpy as np

UNASSIGNED = "unassigned"
# why a cell is unassigned (obs["unassigned_reason"]; empty for assigned cells)
LOW_CONFIDENCE = "low confidence"
NOT_IN_REFERENCE = "does not fit the reference"
# a score over fewer of the labelled cells than this share, or over fewer classes, is not the run's score
MIN_COVERED_SHARE, MIN_COVERED_CLASSES = 0.5, 2


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
        "n_classes": len(classes),
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


def coverage(m: dict) -> dict[str, object]:
    """What a metrics dict covers: scored cells and classes, the labelled cells it could have covered, and whether
    it is ``partial`` (under half the labelled cells or under two classes: not to be shown as the run's score).
    Older runs' dicts lack ``n_classes`` and ``labelled_cells``: counted from ``per_class``, and every cell."""
    n_cells = int(m.get("n_cells") or 0)
    n_classes = int(m.get("n_classes", len(m.get("per_class") or {})))
    labelled = int(m.get("labelled_cells", n_cells))
    return {"n_cells": n_cells, "n_classes": n_classes, "labelled_cells": labelled,
            "left_out_cells": labelled - n_cells, "left_out_labels": list(m.get("left_out_labels") or []),
            "partial": n_cells < MIN_COVERED_SHARE * labelled or n_classes < MIN_COVERED_CLASSES}
