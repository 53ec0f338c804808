"""Results of a finished run, laid out so that its headline fits a laptop's screen: the run pickers and colour
choices, then the headline (scores in words, downloads; the confusion matrix beside the UMAP), then the details
(per-class F1, calibration, the run compared with another, saving it as an annotator, its cells page by page).

The pieces live in their own modules: ``result_text`` (words), ``result_summary`` (the panes of the scores and
plots), ``result_cells`` (cell table, downloads), ``result_annotator`` (save as an annotator)."""

from __future__ import annotations

from collections import OrderedDict

import pandas as pd
import panel as pn
import param

from app.catalog import EMBEDDING_INTEGRATION
from app.result_columns import CONTINUOUS, GENE_PREFIX, QUERY_PREFIX, query_columns, query_values, run_columns
from dashboards.integration import IntegrationView
from dashboards.plots import HOVER_CELL_MAX, NO_CLASS, disagreement, umap_plot
from dashboards.result_annotator import SaveAnnotatorForm
from dashboards.result_cells import CellTable, UmapDetails, downloads
from dashboards.result_summary import HEADLINE_HEIGHT, confusion, details, summary
from dashboards.result_text import (
    CELL_CLASS,
    CELL_TYPE,
    CLASS_COLUMN,
    COMPARE_COLUMNS,
    CONSENSUS,
    DEFAULT_COLOR,
    IMAGE_COLUMNS,
    LABEL_COLORS,
    LABEL_SOURCES,
    LEVELS,
    PER_CELL,
    UMAP_COLUMNS,
    color_choices,
    color_label,
    shown_metrics,
    umap_caption,
)
from dashboards.safe_text import md
from dashboards.styles import CAPTION
from dashboards.view import PlatformView

# per session, the UMAP columns of this many runs stay in memory (the one shown, the one compared with it, and the
# last two looked at); the least recently drawn goes first. A million cells cost ~50 MB.
MAX_CACHED_RUNS = 4
# application id -> the view of its runs (a view with ``run`` and ``finished``); any other application's runs are
# shown by this module's annotation views
RESULT_VIEWS = {EMBEDDING_INTEGRATION: IntegrationView}
# each of the headline's two plots takes half the width, down to this (then they stack)
HALF = {"flex": "1 1 420px"}
# the gene box offers at most this many of the query's genes matching what is typed (searched here, on the server:
# a query's ~33,000 names are never sent to the browser)
GENE_MATCHES = 20


GETTING_STARTED = (
    "**No finished run yet.** Results appear here once one finishes: (1) under **Data** below, upload an `.h5ad` "
    "of raw counts (or pick one already on the server) — it is checked and the report says what was found; "
    "(2) pick an application and a model in the sidebar (the baseline needs no GPU and takes seconds); "
    "(3) under **Run**, choose a labelled reference or a saved annotator and press **Run**: its progress shows "
    "there, and the run opens here when it is done.")


class ResultsView(PlatformView):
    """A finished run (and another beside it); ``finished`` (linked by the Dashboard) re-reads the list of runs."""

    run = param.Selector(doc="The finished run to explore.")
    compare_with = param.Selector(doc="A second finished run on the same cells, shown beside the first.")
    color_by = param.Selector(default=DEFAULT_COLOR, objects=[DEFAULT_COLOR],
                              doc="The per-cell column the UMAP is coloured by, offered from the run's own columns: "
                                  "one colour per value when categorical, the mean per pixel when continuous.")
    normalised = param.Boolean(default=False, doc="Row-normalised confusion matrix.")
    label_source = param.Selector(default=PER_CELL, objects=LABEL_SOURCES,
                                  doc="Labels shown: each cell's own call, or its cluster's majority.")
    has_consensus = param.Boolean(default=False, doc="Whether the run shown has majority-voting labels.")
    level = param.Selector(default=CELL_TYPE, objects=LEVELS,
                           doc="Labels shown: the annotator's cell types, or their coarse Cell Ontology class.")
    has_cell_class = param.Boolean(default=False, doc="Whether the run shown has coarse cell classes.")
    gene = param.String(default="", doc="A gene of the query whose expression colours the UMAP ('' for none).")
    saved = param.Integer(default=0, doc="Bumped when this view saves an annotator.")
    finished = param.Integer(default=0, doc="Bumped when a run finishes: the run pickers then offer it.")
    opened = param.String(default="", doc="A run opened elsewhere (the run history): shown here.")
    own = param.Boolean(default=True, doc="Whether the run shown is drawn by this module's (annotation) views, "
                                          "rather than by its application's own (RESULT_VIEWS).")

    def __init__(self, platform=None, lazy: bool = False, **params) -> None:  # noqa: ANN001 - app.platform.Platform
        """``lazy`` (the Dashboard's): nothing is read until the view is first shown (``__panel__``), so that a new
        page is sent before any run, score or file is read (issue 39, item 12)."""
        super().__init__(platform, **params)
        self._shown = not lazy
        self._runs: dict = {}
        self._labels: dict[str, str] = {}
        self._cache: OrderedDict[str, pd.DataFrame] = OrderedDict()  # run id -> cells, least recently drawn first
        self._kinds: dict[str, str] = {}
        self.save_form = SaveAnnotatorForm(self.platform)
        self.save_form.param.watch(lambda _e: self.param.update(saved=self.saved + 1), "saved")
        self.cells = CellTable(self.platform)
        self.views = {app: make(self.platform) for app, make in RESULT_VIEWS.items()}
        # the query's own columns and genes: read from its file only when asked for (the button, or a gene typed)
        self._genes: list[str] = []
        self._genes_lower: list[str] = []
        self._query_read_for: str | None = None
        self.gene_picker = pn.widgets.AutocompleteInput.from_param(
            self.param.gene, name="…or by a gene", placeholder="type a gene", options=[], search_strategy="includes",
            case_sensitive=False, min_characters=1, restrict=False, width=170, css_classes=["gene-picker"])
        self.gene_picker.param.watch(self._search_genes, "value_input")
        self.query_button = pn.widgets.Button(name="+ the query's columns", css_classes=["query-colours"],
                                              align="end", button_type="light")
        self.query_button.on_click(lambda _e: self.load_query_colours())
        self.gene_message = pn.pane.Markdown("", visible=False, css_classes=["gene-message"], margin=(0, 10))
        # the headline (scores, confusion matrix, UMAP) is replaced as one piece when the run changes, its UMAP
        # first by a note naming the run it is loading: header, scores and map always belong to the same run
        self.headline = pn.Column(sizing_mode="stretch_width", css_classes=["result-headline"])
        self._summary_slot = self._confusion_slot = self._map_slot = pn.Column()
        self.headline_run = self.map_run = ""  # the run the headline's words, and its map, show
        if self._shown:
            self.show()

    def show(self) -> None:
        """Read the finished runs and build the shown run's headline: at once, or (lazy) when first shown."""
        self._shown = False  # the run that refresh picks builds its headline once, below
        self.refresh()
        self._shown = True
        self._follow_run()
        self._show_headline()

    @param.depends("finished", watch=True)
    def refresh(self) -> None:
        done = [r for r in self.platform.runs.list() if r.status == "done"]
        names = {m.id: m.name for m in self.platform.models()}
        self._runs = {r.id: r for r in done}
        labels = {f"{names.get(r.model_id, r.model_id)} · {r.created_at:%H:%M:%S} · {r.id[:8]}"
                  + (" · integration" if r.application_id == EMBEDDING_INTEGRATION else ""): r.id for r in done}
        self._labels = labels
        self.param.run.objects = {"(none)": "", **labels}
        self.param.compare_with.objects = {"(none)": "", **{k: v for k, v in labels.items()
                                                            if self._runs[v].application_id not in self.views}}
        if self.run not in self._runs:
            self.run = next(iter(labels.values()), "")
        if self.compare_with not in self.param.compare_with.objects.values():
            self.compare_with = ""

    def _shows_own(self) -> bool:
        """Whether the run shown is one this module's views draw (not one of RESULT_VIEWS' applications)."""
        run = self._runs.get(self.run) if self.run else None
        return run is not None and run.application_id not in self.views

    @param.depends("run", "finished", watch=True)
    def _follow_run(self) -> None:
        """Hand the run to its application's view, if it has one; the others show nothing."""
        run = self._runs.get(self.run) if self.run else None
        application = run.application_id if run is not None else None
        self.own = application not in self.views
        mine = self.run if self._shows_own() else ""
        self.save_form.run = mine
        self.cells.run = mine
        for app, view in self.views.items():
            view.param.update(run=self.run if app == application else "", finished=self.finished)

    @param.depends("opened", watch=True)
    def _open(self) -> None:
        self.open(self.opened)

    def open(self, run_id: str) -> None:
        """Show ``run_id`` (a run clicked in the history, or one of this session's runs that just finished),
        whichever run is shown now."""
        if run_id and run_id not in self._runs:
            self.refresh()  # it finished since the last poll told us
        if run_id in self._runs:
            self.run = run_id

    def _fill_colors(self) -> None:
        """Offer the colours this run's cells have (read from its file's schema, not its cells)."""
        self._kinds = run_columns(self.platform, self.run) if self.run else {}
        options = color_choices(self._kinds) or {color_label(DEFAULT_COLOR): DEFAULT_COLOR}
        self._genes, self._genes_lower, self._query_read_for = [], [], None  # read again when asked for
        self.gene_picker.options = []
        self.query_button.visible = self._shows_own()
        self.gene_message.visible = False
        self.gene = ""  # a gene of the last query is not asked of this one
        self.param.color_by.objects = options
        if self.color_by not in options.values():
            self.color_by = next(iter(options.values()))
        self.has_consensus = CONSENSUS in self._kinds
        if not self.has_consensus:
            self.label_source = PER_CELL
        self.has_cell_class = CLASS_COLUMN in self._kinds
        if not self.has_cell_class:
            self.level = CELL_TYPE

    def load_query_colours(self) -> None:
        """Offer the query's own obs columns as colours too, and know its genes (the button, or the first letter
        typed in the gene box): its file is opened (obs and var only) once per run shown, never at page build."""
        if not self._shows_own() or self._query_read_for == self.run:
            return
        extra, self._genes = self._query_columns()
        self._genes_lower = [g.lower() for g in self._genes]
        self._query_read_for = self.run
        self._kinds.update(extra)
        self.param.color_by.objects = {**self.param.color_by.names, **{_color_label(key): key for key in extra}}
        self.query_button.visible = False

    def _search_genes(self, event) -> None:  # noqa: ANN001 - a param Event
        """What is typed in the gene box: up to ``GENE_MATCHES`` of the query's genes that contain it (those that
        start with it first, shortest first), searched here; the browser gets those names only."""
        typed = (event.new or "").strip().lower()
        if not typed:
            self.gene_picker.options = []
            return
        self.load_query_colours()
        starts = [g for g, low in zip(self._genes, self._genes_lower, strict=True) if low.startswith(typed)]
        matches = sorted(starts, key=lambda g: (len(g), g))[:GENE_MATCHES]  # the closest (shortest) names first
        if len(matches) < GENE_MATCHES:
            matches += [g for g, low in zip(self._genes, self._genes_lower, strict=True)
                        if typed in low and not low.startswith(typed)][:GENE_MATCHES - len(matches)]
        self.gene_picker.options = matches

    def _query_columns(self) -> tuple[dict[str, str], list[str]]:
        """The query's obs columns (keyed ``query:<name>``) and genes: a query deleted or unreadable offers none."""
        try:
            obs, genes = query_columns(self.platform, self.run)
        except Exception:  # noqa: BLE001 - the run's own colours still stand
            return {}, []
        return {QUERY_PREFIX + name: kind for name, kind in obs.items()}, genes

    @param.depends("gene", watch=True)
    def _colour_by_gene(self) -> None:
        """A gene picked: its expression colours the UMAP; one the query lacks is said so, the colour kept."""
        gene = self.gene.strip()
        if not gene or not self.run:
            self.gene_message.visible = False
            return
        self.load_query_colours()
        if gene not in self._genes:
            self.gene_message.object = (f"No gene named **{md(gene)}** in this run's query "
                                        f"({len(self._genes):,} genes): pick one the search offers.")
            self.gene_message.visible = True
            return
        self.gene_message.visible = False
        key = GENE_PREFIX + gene
        self._kinds[key] = CONTINUOUS
        self.param.color_by.objects = {**{k: v for k, v in self.param.color_by.names.items()
                                          if not v.startswith(GENE_PREFIX)}, _color_label(key): key}
        self.color_by = key

    @param.depends("label_source", watch=True)
    def _follow_label_source(self) -> None:
        """Majority voting colours the UMAP by the consensus; back to per cell, by the cell's own call. The
        consensus is of cell types: it shows the cell-type level."""
        if self.label_source == CONSENSUS and CONSENSUS in self._kinds:
            self.level = CELL_TYPE
            self.color_by = CONSENSUS
        elif self.label_source == PER_CELL and self.color_by == CONSENSUS:
            self.color_by = DEFAULT_COLOR

    @param.depends("level", watch=True)
    def _follow_level(self) -> None:
        """The cell-class level colours the UMAP by each cell's coarse class (its own call, not the consensus);
        back to cell types, by the predicted label."""
        if self.level == CELL_CLASS and CLASS_COLUMN in self._kinds:
            self.label_source = PER_CELL
            self.color_by = CLASS_COLUMN
        elif self.level == CELL_TYPE and self.color_by == CLASS_COLUMN:
            self.color_by = DEFAULT_COLOR

    def _cells(self, run_id: str, color: str = DEFAULT_COLOR, columns: tuple[str, ...] = ()) -> pd.DataFrame:
        """What the UMAP draws, plus the colour column and ``columns`` (never the per-class probabilities: those
        are paged in the table, and a clicked cell's row is read then). Above ``HOVER_CELL_MAX`` cells the names
        are read only when asked for (a million names cost a third of a second). Kept for the last
        ``MAX_CACHED_RUNS`` runs drawn."""
        cells = self._cache.pop(run_id, None)
        if cells is None:
            run = self._runs.get(run_id)
            large = run is not None and (run.cells_total or 0) > HOVER_CELL_MAX
            cells = self.platform.runs.cells(run_id, IMAGE_COLUMNS if large else UMAP_COLUMNS)
        missing = [c for c in dict.fromkeys((*columns, color)) if c not in cells.columns]
        query = [c for c in missing if c.startswith((QUERY_PREFIX, GENE_PREFIX))]
        missing = [c for c in missing if c not in query]
        if query:  # the query file's own columns, in the run's cells' order
            ids = cells["cell_id"] if "cell_id" in cells else self.platform.runs.cells(run_id, ["cell_id"])["cell_id"]
            cells = cells.assign(**{c: _array(query_values(self.platform, run_id, c, ids)) for c in query})
        if missing:  # one read for whatever is not held yet
            extra = self.platform.runs.cells(run_id, missing)
            if CLASS_COLUMN in extra.columns:  # '' (no class): named in the legend, grey as unassigned cells are
                values = extra[CLASS_COLUMN].astype(object)
                extra[CLASS_COLUMN] = values.where(values != "", NO_CLASS)
            cells = cells.assign(**{c: extra[c].to_numpy() for c in extra.columns})
        self._cache[run_id] = cells
        while len(self._cache) > MAX_CACHED_RUNS:
            self._cache.popitem(last=False)
        return cells

    def _label_categories(self, cells: pd.DataFrame) -> list[str]:
        """Every label the run's label columns hold: a type gets one colour in each (and in both runs compared)."""
        return sorted({str(c) for col in LABEL_COLORS if col in cells
                       for c in pd.unique(cells[col])} - {""})  # categoricals: unique() reads the codes

    def _umap(self, run_id: str | None = None, color: str | None = None) -> pn.viewable.Viewable:
        """The run's UMAP (the one shown without ``run_id``) coloured by ``color`` (the chosen one without), as
        wide as its half of the headline, with how it was made."""
        run_id = self.run if run_id is None else run_id
        color = self.color_by if color is None else color
        if not run_id or self._runs[run_id].application_id in self.views:
            return pn.Column()
        run = self._runs[run_id]
        color = color if color in self._kinds else DEFAULT_COLOR
        cells = self._cells(run_id, color)
        if color not in cells.columns:  # a choice left from another run, drawn before the options were refilled
            color = DEFAULT_COLOR

        def read_cell(index: int) -> pd.DataFrame:  # a click's cell: its row group only, all its columns
            return self.platform.runs.page(run_id, index, 1)[0]

        shown = UmapDetails(cells, read_cell, color_by=color, title=f"UMAP by {_color_label(color)}",
                            categories=self._label_categories(cells) if color in LABEL_COLORS else None,
                            width=None, label=_color_label(color), height=HEADLINE_HEIGHT)
        return pn.Column(
            shown.pane,
            pn.pane.Markdown(umap_caption(run.provenance.get("umap"), len(cells)), css_classes=["umap-caption"],
                             styles=CAPTION, sizing_mode="stretch_width", margin=(0, 10)),
            shown.details, sizing_mode="stretch_width")

    def _run_label(self, run_id: str) -> str:
        return next((label for label, value in self._labels.items() if value == run_id), run_id[:8])

    @param.depends("run", watch=True)
    def _show_headline(self) -> None:
        """The run's headline in one replacement (its words and confusion matrix, and in the UMAP's place a note
        naming the run whose map is loading); the map follows once drawn. A UMAP takes seconds to read and draw:
        replaced piece by piece, the old run's map stood under the new run's scores meanwhile (issue 39).
        A lazy view not shown yet builds nothing: ``show`` does when it is."""
        if not self._shown:
            return
        self._fill_colors()
        run_id = self.run
        classes = ["run-" + run_id] if run_id else []
        self._summary_slot = pn.Column(self._summary(), sizing_mode="stretch_width", css_classes=classes)
        self._confusion_slot = pn.Column(self._confusion(), sizing_mode="stretch_width", styles=HALF)
        if not run_id:
            first = pn.pane.Markdown("No finished run yet: upload a dataset and run a model (sections 1 and 2).")
        elif self._shows_own():
            first = pn.pane.Markdown(f"Loading the UMAP of {md(self._run_label(run_id))}…",
                                     css_classes=["umap-loading"], margin=(0, 10))
        else:
            first = pn.Column()
        self._map_slot = pn.Column(first, sizing_mode="stretch_width", styles=HALF,
                                   css_classes=["result-umap", *classes])
        self.headline.objects = [self._summary_slot,
                                 pn.FlexBox(self._confusion_slot, self._map_slot, sizing_mode="stretch_width")]
        self.headline_run = self.map_run = run_id
        if run_id and self._shows_own():
            self._draw_map()

    def _draw_map(self) -> None:
        """Draw the shown run's UMAP into its slot: on the next tick when served (so that the note naming the run
        reaches the browser first), at once elsewhere; a run or colour changed meanwhile draws its own."""
        run_id, color, slot = self.run, self.color_by, self._map_slot

        def draw() -> None:
            if (self.run, self.color_by, self._map_slot) == (run_id, color, slot):
                slot.objects = [self._umap(run_id, color)]

        pn.state.execute(draw, schedule=True)

    @param.depends("color_by", watch=True)
    def _recolour(self) -> None:
        """Another colour for the run shown (a new run's headline draws its map itself)."""
        if self.map_run == self.run and self.run and self._shows_own():
            self._draw_map()

    @param.depends("label_source", "level", "normalised", watch=True)
    def _show_scores(self) -> None:
        """Other labels (per cell or majority, types or classes) or normalisation: the same run's words and
        matrix (a new run's headline, being built, shows its own)."""
        if self.headline_run != self.run:
            return
        self._summary_slot.objects = [self._summary()]
        self._confusion_slot.objects = [self._confusion()]

    @param.depends("run", "compare_with")
    def _compare(self) -> pn.viewable.Viewable:
        """The cells on which the run and the one compared with it disagree, on the first run's UMAP."""
        if not (self._shows_own() and self.compare_with and self.compare_with != self.run):
            return pn.Column()
        run, other = self._runs[self.run], self._runs[self.compare_with]
        name, other_name = self._name(run), self._name(other)
        merged = disagreement(self._cells(self.run, columns=COMPARE_COLUMNS),
                             self._cells(self.compare_with, columns=COMPARE_COLUMNS), name, other_name)
        n_dis = int((merged["agreement"] != "agree").sum())
        return pn.Column(
            pn.pane.Markdown(f"### Compared with {other_name}", margin=(0, 10)),
            pn.pane.HoloViews(umap_plot(merged, "agreement", f"{name} vs {other_name}", width=None,
                                        height=HEADLINE_HEIGHT), css_classes=["compare-plot"],
                              sizing_mode="stretch_width"),
            pn.pane.Markdown(f"{n_dis:,} of {len(merged):,} cells ({n_dis / max(len(merged), 1):.0%}) get a "
                             "different label from the two runs.", css_classes=["disagreement"], margin=(0, 10)),
            sizing_mode="stretch_width", css_classes=["result-compare"])

    def _name(self, run) -> str:  # noqa: ANN001
        return {m.id: m.name for m in self.platform.models()}.get(run.model_id, run.model_id)

    def _summary(self) -> pn.viewable.Viewable:
        """The headline's words: untrained banner, scores, head; and the downloads. Before any run has finished,
        how to make one (the results come first on the page, so a new user reads this first)."""
        if not self._runs:
            return pn.pane.Alert(GETTING_STARTED, alert_type="info", css_classes=["results-empty"],
                                 sizing_mode="stretch_width")
        if not self._shows_own():
            return pn.Column()
        return summary(self._runs[self.run], self.label_source, self.level, downloads(self.platform, self.run))

    def _confusion(self) -> pn.viewable.Viewable:
        if not self._shows_own():
            return pn.Column()
        shown = shown_metrics(self._runs[self.run].metrics, self.label_source, self.level)
        return confusion(shown, self.normalised) or pn.Column()

    @param.depends("run", "label_source", "level")
    def _details(self) -> pn.viewable.Viewable:
        """Per-class F1 and the reliability diagram, side by side where they fit."""
        if not self._shows_own():
            return pn.Column()
        run = self._runs[self.run]
        parts = details(run, shown_metrics(run.metrics, self.label_source, self.level))
        return pn.FlexBox(*parts, sizing_mode="stretch_width", css_classes=["result-details"])

    def _controls(self) -> pn.viewable.Viewable:
        """Which run, compared with which, coloured by what, which labels: one row that wraps where it must."""
        own = self.param.own
        return pn.FlexBox(
            pn.widgets.Select.from_param(self.param.run, name="Run", css_classes=["result-run-picker"], width=300),
            pn.widgets.Select.from_param(self.param.compare_with, name="Compare with", css_classes=["compare-picker"],
                                         width=230, visible=own),
            pn.widgets.Select.from_param(self.param.color_by, name="Colour the UMAP by", css_classes=["color-by"],
                                         width=190, visible=own),
            self.query_button,
            pn.Column(self.gene_picker, visible=own, margin=0),
            pn.widgets.Checkbox.from_param(self.param.normalised, name="row-normalised", align="end",
                                           css_classes=["row-normalised"], visible=own),
            pn.widgets.RadioButtonGroup.from_param(self.param.label_source, css_classes=["label-source"],
                                                   visible=self.param.has_consensus.rx().rx.and_(own), align="end"),
            pn.widgets.RadioButtonGroup.from_param(self.param.level, css_classes=["label-level"],
                                                   visible=self.param.has_cell_class.rx().rx.and_(own), align="end"),
            self.gene_message,
            align_items="end", sizing_mode="stretch_width", css_classes=["result-controls"])

    def __panel__(self) -> pn.viewable.Viewable:
        if not self._shown:
            self.show()
        own = pn.Column(
            pn.panel(self._details, sizing_mode="stretch_width"),
            pn.panel(self._compare, sizing_mode="stretch_width"),
            self.save_form,
            pn.pane.Markdown("### Cells", margin=(0, 10)), self.cells,
            visible=self.param.own, sizing_mode="stretch_width", css_classes=["result-details-all"])
        return pn.Column("## Results", self._controls(), *self.views.values(), self.headline, own,
                         sizing_mode="stretch_width", css_classes=["results"])


def _color_label(key: str) -> str:
    """The words for a colour: the run's columns as ``color_label`` says, the query's named as its own (plain
    text: a picker's option and a plot's title are not markup)."""
    if key.startswith(QUERY_PREFIX):
        return f"{key[len(QUERY_PREFIX):]} (query)"
    if key.startswith(GENE_PREFIX):
        return f"{key[len(GENE_PREFIX):]} expression"
    return color_label(key)


def _array(values: object) -> object:
    """A column to assign to the cells: a Series loses its own index (the cells are in the run's order)."""
    return values.to_numpy() if isinstance(values, pd.Series) else values
