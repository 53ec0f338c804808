"""TranscriptFormer through helical's own classes, offline, on generated files in helical's layout (untrained).

helical runs TranscriptFormer on CUDA only, and this machine has no GPU. The shipped backend is GPU-only (refused
here: last test; placed on GPU workers: tests/test_gpu_only.py). To check its code path against bare helical
anyway, these tests run it on the CPU as a subclass that does not require a GPU, with helical's
``create_block_mask`` given ``device="cpu"`` (torch otherwise resolves it to CUDA on a CUDA build) and torch's
compiler off (eager flex attention: the same numbers, minutes of compiling saved). Both changes are the test's
alone; the same patched helical computes the bare reference.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path
from typing import ClassVar

import anndata as ad
import numpy as np
import pytest

from inference.backends.transcriptformer import TranscriptFormerBackend, check_config
from inference.devices import GpuRequired
from inference.weights import TRANSCRIPTFORMER_SPECIES, WeightsError, WeightsLocations, read_manifest, required_files

pytestmark = pytest.mark.slow  # its module fixtures generate and load TranscriptFormer: not for the edit loop


VARIANT = "tf_sapiens"
FILES = ("config.json", "model_weights.pt", "vocabs/assay_vocab.json", "vocabs/homo_sapiens_gene.h5")


class CpuTranscriptFormer(TranscriptFormerBackend):
    """The shipped backend's code, allowed on the CPU for these tests only."""

    requires_gpu: ClassVar[bool] = False


@pytest.fixture(scope="module")
def tf_root(tmp_path_factory) -> Path:
    from inference.checkpoints import generate

    root = tmp_path_factory.mktemp("transcriptformer-weights")
    assert generate(root, "tiny", [], scgpt=False, transcriptformer=True) == [f"transcriptformer:{VARIANT}"]
    return root


@pytest.fixture(scope="module")
def cpu_helical():
    """helical's mask built on the CPU and torch's compiler off, for this module only."""
    import helical.models.transcriptformer.model_dir.model as helical_model
    import torch

    original = helical_model.create_block_mask
    helical_model.create_block_mask = functools.partial(original, device="cpu")
    with torch._dynamo.config.patch(disable=True):  # noqa: SLF001 - eager flex attention on the CPU
        yield
    helical_model.create_block_mask = original


def _locations(generated: Path, staged: Path | None = None) -> WeightsLocations:
    none = generated / "none"
    return WeightsLocations(staged=staged or none, generated=generated, helical_cache=none)


@pytest.fixture(scope="module")
def cells() -> ad.AnnData:
    """8 real PBMCs, all 32,738 genes, raw counts."""
    from tests.conftest import PBMC

    return ad.read_h5ad(PBMC)[::75].copy()


def _bare_helical(backend: TranscriptFormerBackend, cells: ad.AnnData, batch_size: int) -> np.ndarray:
    """helical's own process_data + get_embeddings on the cells as its user gives them: Ensembl ids as
    var_names and the assay column (the value our backend records)."""
    bare = cells.copy()
    bare.var_names = bare.var["gene_ids"].astype(str).to_numpy()
    bare.obs["assay"] = backend.assay
    model = backend.model
    model.model.inference_config.batch_size = batch_size
    return model.get_embeddings(model.process_data([bare])).numpy()


@pytest.fixture(scope="module")
def offline(tf_root, cpu_helical, cells):
    """Loaded and run with every connection and name lookup refused: (backend, our embedding, bare helical's
    at its default batch size, the network attempts seen)."""
    from tests.conftest import refuse_network

    with pytest.MonkeyPatch.context() as mp:
        attempts = refuse_network(mp)
        backend = CpuTranscriptFormer(_locations(tf_root).resolve("transcriptformer", VARIANT), device="cpu")
        backend.load()
        ours = backend.embed(cells)
        bare = _bare_helical(backend, cells, batch_size=8)
    return backend, ours, bare, list(attempts)


def test_files_are_helicals_list_and_layout_recorded_untrained(tf_root):
    from inference.helical_env import isolated

    with isolated():
        from helical.models.transcriptformer.transcriptformer_config import TranscriptFormerConfig
    for variant in TRANSCRIPTFORMER_SPECIES:  # every release: helical's own download list
        assert sorted(required_files("transcriptformer", variant)) == sorted(
            TranscriptFormerConfig(model_name=variant).list_of_files_to_download)
    manifest = read_manifest(tf_root)
    entry = manifest["models"][f"transcriptformer:{VARIANT}"]
    assert entry["trained"] is False and "untrained" in entry["note"]
    assert entry["architecture"]["genes"] == 23_822 and entry["architecture"]["seq_len"] == 2047
    for name in FILES:
        rel = f"transcriptformer/{VARIANT}/{name}"
        assert (tf_root / rel).is_file() and len(manifest["files"][rel]["sha256"]) == 64, rel
    config = check_config(tf_root / "transcriptformer" / VARIANT / "config.json")
    assert config["trained"] is False


def test_loads_offline_with_zero_network_attempts_and_embeds_as_bare_helical(offline, cells):
    backend, ours, bare, attempts = offline
    assert attempts == []
    assert ours.features.shape == (cells.n_obs, 32) and np.isfinite(ours.features).all()
    assert ours.genes_used == len(backend.vocabulary & set(cells.var["gene_ids"]))
    assert np.abs(ours.features - bare).max() <= 1e-5
    assert backend.describe()["embedding_dim"] == 32 and backend.load_info["vocabulary"] == 23_822
    assert backend.provenance()["context_tokens"] == {"assay": "unknown"} and backend.provenance()["trained"] is False


def test_a_cell_embeds_the_same_whatever_its_batch_mates_and_the_callers_object_is_untouched(offline, cells):
    tf, whole, _, _ = offline
    before = cells.copy()
    tf.max_tokens = 2 * tf.context  # batches of two cells
    try:
        alone = tf.embed(cells[[1, 4, 6]].copy()).features
    finally:
        tf.max_tokens = 16_384
    assert np.abs(whole.features[[1, 4, 6]] - alone).max() <= 1e-5
    assert cells.var_names.equals(before.var_names) and list(cells.obs.columns) == list(before.obs.columns)


def test_an_assay_outside_the_vocabulary_is_refused_at_load_and_a_known_one_changes_the_embedding(tf_root, offline,
                                                                                                 cells):
    weights = _locations(tf_root).resolve("transcriptformer", VARIANT)
    with pytest.raises(ValueError, match=r"assay 'MARS-seq' is not in TranscriptFormer's vocabulary.*10x 3' v3"):
        CpuTranscriptFormer(weights, device="cpu", assay="MARS-seq").load()
    tf, ours, _, _ = offline
    v3 = CpuTranscriptFormer(weights, device="cpu", assay="10x 3' v3")
    v3.load()
    assert np.abs(v3.embed(cells[:2].copy()).features - ours.features[:2]).max() > 1e-4
    assert v3.embedding_settings() != tf.embedding_settings()  # the embedding store keys them apart


@pytest.mark.parametrize(("change", "message"), [
    (lambda c: c["model"].__setitem__("_target_", "os.system"), r"model\._target_ is 'os\.system'"),
    (lambda c: c["model"]["data_config"].__setitem__("_target_", "subprocess.Popen"),
     r"data_config\._target_ is 'subprocess\.Popen'"),
    (lambda c: c["model"]["model_config"].__setitem__("activation", "${oc.create:{_target_: os.system}}"),
     "interpolation"),
    (lambda c: c.__setitem__("model", {}), "no model._target_"),
])
def test_a_config_that_would_build_something_else_is_refused_before_helical_reads_it(tf_root, tmp_path, change,
                                                                                      message):
    staged = tmp_path / "staged"
    shutil.copytree(tf_root / "transcriptformer", staged / "transcriptformer")
    path = staged / "transcriptformer" / VARIANT / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))
    # a copy of helical's cache: not in a manifest, so only our check stands between the file and hydra
    weights = WeightsLocations(staged=tmp_path / "none", generated=tmp_path / "none",
                               helical_cache=staged).resolve("transcriptformer", VARIANT)
    assert weights.origin == "helical-cache"
    with pytest.raises(WeightsError, match=message):
        CpuTranscriptFormer(weights, device="cpu").load()


def test_the_shipped_backend_is_gpu_only_and_refused_without_one(tf_root):
    from inference.backends import create_backend

    assert TranscriptFormerBackend.requires_gpu
    with pytest.raises(GpuRequired, match=r"TranscriptFormer needs a GPU .*torch sees none here"):
        create_backend("transcriptformer", None, _locations(tf_root))
    with pytest.raises(GpuRequired, match="TranscriptFormer needs a GPU"):
        create_backend("transcriptformer", None, _locations(tf_root), device="cpu")
