"""Run ownership: constructing a Platform touches nothing, only dead owners' runs fail, terminal is final."""

from __future__ import annotations

import os
import sqlite3
import time
from datetime import UTC, datetime, timedelta

import pytest

from app.platform import Platform
from app.settings import Settings
from store.artifacts import new_id
from store.engine import TerminalStatusError, init_schema, make_engine, read_session, write_session
from store.tables import SCHEMA_VERSION, Run, ServerInstance
from tests.conftest import PBMC


@pytest.fixture
def home_settings(tmp_path) -> Settings:
    return Settings.from_env({"HELICAL_PLATFORM_HOME": str(tmp_path / "home"), "HELICAL_PLATFORM_LEASE_S": "6"})


def _dataset(platform: Platform) -> str:
    with open(PBMC, "rb") as fh:
        return platform.datasets.ingest(fh, "pbmc.h5ad").id


def _run(platform: Platform, dataset_id: str, owner: str | None, status: str = "running") -> str:
    run_id = new_id()
    with write_session(platform.engine) as s:
        s.add(Run(id=run_id, application_id="cell-type-annotation", model_id="baseline", dataset_id=dataset_id,
                  status=status, label_column="celltype", owner=owner))
    platform.artifacts.run_dir(run_id).mkdir(parents=True, exist_ok=True)
    return run_id


def _instance(platform: Platform, host: str, pid: int, beat_ago_s: float) -> str:
    instance_id = new_id()
    with write_session(platform.engine) as s:
        s.add(ServerInstance(id=instance_id, host=host, pid=pid,
                             heartbeat_at=datetime.now(UTC) - timedelta(seconds=beat_ago_s)))
    return instance_id


def test_constructing_a_platform_touches_no_live_run_and_no_partial_file(home_settings):
    server = Platform(home_settings, start_cluster=False)
    server.lease.start(reconcile=False)
    run_id = _run(server, _dataset(server), server.lease.instance_id)
    partial = server.artifacts.home / "tmp" / ".partial-upload-in-flight"
    partial.write_bytes(b"half an upload")
    cli = Platform(home_settings, start_cluster=False)  # what `helical-platform info` builds
    cli.close()
    started = Platform(home_settings, start_cluster=False).start()  # a second server process on the same home
    try:
        assert server.runs.get(run_id).status == "running"
        assert server.artifacts.run_dir(run_id).exists() and partial.exists()
        old = time.time() - 2 * 3600
        os.utime(partial, (old, old))  # untouched for two hours: no live writer
        started.start()
        assert not partial.exists()
    finally:
        started.close()
        server.close()


def test_only_the_runs_of_owners_that_are_gone_are_failed(home_settings):
    p = Platform(home_settings, start_cluster=False)
    try:
        ds = _dataset(p)
        alive = _instance(p, "another-host", 1, beat_ago_s=1)
        silent = _instance(p, "another-host", 2, beat_ago_s=60)
        dead_here = _instance(p, p.lease.host, 2**22 + 12345, beat_ago_s=1)  # no such process on this host
        runs = {name: _run(p, ds, owner) for name, owner in
                (("alive", alive), ("silent", silent), ("dead_here", dead_here), ("unowned", None))}
        finished = _run(p, ds, silent, status="done")
        failed = set(p.lease.reconcile())
        assert failed == {runs["silent"], runs["dead_here"], runs["unowned"]}
        assert p.runs.get(runs["alive"]).status == "running" and p.artifacts.run_dir(runs["alive"]).exists()
        assert p.runs.get(finished).status == "done"
        silent_error = p.runs.get(runs["silent"]).error
        assert "Interrupted by a restart" in silent_error and "no heartbeat since" in silent_error
        assert "is gone" in p.runs.get(runs["dead_here"]).error
        assert not p.artifacts.run_dir(runs["silent"]).exists()
    finally:
        p.close()


def test_a_terminal_status_is_final(home_settings):
    p = Platform(home_settings, start_cluster=False)
    try:
        run_id = _run(p, _dataset(p), None, status="failed")
        with pytest.raises(TerminalStatusError), write_session(p.engine) as s:
            run = s.get(Run, run_id)
            run.status = "done"
            s.add(run)
        assert p.runs.get(run_id).status == "failed"
        p.runs.records.finish(run_id, "done")  # a late outcome is refused and logged, not recorded
        assert p.runs.get(run_id).status == "failed"
    finally:
        p.close()


def test_a_version_1_database_is_migrated_and_keeps_its_runs(home_settings):
    p = Platform(home_settings, start_cluster=False)
    run_id = _run(p, _dataset(p), None, status="done")
    p.close()
    db = home_settings.home / "platform.db"
    with sqlite3.connect(db) as conn:  # as the previous release left it
        conn.execute("DROP INDEX ix_runs_owner")
        conn.execute("ALTER TABLE runs DROP COLUMN owner")
        conn.execute("DROP INDEX ix_runs_group_id")
        conn.execute("ALTER TABLE runs DROP COLUMN group_id")
        conn.execute("DROP TABLE server_instances")
        for table in ("datasets", "runs"):  # version 5's columns (annotators, a version-3 table, is dropped whole)
            conn.execute(f"DROP INDEX ix_{table}_created_by")
            conn.execute(f"ALTER TABLE {table} DROP COLUMN created_by")
        conn.execute("DROP TABLE annotators")
        conn.execute("DROP TABLE upload_reservations")  # version 6's table
        conn.execute("UPDATE schema_meta SET value = '1' WHERE key = 'schema_version'")
    engine = make_engine(f"sqlite:///{db}")
    assert init_schema(engine) == SCHEMA_VERSION == 6
    with read_session(engine) as s:
        run = s.get(Run, run_id)
        assert run.status == "done" and run.owner is None and run.group_id is None
    engine.dispose()
