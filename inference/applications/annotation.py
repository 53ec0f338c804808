"""Cell type annotation: a label per cell learnt from a labelled reference (or a 70/30 split of the query).

The science lives in ``inference/pipeline.py`` (embed, head, predict, UMAP, files); this module is its
Application: what a submission needs, how it is checked, and which part runs on the model's actor and which
on any worker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inference.applications.base import (
    Accepted,
    Application,
    ModelCannotUse,
    Outcome,
    RunRequest,
    ShouldStop,
    StageProgress,
    SubmissionError,
)
from inference.checks import LABEL_MAX_CLASSES, LABEL_MIN_CLASSES, CheckReport
from inference.counts import AnnotationError
from inference.embedding_store import EMBEDDINGS_DIR
from inference.finetune import ADAPTERS as FINE_TUNABLE
from inference.finetune import can_fine_tune
from inference.finetune_head import FINE_TUNE_OPTIONS, head_options
from inference.heads import DEFAULT_HEAD, FINE_TUNE, HEAD_OPTIONS, head_settings
from inference.heads.knn import resolve_k
from inference.pipeline import (
    MAX_REFERENCE_CELLS,
    MIN_ANNOTATOR_GENE_SHARE,
    AnnotationJob,
    DataInput,
    Prediction,
    Stage,
    finish,
    predict,
    sample_sizes,
    training_counts,
)


class CellTypeAnnotation(Application):
    id = "cell-type-annotation"
    name = "Cell type annotation"
    description = "Label every cell of a query dataset with a cell type learned from a labelled reference."
    stages = {Stage.CHECKING: 0.02, Stage.EMBEDDING_REFERENCE: 0.33, Stage.TRAINING_HEAD: 0.05,
              Stage.EMBEDDING_QUERY: 0.33, Stage.PREDICTING: 0.02, Stage.MAJORITY_VOTING: 0.02, Stage.UMAP: 0.12,
              Stage.WRITING: 0.06}
    downloads = ("h5ad", "csv", "cellxgene")

    def validate(self, request: RunRequest) -> Accepted:
        if request.annotator is not None:
            return self._validate_annotator(request)
        query, reference, label_column = request.query, request.reference, request.label_column
        labels_from = reference or query
        columns = CheckReport(labels_from.check_report).label_columns
        if not label_column:
            raise SubmissionError("Give the label column of the " + (
                "reference." if reference else
                "query (evaluation mode: without a reference, the query's own labels are split 70/30)."))
        why = CheckReport(labels_from.check_report).rejected_label_columns.get(label_column)
        if label_column not in columns and why:
            raise SubmissionError(
                f"{label_column!r} in {labels_from.file_name} cannot be used as labels: {why}. Label columns need "
                f"{LABEL_MIN_CLASSES}-{LABEL_MAX_CLASSES} classes; this file's are: {', '.join(columns) or 'none'}.")
        if label_column not in columns:
            raise SubmissionError(f"{label_column!r} is not a label column of {labels_from.file_name}; its label "
                                  f"columns are: {', '.join(columns) or 'none'}.")
        truth = request.truth_column
        if truth and truth not in CheckReport(query.check_report).label_columns:
            raise SubmissionError(f"{truth!r} is not a label column of the query {query.file_name}.")
        for ds in filter(None, (query, reference)):
            overlap = CheckReport(ds.check_report).overlap.get(request.model.backend)
            if overlap and not overlap["ok"]:
                raise ModelCannotUse(f"{request.model.name} cannot use {ds.file_name}: {overlap['message']}")
        options = request.options
        threshold = _fraction(options, "confidence_threshold", 0.5,
                              "below it a cell's best class is too unsure to call")
        novelty = _fraction(options, "novelty_threshold", 0.0,
                            "cells fitting the reference less than this are left unassigned; 0 leaves none")
        try:
            seed = int(options.get("seed", 0))
        except (TypeError, ValueError):
            raise SubmissionError("seed must be a whole number.") from None
        cap = _max_reference_cells(options)
        classes = CheckReport(labels_from.check_report).label_columns.get(label_column, {})
        head = _head(options, sample_sizes(classes, cap),
                     evaluation=reference is None, file_name=labels_from.file_name)
        if head["kind"] == FINE_TUNE and not can_fine_tune(request.model.backend):
            raise SubmissionError(f"{request.model.name} cannot be fine-tuned here: head = fine-tune is offered for "
                                  f"{', '.join(FINE_TUNABLE)}. Use the logistic_regression or knn head.")
        voting = options.get("majority_voting", False)
        if not isinstance(voting, bool):
            raise SubmissionError("majority_voting must be true or false.")
        return Accepted(parameters={"confidence_threshold": threshold, "novelty_threshold": novelty, "seed": seed,
                                    "head": head, "majority_voting": voting,
                                    "max_reference_cells": cap,
                                    "evaluation_mode": reference is None},
                        label_column=label_column, truth_column=truth or (label_column if reference is None else None),
                        cells_total=int(query.n_cells or 0))

    def _validate_annotator(self, request: RunRequest) -> Accepted:
        a, query = request.annotator, request.query
        if request.reference is not None:
            raise SubmissionError("Give a reference or an annotator, not both: an annotator is a head already "
                                  "trained on its reference.")
        if request.model.id != a.model_id:
            raise SubmissionError(f"Annotator {a.name!r} reads {a.model_id}'s embeddings: choose the model "
                                  f"{a.model_id}, not {request.model.id}.")
        if {"head", "k", "max_reference_cells", *FINE_TUNE_OPTIONS} & set(request.options):
            raise SubmissionError(f"Annotator {a.name!r} brings its own head: leave head, k, max_reference_cells "
                                  "and the fine-tuning options out.")
        truth = request.truth_column
        if truth and truth not in CheckReport(query.check_report).label_columns:
            raise SubmissionError(f"{truth!r} is not a label column of the query {query.file_name}.")
        overlap = CheckReport(query.check_report).overlap.get(request.model.backend)
        if overlap and not overlap["ok"]:
            raise ModelCannotUse(f"{request.model.name} cannot use {query.file_name}: {overlap['message']}")
        shared = annotator_genes_shared(a.head_path, query.path, query.file_name)
        if shared and shared[0] < MIN_ANNOTATOR_GENE_SHARE * shared[1]:
            raise ModelCannotUse(
                f"Annotator {a.name!r} cannot use {query.file_name}: of the {shared[1]:,} genes it reads, the file "
                f"has {shared[0]:,} (needs at least {MIN_ANNOTATOR_GENE_SHARE:.0%}); check that the genes are human "
                "and named by Ensembl id or current symbol, as in the reference it learnt from.")
        options = request.options
        threshold = _fraction(options, "confidence_threshold", 0.5,
                              "below it a cell's best class is too unsure to call")
        novelty = _fraction(options, "novelty_threshold", 0.0,
                            "cells fitting the reference less than this are left unassigned; 0 leaves none")
        voting = options.get("majority_voting", False)
        if not isinstance(voting, bool):
            raise SubmissionError("majority_voting must be true or false.")
        try:
            seed = int(options.get("seed", 0))
        except (TypeError, ValueError):
            raise SubmissionError("seed must be a whole number.") from None
        return Accepted(parameters={"confidence_threshold": threshold, "novelty_threshold": novelty, "seed": seed,
                                    "majority_voting": voting, "evaluation_mode": False,
                                    "annotator": {"id": a.id, "name": a.name}},
                        label_column=a.label_column, truth_column=truth or None,
                        cells_total=int(query.n_cells or 0))

    def job(self, request: RunRequest, accepted: Accepted, out_dir: Path, home: Path) -> AnnotationJob:
        def inp(ds) -> DataInput:  # noqa: ANN001 - a DatasetInfo
            return DataInput(ds.path, ds.file_name, ds.sha256)

        p = accepted.parameters
        return AnnotationJob(model_id=request.model.id, query=inp(request.query),
                             reference=inp(request.reference) if request.reference else None,
                             label_column=accepted.label_column,
                             truth_column=accepted.truth_column if request.reference or request.annotator else None,
                             out_dir=str(out_dir), heads_dir=str(home / "heads"),
                             embeddings_dir=str(home / EMBEDDINGS_DIR),
                             confidence_threshold=p.get("confidence_threshold", 0.5), seed=p.get("seed", 0),
                             novelty_threshold=p.get("novelty_threshold", 0.0),
                             head=p.get("head") or head_settings(), majority_voting=p.get("majority_voting", False),
                             max_reference_cells=p.get("max_reference_cells", MAX_REFERENCE_CELLS) or None,
                             **({"annotator_head": request.annotator.head_path,
                                 "annotator_checksum": request.annotator.model_checksum,
                                 "annotator_name": request.annotator.name,
                                 "ontology": dict(request.annotator.ontology)} if request.annotator else {}))

    def model_phase(self, job: AnnotationJob, backend: Any, model_info: dict, workdir: Path,
                    progress: StageProgress, should_stop: ShouldStop) -> None:
        predict(job, backend, model_info, progress=progress, should_stop=should_stop, workdir=workdir).save(workdir)

    def cpu_phase(self, job: AnnotationJob, workdir: Path, progress: StageProgress,
                  should_stop: ShouldStop) -> Outcome:
        result = finish(job, Prediction.load(workdir), progress=progress, should_stop=should_stop)
        return Outcome(n_cells=result["n_cells"], metrics=result["metrics"], provenance=result["provenance"],
                       stage_timings=result["stage_timings"],
                       summary={"predicted_counts": result["predicted_counts"]})


def _fraction(options: dict, key: str, default: float, meaning: str) -> float:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise SubmissionError(f"{key} must be a number between 0 and 1 ({meaning}).")
    try:
        value = float(value)
    except ValueError:
        raise SubmissionError(f"{key} must be a number between 0 and 1 ({meaning}).") from None
    if not 0 <= value <= 1:
        raise SubmissionError(f"{key} must lie between 0 and 1, not {value:g} ({meaning}).")
    return value


def _max_reference_cells(options: dict) -> int:
    """At most this many labelled reference cells train the head (a sample stratified by type; 0: every cell)."""
    value = options.get("max_reference_cells", MAX_REFERENCE_CELLS)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SubmissionError(f"max_reference_cells must be a whole number of cells (0 trains on every labelled "
                              f"cell; by default a reference of more than {MAX_REFERENCE_CELLS:,} trains on a sample "
                              f"of that many, stratified by type), not "
                              f"{str(value)[:40]!r}.")
    return value


def _head(options: dict, class_counts: dict[str, int], evaluation: bool, file_name: str) -> dict:
    """The head's settings, checked against the reference's class sizes (in evaluation mode, the sizes of the
    training split) so an impossible k is refused before anything runs."""
    kind = options.get("head", DEFAULT_HEAD["kind"])
    if not isinstance(kind, str) or kind not in HEAD_OPTIONS:
        raise SubmissionError(f"head must be one of {', '.join(HEAD_OPTIONS)} (got {str(kind)[:40]!r}).")
    tuning = sorted(set(options) & FINE_TUNE_OPTIONS)
    if kind == FINE_TUNE:
        if "k" in options:
            raise SubmissionError("k applies to the knn head only: leave it out with head = fine-tune.")
        try:
            return head_options(options)
        except AnnotationError as exc:
            raise SubmissionError(str(exc)) from None
    if tuning:
        raise SubmissionError(f"{', '.join(tuning)} apply to head = fine-tune only: add it, or leave them out.")
    k = options.get("k")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int)):
        raise SubmissionError("k (the number of neighbours of the knn head) must be a whole number.")
    if k is not None and kind != "knn":
        raise SubmissionError("k applies to the knn head only: add head = knn, or leave k out.")
    settings = head_settings(kind, k)
    if kind == "knn" and class_counts:
        counts = training_counts(class_counts) if evaluation else class_counts
        where = f"In the training split of {file_name}" if evaluation else f"In {file_name}"
        try:
            settings["k"] = resolve_k(k, counts)
        except AnnotationError as exc:
            raise SubmissionError(f"{where}: {exc}") from None
    return settings


def annotator_genes_shared(head_path: str, data_path: str, file_name: str) -> tuple[int, int] | None:
    """(genes of the file among those the annotator's model learnt, those genes) for an annotator whose model
    learnt its genes from the reference (the baseline); None for the others (their vocabulary is checked at
    upload). Reads the file's gene table only."""
    import numpy as np

    from inference.backends.baseline import gene_keys
    from inference.readers import open_anndata

    with np.load(head_path, allow_pickle=False) as z:
        if "extra__genes" not in z.files:
            return None
        genes = set(map(str, z["extra__genes"]))
    adata, _ = open_anndata(data_path, file_name, backed=True)
    try:
        present = len(genes & set(gene_keys(adata)))
    finally:
        if getattr(adata, "file", None) is not None and adata.isbacked:
            adata.file.close()
    return present, len(genes)
