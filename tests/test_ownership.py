"""Two server processes on one data home, and the CLI beside them: each run belongs to the process that took it.

Real processes throughout: two `make serve` instances sharing one home and SQLite database (as two replicas,
or `panel serve --num-procs 2`, would), `helical-platform info` run as a user runs it, and a real SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.api_client import TOKEN, api, upload, wait_run
from tests.conftest import PBMC, REPO
from tests.reliability import record
from tests.serving import make_serve, wait_until

LEASE_S = 6
ACTIVE = ("queued", "running")


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    home = tmp_path_factory.mktemp("shared-home") / "home"
    env = {"HELICAL_PLATFORM_API_TOKEN": TOKEN, "HELICAL_PLATFORM_HOME": str(home),
           "HELICAL_PLATFORM_LEASE_S": str(LEASE_S)}
    with make_serve(tmp_path_factory.mktemp("a"), env) as a:
        with make_serve(tmp_path_factory.mktemp("b"), env) as b:  # started after A: one writes the weights
            yield a, b, home


def _submit(server, dataset_id: str, model: str) -> str:
    r = api(server, "POST", "/api/submit", json={"application": "cell-type-annotation", "model": model,
                                                 "dataset": dataset_id, "label_column": "celltype"})
    assert r.status_code == 202, r.text
    return r.json()["run_id"]


def test_the_cli_during_a_run_leaves_it_running_and_it_ends_done(servers, request):
    a, _b, home = servers
    ds = upload(a, PBMC).json()["dataset_id"]
    run_id = _submit(a, ds, "geneformer")
    wait_until(lambda: api(a, "GET", f"/api/status/{run_id}").json()["status"] == "running", 120, "the run to run")
    env = {**os.environ, "HELICAL_PLATFORM_HOME": str(home)}
    info = subprocess.run([str(REPO / ".venv" / "bin" / "helical-platform"), "info"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert info.returncode == 0, info.stderr
    seen = [api(a, "GET", f"/api/status/{run_id}").json()["status"]]
    assert seen[0] in ACTIVE, f"the run ended before `info` returned ({seen[0]}): this test proves nothing"
    while seen[-1] in ACTIVE:
        time.sleep(0.5)
        seen.append(api(a, "GET", f"/api/status/{run_id}").json()["status"])
    assert "failed" not in seen and seen[-1] == "done", seen
    assert api(a, "GET", f"/api/results/{run_id}").status_code == 200
    record("faults", "`helical-platform info` on the same data home while a run is in flight",
           "Geneformer run on a served instance; the CLI run as a user runs it",
           f"the run stayed {seen[0]} and ended done (statuses seen: {' → '.join(dict.fromkeys(seen))})",
           "never failed; results served", request.node.nodeid)


def test_two_servers_on_one_home_one_killed_its_runs_fail_within_the_lease(servers, request):
    a, b, _home = servers
    ds = upload(b, PBMC).json()["dataset_id"]
    theirs = _submit(b, ds, "baseline")
    mine = _submit(a, ds, "geneformer")
    assert api(a, "GET", f"/api/status/{mine}").json()["status"] in ACTIVE
    os.killpg(a.proc.pid, signal.SIGKILL)  # server A, its Dask cluster, everything: no clean-up at all
    killed = time.monotonic()
    a.proc.wait(30)
    status = wait_until(lambda: (s := api(b, "GET", f"/api/status/{mine}").json())["status"] == "failed" and s,
                        2 * LEASE_S + 10, "server B to fail the killed server's run")
    failed_after = time.monotonic() - killed
    assert "Interrupted by a restart or stop of its server" in status["error"]
    assert wait_run(b, theirs)["status"] == "done"
    assert api(b, "GET", f"/api/results/{theirs}").json()["cells"]["total"] == 599
    again = _submit(b, ds, "baseline")  # the survivor carries on
    assert wait_run(b, again)["status"] == "done"
    record("faults", "Two server processes on one data home and database; one killed with SIGKILL",
           f"a run in flight on each; lease {LEASE_S} s",
           f"the killed server's run failed {failed_after:.1f} s after the kill, by the survivor: "
           f"{status['error'][:140]}", "the survivor's run done; it takes new runs", request.node.nodeid)
