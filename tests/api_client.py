"""A small client for the REST API of a served instance, shared by the API tests."""

from __future__ import annotations

from pathlib import Path

import requests

from tests.serving import wait_until

TOKEN = "test-token-1234"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def api(server, method: str, path: str, **kw) -> requests.Response:
    headers = {**AUTH, **kw.pop("headers", {})}
    return requests.request(method, server.url + path, headers=headers, timeout=300, **kw)


def upload(server, path: Path, name: str | None = None, raw: bool = True) -> requests.Response:
    if raw:
        with open(path, "rb") as fh:
            return api(server, "POST", "/api/upload", params={"filename": name or path.name}, data=fh,
                       headers={"Content-Type": "application/octet-stream"})
    with open(path, "rb") as fh:
        return api(server, "POST", "/api/upload", files={"file": (name or path.name, fh)})


def wait_run(server, run_id: str, timeout: float = 300) -> dict:
    def finished():
        s = api(server, "GET", f"/api/status/{run_id}").json()
        return s if s["status"] in ("done", "failed", "cancelled") else None

    return wait_until(finished, timeout, f"run {run_id}", interval=1)


def error_of(response: requests.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body
    assert "Traceback" not in response.text
    return body["error"]
