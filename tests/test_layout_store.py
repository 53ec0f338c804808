"""A query's UMAP layout is computed once per stored embedding and settings and reused, on real PBMCs through the
real pipeline (issue 39, item 11); it lives and dies with the dataset's stored embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from app.annotate import sha256_of
from inference.backends import create_backend
from inference.embedding_store import EmbeddingStore
from inference.layout_store import LAYOUTS_DIR, REUSED
from inference.pipeline import AnnotationJob, DataInput, run_annotation
from tests.conftest import PBMC

BASELINE = {"checksum": "baseline:v1", "trained": True}


@pytest.fixture(scope="module")
def split_files(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("layout-split")
    full = ad.read_h5ad(PBMC)
    ref, query = folder / "reference.h5ad", folder / "query.h5ad"
    full[1::2].copy().write_h5ad(ref)
    full[0::4].copy().write_h5ad(query)
    return ref, query


def _job(tmp_path: Path, ref: Path, query: Path, name: str, model: str = "baseline", seed: int = 0) -> AnnotationJob:
    def given(path: Path) -> DataInput:
        return DataInput(str(path), path.name, sha256_of(path))

    return AnnotationJob(model_id=model, query=given(query), reference=given(ref), label_column="celltype",
                         truth_column="celltype", out_dir=str(tmp_path / name), heads_dir=str(tmp_path / "heads"),
                         embeddings_dir=str(tmp_path / "emb"), seed=seed)


def _run(job: AnnotationJob, backend, info: dict) -> tuple[dict, list[str], pd.DataFrame]:  # noqa: ANN001
    said: list[str] = []
    result = run_annotation(job, backend, info, progress=lambda stage, _d, _t: said.append(stage))
    table = pd.read_parquet(Path(job.out_dir) / "predictions.parquet", columns=["umap_1", "umap_2"])
    return result, said, table


@pytest.mark.slow
def test_a_second_run_of_the_same_query_and_model_reuses_the_layout_and_says_so(split_files, tmp_path):
    ref, query = split_files
    first, said_first, coords_first = _run(_job(tmp_path, ref, query, "first"),
                                           create_backend("baseline", None, None), BASELINE)
    umap_first = first["provenance"]["umap"]
    assert umap_first["reused"] is False and umap_first["stored"] is True
    assert f"UMAP: {REUSED}" not in said_first

    again, said_again, coords_again = _run(_job(tmp_path, ref, query, "again"),
                                           create_backend("baseline", None, None), BASELINE)
    umap_again = again["provenance"]["umap"]
    assert umap_again["reused"] is True and f"UMAP: {REUSED}" in said_again
    assert umap_again["layout_key"] == umap_first["layout_key"]
    assert umap_again["embedding_key"] == again["provenance"]["embedding"]["key"]
    assert umap_again["method"] == umap_first["method"] and umap_again["seed"] == 0
    assert np.array_equal(coords_again.to_numpy(), coords_first.to_numpy())
    saved = json.loads((tmp_path / "again" / "provenance.json").read_text())["umap"]
    assert saved["reused"] is True and saved["layout_key"] == umap_first["layout_key"]

    # another seed lays the cells out again (and keeps that layout beside the first)
    seeded, said_seeded, _ = _run(_job(tmp_path, ref, query, "seed1", seed=1),
                                  create_backend("baseline", None, None), BASELINE)
    assert seeded["provenance"]["umap"]["reused"] is False and f"UMAP: {REUSED}" not in said_seeded
    assert seeded["provenance"]["umap"]["layout_key"] != umap_first["layout_key"]


@pytest.mark.slow
def test_another_model_never_reuses_a_layout(split_files, tiny_locations, tmp_path):
    ref, query = split_files
    base, _, _ = _run(_job(tmp_path, ref, query, "base"), create_backend("baseline", None, None), BASELINE)
    backend = create_backend("geneformer", None, tiny_locations, device="cpu")
    backend.load()
    info = {"checksum": backend.weights.checksum, "trained": backend.weights.trained}
    other, said, _ = _run(_job(tmp_path, ref, query, "gf", model="geneformer"), backend, info)
    assert other["provenance"]["umap"]["reused"] is False and f"UMAP: {REUSED}" not in said
    assert other["provenance"]["umap"]["embedding_key"] != base["provenance"]["umap"]["embedding_key"]


@pytest.mark.slow
def test_a_stored_layout_counts_in_disk_use_and_goes_with_the_datasets_embeddings(split_files, tmp_path):
    ref, query = split_files
    result, _, _ = _run(_job(tmp_path, ref, query, "run"), create_backend("baseline", None, None), BASELINE)
    store = EmbeddingStore(tmp_path / "emb")
    sha = sha256_of(query)
    layout = Path(result["provenance"]["embedding"]["store"]) / LAYOUTS_DIR / result["provenance"]["umap"]["layout_key"]
    assert (layout / "coords.npy").is_file()
    entry = next(e for e in store.entries(sha) if e["digest"] == result["provenance"]["embedding"]["key"])
    assert entry["layouts"] == 1 and entry["bytes"] >= (layout / "coords.npy").stat().st_size

    dead = layout.parent / f".partial-0badc0de-{'f' * 32}"  # a writer killed mid-layout: nobody holds its lock
    dead.mkdir()
    (dead / "coords.npy").write_bytes(b"half")
    assert dead in store.remove_partials() and not dead.exists()

    size = store.size(sha)
    assert store.delete(sha) == size and not layout.exists()
    again, said, _ = _run(_job(tmp_path, ref, query, "again"), create_backend("baseline", None, None), BASELINE)
    assert again["provenance"]["umap"]["reused"] is False and f"UMAP: {REUSED}" not in said
