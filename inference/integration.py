"""The integration pipeline: one model's embedding of a multi-batch dataset, scored with the scIB metrics.

The model's part (on its actor) embeds the dataset through the embedding store (nothing is embedded twice, for any
application) and, for an integration method (Harmony), corrects it across batches. The CPU part lays out a UMAP,
scores the embedding with scib-metrics against the dataset's uncorrected PCA (the baseline's, from the same store)
and writes the run's files at once. Paths and parameters in, files out: no database, no web.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import pandas as pd

from inference.backends.base import Backend, ShouldStop, check_stop
from inference.counts import AnnotationError, Counts, DataInput
from inference.embedding import REUSED, Embedded, embed_dataset, embedding_key
from inference.embedding_store import EmbeddingKey, EmbeddingStore, StoredEmbedding
from inference.prediction import file_of
from inference.run_files import ANNOTATED, EMBEDDINGS, METRICS, PREDICTIONS, PROVENANCE, atomic_folder, write_text
from inference.timing import StageProgress, StageTimer

INTEGRATED = "integration.npy"  # the model phase's embedding, handed to the CPU phase in the staging folder
HANDOVER = "integration.json"
NO_LABEL = ""


class Stage(StrEnum):
    """The stages of an integration run, in order (progress words and stage-timing keys)."""

    CHECKING = "checking"
    EMBEDDING = "embedding"
    INTEGRATING = "integrating"
    UNINTEGRATED = "uncorrected PCA"
    METRICS = "integration metrics"
    UMAP = "UMAP"
    WRITING = "writing"


@dataclass
class IntegrationJob:
    model_id: str
    data: DataInput
    batch_column: str
    out_dir: str
    label_column: str | None = None
    embeddings_dir: str | None = None
    seed: int = 0
    max_metric_cells: int | None = None  # None: the metrics module's default sampling rule
    umap: dict | None = None


def obs_column(obs: pd.DataFrame, column: str, what: str) -> np.ndarray:
    """A column of the file's cells as strings; a missing value is refused with the count (a batch must be known
    for every cell), except for cell types, where it stays empty and the cell is left out of the label metrics."""
    if column not in obs.columns:
        raise AnnotationError(f"The file has no column {column!r} in obs; its columns are "
                              f"{', '.join(map(str, obs.columns)) or 'none'}.")
    values = obs[column]
    missing = int(values.isna().sum())
    if missing and what == "batch":
        raise AnnotationError(f"{missing:,} cells have no value in the batch column {column!r}: give every cell "
                              "a batch (e.g. 'unknown') or pick another column.")
    return values.astype(str).where(values.notna(), NO_LABEL).to_numpy().astype(str)


def embed_cells(cells: Counts, backend: Backend, model_info: dict, sha256: str, store: EmbeddingStore | None,
                timer: StageTimer, should_stop: ShouldStop | None, workdir: Path | None = None) -> Embedded:
    """The dataset's embedding by ``backend``, through the store. A backend that learns from its data (the
    baseline: genes, scaling, PCA) is fitted on this dataset itself, and keyed by what it fits with, so a stored
    entry is found without reading the counts again."""
    def reused() -> None:
        timer.say(REUSED, cells.n_obs, cells.n_obs)

    key = dataset_key(backend, model_info, sha256)
    prepare = (lambda: backend.fit(cells.whole())) if backend.has_state else None
    return embed_dataset(cells, backend, timer.report, should_stop, store, key, workdir, prepare=prepare,
                         on_reused=reused)


def dataset_key(backend: Backend, model_info: dict, sha256: str) -> EmbeddingKey:
    """The store's key of ``backend``'s embedding of a whole dataset: a backend that learns from its data is keyed
    by what it fits with (fitted on the dataset itself), the others as annotation keys them."""
    if backend.has_state:
        return EmbeddingKey(str(model_info.get("checksum", backend.key)), backend.variant or "",
                            backend.embedding_precision, sha256, {"fitted_on": "the dataset itself",
                                                                  **backend.fit_settings()})
    return embedding_key(backend, model_info, sha256)


def correction_key(job: IntegrationJob, backend: Backend, model_info: dict, input_key: dict | None) -> EmbeddingKey:
    """The store's key of an integration method's correction: its input's key, the batch column, seed, method."""
    settings = {"input": input_key, "batch_column": job.batch_column, "seed": job.seed,
                "method": model_info.get("integration", backend.key)}
    return EmbeddingKey(f"{backend.key}-correction", "", "fp32", job.data.sha256, settings)


def _all_stored(job: IntegrationJob, backend: Backend, model_info: dict,
                store: EmbeddingStore | None) -> Embedded | None:
    """The dataset's embedding when the store has everything this model's run needs (and its correction, for a
    method that corrects): then the run opens no file at all, which keeps a second run's model phase at
    milliseconds. None when anything is missing (the ordinary path then computes it, under the key's lock)."""
    if store is None:
        return None
    found = store.get(dataset_key(backend, model_info, job.data.sha256))
    if found is None:
        return None
    embedded = Embedded(found.features, found.basis, found.genes_used, True, found.provenance())
    if backend.corrects_batches and store.get(correction_key(job, backend, model_info,
                                                             embedded.provenance.get("key"))) is None:
        return None
    return embedded


def embed_model(job: IntegrationJob, backend: Backend, model_info: dict, workdir: Path,
                progress: StageProgress | None = None, should_stop: ShouldStop | None = None) -> None:
    """The model's part: the dataset's embedding (from the store or computed into it), corrected across batches
    by an integration method; handed over in ``workdir``."""
    timer = StageTimer(progress)
    timer.stage(Stage.CHECKING)
    store = EmbeddingStore(job.embeddings_dir) if job.embeddings_dir else None
    embedded = _all_stored(job, backend, model_info, store)
    batch: np.ndarray | None = None
    if embedded is not None:
        n = len(embedded.features)
        timer.stage(Stage.EMBEDDING, 0, n)
        timer.say(REUSED, n, n)
    else:
        with Counts(job.data) as cells:
            batch = obs_column(cells.obs, job.batch_column, "batch")
            check_stop(should_stop)
            timer.stage(Stage.EMBEDDING, 0, cells.n_obs)
            embedded = embed_cells(cells, backend, model_info, job.data.sha256, store, timer, should_stop)
    embedding = embedded.basis
    provenance = {"embedding": {**embedded.provenance, "dims_used": int(embedding.shape[1])},
                  "genes_used": embedded.genes_used}
    if backend.corrects_batches:
        timer.stage(Stage.INTEGRATING)
        embedding, provenance["integration"] = _corrected(job, backend, model_info, embedded, batch, store)
    check_stop(should_stop)
    timer.finish()
    _link_or_save(embedding, workdir / INTEGRATED)
    (workdir / HANDOVER).write_text(json.dumps({
        "provenance": {"model": {"id": job.model_id, **model_info}, "backend": backend.describe(), **provenance},
        "timings": timer.timings}, default=str))


def _corrected(job: IntegrationJob, backend: Backend, model_info: dict, embedded: Embedded,
               batch: np.ndarray | None, store: EmbeddingStore | None) -> tuple[np.ndarray, dict]:
    """The integration method's correction, itself kept in the store (keyed by its input and the batch column).
    ``batch`` None: not read yet (the store had the correction a moment ago); read only if it has gone since."""
    key = correction_key(job, backend, model_info, embedded.provenance.get("key"))
    if store is None:
        return backend.correct(embedded.basis, _batch(job, batch), job.seed), {"reused": False}
    with store.claim(key, len(embedded.basis)) as got:
        if isinstance(got, StoredEmbedding):
            return got.features, got.provenance()
        got.write(0, backend.correct(np.asarray(embedded.basis), _batch(job, batch), job.seed))
    stored = store.get(key)
    return stored.features, {**stored.provenance(), "reused": False}


def _batch(job: IntegrationJob, batch: np.ndarray | None) -> np.ndarray:
    if batch is not None:
        return batch
    with Counts(job.data) as cells:
        return obs_column(cells.obs, job.batch_column, "batch")


def _link_or_save(array: np.ndarray, path: Path) -> None:
    """A stored (immutable) embedding is hard-linked, not copied; an array in memory is saved."""
    path.unlink(missing_ok=True)
    source = file_of(array)
    if source is not None and array.shape == np.load(source, mmap_mode="r").shape:
        try:
            os.link(source, path)
            return
        except OSError:
            shutil.copyfile(source, path)
            return
    np.save(path, np.asarray(array, dtype=np.float32))


def unintegrated_pcs(job: IntegrationJob, cells: Counts, timer: StageTimer,
                     should_stop: ShouldStop | None) -> np.ndarray:
    """The dataset's uncorrected PCA (the baseline's 50 PCs, fitted on the dataset): scib's pre-integration
    embedding for the PCR comparison. From the store when a baseline or Harmony run made it."""
    from inference.backends.baseline import BaselineBackend

    baseline = BaselineBackend(seed=0)
    store = EmbeddingStore(job.embeddings_dir) if job.embeddings_dir else None
    return embed_cells(cells, baseline, baseline.provenance(), job.data.sha256, store, timer, should_stop).basis


def finish_integration(job: IntegrationJob, workdir: Path, progress: StageProgress | None = None,
                       should_stop: ShouldStop | None = None) -> dict[str, object]:
    """The CPU part: the uncorrected PCA, the scIB metrics, the UMAP, every file published at once."""
    from inference.integration_metrics import integration_metrics
    from inference.layout_store import REUSED as LAYOUT_REUSED
    from inference.layout_store import stored_umap

    handover = json.loads((workdir / HANDOVER).read_text())
    timer = StageTimer(progress)
    timer.timings.update(handover["timings"])
    embedding = np.load(workdir / INTEGRATED, mmap_mode="r")
    timer.stage(Stage.UNINTEGRATED)
    with Counts(job.data) as cells:
        batch = obs_column(cells.obs, job.batch_column, "batch")
        labels = obs_column(cells.obs, job.label_column, "cell type") if job.label_column else None
        cell_ids = cells.obs_names.to_numpy().astype(str)
        unintegrated = unintegrated_pcs(job, cells, timer, should_stop)
    check_stop(should_stop)
    timer.stage(Stage.METRICS)
    labelled = labels != NO_LABEL if labels is not None else np.ones(len(batch), dtype=bool)
    scores = integration_metrics(np.asarray(embedding[labelled]), batch[labelled],
                                 labels[labelled] if labels is not None else None,
                                 np.asarray(unintegrated[labelled]), seed=job.seed, max_cells=job.max_metric_cells,
                                 progress=lambda said, done, total: _metric_progress(timer, said, done, total),
                                 should_stop=should_stop)
    metrics = {**scores, "batch_column": job.batch_column, "label_column": job.label_column,
               "cells_scored": int(labelled.sum()), "batches": _counts(batch),
               **({"cell_types": _counts(labels[labelled])} if labels is not None else {})}
    check_stop(should_stop)
    timer.stage(Stage.UMAP)
    laid_out = handover["provenance"].get("integration") or handover["provenance"].get("embedding")
    coords, umap_info = stored_umap(np.asarray(embedding), job.seed, job.umap, laid_out,
                                    on_reused=lambda: timer.say(LAYOUT_REUSED, len(embedding), len(embedding)))
    check_stop(should_stop)
    timer.stage(Stage.WRITING)
    provenance = {**handover["provenance"], "inputs": {"data": asdict(job.data), "batch_column": job.batch_column,
                                                       "label_column": job.label_column},
                  "parameters": {"seed": job.seed, "max_metric_cells": job.max_metric_cells},
                  "metrics_sample": scores.get("sample"), "umap": umap_info}
    _write(job, cell_ids, batch, labels, embedding, coords, metrics, provenance)
    timer.finish()
    provenance["stage_timings"] = timer.timings
    write_text(Path(job.out_dir) / PROVENANCE, json.dumps(provenance, indent=2, default=str))
    return {"metrics": metrics, "provenance": provenance, "n_cells": len(cell_ids), "stage_timings": timer.timings}


def _metric_progress(timer: StageTimer, said: str, done: int, total: int) -> None:
    """The metric running now in the stage's words ("integration metrics: KBET (8 of 10)"), else the count."""
    _, _, what = said.partition(": ")
    if what:
        timer.say(what, done, total)
    else:
        timer.report(done, total)


def _counts(values: np.ndarray) -> dict[str, int]:
    return {str(k): int(v) for k, v in pd.Series(values).value_counts().items()}


def _write(job: IntegrationJob, cell_ids: np.ndarray, batch: np.ndarray, labels: np.ndarray | None,
           embedding: np.ndarray, coords: np.ndarray, metrics: dict, provenance: dict) -> None:
    """The per-cell table (batch, cell type, UMAP), the embedding, metrics, provenance and the annotated file
    (``obsm['X_<model>']``, ``obsm['X_umap']``, the metrics in ``uns``), published at once."""
    from inference.annotated import write_annotated
    from inference.result_writer import PARQUET_ROW_GROUP

    trained = bool(provenance["model"].get("trained", True))
    with atomic_folder(Path(job.out_dir)) as staging:
        table = pd.DataFrame({"cell_id": cell_ids, "batch": batch, "umap_1": coords[:, 0], "umap_2": coords[:, 1]})
        if labels is not None:
            table.insert(2, "cell_type", labels)
        table.to_parquet(staging / PREDICTIONS, index=False, row_group_size=PARQUET_ROW_GROUP)
        _link_or_save(embedding, staging / EMBEDDINGS)
        (staging / METRICS).write_text(json.dumps(metrics, indent=2))
        (staging / PROVENANCE).write_text(json.dumps(provenance, indent=2, default=str))
        uns = {"helical_platform": {
            "application": "embedding-integration", "model": job.model_id,
            "weights": "trained" if trained else "generated, untrained: this embedding means nothing",
            "integration_metrics_json": json.dumps(metrics),
            "provenance_json": json.dumps(provenance, default=str)}}
        write_annotated(Path(job.data.path), job.data.name, staging / ANNOTATED, {},
                        {f"X_{job.model_id}": embedding, "X_umap": coords}, uns)
