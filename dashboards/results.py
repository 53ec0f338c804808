"""Results of a finished run: UMAP, confusion matrix, metrics, per-cell table, comparison, downloads."""

from __future__ import annotations

from collections import OrderedDict

import pandas as pd
import panel as pn
import param

from app.downloads import download_url
from app.result_columns import PROBABILITY_PREFIX, run_columns
from dashboards.plots import confusion_heatmap, disagreement, f1_bars, umap_plot
from dashboards.safe_text import html, md, plain_formatters
from dashboards.view import PlatformView

CELL_COLUMNS = ["cell_id", "predicted_label", "confidence", "assigned", "true_label", "split", "umap_1", "umap_2"]
UMAP_COLUMNS = ["cell_id", "umap_1", "umap_2", "predicted_label", "confidence", "true_label"]
DEFAULT_COLOR = "predicted_label"
# predicted and true labels share one vocabulary: a type gets the same colour in both (and in both runs compared)
LABEL_COLORS = ("predicted_label", "true_label")
# one column per class: paged in the cell table (top probabilities), not offered as colours
PER_CLASS_PREFIX = PROBABILITY_PREFIX
# per session, the UMAP columns of this many runs stay in memory (the one shown, the one compared with it, and the
# last two looked at); the least recently drawn goes first. A million cells cost ~50 MB.
MAX_CACHED_RUNS = 4
PAGE_ROWS = 20
UNTRAINED_BANNER = ("**This run used generated, untrained weights.** The pipeline ran for real, but these "
                    "predictions mean nothing. Stage trained weights to annotate for real.")


def metrics_markdown(run) -> str:  # noqa: ANN001 - store.tables.Run
    m = run.metrics
    if not m:
        return "No true labels were given for this query, so there are no metrics (pick a truth column)."
    lines = [f"**Macro-F1 {m['macro_f1']:.3f}** · accuracy {m['accuracy']:.3f} · weighted F1 {m['weighted_f1']:.3f}"
             f" · {m['assigned_fraction']:.0%} of cells assigned · {m['n_cells']:,} cells ({m.get('scope', '')})"]
    if m.get("classes_not_in_reference"):
        lines.append("Note: true classes the reference does not have: "
                     + ", ".join(md(c) for c in m["classes_not_in_reference"]))
    return "  \n".join(lines)


def umap_caption(info: dict | None, n_cells: int) -> str:
    """How the run's UMAP was made, in the words a reader of the plot needs (from its provenance)."""
    if not info:
        return "UMAP: how it was made was not recorded for this run."
    if info.get("method") == "none":
        return f"No UMAP: {md(info.get('reason', ''))}."
    n, fit_on = int(info.get("n_cells") or n_cells), int(info.get("fit_on") or n_cells)
    how = info.get("implementation", info.get("method", "UMAP"))
    if str(info.get("method", "")).startswith("cuML"):
        how += " on the GPU"
    p = info.get("params", {})
    start = {"pca": "PCA"}.get(info.get("init", "spectral"), info.get("init", "spectral"))
    settings = (f"{p.get('n_neighbors', '?')} neighbours, min_dist {p.get('min_dist', '?')}, {start} start, "
                f"seed {info.get('seed', 0)}")
    text = (f"UMAP ({how}; {settings}) fitted on a random sample of {fit_on:,} of the {n:,} cells; the other "
            f"{n - fit_on:,} cells were placed onto that map (`transform`)." if fit_on < n
            else f"UMAP ({how}; {settings}) of all {n:,} cells.")
    if info.get("gpu_fallback"):
        text += f" {md(info['gpu_fallback'])}."
    return text


def top_probabilities(cells: pd.DataFrame, k: int = 3) -> pd.DataFrame:
    """Per cell, the k most probable classes with their probabilities (for the table)."""
    prob_cols = [c for c in cells.columns if c.startswith(PER_CLASS_PREFIX)]
    out = cells[[c for c in CELL_COLUMNS if c in cells.columns and not c.startswith("umap")]].copy()
    if not prob_cols:
        return out
    probs = cells[prob_cols].to_numpy()
    names = [c[len(PER_CLASS_PREFIX):] for c in prob_cols]
    order = (-probs).argsort(axis=1)[:, :k]
    for i in range(min(k, len(names))):
        out[f"top{i + 1}"] = [f"{names[j]} ({probs[r, j]:.2f})" for r, j in enumerate(order[:, i])]
    return out


def color_options(kinds: dict[str, str]) -> list[str]:
    """The per-cell columns a UMAP can be coloured by, the predicted label first (``kinds``: name -> kind)."""
    options = [c for c in kinds if not c.startswith(PER_CLASS_PREFIX)]
    return sorted(options, key=lambda c: c != DEFAULT_COLOR)


class ResultsView(PlatformView):
    """A finished run (and another beside it); ``finished`` (linked by the Dashboard) re-reads the list of runs."""

    run = param.Selector(doc="The finished run to explore.")
    compare_with = param.Selector(doc="A second finished run on the same cells, shown beside the first.")
    color_by = param.Selector(default=DEFAULT_COLOR, objects=[DEFAULT_COLOR],
                              doc="The per-cell column the UMAP is coloured by, offered from the run's own columns: "
                                  "one colour per value when categorical, the mean per pixel when continuous.")
    normalised = param.Boolean(default=False, doc="Row-normalised confusion matrix.")
    page = param.Integer(default=0, bounds=(0, None), doc="Page of the per-cell table (read from the server).")
    finished = param.Integer(default=0, doc="Bumped when a run finishes: the run pickers then offer it.")

    def __init__(self, platform=None, **params) -> None:  # noqa: ANN001 - app.platform.Platform
        super().__init__(platform, **params)
        self._cache: OrderedDict[str, pd.DataFrame] = OrderedDict()  # run id -> cells, least recently drawn first
        self._kinds: dict[str, str] = {}
        self.refresh()
        self._fill_colors()

    @param.depends("finished", watch=True)
    def refresh(self) -> None:
        done = [r for r in self.platform.runs.list() if r.status == "done"]
        names = {m.id: m.name for m in self.platform.models()}
        self._runs = {r.id: r for r in done}
        labels = {f"{names.get(r.model_id, r.model_id)} · {r.created_at:%H:%M:%S} · {r.id[:8]}": r.id for r in done}
        self._labels = labels
        self.param.run.objects = {"(none)": "", **labels}
        self.param.compare_with.objects = {"(none)": "", **labels}
        if self.run not in self._runs:
            self.run = next(iter(labels.values()), "")
        if self.compare_with not in self._runs:
            self.compare_with = ""

    @param.depends("run", watch=True)
    def _fill_colors(self) -> None:
        """Offer the colours this run's cells have (read from its file's schema, not its cells)."""
        self._kinds = run_columns(self.platform, self.run) if self.run else {}
        options = color_options(self._kinds) or [DEFAULT_COLOR]
        self.param.color_by.objects = options
        if self.color_by not in options:
            self.color_by = options[0]

    def _cells(self, run_id: str, color: str = DEFAULT_COLOR) -> pd.DataFrame:
        """What the UMAP draws and hovers, plus the colour column (never the per-class probabilities: those are
        paged in the table). Kept for the last ``MAX_CACHED_RUNS`` runs drawn."""
        cells = self._cache.pop(run_id, None)
        if cells is None:
            cells = self.platform.runs.cells(run_id, UMAP_COLUMNS)
        if color not in cells.columns:
            extra = self.platform.runs.cells(run_id, [color])
            if color in extra.columns:
                cells = cells.assign(**{color: extra[color].to_numpy()})
        self._cache[run_id] = cells
        while len(self._cache) > MAX_CACHED_RUNS:
            self._cache.popitem(last=False)
        return cells

    @param.depends("run", "color_by", "compare_with")
    def _umaps(self) -> pn.viewable.Viewable:
        if not self.run:
            return pn.pane.Markdown("No finished run yet.")
        run = self._runs[self.run]
        color = self.color_by if self.color_by in self._kinds else DEFAULT_COLOR
        cells = self._cells(self.run, color)
        if color not in cells.columns:  # a choice left from another run, drawn before the options were refilled
            color = DEFAULT_COLOR
        name = self._name(run)
        cats = sorted({str(c) for col in LABEL_COLORS if col in cells
                       for c in pd.unique(cells[col])} - {""})  # categoricals: unique() reads the codes
        comparing = bool(self.compare_with and self.compare_with != self.run)
        width = 400 if comparing else 560
        plots = [pn.Column(
            pn.pane.HoloViews(umap_plot(cells, color, f"{name}: UMAP by {color}", cats if color in LABEL_COLORS
                                        else None, width=width), css_classes=["umap-plot"]),
            pn.pane.Markdown(umap_caption(run.provenance.get("umap"), len(cells)), css_classes=["umap-caption"],
                             styles={"font-size": "0.85em", "color": "#555"}, width=width))]
        if comparing:
            other = self._runs[self.compare_with]
            merged = disagreement(cells, self._cells(self.compare_with), name, self._name(other))
            n_dis = int((merged["agreement"] != "agree").sum())
            plots.append(pn.Column(
                pn.pane.HoloViews(umap_plot(merged, "agreement", f"{name} vs {self._name(other)}", width=width),
                                  css_classes=["compare-plot"]),
                pn.pane.Markdown(f"{n_dis:,} of {len(merged):,} cells ({n_dis / max(len(merged), 1):.0%}) get a "
                                 "different label from the two runs.", css_classes=["disagreement"])))
        return pn.Row(*plots, sizing_mode="stretch_width")

    def _name(self, run) -> str:  # noqa: ANN001
        return {m.id: m.name for m in self.platform.models()}.get(run.model_id, run.model_id)

    @param.depends("run", "normalised")
    def _metrics(self) -> pn.viewable.Viewable:
        if not self.run:
            return pn.Column()
        run = self._runs[self.run]
        parts = []
        if not run.provenance.get("model", {}).get("trained", True):
            parts.append(pn.pane.Alert(UNTRAINED_BANNER, alert_type="warning", css_classes=["untrained-banner"]))
        parts.append(pn.pane.Markdown(metrics_markdown(run), css_classes=["metrics"]))
        if run.metrics.get("confusion_matrix"):
            parts.append(pn.Row(
                pn.pane.HoloViews(confusion_heatmap(run.metrics["confusion_matrix"], self.normalised),
                                  css_classes=["confusion-matrix"]),
                pn.pane.HoloViews(f1_bars(run.metrics), css_classes=["f1-bars"])))
        return pn.Column(*parts, sizing_mode="stretch_width")

    @param.depends("run", watch=True)
    def _first_page(self) -> None:
        self.page = 0

    def _turn(self, step: int) -> None:
        self.page = max(0, self.page + step)

    @param.depends("run", "page")
    def _table(self) -> pn.viewable.Viewable:
        """One page of cells, read from the run's parquet row groups: a million-cell run costs one page."""
        if not self.run:
            return pn.Column()
        rows, total = self.platform.runs.page(self.run, self.page * PAGE_ROWS, PAGE_ROWS)
        last = max(0, (total - 1) // PAGE_ROWS)
        if self.page > last:
            self.page = last
            return pn.Column()
        shown = top_probabilities(rows)
        table = pn.widgets.Tabulator(shown, show_index=False, disabled=True, formatters=plain_formatters(shown),
                                     css_classes=["cell-table"], sizing_mode="stretch_width")
        previous = pn.widgets.Button(name="◀ Previous", disabled=self.page == 0, css_classes=["page-previous"])
        following = pn.widgets.Button(name="Next ▶", disabled=self.page >= last, css_classes=["page-next"])
        previous.on_click(lambda _e: self._turn(-1))
        following.on_click(lambda _e: self._turn(1))
        start = self.page * PAGE_ROWS
        where = pn.pane.Markdown(f"cells {start + 1:,}–{min(start + PAGE_ROWS, total):,} of {total:,}",
                                 css_classes=["page-position"])
        return pn.Column(table, pn.Row(previous, following, where), sizing_mode="stretch_width")

    @param.depends("run")
    def _downloads(self) -> pn.viewable.Viewable:
        if not self.run:
            return pn.Column()
        run_id = self.run
        short = run_id[:8]
        if pn.state.curdoc is not None and pn.state.curdoc.session_context is not None:
            # served: stream from the REST route (a websocket transfer would hold the file in memory twice)
            links = " ".join(
                f'<a class="download-link download-{fmt}" href="{html(download_url(self.platform, run_id, fmt))}" '
                f'download style="margin-right:1em;padding:6px 14px;border-radius:4px;background:#2b5797;color:white;'
                f'text-decoration:none">{label}</a>'
                for fmt, label in (("h5ad", "Download annotated .h5ad"), ("csv", "Download CSV")))
            return pn.pane.HTML(links, css_classes=["downloads"])
        return pn.Row(
            pn.widgets.FileDownload(callback=lambda: str(self.platform.runs.export(run_id, "h5ad")),
                                    filename=f"annotated-{short}.h5ad", label="Download annotated .h5ad",
                                    button_type="primary", css_classes=["download-h5ad"], embed=False),
            pn.widgets.FileDownload(callback=lambda: str(self.platform.runs.export(run_id, "csv")),
                                    filename=f"predictions-{short}.csv", label="Download CSV",
                                    css_classes=["download-csv"], embed=False))

    def __panel__(self) -> pn.viewable.Viewable:
        run_select = pn.widgets.Select.from_param(self.param.run, name="Run", css_classes=["result-run-picker"])
        compare = pn.widgets.Select.from_param(self.param.compare_with, name="Compare with",
                                               css_classes=["compare-picker"])
        return pn.Column(
            "## 3 · Results",
            pn.Row(run_select, compare,
                   pn.widgets.RadioButtonGroup.from_param(self.param.color_by, css_classes=["color-by"]),
                   pn.widgets.Checkbox.from_param(self.param.normalised, name="row-normalised")),
            self._metrics, self._umaps, "### Cells", self._table, self._downloads, sizing_mode="stretch_width")
