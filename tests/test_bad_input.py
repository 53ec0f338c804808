"""The bad-input corpus through both upload paths: the API of a served instance and the dashboard's upload handler.

Each file gets its own words and a 4xx (or is stored, with the note a user needs); the server stays up, the dataset
and the finished run stored before are untouched, and no partial file is left anywhere in the data home.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from dashboards.data import DataPanel, report_markdown
from tests.api_client import TOKEN, api, dataset_ids, error_of, own_copy, settle, upload, wait_run
from tests.broken_files import CORPUS
from tests.conftest import PBMC, TOKEN_SERVER_ENV
from tests.reliability import record
from tests.rendering import shown as rendered

LIMIT_MB = 100
HELD = "server up; earlier dataset and run unchanged; no partial file"


def _digest(home: Path, sha256: str | None = None, run_id: str | None = None) -> dict[str, str]:
    """sha256 of every file under datasets/ and runs/, or of one dataset's file and its run's files (on a shared
    server): what was stored before must stay byte for byte."""
    files = sorted(f for sub in ("datasets", "runs") for f in (home / sub).rglob("*") if f.is_file())
    if sha256 is not None:
        files = [f for f in files if f.name.startswith(sha256) or run_id in f.relative_to(home).parts]
        assert files, f"the dataset {sha256} and run {run_id} have no files under {home}"
    return {str(f.relative_to(home)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def _no_partials(home: Path) -> list[str]:
    left = [str(p) for p in home.rglob(".partial-*")]
    left += [str(p) for p in (home / "tmp").iterdir()] if (home / "tmp").exists() else []
    return left


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("corpus")
    out = {}
    for i, (case, c) in enumerate(CORPUS.items()):
        sub = folder / str(i)
        sub.mkdir()
        out[case] = c.make(sub)
    return out


SERVER_LIMIT_MB = int(TOKEN_SERVER_ENV["HELICAL_PLATFORM_MAX_UPLOAD_MB"])


@pytest.fixture(scope="module")
def server(token_server):
    return settle(token_server)  # its checks of the data home's temporary files need a quiet server


def _api_outcome(server, case: str, path: Path, good_id: str, raw: bool) -> tuple[int, str]:
    c = CORPUS[case]
    r = upload(server, path, name=c.name, raw=raw)
    if c.refused:
        assert 400 <= r.status_code < 500, (case, r.status_code, r.text[:500])
        err = error_of(r)
        text = err["message"] + " " + " ".join(e["message"] for e in (err.get("details") or {}).get("errors", []))
        assert c.words in text, (case, text)
        return r.status_code, f"{r.status_code} {err['code']}: {err['message'][:160]}"
    assert r.status_code == 201, (case, r.text[:500])
    body = r.json()
    if c.label_column:  # stored as a query; refused as a reference with that label column, with the reason
        s = api(server, "POST", "/api/submit", json={
            "application": "cell-type-annotation", "model": "baseline", "dataset": good_id,
            "reference": body["dataset_id"], "label_column": c.label_column})
        assert 400 <= s.status_code < 500, (case, s.text)
        msg = error_of(s)["message"]
        assert c.words in msg, (case, msg)
        return s.status_code, f"stored; as a reference: {s.status_code} {msg[:160]}"
    text = rendered(report_markdown(body["report"], body["file_name"]))
    assert c.words in text, (case, text)
    notes = [w["message"][:120] for w in body["report"]["warnings"]]
    return r.status_code, f"201 stored, {body['n_cells']:,} cells" + (f"; note: {notes[0]}" if notes else "")


def test_every_bad_file_through_the_api_is_refused_with_its_words_and_loses_nothing(server, corpus, request,
                                                                                     tmp_path):
    stored_before = dataset_ids(server)  # the server is shared: what other modules stored stays out of the count
    good = upload(server, own_copy(PBMC, tmp_path / "good.h5ad", "bad input"), name="pbmc3k subset.h5ad")
    assert good.status_code == 201, good.text
    good_id = good.json()["dataset_id"]
    run = api(server, "POST", "/api/submit", json={"application": "cell-type-annotation", "model": "baseline",
                                                   "dataset": good_id, "label_column": "celltype"}).json()
    assert wait_run(server, run["run_id"])["status"] == "done"
    before_results = api(server, "GET", f"/api/results/{run['run_id']}", params={"limit": 600}).json()
    before = _digest(server.home, good.json()["sha256"], run["run_id"])

    for case, path in corpus.items():
        outcomes = [_api_outcome(server, case, path, good_id, raw) for raw in (True, False)]
        assert api(server, "GET", "/api/models").status_code == 200, f"server down after {case}"
        assert not _no_partials(server.home), (case, _no_partials(server.home))
        record("bad input", case, "API raw + multipart", outcomes[0][1], HELD, request.node.nodeid)

    # over the limit, streamed without a Content-Length: counted and stopped, nothing written whole
    def body():
        chunk = b"\0" * 2**20
        for _ in range(SERVER_LIMIT_MB + 1):
            yield chunk

    r = requests.post(server.url + "/api/upload", params={"filename": "huge.h5ad"}, data=body(), timeout=300,
                      headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/octet-stream"})
    assert r.status_code == 413 and str(SERVER_LIMIT_MB) in error_of(r)["message"]
    record("bad input", f"over the upload limit ({SERVER_LIMIT_MB} MB setting)",
           "API raw, chunked (no Content-Length)", f"413 too_large: {error_of(r)['message'][:160]}", HELD,
           request.node.nodeid)

    after = _digest(server.home, good.json()["sha256"], run["run_id"])
    assert after == before  # nothing stored before was touched
    stored = dataset_ids(server) - stored_before
    assert len(stored) == 1 + sum(1 for c in CORPUS.values() if not c.refused)  # raw and multipart: one each
    on_disk = [f for f in (server.home / "datasets").rglob("*") if f.is_file()]
    assert len(on_disk) == len(dataset_ids(server))  # refused files left nothing
    assert api(server, "GET", f"/api/results/{run['run_id']}", params={"limit": 600}).json() == before_results
    assert not _no_partials(server.home)


@pytest.fixture
def panel(tmp_path):
    from app.platform import Platform
    from app.settings import Settings

    p = Platform(Settings.from_env({"HELICAL_PLATFORM_HOME": str(tmp_path / "home"),
                                    "HELICAL_PLATFORM_MAX_UPLOAD_MB": str(LIMIT_MB)}), start_cluster=False)
    yield DataPanel(p), p
    p.close()


def _drop(data_panel: DataPanel, name: str, payload: bytes) -> str:
    """What the FileDropper hands the dashboard once the browser's chunks are in: {name: bytes}."""
    asyncio.run(data_panel._on_upload(SimpleNamespace(new={name: payload})))
    markdown = f"{data_panel.status.object}\n{data_panel.report.object}"
    return "\n".join(rendered(line) for line in markdown.splitlines())


@pytest.mark.slow
def test_every_bad_file_through_the_dashboard_upload_shows_its_words_and_loses_nothing(panel, corpus, request,
                                                                                     tmp_path):
    data_panel, platform = panel
    with open(PBMC, "rb") as fh:
        good = platform.datasets.ingest(fh, "pbmc3k subset.h5ad")
    home = platform.settings.home
    before = _digest(home)
    for case, path in corpus.items():
        c = CORPUS[case]
        shown = _drop(data_panel, c.name or path.name, path.read_bytes())
        assert c.words in shown, (case, shown)
        if c.refused:
            assert data_panel.status.alert_type == "danger", case
            assert "cannot be used" in shown or "not stored" in shown or "path separator" in shown, (case, shown)
        else:
            assert data_panel.status.alert_type == "success", (case, shown)
        assert not _no_partials(home), case
        first = next((line for line in shown.splitlines() if c.words in line), "")
        record("bad input", case, "dashboard upload", ("refused: " if c.refused else "stored: ") + first[:160],
               HELD, request.node.nodeid)
    shown = _drop(data_panel, "huge.h5ad", b"\0" * ((LIMIT_MB + 1) * 2**20))
    assert data_panel.status.alert_type == "danger" and str(LIMIT_MB) in shown
    record("bad input", f"over the upload limit ({LIMIT_MB} MB setting)", "dashboard upload",
           f"refused: {rendered(data_panel.status.object)[:160]}", HELD, request.node.nodeid)
    assert {k: v for k, v in _digest(home).items() if k in before} == before
    assert platform.datasets.get(good.id).sha256 == good.sha256
    assert not _no_partials(home)
