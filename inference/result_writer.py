"""A finished annotation's files, written into a staging folder and published at once: the predictions table
(one row per cell, every class's probability), the embeddings, metrics, provenance and the annotated ``.h5ad``."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from inference.annotated import write_annotated
from inference.csv_safe import write_csv
from inference.prediction import Prediction, file_of
from inference.run_files import (
    ANNOTATED,
    CSV,
    EMBEDDINGS,
    METRICS,
    PREDICTIONS,
    PROBABILITY_PREFIX,
    PROVENANCE,
    atomic_folder,
)

if TYPE_CHECKING:
    from inference.pipeline import AnnotationJob

PARQUET_ROW_GROUP = 10_000


def write_results(job: AnnotationJob, p: Prediction, coords: np.ndarray, provenance: dict,
                   consensus: tuple[np.ndarray, np.ndarray] | None, terms: dict[str, np.ndarray]) -> dict[str, str]:
    final = Path(job.out_dir)
    with atomic_folder(final) as staging:
        table = pd.DataFrame({"cell_id": p.cell_ids, "predicted_label": p.predicted, "confidence": p.confidence,
                              "assigned": p.assigned, "unassigned_reason": p.reason,
                              "reference_fit": p.reference_fit, "umap_1": coords[:, 0], "umap_2": coords[:, 1]})
        if consensus is not None:
            table["over_clustering"], table["majority_voting"] = consensus
        for key, values in terms.items():
            table[key] = values.astype(str)
        if p.truth is not None:
            table["true_label"] = p.truth
        if p.held_out is not None:
            table["split"] = np.where(p.held_out, "held-out", "train")
        for i, cls in enumerate(p.classes):
            table[probability_column(cls)] = p.proba[:, i]
        # row groups of 10,000 cells: a page of the table reads one group, not the whole file
        table.to_parquet(staging / PREDICTIONS, index=False, row_group_size=PARQUET_ROW_GROUP)
        _store_embeddings(p.features, staging / EMBEDDINGS)
        (staging / METRICS).write_text(json.dumps(p.metrics, indent=2))
        (staging / PROVENANCE).write_text(json.dumps(provenance, indent=2, default=str))
        _annotated_h5ad(job, table, p, coords, provenance, staging / ANNOTATED)
        if job.write_csv:
            write_csv(table, staging / CSV)  # formula cells quoted (inference/csv_safe.py)
    return {p.name: str(final / p.name) for p in sorted(final.iterdir())}


def probability_column(cls: str) -> str:
    """The per-cell column of one class's probability (``p_<class>``, in the predictions table and CSV)."""
    return f"{PROBABILITY_PREFIX}{cls}"


def _store_embeddings(features: np.ndarray, path: Path) -> None:
    """A hard link to the file the embeddings were written to as they were produced (a copy across file systems);
    an array in memory is saved."""
    source = file_of(features)
    if source is None:
        np.save(path, np.asarray(features, dtype=np.float32))
        return
    try:
        os.link(source, path)
    except OSError:
        shutil.copyfile(source, path)


def _annotated_h5ad(job: AnnotationJob, table: pd.DataFrame, p: Prediction, coords: np.ndarray,
                    provenance: dict, path: Path) -> None:
    """The input file's own content, plus predictions in obs, and the embedding, UMAP and every class's
    probability (a DataFrame, one column per class, rows in the file's order) in obsm."""
    trained = bool(provenance["model"].get("trained", True))
    obs = {"predicted_label": pd.Categorical(table["predicted_label"].to_numpy()),
           "prediction_confidence": table["confidence"].to_numpy(),
           "prediction_assigned": table["assigned"].to_numpy(),
           "unassigned_reason": pd.Categorical(table["unassigned_reason"].to_numpy()),
           "reference_fit": table["reference_fit"].to_numpy()}
    for key in ("over_clustering", "majority_voting", "predicted_cell_type_ontology_term_id", "predicted_cell_class"):
        if key in table:
            obs[key] = pd.Categorical(table[key].to_numpy())
    if "split" in table:
        obs["prediction_split"] = pd.Categorical(table["split"].to_numpy())
    uns = {"helical_platform": {
        "model": job.model_id,
        "weights": "trained" if trained else "generated, untrained: these predictions mean nothing",
        "provenance_json": json.dumps(provenance, default=str),
    }}
    probabilities = pd.DataFrame(p.proba, index=pd.Index(p.cell_ids), columns=[str(c) for c in p.classes])
    write_annotated(Path(job.query.path), job.query.name, path, obs,
                    {f"X_{job.model_id}": p.features, "X_umap": coords,
                     "prediction_probabilities": probabilities}, uns)
