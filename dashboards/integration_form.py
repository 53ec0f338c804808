"""The submission form of embeddings and batch integration: the dataset's batch column, its cell-type column
(optional) and several models, one run per model, submitted together as a group.

The run panel shows it instead of the annotation form when this application is picked (``runs.SUBMISSION_FORMS``);
what it submits goes out as ``submitted`` for the run panel to follow, like its own runs.
"""

from __future__ import annotations

import asyncio

import panel as pn
import param

from app.catalog import EMBEDDING_INTEGRATION
from app.datasets import CheckReport
from dashboards.catalog import cluster_gpus, model_label
from dashboards.safe_text import code, md
from dashboards.view import PlatformView

NO_CELL_TYPE = "(none: batch metrics only)"
NO_COLUMN = "(the dataset has no candidate column)"
DEFAULT_MODELS = ("baseline", "harmony")
# words that name a column of batches (a lab, a donor, a kit...) or of cell types, in the order they are preferred
BATCH_WORDS = ("batch", "donor", "sample", "individual", "patient", "lab", "study", "condition", "plate", "library",
               "assay", "tech")
CELL_TYPE_WORDS = ("cell_type", "celltype", "cell type", "cell-type", "cell_label", "annotation", "label", "type")


def _first_named(columns: list[str], words: tuple[str, ...]) -> str | None:
    for word in words:
        for column in columns:
            if word in column.lower():
                return column
    return None


def default_columns(columns: dict[str, dict]) -> tuple[str | None, str | None]:
    """The (batch column, cell-type column) to offer first among a dataset's candidate columns (name -> {class:
    count}): named like a batch, else the one with fewest classes; named like a cell type, else none. Candidates are
    in the file's order, where a cell-type column often comes first: picking the first would make it the batch."""
    names = list(columns)
    if not names:
        return None, None
    batch = _first_named(names, BATCH_WORDS) or min(names, key=lambda c: len(columns[c]))
    cell_type = _first_named([c for c in names if c != batch], CELL_TYPE_WORDS)
    return batch, cell_type


def group_submission(batch_column: str | None, cell_type_column: str | None) -> dict:
    """The keyword arguments of ``platform.runs.submit_group`` after the application, models and dataset."""
    return {"label_column": cell_type_column or None, "options": {"batch_column": batch_column or None}}


def dataset_text(file_name: str, n_cells: int, columns: dict[str, dict]) -> str:
    """The dataset the form submits and its candidate columns with their number of values (Markdown, escaped)."""
    listed = ", ".join(f"{code(c)} ({len(classes)} values)" for c, classes in columns.items())
    return (f"**Dataset**: {md(file_name)} — {n_cells:,} cells · " + (
        f"candidate columns: {listed}" if columns else
        "no candidate column (a categorical `obs` column with 2–500 values): it cannot be integrated"))


class IntegrationForm(PlatformView):
    """Batch column, cell-type column and models for one dataset; Run submits one run per model (a group).

    ``dataset`` and ``datasets`` come in from the run panel (which follows the data panel); ``submitted`` goes out:
    (run id, model id) of each run of the last submission."""

    dataset = param.String(default="", allow_None=True, doc="Id of the dataset to integrate; '' for none.")
    datasets = param.List(default=[], doc="The stored datasets (rows): the dataset's candidate columns come from "
                                          "its check report.")
    batch_column = param.Selector(default="", objects={NO_COLUMN: ""},
                                  doc="The obs column of each cell's batch (lab, donor, kit, condition): what the "
                                      "models should mix.")
    cell_type_column = param.Selector(default="", objects={NO_CELL_TYPE: ""},
                                      doc="The obs column of each cell's type: what the models should keep apart. "
                                          "Without one only the label-free batch metrics are computed.")
    models = param.ListSelector(default=[], objects=[], doc="The models to compare (one run each).")
    submitted = param.List(default=[], doc="(run id, model id) of every run of the last submission.")

    def __init__(self, platform=None, **params) -> None:  # noqa: ANN001 - app.platform.Platform
        super().__init__(platform, **params)
        offered = self.platform.models(EMBEDDING_INTEGRATION)
        self._names = {m.id: m.name for m in offered}
        gpus = cluster_gpus(self.platform)
        self.param.models.objects = {model_label(m, gpus): m.id for m in offered}
        self.models = [m for m in DEFAULT_MODELS if m in self._names] or [m.id for m in offered[:1]]
        self.button = pn.widgets.Button(name="Run the models", button_type="primary", width=160,
                                        css_classes=["integration-run-button"])
        self.button.on_click(self._on_run)
        self.message = pn.pane.Alert("", visible=False, css_classes=["integration-message"],
                                     sizing_mode="stretch_width")
        self.about = pn.pane.Markdown("", css_classes=["integration-dataset"], sizing_mode="stretch_width",
                                      styles={"font-size": "0.9em"})
        self._fill_columns()

    def _dataset(self):  # noqa: ANN202 - store.tables.Dataset
        return next((d for d in self.datasets if d.id == self.dataset), None) if self.dataset else None

    @param.depends("dataset", "datasets", watch=True)
    def _fill_columns(self) -> None:
        """Offer the dataset's candidate columns; keep the picks when they are still there."""
        ds = self._dataset()
        columns = CheckReport(ds.check_report).label_columns if ds is not None else {}
        batch, cell_type = default_columns(columns)
        # decided before the choices change: a widget showing them moves to the first choice when they do
        batch = self.batch_column if self.batch_column in columns else (batch or "")
        cell_type = self.cell_type_column if self.cell_type_column in columns else cell_type
        self.param.batch_column.objects = {c: c for c in columns} or {NO_COLUMN: ""}
        self.batch_column = batch
        self._fill_cell_types(cell_type)
        self.about.object = (dataset_text(ds.file_name, ds.n_cells or 0, columns) if ds is not None
                             else "Pick or upload the dataset to integrate first (section 1).")

    @param.depends("batch_column", watch=True)
    def _follow_batch(self) -> None:
        self._fill_cell_types(None)

    def _fill_cell_types(self, preferred: str | None) -> None:
        """Every candidate column but the batch's may be the cell types: ``preferred`` if it is one, else the
        current pick if it still is, else none."""
        ds = self._dataset()
        columns = [c for c in (CheckReport(ds.check_report).label_columns if ds is not None else {})
                   if c != self.batch_column]
        current = self.cell_type_column
        self.param.cell_type_column.objects = {NO_CELL_TYPE: "", **{c: c for c in columns}}
        self.cell_type_column = preferred if preferred in columns else current if current in columns else ""

    async def _on_run(self, _event) -> None:  # noqa: ANN001
        from app.datasets import NotFound
        from app.runs import InvalidRun

        if not self.dataset:
            self._say("Pick or upload the dataset to integrate first (section 1).", "warning")
            return
        args = group_submission(self.batch_column, self.cell_type_column)
        try:
            runs = await asyncio.to_thread(self.platform.runs.submit_group, EMBEDDING_INTEGRATION,
                                           list(self.models), self.dataset, **args, user=self.user)
        except (InvalidRun, NotFound, ValueError) as exc:
            self._say(md(exc), "danger")
            return
        names = ", ".join(md(self._names.get(r.model_id, r.model_id)) for r in runs)
        self._say(f"Submitted {len(runs)} run{'s' if len(runs) != 1 else ''} ({names}): open one in the run history "
                  "below when done to see them side by side.", "success")
        self.submitted = [(r.id, r.model_id) for r in runs]

    def _say(self, text: str, kind: str) -> None:
        self.message.param.update(object=text, alert_type=kind, visible=True)

    def __panel__(self) -> pn.viewable.Viewable:
        models = pn.Column(pn.pane.HTML("Models (one run each)", margin=(5, 10, 0, 10), styles={"font-size": "0.9em"}),
                           pn.widgets.CheckBoxGroup.from_param(self.param.models, inline=False,
                                                               css_classes=["integration-models"]),
                           margin=0, width=340)
        return pn.Column(
            self.about,
            pn.Row(pn.widgets.Select.from_param(self.param.batch_column, name="Batch column", width=220,
                                                css_classes=["batch-picker"]),
                   pn.widgets.Select.from_param(self.param.cell_type_column, name="Cell-type column (optional)",
                                                width=240, css_classes=["cell-type-picker"]),
                   models),
            self.button, self.message, sizing_mode="stretch_width", css_classes=["integration-form"])
