"""What the fine-tuning tests of every model share: the PBMC reference and query files, the run job, the run."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np

from app.annotate import sha256_of
from inference.pipeline import AnnotationJob, DataInput, run_annotation
from tests.conftest import PBMC

TYPES = ["CD4 T", "CD14 Monocytes", "B"]
TUNING = {"kind": "fine-tune", "epochs": 2, "learning_rate": 1e-3, "frozen_layers": 1, "batch_size": 8,
          "validation_fraction": 0.2, "patience": 2}


def write_files(folder: Path, n_reference: int, n_query: int) -> tuple[Path, Path]:
    """A reference of ``n_reference`` cells of each of three types (odd cells) and a query of ``n_query`` of each
    (even cells)."""
    full = ad.read_h5ad(PBMC)
    labels = full.obs["celltype"].astype(str).to_numpy()

    def pick(start: int, n: int) -> np.ndarray:
        return np.concatenate([np.flatnonzero(labels == t)[start::2][:n] for t in TYPES])

    ref, query = folder / "reference.h5ad", folder / "query.h5ad"
    full[pick(1, n_reference)].copy().write_h5ad(ref)
    full[pick(0, n_query)].copy().write_h5ad(query)
    return ref, query


def job(model_id: str, tmp_path: Path, ref: Path, query: Path, name: str = "run", **kw) -> AnnotationJob:
    def data(p: Path) -> DataInput:
        return DataInput(str(p), p.name, sha256_of(p))

    return AnnotationJob(model_id=model_id, query=data(query), reference=data(ref), label_column="celltype",
                         truth_column="celltype", out_dir=str(tmp_path / name), heads_dir=str(tmp_path / "heads"),
                         embeddings_dir=str(tmp_path / "embeddings"), **kw)


def tuned_run(backend, model_id: str, files: tuple[Path, Path], tmp: Path):  # noqa: ANN001, ANN201
    """A fine-tuning run of ``backend`` on the files: (tmp, its job, its result, the progress events)."""
    events: list[tuple[str, int, int]] = []
    tuning = job(model_id, tmp, *files, head=dict(TUNING))
    result = run_annotation(tuning, backend, backend.provenance(), progress=lambda s, d, t: events.append((s, d, t)))
    return tmp, tuning, result, events


def probabilities(run: AnnotationJob) -> np.ndarray:
    out = ad.read_h5ad(Path(run.out_dir) / "annotated.h5ad")
    return out.obsm["prediction_probabilities"][sorted(TYPES)].to_numpy()
