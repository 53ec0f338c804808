"""Results of a finished run: UMAP, confusion matrix, metrics, per-cell table, comparison, downloads, and saving
the run's trained head as a named annotator (with its classes' Cell Ontology terms)."""

from __future__ import annotations

import asyncio
from collections import OrderedDict

import pandas as pd
import panel as pn
import param

from app.catalog import EMBEDDING_INTEGRATION
from app.downloads import download_url
from app.result_columns import PROBABILITY_PREFIX, run_columns
from dashboards.integration import IntegrationView
from dashboards.plots import NO_CLASS, confusion_heatmap, disagreement, f1_bars, reliability_plot, umap_plot
from dashboards.runs import HEADS
from dashboards.safe_text import html, md, plain_formatters
from dashboards.view import PlatformView

CELL_COLUMNS = ["cell_id", "predicted_label", "confidence", "assigned", "true_label", "split", "umap_1", "umap_2"]
UMAP_COLUMNS = ["cell_id", "umap_1", "umap_2", "predicted_label", "confidence", "true_label"]
DEFAULT_COLOR = "predicted_label"
CONSENSUS = "majority_voting"  # the cluster-consensus label column, and the metrics' key for its scores
# predicted, true and consensus labels share one vocabulary: a type gets the same colour in each (and in both runs
# compared)
LABEL_COLORS = ("predicted_label", "true_label", CONSENSUS)
# the words a colour choice shows; any other column shows its name with spaces
COLOR_LABELS = {"predicted_label": "predicted label", "true_label": "true label", "reference_fit": "reference fit",
                "unassigned_reason": "why unassigned", "over_clustering": "over-clustering",
                CONSENSUS: "majority voting", "predicted_cell_class": "predicted cell class",
                "predicted_cell_type_ontology_term_id": "predicted Cell Ontology term"}
PER_CELL = "per_cell"
LABEL_SOURCES = {"per cell": PER_CELL, "majority voting": CONSENSUS}
# an annotator that maps its labels to the Cell Ontology adds the coarse level: per-cell column and metrics' key
CLASS_COLUMN = "predicted_cell_class"
CELL_TYPE, CELL_CLASS = "cell_type", "cell_class"
LEVELS = {"cell type": CELL_TYPE, "cell class": CELL_CLASS}
# the ontology table of the save form: the class, the id the user confirms (editable), the term's name, its source
ONTOLOGY_COLUMNS = ["class", "Cell Ontology id", "term", "suggested"]
EDITED = "(checked when saved)"
SAVE_NOTE = ("Cell Ontology id of each class, as suggested: change or clear any (empty: the class stays unmapped); "
             "ids are checked when saved. With ids, runs with this annotator also give each cell its term and coarse "
             "cell class.")
SAVE_UNTRAINED = ("**This run used generated, untrained weights**: an annotator saved from it is marked untrained, "
                  "and its predictions mean nothing.")
HEAD_NAMES = {**{kind: name for name, kind in HEADS.items()}, "fine_tuned_linear": "Fine-tuned model"}
# one column per class: paged in the cell table (top probabilities), not offered as colours
PER_CLASS_PREFIX = PROBABILITY_PREFIX
# per session, the UMAP columns of this many runs stay in memory (the one shown, the one compared with it, and the
# last two looked at); the least recently drawn goes first. A million cells cost ~50 MB.
MAX_CACHED_RUNS = 4
PAGE_ROWS = 20
# application id -> the view of its runs (a view with ``run`` and ``finished``); any other application's runs are
# shown by this module's annotation views
RESULT_VIEWS = {EMBEDDING_INTEGRATION: IntegrationView}
UNTRAINED_BANNER = ("**This run used generated, untrained weights.** The pipeline ran for real, but these "
                    "predictions mean nothing. Stage trained weights to annotate for real.")


def head_text(run) -> str:  # noqa: ANN001 - store.tables.Run
    """Which head labelled the cells, with its k or temperature as the run resolved them ('' if not recorded)."""
    settings = run.parameters.get("head") or {}
    trained = (run.provenance or {}).get("head") or {}
    kind = trained.get("kind") or settings.get("kind")
    if not kind:
        return ""
    text = f"Head: {md(HEAD_NAMES.get(kind, kind))}"
    k = trained.get("k", settings.get("k"))
    if kind == "knn":
        text += f", k = {int(k)}" if k is not None else ", k automatic"
    calibration = run.metrics.get("calibration") or {}
    recorded = calibration.get("temperature") if calibration.get("head") == kind else None
    temperature = trained.get("temperature", recorded)
    if temperature is not None:
        text += f", temperature {float(temperature):.2f}"
    tuning = (trained.get("reference_check") or {}).get("fine_tuning")
    if tuning:
        text += " · " + fine_tuning_text(tuning)
    annotator = (run.parameters.get("annotator") or {}).get("name") or trained.get("annotator")
    if annotator:
        check = trained.get("reference_check") or {}
        text = f"Annotator **{md(annotator)}** · {text}" + (
            f" (held-out macro-F1 {float(check['macro_f1']):.3f} on its reference)"
            if check.get("macro_f1") is not None else "")
    novelty = run.parameters.get("novelty_threshold") or 0
    if novelty:
        text += f" · novelty threshold {float(novelty):.2f} (cells fitting the reference less are unassigned)"
    return text


def fine_tuning_text(tuning: dict) -> str:
    """One line on how a fine-tuned head was made: epochs, the best one and its validation macro-F1."""
    history = tuning.get("history") or []
    best = next((h for h in history if h.get("epoch") == tuning.get("best_epoch")), None)
    text = f"fine-tuned {len(history)} epoch{'s' if len(history) != 1 else ''}"
    if best is not None:
        text += f", best epoch {best['epoch']} (validation macro-F1 {float(best['val_macro_f1']):.3f})"
    if tuning.get("stopped_early"):
        text += ", stopped early"
    if tuning.get("from_untrained_weights"):
        text += ", **from untrained weights**"
    return text


def shown_metrics(metrics: dict, label_source: str = PER_CELL, level: str = CELL_TYPE) -> dict:
    """The scores of the labels shown: the coarse cell classes' or the cluster consensus's when asked for and
    recorded, else the per cell's."""
    if level == CELL_CLASS and metrics.get(CELL_CLASS):
        return metrics[CELL_CLASS]
    if label_source == CONSENSUS and metrics.get(CONSENSUS):
        return {**metrics[CONSENSUS], "scope": metrics.get("scope", "")}
    return metrics


def _scores(m: dict) -> str:
    return (f"**Macro-F1 {m['macro_f1']:.3f}** · accuracy {m['accuracy']:.3f} · weighted F1 {m['weighted_f1']:.3f}"
            f" · {m['assigned_fraction']:.0%} of cells assigned · {m['n_cells']:,} cells ({md(m.get('scope', ''))})")


def metrics_markdown(run, label_source: str = PER_CELL, level: str = CELL_TYPE) -> str:  # noqa: ANN001
    """Scores of the per-cell labels, or (``label_source`` CONSENSUS) of the cluster consensus, or (``level``
    CELL_CLASS) of the coarse Cell Ontology classes, with the others' macro-F1 beside them, and the head that made
    them."""
    m = run.metrics
    head = head_text(run)
    if not m:
        return "  \n".join(filter(None, [
            "No true labels were given for this query, so there are no metrics (pick a truth column).", head]))
    consensus = m.get(CONSENSUS)
    classes = m.get(CELL_CLASS)
    if level == CELL_CLASS and classes:
        lines = [f"Cell class (the Cell Ontology's coarse level, {len(classes.get('per_class') or {})} classes): "
                 + _scores(classes) + "; a predicted label without a class counts as unassigned",
                 f"Cell type: macro-F1 {m['macro_f1']:.3f} · accuracy {m['accuracy']:.3f}"]
    elif label_source == CONSENSUS and consensus:
        lines = [f"Majority voting over {consensus.get('clusters', '?')} clusters: "
                 + _scores(shown_metrics(m, CONSENSUS)),
                 f"Per cell: macro-F1 {m['macro_f1']:.3f} · accuracy {m['accuracy']:.3f}"]
    else:
        lines = [_scores(m)]
        if consensus:
            lines.append(f"With majority voting ({consensus.get('clusters', '?')} clusters): macro-F1 "
                         f"{consensus['macro_f1']:.3f} · accuracy {consensus['accuracy']:.3f}")
        if classes:
            lines.append(f"At the cell-class level: macro-F1 {classes['macro_f1']:.3f} · accuracy "
                         f"{classes['accuracy']:.3f}")
    if head:
        lines.append(head)
    if m.get("classes_not_in_reference"):
        lines.append("Note: true classes the reference does not have: "
                     + ", ".join(md(c) for c in m["classes_not_in_reference"]))
    return "  \n".join(lines)


def calibration_caption(calibration: dict) -> str:
    """What the reliability diagram shows, in words, with the ECE before temperature scaling when there was one."""
    n, ece = int(calibration.get("n_cells") or 0), calibration.get("ece")
    text = (f"How often the head was right against how sure it said it was, on the {n:,} cells with true labels, "
            "in bins of its top-class probability; bars reaching the dashed diagonal are perfectly calibrated.")
    if ece is not None:
        text += f" Expected calibration error (ECE, the cell-weighted gap): **{float(ece):.3f}**."
    before = calibration.get("ece_before_temperature")
    if before is not None:
        temperature = calibration.get("temperature")
        at = f" (T = {float(temperature):.2f})" if temperature is not None else ""
        text += f" Before temperature scaling{at}: ECE {float(before):.3f}."
    return text


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


def color_label(column: str) -> str:
    """The words a colour choice shows for a column."""
    return COLOR_LABELS.get(column, column.replace("_", " "))


def color_choices(kinds: dict[str, str]) -> dict[str, str]:
    """Label -> column of ``color_options``, as the colour picker offers them."""
    return {color_label(c): c for c in color_options(kinds)}


def savable(run) -> bool:  # noqa: ANN001 - store.tables.Run
    """Whether a run's head can be saved as an annotator: a finished run that learnt from a reference."""
    return (run is not None and run.status == "done" and run.reference_dataset_id is not None
            and not run.parameters.get("annotator"))


def ontology_frame(classes: list[str], suggestions: dict[str, dict | None]) -> pd.DataFrame:
    """One row per class of the run's head: the suggested Cell Ontology id (the user may change or clear it), the
    term's name and how it was found ('' and 'no suggestion' when nothing matched)."""
    rows = []
    for label in classes:
        s = suggestions.get(label)
        rows.append({"class": str(label), "Cell Ontology id": s["term_id"] if s else "",
                     "term": s["term_label"] if s else "", "suggested": s["how"] if s else "no suggestion"})
    return pd.DataFrame(rows, columns=ONTOLOGY_COLUMNS)


def ontology_mapping(frame: pd.DataFrame) -> dict[str, str | None]:
    """The confirmed map (class -> id, None when left empty) that ``save_from_run`` checks."""
    out: dict[str, str | None] = {}
    for label, term in zip(frame["class"], frame["Cell Ontology id"], strict=True):
        text = "" if term is None or (isinstance(term, float) and pd.isna(term)) else str(term).strip()
        out[str(label)] = text or None
    return out


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
    can_save = param.Boolean(default=False, doc="Whether the run shown can be saved as an annotator.")
    annotator_name = param.String(default="", doc="Name of the annotator to save (letters, digits, spaces, . _ ( ) "
                                                  "+ -).")
    annotator_description = param.String(default="", doc="What the annotator is for (optional).")
    annotator_author = param.String(default="", doc="Who made it (optional).")
    saved = param.Integer(default=0, doc="Bumped when this view saves an annotator.")
    page = param.Integer(default=0, bounds=(0, None), doc="Page of the per-cell table (read from the server).")
    finished = param.Integer(default=0, doc="Bumped when a run finishes: the run pickers then offer it.")
    opened = param.String(default="", doc="A run opened elsewhere (the run history): shown here.")
    own = param.Boolean(default=True, doc="Whether the run shown is drawn by this module's (annotation) views, "
                                          "rather than by its application's own (RESULT_VIEWS).")

    def __init__(self, platform=None, **params) -> None:  # noqa: ANN001 - app.platform.Platform
        super().__init__(platform, **params)
        self._cache: OrderedDict[str, pd.DataFrame] = OrderedDict()  # run id -> cells, least recently drawn first
        self._kinds: dict[str, str] = {}
        self._suggested: dict[str, tuple[str, str]] = {}  # class -> (suggested id, its term), for edits
        self.ontology = pn.widgets.Tabulator(pd.DataFrame(columns=ONTOLOGY_COLUMNS), show_index=False,
                                             editors={"class": None, "term": None, "suggested": None},
                                             css_classes=["ontology-table"], sizing_mode="stretch_width",
                                             layout="fit_data_stretch", height=220)
        self.ontology.on_edit(self._on_ontology_edit)
        self.save_button = pn.widgets.Button(name="Save annotator", button_type="primary",
                                             css_classes=["save-annotator-button"], width=160)
        self.save_button.on_click(self._on_save)
        self.save_note = pn.pane.Markdown(SAVE_NOTE, styles={"font-size": "0.85em", "color": "#555"},
                                          css_classes=["save-annotator-note"], margin=(0, 10),
                                          sizing_mode="stretch_width")
        self.save_message = pn.pane.Alert("", visible=False, css_classes=["save-annotator-message"],
                                          sizing_mode="stretch_width")
        self.views = {app: make(self.platform) for app, make in RESULT_VIEWS.items()}
        self.refresh()
        self._follow_run()
        self._fill_colors()
        self._fill_save_form()

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
        for app, view in self.views.items():
            view.param.update(run=self.run if app == application else "", finished=self.finished)

    @param.depends("opened", watch=True)
    def _open(self) -> None:
        if self.opened and self.opened not in self._runs:
            self.refresh()  # it finished since the last poll told us
        if self.opened in self._runs:
            self.run = self.opened

    @param.depends("run", watch=True)
    def _fill_colors(self) -> None:
        """Offer the colours this run's cells have (read from its file's schema, not its cells)."""
        self._kinds = run_columns(self.platform, self.run) if self.run else {}
        options = color_choices(self._kinds) or {color_label(DEFAULT_COLOR): DEFAULT_COLOR}
        self.param.color_by.objects = options
        if self.color_by not in options.values():
            self.color_by = next(iter(options.values()))
        self.has_consensus = CONSENSUS in self._kinds
        if not self.has_consensus:
            self.label_source = PER_CELL
        self.has_cell_class = CLASS_COLUMN in self._kinds
        if not self.has_cell_class:
            self.level = CELL_TYPE

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

    @param.depends("run", watch=True)
    def _fill_save_form(self) -> None:
        """The run's classes with the Cell Ontology terms the platform suggests, for the user to confirm."""
        run = self._runs.get(self.run) if self.run else None
        self.can_save = savable(run)
        if not self.can_save:
            return
        classes = [str(c) for c in ((run.provenance or {}).get("head") or {}).get("classes") or []]
        suggestions = self.platform.annotators.suggest_ontology(classes) if classes else {}
        frame = ontology_frame(classes, suggestions)
        self._suggested = {r["class"]: (r["Cell Ontology id"], r["term"]) for r in frame.to_dict("records")}
        trained = (run.provenance or {}).get("model", {}).get("trained", True)
        self.save_note.object = SAVE_NOTE if trained else f"{SAVE_UNTRAINED}  \n{SAVE_NOTE}"
        self.save_message.visible = False
        self.ontology.formatters = plain_formatters(frame)
        self.ontology.value = frame
        self.ontology.height = min(320, 45 + 29 * len(frame))  # every class at once, up to ten

    def _on_ontology_edit(self, event) -> None:  # noqa: ANN001 - panel's TableEditEvent
        """An id the user typed is checked when the annotator is saved; cleared, the class stays unmapped."""
        if event.column != "Cell Ontology id":
            return
        frame = self.ontology.value
        label = str(frame["class"].iloc[event.row])
        typed = str(event.value or "").strip()
        suggested_id, suggested_term = self._suggested.get(label, ("", ""))
        term = suggested_term if typed and typed == suggested_id else EDITED if typed else "not mapped"
        self.ontology.patch({"term": [(event.row, term)]}, as_index=False)

    async def _on_save(self, _event) -> None:  # noqa: ANN001
        from app.annotators import Conflict
        from app.datasets import NotFound

        run_id = self.run
        if not run_id or not self.can_save:
            return
        mapping = ontology_mapping(self.ontology.value)
        try:
            a = await asyncio.to_thread(self.platform.annotators.save_from_run, run_id, self.annotator_name,
                                        self.annotator_description, self.annotator_author, mapping)
        except (Conflict, NotFound, ValueError) as exc:
            self.save_message.param.update(object=md(exc), alert_type="danger", visible=True)
            return
        mapped = sum(1 for term in (a.ontology or {}).values() if term)
        self.save_message.param.update(
            object=f"Saved annotator **{md(a.name)}**: {len(a.classes or {})} classes, {mapped} mapped to the Cell "
                   "Ontology. Use it in section 2 (*Labels from: saved annotator*).", alert_type="success",
            visible=True)
        self.annotator_name = ""
        self.saved += 1

    def _cells(self, run_id: str, color: str = DEFAULT_COLOR) -> pd.DataFrame:
        """What the UMAP draws and hovers, plus the colour column (never the per-class probabilities: those are
        paged in the table). Kept for the last ``MAX_CACHED_RUNS`` runs drawn."""
        cells = self._cache.pop(run_id, None)
        if cells is None:
            cells = self.platform.runs.cells(run_id, UMAP_COLUMNS)
        if color not in cells.columns:
            extra = self.platform.runs.cells(run_id, [color])
            if color in extra.columns:
                values = extra[color]
                if color == CLASS_COLUMN:  # '' (no class): named in the legend, grey as unassigned cells are
                    values = values.astype(object).where(values.astype(object) != "", NO_CLASS)
                cells = cells.assign(**{color: values.to_numpy()})
        self._cache[run_id] = cells
        while len(self._cache) > MAX_CACHED_RUNS:
            self._cache.popitem(last=False)
        return cells

    @param.depends("run", "color_by", "compare_with")
    def _umaps(self) -> pn.viewable.Viewable:
        if not self.run:
            return pn.pane.Markdown("No finished run yet.")
        if not self._shows_own():
            return pn.Column()
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
            pn.pane.HoloViews(umap_plot(cells, color, f"{name}: UMAP by {color_label(color)}",
                                        cats if color in LABEL_COLORS else None, width=width,
                                        label=color_label(color)), css_classes=["umap-plot"]),
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

    @param.depends("run", "normalised", "label_source", "level")
    def _metrics(self) -> pn.viewable.Viewable:
        if not self._shows_own():
            return pn.Column()
        run = self._runs[self.run]
        parts = []
        if not run.provenance.get("model", {}).get("trained", True):
            parts.append(pn.pane.Alert(UNTRAINED_BANNER, alert_type="warning", css_classes=["untrained-banner"]))
        parts.append(pn.pane.Markdown(metrics_markdown(run, self.label_source, self.level), css_classes=["metrics"]))
        shown = shown_metrics(run.metrics, self.label_source, self.level)
        if shown.get("confusion_matrix"):  # side by side where the screen is wide enough, else one below the other
            parts.append(pn.FlexBox(
                pn.pane.HoloViews(confusion_heatmap(shown["confusion_matrix"], self.normalised),
                                  css_classes=["confusion-matrix"]),
                pn.pane.HoloViews(f1_bars(shown), css_classes=["f1-bars"])))
        calibration = run.metrics.get("calibration") or {}
        if calibration.get("bins"):
            parts.append(pn.FlexBox(
                pn.pane.HoloViews(reliability_plot(calibration), css_classes=["reliability-diagram"]),
                pn.pane.Markdown("#### Calibration (per-cell probabilities)  \n" + calibration_caption(calibration),
                                 css_classes=["reliability-caption"], width=360,
                                 styles={"font-size": "0.9em", "color": "#333"})))
        return pn.Column(*parts, sizing_mode="stretch_width")

    @param.depends("run", watch=True)
    def _first_page(self) -> None:
        self.page = 0

    def _turn(self, step: int) -> None:
        self.page = max(0, self.page + step)

    @param.depends("run", "page")
    def _table(self) -> pn.viewable.Viewable:
        """One page of cells, read from the run's parquet row groups: a million-cell run costs one page."""
        if not self._shows_own():
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
        if not self._shows_own():
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
            pn.Row(run_select, pn.Row(compare, pn.widgets.Checkbox.from_param(self.param.normalised,
                                                                              name="row-normalised", align="end"),
                                      visible=self.param.own)),
            *self.views.values(),
            pn.Column(
                pn.Row(pn.widgets.Select.from_param(self.param.color_by, name="Colour the UMAP by",
                                                    css_classes=["color-by"], width=220),
                       pn.widgets.RadioButtonGroup.from_param(self.param.label_source, css_classes=["label-source"],
                                                              visible=self.param.has_consensus, align="end"),
                       pn.widgets.RadioButtonGroup.from_param(self.param.level, css_classes=["label-level"],
                                                              visible=self.param.has_cell_class, align="end")),
                self._save_form(), self._metrics, self._umaps, "### Cells", self._table, self._downloads,
                visible=self.param.own, sizing_mode="stretch_width"),
            sizing_mode="stretch_width")

    def _save_form(self) -> pn.viewable.Viewable:
        """Collapsed until opened: name, author, description and the classes' Cell Ontology ids, then Save; shown
        for a run that learnt from a reference."""
        return pn.Card(
            pn.Row(pn.widgets.TextInput.from_param(self.param.annotator_name, name="Name",
                                                   placeholder="e.g. PBMC baseline v1", css_classes=["annotator-name"],
                                                   width=260),
                   pn.widgets.TextInput.from_param(self.param.annotator_author, name="Author", placeholder="optional",
                                                   css_classes=["annotator-author"], width=200),
                   pn.widgets.TextInput.from_param(self.param.annotator_description, name="Description",
                                                   placeholder="optional", css_classes=["annotator-description"],
                                                   sizing_mode="stretch_width"),
                   sizing_mode="stretch_width"),
            self.save_note, self.ontology, pn.Row(self.save_button, self.save_message, sizing_mode="stretch_width"),
            title="Save this run's head as an annotator", collapsed=True, visible=self.param.can_save,
            css_classes=["save-annotator"], sizing_mode="stretch_width")
