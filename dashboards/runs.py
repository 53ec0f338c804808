"""Reference (or saved annotator), truth and the Run button; live progress of runs in flight; the history of every
run here. What it offers and says is in ``dashboards.run_text``."""

from __future__ import annotations

import asyncio

import pandas as pd
import panel as pn
import param

from app.catalog import EMBEDDING_INTEGRATION, MAX_REFERENCE_CELLS
from app.datasets import CheckReport
from app.runs import MIN_CELLS_PER_TYPE
from dashboards.data import labelled_datasets
from dashboards.integration_form import IntegrationForm
from dashboards.run_text import (
    ANNOTATOR,
    FINE_TUNE,
    HEADS,
    KNN,
    LABELS_FROM,
    NO_ANNOTATOR,
    NO_REFERENCE,
    NO_TRUTH,
    REFERENCE,
    TRUTH_COLUMNS,
    TRUTH_NOTE,
    TUNING,
    annotator_choices,
    annotator_note,
    history_frame,
    progress_text,
    query_text,
    run_options,
    sample_text,
    submission,
    truth_frame,
    truth_given,
)
from dashboards.safe_text import md, plain_formatters
from dashboards.styles import FITTING_TABLE
from dashboards.view import PlatformView, show_selector, show_toggle

# application id -> its own submission form (a view taking ``dataset``/``datasets``, giving ``submitted``); any
# other application gets this panel's annotation form
SUBMISSION_FORMS = {EMBEDDING_INTEGRATION: IntegrationForm}
FOLLOWED = ("dataset", "datasets")  # what a form follows from this panel
# the history fits its width: the text columns wrap, these keep their widths (px)
HISTORY_WIDTHS = {"run": 85, "status": 80, "progress": 80, "duration_s": 95, "macro_f1": 85, "started": 160}


DELETE_RUN, CONFIRM_DELETE = "Delete the opened run", "Yes, delete it"



IN_FLIGHT = ("queued", "running")
DEFAULT_VARIANT = "(the catalog's)"


def shown_history(frame: pd.DataFrame) -> pd.DataFrame:
    """The history as the table shows it: a run in flight has no duration or macro-F1 yet, and a run without a
    score (integration, no truth) has none at all; Tabulator writes a missing number as "NaN", so these cells say
    "running"/"queued" or "—" instead (numbers stay numbers, written as the table wrote them)."""
    frame = frame.copy()
    frame["duration_s"] = [f"{d:.1f}" if pd.notna(d) else (s if s in IN_FLIGHT else "—")
                           for d, s in zip(frame["duration_s"], frame["status"], strict=True)]
    frame["macro_f1"] = [f"{f:.3f}" if pd.notna(f) else "—" for f in frame["macro_f1"]]
    return frame.astype({"duration_s": object, "macro_f1": object})

class RunPanel(PlatformView):
    """Submit runs (returns at once) and follow them.

    What to run on comes in as parameters (the Dashboard keeps them in step with the model picker and the data
    panel); ``finished`` goes out, for whoever shows results."""

    application = param.String(default=None, doc="Id of the application runs are submitted to.")
    model = param.String(default=None, doc="Id of the model that will run.")
    dataset = param.String(default="", allow_None=True, doc="Id of the dataset to annotate (query); '' for none.")
    datasets = param.List(default=[], doc="The stored datasets (rows): references are offered from these.")
    labels_from = param.Selector(default=REFERENCE, objects=LABELS_FROM,
                                 doc="Where the labels come from: a reference dataset (a head is trained for the "
                                     "run) or a saved annotator (a head trained before, reused as it is).")
    reference = param.Selector(doc="Labelled reference dataset.")
    annotator = param.Selector(default="", objects={NO_ANNOTATOR: ""},
                               doc="The saved annotator that labels the query (by id); its model must be the one "
                                   "selected.")
    annotators_changed = param.Integer(default=0, doc="Bumped when an annotator is saved or deleted: the annotator "
                                                      "choices are read again.")
    label_column = param.Selector(doc="The reference's (or, without one, the query's) label column.")
    truth_column = param.Selector(doc="The query's true labels, for metrics.")
    truth_mapped = param.Boolean(default=False, doc="Whether the run will score cell classes: the true labels' "
                                                    "Cell Ontology terms are offered for confirmation.")
    variant = param.Selector(default="", objects={DEFAULT_VARIANT: ""},
                             doc="Which of the model's published variants runs (Geneformer has nine); one without "
                                 "weights on this server is refused with how to stage them.")
    has_variants = param.Boolean(default=False, doc="The picked model has more than one variant.")
    confidence = param.Number(default=0.5, bounds=(0, 1), step=0.05, doc="Below it a cell is 'unassigned'.")
    head = param.Selector(default="logistic_regression", objects=HEADS,
                          doc="How the reference's labels reach the query: a logistic regression on the embeddings "
                              "(probabilities calibrated by temperature scaling), or a distance-weighted vote of the "
                              "k nearest reference cells.")
    epochs = param.Integer(default=10, bounds=(1, 200), doc="Fine-tuning: the most passes over the reference "
                                                           "(it stops earlier when validation macro-F1 stalls).")
    learning_rate = param.Number(default=5e-5, bounds=(1e-7, 0.1), doc="Fine-tuning: AdamW's learning rate.")
    frozen_layers = param.Integer(default=2, bounds=(0, 48), doc="Fine-tuning: the first encoder layers kept as "
                                                                "they are.")
    k = param.Integer(default=None, allow_None=True, bounds=(1, None),
                      doc="Neighbours that vote (kNN only). Blank: automatic (15, or the smallest class's size).")
    novelty = param.Number(default=0.0, bounds=(0, 1), step=0.05,
                           doc="Cells that fit the reference less than this (0-1) are left unassigned as 'does not "
                               "fit the reference'; 0 leaves none out. Suggested: 0.05: below it the cell, or the "
                               "neighbourhood it sits in, lies further from its type than 97.5 % of the "
                               "reference's, once a shift the whole query shares (a stimulation) is allowed for: "
                               "one the reference does not explain.")
    max_reference_cells = param.Integer(default=MAX_REFERENCE_CELLS, bounds=(0, None),
                                        doc="The head trains on at most about this many labelled reference cells: "
                                            "beyond, a seeded sample keeping each type's share, with at least "
                                            f"{MIN_CELLS_PER_TYPE} cells of each type (or an equal split of the cap, "
                                            "or all the type has), so a small cap can train on more cells than it "
                                            "says; 0: every cell.")
    majority_voting = param.Boolean(default=False,
                                    doc="Also over-cluster the query and give every cell its cluster's most common "
                                        "label; shown beside the per-cell labels.")
    finished = param.Integer(default=0, doc="Bumped when one of this session's runs finishes.")
    opened = param.String(default="", doc="Id of the finished run last clicked in the history, to be shown.")
    show = show_selector("The history: every user's runs or mine.")

    def __init__(self, platform=None, **params) -> None:  # noqa: ANN001 - app.platform.Platform
        super().__init__(platform, **params)
        self._mine: dict[str, tuple[pn.indicators.Progress, pn.pane.Markdown]] = {}
        self._followed: list[tuple[pn.Column, str]] = []  # each followed run's progress and its application
        self.button = pn.widgets.Button(name="Run", button_type="primary", css_classes=["run-button"], width=160)
        self.button.on_click(self._on_run)
        self.message = pn.pane.Alert("", visible=False, css_classes=["run-message"], sizing_mode="stretch_width")
        self.in_flight = pn.Column(sizing_mode="stretch_width", css_classes=["runs-in-flight"])
        self.history = pn.widgets.Tabulator(pd.DataFrame(), show_index=False, disabled=True, pagination="local",
                                            page_size=10, css_classes=["run-history"], sizing_mode="stretch_width",
                                            hidden_columns=["id"], layout="fit_columns", widths=HISTORY_WIDTHS,
                                            stylesheets=[FITTING_TABLE])
        self.history.on_click(self._on_history_click)
        self.delete_button = pn.widgets.Button(name=DELETE_RUN, button_type="danger", button_style="outline",
                                               css_classes=["delete-run"], visible=False)
        self.delete_button.on_click(self._delete_opened)
        self._confirming = ""
        self.forms = {app: make(self.platform, **{n: getattr(self, n) for n in FOLLOWED})
                      for app, make in SUBMISSION_FORMS.items()}
        for form in self.forms.values():
            self.param.watch(lambda *events, f=form: f.param.update(**{e.name: e.new for e in events}),
                             list(FOLLOWED))
            form.param.watch(self._follow_submitted, "submitted")
        self.note = pn.pane.Alert("", alert_type="light", visible=False, css_classes=["annotator-note"],
                                  sizing_mode="stretch_width", margin=(0, 10))
        self._annotators: dict = {}
        self._choosing, self._truth_pick = False, None  # the truth column the user picked (None: not yet)
        self.query_line = pn.pane.Markdown("", css_classes=["run-query"], margin=(0, 10), sizing_mode="stretch_width")
        self.sample_note = pn.pane.Markdown("", css_classes=["reference-sample"], visible=False, margin=(0, 10),
                                            styles={"font-size": "0.85em"}, sizing_mode="stretch_width")
        self._truth_terms: dict[str, dict] = {}  # the true labels' terms as the platform found them
        self._truth_key: tuple = ()
        self.truth_table = pn.widgets.Tabulator(pd.DataFrame(columns=TRUTH_COLUMNS), show_index=False,
                                                editors={"true label": None, "term": None, "found by": None},
                                                css_classes=["truth-ontology"], sizing_mode="stretch_width",
                                                layout="fit_columns", height=150, stylesheets=[FITTING_TABLE])
        self.truth_table.on_edit(self._on_truth_edit)
        self._refresh_annotators()
        self._refresh_variants()
        self._refresh_options()
        self._show_note()
        self._refresh_truth_terms()
        self._show_query()
        self._show_sample()
        self.refresh_history()

    def _dataset(self, dataset_id: str | None):  # noqa: ANN202 - store.tables.Dataset
        return next((d for d in self.datasets if d.id == dataset_id), None) if dataset_id else None

    def _model_names(self) -> dict[str, str]:
        return {m.id: m.name for m in self.platform.models()}

    @param.depends("model", watch=True)
    def _refresh_variants(self) -> None:
        """Every variant of the picked model, as the command line offers them (``geneformer:VARIANT``), each said
        with whether this server has its weights; the catalog's own variant first and picked."""
        from app.weights import model_variants

        entry = next((m for m in self.platform.models() if m.id == self.model), None) if self.model else None
        variants = model_variants(entry.backend) if entry is not None and entry.variant else []
        if len(variants) < 2:
            self.param.variant.objects, self.variant, self.has_variants = {DEFAULT_VARIANT: ""}, "", False
            return
        choices = {}
        for v in [entry.variant] + [v for v in variants if v != entry.variant]:
            status, _ = self.platform.weights.status(entry.backend, v)
            said = {"missing": "no weights here", "generated": "generated, untrained weights"}.get(status, "")
            notes = (["default"] if v == entry.variant else []) + ([said] if said else [])
            choices[f"{v} ({', '.join(notes)})" if notes else v] = v
        self.param.variant.objects = choices
        self.variant, self.has_variants = entry.variant, True

    @param.depends("annotators_changed", "labels_from", watch=True)
    def _refresh_annotators(self) -> None:
        """Read the saved annotators again (another user may have saved one); keep the pick if it still exists,
        else pick the newest one for the selected model."""
        rows = self.platform.annotators.list()
        self._annotators = {a.id: a for a in rows}
        choices = annotator_choices(rows, self._model_names()) or {NO_ANNOTATOR: ""}
        self.param.annotator.objects = choices
        if self.annotator not in self._annotators:
            self.annotator = next((a.id for a in rows if a.model_id == self.model), next(iter(choices.values())))

    @param.depends("labels_from", "annotator", "model", watch=True)
    def _show_note(self) -> None:
        if self.labels_from != ANNOTATOR:
            self.note.visible = False
            return
        text, kind = annotator_note(self._annotators.get(self.annotator), self.model, self._model_names())
        self.note.param.update(object=text, alert_type=kind, visible=True)

    @param.depends("reference", "dataset", "datasets", "labels_from", "annotator", watch=True)
    def _refresh_options(self) -> None:
        refs = {NO_REFERENCE: "", **labelled_datasets(self.datasets)}  # "" rather than None: a Select shows its label
        self.param.reference.objects = refs
        if self.reference not in refs.values():
            self.reference = ""
        source = self._dataset(self.reference) or self._dataset(self.dataset)
        labels = list(CheckReport(source.check_report).label_columns if source else {})
        self.param.label_column.objects = labels or [None]
        self.label_column = labels[0] if labels else None
        query = self._dataset(self.dataset)
        truths = [NO_TRUTH, *(CheckReport(query.check_report).label_columns if query else {})]
        self._choosing = True  # what follows is the form's default, not the user's choice
        try:
            self.param.truth_column.objects = truths
            if self._truth_pick is not None and self._truth_pick in truths:  # the user's choice, kept across queries
                self.truth_column = self._truth_pick
            elif self.labels_from == ANNOTATOR:  # the query's column named as the annotator's labels, if it has one
                a = self._annotators.get(self.annotator)
                self.truth_column = a.label_column if a is not None and a.label_column in truths else NO_TRUTH
            else:
                self.truth_column = self.label_column if self.reference and self.label_column in truths else NO_TRUTH
        finally:
            self._choosing = False

    @param.depends("truth_column", watch=True)
    def _remember_truth(self) -> None:
        """A truth column the user picks is kept when another query is uploaded or picked, if it has that column."""
        if not self._choosing:
            self._truth_pick = self.truth_column

    @param.depends("dataset", "datasets", watch=True)
    def _show_query(self) -> None:
        self.query_line.object = query_text(self._dataset(self.dataset))

    @param.depends("reference", "dataset", "datasets", "label_column", "max_reference_cells", "labels_from",
                   watch=True)
    def _show_sample(self) -> None:
        """How many labelled cells the head will train on, and why a cap can give more than it says."""
        from app.runs import reference_sample

        source = self._dataset(self.reference) or self._dataset(self.dataset)
        counts = CheckReport(source.check_report).label_columns.get(self.label_column) if source else None
        if self.labels_from != REFERENCE or not counts:
            self.sample_note.visible = False
            return
        evaluation = not self.reference
        info = reference_sample(counts, self.max_reference_cells, evaluation)
        self.sample_note.param.update(object=sample_text(info, source.file_name, evaluation), visible=True)

    @param.depends("truth_column", "annotator", "labels_from", "dataset", watch=True)
    def _refresh_truth_terms(self) -> None:
        """With an annotator that maps its labels to the Cell Ontology and a truth column, the true labels' terms
        (the annotator's for the same spelling, else suggested) for the user to confirm; kept while the query,
        column and annotator stay the same, so edits survive other changes to the form."""
        a = self._annotators.get(self.annotator) if self.labels_from == ANNOTATOR else None
        truth = None if self.truth_column in (None, NO_TRUTH) else self.truth_column
        if a is None or not truth or not self.dataset or not any((a.ontology or {}).values()):
            self.truth_mapped, self._truth_key = False, ()
            return
        key = (self.dataset, truth, a.id)
        if key != self._truth_key:
            from app.datasets import NotFound
            from app.runs import InvalidRun

            try:
                self._truth_terms = self.platform.runs.truth_terms(self.dataset, truth, a.id)
            except (InvalidRun, NotFound, ValueError):
                self.truth_mapped, self._truth_key = False, ()
                return
            frame = truth_frame(self._truth_terms)
            self.truth_table.formatters = plain_formatters(frame)
            self.truth_table.value = frame
            self.truth_table.height = min(320, 45 + 29 * len(frame))
            self._truth_key = key
        self.truth_mapped = True

    def _on_truth_edit(self, event) -> None:  # noqa: ANN001 - panel's TableEditEvent
        """An id the user typed is checked when the run is submitted; cleared, the label is left out."""
        if event.column != "Cell Ontology id":
            return
        label = str(self.truth_table.value["true label"].iloc[event.row])
        typed = str(event.value or "").strip()
        found = self._truth_terms.get(label) or {}
        same = typed == (found.get("term_id") or "")
        term = (found.get("term_label") or "") if same else "(checked when you run)" if typed else "not mapped"
        how = self.truth_table.value["found by"].iloc[event.row] if same else "you"
        self.truth_table.patch({"term": [(event.row, term)], "found by": [(event.row, how)]}, as_index=False)

    def truth_ontology(self) -> dict[str, str | None]:
        """The true labels whose term the user changed (label -> id or None), as a submission gives them."""
        return truth_given(self.truth_table.value, self._truth_terms) if self.truth_mapped else {}

    async def _on_run(self, _event) -> None:  # noqa: ANN001
        from app.datasets import NotFound
        from app.runs import InvalidRun

        if not self.dataset:
            self._say("Pick or upload the dataset to annotate first (section 1).", "warning")
            return
        if not self.model:
            self._say("Pick a model first.", "warning")
            return
        names = self._model_names()
        name = names.get(self.model, self.model)
        if self.labels_from == ANNOTATOR:
            text, kind = annotator_note(self._annotators.get(self.annotator), self.model, names)
            if kind == "danger" or not self.annotator:
                self._say(text, "warning")
                return
        args = submission(self.labels_from, self.submission_options(), self.reference, self.label_column,
                          self.truth_column, self.annotator, self.truth_ontology())
        try:
            run = await asyncio.to_thread(self.platform.runs.submit, self.application, self.model, self.dataset,
                                          **args, user=self.user)
        except (InvalidRun, NotFound, ValueError) as exc:
            self._say(md(exc), "danger")
            return
        self._say(f"Submitted run {run.id[:8]} with {md(name)}.", "success")
        self._follow(run.id, name)
        self.refresh_history()

    def _follow(self, run_id: str, name: str) -> None:
        """A progress bar for a run submitted in this session, updated at each poll until it ends."""
        bar = pn.indicators.Progress(value=0, max=100, bar_color="primary", sizing_mode="stretch_width",
                                     css_classes=["run-progress"])
        text = pn.pane.Markdown(f"**{md(name)}** — queued", css_classes=["run-progress-text"])
        self._mine[run_id] = (bar, text)
        followed = pn.Column(text, bar, sizing_mode="stretch_width", css_classes=["followed-run"])
        self._followed.append((followed, self.application))
        self.in_flight.append(followed)

    @param.depends("application", watch=True)
    def _show_followed(self) -> None:
        """Under each application's form only its own runs' progress: an annotation run's bar under the
        integration form read as that run's progress."""
        for followed, application in self._followed:
            followed.visible = application == self.application

    def _follow_submitted(self, event) -> None:  # noqa: ANN001 - param's Event
        """What an application's own form submitted is followed as this panel's runs are."""
        names = self._model_names()
        for run_id, model_id in event.new:
            self._follow(run_id, names.get(model_id, model_id))
        self.refresh_history()

    def _on_history_click(self, event) -> None:  # noqa: ANN001 - panel's CellClickEvent
        """A finished run clicked in the history is opened in the results (clicked again: opened again)."""
        frame = self.history.value
        if event.row is None or not 0 <= event.row < len(frame) or frame["status"].iloc[event.row] != "done":
            return
        run_id = str(frame["id"].iloc[event.row])
        if run_id == self.opened:
            self.param.trigger("opened")
        else:
            self.opened = run_id

    def submission_options(self) -> dict:
        """The submission's options, from this panel's choices (no head or k with an annotator: it has its own)."""
        options = run_options(self.confidence, self.novelty, None if self.labels_from == ANNOTATOR else self.head,
                              self.k, self.majority_voting, {t: getattr(self, t) for t in TUNING},
                              self.max_reference_cells)
        if self.has_variants and self.variant and self.labels_from != ANNOTATOR:  # an annotator keeps its own
            options["variant"] = self.variant
        return options

    def _say(self, text: str, kind: str) -> None:
        self.message.object, self.message.alert_type, self.message.visible = text, kind, True

    def poll(self) -> None:
        """Progress of this session's runs and the shared history (reads and updates in one go)."""
        self.apply(self.snapshot())

    def snapshot(self) -> dict:
        """Everything a poll shows, read from the database; safe to run off the event loop."""
        names = {m.id: m.name for m in self.platform.models()}
        statuses = {run_id: self.platform.runs.status(run_id) for run_id in list(self._mine)}
        return {"names": names, "statuses": statuses, "history": self._history(names)}

    def _history(self, names: dict[str, str]) -> pd.DataFrame:
        datasets = {d.id: d.file_name for d in self.platform.datasets.list()}
        runs = self.platform.runs.list()
        runs = self.shown(runs, self.show)
        return shown_history(history_frame(runs, names, datasets))

    @param.depends("show", watch=True)
    def _on_show(self) -> None:
        self.refresh_history()

    @param.depends("opened", watch=True)
    def _offer_delete(self) -> None:
        self.delete_button.visible = bool(self.opened)
        self.delete_button.name, self._confirming = DELETE_RUN, ""

    async def _delete_opened(self, _event) -> None:  # noqa: ANN001
        """Two clicks: the first says which run goes, the second deletes it (rows and files)."""
        from app.lifecycle import RunInUse
        from app.users import Forbidden

        run_id = self.opened
        if not run_id:
            return
        if self._confirming != run_id:
            self._confirming, self.delete_button.name = run_id, CONFIRM_DELETE
            self._say(f"Delete run {run_id[:8]} and its files for everyone on this server? Click *{CONFIRM_DELETE}* "
                      "to do it.", "warning")
            return
        self._confirming, self.delete_button.name = "", DELETE_RUN
        try:
            out = await asyncio.to_thread(self.platform.runs.delete, run_id, self.user)
        except (RunInUse, Forbidden, LookupError, ValueError) as exc:
            self._say(md(exc), "danger")
            return
        self._say(f"Deleted run {run_id[:8]}; freed {out['bytes_freed'] / 2**20:.1f} MB.", "success")
        self.opened = ""
        self.refresh_history()

    def apply(self, snap: dict) -> None:
        """Show a snapshot: widget updates only, on the session's event loop."""
        for run_id, status in snap["statuses"].items():
            if run_id not in self._mine:
                continue
            bar, text = self._mine[run_id]
            bar.value = int(100 * status["progress"])
            text.object = progress_text(status, snap["names"].get(status["model"], status["model"]))
            if status["status"] in ("done", "failed", "cancelled"):
                bar.bar_color = {"done": "success", "failed": "danger", "cancelled": "secondary"}[status["status"]]
                bar.value = 100
                if status["error"]:
                    text.object += f"  \n**Failed**: {md(status['error'])}"
                del self._mine[run_id]
                self.finished += 1
        self._show_history(snap["history"])

    def _show_history(self, new: pd.DataFrame) -> None:
        """Patch the cells that changed (progress, stage): resending the whole table each second costs the
        event loop ~0.1 s per session while runs execute."""
        old = self.history.value
        if old is None or "id" not in old or len(old) != len(new) or list(old["id"]) != list(new["id"]):
            self.history.formatters = plain_formatters(new, wrap=("model", "dataset", "stage", "weights", "by"))
            self.history.value = new
            return
        changes = {}
        for col in new.columns:
            diff = [(i, v) for i, (a, v) in enumerate(zip(old[col], new[col], strict=True))
                    if not (a == v or (pd.isna(a) and pd.isna(v)))]
            if diff:
                changes[col] = diff
        if changes:
            self.history.patch(changes, as_index=False)

    def refresh_history(self) -> None:
        self._show_history(self._history({m.id: m.name for m in self.platform.models()}))

    def __panel__(self) -> pn.viewable.Viewable:
        by_reference = self.param.labels_from.rx() == REFERENCE
        tuning = (self.param.head.rx() == FINE_TUNE).rx.and_(by_reference)
        reference = pn.widgets.Select.from_param(self.param.reference, name="Reference (labelled)",
                                                 css_classes=["reference-picker"], sizing_mode="stretch_width",
                                                 visible=by_reference)
        annotator = pn.widgets.Select.from_param(self.param.annotator, name="Saved annotator",
                                                 css_classes=["annotator-picker"], sizing_mode="stretch_width",
                                                 visible=self.param.labels_from.rx() == ANNOTATOR)
        labels_from = pn.Column(pn.pane.HTML("Labels from", margin=(5, 10, 0, 10), styles={"font-size": "0.9em"}),
                                pn.widgets.RadioButtonGroup.from_param(self.param.labels_from, button_type="primary",
                                                                       button_style="outline",
                                                                       css_classes=["labels-from"], width=270),
                                margin=0)
        annotation = pn.Column(
            pn.Row(labels_from, reference, annotator,
                   pn.widgets.Select.from_param(self.param.label_column, name="Label column", width=200,
                                                css_classes=["label-picker"], visible=by_reference),
                   sizing_mode="stretch_width"),
            pn.Row(pn.widgets.Select.from_param(self.param.head, name="Head", css_classes=["head-picker"], width=220,
                                                visible=by_reference),
                   pn.widgets.IntInput.from_param(self.param.k, name="k (blank: auto)", placeholder="automatic",
                                                  css_classes=["k-input"], width=130,
                                                  visible=(self.param.head.rx() == KNN).rx.and_(by_reference)),
                   *[pn.widgets.FloatInput.from_param(self.param.learning_rate, name="Learning rate", width=120,
                                                      css_classes=["tuning"], visible=tuning, format="0.0e+0")
                     if t == "learning_rate" else
                     pn.widgets.IntInput.from_param(getattr(self.param, t), name=TUNING[t], width=110,
                                                    css_classes=["tuning"], visible=tuning) for t in TUNING],
                   pn.widgets.Select.from_param(self.param.variant, name="Model variant", width=300,
                                                css_classes=["variant-picker"],
                                                visible=self.param.has_variants.rx().rx.and_(
                                                    self.param.labels_from.rx() != ANNOTATOR)),
                   pn.widgets.Checkbox.from_param(self.param.majority_voting,
                                                  name="Majority voting (cluster consensus)",
                                                  css_classes=["majority-voting"], align="end"),
                   pn.widgets.Select.from_param(self.param.truth_column, name="Truth column of the query",
                                                css_classes=["truth-picker"], width=220)),
            self.note,
            pn.Column(pn.pane.Markdown(TRUTH_NOTE, styles={"font-size": "0.85em"}, margin=(0, 10),
                                       sizing_mode="stretch_width"),
                      self.truth_table, visible=self.param.truth_mapped, css_classes=["truth-terms"],
                      sizing_mode="stretch_width"),
            # wraps on a narrow screen (a laptop's 1280 px leaves the form about 860)
            pn.FlexBox(pn.widgets.FloatSlider.from_param(self.param.confidence, name="Confidence threshold",
                                                         width=240),
                       pn.widgets.FloatSlider.from_param(self.param.novelty,
                                                         name="Novelty threshold (reference fit)",
                                                         css_classes=["novelty-threshold"], width=240),
                       pn.widgets.IntInput.from_param(self.param.max_reference_cells,
                                                      name="Reference cells, at most (0: all)",
                                                      css_classes=["max-reference-cells"], width=190, step=10_000,
                                                      visible=by_reference),
                       self.button, align_items="flex-end", sizing_mode="stretch_width"),
            self.sample_note, self.message, visible=self.param.application.rx().rx.pipe(lambda a: a not in self.forms),
            sizing_mode="stretch_width")
        forms = [pn.Column(form, visible=self.param.application.rx() == app, sizing_mode="stretch_width")
                 for app, form in self.forms.items()]
        heading = pn.Column(pn.pane.Markdown("## 2 · Run"), self.query_line, margin=0, sizing_mode="stretch_width")
        return pn.Column(heading, annotation, *forms, self.in_flight,
                         pn.Row("### Runs on this server (click a finished one to open it)",
                                show_toggle(self.param.show, "history-show"),
                                self.delete_button, sizing_mode="stretch_width"),
                         self.history,
                         sizing_mode="stretch_width")
