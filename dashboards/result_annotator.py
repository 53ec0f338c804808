"""Saving the run shown as a named annotator: its trained head, with its classes' Cell Ontology terms as the
platform suggests them and the user confirms or changes them (collapsed until opened)."""

from __future__ import annotations

import asyncio

import pandas as pd
import panel as pn
import param

from dashboards.safe_text import md, plain_formatters
from dashboards.styles import FITTING_TABLE
from dashboards.view import PlatformView

# the ontology table: the class, the id the user confirms (editable), the term's name, where it came from
ONTOLOGY_COLUMNS = ["class", "Cell Ontology id", "term", "suggested"]
EDITED = "(checked when saved)"
SAVE_NOTE = ("Cell Ontology id of each class, as suggested: change or clear any (empty: the class stays unmapped); "
             "ids are checked when saved. With ids, runs with this annotator also give each cell its term and coarse "
             "cell class.")
SAVE_UNTRAINED = ("**This run used generated, untrained weights**: an annotator saved from it is marked untrained, "
                  "and its predictions mean nothing.")


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


class SaveAnnotatorForm(PlatformView):
    """Name, author, description and the classes' Cell Ontology ids, then Save; offered for a run that learnt from
    a reference. ``saved`` goes out (the Dashboard tells the annotators' lists)."""

    run = param.String(default="", doc="Id of the finished run shown: its head is what is saved.")
    can_save = param.Boolean(default=False, doc="Whether the run shown can be saved as an annotator.")
    annotator_name = param.String(default="", doc="Name of the annotator to save (letters, digits, spaces, . _ ( ) "
                                                  "+ -).")
    annotator_description = param.String(default="", doc="What the annotator is for (optional).")
    annotator_author = param.String(default="", doc="Who made it (optional).")
    saved = param.Integer(default=0, doc="Bumped when this form saves an annotator.")

    def __init__(self, platform=None, **params) -> None:  # noqa: ANN001 - app.platform.Platform
        super().__init__(platform, **params)
        self._suggested: dict[str, tuple[str, str]] = {}  # class -> (suggested id, its term), for edits
        self.ontology = pn.widgets.Tabulator(pd.DataFrame(columns=ONTOLOGY_COLUMNS), show_index=False,
                                             editors={"class": None, "term": None, "suggested": None},
                                             css_classes=["ontology-table"], sizing_mode="stretch_width",
                                             layout="fit_columns", height=220, stylesheets=[FITTING_TABLE])
        self.ontology.on_edit(self._on_ontology_edit)
        self.save_button = pn.widgets.Button(name="Save annotator", button_type="primary",
                                             css_classes=["save-annotator-button"], width=160)
        self.save_button.on_click(self._on_save)
        self.save_note = pn.pane.Markdown(SAVE_NOTE, styles={"font-size": "0.85em", "opacity": "0.8"},
                                          css_classes=["save-annotator-note"], margin=(0, 10),
                                          sizing_mode="stretch_width")
        self.save_message = pn.pane.Alert("", visible=False, css_classes=["save-annotator-message"],
                                          sizing_mode="stretch_width")
        self._fill_save_form()

    def _run(self):  # noqa: ANN202 - store.tables.Run or None
        from app.datasets import NotFound

        try:
            return self.platform.runs.get(self.run) if self.run else None
        except (NotFound, ValueError):
            return None

    @param.depends("run", watch=True)
    def _fill_save_form(self) -> None:
        """The run's classes with the Cell Ontology terms the platform suggests, for the user to confirm."""
        run = self._run()
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
                                        self.annotator_description, self.annotator_author, mapping, self.user)
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

    def __panel__(self) -> pn.viewable.Viewable:
        """Collapsed until opened; shown for a run that learnt from a reference."""
        return pn.Card(
            pn.FlexBox(pn.widgets.TextInput.from_param(self.param.annotator_name, name="Name",
                                                       placeholder="e.g. PBMC baseline v1",
                                                       css_classes=["annotator-name"], width=260),
                       pn.widgets.TextInput.from_param(self.param.annotator_author, name="Author",
                                                       placeholder="optional", css_classes=["annotator-author"],
                                                       width=200),
                       pn.widgets.TextInput.from_param(self.param.annotator_description, name="Description",
                                                       placeholder="optional", css_classes=["annotator-description"],
                                                       width=320),
                       sizing_mode="stretch_width"),
            self.save_note, self.ontology,
            pn.Row(self.save_button, self.save_message, sizing_mode="stretch_width"),
            title="Save this run's head as an annotator", collapsed=True, visible=self.param.can_save,
            css_classes=["save-annotator"], sizing_mode="stretch_width")
