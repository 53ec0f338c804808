"""A large reference without its counts in memory: the head trains on at most ``max_reference_cells`` labelled
cells, a sample stratified by type read from the file a block at a time; a reference under the limit trains exactly
as one held in memory."""

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
from inference.reference import Reference, read_rows, sample_sizes, stratified_sample, train_head
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


def test_a_sample_keeps_each_types_share_and_a_floor_for_rare_types():
    labels = np.array(["a"] * 5_000 + ["b"] * 300 + ["c"] * 2_000 + ["d"] * 40)
    keep = stratified_sample(labels, 1_000, seed=3)
    # shares of 1,000: a 681, b 40 -> the floor (1,000 // 4 types = 250 < 500), c 272, d 5 -> all its 40
    assert [int(keep[labels == t].sum()) for t in "abcd"] == [681, 250, 272, 40]
    assert sample_sizes({"a": 5_000, "b": 300, "c": 2_000, "d": 40}, 1_000) == {"a": 681, "b": 250, "c": 272, "d": 40}
    assert np.array_equal(keep, stratified_sample(labels, 1_000, seed=3))  # seeded
    assert not np.array_equal(keep, stratified_sample(labels, 1_000, seed=4))
    assert stratified_sample(labels, 7_340).all() and stratified_sample(labels, None).all()  # under the limit: all
    assert sample_sizes({"a": 90_000, "b": 9_000, "c": 1_000}, 10_000) == {"a": 9_000, "b": 900, "c": 500}


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
                         max_reference_cells=cap, **kw)


@pytest.mark.slow
@pytest.mark.parametrize("head", [None, {"kind": "knn", "k": None}], ids=["logistic", "knn"])
def test_a_reference_under_the_limit_trains_exactly_as_one_in_memory(files, tmp_path, head):
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


@pytest.mark.slow
def test_a_reference_over_the_limit_trains_on_a_seeded_stratified_sample_and_says_so(files, tmp_path, monkeypatch):
    from inference.heads import DEFAULT_HEAD

    ref, query = files
    monkeypatch.setattr(reference_module, "READ_BLOCK", 64)
    read = []
    real = Counts.block
    monkeypatch.setattr(Counts, "block", lambda self, a, b: read.append((a, b)) or real(self, a, b))
    capped = predict(_job(tmp_path, ref, query, "capped", cap=100), create_backend("baseline", None, None),
                     {"checksum": "b", "trained": True})
    n_ref, n_query = ad.read_h5ad(ref, backed="r").n_obs, ad.read_h5ad(query, backed="r").n_obs
    # the reference a block at a time (not whole), then the query
    assert read == [(0, 64), (64, 128), (128, 192), (192, 256), (256, n_ref), (0, n_query)]
    cells = ad.read_h5ad(ref)
    labels = cells.obs["celltype"].astype(str).to_numpy()
    rows = np.flatnonzero(stratified_sample(labels, 100, seed=0))
    head = capped.provenance["head"]
    assert head["reference_cells"] == len(rows) < n_ref
    assert head["reference_sample"] == {"labelled_cells": n_ref, "max_cells": 100, "min_per_type": 500, "seed": 0}
    # the same head as one trained in memory on those rows
    backend = create_backend("baseline", None, None)
    in_memory = train_head(backend, cells[rows].copy(), labels[rows], DEFAULT_HEAD)
    expected = in_memory.predict(backend.embed(ad.read_h5ad(query)).for_head).proba
    assert np.allclose(capped.proba, expected, atol=1e-6, rtol=0)
    # another cap is another head: not served from the cache of the first
    again = predict(_job(tmp_path, ref, query, "capped-150", cap=150), create_backend("baseline", None, None),
                    {"checksum": "b", "trained": True})
    assert again.provenance["head"]["reused"] is False and again.provenance["head"]["cache_key"] != head["cache_key"]


def test_the_reference_object_reads_only_its_sample(files):
    ref, _ = files
    with Counts(_input(ref)) as counts:
        labels = counts.obs["celltype"].astype(str).to_numpy()
        r = Reference(counts, np.ones(len(labels), dtype=bool), labels, "sha", max_cells=40, seed=1)
        cells = r.read()
        sizes = sample_sizes({t: int((labels == t).sum()) for t in set(labels)}, 40)
        assert r.sampled and cells.n_obs == sum(sizes.values()) == len(r.trained_labels) < len(labels)
        assert (cells.obs["celltype"].astype(str).to_numpy() == r.trained_labels).all()
        assert min(sizes.values()) >= 4  # every type kept (the floor: 40 // 8 types = 5, or all a type has)
