"""``hp.show``: a finished annotation's views inline in Jupyter, drawn as the dashboard draws them (datashaded UMAP,
row-normalised confusion matrix, per-class F1) with the metrics, from an annotated AnnData or a run id."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from app.notebook_api import client
from app.notebook_show import annotated_views_data

if TYPE_CHECKING:
    import holoviews as hv
    from anndata import AnnData

_loaded = False


def _extension() -> None:
    """holoviews' Bokeh backend, loaded once (its notebook resources come with the first output)."""
    global _loaded
    if not _loaded:
        import holoviews as hv

        hv.extension("bokeh", logo=False)
        _loaded = True


def show(result: AnnData | str, color_by: str = "predicted_label") -> hv.Layout:
    """The views of an annotated AnnData (what ``hp.annotate`` returns, or a downloaded file), or of a run given by
    its id (its annotated file fetched by the client in use, local or remote). Jupyter displays the Layout."""
    import holoviews as hv
    from anndata import AnnData

    from dashboards.plots import confusion_heatmap, f1_bars, umap_plot

    _extension()
    adata = result if isinstance(result, AnnData) else client().annotated(str(result))
    cells, metrics, about = annotated_views_data(adata, color_by)
    untrained = " (untrained weights)" if about["untrained"] else ""
    panels = [umap_plot(cells, color_by, title=f"{about['model']}{untrained}: UMAP by {color_by}", width=520)]
    if metrics:
        panels += [confusion_heatmap(metrics["confusion_matrix"], normalised=True, width=560, height=480),
                   f1_bars(metrics, width=460)]
    summary = {"cells": f"{adata.n_obs:,}",
               "assigned": f"{(cells['predicted_label'] != 'unassigned').mean():.3f}",
               **{k: f"{metrics[k]:.3f}" for k in ("macro_f1", "accuracy", "weighted_f1") if k in metrics}}
    panels.append(hv.Table(pd.DataFrame({"metric": list(summary), "value": list(summary.values())}),
                           kdims=["metric"], vdims=["value"]).opts(title="Metrics", width=300, height=200))
    return hv.Layout(panels).cols(2)
