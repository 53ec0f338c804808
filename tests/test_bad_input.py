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
from tests.api_client import TOKEN, api, error_of, upload, wait_run
from tests.broken_files import CORPUS
from tests.conftest import PBMC
from tests.reliability import record
from tests.rendering import shown as rendered
from tests.serving import make_serve

LIMIT_MB = 100
HELD = "server up; earlier dataset and run unchanged; no partial file"


def _digest(home: Path) -> dict[str, str]:
    """sha256 of every file under datasets/ and runs/ (what was stored before must stay byte for byte)."""
    out = {}
    for sub in ("datasets", "runs"):
        for f in sorted((home / sub).rglob("*")):
            if f.is_file():
                out[str(f.relative_to(home))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


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


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad-input")
    with make_serve(tmp, {"HELICAL_PLATFORM_API_TOKEN": TOKEN,
                          "HELICAL_PLATFORM_MAX_UPLOAD_MB": str(LIMIT_MB)}) as s:
        yield s


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


def test_every_bad_file_through_the_api_is_refused_with_its_words_and_loses_nothing(server, corpus, request):
    good = upload(server, PBMC, name="pbmc3k subset.h5ad")
    assert good.status_code == 201, good.text
    good_id = good.json()["dataset_id"]
    run = api(server, "POST", "/api/submit", json={"application": "cell-type-annotation", "model": "baseline",
                                                   "dataset": good_id, "label_column": "celltype"}).json()
    assert wait_run(server, run["run_id"])["status"] == "done"
    before_results = api(server, "GET", f"/api/results/{run['run_id']}", params={"limit": 600}).json()
    before = _digest(server.home)

    for case, path in corpus.items():
        outcomes = [_api_outcome(server, case, path, good_id, raw) for raw in (True, False)]
        assert api(server, "GET", "/api/models").status_code == 200, f"server down after {case}"
        assert not _no_partials(server.home), (case, _no_partials(server.home))
        record("bad input", case, "API raw + multipart", outcomes[0][1], HELD, request.node.nodeid)

    # over the limit, streamed without a Content-Length: counted and stopped, nothing written whole
    def body():
        chunk = b"\0" * 2**20
        for _ in range(LIMIT_MB + 1):
            yield chunk

    r = requests.post(server.url + "/api/upload", params={"filename": "huge.h5ad"}, data=body(), timeout=300,
                      headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/octet-stream"})
    assert r.status_code == 413 and str(LIMIT_MB) in error_of(r)["message"]
    record("bad input", f"over the upload limit ({LIMIT_MB} MB setting)", "API raw, chunked (no Content-Length)",
           f"413 too_large: {error_of(r)['message'][:160]}", HELD, request.node.nodeid)

    after = _digest(server.home)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing stored before was touched
    stored = {d["dataset_id"] for d in api(server, "GET", "/api/datasets").json()}
    assert len(stored) == 1 + sum(1 for c in CORPUS.values() if not c.refused)  # raw and multipart: one each
    assert len([k for k in after if k.startswith("datasets/")]) == len(stored)  # refused files left nothing
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
