"""Fine-tuning (head = fine-tune) with helical's scGPTFineTuningModel on a tiny generated checkpoint and real PBMCs:
the pipeline end to end, equal to helical's own ``get_outputs`` of the fine-tuned model.

helical's ``_forward`` averages over padding too, so its logits depend on a cell's batch-mates; the adapter trains
the head on the backend's embedding (real-token mean, L2-normalised, the normalisation in the head). helical's
``get_outputs`` with one cell per batch has no padding, so it must give the pipeline's logits exactly.
The checkpoint is generated and untrained: these tests prove the mechanics, not that fine-tuning helps.
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from app.annotate import sha256_of
from inference.finetune_files import read_fine_tuned
from inference.pipeline import AnnotationJob, run_annotation
from tests.finetune_support import TUNING, TYPES, job, probabilities, write_files
from tests.finetune_support import tuned_run as tuned_run_of


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path]:
    """A reference of 15 cells of each of three types (odd cells) and a query of 5 of each (even cells)."""
    return write_files(tmp_path_factory.mktemp("ft-scgpt-files"), 15, 5)


@pytest.fixture(scope="module")
def backend(tiny_weights):
    from inference.backends import create_backend
    from inference.weights import WeightsLocations

    locations = WeightsLocations(staged=tiny_weights / "none", generated=tiny_weights,
                                 helical_cache=tiny_weights / "none")
    b = create_backend("scgpt", None, locations, device="cpu")
    b.load()
    return b


def _job(tmp_path: Path, ref: Path, query: Path, name: str = "run", **kw) -> AnnotationJob:
    return job("scgpt", tmp_path, ref, query, name, **kw)


@pytest.fixture(scope="module")
def tuned_run(backend, files, tmp_path_factory):
    return tuned_run_of(backend, "scgpt", files, tmp_path_factory.mktemp("ft-scgpt-run"))


def _probabilities(run: AnnotationJob) -> np.ndarray:
    return probabilities(run)


@pytest.mark.slow
def test_a_fine_tuned_scgpt_run_predicts_what_helicals_fine_tuned_model_outputs(backend, files, tuned_run):
    import torch

    from inference.finetune_scgpt import Adapter, backbone_state
    from inference.heads import Head

    tmp, job, result, events = tuned_run
    provenance = json.loads((Path(job.out_dir) / "provenance.json").read_text())
    head = provenance["head"]
    tuning = head["reference_check"]["fine_tuning"]
    assert head["kind"] == "fine_tuned_linear" and tuning["from_untrained_weights"] is True
    assert [h["epoch"] for h in tuning["history"]] == [1, 2] and tuning["best_epoch"] in (1, 2)
    assert tuning["train_cells"] + tuning["validation_cells"] == 45 and tuning["frozen_layers"] == 1
    said = [s for s, _, _ in events if s.startswith("fine-tuning")]
    assert any("untrained" in s for s in said)
    assert any(s.startswith("fine-tuning: epoch 1/2") and "validation macro-F1" in s for s in said)
    assert any(s.startswith("fine-tuning: epoch 2/2") and "validation macro-F1" in s and "s left" in s for s in said)
    # the weights as one safetensors file beside the cached head, checked on read: every encoder tensor
    weights = Path(job.heads_dir) / f"{head['cache_key']}.safetensors"
    assert tuning["safetensors_sha256"] == sha256_of(weights)
    loaded = read_fine_tuned(weights, tuning["safetensors_sha256"], backend.provenance()["checksum"])
    assert set(loaded.backbone) == set(backbone_state(backend.model.model))
    assert loaded.head_weight.shape == (len(TYPES), backend.model.model.encoder.embedding.embedding_dim)
    # helical's own fine-tuning model with those tensors: its get_outputs on the query, one cell per batch
    helical = Adapter(backend, len(TYPES), batch_size=1)
    missing, unexpected = helical.model.model.load_state_dict(loaded.backbone, strict=False)
    assert not unexpected and not set(missing) & set(loaded.backbone)
    helical.model.fine_tuning_head.linear.weight.data[:] = torch.from_numpy(loaded.head_weight)
    helical.model.fine_tuning_head.linear.bias.data[:] = torch.from_numpy(loaded.head_bias)
    dataset, _ = backend.prepare(ad.read_h5ad(files[1]))
    logits = helical.model.get_outputs(dataset)
    temperature = Head.load(Path(job.heads_dir) / f"{head['cache_key']}.npz").classifier.temperature
    z = logits / temperature
    expected = np.exp(z - z.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    assert head["classes"] == sorted(TYPES)  # helical's output columns: the classes in sorted order
    assert np.abs(_probabilities(job) - expected).max() <= 1e-5
    # the worker's loaded model is untouched by fine-tuning
    assert "fine_tuned" not in backend.describe()
    base = backend.model.model.state_dict()
    trained = [k for k in loaded.backbone if k.startswith("transformer_encoder.layers.1.")]
    frozen = [k for k in loaded.backbone if k.startswith("transformer_encoder.layers.0.")]
    assert trained and not any(torch.equal(loaded.backbone[k], base[k]) for k in trained)
    assert frozen and all(torch.equal(loaded.backbone[k], base[k]) for k in frozen)  # frozen_layers = 1


def test_a_second_scgpt_run_reuses_the_fine_tuned_head_and_its_own_embeddings(backend, files, tuned_run):
    tmp, job, result, _ = tuned_run
    again = _job(tmp, *files, name="again", head=dict(TUNING))
    run_annotation(again, backend, backend.provenance())
    provenance = json.loads((Path(again.out_dir) / "provenance.json").read_text())
    assert provenance["head"]["reused"] is True
    assert provenance["embedding"]["reused"] is True  # the fine-tuned model's query embedding, stored by run one
    assert np.abs(_probabilities(again) - _probabilities(job)).max() <= 1e-6


def test_scgpt_backbone_tensors_must_all_fit(backend):
    import copy

    from inference.finetune_scgpt import apply_backbone, backbone_state

    tensors = {k: v.clone() for k, v in backbone_state(backend.model.model).items()}
    target = copy.deepcopy(backend)
    with pytest.raises(ValueError, match="missing"):
        apply_backbone(target, {k: v for k, v in tensors.items() if not k.startswith("value_encoder.")})
    with pytest.raises(ValueError, match="unexpected"):
        apply_backbone(target, {**tensors, "decoder.fc.0.weight": tensors["encoder.embedding.weight"]})
    apply_backbone(target, tensors)  # the base model's own tensors fit
