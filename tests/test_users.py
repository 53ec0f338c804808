"""Users: REST tokens that say who calls, what each made (created_by), "mine" lists, and deletion limited to one's
own unless an admin; a served instance over real HTTP, and the tokens file's rules."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import pytest
import requests

from app.settings import Settings, SettingsError
from app.users import ANONYMOUS, SHARED_TOKEN_USER, User, check_delete, read_tokens, token_user, user
from tests.api_client import error_of
from tests.conftest import PBMC
from tests.reliability import record
from tests.serving import make_serve

TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789ab", "carol": "carol-token-0123456789"}
SHARED = "shared-token-0123456789"


def _as(server, who: str, method: str, path: str, **kw) -> requests.Response:
    token = SHARED if who == SHARED_TOKEN_USER else TOKENS[who]
    return requests.request(method, server.url + path, headers={"Authorization": f"Bearer {token}"}, timeout=300,
                            **kw)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("users")
    tokens = tmp / "tokens.txt"
    tokens.write_text("# user token\n" + "".join(f"{u} {t}\n" for u, t in TOKENS.items()))
    logins = tmp / "users.json"  # users configured: the dashboard must ask for a login too, or the server stops
    logins.write_text(json.dumps({u: f"{u}-password-123" for u in TOKENS}))
    with make_serve(tmp, {"HELICAL_PLATFORM_TOKENS": str(tokens), "HELICAL_PLATFORM_ADMINS": "carol",
                          "HELICAL_PLATFORM_API_TOKEN": SHARED, "HELICAL_PLATFORM_QUOTA_GB": "0.03",
                          "SERVE_ARGS": f"--basic-auth {logins} --cookie-secret {'t' * 32}"}) as s:
        yield s


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("users-files")
    cells = ad.read_h5ad(PBMC)
    ref, query = folder / "ref.h5ad", folder / "query.h5ad"
    cells[:250].copy().write_h5ad(ref)
    cells[250:450].copy().write_h5ad(query)
    return ref, query


def _upload(server, who: str, path: Path) -> str:
    with open(path, "rb") as fh:
        up = requests.post(server.url + "/api/upload", params={"filename": path.name}, data=fh, timeout=300,
                           headers={"Content-Type": "application/octet-stream",
                                    "Authorization": f"Bearer {TOKENS[who]}"})
    assert up.status_code == 201, up.text
    return up.json()["dataset_id"]


def test_each_user_sees_what_they_made_and_deletes_only_their_own_unless_admin(server, files):
    ref, ds = _upload(server, "alice", files[0]), _upload(server, "alice", files[1])
    sub = _as(server, "alice", "POST", "/api/submit", json={"application": "cell-type-annotation",
                                                             "model": "baseline", "dataset": ds, "reference": ref,
                                                             "label_column": "celltype"})
    assert sub.status_code == 202, sub.text
    run = sub.json()["run_id"]
    assert _wait(server, run) == "done"

    runs = {r["run_id"]: r for r in _as(server, "bob", "GET", "/api/runs").json()}
    assert runs[run]["created_by"] == "alice"  # everyone's list says whose it is
    assert _as(server, "bob", "GET", "/api/runs", params={"mine": "true"}).json() == []
    assert [r["run_id"] for r in _as(server, "alice", "GET", "/api/runs", params={"mine": "true"}).json()] == [run]
    datasets = _as(server, "alice", "GET", "/api/datasets", params={"mine": "true"}).json()
    assert {d["dataset_id"] for d in datasets} == {ds, ref} and {d["created_by"] for d in datasets} == {"alice"}
    assert _as(server, "bob", "GET", "/api/datasets", params={"mine": "true"}).json() == []
    bad = _as(server, "bob", "GET", "/api/runs", params={"mine": "yes"})
    assert bad.status_code == 400 and "mine must be true or false" in error_of(bad)["message"]

    saved = _as(server, "alice", "POST", "/api/annotators", json={"run_id": run, "name": "alice pbmc"})
    assert saved.status_code == 201, saved.text
    assert saved.json()["created_by"] == "alice" and saved.json()["author"] == "alice"  # her name by default
    mine = _as(server, "bob", "GET", "/api/annotators", params={"mine": "true"}).json()
    assert mine == []  # the built-in ones are nobody's
    refused = _as(server, "bob", "DELETE", "/api/annotators/alice pbmc")
    assert refused.status_code == 403 and "belongs to alice" in error_of(refused)["message"]
    assert _as(server, "alice", "DELETE", "/api/annotators/alice pbmc").status_code == 200
    refused = _as(server, "bob", "DELETE", f"/api/runs/{run}")
    assert refused.status_code == 403 and error_of(refused)["code"] == "forbidden"
    assert "belongs to alice" in error_of(refused)["message"]
    refused = _as(server, "bob", "DELETE", f"/api/datasets/{ds}", params={"cascade": "true"})
    assert refused.status_code == 403 and "belongs to alice" in error_of(refused)["message"]
    assert _as(server, "bob", "GET", f"/api/runs/{run}").json()["status"] == "done"  # nothing lost

    # the shared token still works, as one user who may delete only its own
    shared = _as(server, SHARED_TOKEN_USER, "DELETE", f"/api/runs/{run}")
    assert shared.status_code == 403
    assert _as(server, "alice", "DELETE", f"/api/runs/{run}").status_code == 200  # her own
    second = _as(server, "alice", "POST", "/api/submit", json={"application": "cell-type-annotation",
                                                                "model": "baseline", "dataset": ds,
                                                                "reference": ref, "label_column": "celltype"})
    assert _wait(server, second.json()["run_id"]) == "done"
    gone = _as(server, "carol", "DELETE", f"/api/datasets/{ds}", params={"cascade": "true"})  # an admin
    assert gone.status_code == 200 and gone.json()["runs_deleted"] == [second.json()["run_id"]], gone.text

    wrong = requests.get(server.url + "/api/runs", headers={"Authorization": "Bearer not-a-known-token-at-all"},
                         timeout=30)
    assert wrong.status_code == 401 and "HELICAL_PLATFORM_TOKENS" in error_of(wrong)["message"]


def test_an_upload_over_the_users_quota_answers_413_with_the_numbers(server, tmp_path, request):
    import numpy as np
    import scipy.sparse as sp

    big = ad.AnnData(X=sp.random(3000, 2000, density=0.9, format="csr", dtype=np.float32, random_state=0))
    big.X.data = np.ceil(big.X.data * 20)
    path = tmp_path / "big.h5ad"
    big.write_h5ad(path)  # about 43 MB: over the 30 MB quota on its own
    with open(path, "rb") as fh:
        r = requests.post(server.url + "/api/upload", params={"filename": path.name}, data=fh, timeout=300,
                          headers={"Content-Type": "application/octet-stream",
                                   "Authorization": f"Bearer {TOKENS['bob']}"})
    assert r.status_code == 413 and error_of(r)["code"] == "over_quota", r.text
    message = error_of(r)["message"]
    assert "would take bob to" in message and "over the quota of 0.03 GB per user" in message
    assert _as(server, "bob", "GET", "/api/datasets", params={"mine": "true"}).json() == []  # nothing kept
    record("security", "An upload over its user's quota (HELICAL_PLATFORM_QUOTA_GB=0.03)",
           f"bob uploads a {path.stat().st_size / 1e6:.0f} MB .h5ad through the REST API with his own token",
           f"413 over_quota: {message[:120]}", "nothing kept; bob's list of datasets still empty", request.node.nodeid)


def _wait(server, run_id: str) -> str:
    from tests.serving import wait_until

    def finished() -> str | None:
        s = _as(server, "alice", "GET", f"/api/status/{run_id}").json()
        return s["status"] if s["status"] in ("done", "failed", "cancelled") else None

    return wait_until(finished, 300, f"run {run_id}", interval=1)


def test_the_tokens_file_is_checked_line_by_line(tmp_path):
    path = tmp_path / "tokens"
    for text, words in (("alice\n", "line 1: write 'user token'"),
                        ("alice short\n", "line 1: the token is shorter than 16"),
                        ("al ice token-0123456789abcdef\n", r"two words\), not 3"),
                        ("alice<script> token-0123456789abcdef\n", "the user name may hold"),
                        ("# comment\n\nalice token-0123456789abcdef\nbob token-0123456789abcdef\n",
                         "line 4: this token is already alice's")):
        path.write_text(text)
        with pytest.raises(SettingsError, match=words):
            read_tokens(path)
    with pytest.raises(SettingsError, match="cannot read it"):
        read_tokens(tmp_path / "absent")
    path.write_text("alice token-0123456789abcdef\n")
    settings = Settings.from_env({"HELICAL_PLATFORM_TOKENS": str(path), "HELICAL_PLATFORM_ADMINS": "bob, carol"})
    assert settings.admins == ("bob", "carol")
    assert token_user(settings, "token-0123456789abcdef") == User("alice", admin=False)
    assert token_user(settings, "token-0123456789abcdeX") is None
    assert user(settings, "carol").admin and not user(settings, "alice").admin


def test_without_users_configured_everyone_is_one_user_who_may_delete_anything():
    settings = Settings.from_env({})
    anonymous = user(settings, ANONYMOUS)
    assert anonymous.admin  # as before users existed
    check_delete(anonymous, "alice", "Run x")
    check_delete(None, "alice", "Run x")  # the local command line
    with pytest.raises(PermissionError, match="belongs to no recorded user"):
        check_delete(User("bob"), None, "Run x")
