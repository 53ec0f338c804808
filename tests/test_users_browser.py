"""Two users through Panel's basic auth in a real browser (Debian's chromium): each sees who they are signed in as,
the history says who started each run and filters to their own, and the dashboard lets a user delete only what
they made. Alice's run is made through the REST API with her token (the tokens file names her), as a script of
hers would."""

from __future__ import annotations

import json

import pytest
import requests

from tests.api_client import error_of
from tests.conftest import PBMC
from tests.reliability import record
from tests.serving import browser_page, make_serve, wait_until

PASSWORDS = {"alice": "alice-password-1", "bob": "bob-password-22"}
ALICE_TOKEN = "alice-token-0123456789abcdef"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("users-browser")
    (tmp / "users.json").write_text(json.dumps(PASSWORDS))
    (tmp / "tokens").write_text(f"alice {ALICE_TOKEN}\n")
    env = {"HELICAL_PLATFORM_TOKENS": str(tmp / "tokens"), "HELICAL_PLATFORM_ADMINS": "carol",
           "SERVE_ARGS": f"--basic-auth {tmp / 'users.json'} --cookie-secret {'u' * 32}"}
    with make_serve(tmp, env) as s:
        yield s


def _alice(server, method: str, path: str, **kw) -> requests.Response:  # noqa: ANN003
    return requests.request(method, server.url + path, timeout=300,
                            headers={"Authorization": f"Bearer {ALICE_TOKEN}", **kw.pop("headers", {})}, **kw)


def _sign_in(page, server, name: str) -> None:  # noqa: ANN001
    page.goto(server.url + "/login", timeout=120_000)
    page.fill("#username", name)
    page.fill("#password", PASSWORDS[name])
    page.locator("button[type=submit]").click()
    page.locator(".who").filter(has_text=f"Signed in as {name}").first.wait_for(timeout=120_000)


def _open_run(page, run_id: str) -> None:  # noqa: ANN001
    """Click the run's row in the history (its id is in a hidden column: the row still holds it as text)."""
    row = page.locator(".run-history .tabulator-row").filter(has_text=run_id)
    row.first.wait_for(timeout=60_000)
    row.first.locator(".tabulator-cell[tabulator-field=status]").click()
    page.locator(".delete-run button").wait_for(timeout=30_000)


def test_two_users_sign_in_see_whose_runs_are_whose_and_delete_only_their_own(server, request):
    with open(PBMC, "rb") as fh:
        up = _alice(server, "POST", "/api/upload", params={"filename": "pbmc.h5ad"}, data=fh,
                    headers={"Content-Type": "application/octet-stream"})
    assert up.status_code == 201, up.text
    submitted = _alice(server, "POST", "/api/submit", json={
        "application": "cell-type-annotation", "model": "baseline", "dataset": up.json()["dataset_id"],
        "label_column": "celltype"})
    assert submitted.status_code == 202, submitted.text
    run_id = submitted.json()["run_id"]
    wait_until(lambda: _alice(server, "GET", f"/api/status/{run_id}").json()["status"] == "done", 300,
               "alice's run to finish", interval=1)

    with browser_page() as bob:
        _sign_in(bob, server, "bob")
        bob.locator(".who").filter(has_text="may delete what they made").first.wait_for(timeout=30_000)
        row = bob.locator(".run-history .tabulator-row").filter(has_text=run_id)
        row.first.wait_for(timeout=60_000)
        assert "alice" in row.first.text_content()  # who started it
        _open_run(bob, run_id)
        bob.locator(".delete-run button").click()  # first click: asks
        bob.locator(".run-message").filter(has_text="Click").first.wait_for(timeout=30_000)
        bob.locator(".delete-run button").filter(has_text="Yes, delete it").click()  # second: refused, kept
        refusal = bob.locator(".run-message").filter(has_text="belongs to alice")
        refusal.first.wait_for(timeout=30_000)
        assert _alice(server, "GET", f"/api/runs/{run_id}").status_code == 200
        bob.locator(".history-show button").filter(has_text="mine").click()
        wait_until(lambda: bob.locator(".run-history .tabulator-row").filter(has_text=run_id).count() == 0, 30,
                   "bob's history to show only his runs (none)")
        bob_words = refusal.first.text_content().strip()

    with browser_page() as alice:
        _sign_in(alice, server, "alice")
        _open_run(alice, run_id)
        alice.locator(".delete-run button").click()
        alice.locator(".delete-run button").filter(has_text="Yes, delete it").click()
        alice.locator(".run-message").filter(has_text=f"Deleted run {run_id[:8]}").first.wait_for(timeout=60_000)
    gone = _alice(server, "GET", f"/api/runs/{run_id}")
    assert gone.status_code == 404 and error_of(gone)["code"] == "not_found"
    record("security", "Two users through Panel's basic auth in chromium (HELICAL_PLATFORM_ADMINS=carol)",
           "alice's run (made with her REST token); bob signs in and deletes it from the dashboard; alice does",
           f"bob: the history says alice started it, his 'mine' shows none, his delete refused ({bob_words[:90]}); "
           "alice: deleted", "nothing of alice's lost to bob", request.node.nodeid)
