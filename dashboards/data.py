"""Giving data: chunked upload, a file on the server, or a stored dataset; the check report at once."""

from __future__ import annotations

import asyncio
import io

import panel as pn
import param

from app.datasets import CheckReport
from dashboards.safe_text import code, md
from dashboards.view import PlatformView, show_selector, show_toggle


def size_text(n_bytes: int) -> str:
    """Bytes as people read them (one decimal from a kilobyte on)."""
    if n_bytes < 1000:
        return f"{n_bytes:,} bytes"
    size = float(n_bytes)
    for unit in ("kB", "MB", "GB"):
        size /= 1000
        if size < 1000:
            return f"{size:.1f} {unit}"
    return f"{size / 1000:.1f} TB"


def embeddings_markdown(info: dict) -> str:
    """The line saying what the embedding store holds for a dataset (``DatasetService.embeddings_of``)."""
    entries = info["entries"]
    if not entries:
        return "**Stored embeddings:** none yet: the first run of each model computes them once, later runs reuse them."
    return (f"**Stored embeddings:** {len(entries)} ({size_text(info['bytes'])}), each computed once and reused by "
            "every run of either application with the same weights and settings. Deleting them frees the space; "
            "the next run computes them again.")


LEVEL_ICON = {level: f'<span style="color:{color}">●</span>' for level, color in
              (("green", "#2e7d32"), ("amber", "#ef8f00"), ("red", "#c62828"))}


def report_markdown(report: dict, file_name: str = "") -> str:
    """The check report as a biologist reads it: what was found, then what to do about problems."""
    report = CheckReport(report)
    name = md(report.file or file_name)
    if not report.ok:
        lines = [f"#### ✗ {name} cannot be used"]
        lines += [f"- **{md(e['code'].replace('_', ' '))}**: {md(e['message'])}" for e in report.errors]
        return "\n".join(lines)
    lines = [f"#### ✓ {name}", f"**{report.n_cells:,} cells × {report.n_genes:,} genes**"]
    values = report.values
    if values.get("source"):
        how = ("counts recovered from log-normalised values" if values.get("recovered")
               else values.get("detail", ""))
        lines.append(f"- **Values**: raw counts in {code(values['source'])} ({md(how)})")
    genes = report.genes
    if genes:
        lines.append(f"- **Gene identifiers**: {md(genes['source'])} — {genes['ensembl_given']:,} Ensembl, "
                     f"{genes['mapped_from_symbols']:,} mapped from symbols, {genes['unmapped']:,} unmapped, "
                     f"{genes['duplicated_ensembl_ids']:,} duplicated")
    for model, o in report.overlap.items():
        lines.append(f"- {LEVEL_ICON.get(o['level'], '')} **{md(model)}**: {o['genes']:,} genes in its vocabulary, "
                     f"{o['count_share']:.0%} of the counts" + (f" — {md(o['message'])}" if o["message"] else ""))
    columns = report.label_columns
    if columns:
        for col, classes in columns.items():
            shown = ", ".join(f"{md(k)} ({v})" for k, v in list(classes.items())[:6])
            more = f" … {len(classes)} classes" if len(classes) > 6 else ""
            lines.append(f"- **Label column {code(col)}**: {shown}{more}")
    else:
        lines.append("- No label column (categorical `obs` column with 2–500 classes): usable as a query only.")
    rejected = report.rejected_label_columns
    if rejected:
        lines.append("- **Not offered as labels**: "
                     + "; ".join(f"{code(c)} ({md(why)})" for c, why in rejected.items()))
    lines += [f"- **Note**: {md(w['message'])}" for w in report.warnings]
    return "\n".join(lines)


def dataset_label(d) -> str:  # noqa: ANN001 - store.tables.Dataset
    """How a stored dataset is named in the pickers (a Select shows it as text)."""
    return f"{d.file_name} — {d.n_cells:,} cells ({d.created_at:%Y-%m-%d %H:%M})"


def labelled_datasets(datasets: list) -> dict[str, str]:
    """Picker label -> id of the datasets with at least one label column (candidates for a reference)."""
    return {dataset_label(d): d.id for d in datasets if CheckReport(d.check_report).label_columns}


DELETE_DATASET, CONFIRM_DELETE = "Delete this dataset", "Yes, delete it"


class DataPanel(PlatformView):
    """Upload or pick the query; the stored datasets are shared by every user of this server."""

    dataset = param.Selector(default=None, doc="The dataset to annotate (query), by id; '' for none.")
    datasets = param.List(default=[], doc="The stored datasets (rows), as last read: set anew whenever one is added.")
    finished = param.Integer(default=0, doc="Bumped when a run finishes: the stored embeddings are read again.")
    show = show_selector("The stored datasets offered: every user's, or the ones this user uploaded.")

    def __init__(self, platform=None, **params) -> None:  # noqa: ANN001 - app.platform.Platform
        super().__init__(platform, **params)
        max_mb = self.platform.settings.max_upload_mb
        # no accepted_filetypes: the browser knows no MIME type for .h5ad; the server checks every file anyway
        self.dropper = pn.widgets.FileDropper(max_file_size=f"{max_mb}MB", chunk_size=4_000_000, multiple=False,
                                              css_classes=["upload"], sizing_mode="stretch_width", height=140)
        self.status = pn.pane.Alert("Drop an .h5ad (or 10x .h5, .loom, CSV) file, or pick a stored dataset.",
                                    alert_type="light", css_classes=["upload-status"], sizing_mode="stretch_width")
        self.report = pn.pane.Markdown("", css_classes=["check-report"], sizing_mode="stretch_width")
        self.server_path = pn.widgets.TextInput(name="File on the server (relative to the allowed folder)",
                                                placeholder="project/cells.h5ad", sizing_mode="stretch_width")
        self.server_button = pn.widgets.Button(name="Use this file", button_type="default")
        self.server_button.on_click(self._on_server_file)
        self.dropper.param.watch(self._on_upload, "value")
        self.embeddings = pn.pane.Markdown("", css_classes=["dataset-embeddings"], sizing_mode="stretch_width",
                                           visible=False)
        self.embeddings_button = pn.widgets.Button(name="Delete stored embeddings", button_type="default",
                                                   css_classes=["delete-embeddings"], visible=False)
        self.embeddings_button.on_click(self._delete_embeddings)
        self.delete_button = pn.widgets.Button(name=DELETE_DATASET, button_type="danger", button_style="outline",
                                               css_classes=["delete-dataset"], visible=False)
        self.delete_button.on_click(self._delete_dataset)
        self._confirming = ""
        self.refresh()

    @param.depends("show", watch=True)
    def _on_show(self) -> None:
        self.refresh()

    def refresh(self, keep: str = "") -> None:
        """Read the stored datasets again; ``keep`` (one just stored) is offered even in *mine*."""
        current = self.dataset
        datasets = self.platform.datasets.list()  # all of them: the run forms pick references from these
        self._by_id = {d.id: d for d in datasets}
        offered = self.shown(datasets, self.show, keep=keep or current or "")
        self.param.dataset.objects = {"(choose a dataset)": "", **{dataset_label(d): d.id for d in offered}}
        self.dataset = current if current in self._by_id else ""
        self.datasets = datasets

    def get(self, dataset_id: str | None):  # noqa: ANN201
        return self._by_id.get(dataset_id) if dataset_id else None

    async def _ingest(self, make_stream, name: str) -> None:  # noqa: ANN001
        from app.datasets import DatasetRejected, run_ingest

        self.status.object, self.status.alert_type = f"Checking {md(name)} …", "info"
        try:
            ds = await run_ingest(make_stream)
        except DatasetRejected as exc:
            self.status.object, self.status.alert_type = f"{md(name)} was not stored: see below.", "danger"
            self.report.object = report_markdown(exc.report, name)
            return
        except (ValueError, LookupError, OSError) as exc:
            self.status.object, self.status.alert_type = f"{md(name)}: {md(exc)}", "danger"
            return
        self.refresh(keep=ds.id)
        self.dataset = ds.id
        self.status.object, self.status.alert_type = f"Stored {md(ds.file_name)}: {ds.n_cells:,} cells.", "success"

    async def _on_upload(self, event) -> None:  # noqa: ANN001
        if not event.new:
            return
        name, data = next(iter(event.new.items()))
        payload = data if isinstance(data, bytes) else data.encode()
        who = self.user
        await self._ingest(lambda: self.platform.datasets.ingest(io.BytesIO(payload), name, who), name)

    async def _on_server_file(self, _event) -> None:  # noqa: ANN001
        rel = self.server_path.value.strip()
        if rel:
            who = self.user
            await self._ingest(lambda: self.platform.datasets.ingest_server_file(rel, who), rel)

    @param.depends("dataset", watch=True)
    def _show_report(self) -> None:
        ds = self.get(self.dataset)
        if ds is not None:
            self.report.object = report_markdown(ds.check_report, ds.file_name)
        self.delete_button.visible = ds is not None
        self.delete_button.name, self._confirming = DELETE_DATASET, ""

    async def _delete_dataset(self, _event) -> None:  # noqa: ANN001
        """Two clicks: the first says what goes (file, stored embeddings, its finished runs), the second deletes."""
        from app.datasets import DatasetInUse
        from app.users import Forbidden

        ds = self.get(self.dataset)
        if ds is None:
            return
        if self._confirming != ds.id:
            runs = [r for r in self.platform.runs.list(limit=100_000)
                    if ds.id in (r.dataset_id, r.reference_dataset_id)]
            self._confirming, self.delete_button.name = ds.id, CONFIRM_DELETE
            self.status.object = (f"Delete {md(ds.file_name)} for everyone on this server: its file, its stored "
                                  f"embeddings and its {len(runs)} run(s)? Click *{CONFIRM_DELETE}* to do it.")
            self.status.alert_type = "warning"
            return
        self._confirming, self.delete_button.name = "", DELETE_DATASET
        try:
            out = await asyncio.to_thread(self.platform.datasets.delete, ds.id, True, self.user)
        except (DatasetInUse, Forbidden, LookupError, ValueError) as exc:
            self.status.object, self.status.alert_type = md(exc), "danger"
            return
        self.refresh()
        self.report.object = ""
        self.status.object = (f"Deleted {md(ds.file_name)} and {len(out['runs_deleted'])} run(s); freed "
                              f"{size_text(out['bytes_freed'])}.")
        self.status.alert_type = "success"
        self.finished += 1  # the run history and stored embeddings are read again

    @param.depends("dataset", "finished", watch=True)
    def _show_embeddings(self) -> None:
        ds = self.get(self.dataset)
        info = self.platform.datasets.embeddings_of(ds.id) if ds is not None else None
        self.embeddings.object = embeddings_markdown(info) if info is not None else ""
        self.embeddings.visible = info is not None
        self.embeddings_button.visible = bool(info and info["entries"])

    async def _delete_embeddings(self, _event) -> None:  # noqa: ANN001
        ds = self.get(self.dataset)
        if ds is None:
            return
        from app.users import Forbidden

        try:
            out = await asyncio.to_thread(self.platform.datasets.delete_embeddings, ds.id, self.user)
        except (Forbidden, LookupError, ValueError) as exc:  # another user's, or deleted meanwhile
            self.status.object, self.status.alert_type = md(exc), "danger"
            return
        self.status.object = (f"Deleted the stored embeddings of {md(ds.file_name)} ({size_text(out['bytes_freed'])}"
                              "); the next run of each model computes them again.")
        self.status.alert_type = "success"
        self._show_embeddings()

    def __panel__(self) -> pn.viewable.Viewable:
        tabs = [("Upload", pn.Column(self.dropper, sizing_mode="stretch_width")),
                ("Stored datasets", pn.Column(show_toggle(self.param.show, "datasets-show"),
                                              pn.widgets.Select.from_param(
                                                  self.param.dataset, name="Stored datasets (shared on this server)",
                                                  css_classes=["dataset-picker"], sizing_mode="stretch_width"),
                                              sizing_mode="stretch_width"))]
        if self.platform.settings.files_root is not None:
            tabs.append(("File on the server", pn.Column(self.server_path, self.server_button)))
        return pn.Column("## 1 · Data", pn.Tabs(*tabs, sizing_mode="stretch_width"), self.status, self.report,
                         pn.Row(self.embeddings, self.embeddings_button, sizing_mode="stretch_width"),
                         self.delete_button,
                         sizing_mode="stretch_width")
