"""Two vocabularies (an annotator's 16 labels against 8 true ones, and the other way round) give a confusion matrix
whose numbers and labels must not overlap, and a UMAP of 16 predicted labels whose legend (25 entries: the
predicted and the true labels share colours) must show every entry: judged in
Chromium at 1440x900 by what Bokeh lays out (the frame's cells, the fonts it draws with, text widths measured by the
browser, the legend's box), on a page laid out as the results' headline is (the confusion matrix beside the UMAP).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import pytest
from bokeh.models import HoverTool

from dashboards.plots import confusion_heatmap, umap_plot
from dashboards.result_summary import HEADLINE_HEIGHT, confusion
from tests.conftest import free_port
from tests.serving import browser_page, wait_until

TRUE = ["B cells", "CD4 T cells", "CD8 T cells", "NK cells", "CD14+ Monocytes", "FCGR3A+ Monocytes",
        "Dendritic cells", "Megakaryocytes"]
ANNOTATOR = ["B-cell", "CD4+ naive T", "CD4+ memory T", "CD8+ naive T", "CD8+ effector T", "NK cell",
             "CD14+ Monocyte", "CD16+ Monocyte", "cDC2", "pDC", "Platelet", "Plasma cell", "gamma-delta T",
             "MAIT", "HSPC", "Erythrocyte"]
SIDEBAR = 340  # the dashboard's sidebar at 1440 px: the headline shares what is left
# the results view's legend lists every label of the predicted and the true column (one colour per type in both)
LEGEND = sorted({*ANNOTATOR, *TRUE, "unassigned"})


def _matrix(rows: list[str], cols: list[str]) -> dict:
    counts = np.random.default_rng(len(rows)).integers(0, 420, (len(rows), len(cols)))
    return {"rows": rows, "columns": cols, "counts": counts.tolist(),
            "row_normalised": (counts / counts.sum(axis=1, keepdims=True)).round(2).tolist()}


MATRICES = {"8 true x 17 predicted": _matrix(TRUE, [*ANNOTATOR, "unassigned"]),
            "16 true x 9 predicted": _matrix(ANNOTATOR, [*TRUE, "unassigned"])}

# per Bokeh figure: its frame and canvas boxes, axis fonts and orientation, the text glyphs' texts with their
# widths measured in the browser's own font, and the legends' boxes
LAYOUT_JS = """() => {
  const ctx = document.createElement("canvas").getContext("2d")
  const spec = (v) => (v && typeof v === "object" && "value" in v) ? v.value : v
  const width = (text, size, font) => {
    ctx.font = `${size} ${font || "helvetica"}`
    return ctx.measureText(text).width
  }
  const out = []
  for (const plot of Bokeh.index.query((v) => v.model.type === "Figure" || v.model.type === "Plot")) {
    if (!plot.frame) continue
    const c = plot.canvas_view.el.getBoundingClientRect(), f = plot.frame.bbox
    const axis = (a) => a ? {font: a.major_label_text_font_size, orientation: a.major_label_orientation,
                             labels: (plot.frame.x_range.factors || [])} : null
    const texts = plot.model.renderers.filter((r) => r.glyph && r.glyph.type === "Text").map((r) => {
      const size = spec(r.glyph.text_font_size), font = spec(r.glyph.text_font)
      const text = r.data_source.data[r.glyph.text.field] || []
      return {size, widths: [...text].map((t) => width(String(t), size, font))}
    })
    // a legend's entries are DOM elements: each must lie inside both the legend's box and the canvas (the legend
    // box itself is clipped to the canvas, so its entries beyond it are cut off, not moved)
    const inside = (r, b) => r.left >= b.left - 1 && r.right <= b.right + 1 && r.top >= b.top - 1
                             && r.bottom <= b.bottom + 1
    const legends = [...Bokeh.index.query((v) => v.model.type === "Legend" && v.parent === plot)].map((v) => {
      const box = v.el.getBoundingClientRect()
      const entries = [...v.grid_el.children].filter((e) => e.textContent.trim())
      return {items: v.model.items.length, entries: entries.length,
              hidden: entries.filter((e) => !inside(e.getBoundingClientRect(), box)
                                            || !inside(e.getBoundingClientRect(), c)).map((e) => e.textContent)}
    })
    const xf = plot.frame.x_range.factors || [], yf = plot.frame.y_range.factors || []
    const x = plot.model.below[0], y = plot.model.left[0]
    out.push({title: plot.model.title ? plot.model.title.text : "", canvas: [c.width, c.height],
              frame: [f.left, f.top, f.width, f.height], x_factors: xf.length, y_factors: yf.length,
              x_font: x ? x.major_label_text_font_size : null, y_font: y ? y.major_label_text_font_size : null,
              x_orientation: x ? x.major_label_orientation : null,
              x_widths: xf.map((t) => width(String(t), x ? x.major_label_text_font_size : "12px")),
              texts, legends})
  }
  return out
}"""


@contextmanager
def _served(make: Callable[[], pn.viewable.Viewable]) -> Iterator[str]:
    """``make()`` served by Panel in this process on a free port until the block ends."""
    port = free_port()
    server = pn.serve({"page": make}, port=port, show=False, threaded=True, start=True)
    try:
        yield f"http://localhost:{port}/page"
    finally:
        server.stop()


def _px(size: str) -> float:
    return float(size[:-2]) * (4 / 3 if size.endswith("pt") else 1)


def _headline(shown: dict, normalised: bool, cells: pd.DataFrame) -> pn.viewable.Viewable:
    """The results' headline as the dashboard lays it out: the matrix and the UMAP, each half of what the
    sidebar leaves."""
    half = {"flex": "1 1 420px"}
    umap = umap_plot(cells, width=None, height=HEADLINE_HEIGHT, title="UMAP by predicted label", categories=LEGEND)
    return pn.Row(pn.Spacer(width=SIDEBAR), pn.FlexBox(
        pn.Column(confusion(shown, normalised), sizing_mode="stretch_width", styles=half),
        pn.Column(pn.pane.HoloViews(umap, sizing_mode="stretch_width"), sizing_mode="stretch_width", styles=half),
        sizing_mode="stretch_width"), sizing_mode="stretch_width")


def _cells() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    centres = {label: (10 * math.cos(i), 10 * math.sin(i)) for i, label in enumerate(ANNOTATOR)}
    rows = [(x + rng.normal(0, 0.5), y + rng.normal(0, 0.5), label) for label, (x, y) in centres.items()
            for _ in range(150)]
    return pd.DataFrame(rows, columns=["umap_1", "umap_2", "predicted_label"])


@pytest.mark.parametrize("normalised", [False, True], ids=["counts", "row-normalised"])
@pytest.mark.parametrize("name", list(MATRICES))
def test_nothing_overlaps_in_the_matrix_and_every_legend_entry_shows_at_1440x900(name, normalised):
    matrix, cells = MATRICES[name], _cells()
    with _served(lambda: _headline({"confusion_matrix": matrix}, normalised, cells)) as url, \
            browser_page({"width": 1440, "height": 900}) as page:
        page.goto(url)
        figures = wait_until(lambda: (lambda f: len(f) == 2 and f)(page.evaluate(LAYOUT_JS)), 60,
                             "both figures to be laid out")
    heat = next(f for f in figures if f["title"].startswith("Confusion"))
    umap = next(f for f in figures if f["title"].startswith("UMAP"))
    n_cols, n_rows = len(matrix["columns"]), len(matrix["rows"])
    assert (heat["x_factors"], heat["y_factors"]) == (n_cols, n_rows), heat
    cell_w, cell_h = heat["frame"][2] / n_cols, heat["frame"][3] / n_rows
    seen = dict(name=name, cell=(cell_w, cell_h), x_font=heat["x_font"], y_font=heat["y_font"],
                orientation=heat["x_orientation"], texts=[t["size"] for t in heat["texts"]])
    # row labels: each row at least as tall as its label's font
    assert _px(heat["y_font"]) <= cell_h, seen
    # column labels: flat ones fit their column; slanted or upright ones are a font size apart across
    angle = heat["x_orientation"]
    angle = {"horizontal": 0.0, "vertical": math.pi / 2}.get(angle, angle) if isinstance(angle, str) else angle
    if abs(angle) < 1e-6:
        assert max(heat["x_widths"]) <= cell_w, seen
    else:
        assert cell_w * math.sin(abs(angle)) >= _px(heat["x_font"]), seen
    # the numbers written in fit their cells (or none are written and the hover has them)
    for text in heat["texts"]:
        assert _px(text["size"]) <= cell_h and max(text["widths"], default=0) <= cell_w, seen
    # every legend entry of the UMAP lies inside its figure
    assert umap["legends"] and sum(legend["items"] for legend in umap["legends"]) == len(LEGEND), umap
    for legend in umap["legends"]:
        assert legend["entries"] == legend["items"] and not legend["hidden"], legend


def test_the_hover_has_every_cells_count_and_fraction_where_numbers_are_left_out():
    matrix = _matrix(TRUE, [*ANNOTATOR, "unassigned"])
    fig = hv.render(confusion_heatmap(matrix, width=None, height=420), backend="bokeh")
    tips = str([t.tooltips for t in fig.select(type=HoverTool)])
    assert "cells" in tips and "row_fraction" in tips, tips
