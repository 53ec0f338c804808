"""What ``hp.show`` draws, from an annotated AnnData: the cells' UMAP coordinates and labels, and the metrics
computed as the run computed them (``inference.metrics.annotation_metrics`` on the cells with a truth label; in
evaluation mode only the held-out split), so a file annotated elsewhere and read back shows the run's numbers.
The drawing is the dashboard's (``dashboards/notebook_show.py``)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from app.notebook_errors import InputError

if TYPE_CHECKING:
    from anndata import AnnData


def annotated_views_data(adata: AnnData, color_by: str = "predicted_label") -> tuple[pd.DataFrame, dict, dict]:
    """(cells: umap_1, umap_2, cell_id, predicted_label, confidence and ``color_by``; metrics, empty without a
    truth column; what the file says of its run: model, untrained)."""
    from inference.metrics import annotation_metrics

    info = adata.uns.get("helical_platform", {})
    if "predicted_label" not in adata.obs or "X_umap" not in adata.obsm or "provenance_json" not in info:
        raise InputError("This AnnData was not annotated by the platform (no predicted_label, X_umap or "
                         "provenance): give what hp.annotate returned, a run's annotated .h5ad, or a run id.",
                         "invalid_request")
    provenance = json.loads(info["provenance_json"])
    coords = np.asarray(adata.obsm["X_umap"])
    cells = pd.DataFrame({"umap_1": coords[:, 0], "umap_2": coords[:, 1], "cell_id": adata.obs_names.astype(str),
                          "predicted_label": adata.obs["predicted_label"].astype(str).to_numpy(),
                          "confidence": adata.obs["prediction_confidence"].to_numpy(dtype=float)})
    if color_by not in cells:
        if color_by not in adata.obs:
            raise InputError(f"color_by {color_by!r} is not a column of obs: choose one of "
                             f"{', '.join(map(str, adata.obs.columns))}.", "invalid_request")
        cells[color_by] = adata.obs[color_by].to_numpy()
    truth_column = (provenance.get("inputs") or {}).get("truth_column")
    metrics: dict = {}
    if truth_column and truth_column in adata.obs:
        truth = adata.obs[truth_column]
        mask = truth.notna().to_numpy()
        if "prediction_split" in adata.obs:  # evaluation mode: the held-out cells only, as the run scored them
            mask &= (adata.obs["prediction_split"].astype(str) == "held-out").to_numpy()
        metrics = annotation_metrics(truth[mask].astype(str).to_numpy(), cells["predicted_label"].to_numpy()[mask])
    about = {"model": info.get("model", ""), "untrained": not provenance.get("model", {}).get("trained", True)}
    return cells, metrics, about
