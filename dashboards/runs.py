"""Reference, truth and the Run button; live progress of runs in flight; the history of every run here."""

from __future__ import annotations

import asyncio

import pandas as pd
import panel as pn
import param

from app.datasets import CheckReport
from dashboards.data import labelled_datasets
from dashboards.safe_text import md, plain_formatters
from dashboards.view import PlatformView

NO_REFERENCE = "(none: evaluate on a 70/30 split of the query)"
NO_TRUTH = "(none)"
# what a user picks -> the head kind a run's options name (inference.heads.HEAD_KINDS; a test keeps them in step)
HEADS = {"Logistic regression": "logistic_regression", "kNN reference mapping": "knn"}
KNN = "knn"


def run_options(confidence: float, novelty: float = 0.0, head: str = "logistic_regression", k: int | None = None,
                majority_voting: bool = False) -> dict:
    """The options of a submission from the run panel's choices: k only for the kNN head, and only when given
    (blank: the platform picks it from the reference's class sizes)."""
    options = {"confidence_threshold": float(confidence), "novelty_threshold": float(novelty), "head": head,
               "majority_voting": bool(majority_voting)}
    if head == KNN and k is not None:
        options["k"] = int(k)
    return options


def history_frame(runs: list, model_names: dict[str, str], dataset_names: dict[str, str]) -> pd.DataFrame:
    """One row per run, newest first: what a user scans to find a run."""
    rows = []
    for r in runs:
        end = r.finished_at or None
        duration = (end - r.started_at).total_seconds() if end and r.started_at else None
        rows.append({"run": r.id[:8], "status": r.status, "model": model_names.get(r.model_id, r.model_id),
                     "dataset": dataset_names.get(r.dataset_id, r.dataset_id[:8]),
                     "stage": r.stage, "progress": round(100 * r.progress),
                     "duration_s": round(duration, 1) if duration is not None else None,
                     "macro_f1": round(r.metrics["macro_f1"], 3) if r.metrics.get("macro_f1") is not None else None,
                     "weights": r.parameters.get("weights", ""),
                     "started": r.created_at.strftime("%Y-%m-%d %H:%M:%S"), "id": r.id})
    return pd.DataFrame(rows, columns=["run", "status", "model", "dataset", "stage", "progress", "duration_s",
                                       "macro_f1", "weights", "started", "id"])


def progress_text(status: dict, model_name: str) -> str:
    cells = (f" · {status['cells_done']:,}/{status['cells_total']:,} cells" if status.get("cells_total") else "")
    eta = f" · ETA {status['eta_s']:.0f} s" if status.get("eta_s") else ""
    device = f" · {status['device']}" if status.get("device") else ""
    return f"**{md(model_name)}** — {md(status['stage'])}{cells}{eta}{md(device)}"


class RunPanel(PlatformView):
    """Submit runs (returns at once) and follow them.

    What to run on comes in as parameters (the Dashboard keeps them in step with the model picker and the data
    panel); ``finished`` goes out, for whoever shows results."""

    application = param.String(default=None, doc="Id of the application runs are submitted to.")
    model = param.String(default=None, doc="Id of the model that will run.")
    dataset = param.String(default="", allow_None=True, doc="Id of the dataset to annotate (query); '' for none.")
    datasets = param.List(default=[], doc="The stored datasets (rows): references are offered from these.")
    reference = param.Selector(doc="Labelled reference dataset.")
    label_column = param.Selector(doc="The reference's (or, without one, the query's) label column.")
    truth_column = param.Selector(doc="The query's true labels, for metrics.")
    confidence = param.Number(default=0.5, bounds=(0, 1), step=0.05, doc="Below it a cell is 'unassigned'.")
    head = param.Selector(default="logistic_regression", objects=HEADS,
                          doc="How the reference's labels reach the query: a logistic regression on the embeddings "
                              "(probabilities calibrated by temperature scaling), or a distance-weighted vote of the "
                              "k nearest reference cells.")
    k = param.Integer(default=None, allow_None=True, bounds=(1, None),
                      doc="Neighbours that vote (kNN only). Blank: automatic (15, or the smallest class's size).")
    novelty = param.Number(default=0.0, bounds=(0, 1), step=0.05,
                           doc="Cells that fit the reference less than this (0-1) are left unassigned as 'does not "
                               "fit the reference'; 0 leaves none out.")
    majority_voting = param.Boolean(default=False,
                                    doc="Also over-cluster the query and give every cell its cluster's most common "
                                        "label; shown beside the per-cell labels.")
    finished = param.Integer(default=0, doc="Bumped when one of this session's runs finishes.")

    def __init__(self, platform=None, **params) -> None:  # noqa: ANN001 - app.platform.Platform
        super().__init__(platform, **params)
        self._mine: dict[str, tuple[pn.indicators.Progress, pn.pane.Markdown]] = {}
        self.button = pn.widgets.Button(name="Run", button_type="primary", css_classes=["run-button"], width=160)
        self.button.on_click(self._on_run)
        self.message = pn.pane.Alert("", visible=False, css_classes=["run-message"], sizing_mode="stretch_width")
        self.in_flight = pn.Column(sizing_mode="stretch_width", css_classes=["runs-in-flight"])
        self.history = pn.widgets.Tabulator(pd.DataFrame(), show_index=False, disabled=True, pagination="local",
                                            page_size=10, css_classes=["run-history"], sizing_mode="stretch_width",
                                            hidden_columns=["id"])
        self._refresh_options()
        self.refresh_history()

    def _dataset(self, dataset_id: str | None):  # noqa: ANN202 - store.tables.Dataset
        return next((d for d in self.datasets if d.id == dataset_id), None) if dataset_id else None

    @param.depends("reference", "dataset", "datasets", watch=True)
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
        self.param.truth_column.objects = truths
        self.truth_column = self.label_column if self.reference and self.label_column in truths else NO_TRUTH

    async def _on_run(self, _event) -> None:  # noqa: ANN001
        from app.datasets import NotFound
        from app.runs import InvalidRun

        if not self.dataset:
            self._say("Pick or upload the dataset to annotate first (section 1).", "warning")
            return
        if not self.model:
            self._say("Pick a model first.", "warning")
            return
        name = {m.id: m.name for m in self.platform.models()}.get(self.model, self.model)
        try:
            run = await asyncio.to_thread(
                self.platform.runs.submit, self.application, self.model, self.dataset, self.reference or None,
                self.label_column, None if self.truth_column in (None, NO_TRUTH) else self.truth_column,
                self.submission_options())
        except (InvalidRun, NotFound, ValueError) as exc:
            self._say(md(exc), "danger")
            return
        self._say(f"Submitted run {run.id[:8]} with {md(name)}.", "success")
        bar = pn.indicators.Progress(value=0, max=100, bar_color="primary", sizing_mode="stretch_width",
                                     css_classes=["run-progress"])
        text = pn.pane.Markdown(f"**{md(name)}** — queued", css_classes=["run-progress-text"])
        self._mine[run.id] = (bar, text)
        self.in_flight.append(pn.Column(text, bar, sizing_mode="stretch_width"))
        self.refresh_history()

    def submission_options(self) -> dict:
        """The submission's options, from this panel's choices."""
        return run_options(self.confidence, self.novelty, self.head, self.k, self.majority_voting)

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
        return history_frame(self.platform.runs.list(), names, datasets)

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
            self.history.formatters = plain_formatters(new)
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
        reference = pn.widgets.Select.from_param(self.param.reference, name="Reference (labelled)",
                                                 css_classes=["reference-picker"], sizing_mode="stretch_width")
        return pn.Column(
            "## 2 · Run",
            pn.Row(reference, pn.widgets.Select.from_param(self.param.label_column, name="Label column",
                                                           css_classes=["label-picker"]),
                   pn.widgets.Select.from_param(self.param.truth_column, name="Truth column of the query",
                                                css_classes=["truth-picker"]), sizing_mode="stretch_width"),
            pn.Row(pn.widgets.Select.from_param(self.param.head, name="Head", css_classes=["head-picker"], width=220),
                   pn.widgets.IntInput.from_param(self.param.k, name="k (blank: auto)", placeholder="automatic",
                                                  css_classes=["k-input"], width=130,
                                                  visible=self.param.head.rx().rx.pipe(lambda h: h == KNN)),
                   pn.widgets.Checkbox.from_param(self.param.majority_voting,
                                                  name="Majority voting (cluster consensus)",
                                                  css_classes=["majority-voting"], align="end")),
            pn.Row(pn.widgets.FloatSlider.from_param(self.param.confidence, name="Confidence threshold",
                                                     width=240),
                   pn.widgets.FloatSlider.from_param(self.param.novelty, name="Novelty threshold (reference fit)",
                                                     css_classes=["novelty-threshold"], width=240),
                   self.button),
            self.message, self.in_flight, "### All runs on this server", self.history,
            sizing_mode="stretch_width")
