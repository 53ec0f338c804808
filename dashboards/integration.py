"""Results of embeddings and batch integration: the models of one submission (a run group) side by side.

Per model, a datashaded UMAP of its embedding coloured by batch and one by cell type; the scIB metrics as a table
(models as rows, the best of each column marked with a star and bold, not by colour alone) and as a heatmap; how
the numbers were made (sample, library) and which models ran on untrained weights. The results view shows it for
an integration run (``results.RESULT_VIEWS``); the tables and plots are pure functions, testable without a server.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pandas as pd
import panel as pn
import param

from app.downloads import download_url
from dashboards.plots import scores_heatmap, umap_plot
from dashboards.safe_text import code, html, md, plain_formatters
from dashboards.view import PlatformView

# scib-metrics' defaults, in its own order (BioConservation, BatchCorrection) and its aggregates; a metric the
# library adds later is shown after these
BIO = ("Isolated labels", "KMeans NMI", "KMeans ARI", "Silhouette label", "cLISI")
BATCH = ("BRAS", "iLISI", "KBET", "Graph connectivity", "PCR comparison")
AGGREGATES = ("Bio conservation", "Batch correction", "Total")
GROUPS = {"Bio conservation metrics": BIO, "Batch correction metrics": BATCH, "Aggregate scores": AGGREGATES}
KNOWN = (*BIO, *BATCH, *AGGREGATES)
BEST = "★"
MISSING = "—"
MODEL = "model"
UNTRAINED = "untrained: these scores mean nothing"
CELL_COLUMNS = ["cell_id", "batch", "cell_type", "umap_1", "umap_2"]
NO_CELL_TYPE = "(no cell type)"
# the plotting area of each UMAP (legend and toolbar come on top of it): two side by side fit a laptop's screen
# beside the sidebar, and every model's maps line up whatever their legends' widths
UMAP_FRAME = 280
MAX_CACHED_RUNS = 8
SOFT_HYPHEN = "\u00ad"
LONG_WORDS = ("conservation", "connectivity", "comparison", "correction")
TABLE_CSS = (".tabulator-col-title {white-space: normal !important; text-overflow: clip !important; "
             "font-size: 0.85em;} .tabulator-cell {white-space: normal !important;}")


def short_name(name: str) -> str:
    """A model's name without its parenthesised detail ('Harmony (on the baseline's 50 PCs)' -> 'Harmony'): what a
    table row or an axis has room for."""
    return name.split(" (")[0].strip() or name


def row_labels(runs: list, names: dict[str, str]) -> dict[str, str]:  # noqa: ANN001 - store.tables.Run
    """Run id -> the model's short name, '(untrained)' after it for generated weights, unique within the group."""
    labels: dict[str, str] = {}
    for r in runs:
        label = short_name(names.get(r.model_id, r.model_id))
        if r.parameters.get("weights") == "generated":
            label += " (untrained)"
        if label in labels.values():
            label += f" [{r.model_id}]"
        labels[r.id] = label
    return labels


def metric_order(metrics: list[dict]) -> list[str]:
    """The scores present in any of the runs' ``metrics`` (``{"metrics": ..., "aggregates": ...}``): the library's
    bio-conservation then batch-correction metrics, any other metric, then the aggregates."""
    present: dict[str, None] = {}
    for m in metrics:
        present.update(dict.fromkeys(m.get("metrics") or {}))
        present.update(dict.fromkeys(k for k, v in (m.get("aggregates") or {}).items() if v is not None))
    known = [*BIO, *BATCH]
    others = [k for k in present if k not in known and k not in AGGREGATES]
    return [k for k in known if k in present] + others + [k for k in AGGREGATES if k in present]


def scores_frame(rows: dict[str, dict]) -> pd.DataFrame:
    """Models (row label -> a run's ``metrics``) as rows, scores as columns, raw values (NaN where missing)."""
    columns = metric_order(list(rows.values()))
    data = {label: {**(m.get("metrics") or {}), **(m.get("aggregates") or {})} for label, m in rows.items()}
    frame = pd.DataFrame([[_number(data[label].get(c)) for c in columns] for label in rows],
                         index=pd.Index(list(rows), name=MODEL), columns=columns, dtype=float)
    return frame


def _number(value: object) -> float:
    try:
        return float(value) if value is not None else np.nan
    except (TypeError, ValueError):
        return np.nan


def best_per_column(scores: pd.DataFrame) -> dict[str, set[str]]:
    """Column -> the rows holding its highest value (every scIB score is better higher; ties all marked), for
    columns where at least two models have a value: a lone model is nobody's best."""
    best: dict[str, set[str]] = {}
    for column in scores.columns:
        values = scores[column].dropna()
        if len(values) >= 2:
            top = values.max()
            best[column] = {str(i) for i, v in values.items() if np.isclose(v, top, rtol=0, atol=1e-12)}
    return best


def metrics_table(scores: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """What the table shows: the model, then each score to ``digits`` decimals, the best of a column followed by
    ``BEST`` (and drawn bold by the view), a missing one as ``MISSING``."""
    best = best_per_column(scores)
    out = pd.DataFrame({MODEL: [str(i) for i in scores.index]})
    for column in scores.columns:
        out[column] = [MISSING if pd.isna(v) else f"{v:.{digits}f}" + (f" {BEST}" if str(i) in best.get(column, ())
                                                                        else "")
                       for i, v in scores[column].items()]
    return out


def column_groups(columns: list[str]) -> dict[str, list[str]]:
    """Tabulator's column groups of the table: bio conservation, batch correction, aggregates (those present)."""
    groups = {title: [c for c in members if c in columns] for title, members in GROUPS.items()}
    grouped = {c for members in groups.values() for c in members}
    extra = [c for c in columns if c != MODEL and c not in grouped]
    if extra:
        groups["Batch correction metrics"] = groups["Batch correction metrics"] + extra
    return {title: members for title, members in groups.items() if members}


def column_titles(columns: list[str]) -> dict[str, str]:
    """The table's column titles: the library's names, their long words allowed to break (a soft hyphen) so that
    thirteen scores fit a laptop's width with their names whole."""
    words = {w: w[:len(w) // 2] + SOFT_HYPHEN + w[len(w) // 2:] for w in LONG_WORDS}
    titles = {}
    for column in columns:
        title = column
        for word, broken in words.items():
            title = title.replace(word, broken)
        titles[column] = title
    return titles


def bold_best(value: object) -> str:
    """The table's style of a cell: bold for the best of its column (its star says so without colour too)."""
    return "font-weight: bold" if str(value).endswith(BEST) else ""


def scores_caption(metrics: dict, cells_total: int | None = None) -> str:
    """How the numbers were made (Markdown, escaped): sample or all cells, cells left out, the library."""
    sample = metrics.get("sample") or {}
    library = (metrics.get("library") or {}).get("scib-metrics")
    parts = [f"{BEST} best of the models in each column (bold): every score is better higher. Raw scIB values"
             + (f" (scib-metrics {md(library)})" if library else "") + ", not min-max scaled; Total = 0.6 × bio "
             "conservation + 0.4 × batch correction."]
    if sample.get("sampled"):
        parts.append(f"**Scores computed on a sample** of {int(sample['cells']):,} of {int(sample['of']):,} cells "
                     f"(seed {int(sample.get('seed', 0))}): {md(sample.get('rule', ''))}.")
    elif sample.get("cells"):
        parts.append(f"Scores computed on all {int(sample['cells']):,} cells.")
    scored = metrics.get("cells_scored")
    if scored is not None and cells_total and int(scored) < cells_total:
        parts.append(f"{cells_total - int(scored):,} cells without a cell type were left out of the scores.")
    if not metrics.get("label_column"):
        parts.append("No cell-type column was given: only the batch metrics that need none; no bio conservation "
                     "and no total.")
    return "  \n".join(parts)


def group_heading(dataset_name: str, batch_column: str | None, cell_type_column: str | None) -> str:
    """What was integrated (Markdown, escaped): the file and its columns."""
    cell_types = f"cell types from {code(cell_type_column)}" if cell_type_column else "no cell-type column"
    return (f"### Embeddings and batch integration of {md(dataset_name)}  \nBatches from {code(batch_column or '?')}"
            f" · {cell_types}")


def untrained_note(labels: list[str]) -> str:
    """The warning for models that ran on generated weights ('' when none did)."""
    if not labels:
        return ""
    return (f"**{', '.join(md(x) for x in labels)}: generated, {UNTRAINED}.** The pipeline ran for real, but "
            "an untrained model's embedding is noise: stage trained weights to compare it for real.")


def pending_note(runs: list, labels: dict[str, str]) -> str:  # noqa: ANN001 - store.tables.Run
    """The runs of the group not (yet) shown: in flight with their stage, or failed with their error."""
    lines = []
    for r in runs:
        if r.status in ("queued", "running"):
            lines.append(f"**{md(labels[r.id])}**: {md(r.status)} ({md(r.stage)}) — shown here when done.")
        elif r.status != "done":
            lines.append(f"**{md(labels[r.id])}**: {md(r.status)} — {md(r.error or '')}")
    return "  \n".join(lines)


def umap_cells(cells: pd.DataFrame) -> pd.DataFrame:
    """The per-cell table as the UMAPs draw it: a cell without a cell type gets a named category."""
    if "cell_type" in cells.columns:
        values = cells["cell_type"].astype(str)
        cells = cells.assign(cell_type=values.where(values != "", NO_CELL_TYPE))
    return cells


def umap_pair(cells: pd.DataFrame, label: str, batches: list[str], cell_types: list[str] | None,
              frame: int = UMAP_FRAME) -> list:
    """One model's UMAP coloured by batch and, when the run had a cell-type column, by cell type (the categories of
    the whole group, so a batch or a type has the same colour for every model); square maps of ``frame`` pixels."""
    size = dict(frame_width=frame, frame_height=frame, toolbar="above")
    plots = [umap_plot(cells, "batch", f"{label}: by batch", batches).opts(**size)]
    if cell_types is not None and "cell_type" in cells.columns:
        plots.append(umap_plot(cells, "cell_type", f"{label}: by cell type", cell_types).opts(**size))
    return plots


def umap_panes(cells: pd.DataFrame, label: str, batches: list[str], cell_types: list[str] | None) -> pn.FlexBox:
    """One model's maps side by side. Their axes are not linked to other panes (Panel links every HoloViews pane
    of a layout whose axes share a name): each model's UMAP is a space of its own, and a datashaded map drawn in
    another model's ranges left its cells outside the frame, unseen."""
    return pn.FlexBox(*[pn.pane.HoloViews(p, css_classes=["integration-umap"], linked_axes=False)
                        for p in umap_pair(cells, label, batches, cell_types)])


class IntegrationView(PlatformView):
    """Every model of an integration run's group, side by side; redrawn only when a run of the group changes."""

    run = param.String(default="", doc="A run of the application: its group (the models submitted together) is "
                                       "shown; '' shows nothing.")
    finished = param.Integer(default=0, doc="Bumped when a run finishes: the group's runs are read again.")

    def __init__(self, platform=None, **params) -> None:  # noqa: ANN001 - app.platform.Platform
        super().__init__(platform, **params)
        self._cache: OrderedDict[str, pd.DataFrame] = OrderedDict()
        self._shown: tuple = ()
        self.body = pn.Column(sizing_mode="stretch_width", css_classes=["integration-results"], visible=False)
        self._refresh()

    @param.depends("run", "finished", watch=True)
    def _refresh(self) -> None:
        if not self.run:
            self._shown = ()
            self.body.param.update(objects=[], visible=False)
            return
        run = self.platform.runs.get(self.run)
        group = self.platform.runs.group(run.group_id) if run.group_id else [run]
        shown = tuple((r.id, r.status) for r in group)
        if shown != self._shown:  # a poll's bump while nothing of this group changed draws nothing again
            self._shown = shown
            self.body.param.update(objects=self._parts(group), visible=True)

    def _cells(self, run_id: str) -> pd.DataFrame:
        cells = self._cache.pop(run_id, None)
        if cells is None:
            cells = umap_cells(self.platform.runs.cells(run_id, CELL_COLUMNS))
        self._cache[run_id] = cells
        while len(self._cache) > MAX_CACHED_RUNS:
            self._cache.popitem(last=False)
        return cells

    def _dataset_name(self, dataset_id: str) -> str:
        from app.datasets import NotFound

        try:
            return self.platform.datasets.get(dataset_id).file_name
        except NotFound:
            return dataset_id[:8]

    def _parts(self, group: list) -> list:
        names = {m.id: m.name for m in self.platform.models()}
        labels = row_labels(group, names)
        done = [r for r in group if r.status == "done"]
        first = done[0] if done else group[0]
        parts: list = [pn.pane.Markdown(group_heading(self._dataset_name(first.dataset_id),
                                                      first.parameters.get("batch_column"), first.label_column),
                                        css_classes=["integration-heading"], sizing_mode="stretch_width")]
        pending = pending_note(group, labels)
        if pending:
            parts.append(pn.pane.Alert(pending, alert_type="info", css_classes=["integration-pending"],
                                       sizing_mode="stretch_width"))
        untrained = untrained_note([labels[r.id] for r in done if r.parameters.get("weights") == "generated"])
        if untrained:
            parts.append(pn.pane.Alert(untrained, alert_type="warning", css_classes=["integration-untrained"],
                                       sizing_mode="stretch_width"))
        if not done:
            return parts
        scores = scores_frame({labels[r.id]: r.metrics for r in done})
        table = metrics_table(scores)
        widget = pn.widgets.Tabulator(
            table, show_index=False, disabled=True, formatters=plain_formatters(table),
            groups=column_groups(list(table.columns)), layout="fit_columns", header_align="center", sortable=False,
            text_align={c: "right" for c in table.columns if c != MODEL}, widths={MODEL: 110},
            titles=column_titles([c for c in table.columns if c in KNOWN]), css_classes=["integration-metrics-table"],
            sizing_mode="stretch_width", stylesheets=[TABLE_CSS])
        widget.style.map(bold_best)
        parts += [pn.pane.Markdown("#### scIB metrics", margin=(10, 10, 0, 10)), widget,
                  pn.pane.Markdown(scores_caption(first.metrics, first.cells_total), css_classes=["scores-caption"],
                                   styles={"font-size": "0.85em", "opacity": "0.8"}, sizing_mode="stretch_width"),
                  pn.pane.HoloViews(scores_heatmap(scores, best_per_column(scores), "scIB metrics per model"),
                                    css_classes=["integration-heatmap"]),
                  pn.pane.Markdown("#### Each model's embedding (UMAP)", margin=(10, 10, 0, 10))]
        cells = {r.id: self._cells(r.id) for r in done}
        batches = sorted({str(b) for c in cells.values() for b in pd.unique(c["batch"])})
        with_types = [c for c in cells.values() if "cell_type" in c.columns]
        cell_types = sorted({str(t) for c in with_types for t in pd.unique(c["cell_type"])}) if with_types else None
        for r in done:
            untrained = r.parameters.get("weights") == "generated"
            parts.append(pn.Column(
                self._model_line(r.id, names.get(r.model_id, r.model_id), untrained),
                umap_panes(cells[r.id], labels[r.id], batches, cell_types),
                css_classes=["integration-model"], sizing_mode="stretch_width"))
        return parts

    def _model_line(self, run_id: str, name: str, untrained: bool) -> pn.viewable.Viewable:
        """The model's name (untrained said), then its annotated .h5ad (embedding and UMAP in ``obsm``) and CSV:
        links to the REST route when served (streamed), file buttons in a notebook."""
        said = f" — {UNTRAINED}" if untrained else ""
        if pn.state.curdoc is not None and pn.state.curdoc.session_context is not None:
            links = " ".join(
                f'<a class="integration-download-{fmt}" href="{html(download_url(self.platform, run_id, fmt))}" '
                f'download style="margin-left:1em">{label}</a>'
                for fmt, label in (("h5ad", "annotated .h5ad"), ("csv", "CSV")))
            return pn.pane.HTML(f"<b>{html(name)}</b>{html(said)} · download: {links}", margin=(10, 10, 0, 10),
                                css_classes=["integration-model-name"], sizing_mode="stretch_width")
        short = run_id[:8]
        return pn.Row(
            pn.pane.Markdown(f"**{md(name)}**{md(said)}", margin=(5, 10, 0, 10),
                             css_classes=["integration-model-name"]),
            pn.widgets.FileDownload(callback=lambda: str(self.platform.runs.export(run_id, "h5ad")),
                                    filename=f"integrated-{short}.h5ad", label="annotated .h5ad", embed=False,
                                    css_classes=["integration-download-h5ad"]),
            pn.widgets.FileDownload(callback=lambda: str(self.platform.runs.export(run_id, "csv")),
                                    filename=f"integration-{short}.csv", label="CSV", embed=False,
                                    css_classes=["integration-download-csv"]))

    def __panel__(self) -> pn.viewable.Viewable:
        return self.body
