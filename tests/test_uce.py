"""UCE through helical's own classes, offline, on generated files in helical's layout (untrained weights).

One backend for the module: helical's UCE allocates the release's 145,469 × 5,120 token table at load (about
3 GB), whatever the checkpoint's size.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from inference.weights import UCE_PROTEIN_EMBEDDINGS, WeightsError, WeightsLocations, read_manifest


@pytest.fixture(scope="module")
def uce_root(tmp_path_factory) -> Path:
    from inference.checkpoints import generate

    root = tmp_path_factory.mktemp("uce-weights")
    assert generate(root, "tiny", [], scgpt=False, uce=True) == ["uce:4layer_model"]
    return root


@pytest.fixture(scope="module")
def uce(uce_root):
    from inference.backends import create_backend

    locations = WeightsLocations(staged=uce_root / "none", generated=uce_root, helical_cache=uce_root / "none")
    backend = create_backend("uce", None, locations, device="cpu")
    backend.load()
    return backend


def _bare_helical(backend, cells, batch_size: int) -> np.ndarray:  # noqa: ANN001
    """helical's own process_data + get_embeddings on the same cells (restricted to UCE's genes, CSR, as
    helical needs them), the counts file in a folder of its own."""
    from inference.backends.common import helical_input

    prepared = helical_input(cells)
    symbols = pd.Series(prepared.var["gene_symbol"].to_numpy()).str.lower()
    keep = (symbols.isin(backend.vocabulary) & ~symbols.duplicated()).to_numpy()
    prepared = prepared[:, keep].copy()
    prepared.X = sp.csr_matrix(prepared.X)
    model = backend.model
    model.config["batch_size"] = batch_size
    with tempfile.TemporaryDirectory() as tmp:
        dataset = model.process_data(prepared, gene_names="gene_symbol",
                                     name=os.path.relpath(Path(tmp) / "bare", os.getcwd()))
        return model.get_embeddings(dataset)


def test_generated_files_are_helicals_layout_recorded_untrained(uce_root):
    manifest = read_manifest(uce_root)
    entry = manifest["models"]["uce:4layer_model"]
    assert entry["trained"] is False and "untrained" in entry["note"]
    for rel in ("uce/4layer_model.torch", "uce/all_tokens.torch", UCE_PROTEIN_EMBEDDINGS,
                "uce/species_offsets.json", "uce/species_chrom.csv"):
        assert (uce_root / rel).is_file() and len(manifest["files"][rel]["sha256"]) == 64, rel
    chrom = pd.read_csv(uce_root / "uce" / "species_chrom.csv")
    assert list(chrom.columns) == ["species", "chromosome", "start", "gene_symbol"]
    assert chrom["gene_symbol"].is_unique and (chrom["gene_symbol"] == chrom["gene_symbol"].str.upper()).all()
    assert json.loads((uce_root / "uce" / "species_offsets.json").read_text()) == {"human": 4}


@pytest.mark.slow
def test_uce_embeds_real_pbmcs_offline_as_helical_gives_each_cell_alone(uce, pbmc_small, no_network, monkeypatch):
    from helical.utils.downloader import Downloader

    def no_download(*args, **kwargs):  # noqa: ANN002, ANN003
        raise AssertionError("helical's downloader was called")

    monkeypatch.setattr(Downloader, "download_via_name", no_download)
    monkeypatch.setattr(Downloader, "download_via_link", no_download)
    cells = pbmc_small[:20].copy()
    before = cells.X.copy()
    ours = uce.embed(cells)
    assert ours.features.shape == (20, 1280) and ours.genes_used > 10_000
    assert np.allclose(np.linalg.norm(ours.features, axis=1), 1, atol=1e-5)  # helical's L2-normalised CLS
    alone = _bare_helical(uce, cells, batch_size=1)
    assert np.abs(ours.features - alone).max() <= 1e-5
    # what a cell gets does not depend on the cells beside it (helical's batches pad, and its float mask
    # shifts the attention of the shorter cells)
    assert np.abs(uce.embed(cells[:3].copy()).features - ours.features[:3]).max() <= 1e-5
    assert (cells.X != before).nnz == 0 and "total_counts" not in cells.obs  # the caller's object untouched
    assert no_network == []
    assert not list(Path.cwd().glob("*_counts.npz"))  # helical's counts file went to a folder of our own


def test_a_changed_uce_file_is_refused_before_helical_opens_it(uce_root, tmp_path):
    import shutil

    from inference.backends import create_backend

    copy = tmp_path / "copy"
    shutil.copytree(uce_root, copy)
    tokens = copy / "uce" / "all_tokens.torch"
    data = bytearray(tokens.read_bytes())
    data[-8] ^= 0xFF
    tokens.write_bytes(bytes(data))
    locations = WeightsLocations(staged=copy, generated=tmp_path / "none", helical_cache=tmp_path / "none")
    with pytest.raises(WeightsError, match="does not match the checksum"):
        create_backend("uce", None, locations, device="cpu")


def test_uce_is_listed_staged_and_its_vocabulary_read(uce_root, tmp_path):
    from inference.weights import catalog, vocabulary_genes
    from inference.weights_stage import stage

    locations = WeightsLocations(staged=tmp_path / "staged", generated=uce_root, helical_cache=tmp_path / "none")
    rows = {(r["backend"], r["variant"]): r["status"] for r in catalog(locations)}
    assert rows[("uce", "4layer_model")] == "generated" and rows[("uce", "33l_8ep_1024t_1280")] == "missing"
    staged = stage(uce_root, tmp_path / "staged", trained=True)
    assert staged == {"uce": ["4layer_model"]}
    resolved = locations.resolve("uce", "4layer_model")
    assert resolved.origin == "staged" and resolved.trained is False  # the source's manifest says untrained
    kind, genes = vocabulary_genes(resolved)
    assert kind == "symbol" and {"CD3E", "MS4A1", "LYZ"} <= genes


@pytest.mark.slow
def test_a_uce_run_on_the_dask_cluster_embeds_as_bare_helical(uce, uce_root, pbmc_small, tmp_path,
                                                              dask_scheduler):
    """The catalog's UCE through the runs service on the session's Dask cluster: the server generates its files
    (the same as this module's, same seed), the worker's actor loads them, and the annotated file's embedding
    equals bare helical's cell by cell."""
    import anndata as ad

    from app.platform import Platform
    from app.settings import Settings
    from inference.run_files import ANNOTATED, PROVENANCE
    from tests.serving import wait_until

    settings = Settings.from_env({"HELICAL_PLATFORM_HOME": str(tmp_path / "home"), "HELICAL_PLATFORM_DEVICE": "cpu",
                                  "DASK_SCHEDULER_ADDRESS": dask_scheduler})
    platform = Platform(settings)
    try:
        model = {m.id: m for m in platform.models()}["uce"]
        assert (model.backend, model.variant, model.weights_status) == ("uce", "4layer_model", "generated")
        ours, theirs = read_manifest(settings.generated_weights_dir), read_manifest(uce_root)
        assert {k: v["sha256"] for k, v in ours["files"].items() if k.startswith("uce")} == {
            k: v["sha256"] for k, v in theirs["files"].items() if k.startswith("uce")}
        path = tmp_path / "pbmc60.h5ad"
        pbmc_small.write_h5ad(path)
        with open(path, "rb") as fh:
            dataset = platform.datasets.ingest(fh, "pbmc 60 cells.h5ad")
        platform.compute(timeout=180)
        run = platform.runs.submit("cell-type-annotation", "uce", dataset.id, label_column="celltype")
        status = wait_until(lambda: (s := platform.runs.status(run.id))["status"] in ("done", "failed") and s,
                            600, "the UCE run to finish")
        assert status["status"] == "done", status
        out = ad.read_h5ad(platform.artifacts.run_dir(run.id) / ANNOTATED)
        assert out.obsm["X_uce"].shape == (60, 1280)
        alone = _bare_helical(uce, pbmc_small.copy(), batch_size=1)
        assert np.abs(out.obsm["X_uce"] - alone).max() <= 1e-5
        provenance = json.loads((platform.artifacts.run_dir(run.id) / PROVENANCE).read_text())
        assert (provenance["model"]["variant"], provenance["model"]["trained"]) == ("4layer_model", False)
    finally:
        platform.close()
