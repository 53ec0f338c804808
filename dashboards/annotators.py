"""The saved annotators of this server: what each is (model, head, classes, held-out check, reference, author), and
deleting one that is not built in."""

from __future__ import annotations

import asyncio

import pandas as pd
import panel as pn
import param

from dashboards.safe_text import code, md, plain_formatters
from dashboards.styles import FITTING_TABLE
from dashboards.view import PlatformView, show_selector, show_toggle

HEAD_WORDS = {"logistic_regression": "logistic regression", "knn": "kNN", "fine_tuned_linear": "fine-tuned model"}
DELETE, CONFIRM = "Delete selected annotator", "Yes, delete it"
# what tells annotators apart first (a laptop's screen shows these without scrolling), then where they came from
# the table fits its width: the text columns wrap, these keep their widths (px)
WIDTHS = {"classes": 75, "held-out macro-F1": 90, "built-in": 75, "saved": 150}
COLUMNS = ["name", "model", "classes", "held-out macro-F1", "head", "built-in", "reference", "author", "saved", "id"]


def short_model_name(name: str) -> str:
    """A model's name without its parenthesised detail, for a table a laptop's screen holds ('Baseline')."""
    return name.split(" (")[0] or name


def annotators_frame(annotators: list, model_names: dict[str, str]) -> pd.DataFrame:
    """One row per saved annotator, newest first (as the service lists them); untrained ones say so by their model."""
    rows = []
    for a in annotators:
        model = short_model_name(model_names.get(a.model_id, a.model_id)) + ("" if a.trained else " (untrained)")
        f1 = (a.check or {}).get("macro_f1")
        rows.append({"name": a.name, "model": model, "head": HEAD_WORDS.get(a.head_kind, a.head_kind),
                     "classes": len(a.classes or {}), "held-out macro-F1": round(float(f1), 3) if f1 is not None
                     else None, "reference": (a.reference or {}).get("file_name") or "", "author": a.author or "",
                     "saved": a.created_at.strftime("%Y-%m-%d") if a.created_at else "",
                     "built-in": "yes" if a.builtin else "", "id": a.id})
    return pd.DataFrame(rows, columns=COLUMNS)


def annotator_details(a, model_names: dict[str, str]) -> str:  # noqa: ANN001 - store.tables.AnnotatorEntry
    """Markdown about one annotator: its description, reference, held-out check and each class's Cell Ontology
    term (every user-supplied string escaped)."""
    model = model_names.get(a.model_id, a.model_id)
    reference = a.reference or {}
    lines = [f"#### {md(a.name)}"]
    if a.description:
        lines.append(md(a.description))
    if not a.trained:
        lines.append("**Trained on generated, untrained weights**: its predictions mean nothing.")
    cells = reference.get("cells")
    lines.append(f"{md(model)} · {md(HEAD_WORDS.get(a.head_kind, a.head_kind))} · learnt from "
                 f"{md(reference.get('file_name') or 'an unnamed reference')}"
                 + (f" ({int(cells):,} cells)" if cells else "") + f", labels {code(a.label_column)}"
                 + (f" · by {md(a.author)}" if a.author else ""))
    check = a.check or {}
    if check.get("macro_f1") is not None:
        lines.append(f"Held-out check ({md(check.get('method', ''))}, {int(check.get('n_cells') or 0):,} cells): "
                     f"macro-F1 {float(check['macro_f1']):.3f}"
                     + (f" · accuracy {float(check['accuracy']):.3f}" if check.get("accuracy") is not None else ""))
    ontology = a.ontology or {}
    per_class = check.get("per_class_f1") or {}
    terms = []
    for label, n in (a.classes or {}).items():
        term = ontology.get(label)
        f1 = per_class.get(label)
        terms.append(f"- {md(label)} ({int(n):,} cells{f', F1 {float(f1):.2f}' if f1 is not None else ''}): "
                     + (code(term) if term else "not mapped to the Cell Ontology"))
    return "  \n".join(lines) + ("\n\n" + "\n".join(terms) if terms else "")


class AnnotatorsView(PlatformView):
    """Every saved annotator on this server, one selected for its details; delete the selected one (built-in ones
    are refused, in the service's words). ``deleted`` goes out (the run panel's choices follow);
    ``annotators_changed`` comes in (a run's head saved from the results view)."""

    selected = param.String(default="", doc="Id of the annotator whose details are shown ('' for none).")
    annotators_changed = param.Integer(default=0, doc="Bumped when an annotator is saved: the table is read again.")
    deleted = param.Integer(default=0, doc="Bumped when this view deletes an annotator.")
    show = show_selector("The annotators listed: every user's (and the built-in ones), or this user's own.")

    def __init__(self, platform=None, **params) -> None:  # noqa: ANN001 - app.platform.Platform
        super().__init__(platform, **params)
        self.table = pn.widgets.Tabulator(pd.DataFrame(columns=COLUMNS), show_index=False, disabled=True,
                                          selectable=1, hidden_columns=["id"], pagination="local", page_size=8,
                                          css_classes=["annotators-table"], sizing_mode="stretch_width",
                                          layout="fit_columns", widths=WIDTHS,
                                          stylesheets=[FITTING_TABLE])
        self.table.param.watch(self._on_select, "selection")
        self.table.on_click(self._on_click)  # a click always shows its row: Tabulator's own toggle can drop it
        self.details = pn.pane.Markdown("Select an annotator to see its classes and Cell Ontology terms.",
                                        css_classes=["annotator-details"], sizing_mode="stretch_width",
                                        styles={"font-size": "0.9em"})
        self._confirming = ""  # id of the annotator a first click on Delete asked about
        self.delete_button = pn.widgets.Button(name=DELETE, button_type="danger",
                                               css_classes=["delete-annotator"], disabled=True, width=220)
        self.delete_button.on_click(self._on_delete)
        self.message = pn.pane.Alert("", visible=False, css_classes=["annotators-message"],
                                     sizing_mode="stretch_width")
        self.refresh()

    def _model_names(self) -> dict[str, str]:
        return {m.id: m.name for m in self.platform.models()}

    @param.depends("annotators_changed", "show", watch=True)
    def refresh(self) -> None:
        rows = self.shown(self.platform.annotators.list(), self.show)
        self._rows = {a.id: a for a in rows}
        frame = annotators_frame(rows, self._model_names())
        self.table.formatters = plain_formatters(frame, wrap=("name", "model", "head", "reference", "author"))
        self.table.value = frame
        keep = [i for i, row_id in enumerate(frame["id"]) if row_id == self.selected]
        self.table.selection = keep
        if not keep:
            self.selected = ""

    def _on_select(self, event) -> None:  # noqa: ANN001
        """Selection by keyboard or a row's handle; a deselection keeps the details (a click re-selects)."""
        frame = self.table.value
        if event.new and len(frame) > event.new[0]:
            self.selected = str(frame["id"].iloc[event.new[0]])

    def _on_click(self, event) -> None:  # noqa: ANN001 - panel's CellClickEvent
        """Show the clicked row, even when Tabulator took the click as a toggle off or lost it in a redraw."""
        frame = self.table.value
        if event.row is None or not 0 <= event.row < len(frame):
            return
        self.selected = str(frame["id"].iloc[event.row])
        if self.table.selection != [event.row]:
            self.table.selection = [event.row]

    @param.depends("selected", watch=True)
    def _show_selected(self) -> None:
        a = self._rows.get(self.selected)
        self._confirming = ""
        self.delete_button.param.update(disabled=a is None, name=DELETE)
        self.message.visible = False
        self.details.object = (annotator_details(a, self._model_names()) if a is not None else
                               "Select an annotator to see its classes and Cell Ontology terms.")

    async def _on_delete(self, _event) -> None:  # noqa: ANN001
        from app.annotators import AnnotatorInUse
        from app.datasets import NotFound

        a = self._rows.get(self.selected)
        if a is None:
            return
        if not a.builtin and self._confirming != a.id:  # shared by everyone here: a second click confirms
            # (a built-in one goes straight to the service, which refuses it in its own words)
            self._confirming = a.id
            self.delete_button.name = CONFIRM
            self._say(f"Delete {md(a.name)} for everyone on this server? Click *{CONFIRM}* to do it.", "warning")
            return
        self._confirming = ""
        self.delete_button.name = DELETE
        try:
            await asyncio.to_thread(self.platform.annotators.delete, a.id, self.user)
        except (AnnotatorInUse, NotFound, PermissionError) as exc:
            self._say(md(exc), "warning")
            return
        self.selected = ""
        self.refresh()
        self._say(f"Deleted annotator {md(a.name)}.", "success")
        self.deleted += 1

    def _say(self, text: str, kind: str) -> None:
        self.message.param.update(object=text, alert_type=kind, visible=True)

    def __panel__(self) -> pn.viewable.Viewable:
        return pn.Column(
            "## Saved annotators",
            pn.pane.Markdown("Trained heads saved under a name, to label new data without bringing a reference: "
                             "pick one in section 2 (*Labels from: saved annotator*); save one from a run's "
                             "Results (at the top of the page).", styles={"font-size": "0.9em", "opacity": "0.8"}),
            show_toggle(self.param.show, "annotators-show"),
            self.table, pn.Row(self.delete_button, self.message, sizing_mode="stretch_width"), self.details,
            css_classes=["annotators"], sizing_mode="stretch_width")
