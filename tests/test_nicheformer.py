"""Nicheformer through helical's own classes, offline, on generated files in helical's layout (untrained weights)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from inference.weights import WeightsError, WeightsLocations, read_manifest, required_files

FILES = ("config.json", "vocab.json", "model.safetensors", "model.h5ad")


@pytest.fixture(scope="module")
def nf_root(tmp_path_factory) -> Path:
    from inference.checkpoints import generate

    root = tmp_path_factory.mktemp("nicheformer-weights")
    assert generate(root, "tiny", [], scgpt=False, nicheformer=True) == ["nicheformer:Nicheformer"]
    return root


def _locations(generated: Path, staged: Path | None = None) -> WeightsLocations:
    none = generated / "none"
    return WeightsLocations(staged=staged or none, generated=generated, helical_cache=none)


@pytest.fixture(scope="module")
def nf(nf_root):
    from inference.backends import create_backend

    backend = create_backend("nicheformer", None, _locations(nf_root), device="cpu")
    backend.load()
    return backend


def _bare_helical(backend, cells: ad.AnnData) -> np.ndarray:  # noqa: ANN001
    """helical's own process_data + get_embeddings on the cells as its user must give them: Ensembl ids as
    var_names and the three context columns (the values our backend records); helical's default batch size."""
    bare = cells.copy()
    bare.var_names = bare.var["gene_ids"].astype(str).to_numpy()
    bare.obs["specie"], bare.obs["assay"], bare.obs["modality"] = "human", backend.assay, backend.modality
    model = backend.model
    model.config["batch_size"] = 32
    return model.get_embeddings(model.process_data(bare, gene_names="ensembl_id"))


def test_generated_files_are_helicals_layout_recorded_untrained(nf_root):
    manifest = read_manifest(nf_root)
    entry = manifest["models"]["nicheformer:Nicheformer"]
    assert entry["trained"] is False and "untrained" in entry["note"]
    assert required_files("nicheformer", "Nicheformer") == [f"nicheformer/{f}" for f in FILES]
    for name in FILES:
        rel = f"nicheformer/{name}"
        assert (nf_root / rel).is_file() and len(manifest["files"][rel]["sha256"]) == 64, rel
    vocab = json.loads((nf_root / "nicheformer" / "vocab.json").read_text())
    reference = ad.read_h5ad(nf_root / "nicheformer" / "model.h5ad")
    genes = sorted(reference.var_names)
    assert list(reference.var_names) == genes and len(genes) == 20_310 and all(g.startswith("ENSG") for g in genes)
    # the token helical gives a gene is 30 + its column in the sorted outer join with the reference
    assert {k: v for k, v in vocab.items() if not k.startswith("[")} == {g: 30 + i for i, g in enumerate(genes)}
    assert {vocab["[PAD]"], vocab["[MASK]"], vocab["[CLS]"]} == {1, 0, 2}
    config = json.loads((nf_root / "nicheformer" / "config.json").read_text())
    assert (config["n_tokens"], config["context_length"], config["trained"]) == (20_340, 1_500, False)


@pytest.mark.slow
def test_nicheformer_embeds_real_pbmcs_offline_as_bare_helical(nf, pbmc_small, no_network, monkeypatch):
    from helical.utils.downloader import Downloader

    import inference.backends.nicheformer as module
    from inference.backends.base import Cancelled

    def no_download(*args, **kwargs):  # noqa: ANN002, ANN003
        raise AssertionError("helical's downloader was called")

    monkeypatch.setattr(Downloader, "download_via_name", no_download)
    monkeypatch.setattr(Downloader, "download_via_link", no_download)
    monkeypatch.setattr(module, "BLOCK_CELLS", 16)  # four blocks: tokenised apart, as in a large file
    cells = pbmc_small.copy()
    before, obs_before, var_before = cells.X.copy(), cells.obs.copy(), cells.var.copy()
    seen: list[tuple[int, int]] = []
    ours = nf.embed(cells, progress=lambda done, n: seen.append((done, n)))
    assert ours.features.shape == (60, 32) and ours.features.dtype == np.float32 and ours.genes_used > 15_000
    assert seen[-1] == (60, 60) and len(seen) > 4
    bare = _bare_helical(nf, pbmc_small.copy())
    assert np.abs(ours.features - bare).max() <= 1e-5
    # every cell is padded to the 1,500-token context: what it gets does not depend on the cells beside it
    assert np.abs(nf.embed(cells[5:8].copy()).features - ours.features[5:8]).max() <= 1e-5
    # all three context tokens lead every cell (else helical drops the cell's 3 top genes instead)
    with module.isolated():
        tokens = nf.model.process_data(nf.helical_cells(cells[:4]), gene_names="ensembl_id")["input_ids"]
    assert [list(t[:3]) for t in tokens] == [[5, 11, 3]] * 4  # human, 10x 3' v3, dissociated
    assert (cells.X != before).nnz == 0 and cells.obs.equals(obs_before) and cells.var.equals(var_before)
    assert no_network == []
    with pytest.raises(Cancelled):  # asked to stop between batches
        nf.embed(cells, progress=lambda done, n: seen.append((done, n)), should_stop=lambda: len(seen) > 8)


def test_a_changed_nicheformer_file_is_refused_before_helical_opens_it(nf_root, tmp_path):
    from inference.backends import create_backend

    copy = tmp_path / "copy"
    shutil.copytree(nf_root, copy)
    weights = copy / "nicheformer" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="does not match the checksum"):
        create_backend("nicheformer", None, _locations(tmp_path / "none", staged=copy), device="cpu")


def test_a_vocabulary_that_is_not_the_references_is_refused_at_load(nf_root, tmp_path):
    """helical's outer join would add the extra gene to the reference's columns and shift later genes' tokens."""
    from inference.backends import create_backend
    from inference.weights import write_manifest

    copy = tmp_path / "copy"
    shutil.copytree(nf_root, copy)
    vocab_file = copy / "nicheformer" / "vocab.json"
    vocab = json.loads(vocab_file.read_text())
    vocab["ENSG99999999999"] = len(vocab) + 27
    vocab_file.write_text(json.dumps(vocab))
    manifest = read_manifest(copy)
    del manifest["files"]["nicheformer/vocab.json"]  # no checksum recorded for it: only the load check is left
    write_manifest(copy, manifest)
    backend = create_backend("nicheformer", None, _locations(tmp_path / "none", staged=copy), device="cpu")
    with pytest.raises(WeightsError, match="not in model.h5ad"):
        backend.load()
    with pytest.raises(ValueError, match="not one Nicheformer knows"):  # it would silently become padding
        create_backend("nicheformer", None, _locations(nf_root), device="cpu", assay="Smart-seq2")


def test_nicheformer_is_listed_staged_and_its_vocabulary_read(nf_root, tmp_path):
    from inference.weights import catalog, vocabulary_genes
    from inference.weights_stage import stage

    locations = _locations(nf_root, staged=tmp_path / "staged")
    rows = {(r["backend"], r["variant"]): r["status"] for r in catalog(locations)}
    assert rows[("nicheformer", "Nicheformer")] == "generated"
    assert stage(nf_root, tmp_path / "staged", trained=True) == {"nicheformer": ["Nicheformer"]}
    resolved = locations.resolve("nicheformer", "Nicheformer")
    assert resolved.origin == "staged" and resolved.trained is False  # the source's manifest says untrained
    kind, genes = vocabulary_genes(resolved)
    assert kind == "ensembl" and len(genes) == 20_310
    assert {"ENSG00000198851", "ENSG00000156738", "ENSG00000090382"} <= genes  # CD3E, MS4A1, LYZ


def test_allowed_downloads_fetch_helicals_own_links_into_its_cache(tmp_path, monkeypatch):
    """With downloads allowed, the files come by helical's own list of links (its Hugging Face repository), not
    by name from helical's bucket, where Nicheformer is not."""
    import helical.models.nicheformer.nicheformer_config as helical_config
    from helical.utils.downloader import Downloader

    fetched: list[str] = []

    def fake_link(self, output: Path, link: str) -> None:  # noqa: ANN001
        fetched.append(link)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(b"x")

    def no_name(*args, **kwargs):  # noqa: ANN002, ANN003
        raise AssertionError("downloaded by name")

    cache = tmp_path / "cache"
    monkeypatch.setattr(helical_config, "CACHE_DIR_HELICAL", str(cache))
    monkeypatch.setattr(Downloader, "download_via_link", fake_link)
    monkeypatch.setattr(Downloader, "download_via_name", no_name)
    locations = WeightsLocations(tmp_path / "staged", tmp_path / "generated", cache, allow_download=True)
    resolved = locations.resolve("nicheformer", "Nicheformer")
    assert fetched == [f"https://huggingface.co/theislab/Nicheformer/resolve/main/{f}" for f in FILES]
    assert resolved.root == cache and sorted(resolved.files) == [f"nicheformer/{f}" for f in sorted(FILES)]


@pytest.mark.slow
def test_a_nicheformer_run_on_the_dask_cluster_embeds_as_bare_helical(nf, nf_root, pbmc_small, tmp_path,
                                                                      dask_scheduler):
    """The catalog's Nicheformer through the runs service on the session's Dask cluster: the server generates its
    files (the same as this module's, same seed), the worker's actor loads them, and the annotated file's embedding
    equals bare helical's cell by cell."""
    from app.platform import Platform
    from app.settings import Settings
    from inference.run_files import ANNOTATED, PROVENANCE
    from tests.serving import wait_until

    settings = Settings.from_env({"HELICAL_PLATFORM_HOME": str(tmp_path / "home"), "HELICAL_PLATFORM_DEVICE": "cpu",
                                  "DASK_SCHEDULER_ADDRESS": dask_scheduler})
    platform = Platform(settings)
    try:
        model = {m.id: m for m in platform.models()}["nicheformer"]
        assert (model.backend, model.variant, model.weights_status) == ("nicheformer", "Nicheformer", "generated")
        ours, theirs = read_manifest(settings.generated_weights_dir), read_manifest(nf_root)
        assert {k: v["sha256"] for k, v in ours["files"].items() if k.startswith("nicheformer")} == {
            k: v["sha256"] for k, v in theirs["files"].items() if k.startswith("nicheformer")}
        path = tmp_path / "pbmc60.h5ad"
        pbmc_small.write_h5ad(path)
        with open(path, "rb") as fh:
            dataset = platform.datasets.ingest(fh, "pbmc 60 cells.h5ad")
        platform.compute(timeout=180)
        run = platform.runs.submit("cell-type-annotation", "nicheformer", dataset.id, label_column="celltype")
        status = wait_until(lambda: (s := platform.runs.status(run.id))["status"] in ("done", "failed") and s,
                            600, "the Nicheformer run to finish")
        assert status["status"] == "done", status
        out = ad.read_h5ad(platform.artifacts.run_dir(run.id) / ANNOTATED)
        assert out.obsm["X_nicheformer"].shape == (60, 32)
        assert np.abs(out.obsm["X_nicheformer"] - _bare_helical(nf, pbmc_small.copy())).max() <= 1e-5
        provenance = json.loads((platform.artifacts.run_dir(run.id) / PROVENANCE).read_text())
        assert (provenance["model"]["variant"], provenance["model"]["trained"]) == ("Nicheformer", False)
        assert provenance["model"]["context_tokens"] == {"species": "auto", "assay": "10x 3' v3",
                                                         "modality": "dissociated"}
    finally:
        platform.close()
