"""Pure functions from result data to HoloViews elements: testable without a server or a browser.

The UMAP is rasterised by datashader on the server (images of a fixed size, whatever the number of cells), with
categorical colouring for labels and a mean for continuous values (chosen by the column's dtype); hover reports the
cell under the cursor (``selector``), so a million cells cost one image, not a million glyphs.
"""

from __future__ import annotations

import datashader as ds
import holoviews as hv
import numpy as np
import pandas as pd
from holoviews.operation.datashader import dynspread, rasterize

hv.extension("bokeh", logo=False)

CATEGORY_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                   "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd",
                   "#e6550d", "#31a354", "#756bb1", "#636363"]
UNASSIGNED_COLOR = "#c8c8c8"
NO_CLASS = "unassigned or unmapped"  # a cell without a coarse cell class (unassigned, or its label not mapped)
GREY = ("unassigned", NO_CLASS)
# the cell under the cursor costs a second reduction per image (and the cells' names): up to half a million cells
HOVER_CELL_MAX = 500_000
HOVER_COLUMNS = ("cell_id", "predicted_label", "confidence", "true_label", "agreement")
# more values than this (e.g. the over-clustering's clusters) get colours but no legend: it would not fit the plot
LEGEND_MAX = 30


def color_key(categories: list[str]) -> dict[str, str]:
    """A stable colour per label (sorted), grey for 'unassigned' (and for cells without a coarse cell class), so
    two runs use the same colours."""
    named = sorted(c for c in categories if c not in GREY)
    key = {c: CATEGORY_COLORS[i % len(CATEGORY_COLORS)] for i, c in enumerate(named)}
    key.update(dict.fromkeys(GREY, UNASSIGNED_COLOR))
    return key


def is_continuous(column: pd.Series) -> bool:
    """Numbers are coloured by their mean per pixel; labels, text and yes/no by one colour per value."""
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def color_range(column: pd.Series) -> tuple[float, float]:
    """0-1 for values that all lie in it (fractions, probabilities: comparable across runs), else their range."""
    low, high = float(column.min()), float(column.max())
    if np.isnan(low) or (low >= 0 and high <= 1):
        return 0.0, 1.0
    return low, high


def size_opts(width: int | None, height: int) -> dict:
    """A fixed ``width``, or None: as wide as the plot's container (``responsive``) at ``height``."""
    return {"width": width, "height": height} if width else {"responsive": True, "height": height, "min_width": 280}


def umap_plot(cells: pd.DataFrame, color_by: str = "predicted_label", title: str = "",
              categories: list[str] | None = None, width: int | None = 560, hover: bool | None = None,
              label: str | None = None, height: int = 480) -> hv.DynamicMap:
    """Datashaded UMAP of ``cells`` (columns umap_1, umap_2, cell_id, predicted_label, confidence, ...).

    ``color_by``: any column; a numeric one is rasterised with its mean per pixel (colour scale 0-1 when all its
    values lie in 0-1, as fractions, probabilities and the reference fit do, else its own range; the colour bar
    is titled ``label``), any other one by category (a legend up to ``LEGEND_MAX`` values).
    ``hover``: the cell under the cursor (a second reduction per image: +1 s at 10 million cells); by default
    only up to ``HOVER_CELL_MAX`` cells. Above it the hover shows what is under the cursor per label, which the
    image's own aggregation already holds (bench/views.py measures both).
    ``width`` None: as wide as its container (the legend included), ``height`` high."""
    if hover is None:
        hover = len(cells) <= HOVER_CELL_MAX
    # without the per-cell hover the element carries only what the image needs (no cell names to copy or check)
    vdims = [c for c in HOVER_COLUMNS if c in cells.columns] if hover else []
    if color_by not in vdims:
        vdims.append(color_by)
    common = dict(**size_opts(width, height), xaxis=None, yaxis=None, title=title, tools=["hover"],
                  bgcolor="white", active_tools=["wheel_zoom"])
    selector = ds.first("confidence") if hover and "confidence" in vdims else None
    column = cells[color_by]
    if is_continuous(column):
        points = hv.Points(cells[["umap_1", "umap_2", *vdims]], kdims=["umap_1", "umap_2"], vdims=vdims)
        raster = rasterize(points, aggregator=ds.mean(color_by), selector=selector)
        return dynspread(raster, threshold=0.6).opts(cmap="viridis", colorbar=True, clim=color_range(column),
                                                     clabel=label or color_by, **common)
    if not isinstance(column.dtype, pd.CategoricalDtype):
        column = column.astype(str).astype("category")
    column = column.cat.rename_categories([str(c) for c in column.cat.categories])
    cats = categories or sorted(column.cat.categories)
    # recoding a categorical maps its few categories, never its millions of cells' strings. set_categories, not
    # astype: pandas treats unordered dtypes with the same categories in another order as equal, so astype kept
    # the file's order of first appearance and the image's layers took the colours of other labels in the legend
    data = cells[["umap_1", "umap_2", *[c for c in vdims if c != color_by]]].assign(
        **{color_by: column.cat.set_categories(cats)})
    points = hv.Points(data, kdims=["umap_1", "umap_2"], vdims=vdims)
    raster = rasterize(points, aggregator=ds.count_cat(color_by), selector=selector)
    keyed = color_key(cats)
    shaded = dynspread(raster, threshold=0.6).opts(cmap=[keyed[c] for c in cats], **common)
    if len(cats) > LEGEND_MAX:
        return shaded
    legend = hv.NdOverlay({c: hv.Points([(np.nan, np.nan)], label=c).opts(color=keyed[c], size=8)
                           for c in cats})
    return (shaded * legend).opts(legend_position="right", **size_opts(width and width + 200, height))


def confusion_heatmap(confusion: dict, normalised: bool = False, width: int | None = 620,
                      height: int = 520) -> hv.Overlay:
    """Rows: true labels; columns: predicted labels (with 'unassigned'); counts or row fractions written in.
    ``width`` None: as wide as its container."""
    rows, cols = confusion["rows"], confusion["columns"]
    values = np.array(confusion["row_normalised" if normalised else "counts"], dtype=float)
    records = [(c, r, values[i, j]) for i, r in enumerate(rows) for j, c in enumerate(cols)]
    heat = hv.HeatMap(records, kdims=["predicted", "true"], vdims=["value"]).opts(
        cmap="Blues", colorbar=True, xrotation=45, tools=["hover"], **size_opts(width, height),
        invert_yaxis=True, title="Confusion matrix (" + ("row-normalised" if normalised else "counts") + ")",
        clim=(0, 1 if normalised else float(values.max() or 1)))
    text = [f"{v:.2f}" if normalised else f"{int(v)}" for _, _, v in records]
    top = 1 if normalised else float(values.max() or 1)
    # dark text on light cells, white on dark ones: every number stays readable
    labels = [hv.Labels([(c, r, t) for (c, r, v), t in zip(records, text, strict=True) if dark == (v > 0.6 * top)],
                        kdims=["predicted", "true"], vdims=["text"]).opts(
                            text_font_size="9pt", text_color="white" if dark else "black") for dark in (False, True)]
    return heat * labels[0] * labels[1]


def f1_bars(metrics: dict, width: int | None = 480) -> hv.Bars:
    """Each class's F1, worst first (``width`` None: as wide as its container)."""
    per_class = metrics.get("per_class", {})
    data = sorted(((c, v["f1"], v["support"]) for c, v in per_class.items()), key=lambda t: t[1])
    return hv.Bars(data, kdims=["class"], vdims=["F1", "support"]).opts(
        invert_axes=True, **size_opts(width, max(200, 28 * len(data) + 60)), xlim=(0, 1), tools=["hover"],
        title=f"Per-class F1 (macro-F1 {metrics.get('macro_f1', 0):.3f})", color="#2b5797")


def reliability_plot(calibration: dict, width: int | None = 420, height: int = 380) -> hv.Overlay:
    """Reliability diagram from a run's ``metrics["calibration"]``: per confidence bin (only bins holding cells),
    a bar up to the fraction of cells called right, a red band from there to the bin's mean confidence (the gap
    the ECE weighs) and a point at (mean confidence, accuracy); the dashed diagonal is perfect calibration.
    ``width`` None: as wide as its container."""
    bins = calibration.get("bins") or []
    ece = calibration.get("ece")
    x = hv.Dimension("confidence", label="confidence (top class)", range=(0, 1))
    y = hv.Dimension("accuracy", label="fraction correct", range=(0, 1))
    hover = ["cells", "mean_confidence", "fraction_correct"]
    rows = [(b["lower"], 0.0, b["upper"], b["accuracy"], b["count"], b["confidence"], b["accuracy"]) for b in bins]
    bars = hv.Rectangles(rows, kdims=[x, y, "x1", "y1"], vdims=hover, label="accuracy").opts(
        color="#2b5797", line_color="white", alpha=0.85, tools=["hover"])
    gaps = hv.Rectangles([(b["lower"], min(b["accuracy"], b["confidence"]), b["upper"],
                           max(b["accuracy"], b["confidence"]), b["count"], b["confidence"], b["accuracy"])
                          for b in bins], kdims=[x, y, "x1", "y1"], vdims=hover, label="gap").opts(
        color="#d62728", alpha=0.3, line_alpha=0)
    points = hv.Scatter([(b["confidence"], b["accuracy"]) for b in bins], x, y).opts(color="black", size=5)
    diagonal = hv.Curve([(0, 0), (1, 1)], x, y, label="perfect calibration").opts(
        color="#7f7f7f", line_dash="dashed")
    title = "Reliability" + (f" (ECE {ece:.3f})" if ece is not None else "")
    return (bars * gaps * points * diagonal).opts(
        **size_opts(width, height), title=title, xlim=(0, 1), ylim=(0, 1), legend_position="top_left",
        show_grid=True)


def scores_heatmap(scores: pd.DataFrame, best: dict[str, set[str]] | None = None, title: str = "",
                   width: int = 980) -> hv.Overlay:
    """Rows of ``scores`` (models) against its columns (scores in 0-1, better higher) in their order, each value
    written in, with a star after the best of a column (``best``: column -> row labels); a missing value stays
    blank. The text is dark on light cells and white on dark ones."""
    best = best or {}
    rows, columns = [str(i) for i in scores.index], [str(c) for c in scores.columns]
    records = [(c, r, float(v)) for r, (_, values) in zip(rows, scores.iterrows(), strict=True)
               for c, v in zip(columns, values, strict=True) if pd.notna(v)]
    x = hv.Dimension("score", values=columns)
    y = hv.Dimension("model", values=rows)
    heat = hv.HeatMap(records, kdims=[x, y], vdims=["value"]).opts(
        cmap="Blues", clim=(0, 1), colorbar=True, clabel="score", xrotation=35, width=width,
        height=150 + 42 * len(rows), invert_yaxis=True, tools=["hover"], title=title, xlabel="", ylabel="",
        toolbar=None)

    def text(c: str, r: str, v: float) -> str:
        return f"{v:.2f}" + (" ★" if r in best.get(c, ()) else "")

    labels = [hv.Labels([(c, r, text(c, r, v)) for c, r, v in records if dark == (v > 0.6)], kdims=[x, y],
                        vdims=["text"]).opts(text_font_size="9pt", text_color="white" if dark else "black")
              for dark in (False, True)]
    return heat * labels[0] * labels[1]


def disagreement(a: pd.DataFrame, b: pd.DataFrame, name_a: str, name_b: str) -> pd.DataFrame:
    """Cells of run A with 'agree' or 'disagree' against run B on the same cells (by cell id)."""
    merged = a[["cell_id", "umap_1", "umap_2", "predicted_label", "confidence"]].merge(
        b[["cell_id", "predicted_label"]].rename(columns={"predicted_label": "other_label"}), on="cell_id",
        how="left")
    same = merged["predicted_label"].astype(object) == merged["other_label"].astype(object)
    merged["agreement"] = pd.Categorical(np.where(same, "agree", f"{name_a} ≠ {name_b}"))
    return merged


def warm_up() -> None:
    """datashader compiles its kernels on first use (4-6 s): pay that at start, not at a user's first plot."""
    cells = pd.DataFrame({"umap_1": np.random.rand(100), "umap_2": np.random.rand(100),
                          "predicted_label": ["a", "b"] * 50, "confidence": np.random.rand(100),
                          "cell_id": [str(i) for i in range(100)]})
    hv.render(umap_plot(cells), backend="bokeh")
    hv.render(umap_plot(cells, "confidence"), backend="bokeh")
