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
from inference.finetune import read_fine_tuned
from inference.pipeline import AnnotationJob, DataInput, run_annotation
from tests.conftest import PBMC

TYPES = ["CD4 T", "CD14 Monocytes", "B"]
TUNING = {"kind": "fine-tune", "epochs": 2, "learning_rate": 1e-3, "frozen_layers": 1, "batch_size": 8,
          "validation_fraction": 0.2, "patience": 2}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path]:
    """A reference of 8 cells of each of three types (odd cells) and a query of 3 of each (even cells)."""
    folder = tmp_path_factory.mktemp("ft-uce-files")
    full = ad.read_h5ad(PBMC)
    labels = full.obs["celltype"].astype(str).to_numpy()
    pick = lambda start, n: np.concatenate([np.flatnonzero(labels == t)[start::2][:n] for t in TYPES])  # noqa: E731
    ref, query = folder / "reference.h5ad", folder / "query.h5ad"
    full[pick(1, 8)].copy().write_h5ad(ref)
    full[pick(0, 3)].copy().write_h5ad(query)
    return ref, query


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
    def data(p: Path) -> DataInput:
        return DataInput(str(p), p.name, sha256_of(p))

    return AnnotationJob(model_id="uce", query=data(query), reference=data(ref), label_column="celltype",
                         truth_column="celltype", out_dir=str(tmp_path / name), heads_dir=str(tmp_path / "heads"),
                         embeddings_dir=str(tmp_path / "embeddings"), **kw)


@pytest.fixture(scope="module")
def tuned_run(backend, files, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ft-uce-run")
    events: list[tuple[str, int, int]] = []
    job = _job(tmp, *files, head=dict(TUNING))
    result = run_annotation(job, backend, backend.provenance(), progress=lambda s, d, t: events.append((s, d, t)))
    return tmp, job, result, events


def _probabilities(job: AnnotationJob) -> np.ndarray:
    out = ad.read_h5ad(Path(job.out_dir) / "annotated.h5ad")
    return out.obsm["prediction_probabilities"][sorted(TYPES)].to_numpy()


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
