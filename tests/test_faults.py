"""Faults: the scheduler connection dropped and restored, the server killed with SIGKILL mid-run, the disk full
while results are written. Afterwards no run is left running, no half-written result is served as complete, the
SQLite file passes ``PRAGMA integrity_check``, and the next run works."""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

from app.platform import Platform
from app.settings import Settings
from tests.api_client import TOKEN, api, upload, wait_run
from tests.conftest import PBMC, free_port
from tests.reliability import record
from tests.serving import make_serve, wait_until

pytestmark = pytest.mark.faults


FINISHED = ("done", "failed", "cancelled")
AFTER = "no run left running; no partial folder; integrity_check ok; next run done"


def _integrity(db: Path) -> str:
    with sqlite3.connect(db) as con:
        return con.execute("PRAGMA integrity_check").fetchone()[0]


def _partials(home: Path) -> list[Path]:
    return list(home.rglob(".partial-*"))


def _wait(platform: Platform, run_id: str, timeout: float = 300) -> dict:
    return wait_until(lambda: (s := platform.runs.status(run_id))["status"] in FINISHED and s, timeout,
                      f"run {run_id} to finish")


def _submit(platform: Platform, model: str, ds) -> str:  # noqa: ANN001
    return platform.runs.submit("cell-type-annotation", model, ds.id, label_column="celltype").id


def _after_checks(platform: Platform) -> None:
    home = platform.settings.home
    assert not [r for r in platform.runs.list() if r.status in ("queued", "running")]
    assert not _partials(home), _partials(home)
    for r in platform.runs.list():
        folder = home / "runs" / r.id
        assert (r.status == "done") == folder.exists(), (r.status, folder)  # only finished runs have a folder
    assert _integrity(home / "platform.db") == "ok"


def _pbmc_x10(folder: Path) -> Path:
    """5,990 cells (the subset ten times): a run long enough to be cut in the middle."""
    import anndata as ad

    path = folder / "pbmc-x10.h5ad"
    ad.concat([ad.read_h5ad(PBMC)] * 10, index_unique="-", merge="same").write_h5ad(path)
    return path


def _dask(*args: str, cwd: Path) -> subprocess.Popen:
    bindir = Path(sys.executable).parent
    return subprocess.Popen([str(bindir / "dask"), *args], cwd=cwd, env={**os.environ, "PYTHONPATH": ""},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_the_scheduler_connection_dropped_and_restored(tmp_path, request):
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"

    def scheduler() -> subprocess.Popen:
        return _dask("scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0",
                     cwd=tmp_path)

    def worker() -> subprocess.Popen:
        return _dask("worker", address, "--nthreads", "1", "--nworkers", "1", "--dashboard-address", ":0",
                     "--death-timeout", "300", cwd=tmp_path)

    procs = [scheduler(), worker()]
    platform = Platform(Settings.from_env({"HELICAL_PLATFORM_HOME": str(tmp_path / "home"),
                                           "DASK_SCHEDULER_ADDRESS": address,
                                           "HELICAL_PLATFORM_DEVICE": "cpu"}))
    try:
        compute = platform.compute(timeout=120)
        assert compute.cluster is None  # on the external scheduler
        client = compute.client
        client.wait_for_workers(1, timeout=120)
        with open(PBMC, "rb") as fh:
            ds = platform.datasets.ingest(fh, "pbmc.h5ad")
        assert _wait(platform, _submit(platform, "baseline", ds))["status"] == "done"
        big_path = _pbmc_x10(tmp_path)
        with open(big_path, "rb") as fh:
            big = platform.datasets.ingest(fh, big_path.name)
        run = _submit(platform, "geneformer", big)
        wait_until(lambda: platform.runs.status(run)["stage"] == "embedding reference", 240, "the run to embed")
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(30)
        killed = time.monotonic()
        status = _wait(platform, run, timeout=120)
        failed_after = time.monotonic() - killed
        assert status["status"] == "failed" and "scheduler" in status["error"], status
        wait_until(lambda: client.status == "closed", 120, "the client to give up (30 s)")
        assert platform.compute_status()["state"] == "unavailable"  # the sidebar and /api/health say so
        procs[0] = scheduler()  # restored on the same address, after the client gave up
        worker_survived = procs[1].poll() is None
        if not worker_survived:  # as a batch system would, start the worker again
            procs[1] = worker()
        wait_until(lambda: (c := platform.compute().client).status == "running" and c.scheduler_info()["workers"],
                   180, "a new client and the worker back")
        after = _submit(platform, "geneformer", ds)
        assert _wait(platform, after)["status"] == "done"
        _after_checks(platform)
    finally:
        platform.close()
        for p in reversed(procs):
            p.kill()
            p.wait(30)
    record("faults", "Dask scheduler killed mid-run (SIGKILL), then restarted on the same address",
           "Geneformer run embedding on an external `dask scheduler` + `dask worker`",
           f"run failed {failed_after:.1f} s after the kill: {status['error'][:150]}; the client gave up after "
           f"30 s; scheduler back ({'worker reconnected' if worker_survived else 'worker had exited: restarted'}): "
           "a new client, the actor loaded afresh", AFTER, request.node.nodeid)


def test_the_server_killed_with_runs_in_flight_then_restarted(tmp_path, request):
    env = {"HELICAL_PLATFORM_API_TOKEN": TOKEN, "HELICAL_PLATFORM_WORKERS": "2"}
    with make_serve(tmp_path, env) as server:
        home = server.home
        ds = upload(server, PBMC).json()["dataset_id"]
        body = {"application": "cell-type-annotation", "dataset": ds, "label_column": "celltype"}
        done = api(server, "POST", "/api/submit", json={**body, "model": "baseline"}).json()["run_id"]
        assert wait_run(server, done)["status"] == "done"
        big = upload(server, _pbmc_x10(tmp_path)).json()["dataset_id"]
        in_flight = [api(server, "POST", "/api/submit", json={**body, "model": m, "dataset": big}).json()["run_id"]
                     for m in ("geneformer", "scgpt", "baseline")]
        wait_until(lambda: api(server, "GET", f"/api/status/{in_flight[0]}").json()["stage"].startswith("embedding"),
                   240, "a run to be embedding")
        states = {r: api(server, "GET", f"/api/status/{r}").json()["stage"] for r in in_flight}
        os.killpg(server.proc.pid, signal.SIGKILL)  # the server, its Dask cluster, everything: no clean-up
        server.proc.wait(30)
    with make_serve(tmp_path, env) as server:
        statuses = {r: api(server, "GET", f"/api/status/{r}").json() for r in in_flight}
        assert all(s["status"] == "failed" and "restart" in s["error"] for s in statuses.values()), statuses
        for r in in_flight:
            assert api(server, "GET", f"/api/results/{r}").status_code == 409
            assert not (home / "runs" / r).exists()
        assert api(server, "GET", f"/api/results/{done}").json()["cells"]["total"] == 599
        assert not _partials(home)
        assert _integrity(home / "platform.db") == "ok"
        again = api(server, "POST", "/api/submit", json={**body, "model": "geneformer"}).json()["run_id"]
        assert wait_run(server, again)["status"] == "done"
    record("faults", "The server killed with SIGKILL (whole process group) with 3 runs in flight, then restarted",
           f"stages at the kill: {', '.join(sorted(set(states.values())))}",
           "after restart the 3 runs are failed 'interrupted by a restart', their results 409; the finished run "
           "still served", AFTER, request.node.nodeid)


def _disk_full_on_results(dask_worker) -> None:  # noqa: ANN001 - runs in the worker process
    import inference.result_writer as pipeline  # where the annotated file is written

    original = pipeline._annotated_h5ad

    def full(job, table, features, coords, provenance, path):  # noqa: ANN001, ANN202
        path.write_bytes(b"\0" * 4096)  # part of the file was written when the disk filled up
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    pipeline._annotated_h5ad = full
    pipeline._original_annotated_h5ad = original


def _disk_back(dask_worker) -> None:  # noqa: ANN001
    import inference.result_writer as pipeline

    pipeline._annotated_h5ad = getattr(pipeline, "_original_annotated_h5ad", pipeline._annotated_h5ad)


@pytest.fixture
def served_platform(tmp_path):
    p = Platform(Settings.from_env({"HELICAL_PLATFORM_HOME": str(tmp_path / "home"),
                                    "HELICAL_PLATFORM_WORKERS": "1", "HELICAL_PLATFORM_DEVICE": "cpu"}))
    p.compute(timeout=180)
    yield p
    p.close()


def test_the_disk_full_while_results_are_written(served_platform, request):
    platform = served_platform
    client = platform.compute().client
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with open(PBMC, "rb") as fh:
        ds = platform.datasets.ingest(fh, "pbmc.h5ad")
    client.run(_disk_full_on_results)  # every result write on the workers now fails with ENOSPC
    run = _submit(platform, "baseline", ds)
    status = _wait(platform, run)
    assert status["status"] == "failed" and "space" in status["error"].lower(), status
    assert not (platform.settings.home / "runs" / run).exists()
    from app.runs import RunNotFinished

    with pytest.raises(RunNotFinished):
        platform.runs.results(run)
    client.run(_disk_back)
    after = _submit(platform, "baseline", ds)
    assert _wait(platform, after)["status"] == "done"
    _after_checks(platform)
    record("faults", "Disk full while the results are written (ENOSPC raised in the worker mid-file)",
           "baseline run; the annotated .h5ad write fails after 4 KB",
           f"run failed: {status['error'][:150]}", AFTER, request.node.nodeid)
