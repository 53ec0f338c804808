"""What the results say, as pure functions of a run: its metrics and head in words, how its UMAP and calibration
were made, the colours its cells offer and the cell table's top probabilities (testable without a server)."""

from __future__ import annotations

import pandas as pd

from app.rest_json import coverage
from app.result_columns import PROBABILITY_PREFIX
from dashboards.run_text import HEADS
from dashboards.safe_text import md

CELL_COLUMNS = ["cell_id", "predicted_label", "confidence", "assigned", "true_label", "split", "umap_1", "umap_2"]
UMAP_COLUMNS = ["cell_id", "umap_1", "umap_2", "predicted_label", "confidence", "true_label"]
# what the image alone needs (a run above the per-cell hover's limit), and what comparing two runs adds
IMAGE_COLUMNS = ["umap_1", "umap_2", "predicted_label", "true_label"]
COMPARE_COLUMNS = ("cell_id", "confidence")
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
HEAD_NAMES = {**{kind: name for name, kind in HEADS.items()}, "fine_tuned_linear": "Fine-tuned model"}
# one column per class: paged in the cell table (top probabilities), not offered as colours
PER_CLASS_PREFIX = PROBABILITY_PREFIX
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
    sample = trained.get("reference_sample")
    if sample:
        text += f", trained on {reference_sample_text(trained, sample)}"
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


def reference_sample_text(trained: dict, sample: dict) -> str:
    """How many reference cells a sampled head learnt from and why that can exceed the cap asked for: each type
    keeps its share and at least ``min_per_type`` cells (at most an equal split of the cap), so rare types stay."""
    cells, labelled = int(trained.get("reference_cells", 0)), int(sample["labelled_cells"])
    text = f"{cells:,} of the reference's {labelled:,} labelled cells (a seeded sample keeping each type's share"
    cap, floor = sample.get("max_cells"), sample.get("min_per_type")
    if cap and floor:
        types = len(trained.get("classes") or [])
        per_type = min(int(floor), int(cap) // types) if types else int(floor)
        text += f", at least {per_type:,} cells of each type or all it has"
        if cells > int(cap):
            text += f": {cells - int(cap):,} more than the {int(cap):,} asked, so rare types are not lost"
    return text + ")"


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


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 'es' if word.endswith('s') else 's'}"


def covers(m: dict) -> str:
    """What a score covers, in words: 'over 8 classes, 2,500 labelled cells', or for a score over part of the
    labelled cells (the cell-class level) 'over 2 classes, 259 of 2,500 labelled cells'."""
    c = coverage(m)
    cells = (f"{c['n_cells']:,} of {c['labelled_cells']:,} labelled cells" if "labelled_cells" in m
             else f"{c['n_cells']:,} labelled cells")
    return f"over {_plural(c['n_classes'], 'class')}, {cells}"


def _left_out(m: dict) -> str:
    """The cells a class-level score leaves out and why ('' when none)."""
    c = coverage(m)
    if not c["left_out_cells"]:
        return ""
    labels = c["left_out_labels"]
    named = f" ({', '.join(md(x) for x in labels[:6])}{', …' if len(labels) > 6 else ''})" if labels else ""
    return (f"{c['left_out_cells']:,} cells whose true label has no Cell Ontology class are left out{named}: map "
            "their labels to terms in the run form (or truth_ontology) to score them")


def _partial(m: dict) -> str:
    """Why a class-level score is not the run's score, said plainly."""
    c = coverage(m)
    return (f"only {c['n_cells']:,} of {c['labelled_cells']:,} labelled cells and "
            f"{_plural(c['n_classes'], 'class')}")


def _scores(m: dict) -> str:
    return (f"**Macro-F1 {m['macro_f1']:.3f}** {covers(m)} ({md(m.get('scope', ''))}) · accuracy "
            f"{m['accuracy']:.3f} · weighted F1 {m['weighted_f1']:.3f} · {m['assigned_fraction']:.0%} of cells "
            "assigned")


def _brief(m: dict) -> str:
    return f"macro-F1 {m['macro_f1']:.3f} {covers(m)} · accuracy {m['accuracy']:.3f}"


def metrics_markdown(run, label_source: str = PER_CELL, level: str = CELL_TYPE) -> str:  # noqa: ANN001
    """Scores of the per-cell labels, or (``label_source`` CONSENSUS) of the cluster consensus, or (``level``
    CELL_CLASS) of the coarse Cell Ontology classes, with the others' macro-F1 beside them, and the head that made
    them. Every score says the cells and classes it covers; a class-level score over under half the labelled cells
    or one class is said not to be the run's score, wherever it is shown."""
    m = run.metrics
    head = head_text(run)
    if not m:
        return "  \n".join(filter(None, [
            "No true labels were given for this query, so there are no metrics (pick a truth column).", head]))
    consensus = m.get(CONSENSUS)
    classes = m.get(CELL_CLASS)
    partial = bool(classes) and coverage(classes)["partial"]
    if level == CELL_CLASS and classes:
        lines = [f"**Not the run's score**: the cell-class scores below cover {_partial(classes)}"
                 if partial else "",
                 f"Cell class (the Cell Ontology's coarse level, {_plural(coverage(classes)['n_classes'], 'class')}): "
                 + _scores(classes)
                 + "; a predicted label without a class counts as unassigned",
                 _left_out(classes), f"Cell type: {_brief(m)}"]
    elif label_source == CONSENSUS and consensus:
        lines = [f"Majority voting over {consensus.get('clusters', '?')} clusters: "
                 + _scores(shown_metrics(m, CONSENSUS)), f"Per cell: {_brief(m)}"]
    else:
        lines = [_scores(m)]
        if consensus:
            lines.append(f"With majority voting ({consensus.get('clusters', '?')} clusters): {_brief(consensus)}")
        if classes and partial:
            left = _left_out(classes)
            lines.append(f"At the cell-class level, not the run's score: it covers {_partial(classes)}"
                         + (f"; {left}" if left else "") + f". On those cells alone: macro-F1 "
                         f"{classes['macro_f1']:.3f} · accuracy {classes['accuracy']:.3f}")
        elif classes:
            left = _left_out(classes)
            lines.append(f"At the cell-class level: {_brief(classes)}" + (f"; {left}" if left else ""))
    if head:
        lines.append(head)
    if m.get("classes_not_in_reference"):
        lines.append("Note: true classes the reference does not have: "
                     + ", ".join(md(c) for c in m["classes_not_in_reference"]))
    return "  \n".join(filter(None, lines))


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
