"""The JSON shapes of the API's objects (applications, models, datasets, runs), in one place for every handler
and for the OpenAPI document."""

from __future__ import annotations

from inference.metrics import coverage

__all__ = ["application_json", "coverage", "dataset_json", "model_json", "run_json", "scores_json"]


def application_json(a) -> dict:  # noqa: ANN001
    return {"id": a.id, "name": a.name, "description": a.description}


def model_json(m, device: str, requires_gpu: bool = False) -> dict:  # noqa: ANN001
    """``device``: where it would run now (``needs a GPU`` for a GPU-only model without one)."""
    return {"id": m.id, "name": m.name, "speed": m.speed, "accuracy": m.accuracy,
            "accuracy_source": m.accuracy_source, "description": m.description, "applications": m.applications,
            "weights": m.weights_status, "weights_detail": m.weights_detail,
            "untrained": m.weights_status == "generated", "variant": m.variant, "device": device,
            "requires_gpu": requires_gpu}


def dataset_json(d, embeddings_bytes: int | None = None) -> dict:  # noqa: ANN001
    out = {"dataset_id": d.id, "file_name": d.file_name, "sha256": d.sha256, "size_bytes": d.size_bytes,
           "n_cells": d.n_cells, "n_genes": d.n_genes, "created_at": d.created_at, "check": d.check_report,
           "created_by": d.created_by}
    if embeddings_bytes is not None:  # the embedding store's entries of this dataset
        out["embeddings_bytes"] = embeddings_bytes
    return out


def run_json(r) -> dict:  # noqa: ANN001
    return {"run_id": r.id, "status": r.status, "application": r.application_id, "model": r.model_id,
            "dataset": r.dataset_id, "reference": r.reference_dataset_id, "label_column": r.label_column,
            "truth_column": r.truth_column, "stage": r.stage, "progress": r.progress, "error": r.error,
            "created_at": r.created_at, "started_at": r.started_at, "finished_at": r.finished_at,
            "macro_f1": r.metrics.get("macro_f1"), "scores": scores_json(r.metrics or {}), "group_id": r.group_id,
            "parameters": r.parameters, "created_by": r.created_by}


def scores_json(metrics: dict) -> dict:
    """Each score of an annotation run with what it covers (cells, classes, labelled cells, those left out, and
    ``partial``: under half the labelled cells or one class, not the run's score): the cell type's, the majority
    vote's and the cell class's, where recorded."""
    out = {}
    for key, m in (("cell_type", metrics), ("majority_voting", metrics.get("majority_voting")),
                   ("cell_class", metrics.get("cell_class"))):
        if isinstance(m, dict) and m.get("macro_f1") is not None:
            out[key] = {"macro_f1": m["macro_f1"], "accuracy": m.get("accuracy"), **coverage(m)}
    return out
