"""Fine-tuning (head = fine-tune) with helical's UCEFineTuningModel on tiny generated UCE files and real PBMCs:
the pipeline end to end, equal to helical's own ``get_outputs`` of the fine-tuned model.

helical's batches pad to their longest sentence and its float mask shifts the shorter cells' attention, so the
adapter runs each sentence length as its own sub-batch; helical's ``get_outputs`` with one cell per batch has no
padding, so it must give the pipeline's logits exactly. One UCE load for the module (its token table is ~3 GB).
The weights are generated and untrained: these tests prove the mechanics, not that fine-tuning helps.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from app.annotate import sha256_of
from inference.finetune_files import read_fine_tuned
from inference.pipeline import AnnotationJob
from tests.finetune_support import TYPES, job, probabilities, write_files
from tests.finetune_support import tuned_run as tuned_run_of


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path]:
    """A reference of 8 cells of each of three types (odd cells) and a query of 3 of each (even cells)."""
    return write_files(tmp_path_factory.mktemp("ft-uce-files"), 8, 3)


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    from inference.backends import create_backend
    from inference.checkpoints import generate
    from inference.weights import WeightsLocations

    root = tmp_path_factory.mktemp("ft-uce-weights")
    assert generate(root, "tiny", [], scgpt=False, uce=True) == ["uce:4layer_model"]
    locations = WeightsLocations(staged=root / "none", generated=root, helical_cache=root / "none")
    b = create_backend("uce", None, locations, device="cpu")
    b.load()
    return b


def _job(tmp_path: Path, ref: Path, query: Path, name: str = "run", **kw) -> AnnotationJob:
    return job("uce", tmp_path, ref, query, name, **kw)


@pytest.fixture(scope="module")
def tuned_run(backend, files, tmp_path_factory):
    return tuned_run_of(backend, "uce", files, tmp_path_factory.mktemp("ft-uce-run"))


def _probabilities(run: AnnotationJob) -> np.ndarray:
    return probabilities(run)


@pytest.mark.slow
def test_a_fine_tuned_uce_run_predicts_what_helicals_fine_tuned_model_outputs(backend, files, tuned_run):
    import torch

    from inference.backends.fine_tuned import FineTunedBackend
    from inference.finetune_uce import backbone_state, fine_tuning_model
    from inference.heads import Head

    tmp, job, result, events = tuned_run
    provenance = json.loads((Path(job.out_dir) / "provenance.json").read_text())
    head = provenance["head"]
    tuning = head["reference_check"]["fine_tuning"]
    assert head["kind"] == "fine_tuned_linear" and tuning["from_untrained_weights"] is True
    assert [h["epoch"] for h in tuning["history"]] == [1, 2] and tuning["best_epoch"] in (1, 2)
    assert tuning["train_cells"] + tuning["validation_cells"] == 24 and tuning["frozen_layers"] == 1
    said = [s for s, _, _ in events if s.startswith("fine-tuning")]
    assert any("untrained" in s for s in said)
    assert any(s.startswith("fine-tuning: epoch 1/2") and "validation macro-F1" in s for s in said)
    assert any(s.startswith("fine-tuning: epoch 2/2") and "validation macro-F1" in s and "s left" in s for s in said)
    # the weights as one safetensors file beside the cached head, checked on read: the trained tensors only
    weights = Path(job.heads_dir) / f"{head['cache_key']}.safetensors"
    assert tuning["safetensors_sha256"] == sha256_of(weights)
    loaded = read_fine_tuned(weights, tuning["safetensors_sha256"], backend.provenance()["checksum"])
    net = backend.model.model
    assert set(loaded.backbone) == set(backbone_state(net))
    assert not any(k.startswith("pe_embedding") for k in loaded.backbone)  # the token table is not trained
    assert loaded.head_weight.shape == (len(TYPES), int(backend.model.config["output_dim"]))
    # helical's own fine-tuning model with those tensors: its get_outputs on the query, one cell per batch
    helical = fine_tuning_model(backend, len(TYPES), batch_size=1)
    missing, unexpected = helical.model.load_state_dict(loaded.backbone, strict=False)
    assert not unexpected and not set(missing) & set(loaded.backbone)
    helical.fine_tuning_head.linear.weight.data[:] = torch.from_numpy(loaded.head_weight)
    helical.fine_tuning_head.linear.bias.data[:] = torch.from_numpy(loaded.head_bias)
    with tempfile.TemporaryDirectory() as folder, torch.no_grad():
        dataset, _ = backend.prepare(ad.read_h5ad(files[1]), Path(folder))
        logits = helical.get_outputs(dataset)
    temperature = Head.load(Path(job.heads_dir) / f"{head['cache_key']}.npz").classifier.temperature
    z = logits / temperature
    expected = np.exp(z - z.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    assert head["classes"] == sorted(TYPES)  # helical's output columns: the classes in sorted order
    assert np.abs(_probabilities(job) - expected).max() <= 1e-5
    # and before the temperature (an untrained model's probabilities are near uniform): the logits themselves
    tuned = FineTunedBackend(backend, {k: v.numpy() for k, v in loaded.backbone.items()})
    ours = tuned.embed(ad.read_h5ad(files[1])).features @ loaded.head_weight.T + loaded.head_bias
    # the tiny untrained UCE embeds all cells alike (logits differ across cells by ~2e-4): hence the tight bound
    assert np.abs(ours - logits).max() <= 1e-6 and np.ptp(logits, axis=0).max() > 5e-5
    # the worker's loaded network is untouched by fine-tuning
    assert "fine_tuned" not in backend.describe()
    base = net.state_dict()
    trained = [k for k in loaded.backbone if k.startswith("transformer_encoder.layers.1.")]
    frozen = [k for k in loaded.backbone if k.startswith("transformer_encoder.layers.0.")]
    assert trained and not any(torch.equal(loaded.backbone[k], base[k]) for k in trained)
    assert frozen and all(torch.equal(loaded.backbone[k], base[k]) for k in frozen)  # frozen_layers = 1


def test_uce_backbone_tensors_must_all_fit(backend):
    import copy

    from inference.finetune_uce import apply_backbone, backbone_state

    net = backend.model.model
    tensors = {k: v.clone() for k, v in backbone_state(net).items()}
    target = copy.copy(backend)  # the checks refuse before loading anything: no copy of the token table
    with pytest.raises(ValueError, match="missing"):
        apply_backbone(target, {k: v for k, v in tensors.items() if not k.startswith("decoder.")})
    with pytest.raises(ValueError, match="unexpected"):
        apply_backbone(target, {**tensors, "pe_embedding.weight": net.pe_embedding.weight})
