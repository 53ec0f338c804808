"""The annotation pipeline: reference -> head -> probabilities -> UMAP -> metrics -> result files.

Takes paths and parameters and writes a result folder; knows nothing of the database or the web. Every result
is written into a ``.partial-*`` folder renamed into place at the end, so a half-written result is never seen.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from inference.annotation_stage import Stage
from inference.backends.base import Backend, check_stop
from inference.backends.fine_tuned import for_head
from inference.calibration import reliability, uncalibrated
from inference.consensus import CLUSTER_MAX_CELLS, majority_vote, over_cluster
from inference.counts import AnnotationError, Counts, DataInput
from inference.embedding import REUSED, embed_dataset, embedding_key
from inference.embedding_store import EmbeddingStore
from inference.heads import DEFAULT_HEAD, Head
from inference.layout_store import REUSED as LAYOUT_REUSED
from inference.layout_store import stored_umap
from inference.metrics import LOW_CONFIDENCE, NOT_IN_REFERENCE, UNASSIGNED, annotation_metrics
from inference.prediction import Prediction
from inference.reference import (  # noqa: F401 - the gene share and sample sizes are this module's API too
    MAX_REFERENCE_CELLS,
    MIN_ANNOTATOR_GENE_SHARE,
    HeadRequest,
    Reference,
    annotator_head,
    check_annotator_genes,
    sample_sizes,
    trained_head,
)
from inference.result_writer import write_results
from inference.run_files import (
    PROVENANCE,
    write_text,
)
from inference.timing import StageProgress
from inference.timing import StageTimer as _Timer

QUERY_BLOCK = 10_000  # cells read, embedded and classified at a time: memory follows the block, not the file
PACKAGES = ("helical", "torch", "transformers", "scanpy", "anndata", "scikit-learn", "umap-learn", "numpy",
            "helical-platform")


@dataclass
class AnnotationJob:
    model_id: str
    query: DataInput
    label_column: str
    out_dir: str
    reference: DataInput | None = None  # None: evaluation mode on a stratified split of the query
    truth_column: str | None = None
    heads_dir: str | None = None
    embeddings_dir: str | None = None  # the data home's embedding store: embeddings computed once per dataset
    confidence_threshold: float = 0.5
    novelty_threshold: float = 0.0  # cells fitting the reference less than this are unassigned (0: none)
    head: dict = field(default_factory=lambda: dict(DEFAULT_HEAD))
    majority_voting: bool = False
    annotator_head: str | None = None  # a saved annotator's head (.npz) used instead of a reference
    annotator_checksum: str | None = None  # the weights it was trained on: other weights are refused
    annotator_name: str | None = None
    ontology: dict = field(default_factory=dict)  # label -> Cell Ontology id: adds the term and coarse class columns
    # true label -> Cell Ontology id (None: unmapped) for the class-level scores; {}: the annotator's map (runs
    # recorded before the truth had its own)
    truth_ontology: dict = field(default_factory=dict)
    seed: int = 0
    holdout_fraction: float = 0.3
    umap: dict | None = None
    write_csv: bool = False
    max_reference_cells: int | None = MAX_REFERENCE_CELLS  # beyond, a stratified sample of this many (None: all)


def _labels(adata: AnnData, column: str, what: str) -> pd.Series:
    if column not in adata.obs.columns:
        raise AnnotationError(f"The {what} has no column {column!r} in obs; its columns are "
                              f"{', '.join(map(str, adata.obs.columns)) or 'none'}.")
    labels = adata.obs[column]
    if labels.notna().sum() == 0:
        raise AnnotationError(f"The {what}'s column {column!r} has no labels (all values are missing): pick "
                              "a column that names the cell types.")
    return labels


def stratified_split(labels: pd.Series, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of held-out cells: ``fraction`` of each class with at least two labelled cells."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(labels), dtype=bool)
    values = labels.astype(object).to_numpy()
    for cls in pd.unique(labels.dropna()):
        idx = np.flatnonzero(values == cls)
        if len(idx) < 2:
            continue
        n = max(1, int(round(len(idx) * fraction)))
        held[rng.choice(idx, size=min(n, len(idx) - 1), replace=False)] = True
    return held


def training_counts(class_counts: dict[str, int], fraction: float = 0.3) -> dict[str, int]:
    """How many cells of each class ``stratified_split`` leaves for training (evaluation mode)."""
    return {c: (n - min(max(1, int(round(n * fraction))), n - 1) if n >= 2 else n)
            for c, n in class_counts.items()}


def versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def run_annotation(job: AnnotationJob, backend: Backend, model_info: dict,
                   progress: StageProgress | None = None,
                   should_stop: Callable[[], bool] | None = None) -> dict[str, object]:
    """Annotate ``job.query``; write the result folder ``job.out_dir``; return metrics, provenance, files."""
    return finish(job, predict(job, backend, model_info, progress, should_stop), progress, should_stop)


def predict(job: AnnotationJob, backend: Backend, model_info: dict, progress: StageProgress | None = None,
            should_stop: Callable[[], bool] | None = None, workdir: Path | None = None) -> Prediction:
    """The model's part: embed the reference (or reuse the cached head), train the head, embed and classify the
    query block by block, and score against the truth. With ``workdir``, the query's embeddings go to
    ``workdir/embeddings.npy`` as they are produced."""
    timer = _Timer(progress)
    timer.stage(Stage.CHECKING)
    with Counts(job.query) as query:
        if job.reference is None or job.annotator_head:
            return _predict(job, backend, model_info, query, None, timer, should_stop, workdir)
        with Counts(job.reference) as reference:
            return _predict(job, backend, model_info, query, reference, timer, should_stop, workdir)


def _predict(job: AnnotationJob, backend: Backend, model_info: dict, query: Counts, reference: Counts | None,
             timer: _Timer, should_stop: Callable[[], bool] | None, workdir: Path | None) -> Prediction:
    cells: Counts | AnnData = query
    held_out = None
    store = EmbeddingStore(job.embeddings_dir) if job.embeddings_dir else None
    if job.annotator_head:  # a saved annotator: its head instead of a reference
        head, key, head_reused, reference_cells = annotator_head(job.annotator_head, job.annotator_checksum,
                                                                 backend, model_info)
        trained_on: dict[str, object] = {"reference_cells": reference_cells}
        check_annotator_genes(backend, query)
        evaluation, truth_column = False, job.truth_column
    else:
        evaluation = reference is None
        if evaluation:  # the query is its own reference: a stratified split of it
            labels_all = _labels(query, job.label_column, "query")
            held_out = stratified_split(labels_all, job.holdout_fraction, job.seed)
            keep = ~held_out & labels_all.notna().to_numpy()
            ref = Reference(query, keep, labels_all[keep].astype(str).to_numpy(), job.query.sha256,
                            job.max_reference_cells, job.seed)
            ref_key = f"{job.query.sha256}:split:{job.holdout_fraction}:{job.seed}"
            truth_column = job.label_column
        else:
            ref_series = _labels(reference, job.label_column, "reference")
            keep = ref_series.notna().to_numpy()
            ref = Reference(reference, keep, ref_series[keep].astype(str).to_numpy(), job.reference.sha256,
                            job.max_reference_cells, job.seed)
            ref_key = job.reference.sha256
            truth_column = job.truth_column
        if len(set(ref.labels)) < 2:
            raise AnnotationError(f"The reference's column {job.label_column!r} has {len(set(ref.labels))} class; "
                                  "a classifier needs at least two cell types.")
        check_stop(should_stop)
        head, key, head_reused = trained_head(HeadRequest(job.head, job.label_column, job.heads_dir, job.seed),
                                              backend, model_info, ref, ref_key, timer, should_stop, store)
        trained_on = ref.describe()
    check_stop(should_stop)
    backend = for_head(backend, head.extra)  # a fine-tuned head embeds with its own backbone

    timer.stage(Stage.EMBEDDING_QUERY, 0, query.n_obs)
    classified: list[tuple[np.ndarray, np.ndarray]] = []
    predicting = 0.0

    def classify(_start: int, features: np.ndarray) -> None:
        nonlocal predicting
        began = time.perf_counter()
        classified.append(head.classify(features))
        predicting += time.perf_counter() - began

    embedded = embed_dataset(cells, backend, timer.report, should_stop, store,
                             embedding_key(backend, model_info, job.query.sha256) if store else None,
                             workdir, classify, QUERY_BLOCK,
                             on_reused=lambda: timer.say(REUSED, query.n_obs, query.n_obs))
    features, basis, genes_used = embedded.features, embedded.basis, embedded.genes_used
    proba = np.concatenate([c[0] for c in classified])
    timer.stage(Stage.PREDICTING)
    began = time.perf_counter()
    fit, fit_info = head.fit.score_query(np.concatenate([c[1] for c in classified]), proba.argmax(axis=1))
    timer.timings["embedding query"] = round(timer.timings["embedding query"] - predicting, 3)
    timer.timings["predicting"] = round(predicting + time.perf_counter() - began, 3)
    best = proba.argmax(axis=1)
    confidence = proba[np.arange(len(best)), best]
    confident = confidence >= job.confidence_threshold
    fits = fit >= job.novelty_threshold
    assigned = confident & fits
    predicted = np.where(assigned, head.classes[best], UNASSIGNED)
    reason = np.where(~confident, LOW_CONFIDENCE, np.where(~fits, NOT_IN_REFERENCE, ""))
    metrics: dict[str, object] = {}
    truth = None
    if truth_column:
        truth_series = _labels(cells, truth_column, "query")
        mask = truth_series.notna().to_numpy() & (held_out if evaluation else True)
        truth = truth_series.astype(str).where(truth_series.notna(), "").to_numpy().astype(str)
        metrics = annotation_metrics(truth[mask], predicted[mask])
        metrics["scope"] = "held-out split" if evaluation else "all labelled query cells"
        metrics["calibration"] = _calibration(head, proba[mask], truth[mask])
        unknown = sorted(set(truth[mask]) - set(head.classes))
        if unknown:
            metrics["classes_not_in_reference"] = unknown
    timer.finish()
    provenance = {
        "model": {"id": job.model_id, **model_info},
        "backend": backend.describe(),
        "versions": versions(),
        "inputs": {"query": asdict(job.query), "reference": asdict(job.reference) if job.reference else None,
                   "label_column": job.label_column, "truth_column": truth_column,
                   "counts_source": query.source},
        "parameters": {"confidence_threshold": job.confidence_threshold,
                       "novelty_threshold": job.novelty_threshold, "head": job.head,
                       "majority_voting": job.majority_voting, "seed": job.seed,
                       "evaluation_mode": evaluation, "query_block_cells": QUERY_BLOCK,
                       **({"holdout_fraction": job.holdout_fraction} if evaluation else {})},
        "head": {"cache_key": key, "reused": head_reused, "classes": head.classes.tolist(),
                 **trained_on, **head.describe(), "reference_fit": fit_info,
                 **({"annotator": job.annotator_name} if job.annotator_head else {})},
        "genes_used": genes_used,
        "embedding": embedded.provenance,
    }
    return Prediction(cell_ids=query.obs_names.to_numpy().astype(str), predicted=predicted.astype(str),
                      confidence=confidence.astype(np.float32), assigned=assigned, proba=proba.astype(np.float32),
                      reference_fit=fit.astype(np.float32), reason=reason.astype(str),
                      classes=head.classes.astype(str), features=features, basis=basis, truth=truth,
                      held_out=held_out, metrics=metrics, provenance=provenance, timings=timer.timings)


def _calibration(head: Head, proba: np.ndarray, truth: np.ndarray) -> dict[str, object]:
    """ECE and reliability bins of the head's top-class probability, and before temperature scaling if it had
    one (the same cells: only the confidence changes, never the call)."""
    best = proba.argmax(axis=1)
    correct = head.classes[best] == truth
    out = {**reliability(proba[np.arange(len(best)), best], correct), "head": head.classifier.kind}
    temperature = getattr(head.classifier, "temperature", None)
    if temperature is not None:
        raw = uncalibrated(proba, temperature)
        out["temperature"] = round(float(temperature), 4)
        out["ece_before_temperature"] = reliability(raw.max(axis=1), correct)["ece"]
    return out


def finish(job: AnnotationJob, p: Prediction, progress: StageProgress | None = None,
           should_stop: Callable[[], bool] | None = None) -> dict[str, object]:
    """The CPU part: UMAP, then every result file, published at once."""
    timer = _Timer(progress)
    timer.timings.update(p.timings)
    check_stop(should_stop)
    consensus = None
    if job.majority_voting:
        timer.stage(Stage.MAJORITY_VOTING)
        clusters = over_cluster(p.basis, seed=job.seed)
        consensus = (clusters, majority_vote(clusters, p.predicted))
        if p.truth is not None and p.metrics:
            mask = (p.truth != "") & (p.held_out if p.held_out is not None else True)
            p.metrics["majority_voting"] = {**annotation_metrics(p.truth[mask], consensus[1][mask]),
                                            "clusters": int(len(set(clusters))),
                                            "clustered_cells": min(len(clusters), CLUSTER_MAX_CELLS)}
        check_stop(should_stop)
    terms = _ontology_columns(job, p)
    timer.stage(Stage.UMAP)
    coords, umap_info = stored_umap(p.basis, job.seed, job.umap, p.provenance.get("embedding"),
                                    on_reused=lambda: timer.say(LAYOUT_REUSED, len(p.basis), len(p.basis)))
    check_stop(should_stop)
    timer.stage(Stage.WRITING)
    provenance = {**p.provenance, "umap": umap_info}
    files = write_results(job, p, coords, provenance, consensus, terms)
    timer.finish()
    provenance["stage_timings"] = timer.timings
    # the published folder is complete: its provenance is replaced at once, never truncated
    write_text(Path(job.out_dir) / PROVENANCE, json.dumps(provenance, indent=2, default=str))
    counts = pd.Series(p.predicted).value_counts()
    return {"metrics": p.metrics, "provenance": provenance, "files": files, "n_cells": int(len(p.cell_ids)),
            "predicted_counts": {str(k): int(v) for k, v in counts.items()}, "stage_timings": timer.timings}


def _ontology_columns(job: AnnotationJob, p: Prediction) -> dict[str, np.ndarray]:
    """The predicted labels' Cell Ontology terms and coarse classes (when the annotator maps its labels), and
    metrics at the coarse level where the truth's labels map too: through the run's own truth map (confirmed or
    suggested at submission), since the truth rarely spells its labels as the annotator does. The scores say how
    many labelled cells they cover and which true labels were left out, so a partial score is never read as the
    run's."""
    if not any(job.ontology.values()):
        return {}
    from inference.ontology import label_columns

    terms = label_columns(p.predicted, job.ontology)
    if p.truth is not None and p.metrics:
        truth_map = job.truth_ontology or job.ontology
        if job.truth_ontology:
            p.provenance.setdefault("parameters", {})["truth_ontology"] = dict(job.truth_ontology)
        truth_class = label_columns(p.truth, truth_map)["predicted_cell_class"]
        labelled = (p.truth != "") & (p.held_out if p.held_out is not None else True)
        mask = labelled & (truth_class != "")
        if mask.any():
            predicted_class = np.where(terms["predicted_cell_class"] == "", UNASSIGNED, terms["predicted_cell_class"])
            left_out = p.truth[labelled & ~mask]
            p.metrics["cell_class"] = {**annotation_metrics(truth_class[mask].astype(str),
                                                            predicted_class[mask].astype(str)),
                                       "scope": "cells whose true label maps to a Cell Ontology class",
                                       "labelled_cells": int(labelled.sum()),
                                       "left_out_cells": int(len(left_out)),
                                       "left_out_labels": sorted(set(left_out.astype(str)))}
    return terms
