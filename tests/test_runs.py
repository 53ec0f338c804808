"""Runs on a real LocalCluster with worker processes: parallel runs, loaded models reused, a killed worker,
cancel, restart reconciliation, and a cluster started with the ``dask`` command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.platform import Platform
from app.settings import Settings
from store.engine import write_session
from store.tables import Run
from tests.conftest import PBMC
from tests.generated_weights import seed as seed_generated_weights
from tests.reliability import record
from tests.serving import wait_until

pytestmark = pytest.mark.slow  # a module fixture starts a Dask cluster: not for the edit loop


FINISHED = ("done", "failed", "cancelled")


def _settings(home: Path, **extra: str) -> Settings:
    return Settings.from_env({"HELICAL_PLATFORM_HOME": str(home), "HELICAL_PLATFORM_WORKERS": "2",
                              "HELICAL_PLATFORM_DEVICE": "cpu", **extra})


def _wait(platform: Platform, run_id: str, timeout: float = 300) -> dict:
    return wait_until(lambda: (s := platform.runs.status(run_id))["status"] in FINISHED and s, timeout,
                      f"run {run_id} to finish")


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    p = Platform(_settings(seed_generated_weights(tmp_path_factory.mktemp("runs-home"))))
    p.compute(timeout=180)
    yield p
    p.close()


@pytest.fixture(scope="module")
def pbmc(platform):
    with open(PBMC, "rb") as fh:
        return platform.datasets.ingest(fh, "pbmc3k subset.h5ad")


def _submit(platform, model, ds, **kw):
    return platform.runs.submit("cell-type-annotation", model, ds.id, label_column="celltype", **kw)


def test_two_runs_at_once_finish_with_results_and_a_second_run_loads_nothing(platform, pbmc):
    runs = [_submit(platform, "baseline", pbmc), _submit(platform, "geneformer", pbmc)]
    assert all(platform.runs.status(r.id)["status"] in ("queued", "running") for r in runs)  # returned at once
    for r in runs:
        assert _wait(platform, r.id)["status"] == "done", platform.runs.status(r.id)
    results = platform.runs.results(runs[0].id, offset=0, limit=5)
    assert results["metrics"]["macro_f1"] > 0.6 and len(results["cells"]["items"]) == 5
    row = platform.runs.get(runs[1].id)
    assert row.stage_timings["embedding query"] > 0 and row.device == "cpu"
    assert row.provenance["model"]["trained"] is False  # generated weights, recorded as such

    again = _submit(platform, "geneformer", pbmc)
    assert _wait(platform, again.id)["status"] == "done"
    actors = {k: a.describe().result() for k, a in platform.runs.actors._actors.items()}
    gf = next(v for k, v in actors.items() if k.startswith("geneformer"))
    assert gf["loads"] == 1 and gf["runs"] >= 2
    assert platform.runs.get(again.id).provenance["head"]["reused"] is True


def test_a_failing_run_fails_with_a_message_and_others_continue(platform, pbmc, tmp_path):
    import anndata as ad

    copy = tmp_path / "copy.h5ad"
    ad.read_h5ad(PBMC)[:300].copy().write_h5ad(copy)
    with open(copy, "rb") as fh:
        doomed = platform.datasets.ingest(fh, "doomed.h5ad")
    stored = platform.datasets.path(doomed)
    stored.write_bytes(stored.read_bytes()[:5000])  # the disk copy breaks after the upload was checked
    bad = _submit(platform, "baseline", doomed)
    good = _submit(platform, "baseline", pbmc)
    status = _wait(platform, bad.id)
    assert status["status"] == "failed"
    assert "cannot be read" in status["error"] and "Upload the file again" in status["error"]
    assert _wait(platform, good.id)["status"] == "done"


def test_cancel_stops_the_run_and_leaves_no_folder(platform, pbmc):
    run = _submit(platform, "scgpt", pbmc)
    wait_until(lambda: platform.runs.status(run.id)["stage"].startswith("embedding"), 240, "embedding to start")
    platform.runs.cancel(run.id)
    status = _wait(platform, run.id, timeout=60)
    assert status["status"] == "cancelled"
    assert not platform.artifacts.run_dir(run.id).exists()


@pytest.mark.faults
def test_a_killed_worker_fails_the_run_quickly_and_the_next_run_works(platform, pbmc, request):
    platform.datasets.delete_embeddings(pbmc.id)  # stored by earlier runs: this one must embed, to be killed
    run = _submit(platform, "geneformer", pbmc)
    wait_until(lambda: platform.runs.status(run.id)["stage"] == "embedding query", 240, "the query embedding")
    pid = platform.runs.workers[run.id]["pid"]  # from the run's own progress events
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    status = _wait(platform, run.id, timeout=60)
    failed_after = time.monotonic() - killed_at  # recorded: the wait above (60 s) is what bounds it
    assert status["status"] == "failed"
    assert "worker running this run stopped" in status["error"]
    platform.compute().client.wait_for_workers(2, timeout=120)
    after = _submit(platform, "geneformer", pbmc)
    assert _wait(platform, after.id)["status"] == "done"
    assert not list(platform.settings.home.rglob(".partial-*")) and not platform.artifacts.run_dir(run.id).exists()
    record("faults", "A Dask worker process killed (SIGKILL) mid-run", "Geneformer run embedding the query; the pid "
           "from the run's own progress events", f"run failed {failed_after:.1f} s after the kill: "
           f"{status['error'][:120]}", "no partial folder; the nanny restarts the worker; next run done",
           request.node.nodeid)


def test_a_restart_fails_runs_left_running_and_loses_nothing_else(tmp_path):
    settings = _settings(tmp_path / "home")
    first = Platform(settings, start_cluster=False)
    with open(PBMC, "rb") as fh:
        ds = first.datasets.ingest(fh, "pbmc.h5ad")
    from store.artifacts import new_id

    ids = [new_id(), new_id(), new_id()]
    with write_session(first.engine) as s:
        for run_id, status in zip(ids, ("queued", "running", "done"), strict=True):
            s.add(Run(id=run_id, application_id="cell-type-annotation", model_id="baseline", dataset_id=ds.id,
                      status=status, label_column="celltype"))
    first.close()
    second = Platform(settings, start_cluster=False).start()  # what a restarted server does
    try:
        statuses = [second.runs.status(i) for i in ids]
        assert [s["status"] for s in statuses] == ["failed", "failed", "done"]
        assert "Interrupted by a restart" in statuses[0]["error"]
        assert second.datasets.get(ds.id).sha256 == ds.sha256
    finally:
        second.close()


def test_runs_on_a_cluster_started_with_the_dask_command_line(tmp_path):
    bindir = Path(sys.executable).parent
    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": ""}
    procs = [subprocess.Popen([str(bindir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--dashboard-address", ":0", "--scheduler-file", str(scheduler_file)], env=env,
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        wait_until(scheduler_file.exists, 60, "the scheduler file")
        procs.append(subprocess.Popen([str(bindir / "dask"), "worker", "--scheduler-file", str(scheduler_file),
                                       "--nthreads", "1", "--nworkers", "1", "--dashboard-address", ":0"],
                                      env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        import json

        address = json.loads(scheduler_file.read_text())["address"]
        platform = Platform(_settings(seed_generated_weights(tmp_path / "home"), DASK_SCHEDULER_ADDRESS=address))
        try:
            compute = platform.compute(timeout=60)
            assert compute.cluster is None  # connected, started nothing
            compute.client.wait_for_workers(1, timeout=60)
            with open(PBMC, "rb") as fh:
                ds = platform.datasets.ingest(fh, "pbmc.h5ad")
            run = _submit(platform, "baseline", ds)
            assert _wait(platform, run.id)["status"] == "done"
        finally:
            platform.close()
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(30)


def test_a_run_submitted_while_the_cluster_starts_waits_for_it_instead_of_failing(tmp_path, monkeypatch, request):
    """On a loaded machine the LocalCluster can take longer to start than a caller's usual wait (120 s): a run
    queued meanwhile must wait for it, not fail with 'still starting'. Here the start is held until the test lets
    it go, and the usual wait is cut to 1 s so that holding it 3 s is past it."""
    import threading

    import app.platform as platform_module

    release, asked = threading.Event(), threading.Event()
    real_start, real_compute = platform_module.start_compute, Platform.compute

    def held_start(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        release.wait(120)
        return real_start(*args, **kw)

    def compute(self, timeout=1.0):  # noqa: ANN001, ANN202 - the usual wait, cut short
        asked.set()
        return real_compute(self, timeout)

    monkeypatch.setattr(platform_module, "start_compute", held_start)
    monkeypatch.setattr(Platform, "compute", compute)
    platform = Platform(_settings(seed_generated_weights(tmp_path / "home"), HELICAL_PLATFORM_WORKERS="1"))
    try:
        with open(PBMC, "rb") as fh:
            ds = platform.datasets.ingest(fh, "pbmc.h5ad")
        run = _submit(platform, "baseline", ds)
        assert asked.wait(60)  # the run's thread is waiting for the cluster
        time.sleep(3)  # past the usual (here 1 s) wait
        assert platform.runs.status(run.id)["status"] == "queued", platform.runs.status(run.id)
        release.set()
        ended = _wait(platform, run.id)
        assert ended["status"] == "done", ended
    finally:
        release.set()
        platform.close()
    record("faults", "Cluster slow to start", "a run submitted while the Dask cluster is still starting, the start "
           "held past the usual wait", "the run stays queued until the cluster is up", "it ends done",
           request.node.nodeid)
