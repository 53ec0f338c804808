"""Pure functions from result data to HoloViews elements: testable without a server or a browser.

The UMAP is rasterised by datashader on the server (images of a fixed size, whatever the number of cells), with
categorical colouring for labels and a mean for continuous values (chosen by the column's dtype); the hover is made
in the browser from the image's own pixels (cells drawn there, their labels or mean), so a million cells cost one
image, not a million glyphs, and the tooltip is always of the pixel under the cursor.
"""

from __future__ import annotations

import datashader as ds
import datashader.transfer_functions as tf
import holoviews as hv
import numpy as np
import pandas as pd
import param
import xarray as xr
from bokeh.models import CustomJSHover, HoverTool
from holoviews.core.operation import Operation
from holoviews.operation.datashader import dynspread, rasterize

hv.extension("bokeh", logo=False)

CATEGORY_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                   "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd",
                   "#e6550d", "#31a354", "#756bb1", "#636363"]
UNASSIGNED_COLOR = "#c8c8c8"
NO_CLASS = "unassigned or unmapped"  # a cell without a coarse cell class (unassigned, or its label not mapped)
GREY = ("unassigned", NO_CLASS)
# above this many cells the results view reads no cell names with the image (a million cost a third of a second):
# the hover never needs them, and a clicked cell's details are read from the file then
HOVER_CELL_MAX = 500_000
DRAWN = "cells"  # the continuous image's second layer: how many cells are drawn on each pixel
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


LEGEND_ROW = 17  # px per legend entry (9pt text): a 420 px plot lists 20 entries in one column
LEGEND_COLUMN = 170  # px per legend column (the plot's width grows by this where it is fixed)


def legend_opts(categories: list[str], width: int | None, height: int) -> dict:
    """The legend beside the plot, in as many columns as its entries need to fit the plot's height (a title and
    the toolbar take ~70 px): 16 labels in one column of 23 px rows overflowed a 420 px plot and were cut off."""
    rows = max(1, (height - 70) // LEGEND_ROW)
    columns = -(-len(categories) // rows)
    return dict(legend_position="right", legend_cols=columns, **size_opts(width and width + LEGEND_COLUMN * columns,
                                                                          height),
                legend_opts={"label_text_font_size": "9pt", "label_height": LEGEND_ROW - 2, "glyph_height": 12,
                             "glyph_width": 12, "spacing": 2, "padding": 4, "margin": 4})


def size_opts(width: int | None, height: int) -> dict:
    """A fixed ``width``, or None: as wide as the plot's container (``responsive``) at ``height``."""
    return {"width": width, "height": height} if width else {"responsive": True, "height": height, "min_width": 280}


class spread_mean(Operation):
    """Spreads the sum and the count of a continuous column together (dynspread's rule, how='add') and divides:
    each pixel shows the mean over the cells drawn on it and the hover says how many they are. Spreading a mean
    itself with 'add' summed neighbouring means where dots overlap."""

    column = param.String(doc="The column whose mean each pixel shows.")
    threshold = param.Number(default=0.6, bounds=(0, 1), doc="dynspread's density threshold.")

    def _process(self, element: hv.Image, key: object = None) -> hv.Image:
        data = element.data
        count, total = data["n"], data["s"]
        stack = xr.concat([count.where(count > 0), total.where(count > 0)], dim="part").transpose(..., "part")
        spread = tf.dynspread(stack, threshold=self.p.threshold, max_px=3, how="add")
        cells = spread.isel(part=0, drop=True)
        mean = spread.isel(part=1, drop=True) / cells
        out = xr.Dataset({self.p.column: mean, DRAWN: cells.fillna(0)})
        return element.clone(out, vdims=[self.p.column, DRAWN])


# The tooltip is computed in the browser from the image's own pixels (never a server round trip, so it cannot lag
# behind the cursor): the number of cells drawn on the pixel under the cursor and how many of them carry each
# label, most first. ``labels``: the image's layers in order.
STACK_HOVER_JS = """
const counts = Array.from(value ?? [], Number)
const total = counts.reduce((a, b) => a + (b || 0), 0)
if (format == "total")
  return total ? String(total) : "0 (no cell drawn here)"
const named = counts.map((n, i) => [n, labels[i]]).filter(([n]) => n > 0).sort((a, b) => b[0] - a[0])
const shown = named.slice(0, MAX).map(([n, l]) => `${l}: ${n}`)
if (named.length > MAX) shown.push(`${named.length - MAX} more labels`)
return shown.length ? shown.join(" · ") : "none"
"""
MEAN_HOVER_JS = "return Number.isFinite(value) ? value.toFixed(3) : 'none (no cell drawn here)'"
HOVER_LABELS_MAX = 4  # labels named in the tooltip (the most frequent at the pixel); the others counted


def stack_hover(labels: list[str]) -> HoverTool:
    """Per-pixel tooltip of a categorical UMAP: cells drawn here and their labels, read client side."""
    formatter = CustomJSHover(args={"labels": labels}, code=STACK_HOVER_JS.replace("MAX", str(HOVER_LABELS_MAX)))
    return HoverTool(tooltips=[("cells drawn here", "@image{total}"), ("labels", "@image{labels}")],
                     formatters={"@image": formatter}, name="umap-hover")


def mean_hover(label: str) -> HoverTool:
    """Per-pixel tooltip of a continuous UMAP: the mean of the cells drawn here and how many they are."""
    return HoverTool(tooltips=[("cells drawn here", f"@{{{DRAWN}}}"), (f"mean {label}", "@image{custom}")],
                     formatters={"@image": CustomJSHover(code=MEAN_HOVER_JS)}, name="umap-hover")


def umap_plot(cells: pd.DataFrame, color_by: str = "predicted_label", title: str = "",
              categories: list[str] | None = None, width: int | None = 560, hover: bool | None = True,
              label: str | None = None, height: int = 480, streams: tuple[hv.streams.Stream, ...] = ()
              ) -> hv.DynamicMap:
    """Datashaded UMAP of ``cells`` (columns umap_1, umap_2 and ``color_by``).

    ``color_by``: any column; a numeric one is rasterised with its mean per pixel (colour scale 0-1 when all its
    values lie in 0-1, as fractions, probabilities and the reference fit do, else its own range; the colour bar
    is titled ``label``), any other one by category (a legend up to ``LEGEND_MAX`` values, in columns beside the
    plot so that every entry shows).
    ``hover`` (None: as True): a tooltip made in the browser from the image's own pixels: how many cells are
    drawn on the pixel under the cursor and their labels (or their mean). The image's aggregate already holds
    it, so it costs nothing more and is always the pixel under the cursor; a cell's own details are a click away
    (``dashboards.result_cells.UmapDetails``). HoloViews' per-cell ``selector`` hover asked the server on every
    move and showed the previous position's answer ("undefined" first), so it could name the wrong cell.
    ``width`` None: as wide as its container (the legend included), ``height`` high.
    ``streams`` (a Tap, a RangeXY): given the image layer as their source; HoloViews links no stream to the
    overlay of the image and its legend."""
    hover = hover is not False
    common = dict(**size_opts(width, height), xaxis=None, yaxis=None, title=title, bgcolor="white",
                  active_tools=["wheel_zoom"], default_tools=["pan", "wheel_zoom", "box_zoom", "reset", "save"])
    column = cells[color_by]
    if is_continuous(column):
        points = hv.Points(cells[["umap_1", "umap_2", color_by]], kdims=["umap_1", "umap_2"], vdims=[color_by])
        raster = rasterize(points, aggregator=ds.summary(n=ds.count(color_by), s=ds.sum(color_by)))
        shown = label or color_by
        image = spread_mean(raster, column=color_by).opts(
            cmap="viridis", colorbar=True, clim=color_range(column), clabel=shown,
            tools=[mean_hover(shown)] if hover else [], **common)
        for stream in streams:
            stream.source = image
        return image
    if not isinstance(column.dtype, pd.CategoricalDtype):
        column = column.astype(str).astype("category")
    column = column.cat.rename_categories([str(c) for c in column.cat.categories])
    cats = categories or sorted(column.cat.categories)
    # recoding a categorical maps its few categories, never its millions of cells' strings. set_categories, not
    # astype: pandas treats unordered dtypes with the same categories in another order as equal, so astype kept
    # the file's order of first appearance and the image's layers took the colours of other labels in the legend
    data = cells[["umap_1", "umap_2"]].assign(**{color_by: column.cat.set_categories(cats)})
    points = hv.Points(data, kdims=["umap_1", "umap_2"], vdims=[color_by])
    raster = rasterize(points, aggregator=ds.count_cat(color_by))
    keyed = color_key(cats)
    # 'add' (for aggregates): a pixel's counts are the cells whose spread dot covers it, which the hover reports
    shaded = dynspread(raster, threshold=0.6).opts(cmap=[keyed[c] for c in cats],
                                                   tools=[stack_hover(cats)] if hover else [], **common)
    for stream in streams:
        stream.source = shaded
    if len(cats) > LEGEND_MAX:
        return shaded
    legend = hv.NdOverlay({c: hv.Points([(np.nan, np.nan)], label=c).opts(color=keyed[c], size=8)
                           for c in cats})
    return (shaded * legend).opts(**legend_opts(cats, width, height))


def nearest_cell(cells: pd.DataFrame, x: float, y: float, radius: float) -> int | None:
    """Row position of the cell nearest (x, y) in UMAP coordinates, or None when none lies within ``radius``
    (a click on empty space names no cell)."""
    if not len(cells):
        return None
    d2 = (cells["umap_1"].to_numpy(float) - x) ** 2 + (cells["umap_2"].to_numpy(float) - y) ** 2
    i = int(np.nanargmin(d2)) if np.isfinite(d2).any() else None
    return i if i is not None and d2[i] <= radius ** 2 else None


# the confusion matrix's layout, estimated before Bokeh lays it out (px): text is ~0.6 em wide per character
CHAR_EM = 0.6
TEXT_MAX_PX, TEXT_MIN_PX = 12, 8  # 9 pt at most; numbers that would need less than 6 pt are left to the hover
CONFUSION_MIN_WIDTH = 420  # a responsive matrix never gets narrower than the width its fonts were chosen for
# (the headline's flex basis: the dashboard gives each half at least this before it stacks them)
COLORBAR_PX, TITLE_PX, AXIS_TITLE_PX = 80, 40, 28


def confusion_layout(rows: list[str], cols: list[str], texts: list[str], width: int, height: int) -> dict:
    """Font sizes, x-label rotation and height for a ``rows`` x ``cols`` matrix drawn ``width`` wide so that
    nothing overlaps: axis labels get at least their font size of room, a number is written in only where it
    fits its cell (else the hover shows it), and the plot grows taller where its rows need it."""
    longest = max((len(c) for c in cols), default=1)
    y_font = TEXT_MAX_PX
    frame_w = max(40, width - COLORBAR_PX - AXIS_TITLE_PX - CHAR_EM * y_font * max(map(len, rows), default=1))
    cell_w = frame_w / max(1, len(cols))
    x_font = min(TEXT_MAX_PX, int(cell_w * 0.8))
    # labels side by side when they fit, else at 45 degrees (room across: the cell width / sin 45), else upright
    if CHAR_EM * x_font * longest + 4 <= cell_w:
        rotation, x_label_h = 0, x_font + 6
    elif cell_w >= 1.5 * x_font:
        rotation, x_label_h = 45, 0.72 * CHAR_EM * x_font * longest + 10
    else:
        rotation, x_label_h = 90, CHAR_EM * x_font * longest + 10
    # rows keep at least the label font's height; the plot grows rather than squeezing them
    height = max(height, int(len(rows) * (y_font + 4) + TITLE_PX + AXIS_TITLE_PX + x_label_h))
    cell_h = (height - TITLE_PX - AXIS_TITLE_PX - x_label_h) / max(1, len(rows))
    y_font = min(TEXT_MAX_PX, int(cell_h * 0.8))
    widest = max((len(t) for t in texts), default=1)
    number = int(min(TEXT_MAX_PX, cell_h * 0.7, (cell_w - 4) / (CHAR_EM * widest)))
    return {"x_font": x_font, "y_font": y_font, "rotation": rotation, "height": height,
            "number_font": number if number >= TEXT_MIN_PX else None}


def confusion_heatmap(confusion: dict, normalised: bool = False, width: int | None = 620,
                      height: int = 520) -> hv.Overlay:
    """Rows: true labels; columns: predicted labels (with 'unassigned'); counts or row fractions written in where
    they fit (the hover always shows both). Fonts, label rotation and height follow the number of rows and
    columns (an 8 x 16 matrix of two vocabularies overlapped its numbers and labels at fixed 9 pt).
    ``width`` None: as wide as its container, at least ``CONFUSION_MIN_WIDTH``."""
    rows, cols = [str(r) for r in confusion["rows"]], [str(c) for c in confusion["columns"]]
    counts = np.array(confusion["counts"], dtype=float)
    fractions = np.array(confusion["row_normalised"], dtype=float) if "row_normalised" in confusion else (
        counts / np.maximum(counts.sum(axis=1, keepdims=True), 1))
    values = fractions if normalised else counts
    records = [(c, r, values[i, j], int(counts[i, j]), fractions[i, j])
               for i, r in enumerate(rows) for j, c in enumerate(cols)]
    text = [f"{v:.2f}" if normalised else f"{int(v)}" for _, _, v, _, _ in records]
    layout = confusion_layout(rows, cols, text, width or CONFUSION_MIN_WIDTH, height)
    size = ({"width": width, "height": layout["height"]} if width else
            {"responsive": True, "height": layout["height"], "min_width": CONFUSION_MIN_WIDTH})
    x = hv.Dimension("predicted", values=cols)
    y = hv.Dimension("true", values=rows)
    top = 1 if normalised else float(values.max() or 1)
    heat = hv.HeatMap(records, kdims=[x, y], vdims=["value", "cells", "row_fraction"]).opts(
        cmap="Blues", colorbar=True, xrotation=layout["rotation"], tools=["hover"], **size, invert_yaxis=True,
        title="Confusion matrix (" + ("row-normalised" if normalised else "counts") + ")", clim=(0, top),
        fontsize={"xticks": f"{layout['x_font']}px", "yticks": f"{layout['y_font']}px"})
    if layout["number_font"] is None:
        return heat
    # dark text on light cells, white on dark ones: every number stays readable
    labels = [hv.Labels([(c, r, t) for (c, r, v, _, _), t in zip(records, text, strict=True)
                         if dark == (v > 0.6 * top)], kdims=[x, y], vdims=["text"]).opts(
        text_font_size=f"{layout['number_font']}px", text_color="white" if dark else "black")
        for dark in (False, True)]
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
