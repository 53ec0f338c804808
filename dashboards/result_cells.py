"""The run's cells, a page at a time (read from the run's parquet row groups: a million-cell run costs one page),
a clicked cell's details beside its UMAP (read the same way), and the downloads of the annotated file and its CSV."""

from __future__ import annotations

from collections.abc import Callable

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param

from app.downloads import download_url
from dashboards.plots import nearest_cell, umap_plot
from dashboards.result_text import PER_CLASS_PREFIX, top_probabilities
from dashboards.safe_text import html, md, plain_formatters
from dashboards.styles import FITTING_TABLE
from dashboards.view import PlatformView

PAGE_ROWS = 20
DOWNLOADS = (("h5ad", "Download annotated .h5ad"), ("csv", "Download CSV"))
# the first columns keep their words whole; the top probabilities share what is left of the width
CELL_WIDTHS = {"cell_id": 150, "confidence": 110, "assigned": 100, "split": 80}


class CellTable(PlatformView):
    """One page of the run's cells with their top probabilities, and buttons to turn the page."""

    run = param.String(default="", doc="Id of the finished run whose cells are shown ('' for none).")
    page = param.Integer(default=0, bounds=(0, None), doc="Page of the per-cell table (read from the server).")

    @param.depends("run", watch=True)
    def _first_page(self) -> None:
        self.page = 0

    def _turn(self, step: int) -> None:
        self.page = max(0, self.page + step)

    @param.depends("run", "page")
    def _table(self) -> pn.viewable.Viewable:
        if not self.run:
            return pn.Column()
        rows, total = self.platform.runs.page(self.run, self.page * PAGE_ROWS, PAGE_ROWS)
        last = max(0, (total - 1) // PAGE_ROWS)
        if self.page > last:
            self.page = last
            return pn.Column()
        shown = top_probabilities(rows)
        table = pn.widgets.Tabulator(shown, show_index=False, disabled=True,
                                     formatters=plain_formatters(shown, wrap=tuple(shown.columns)),
                                     css_classes=["cell-table"], sizing_mode="stretch_width", layout="fit_columns",
                                     widths={c: w for c, w in CELL_WIDTHS.items() if c in shown},
                                     stylesheets=[FITTING_TABLE])
        previous = pn.widgets.Button(name="◀ Previous", disabled=self.page == 0, css_classes=["page-previous"])
        following = pn.widgets.Button(name="Next ▶", disabled=self.page >= last, css_classes=["page-next"])
        previous.on_click(lambda _e: self._turn(-1))
        following.on_click(lambda _e: self._turn(1))
        start = self.page * PAGE_ROWS
        where = pn.pane.Markdown(f"cells {start + 1:,}–{min(start + PAGE_ROWS, total):,} of {total:,}",
                                 css_classes=["page-position"])
        return pn.Column(table, pn.Row(previous, following, where), sizing_mode="stretch_width")

    def __panel__(self) -> pn.viewable.Viewable:
        return pn.Column(self._table, sizing_mode="stretch_width")


def downloads(platform, run_id: str) -> pn.viewable.Viewable:  # noqa: ANN001 - app.platform.Platform
    """Links to the annotated .h5ad and the CSV: served, streamed by the REST route (a websocket transfer would
    hold the file in memory twice); in a notebook, download buttons."""
    if pn.state.curdoc is not None and pn.state.curdoc.session_context is not None:
        links = " ".join(
            f'<a class="download-link download-{fmt}" href="{html(download_url(platform, run_id, fmt))}" '
            f'download style="display:inline-block;margin:0 1em 4px 0;padding:6px 14px;border-radius:4px;'
            f'background:#2b5797;color:white;text-decoration:none">{label}</a>'
            for fmt, label in DOWNLOADS)
        return pn.pane.HTML(links, css_classes=["downloads"], sizing_mode="stretch_width")
    short = run_id[:8]
    return pn.Row(
        pn.widgets.FileDownload(callback=lambda: str(platform.runs.export(run_id, "h5ad")),
                                filename=f"annotated-{short}.h5ad", label="Download annotated .h5ad",
                                button_type="primary", css_classes=["download-h5ad"], embed=False),
        pn.widgets.FileDownload(callback=lambda: str(platform.runs.export(run_id, "csv")),
                                filename=f"predictions-{short}.csv", label="Download CSV",
                                css_classes=["download-csv"], embed=False))


# what a clicked cell's details show first, where its run has them (the rest of its columns follow)
DETAIL_COLUMNS = ("cell_id", "predicted_label", "confidence", "true_label", "reference_fit", "assigned",
                  "majority_voting", "cell_class")
CLICK_HINT = "*Click a cell on the UMAP to see its id, labels, confidence and reference fit.*"
CLICK_RADIUS = 0.02  # a click names the nearest cell within this fraction of the visible UMAP's larger side


class UmapDetails:
    """A UMAP with the details of the cell last clicked on it, answered by the server for that click (the hover
    only tells what is drawn under the cursor). The pane names the clicked coordinates, so it never passes off
    another spot's cell as this one's."""

    def __init__(self, cells: pd.DataFrame, read_cell: Callable[[int], pd.DataFrame], **umap: object) -> None:
        """``cells``: the UMAP's cells (umap_1, umap_2 and what it is coloured by), in the file's order;
        ``read_cell``: row position -> that cell's row (all its columns); ``umap``: ``umap_plot``'s arguments."""
        self.cells, self.read_cell = cells, read_cell
        self._ranges = hv.streams.RangeXY()
        self._tap = hv.streams.Tap(x=None, y=None)
        self._tap.add_subscriber(self.show)
        self.plot = umap_plot(cells, streams=(self._ranges, self._tap), **umap)
        self.pane = pn.pane.HoloViews(self.plot, css_classes=["umap-plot"], sizing_mode="stretch_width")
        self.details = pn.pane.Markdown(CLICK_HINT, css_classes=["umap-cell-details"], sizing_mode="stretch_width",
                                        margin=(0, 10))

    def _radius(self) -> float:
        x_range, y_range = self._ranges.x_range, self._ranges.y_range
        if not (x_range and y_range):
            x_range = (self.cells["umap_1"].min(), self.cells["umap_1"].max())
            y_range = (self.cells["umap_2"].min(), self.cells["umap_2"].max())
        return CLICK_RADIUS * max(abs(x_range[1] - x_range[0]), abs(y_range[1] - y_range[0]))

    def show(self, x: float | None = None, y: float | None = None) -> None:
        """The details of the cell nearest the click (x, y), read from the run's file."""
        if x is None or y is None:
            return
        where = f"({x:.2f}, {y:.2f})"
        index = nearest_cell(self.cells, x, y, self._radius())
        if index is None:
            self.details.object = f"No cell at the clicked spot {where}."
            return
        row = self.read_cell(index)
        if row is None or not len(row):
            self.details.object = f"The cell at {where} could not be read."
            return
        values = row.iloc[0]
        first = [c for c in DETAIL_COLUMNS if c in values.index]
        probabilities = [c for c in values.index if c.startswith(PER_CLASS_PREFIX)]
        top = sorted(probabilities, key=lambda c: -float(values[c]))[:3]
        parts = [f"{md(c.replace('_', ' '))}: **{md(_shown(values[c]))}**" for c in first]
        if top:
            parts.append("top classes: " + ", ".join(
                f"{md(c[len(PER_CLASS_PREFIX):])} {float(values[c]):.2f}" for c in top))
        self.details.object = f"Cell nearest the click at {where}: " + " · ".join(parts)

    def __panel__(self) -> pn.viewable.Viewable:
        return pn.Column(self.pane, self.details, sizing_mode="stretch_width")


def _shown(value: object) -> str:
    """A cell's value in words: numbers to 3 decimals."""
    if isinstance(value, float | np.floating):
        return f"{float(value):.3f}"
    return str(value)
