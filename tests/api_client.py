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


def own_copy(source: Path | object, path: Path, tag: str) -> Path:
    """``source`` (a path or an AnnData) written to ``path`` with ``uns['test_copy'] = tag``: bytes no other test
    uploads, so a test on a shared server gets a dataset of its own (uploads are stored by content)."""
    import anndata as ad

    adata = ad.read_h5ad(source) if isinstance(source, Path) else source.copy()
    adata.uns["test_copy"] = tag
    adata.write_h5ad(path)
    return path


def dataset_ids(server) -> set[str]:
    return {d["dataset_id"] for d in api(server, "GET", "/api/datasets").json()}


def settle(server, timeout: float = 600) -> object:
    """Wait until no run on ``server`` is queued or running (a module before this one on a shared server may have
    left one cancelling): a module that checks the data home's temporary files starts from a quiet server."""
    def quiet() -> bool:
        return all(r["status"] in ("done", "failed", "cancelled") for r in api(server, "GET", "/api/runs").json())

    wait_until(quiet, timeout, "the shared server's runs to finish", interval=1)
    return server
