"""Every state change of another user's data is refused unless the caller is an admin: cancelling a queued, running
or finished run, deleting a dataset's stored embeddings, through the services (the paths the dashboard's buttons
and the local command line take), the dashboard's button itself, and the REST API; and a user's runs queued or
running at once are capped (HELICAL_PLATFORM_MAX_QUEUED_RUNS, 429)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import requests
from sqlmodel import select

from app.platform import Platform
from app.settings import Settings
from app.users import Forbidden, User, user
from inference.embedding_store import EmbeddingKey
from store.artifacts import new_id
from store.engine import read_session, write_session
from store.tables import Run, RunStatus, ServerInstance
from tests.api_client import error_of
from tests.conftest import PBMC
from tests.reliability import record
from tests.serving import make_serve, wait_until

APP = "cell-type-annotation"
TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789ab", "carol": "carol-token-0123456789"}


def _settings(home: Path, **extra: str) -> Settings:
    return Settings.from_env({"HELICAL_PLATFORM_HOME": str(home), "HELICAL_PLATFORM_GENERATE_WEIGHTS": "none",
                              "HELICAL_PLATFORM_ADMINS": "carol", **extra})


@pytest.fixture
def platform(tmp_path):
    p = Platform(_settings(tmp_path / "home", HELICAL_PLATFORM_MAX_QUEUED_RUNS="2"), start_cluster=False)
    yield p
    p.close()


def _ingest(p: Platform, who: str, path: Path = PBMC, name: str = "pbmc.h5ad"):  # noqa: ANN202
    with open(path, "rb") as fh:
        return p.datasets.ingest(fh, name, User(who))


def _run(p: Platform, ds, who: str | None, status: RunStatus) -> Run:
    run = Run(id=new_id(), application_id=APP, model_id="baseline", dataset_id=ds.id, status=status,
              created_by=who, owner=p.lease.instance_id)
    with write_session(p.engine) as s:
        s.add(run)
    return run


def _store_embedding(p: Platform, ds) -> int:
    key = EmbeddingKey("c" * 64, "tiny", "fp32", ds.sha256)
    with p.datasets.embeddings.claim(key, 4) as writer:
        writer.write(0, np.ones((4, 8), np.float32))
    return p.datasets.embeddings_size(ds)


@pytest.mark.parametrize("status", [RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.DONE])
@pytest.mark.parametrize("maker", ["alice", None])
def test_another_user_cannot_cancel_a_run_an_admin_and_its_maker_may(platform, status, maker, request):
    p = platform
    p.lease.start(reconcile=False)
    ds = _ingest(p, "alice")
    run = _run(p, ds, maker, status)
    with pytest.raises(Forbidden) as refused:
        p.runs.cancel(run.id, user(p.settings, "bob"))
    words = str(refused.value)
    assert f"belongs to {maker or 'no recorded user'}" in words and "may cancel it" in words
    assert p.runs.get(run.id).status == status  # nothing changed
    if status == RunStatus.DONE:  # no cluster here: a finished run's cancel answers its status, past the check
        for who in ("carol",) + ((maker,) if maker else ()):
            assert p.runs.cancel(run.id, user(p.settings, who))["status"] == "done"
    else:  # the check passed: what stops them now is that this test has no cluster to tell
        with pytest.raises(RuntimeError, match="Dask cluster"):
            p.runs.cancel(run.id, user(p.settings, "carol"))
    record("security", "Cancelling another user's run", f"bob cancels a {status} run of "
           f"{maker or 'nobody recorded'} (service, as the REST API and notebook call it)",
           f"Forbidden: {words[:90]}", "the run's status unchanged; an admin (and its maker) may",
           request.node.nodeid)


def test_another_user_cannot_delete_a_datasets_stored_embeddings(platform, request):
    p = platform
    ds = _ingest(p, "alice")
    size = _store_embedding(p, ds)
    assert size > 0
    for who in ("bob", "api"):
        with pytest.raises(Forbidden, match="belongs to alice"):
            p.datasets.delete_embeddings(ds.id, user(p.settings, who))
        assert p.datasets.embeddings_size(ds) == size
    assert p.datasets.delete_embeddings(ds.id, user(p.settings, "carol"))["bytes_freed"] == size  # an admin
    assert p.datasets.embeddings_size(ds) == 0
    size = _store_embedding(p, ds)
    assert p.datasets.delete_embeddings(ds.id, user(p.settings, "alice"))["bytes_freed"] == size  # its maker
    assert p.datasets.delete_embeddings(ds.id)["bytes_freed"] == 0  # the local command line (no user) may
    record("security", "Deleting another user's stored embeddings", "bob (and the shared-token user) delete the "
           "embeddings of alice's dataset (service)", "Forbidden, belongs to alice", "the embeddings kept; an "
           "admin and alice may delete them", request.node.nodeid)


def test_the_dashboards_embeddings_button_passes_the_session_user_and_shows_the_refusal(platform, request):
    from dashboards.data import DataPanel

    p = platform
    ds = _ingest(p, "alice")
    size = _store_embedding(p, ds)
    panel = DataPanel(p)
    panel._user_name = "bob"  # as Panel's login would name the session
    panel.dataset = ds.id
    assert panel.embeddings_button.visible
    asyncio.run(panel._delete_embeddings(None))
    assert panel.status.alert_type == "danger" and "belongs to alice" in panel.status.object
    assert p.datasets.embeddings_size(ds) == size
    panel._user_name = "alice"
    asyncio.run(panel._delete_embeddings(None))
    assert panel.status.alert_type == "success" and p.datasets.embeddings_size(ds) == 0
    record("security", "Deleting another user's stored embeddings", "bob clicks the dashboard's *Delete stored "
           "embeddings* on alice's dataset", "refused; the panel shows why (belongs to alice)",
           "the embeddings kept; alice's own click deletes them", request.node.nodeid)


def test_a_user_cannot_hold_more_than_the_cap_of_queued_or_running_runs(platform, request):
    from app.runs import TooManyRuns

    p = platform
    ref = _ingest(p, "alice", name="ref.h5ad")
    source = p.artifacts.home / "query-src.h5ad"
    ad.read_h5ad(PBMC)[::3].copy().write_h5ad(source)
    query = _ingest(p, "alice", source, "query.h5ad")
    alice, bob = user(p.settings, "alice"), user(p.settings, "bob")
    args = (APP, "baseline", query.id, ref.id, "celltype")
    _run(p, query, "alice", RunStatus.QUEUED)
    _run(p, query, "alice", RunStatus.RUNNING)
    _run(p, query, "alice", RunStatus.DONE)  # finished runs do not count
    with pytest.raises(TooManyRuns) as refused:
        p.runs.submit(*args, user=alice)
    words = str(refused.value)
    assert "alice has 2 run(s) queued or running; at most 2 per user (HELICAL_PLATFORM_MAX_QUEUED_RUNS)" in words
    with pytest.raises(TooManyRuns):
        p.runs.submit_group(APP, ["baseline"], query.id, ref.id, "celltype", user=alice)
    with read_session(p.engine) as s:
        assert len(list(s.exec(select(Run).where(Run.created_by == "alice")))) == 3  # nothing more recorded
    assert p.runs.submit(*args, user=bob).created_by == "bob"  # another user's own count
    assert p.runs.submit(*args).created_by is None  # the server itself / local command line: no cap
    from app.rest_base import translate

    assert translate(refused.value).status == 400  # the REST submit turns it into 429 (tested over HTTP below)
    record("security", "Runs queued at once by one user (HELICAL_PLATFORM_MAX_QUEUED_RUNS=2)", "alice, with one "
           "queued and one running, submits a run and a group (service)", f"TooManyRuns: {words[:100]}",
           "nothing recorded for alice; bob still submits", request.node.nodeid)


# ---- over HTTP: one served instance -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ownership")
    tokens = tmp / "tokens.txt"
    tokens.write_text("".join(f"{u} {t}\n" for u, t in TOKENS.items()))
    logins = tmp / "logins.json"  # a dashboard login too: users for REST need one for the dashboard
    logins.write_text(json.dumps({u: f"{u} password 0123" for u in TOKENS}))
    with make_serve(tmp, {"HELICAL_PLATFORM_TOKENS": str(tokens), "HELICAL_PLATFORM_ADMINS": "carol",
                          "HELICAL_PLATFORM_MAX_QUEUED_RUNS": "2",
                          "SERVE_ARGS": f"--basic-auth {logins} --cookie-secret {'o' * 32}"}) as s:
        yield s


def _as(server, who: str, method: str, path: str, **kw) -> requests.Response:
    return requests.request(method, server.url + path, headers={"Authorization": f"Bearer {TOKENS[who]}"},
                            timeout=300, **kw)


@pytest.fixture(scope="module")
def alices(server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ownership-files")
    cells = ad.read_h5ad(PBMC)
    ids = {}
    for name, part in (("ref.h5ad", cells[:250]), ("query.h5ad", cells[250:450])):
        part.copy().write_h5ad(folder / name)
        with open(folder / name, "rb") as fh:
            up = requests.post(server.url + "/api/upload", params={"filename": name}, data=fh, timeout=300,
                               headers={"Authorization": f"Bearer {TOKENS['alice']}"})
        assert up.status_code == 201, up.text
        ids[name] = up.json()["dataset_id"]
    return ids


def _submit(server, who: str, alices: dict) -> requests.Response:
    return _as(server, who, "POST", "/api/submit", json={"application": APP, "model": "baseline",
                                                          "dataset": alices["query.h5ad"],
                                                          "reference": alices["ref.h5ad"], "label_column": "celltype"})


def _finished(server, run_id: str) -> dict:
    """The run's status once it has ended (the whole answer: a failure's message is what a red test must show)."""
    def status() -> dict | None:
        s = _as(server, "alice", "GET", f"/api/status/{run_id}").json()
        return s if s["status"] in ("done", "failed", "cancelled") else None

    return wait_until(status, 300, f"run {run_id}", interval=0.5)


def test_over_rest_bob_cannot_cancel_alices_run_and_an_admin_can(server, alices, request):
    run = _submit(server, "alice", alices).json()["run_id"]
    refused = _as(server, "bob", "POST", f"/api/runs/{run}/cancel")  # at once: queued or running
    assert refused.status_code == 403 and error_of(refused)["code"] == "forbidden", refused.text
    assert "belongs to alice" in error_of(refused)["message"]
    ended = _finished(server, run)
    assert ended["status"] == "done", (ended, server.log()[-6000:])  # bob's cancel did nothing: it ran to its end
    again = _as(server, "bob", "POST", f"/api/runs/{run}/cancel")  # a finished one too: not his to touch
    assert again.status_code == 403
    second = _submit(server, "alice", alices).json()["run_id"]
    by_admin = _as(server, "carol", "POST", f"/api/runs/{second}/cancel")
    assert by_admin.status_code == 200, by_admin.text
    assert _finished(server, second)["status"] in ("cancelled", "done")  # an admin may (it may have ended first)
    own = _as(server, "alice", "POST", f"/api/runs/{run}/cancel")
    assert own.status_code == 200 and own.json()["status"] == "done"
    record("security", "Cancelling another user's run", "bob POSTs /api/runs/{alice's run}/cancel while it is "
           "queued/running, and after it finished", "403 forbidden, belongs to alice", "alice's run finished "
           "(done); the admin carol's cancel is accepted (200)", request.node.nodeid)


def test_over_rest_bob_cannot_delete_alices_stored_embeddings(server, alices, request):
    from inference.embedding_store import EmbeddingStore

    ds = _as(server, "alice", "GET", f"/api/datasets/{alices['ref.h5ad']}").json()
    store = EmbeddingStore(server.home / "embeddings")  # the served data home: what a run would have stored
    with store.claim(EmbeddingKey("d" * 64, "tiny", "fp32", ds["sha256"]), 4) as writer:
        writer.write(0, np.ones((4, 8), np.float32))
    size = store.size(ds["sha256"])
    refused = _as(server, "bob", "DELETE", f"/api/datasets/{ds['dataset_id']}/embeddings")
    assert refused.status_code == 403 and "belongs to alice" in error_of(refused)["message"], refused.text
    assert store.size(ds["sha256"]) == size
    ok = _as(server, "alice", "DELETE", f"/api/datasets/{ds['dataset_id']}/embeddings")
    assert ok.status_code == 200 and ok.json()["bytes_freed"] == size
    record("security", "Deleting another user's stored embeddings", "bob DELETEs /api/datasets/{alice's}/"
           "embeddings", "403 forbidden, belongs to alice", "the embeddings kept; alice's own DELETE frees them",
           request.node.nodeid)


def test_over_rest_a_submission_past_the_users_cap_answers_429(server, alices, request):
    import sqlite3

    db = sqlite3.connect(server.home / "platform.db", timeout=30)
    try:  # two runs alice already holds, owned by the live server (so nothing fails them meanwhile)
        (owner,) = db.execute(f"SELECT id FROM {ServerInstance.__tablename__} WHERE stopped_at IS NULL "
                              "ORDER BY heartbeat_at DESC LIMIT 1").fetchone()
        held = [new_id(), new_id()]
        for run_id in held:
            db.execute("INSERT INTO runs (id, application_id, model_id, dataset_id, status, progress, stage, "
                       "cells_done, cells_total, created_at, parameters, metrics, stage_timings, provenance, owner, "
                       "created_by) VALUES (?, ?, 'baseline', ?, 'queued', 0, 'queued', 0, 0, "
                       "CURRENT_TIMESTAMP, '{}', '{}', '{}', '{}', ?, 'alice')",
                       (run_id, APP, alices["query.h5ad"], owner))
        db.commit()
        refused = _submit(server, "alice", alices)
        assert refused.status_code == 429 and error_of(refused)["code"] == "too_many_runs", refused.text
        message = error_of(refused)["message"]
        assert "at most 2 per user (HELICAL_PLATFORM_MAX_QUEUED_RUNS)" in message
        assert refused.headers.get("Retry-After")
        assert _submit(server, "bob", alices).status_code == 202  # bob's own count
        db.execute("UPDATE runs SET status = 'cancelled' WHERE id IN (?, ?)", held)
        db.commit()
        assert _submit(server, "alice", alices).status_code == 202  # room again
    finally:
        db.close()
    record("security", "Runs queued at once by one user (HELICAL_PLATFORM_MAX_QUEUED_RUNS=2)", "alice, holding 2 "
           "queued runs, POSTs /api/submit", f"429 too_many_runs (Retry-After): {message[:90]}",
           "bob still submits; alice again once hers ended", request.node.nodeid)
