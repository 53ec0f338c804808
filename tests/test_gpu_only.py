"""A model that helical runs on CUDA only (a backend with ``requires_gpu``): listed as needing a GPU, refused at
submission on a cluster whose workers have none, and placed only on GPU workers. A fake GPU-only backend stands in
for such a model, on the session's Dask cluster (CPU workers only), beside the shipped one (TranscriptFormer)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import ClassVar

import pytest

from app.actor_pool import ActorPool
from app.catalog import CELL_TYPE_ANNOTATION
from app.failures import FailureKind, classify
from app.platform import Platform
from app.runs import InvalidRun
from app.settings import Settings
from dashboards.catalog import ModelPicker, model_card, model_label
from inference.backends import BACKENDS, requires_gpu
from inference.backends.baseline import BaselineBackend
from inference.backends.common import resolve_device
from inference.devices import NEEDS_GPU, GpuRequired, choose_device, device_label
from store.engine import write_session
from store.tables import ModelEntry
from tests.conftest import PBMC
from tests.generated_weights import seed as seed_generated_weights

pytestmark = pytest.mark.slow  # a module fixture starts a Dask cluster: not for the edit loop


REFUSED = r"GPU-only test model needs a GPU .*workers have none.*DASK_SCHEDULER_ADDRESS.*--resources GPU=1"


class GpuOnlyBackend(BaselineBackend):
    """The baseline, declared GPU-only: what the platform does with it is what a CUDA-only helical model gets."""

    requires_gpu: ClassVar[bool] = True


def _entry() -> ModelEntry:
    return ModelEntry(id="gpu-only", name="GPU-only test model", speed="fast", description="CUDA only",
                      applications=[CELL_TYPE_ANNOTATION], backend="gpu-only", variant="", weights_status="installed")


@pytest.fixture
def gpu_only_backend(monkeypatch):
    monkeypatch.setitem(BACKENDS, "gpu-only", ("tests.test_gpu_only", "GpuOnlyBackend", None, False))


@pytest.fixture(scope="module")
def cpu_cluster(tmp_path_factory, dask_scheduler):
    """The session's Dask cluster of CPU workers, with the fake model in the catalog and pbmc uploaded."""
    home = seed_generated_weights(tmp_path_factory.mktemp("gpu-only-home"))
    settings = Settings.from_env({"HELICAL_PLATFORM_HOME": str(home),
                                  "HELICAL_PLATFORM_DEVICE": "auto", "DASK_SCHEDULER_ADDRESS": dask_scheduler})
    p = Platform(settings)
    p.compute(timeout=180)
    with write_session(p.engine) as s:
        s.add(_entry())
    with open(PBMC, "rb") as fh:
        ds = p.datasets.ingest(fh, "pbmc3k subset.h5ad")
    yield p, ds
    p.close()


def test_the_device_rule_for_a_gpu_only_model():
    assert choose_device("auto", 2, requires_gpu=True) == "cuda"
    assert choose_device("cuda:1", 2, requires_gpu=True) == "cuda:1"
    with pytest.raises(GpuRequired, match="X needs a GPU .*workers have none.*DASK_SCHEDULER_ADDRESS"):
        choose_device("auto", 0, requires_gpu=True, model="X")
    with pytest.raises(GpuRequired, match="HELICAL_PLATFORM_DEVICE=cpu"):
        choose_device("cpu", 2, requires_gpu=True)
    try:
        choose_device("auto", 0, requires_gpu=True)
    except GpuRequired as exc:  # a run that gets this far fails as the user's to fix, not as a platform fault
        assert classify(exc, scheduler_gone=False) is FailureKind.USER_ERROR
    with pytest.raises(GpuRequired, match="X needs a GPU .*torch sees none here"):  # in-process: this has no GPU
        resolve_device("auto", requires_gpu=True, model="X")
    assert device_label("auto", 0, requires_gpu=True) == NEEDS_GPU
    assert device_label("auto", 0) == "cpu"


def test_only_transcriptformer_of_the_shipped_models_needs_a_gpu_and_the_fake_one_does(gpu_only_backend):
    assert [b for b in BACKENDS if b != "gpu-only" and requires_gpu(b)] == ["transcriptformer"]
    assert requires_gpu("gpu-only")
    assert not requires_gpu("no-such-backend")


def test_the_actor_pool_asks_for_a_gpu_worker(gpu_only_backend):
    def pool(gpus: int) -> ActorPool:
        fake = SimpleNamespace(settings=SimpleNamespace(device="auto"),
                               compute=lambda: SimpleNamespace(describe=lambda: {"gpus": gpus}))
        return ActorPool(fake, on_progress=lambda event: None)

    assert pool(1).device_and_resources(_entry()) == ("cuda", {"GPU": 1})
    with pytest.raises(GpuRequired, match=REFUSED):
        pool(0).device_and_resources(_entry())
    cpu_model = _entry().model_copy(update={"backend": "baseline"})
    assert pool(0).device_and_resources(cpu_model) == ("cpu", None)


def test_a_gpu_only_model_is_refused_on_a_cpu_cluster_and_nothing_is_queued(gpu_only_backend, cpu_cluster):
    p, ds = cpu_cluster
    assert p.compute_status()["gpus"] == 0
    with pytest.raises(InvalidRun, match=REFUSED):
        p.runs.submit(CELL_TYPE_ANNOTATION, "gpu-only", ds.id, label_column="celltype")
    with pytest.raises(InvalidRun, match=REFUSED):  # a group is all or nothing: the baseline is not queued either
        p.runs.submit_group(CELL_TYPE_ANNOTATION, ["baseline", "gpu-only"], ds.id, label_column="celltype")
    assert p.runs.list() == []
    shipped = r"TranscriptFormer \(tf_sapiens, GPU only\) needs a GPU .*workers have none.*--resources GPU=1"
    with pytest.raises(InvalidRun, match=shipped):  # the shipped GPU-only model, whatever its weights' status
        p.runs.submit(CELL_TYPE_ANNOTATION, "transcriptformer", ds.id, label_column="celltype")
    with pytest.raises(InvalidRun, match=shipped):
        p.runs.submit("embedding-integration", "transcriptformer", ds.id, label_column="celltype",
                      options={"batch_column": "celltype"})
    assert p.runs.list() == []


def test_a_gpu_only_model_is_listed_as_needing_a_gpu(gpu_only_backend, cpu_cluster, monkeypatch):
    import app.rest

    p, _ = cpu_cluster
    monkeypatch.setattr(app.rest, "platform", lambda: p)
    listed = {m["id"]: m for m in app.rest._models_json(None)}
    assert listed["gpu-only"]["device"] == NEEDS_GPU and listed["gpu-only"]["requires_gpu"] is True
    assert listed["baseline"]["device"] == "cpu" and listed["baseline"]["requires_gpu"] is False
    assert listed["transcriptformer"]["device"] == NEEDS_GPU and listed["transcriptformer"]["requires_gpu"] is True

    entry = _entry()
    assert model_label(entry, 0) == f"GPU-only test model — {NEEDS_GPU}"
    assert model_label(entry, 1) == model_label(entry) == "GPU-only test model"
    card = model_card(entry, 0)
    assert "**Needs a GPU**" in card and "a run of it is refused" in card and "DASK_SCHEDULER_ADDRESS" in card
    assert "refused" not in model_card(entry, 1)
    assert "Needs a GPU" not in model_card(_entry().model_copy(update={"backend": "baseline"}), 0)

    picker = ModelPicker(p)
    assert f"GPU-only test model — {NEEDS_GPU}" in picker.param.model.names
    assert f"TranscriptFormer (tf_sapiens, GPU only) — weights missing — {NEEDS_GPU}" in picker.param.model.names


def test_workers_import_scikit_learn_before_any_task(cpu_cluster):
    """Every worker has scikit-learn whole before its first task (inference/cluster.py ImportFirst): two of its
    threads importing it at once could otherwise meet a partially initialised module (seen in CI)."""
    import sys

    p, _ = cpu_cluster
    loaded = p.compute().client.run(lambda: "sklearn.utils.sparsefuncs" in sys.modules)
    assert loaded and all(loaded.values())
