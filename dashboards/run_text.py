"""What the run panel offers and says, as pure functions: the options and keyword arguments of a submission, the
saved annotators' labels and notes, the run history's rows and a run's progress line (testable without a server)."""

from __future__ import annotations

import pandas as pd

from dashboards.safe_text import md

NO_REFERENCE = "(none: evaluate on a 70/30 split of the query)"
NO_TRUTH = "(none)"
# what a user picks -> the head kind a run's options name (inference.heads.HEAD_KINDS; a test keeps them in step)
HEADS = {"Logistic regression": "logistic_regression", "kNN reference mapping": "knn",
         "Fine-tune the model": "fine-tune"}
KNN, FINE_TUNE = "knn", "fine-tune"
# where a run's labels come from: a reference dataset (a head trained for the run) or a saved annotator
REFERENCE, ANNOTATOR = "reference", "annotator"
LABELS_FROM = {"reference dataset": REFERENCE, "saved annotator": ANNOTATOR}
NO_ANNOTATOR = "(no saved annotators yet: save one from a run's results)"
TUNING = {"epochs": "Epochs (at most)", "learning_rate": "Learning rate", "frozen_layers": "Frozen layers"}


def run_options(confidence: float, novelty: float = 0.0, head: str | None = "logistic_regression",
                k: int | None = None, majority_voting: bool = False, tuning: dict | None = None,
                max_reference_cells: int | None = None) -> dict:
    """The options of a submission from the run panel's choices: k only for the kNN head, and only when given
    (blank: the platform picks it from the reference's class sizes); ``tuning`` (epochs, learning_rate,
    frozen_layers) only for fine-tuning. ``head`` None: no head at all (an annotator brings its own, so no
    ``max_reference_cells`` either)."""
    options = {"confidence_threshold": float(confidence), "novelty_threshold": float(novelty),
               "majority_voting": bool(majority_voting)}
    if head:
        options["head"] = head
        if max_reference_cells is not None:
            options["max_reference_cells"] = int(max_reference_cells)
        if head == KNN and k is not None:
            options["k"] = int(k)
        if head == FINE_TUNE:
            options.update(tuning or {})
    return options


def submission(labels_from: str, options: dict, reference: str | None = None, label_column: str | None = None,
               truth_column: str | None = None, annotator: str | None = None,
               truth_ontology: dict[str, str | None] | None = None) -> dict:
    """The keyword arguments of ``platform.runs.submit`` after the application, model and dataset: a reference
    and its label column, or a saved annotator (then no reference, no label column, no head or k, and the true
    labels' terms the user changed, ``truth_ontology``, when there is a truth column)."""
    truth = None if truth_column in (None, NO_TRUTH) else truth_column
    if labels_from == ANNOTATOR:
        return {"reference_id": None, "label_column": None, "truth_column": truth,
                "options": {**{k: v for k, v in options.items()
                               if k not in ("head", "k", "max_reference_cells", *TUNING)},
                            **({"truth_ontology": truth_ontology} if truth and truth_ontology else {})},
                "annotator": annotator or None}
    return {"reference_id": reference or None, "label_column": label_column, "truth_column": truth,
            "options": options, "annotator": None}


def annotator_label(a, model_names: dict[str, str]) -> str:  # noqa: ANN001 - store.tables.AnnotatorEntry
    """How a saved annotator is offered (a Select shows it as text): name, model, classes; untrained ones said."""
    untrained = " · untrained (predictions mean nothing)" if not a.trained else ""
    return f"{a.name} — {model_names.get(a.model_id, a.model_id)} · {len(a.classes or {})} classes{untrained}"


def annotator_choices(annotators: list, model_names: dict[str, str]) -> dict[str, str]:
    """Picker label -> id of the saved annotators (newest first, as the service lists them)."""
    return {annotator_label(a, model_names): a.id for a in annotators}


def annotator_note(a, model_id: str | None, model_names: dict[str, str]) -> tuple[str, str]:  # noqa: ANN001
    """What to say about the picked annotator (Markdown, escaped) and how (an alert type): a model other than the
    one selected is a refusal, untrained weights a warning, else what it is."""
    if a is None:
        return ("No saved annotator to use: save one from a finished run with a reference (Results, "
                "*Save this run's head as an annotator*), or take the labels from a reference dataset.", "warning")
    model = model_names.get(a.model_id, a.model_id)
    if model_id != a.model_id:
        return (f"Annotator **{md(a.name)}** reads {md(model)}'s embeddings, and the selected model is "
                f"{md(model_names.get(model_id, model_id or 'none'))}: pick {md(model)} in the model picker to use "
                "it.", "danger")
    check = (a.check or {}).get("macro_f1")
    reference = (a.reference or {}).get("file_name") or "its reference"
    text = (f"**{md(a.name)}**: {md(model)}, {len(a.classes or {})} classes learnt from {md(reference)}"
            + (f" · held-out macro-F1 {float(check):.3f}" if check is not None else "")
            + (f" · by {md(a.author)}" if a.author else ""))
    if not a.trained:
        return (text + "  \n**Trained on generated, untrained weights**: its predictions mean nothing.", "warning")
    return text, "light"


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
                     "weights": r.parameters.get("weights", ""), "by": r.created_by or "",
                     "started": r.created_at.strftime("%Y-%m-%d %H:%M:%S"), "id": r.id})
    return pd.DataFrame(rows, columns=["run", "status", "model", "dataset", "stage", "progress", "duration_s",
                                       "macro_f1", "weights", "by", "started", "id"])


def progress_text(status: dict, model_name: str) -> str:
    cells = (f" · {status['cells_done']:,}/{status['cells_total']:,} cells" if status.get("cells_total") else "")
    eta = f" · ETA {status['eta_s']:.0f} s" if status.get("eta_s") else ""
    device = f" · {status['device']}" if status.get("device") else ""
    return f"**{md(model_name)}** — {md(status['stage'])}{cells}{eta}{md(device)}"


# the true labels' terms in the run form: the label, the id the user confirms (editable), the term's name, how found
TRUTH_COLUMNS = ["true label", "Cell Ontology id", "term", "found by"]
TRUTH_NOTE = ("**Cell-class scores**: each true label's Cell Ontology term, as the annotator's map or the suggestions "
              "give it. Confirm, change or clear any id (empty: the label's cells are left out of the cell-class "
              "scores); the run records the terms used.")
FOUND_BY = {"annotator": "the annotator's term", "given": "you", "exact": "suggested (exact name)",
            "synonym": "suggested (synonym)", "normalised": "suggested (lab spelling)",
            "no suggestion": "no suggestion"}


def truth_frame(terms: dict[str, dict]) -> pd.DataFrame:
    """One row per true label of ``runs.truth_terms``: its id (the user may change or clear it), name, source."""
    rows = [{"true label": label, "Cell Ontology id": t.get("term_id") or "", "term": t.get("term_label") or "",
             "found by": FOUND_BY.get(str(t.get("how")), str(t.get("how")))} for label, t in terms.items()]
    return pd.DataFrame(rows, columns=TRUTH_COLUMNS)


def truth_given(frame: pd.DataFrame, terms: dict[str, dict]) -> dict[str, str | None]:
    """The labels whose id the user changed from ``terms`` (label -> id, None when cleared): what a submission
    gives as ``truth_ontology``; the others keep the term the platform found, and say so in the run."""
    out: dict[str, str | None] = {}
    for label, term in zip(frame["true label"], frame["Cell Ontology id"], strict=True):
        text = "" if term is None or (isinstance(term, float) and pd.isna(term)) else str(term).strip()
        if text != ((terms.get(str(label)) or {}).get("term_id") or ""):
            out[str(label)] = text or None
    return out


def query_text(dataset) -> str:  # noqa: ANN001 - store.tables.Dataset or None
    """Which dataset the run form annotates (the one section 1 shows), by name and cells."""
    if dataset is None:
        return "**Query**: none yet: pick or upload the cells to annotate in section 1."
    cells = f" · {int(dataset.n_cells):,} cells" if dataset.n_cells else ""
    return f"**Query** (the cells to annotate, as picked in section 1): **{md(dataset.file_name)}**{cells}"


def sample_text(info: dict, file_name: str, evaluation: bool = False) -> str:
    """How many labelled cells the head will train on, and why a cap can give more (``runs.reference_sample``)."""
    where = f"the training split of {md(file_name)}" if evaluation else md(file_name)
    if not info["sampled"]:
        return f"The head trains on all {info['labelled_cells']:,} labelled cells of {where}."
    more = info["trained_cells"] - info["max_cells"]
    return (f"The head trains on {info['trained_cells']:,} of the {info['labelled_cells']:,} labelled cells of "
            f"{where}: a seeded sample of at most {info['max_cells']:,} keeping each of its {info['types']} types' "
            f"share, with at least {info['min_per_type']:,} cells of each type (or all it has)"
            + (f", which adds {more:,} so rare types are not lost." if more > 0 else "."))
