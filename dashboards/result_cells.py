"""The run's cells, a page at a time (read from the run's parquet row groups: a million-cell run costs one page),
and the downloads of the annotated file and its CSV."""

from __future__ import annotations

import panel as pn
import param

from app.downloads import download_url
from dashboards.result_text import top_probabilities
from dashboards.safe_text import html, plain_formatters
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
