"""Deleting runs and datasets, a deletion interrupted by a crash, disk use and retention, on a real data home and
SQLite (runs recorded as the runs service records them; the REST flow is in tests/test_api.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

import app.lifecycle as lifecycle
from app.datasets import DatasetInUse, NotFound
from app.lifecycle import RunInUse, apply_retention, recover, usage
from app.platform import Platform
from app.rest_base import translate
from app.settings import Settings, SettingsError
from store.artifacts import new_id
from store.engine import read_session, write_session
from store.tables import ClassifierHead, Run, RunStatus, utcnow
from tests.conftest import PBMC
from tests.reliability import record

APP = "cell-type-annotation"
REPO = Path(__file__).resolve().parents[1]


def _settings(home: Path, **extra: str) -> Settings:
    return Settings.from_env({"HELICAL_PLATFORM_HOME": str(home), "HELICAL_PLATFORM_GENERATE_WEIGHTS": "none",
                              **extra})


@pytest.fixture
def platform(tmp_path):
    p = Platform(_settings(tmp_path / "home"), start_cluster=False)
    yield p
    p.close()


@pytest.fixture
def dataset(platform):
    with open(PBMC, "rb") as fh:
        return platform.datasets.ingest(fh, "pbmc3k subset.h5ad")


def _run(platform, ds, status: RunStatus = RunStatus.DONE, finished_days_ago: float = 0.0,
         payload: bytes = b"x" * 10_000) -> Run:
    """A run row and a result folder as a finished run leaves them."""
    finished = utcnow() - timedelta(days=finished_days_ago)
    run = Run(id=new_id(), application_id=APP, model_id="baseline", dataset_id=ds.id, status=status,
              created_at=finished, finished_at=finished if status not in (RunStatus.QUEUED, RunStatus.RUNNING)
              else None)
    with write_session(platform.engine) as s:
        s.add(run)
    folder = platform.artifacts.run_dir(run.id, create=True)
    (folder / "cells.parquet").write_bytes(payload)
    return run


def _ids(platform) -> set[str]:
    return {r.id for r in platform.runs.list()}


def test_a_finished_run_is_deleted_with_its_files_and_an_active_one_is_refused_losing_nothing(platform, dataset):
    done = _run(platform, dataset)
    folder = platform.artifacts.run_dir(done.id)
    out = platform.runs.delete(done.id)
    assert out == {"run_id": done.id, "bytes_freed": 10_000}
    assert done.id not in _ids(platform) and not folder.exists()
    with pytest.raises(NotFound):
        platform.runs.delete(done.id)
    assert translate(NotFound("x")).status == 404

    running = _run(platform, dataset, RunStatus.RUNNING)
    with pytest.raises(RunInUse, match=r"is running: cancel it first .*/cancel"):
        platform.runs.delete(running.id)
    assert running.id in _ids(platform) and (platform.artifacts.run_dir(running.id) / "cells.parquet").is_file()
    assert translate(RunInUse("x")).status == 409 and translate(RunInUse("x")).code == "in_use"
    assert not list((platform.artifacts.home / "deleting").glob("*"))  # no journal left by a refusal
    with pytest.raises(ValueError, match="run id"):  # not an id: refused before anything is looked up
        platform.runs.delete("../../platform.db")


def test_a_deletion_interrupted_after_its_rows_is_finished_at_the_next_start(tmp_path, monkeypatch, request):
    settings = _settings(tmp_path / "home")
    p = Platform(settings, start_cluster=False)
    with open(PBMC, "rb") as fh:
        ds = p.datasets.ingest(fh, "pbmc.h5ad")
    run = _run(p, ds)
    folder = p.artifacts.run_dir(run.id)

    def crash(paths):  # noqa: ANN001 - the process dies after the transaction, before any file goes
        raise SystemExit("killed")

    monkeypatch.setattr(lifecycle, "_remove", crash)
    with pytest.raises(SystemExit):
        p.runs.delete(run.id)
    monkeypatch.undo()
    assert run.id not in _ids(p)  # never listed half-deleted
    assert folder.is_dir() and list((p.artifacts.home / "deleting").glob("*.json"))
    p.close()

    again = Platform(settings, start_cluster=False).start()  # what a restarted server does
    try:
        assert not folder.exists() and not list((again.artifacts.home / "deleting").glob("*.json"))
    finally:
        again.close()
    record("faults", "A deletion interrupted after its transaction (the process dies before any file is removed)",
           "delete a finished run; the file removal raises SystemExit; a new Platform started on the same home",
           "the run was never listed after the transaction; its folder and journal stayed until the next start, "
           "which removed both", "no half-deleted run listed; nothing left on disk", request.node.nodeid)


def test_a_journal_whose_rows_are_still_there_is_dropped_and_nothing_removed(platform, dataset):
    import os
    import time

    run = _run(platform, dataset)
    folder = platform.artifacts.run_dir(run.id)
    journal = platform.artifacts.home / "deleting" / f"run-{run.id}.json"
    journal.parent.mkdir(parents=True)
    journal.write_text(json.dumps({"kind": "run", "id": run.id, "paths": [str(folder)]}))
    # a young journal may be another replica's deletion between its journal and its commit: left alone
    assert recover(platform) == [] and journal.exists() and folder.is_dir()
    old = time.time() - 3600
    os.utime(journal, (old, old))
    assert recover(platform) == []  # the transaction never committed: the run stays whole
    assert folder.is_dir() and run.id in _ids(platform) and not journal.exists()


def test_a_dataset_goes_with_its_file_runs_embeddings_and_the_heads_trained_on_it(platform, dataset):
    run = _run(platform, dataset)
    head_file = platform.artifacts.home / "heads" / "k1.npz"
    head_file.parent.mkdir(parents=True, exist_ok=True)
    head_file.write_bytes(b"h" * 500)
    with write_session(platform.engine) as s:
        s.add(ClassifierHead(cache_key="k1", model_id="baseline", model_checksum="c", reference_sha256=dataset.sha256,
                             label_column="celltype", path=str(head_file)))
    with pytest.raises(DatasetInUse, match="cascade"):
        platform.datasets.delete(dataset.id)
    assert platform.datasets.path(dataset).is_file() and head_file.is_file()  # nothing lost on refusal
    out = platform.datasets.delete(dataset.id, cascade=True)
    assert out["runs_deleted"] == [run.id] and out["bytes_freed"] >= dataset.size_bytes + 10_500
    assert not platform.datasets.path(dataset).exists() and not head_file.exists()
    assert not platform.artifacts.run_dir(run.id).exists()
    with read_session(platform.engine) as s:
        assert s.get(ClassifierHead, "k1") is None
    assert platform.datasets.list() == [] and _ids(platform) == set()


def test_usage_counts_every_dataset_and_run_and_a_hard_link_once(platform, dataset):
    run = _run(platform, dataset)
    folder = platform.artifacts.run_dir(run.id)
    os.link(folder / "cells.parquet", folder / "same-bytes.parquet")  # as a run keeps a stored embedding
    out = usage(platform)
    assert out["datasets"] == [{"id": dataset.id, "file_name": "pbmc3k subset.h5ad",
                                "file_bytes": dataset.size_bytes, "embeddings_bytes": 0}]
    assert out["runs"][0]["id"] == run.id and out["runs"][0]["bytes"] == 10_000
    assert out["totals"]["runs_bytes"] == 10_000 and out["totals"]["datasets_bytes"] == dataset.size_bytes
    assert 0 < out["totals"]["disk_free_bytes"] <= out["totals"]["disk_total_bytes"]
    assert out["retention_days"] is None


def test_retention_deletes_only_finished_runs_past_it(tmp_path, request):
    p = Platform(_settings(tmp_path / "home", HELICAL_PLATFORM_RETENTION_DAYS="7"), start_cluster=False)
    try:
        with open(PBMC, "rb") as fh:
            ds = p.datasets.ingest(fh, "pbmc.h5ad")
        old = [_run(p, ds, status, finished_days_ago=10) for status in (RunStatus.DONE, RunStatus.FAILED,
                                                                         RunStatus.CANCELLED)]
        recent = _run(p, ds, finished_days_ago=2)
        active = _run(p, ds, RunStatus.RUNNING, finished_days_ago=30)
        assert sorted(apply_retention(p)) == sorted(r.id for r in old)
        assert _ids(p) == {recent.id, active.id}
        assert "deleted after 7 days" in p.settings.describe()["retention"]
    finally:
        p.close()
    for bad, words in (("-1", "must be at least 0"), ("a week", "is not a whole number")):
        with pytest.raises(SettingsError, match=f"HELICAL_PLATFORM_RETENTION_DAYS.*{words}"):
            Settings.from_env({"HELICAL_PLATFORM_RETENTION_DAYS": bad})
    record("faults", "Retention (HELICAL_PLATFORM_RETENTION_DAYS=7)", "done, failed and cancelled runs finished 10 "
           "days ago, a done run 2 days ago, a running one created 30 days ago; '-1' and 'a week' as the value",
           "the three old finished runs deleted, the recent and the running one kept; both bad values stop the "
           "start naming the variable", "nothing active or recent touched", request.node.nodeid)


@pytest.mark.slow
def test_the_command_line_lists_deletes_and_measures(tmp_path):
    settings = _settings(tmp_path / "home")
    p = Platform(settings, start_cluster=False)
    with open(PBMC, "rb") as fh:
        ds = p.datasets.ingest(fh, "pbmc.h5ad")
    done, running = _run(p, ds), _run(p, ds, RunStatus.RUNNING)
    p.close()
    env = {**os.environ, "HELICAL_PLATFORM_HOME": str(tmp_path / "home"), "HELICAL_PLATFORM_GENERATE_WEIGHTS": "none",
           "PYTHONPATH": str(REPO)}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, env=env,
                              cwd=REPO, timeout=300)

    listed = cli("runs", "list")
    assert listed.returncode == 0 and done.id in listed.stdout and running.id in listed.stdout
    used = cli("usage", "--json")
    assert used.returncode == 0 and json.loads(used.stdout)["totals"]["runs_bytes"] == 20_000
    refused = cli("runs", "delete", running.id)
    assert refused.returncode == 1 and "cancel it first" in refused.stderr
    gone = cli("runs", "delete", done.id)
    assert gone.returncode == 0 and f"deleted run {done.id}" in gone.stdout
    assert done.id not in cli("runs", "list").stdout



def test_the_dashboard_deletes_with_a_confirmation_filters_mine_and_shows_disk_use(tmp_path):
    import asyncio

    from dashboards.data import CONFIRM_DELETE, DataPanel
    from dashboards.runs import RunPanel
    from dashboards.usage import UsageView, who_text
    from dashboards.view import MINE

    tokens = tmp_path / "tokens"
    tokens.write_text("alice alice-token-0123456789\nbob bob-token-0123456789ab\n")
    p = Platform(_settings(tmp_path / "home", HELICAL_PLATFORM_TOKENS=str(tokens)), start_cluster=False)
    try:
        with open(PBMC, "rb") as fh:
            ds = p.datasets.ingest(fh, "pbmc <b>bold.h5ad")
        alices, bobs = _run(p, ds), _run(p, ds)
        with write_session(p.engine) as s:
            for run, who in ((alices, "alice"), (bobs, "bob")):
                row = s.get(Run, run.id)
                row.created_by = who
                s.add(row)

        panel = RunPanel(p)
        panel._user_name = "alice"  # as Panel's login would name the session
        assert set(panel.history.value["id"]) == {alices.id, bobs.id}
        assert dict(zip(panel.history.value["id"], panel.history.value["by"], strict=True))[bobs.id] == "bob"
        panel.show = MINE
        assert list(panel.history.value["id"]) == [alices.id]

        panel.opened = bobs.id  # another user's run: refused, kept
        assert panel.delete_button.visible
        asyncio.run(panel._delete_opened(None))
        assert panel.delete_button.name == CONFIRM_DELETE and "Click" in panel.message.object
        asyncio.run(panel._delete_opened(None))
        assert "belongs to bob" in panel.message.object and bobs.id in _ids(p)
        panel.opened = alices.id
        asyncio.run(panel._delete_opened(None))
        asyncio.run(panel._delete_opened(None))
        assert "Deleted run" in panel.message.object and alices.id not in _ids(p) and panel.opened == ""

        data = DataPanel(p)
        data._user_name = "bob"
        data.dataset = ds.id
        assert data.delete_button.visible
        asyncio.run(data._delete_dataset(None))
        assert "its 1 run(s)" in data.status.object and "&lt;b&gt;" in data.status.object  # escaped, not markup
        asyncio.run(data._delete_dataset(None))
        assert "belongs to no recorded user" in data.status.object  # uploaded without a user: admins only
        assert ds.id in {d.id for d in p.datasets.list()}

        usage = UsageView(p)
        asyncio.run(usage._refresh())
        assert "**Disk use**" in usage.usage.object and "&lt;b&gt;" in usage.usage.object
        assert "Not signed in" in usage.who.object
        assert who_text("alice", False, True).endswith("(may delete what they made).")
    finally:
        p.close()


def test_an_upload_over_a_users_quota_is_refused_with_the_numbers_and_nothing_kept(tmp_path):
    import anndata as ad

    from app.lifecycle import QuotaExceeded, user_bytes
    from app.users import User

    p = Platform(_settings(tmp_path / "home", HELICAL_PLATFORM_QUOTA_GB="0.006"), start_cluster=False)
    alice = User("alice")
    try:
        with open(PBMC, "rb") as fh:
            first = p.datasets.ingest(fh, "pbmc.h5ad", alice)
        run = _run(p, first, payload=b"r" * 1_000_000)
        with write_session(p.engine) as s:
            row = s.get(Run, run.id)
            row.created_by = "alice"
            s.add(row)
        assert user_bytes(p, "alice") == first.size_bytes + 1_000_000
        other = tmp_path / "other.h5ad"
        ad.read_h5ad(PBMC)[::-1].copy().write_h5ad(other, compression="gzip")  # other bytes, about as large
        with open(other, "rb") as fh, pytest.raises(QuotaExceeded) as refused:
            p.datasets.ingest(fh, "other.h5ad", alice)
        words = str(refused.value)
        assert "over the quota of 0.006 GB per user (HELICAL_PLATFORM_QUOTA_GB)" in words
        assert f"alice uses {(first.size_bytes + 1_000_000) / 1e6:.1f} MB now" in words
        assert translate(refused.value).status == 413 and translate(refused.value).code == "over_quota"
        assert [d.id for d in p.datasets.list()] == [first.id]
        stored = list((p.artifacts.home / "datasets").rglob("*.h5ad"))
        assert stored == [p.datasets.path(first)]  # the refused bytes are not kept
        with open(PBMC, "rb") as fh:  # the same bytes again take no more room: not refused, nothing charged
            assert p.datasets.ingest(fh, "pbmc again.h5ad", User("bob")).id == first.id
        assert user_bytes(p, "bob") == 0
        with open(PBMC, "rb") as fh, pytest.raises(QuotaExceeded):  # bytes are reserved as they arrive, before
            p.datasets.ingest(fh, "pbmc again.h5ad", alice)  # their content is known: at her quota, refused
        with open(other, "rb") as fh:  # another user has room
            assert p.datasets.ingest(fh, "other.h5ad", User("bob")).created_by == "bob"
    finally:
        p.close()
    for bad in ("-1", "lots", "0"):
        with pytest.raises(SettingsError, match="HELICAL_PLATFORM_QUOTA_GB"):
            Settings.from_env({"HELICAL_PLATFORM_QUOTA_GB": bad})


def test_the_dashboards_lists_show_everyones_or_the_users_own(tmp_path):
    """The stored datasets (the Data section's picker), the annotators table and the run history each switch
    between every user's items and the session user's own."""
    import anndata as ad

    from app.users import User
    from dashboards.annotators import AnnotatorsView
    from dashboards.data import DataPanel
    from dashboards.view import MINE

    tokens = tmp_path / "tokens"
    tokens.write_text("alice alice-token-0123456789\nbob bob-token-0123456789ab\n")
    p = Platform(_settings(tmp_path / "home", HELICAL_PLATFORM_TOKENS=str(tokens)), start_cluster=False)
    try:
        with open(PBMC, "rb") as fh:
            alices = p.datasets.ingest(fh, "alice.h5ad", User("alice"))
        other = tmp_path / "bob.h5ad"
        ad.read_h5ad(PBMC)[::2].copy().write_h5ad(other)
        with open(other, "rb") as fh:
            bobs = p.datasets.ingest(fh, "bob.h5ad", User("bob"))
        data = DataPanel(p)
        data._user_name = "bob"
        assert set(data.param.dataset.objects.values()) == {"", alices.id, bobs.id}
        data.show = MINE
        assert set(data.param.dataset.objects.values()) == {"", bobs.id}
        assert {d.id for d in data.datasets} == {alices.id, bobs.id}  # the run forms still pick references from all
        data.refresh(keep=alices.id)  # bob uploaded alice's bytes again: the stored one is offered to him too
        data.dataset = alices.id
        assert set(data.param.dataset.objects.values()) == {"", alices.id, bobs.id}

        annotators = AnnotatorsView(p)
        annotators._user_name = "bob"
        everyone = set(annotators.table.value["name"])
        assert "PBMC 3k (baseline)" in everyone  # built in: nobody's own
        annotators.show = MINE
        assert annotators.table.value.empty
    finally:
        p.close()
