"""Two server processes on one data home, and the CLI beside them: each run belongs to the process that took it.

Real processes throughout: two `make serve` instances sharing one home and one database (as two replicas, or
`panel serve --num-procs 2`, would), `helical-platform info` run as a user runs it, and a real SIGKILL. Both
databases: the home's SQLite file (one host) and a real PostgreSQL server (the deployment for a lab that outgrows
one process: replicas on one PostgreSQL and a shared data home), where the REST flow's deletes are checked too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.api_client import TOKEN, api, upload, wait_run
from tests.conftest import PBMC, REPO
from tests.generated_weights import seed as seed_generated_weights
from tests.reliability import record
from tests.serving import make_serve, wait_until

pytestmark = pytest.mark.faults


LEASE_S = 6
ACTIVE = ("queued", "running")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def servers(request, tmp_path_factory):
    home = tmp_path_factory.mktemp("shared-home") / "home"
    env = {"HELICAL_PLATFORM_API_TOKEN": TOKEN, "HELICAL_PLATFORM_HOME": str(home),
           "HELICAL_PLATFORM_LEASE_S": str(LEASE_S)}
    database = None
    if request.param == "postgresql":  # the SQLite pair's A generates the weights itself; this pair's home has them
        seed_generated_weights(home)
        cluster = request.getfixturevalue("postgres_cluster")
        database = cluster.create_database("replicas")
        env["HELICAL_PLATFORM_DB_URL"] = database
    try:
        with make_serve(tmp_path_factory.mktemp("a"), env) as a:
            with make_serve(tmp_path_factory.mktemp("b"), env) as b:  # started after A: one writes the weights
                yield a, b, home, env
    finally:
        if database:
            cluster.drop_database(database)


def _backend(servers) -> str:  # noqa: ANN001
    return "PostgreSQL" if "HELICAL_PLATFORM_DB_URL" in servers[3] else "SQLite"


def _submit(server, dataset_id: str, model: str) -> str:
    r = api(server, "POST", "/api/submit", json={"application": "cell-type-annotation", "model": model,
                                                 "dataset": dataset_id, "label_column": "celltype"})
    assert r.status_code == 202, r.text
    return r.json()["run_id"]


def test_the_cli_during_a_run_leaves_it_running_and_it_ends_done(servers, request):
    a, _b, _home, served_env = servers
    ds = upload(a, PBMC).json()["dataset_id"]
    run_id = _submit(a, ds, "geneformer")
    wait_until(lambda: api(a, "GET", f"/api/status/{run_id}").json()["status"] == "running", 120, "the run to run")
    env = {**os.environ, **served_env}
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
    record("faults", f"`helical-platform info` on the same data home while a run is in flight ({_backend(servers)})",
           "Geneformer run on a served instance; the CLI run as a user runs it",
           f"the run stayed {seen[0]} and ended done (statuses seen: {' → '.join(dict.fromkeys(seen))})",
           "never failed; results served", request.node.nodeid)


def test_two_servers_on_one_home_one_killed_its_runs_fail_within_the_lease(servers, request):
    a, b, _home, _env = servers
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
    record("faults", f"Two server processes on one data home and {_backend(servers)} database; one killed with "
           "SIGKILL",
           f"a run in flight on each; lease {LEASE_S} s",
           f"the killed server's run failed {failed_after:.1f} s after the kill, by the survivor: "
           f"{status['error'][:140]}", "the survivor's run done; it takes new runs", request.node.nodeid)


def test_the_survivor_deletes_a_run_and_a_dataset_with_its_runs(servers):
    """The REST lifecycle on the shared database: a finished run and then its dataset (with ``cascade``) go, rows
    and files, and nothing of them is listed afterwards."""
    _a, b, home, _env = servers
    ds = upload(b, PBMC).json()["dataset_id"]  # the same bytes as before: the stored dataset
    run_id = _submit(b, ds, "baseline")
    assert wait_run(b, run_id)["status"] == "done"
    run_dir = home / "runs" / run_id
    assert run_dir.is_dir()
    assert api(b, "DELETE", f"/api/runs/{run_id}").status_code == 200
    assert api(b, "GET", f"/api/runs/{run_id}").status_code == 404 and not run_dir.exists()
    refused = api(b, "DELETE", f"/api/datasets/{ds}")
    assert refused.status_code == 409 and "cascade" in refused.json()["error"]["message"]
    gone = api(b, "DELETE", f"/api/datasets/{ds}", params={"cascade": "true"})
    assert gone.status_code == 200, gone.text
    assert ds not in {d["dataset_id"] for d in api(b, "GET", "/api/datasets").json()}
    assert not [r for r in api(b, "GET", "/api/runs").json() if r["dataset"] == ds]
    assert not list((home / "deleting").glob("*.json"))  # no deletion left half-done
