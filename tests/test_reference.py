"""A large reference without its counts in memory: the head trains on at most ``cells_per_type`` cells of each
type, read from the file a block at a time; a reference under the cap trains exactly as one held in memory."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from app.annotate import sha256_of
from inference import reference as reference_module
from inference.backends import create_backend
from inference.counts import Counts, DataInput
from inference.pipeline import AnnotationJob, predict
from inference.reference import Reference, per_type_sample, read_rows, train_head
from tests.conftest import PBMC


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("reference")
    full = ad.read_h5ad(PBMC)
    ref, query = folder / "reference.h5ad", folder / "query.h5ad"
    full[1::2].copy().write_h5ad(ref)
    full[0::4].copy().write_h5ad(query)
    return ref, query


def _input(path: Path) -> DataInput:
    return DataInput(str(path), path.name, sha256_of(path))


def test_types_over_the_cap_are_sampled_to_it_and_the_others_kept_whole():
    labels = np.array(["a"] * 50 + ["b"] * 7 + ["c"] * 20)
    keep = per_type_sample(labels, 10, seed=3)
    assert [int(keep[labels == t].sum()) for t in "abc"] == [10, 7, 10]
    assert np.array_equal(keep, per_type_sample(labels, 10, seed=3))  # seeded
    assert not np.array_equal(keep, per_type_sample(labels, 10, seed=4))
    assert per_type_sample(labels, 50).all() and per_type_sample(labels, None).all()


def test_the_chosen_rows_are_read_a_block_at_a_time_and_equal_the_file_in_memory(files, monkeypatch):
    ref, _ = files
    whole = ad.read_h5ad(ref)
    rows = np.array([3, 4, 5, 61, 62, 250, 251, 298])
    read = []
    real = Counts.block
    monkeypatch.setattr(Counts, "block", lambda self, a, b: read.append((a, b)) or real(self, a, b))
    with Counts(_input(ref)) as counts:
        got = read_rows(counts, rows, block=50)
    assert read == [(0, 50), (50, 100), (250, 299)]  # blocks with none of the rows are not read
    assert (got.X != whole[rows].X).nnz == 0 and list(got.obs_names) == list(whole.obs_names[rows])
    assert got.obs["celltype"].tolist() == whole.obs["celltype"].iloc[rows].tolist()


def _job(tmp_path: Path, ref: Path, query: Path, name: str, cap: int | None, head: dict | None = None):
    kw = {"head": head} if head else {}
    return AnnotationJob(model_id="baseline", query=_input(query), reference=_input(ref), label_column="celltype",
                         truth_column="celltype", out_dir=str(tmp_path / name), heads_dir=str(tmp_path / "heads"),
                         reference_cells_per_type=cap, **kw)


@pytest.mark.parametrize("head", [None, {"kind": "knn", "k": None}], ids=["logistic", "knn"])
def test_a_reference_under_the_cap_trains_exactly_as_one_in_memory(files, tmp_path, head):
    """The file's path (labels first, counts read by rows when a head must be trained) gives the head that the
    whole reference in memory gives: the same probabilities for every query cell."""
    from inference.heads import DEFAULT_HEAD

    ref, query = files
    streamed = predict(_job(tmp_path, ref, query, "streamed", cap=1000, head=head), create_backend("baseline", None,
                                                                                                   None),
                       {"checksum": "b", "trained": True})
    assert "reference_sample" not in streamed.provenance["head"]
    cells = ad.read_h5ad(ref)
    backend = create_backend("baseline", None, None)
    in_memory = train_head(backend, cells, cells.obs["celltype"].astype(str).to_numpy(), head or DEFAULT_HEAD)
    expected = in_memory.predict(backend.embed(ad.read_h5ad(query)).for_head).proba
    assert np.allclose(streamed.proba, expected, atol=1e-6, rtol=0)
    assert streamed.provenance["head"]["reference_cells"] == cells.n_obs


def test_a_reference_over_the_cap_trains_on_a_seeded_sample_and_says_so(files, tmp_path, monkeypatch):
    from inference.heads import DEFAULT_HEAD

    ref, query = files
    monkeypatch.setattr(reference_module, "READ_BLOCK", 64)
    read = []
    real = Counts.block
    monkeypatch.setattr(Counts, "block", lambda self, a, b: read.append((a, b)) or real(self, a, b))
    capped = predict(_job(tmp_path, ref, query, "capped", cap=20), create_backend("baseline", None, None),
                     {"checksum": "b", "trained": True})
    n_ref, n_query = ad.read_h5ad(ref, backed="r").n_obs, ad.read_h5ad(query, backed="r").n_obs
    # the reference a block at a time (not whole), then the query
    assert read == [(0, 64), (64, 128), (128, 192), (192, 256), (256, n_ref), (0, n_query)]
    cells = ad.read_h5ad(ref)
    labels = cells.obs["celltype"].astype(str).to_numpy()
    rows = np.flatnonzero(per_type_sample(labels, 20, seed=0))
    head = capped.provenance["head"]
    assert head["reference_cells"] == len(rows) < n_ref
    assert head["reference_sample"] == {"labelled_cells": n_ref, "cells_per_type": 20, "seed": 0}
    # the same head as one trained in memory on those rows
    backend = create_backend("baseline", None, None)
    in_memory = train_head(backend, cells[rows].copy(), labels[rows], DEFAULT_HEAD)
    expected = in_memory.predict(backend.embed(ad.read_h5ad(query)).for_head).proba
    assert np.allclose(capped.proba, expected, atol=1e-6, rtol=0)
    # another cap is another head: not served from the cache of the first
    again = predict(_job(tmp_path, ref, query, "capped-30", cap=30), create_backend("baseline", None, None),
                    {"checksum": "b", "trained": True})
    assert again.provenance["head"]["reused"] is False and again.provenance["head"]["cache_key"] != head["cache_key"]


def test_the_reference_object_reads_only_its_sample(files):
    ref, _ = files
    with Counts(_input(ref)) as counts:
        labels = counts.obs["celltype"].astype(str).to_numpy()
        r = Reference(counts, np.ones(len(labels), dtype=bool), labels, "sha", cells_per_type=5, seed=1)
        cells = r.read()
        expected = sum(min(int((labels == t).sum()), 5) for t in set(labels))  # a type of 4 cells keeps its 4
        assert r.sampled and cells.n_obs == expected == len(r.trained_labels) < len(labels)
        assert (cells.obs["celltype"].astype(str).to_numpy() == r.trained_labels).all()
