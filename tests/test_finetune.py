"""Fine-tuning (head = fine-tune) with helical's GeneformerFineTuningModel on a tiny generated checkpoint and real
PBMCs: the pipeline end to end, equal to helical's own outputs of the fine-tuned model; early stopping, cancel,
the saved weights' checks, and the run options' messages.

The checkpoint is generated and untrained: these tests prove the mechanics, not that fine-tuning helps.
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from app.annotate import sha256_of
from inference.backends.base import Cancelled
from inference.counts import AnnotationError
from inference.finetune import EpochReport, FineTuneSettings, fine_tune
from inference.finetune_files import read_fine_tuned, save_fine_tuned
from inference.pipeline import AnnotationJob, run_annotation
from tests.finetune_support import TUNING, TYPES, job, probabilities, write_files
from tests.finetune_support import tuned_run as tuned_run_of
from tests.generated_weights import seed as seed_generated_weights


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path]:
    """A reference of 15 cells of each of three types (odd cells) and a query of 5 of each (even cells)."""
    return write_files(tmp_path_factory.mktemp("ft-files"), 15, 5)


@pytest.fixture(scope="module")
def backend(tiny_weights):
    from inference.backends import create_backend
    from inference.weights import WeightsLocations

    locations = WeightsLocations(staged=tiny_weights / "none", generated=tiny_weights,
                                 helical_cache=tiny_weights / "none")
    b = create_backend("geneformer", "gf-6L-10M-i2048", locations, device="cpu")
    b.load()
    return b


def _job(tmp_path: Path, ref: Path, query: Path, name: str = "run", **kw) -> AnnotationJob:
    return job("geneformer", tmp_path, ref, query, name, **kw)


@pytest.fixture(scope="module")
def tuned_run(backend, files, tmp_path_factory):
    return tuned_run_of(backend, "geneformer", files, tmp_path_factory.mktemp("ft-run"))


@pytest.mark.slow
def test_a_fine_tuned_run_predicts_what_helicals_fine_tuned_model_outputs(backend, files, tuned_run):
    import torch

    from inference.backends.common import helical_input
    from inference.finetune_geneformer import Adapter

    tmp, job, result, events = tuned_run
    provenance = json.loads((Path(job.out_dir) / "provenance.json").read_text())
    head = provenance["head"]
    tuning = head["reference_check"]["fine_tuning"]
    assert head["kind"] == "fine_tuned_linear" and tuning["from_untrained_weights"] is True
    assert [h["epoch"] for h in tuning["history"]] == [1, 2] and tuning["best_epoch"] in (1, 2)
    assert tuning["train_cells"] + tuning["validation_cells"] == 45 and tuning["frozen_layers"] == 1
    said = [s for s, _, _ in events if s.startswith("fine-tuning")]
    assert any("untrained" in s for s in said)
    assert any(s.startswith("fine-tuning: epoch 2/2") and "validation macro-F1" in s and "s left" in s for s in said)
    # the weights as one safetensors file beside the cached head, checked on read
    weights = Path(job.heads_dir) / f"{head['cache_key']}.safetensors"
    assert tuning["safetensors_sha256"] == sha256_of(weights)
    loaded = read_fine_tuned(weights, tuning["safetensors_sha256"], backend.provenance()["checksum"])
    # helical's own fine-tuning model with those tensors: its get_outputs on the query
    helical = Adapter(backend, len(TYPES))
    helical.model.model.bert.load_state_dict({k[len("bert."):]: v for k, v in loaded.backbone.items()})
    helical.model.fine_tuning_head.linear.weight.data[:] = torch.from_numpy(loaded.head_weight)
    helical.model.fine_tuning_head.linear.bias.data[:] = torch.from_numpy(loaded.head_bias)
    query = ad.read_h5ad(files[1])
    dataset = helical.model.process_data(helical_input(query), gene_names="ensembl_id")
    logits = helical.model.get_outputs(dataset, silent=True)
    from inference.heads import Head

    temperature = Head.load(Path(job.heads_dir) / f"{head['cache_key']}.npz").classifier.temperature
    z = logits / temperature
    expected = np.exp(z - z.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    assert head["classes"] == sorted(TYPES)  # helical's output columns: the classes in sorted order
    assert np.abs(_probabilities(job) - expected).max() <= 1e-5
    # the worker's loaded model is untouched: the base model embeds as before
    assert "fine_tuned" not in backend.describe()


def _probabilities(run: AnnotationJob) -> np.ndarray:
    return probabilities(run)


def test_a_second_run_reuses_the_fine_tuned_head_and_its_own_embeddings(backend, files, tuned_run):
    tmp, job, result, _ = tuned_run
    again = _job(tmp, *files, name="again", head=dict(TUNING))
    run_annotation(again, backend, backend.provenance())
    provenance = json.loads((Path(again.out_dir) / "provenance.json").read_text())
    assert provenance["head"]["reused"] is True
    assert provenance["embedding"]["reused"] is True  # the fine-tuned model's query embedding, stored by run one
    assert np.abs(_probabilities(again) - _probabilities(job)).max() <= 1e-6
    # the base model's embedding of the same query is another entry of the store (another key)
    plain = _job(tmp, *files, name="plain")
    run_annotation(plain, backend, backend.provenance())
    assert json.loads((Path(plain.out_dir) / "provenance.json").read_text())["embedding"]["reused"] is False


class _Linear:
    """A FineTuneAdapter over fixed features: the loop's logic, fast (no foundation model)."""

    layers = 1

    def __init__(self, x: np.ndarray, n_classes: int) -> None:
        import torch

        torch.manual_seed(0)
        self.x = torch.as_tensor(x, dtype=torch.float32)
        self.net = torch.nn.Linear(x.shape[1], n_classes)

    def prepare(self, adata: object) -> int:
        return len(self.x)

    def forward(self, idx: np.ndarray) -> object:
        return self.net(self.x[idx])

    def freeze(self, n_layers: int) -> None:
        pass

    def modules(self) -> list[object]:
        return [self.net]

    def parameters(self) -> list[object]:
        return list(self.net.parameters())

    def state(self) -> dict[str, object]:
        return {"head.weight": self.net.weight, "head.bias": self.net.bias}


def test_early_stopping_keeps_the_best_epochs_weights():
    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b", "c"], 30)
    x = rng.normal(size=(90, 8)) + np.repeat(np.eye(3, 8) * 3, 30, axis=0)
    adapter, seen = _Linear(x, 3), []

    def keep(report: EpochReport) -> None:
        seen.append((report, {k: v.detach().clone() for k, v in adapter.state().items()}))

    settings = FineTuneSettings(epochs=40, learning_rate=0.05, frozen_layers=0, batch_size=16, patience=2)
    result = fine_tune(adapter, None, labels, settings, {"checksum": "x"}, keep)
    assert result.stopped_early and len(result.history) < 40
    assert [r.best for r, _ in seen].count(True) >= 1 and not any(r.best for r, _ in seen[-2:])
    best = max(seen, key=lambda s: (s[0].val_macro_f1, -s[0].val_loss))
    assert result.best_epoch == best[0].epoch
    assert all(np.array_equal(result.tensors[k].numpy(), best[1][k].numpy()) for k in best[1])
    assert seen[-1][0].eta_s == 0 and all(r.eta_s >= 0 for r, _ in seen)


@pytest.mark.slow
def test_fine_tuning_is_cancelled_between_steps_and_leaves_no_head(backend, files, tmp_path):
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    job = _job(tmp_path, *files, head=dict(TUNING))
    with pytest.raises(Cancelled):
        run_annotation(job, backend, backend.provenance(), should_stop=stop)
    assert not list(Path(job.heads_dir).glob("*.npz")) if Path(job.heads_dir).exists() else True


def test_saved_weights_refuse_other_base_weights_and_changed_bytes(tmp_path):
    adapter = _Linear(np.random.default_rng(1).normal(size=(30, 4)), 2)
    settings = FineTuneSettings(epochs=1, frozen_layers=0, batch_size=8)
    result = fine_tune(adapter, None, np.repeat(["a", "b"], 15), settings,
                       {"backend": "geneformer", "variant": "v", "checksum": "a" * 64})
    path = tmp_path / "tuned.safetensors"
    sha = save_fine_tuned(result, path)
    assert read_fine_tuned(path, sha, "a" * 64).metadata["best_epoch"] == 1
    with pytest.raises(AnnotationError, match="stage the weights it was fine-tuned from"):
        read_fine_tuned(path, sha, "b" * 64)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(AnnotationError, match="have changed since they were saved"):
        read_fine_tuned(path, sha, "a" * 64)


@pytest.mark.parametrize("options, message", [
    ({"head": "fine-tune", "epochs": 0}, "epochs must be a whole number from 1 to 200"),
    ({"head": "fine-tune", "learning_rate": 1}, "learning_rate must be above 0 and at most 0.1"),
    ({"head": "fine-tune", "frozen_layers": -1}, "frozen_layers must be 0 or more"),
    ({"head": "fine-tune", "k": 5}, "k applies to the knn head only"),
    ({"epochs": 3}, "apply to head = fine-tune only"),
    ({"head": "fine_tuned_linear"}, "head must be one of logistic_regression, knn, fine-tune"),
])
def test_bad_fine_tuning_options_are_refused_with_what_to_do(options, message):
    from inference.applications.annotation import _head
    from inference.applications.base import SubmissionError

    with pytest.raises(SubmissionError, match=message):
        _head(options, {"a": 20, "b": 20}, evaluation=False, file_name="ref.h5ad")


def test_defaults_are_filled_in_and_recorded():
    from inference.applications.annotation import _head

    settings = _head({"head": "fine-tune"}, {"a": 20, "b": 20}, evaluation=False, file_name="ref.h5ad")
    assert settings == {"kind": "fine-tune", "epochs": 10, "learning_rate": 5e-5, "frozen_layers": 2,
                        "batch_size": 12, "validation_fraction": 0.2, "patience": 2}


@pytest.mark.slow
def test_fine_tune_on_the_cluster_then_annotate_another_query_with_the_saved_annotator(files, tmp_path,
                                                                                      dask_scheduler):
    """The runs service on the session's Dask cluster: a fine-tuning run on the reference, its head saved as an
    annotator, that annotator labelling a query (no reference) exactly as the fine-tuning run labelled it; the
    annotator refuses other weights."""
    from sqlmodel import select

    from app.platform import Platform
    from app.settings import Settings
    from store.engine import write_session
    from store.tables import AnnotatorEntry
    from tests.serving import wait_until

    settings = Settings.from_env({"HELICAL_PLATFORM_HOME": str(seed_generated_weights(tmp_path / "home")),
                                  "HELICAL_PLATFORM_DEVICE": "cpu", "DASK_SCHEDULER_ADDRESS": dask_scheduler})
    platform = Platform(settings)

    def finish(run_id: str) -> dict:
        return wait_until(lambda: (s := platform.runs.status(run_id))["status"] in ("done", "failed", "cancelled")
                          and s, 600, f"run {run_id}")

    try:
        ref_path, query_path = files
        with open(ref_path, "rb") as a, open(query_path, "rb") as b:
            ref, query = platform.datasets.ingest(a, "reference.h5ad"), platform.datasets.ingest(b, "query.h5ad")
        platform.compute(timeout=180)
        options = {k: v for k, v in TUNING.items() if k != "kind"} | {"head": "fine-tune"}
        tuned = platform.runs.submit("cell-type-annotation", "geneformer", query.id, reference_id=ref.id,
                                     label_column="celltype", truth_column="celltype", options=options)
        assert finish(tuned.id)["status"] == "done", platform.runs.status(tuned.id)
        annotator = platform.annotators.save_from_run(tuned.id, "PBMC fine-tuned (untrained base)")
        assert annotator.head_kind == "fine_tuned_linear" and annotator.trained is False
        used = platform.runs.submit("cell-type-annotation", "geneformer", query.id, truth_column="celltype",
                                    annotator=annotator.name)
        assert finish(used.id)["status"] == "done", platform.runs.status(used.id)
        first = platform.runs.results(tuned.id, offset=0, limit=100)["cells"]["items"]
        second = platform.runs.results(used.id, offset=0, limit=100)["cells"]["items"]
        assert [c["predicted_label"] for c in first] == [c["predicted_label"] for c in second] and len(first) == 15
        assert max(abs(x["confidence"] - y["confidence"]) for x, y in zip(first, second, strict=True)) <= 1e-5
        with write_session(platform.engine) as s:
            row = s.exec(select(AnnotatorEntry).where(AnnotatorEntry.id == annotator.id)).one()
            row.model_checksum = "0" * 64
        other = platform.runs.submit("cell-type-annotation", "geneformer", query.id, annotator=annotator.name)
        refused = finish(other.id)
        assert refused["status"] == "failed" and "trained on weights with checksum 0000" in refused["error"]
    finally:
        platform.close()


@pytest.mark.slow
def test_the_command_line_fine_tunes_an_annotator_once_and_annotates_with_it(files, tiny_weights, tmp_path, monkeypatch,
                                                                          capsys):
    import os
    import shutil
    import subprocess
    import sys

    from tests.cli_inprocess import run_main
    from tests.conftest import REPO

    ref, query = files
    home = tmp_path / "home"
    shutil.copytree(tiny_weights, home / "weights-generated")  # where a server would have generated them
    env = {**os.environ, "HELICAL_PLATFORM_HOME": str(home)}
    cli = shutil.which("helical-platform") or str(Path(sys.executable).parent / "helical-platform")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([cli, *args], env=env, capture_output=True, text=True, cwd=REPO, timeout=900)

    trained = run("annotators", "train", "--model", "geneformer", "--reference", str(ref), "--label-column",
                  "celltype", "--head", "fine-tune", "--epochs", "1", "--frozen-layers", "0", "--name", "PBMC tuned")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "[fine-tuning: epoch 1/1, loss" in trained.stderr and "untrained" in trained.stderr
    assert "PBMC tuned" in trained.stdout and "fine_tuned_linear" in trained.stdout
    out = tmp_path / "annotated.h5ad"
    monkeypatch.setenv("HELICAL_PLATFORM_HOME", str(home))  # the later calls: the command's main in this process
    code, used_out, used_err = run_main(capsys, "annotate", "--annotator", "PBMC tuned", "--query", str(query),
                                        "--truth-column", "celltype", "--out", str(out))
    assert code == 0, used_err[-3000:]
    assert "macro-F1" in used_out and set(ad.read_h5ad(out).obs["predicted_label"]) <= {*TYPES, "unassigned"}
    code, _, wrong_err = run_main(capsys, "annotate", "--model", "baseline", "--head", "knn", "--epochs", "3",
                                  "--query", str(query), "--reference", str(ref), "--label-column", "celltype",
                                  "--out", str(tmp_path / "x.h5ad"))
    assert code != 0 and "apply to head = fine-tune only" in wrong_err


def test_each_epoch_sees_every_training_cell_once_in_batches_of_similar_length():
    from inference.finetune import GROUP, epoch_batches

    rng = np.random.default_rng(0)
    lengths = rng.integers(100, 2048, 1000)
    train = np.flatnonzero(rng.random(1000) < 0.8)
    batches = epoch_batches(train, lengths, 12, np.random.default_rng(1))
    assert sorted(np.concatenate(batches).tolist()) == train.tolist()  # each once
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    shuffled = np.mean([np.ptp(lengths[b]) for b in epoch_batches(train, None, 12, np.random.default_rng(1))])
    assert spread < shuffled / 5  # padding: far less than plain shuffled batches
    again = epoch_batches(train, lengths, 12, np.random.default_rng(2))
    assert [b.tolist() for b in again] != [b.tolist() for b in batches]  # another seed, another order
    assert max(len(b) for b in batches) == 12 and len(train) > 12 * GROUP  # more than one group was cut
