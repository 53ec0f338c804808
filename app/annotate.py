"""Annotating files from the command line, in this process (the runs service sends the same job to Dask)."""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from app.catalog import CELL_TYPE_ANNOTATION
from app.settings import Settings
from inference import applications
from inference.applications.base import AnnotatorInfo, DatasetInfo, ModelInfo, RunRequest
from inference.backends import BACKENDS, Backend, create_backend
from inference.checks import CheckReport, Vocabulary, check_file
from inference.heads import FINE_TUNE
from inference.run_files import ANNOTATED, CSV, atomic_path
from inference.weights import WeightsError, WeightsLocations, vocabulary_genes
from store.artifacts import ArtifactStore


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f.relative_to(path).as_posix().encode())
            digest.update(sha256_of(f).encode())
        return digest.hexdigest()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _print_progress(stage: str, done: int, total: int) -> None:
    counted = f" {done}/{total}" if total else ""
    print(f"[{stage}]{counted}", file=sys.stderr, flush=True)


def parse_model(model: str) -> tuple[str, str | None]:
    """``geneformer``, ``geneformer:gf-12L-38M-i4096``, ``scgpt`` or ``baseline`` -> (backend, variant)."""
    backend, _, variant = model.partition(":")
    if backend not in BACKENDS:
        raise ValueError(f"Unknown model {model!r}: choose {', '.join(BACKENDS)} (geneformer[:VARIANT]).")
    return backend, variant or None


def build_backend(backend: str, variant: str | None, locations: WeightsLocations,
                  device: str = "auto") -> tuple[Backend, dict[str, object]]:
    """A loaded backend and what a result must record about it (checksum, trained or generated)."""
    b = create_backend(backend, variant, locations, device=device)
    b.load()
    return b, b.provenance()


def vocabularies(locations: WeightsLocations) -> dict[str, Vocabulary]:
    """Vocabularies of the models whose weights are present (for the overlap part of the check)."""
    out = {}
    for backend, (_, _, default_variant, _) in BACKENDS.items():
        if default_variant is None:  # no weights, no vocabulary of its own
            continue
        try:
            w = locations.resolve(backend, default_variant, verify=False)
        except WeightsError:
            continue
        kind, genes = vocabulary_genes(w)
        out[backend] = Vocabulary(kind, genes)
    return out


def _dataset(path: Path, vocab: dict[str, Vocabulary]) -> DatasetInfo:
    """A file given on the command line, checked as an upload is, and described as a stored dataset is."""
    report = check_file(path, path.name, vocab)
    checked = CheckReport(report)
    if not checked.ok:
        raise ValueError(f"{path.name} cannot be used: {checked.problems()}")
    return DatasetInfo(id="", file_name=path.name, path=str(path), sha256=sha256_of(path),
                       n_cells=checked.n_cells, check_report=report)


def annotate_files(settings: Settings, model: str | None, query: Path, out: Path, label_column: str | None,
                   reference: Path | None = None, truth_column: str | None = None, write_csv: bool = False,
                   confidence_threshold: float = 0.5, seed: int = 0,
                   options: dict | None = None, annotator: str | None = None,
                   cellxgene: bool = False, truth_ontology: dict[str, str | None] | None = None) -> dict[str, object]:
    """The same application, checks and job as a served run, in this process (no Dask, no database).
    ``options`` are the run's other options, as the API takes them (head, k, majority_voting, novelty_threshold).
    ``truth_ontology``: true label -> CL id (None: unmapped) for the cell-class scores, over the suggestions."""
    from app.runs import truth_ontology as truth_terms
    from app.runs import with_truth_ontology
    from app.weights import weights_locations

    use = _annotator(settings, annotator) if annotator else None
    if use is not None and model is None:
        model = use.model_id + (f":{use.variant}" if use.variant else "")
    if model is None:
        raise ValueError("Give --model (or --annotator, which names its model).")
    backend_name, variant = parse_model(model)
    locations = weights_locations(settings)

    application = applications.get(CELL_TYPE_ANNOTATION)
    vocab = vocabularies(locations)
    request = RunRequest(ModelInfo(backend_name, model, backend_name), _dataset(query, vocab),
                         _dataset(reference, vocab) if reference else None, label_column, truth_column,
                         {**(options or {}), "confidence_threshold": confidence_threshold, "seed": seed},
                         use.info if use else None)
    accepted = application.validate(request)
    terms = truth_terms(request, accepted.truth_column, truth_ontology)
    backend, info = build_backend(backend_name, variant, locations, settings.device)
    store = ArtifactStore(settings.home)
    with tempfile.TemporaryDirectory(prefix="annotate-", dir=store.home / "tmp") as tmp:
        result_dir, work = Path(tmp) / "result", Path(tmp) / "work"
        work.mkdir()
        job = replace(with_truth_ontology(application.job(request, accepted, result_dir, store.home), terms),
                      write_csv=write_csv)
        application.model_phase(job, backend, info, work, _print_progress, lambda: False)
        outcome = application.cpu_phase(job, work, _print_progress, lambda: False)
        with atomic_path(out) as tmp_out:
            shutil.copyfile(result_dir / ANNOTATED, tmp_out)
        if write_csv:
            with atomic_path(out.with_suffix(".csv")) as tmp_csv:
                shutil.copyfile(result_dir / CSV, tmp_csv)
        if cellxgene:
            from inference.cellxgene import cellxgene_from_result

            cellxgene_from_result(result_dir, out.with_suffix(".cellxgene.h5ad"))
    return {"metrics": outcome.metrics, "provenance": outcome.provenance, **outcome.summary,
            **({"truth_ontology": terms} if terms else {})}


@dataclass(frozen=True)
class _Use:
    info: AnnotatorInfo
    model_id: str
    variant: str


def _annotator(settings: Settings, id_or_name: str) -> _Use:
    """A saved annotator of this data home, as a run uses it."""
    from app.platform import Platform

    platform = Platform(settings, start_cluster=False)
    try:
        a = platform.annotators.get(id_or_name)
        use = platform.annotators.use(a.id)
    finally:
        platform.close()
    return _Use(use, a.model_id, a.variant)


def train_annotator(settings: Settings, model: str, reference: Path, label_column: str, name: str,
                    head: dict, description: str = "", author: str = "", ontology: dict | None = None,
                    seed: int = 0) -> dict[str, object]:
    """Train a head on a reference file in this process and save it as an annotator of this data home."""
    import io

    from app.annotators import annotator_json, check_name, check_ontology
    from app.platform import Platform
    from app.weights import weights_locations
    from inference.counts import Counts, DataInput
    from inference.heads.base import class_counts
    from inference.heads.knn import resolve_k
    from inference.pipeline import _labels
    from inference.reference import Reference, train_head

    check_name(name)
    backend_name, variant = parse_model(model)
    ref = _dataset(reference, vocabularies(weights_locations(settings)))
    if label_column not in CheckReport(ref.check_report).label_columns:
        raise ValueError(f"{label_column!r} is not a label column of {reference.name}; its label columns are: "
                         f"{', '.join(CheckReport(ref.check_report).label_columns) or 'none'}.")
    with Counts(DataInput(str(reference), reference.name, ref.sha256)) as counts:
        column = _labels(counts, label_column, "reference")
        keep = column.notna().to_numpy()
        sample = Reference(counts, keep, column[keep].astype(str).to_numpy(), ref.sha256, seed=seed)
        check_ontology(ontology, class_counts(sample.labels))  # refused before anything is read or embedded
        cells, labels = sample.read(), sample.trained_labels  # a sample of a large one, read a block at a time
    if head.get("kind") == "knn":
        head = {**head, "k": resolve_k(head.get("k"), class_counts(labels))}
    backend, info = build_backend(backend_name, variant, weights_locations(settings), settings.device)
    if head.get("kind") == FINE_TUNE:  # the model itself trained on the reference; its backbone goes in the head
        from inference.finetune import adapter_module
        from inference.finetune_head import train_fine_tuned_head
        from inference.timing import StageTimer

        adapter_module(backend_name)  # a model without fine-tuning is refused before anything runs
        trained = train_fine_tuned_head(backend, cells, labels, head, info, seed, StageTimer(_print_progress),
                                        None, None)
    else:
        trained = train_head(backend, cells, labels, head, seed)
    buffer = io.BytesIO()
    _save_npz(trained, buffer)
    platform = Platform(settings, start_cluster=False)
    try:
        entry = platform.annotators.save_head(buffer.getvalue(), {
            "name": name, "description": description, "author": author, "model_id": backend_name,
            "backend": backend_name, "variant": variant or "", "model_checksum": info.get("checksum", ""),
            "trained": bool(info.get("trained", True)), "label_column": label_column,
            "reference": {"file_name": reference.name, "sha256": ref.sha256, "cells": int(cells.n_obs),
                          **({"labelled_cells": int(len(sample.labels)), "max_cells": sample.max_cells}
                             if sample.sampled else {})},
            "ontology": ontology, "provenance": {"trained_by": "helical-platform annotators train", "head": head,
                                                 "seed": seed}})
        return annotator_json(entry)
    finally:
        platform.close()


def _save_npz(head, fh) -> None:  # noqa: ANN001 - a Head, a binary file
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "head.npz"
        head.save(path)
        fh.write(path.read_bytes())
