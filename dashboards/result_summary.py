"""The panes of a finished run's results, built from its row: the headline (untrained banner, metrics in words,
downloads; the confusion matrix) and the details (per-class F1, calibration). Pure builders: a test calls them
with a run and reads the panes back."""

from __future__ import annotations

import panel as pn

from dashboards.plots import confusion_heatmap, f1_bars, reliability_plot
from dashboards.result_text import UNTRAINED_BANNER, calibration_caption, metrics_markdown
from dashboards.styles import CAPTION

# the headline's plots (confusion matrix and UMAP) share one height: both fit under a laptop's fold (1440×900)
HEADLINE_HEIGHT = 420


def confusion_height(rows: int) -> int:
    """The headline's height, or taller for many classes (each row keeps room for its written-in number)."""
    return max(HEADLINE_HEIGHT, 22 * rows + 160)


def summary(run, label_source: str, level: str, links: pn.viewable.Viewable | None = None) -> pn.Column:  # noqa: ANN001
    """The banner of a run made with untrained weights, its scores and head in words, and its downloads."""
    parts = []
    if not run.provenance.get("model", {}).get("trained", True):
        parts.append(pn.pane.Alert(UNTRAINED_BANNER, alert_type="warning", css_classes=["untrained-banner"],
                                   sizing_mode="stretch_width", margin=(0, 10)))
    parts.append(pn.pane.Markdown(metrics_markdown(run, label_source, level), css_classes=["metrics"],
                                  sizing_mode="stretch_width", margin=(0, 10)))
    if links is not None:
        parts.append(links)
    return pn.Column(*parts, sizing_mode="stretch_width", css_classes=["result-summary"])


def confusion(shown: dict, normalised: bool) -> pn.viewable.Viewable | None:
    """The confusion matrix of the labels shown, as wide as its column (None without true labels)."""
    matrix = shown.get("confusion_matrix")
    if not matrix:
        return None
    plot = confusion_heatmap(matrix, normalised, width=None, height=confusion_height(len(matrix["rows"])))
    return pn.pane.HoloViews(plot, css_classes=["confusion-matrix"], sizing_mode="stretch_width")


def details(run, shown: dict) -> list[pn.viewable.Viewable]:  # noqa: ANN001 - store.tables.Run
    """Per-class F1 of the labels shown, and the reliability diagram with what it shows in words: side by side
    where the screen is wide enough, one below the other where it is not."""
    parts = []
    if shown.get("per_class"):
        parts.append(pn.pane.HoloViews(f1_bars(shown, width=None), css_classes=["f1-bars"],
                                       sizing_mode="stretch_width", min_width=320, styles={"flex": "1 1 380px"}))
    calibration = run.metrics.get("calibration") or {}
    if calibration.get("bins"):
        parts.append(pn.Column(
            pn.pane.HoloViews(reliability_plot(calibration, width=None), css_classes=["reliability-diagram"],
                              sizing_mode="stretch_width"),
            pn.pane.Markdown("#### Calibration (per-cell probabilities)  \n" + calibration_caption(calibration),
                             css_classes=["reliability-caption"], styles={**CAPTION, "font-size": "0.9em"},
                             sizing_mode="stretch_width"),
            sizing_mode="stretch_width", min_width=320, styles={"flex": "1 1 380px"}))
    return parts
