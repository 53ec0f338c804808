"""Annotating files from the command line, in this process (the runs service sends the same job to Dask)."""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
from pathlib import Path

from app.settings import Settings
from inference.backends import BACKENDS, Backend, create_backend
from inference.checks import Vocabulary
from inference.pipeline import AnnotationJob, DataInput, run_annotation
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
    for backend, variant in (("geneformer", None), ("scgpt", None)):
        try:
            from inference.weights import DEFAULT_GENEFORMER, SCGPT_VARIANT

            w = locations.resolve(backend, variant or (DEFAULT_GENEFORMER if backend == "geneformer"
                                                       else SCGPT_VARIANT), verify=False)
        except WeightsError:
            continue
        kind, genes = vocabulary_genes(w)
        out[backend] = Vocabulary(kind, genes)
    return out


def annotate_files(settings: Settings, model: str, query: Path, out: Path, label_column: str,
                   reference: Path | None = None, truth_column: str | None = None, write_csv: bool = False,
                   confidence_threshold: float = 0.5, seed: int = 0) -> dict[str, object]:
    from app.weights import weights_locations

    backend_name, variant = parse_model(model)
    locations = weights_locations(settings)

    def progress(stage: str, done: int, total: int) -> None:
        counted = f" {done}/{total} cells" if total else ""
        print(f"[{stage}]{counted}", file=sys.stderr, flush=True)

    backend, info = build_backend(backend_name, variant, locations, settings.device)
    store = ArtifactStore(settings.home)
    heads = store.home / "heads"
    with tempfile.TemporaryDirectory(prefix="annotate-", dir=store.home / "tmp") as tmp:
        job = AnnotationJob(
            model_id=backend_name, query=DataInput(str(query), query.name, sha256_of(query)),
            label_column=label_column, out_dir=str(Path(tmp) / "result"), truth_column=truth_column,
            reference=DataInput(str(reference), reference.name, sha256_of(reference)) if reference else None,
            heads_dir=str(heads), confidence_threshold=confidence_threshold, seed=seed, write_csv=write_csv)
        result = run_annotation(job, backend, info, progress=progress)
        with atomic_path(out) as tmp_out:
            shutil.copyfile(Path(tmp) / "result" / ANNOTATED, tmp_out)
        if write_csv:
            with atomic_path(out.with_suffix(".csv")) as tmp_csv:
                shutil.copyfile(Path(tmp) / "result" / CSV, tmp_csv)
    return result
