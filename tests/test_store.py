"""The store on both backends it supports — a real SQLite file and a real PostgreSQL server (a throwaway cluster,
tests/postgres.py) — idempotent schema and seed, persistence, migrations, concurrency; SQLite's own settings."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import inspect, text
from sqlmodel import func, select

import store.engine as store_engine
from app.catalog import seed_catalog
from store.artifacts import new_id
from store.engine import init_schema, make_engine, read_session, schema_version, write_session
from store.tables import SCHEMA_VERSION, Application, Dataset, ModelEntry, Run


def _counts(engine):
    with read_session(engine) as s:
        return (s.exec(select(func.count()).select_from(Application)).one(),
                s.exec(select(func.count()).select_from(ModelEntry)).one())


def _url(tmp_path):
    return f"sqlite:///{tmp_path / 'db' / 'platform.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """The same test on a new SQLite file and on a new database of the session's PostgreSQL cluster."""
    if request.param == "sqlite":
        return _url(tmp_path)
    return request.getfixturevalue("postgres_url")


def test_schema_and_seed_are_idempotent_across_restarts(db_url):
    for _ in range(3):
        engine = make_engine(db_url)
        assert init_schema(engine) == SCHEMA_VERSION
        seed_catalog(engine)
        # 2 applications; Geneformer, scGPT, UCE, Nicheformer, TranscriptFormer, baseline, Harmony
        assert _counts(engine) == (2, 7)
        engine.dispose()
    engine = make_engine(db_url)
    assert schema_version(engine) == SCHEMA_VERSION
    with read_session(engine) as s:
        gf = s.get(ModelEntry, "geneformer")
        sg = s.get(ModelEntry, "scgpt")
        app = s.get(Application, "cell-type-annotation")
    assert (gf.speed, gf.accuracy, gf.description) == ("fast", 0.92, "Transformer model for scRNA-seq")
    assert (sg.speed, sg.accuracy, sg.description) == ("slow", 0.95, "GPT-style model for single-cell")
    assert "seed catalog" in gf.accuracy_source
    assert app.name == "Cell type annotation"


def test_reseeding_keeps_the_weights_status_the_platform_found(db_url):
    engine = make_engine(db_url)
    init_schema(engine)
    seed_catalog(engine)
    with write_session(engine) as s:
        gf = s.get(ModelEntry, "geneformer")
        gf.weights_status = "generated"
        s.add(gf)
    seed_catalog(engine)
    with read_session(engine) as s:
        assert s.get(ModelEntry, "geneformer").weights_status == "generated"


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path):
    """SQLite only: WAL, busy_timeout and foreign_keys are SQLite pragmas (PostgreSQL has MVCC and row locks)."""
    engine = make_engine(_url(tmp_path))
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_data_survives_closing_and_reopening(db_url):
    engine = make_engine(db_url)
    init_schema(engine)
    seed_catalog(engine)
    ds_id, run_id = new_id(), new_id()
    with write_session(engine) as s:
        s.add(Dataset(id=ds_id, file_name="pbmc ü.h5ad", sha256="a" * 64, size_bytes=123, n_cells=10,
                      n_genes=20, check_report={"values": "raw counts", "labels": {"celltype": 8}}))
        s.flush()
        s.add(Run(id=run_id, application_id="cell-type-annotation", model_id="baseline", dataset_id=ds_id,
                  parameters={"seed": 0}, metrics={"macro_f1": 0.93, "per_class": {"B": {"f1": 1.0}}}))
    engine.dispose()

    engine = make_engine(db_url)
    init_schema(engine)
    with read_session(engine) as s:
        ds = s.get(Dataset, ds_id)
        run = s.get(Run, run_id)
    assert ds.file_name == "pbmc ü.h5ad"
    assert ds.check_report["labels"] == {"celltype": 8}
    assert run.status == "queued"
    assert run.metrics["per_class"]["B"]["f1"] == 1.0


def test_a_database_newer_than_the_code_is_refused(db_url):
    engine = make_engine(db_url)
    init_schema(engine)
    with write_session(engine) as s:
        s.exec(text("UPDATE schema_meta SET value = '99' WHERE key = 'schema_version'"))
    with pytest.raises(RuntimeError, match="newer than this code"):
        init_schema(engine)


def test_a_registered_migration_runs_once_and_records_the_version(db_url, monkeypatch):
    engine = make_engine(db_url)
    init_schema(engine)
    calls = []

    def add_note_column(conn):
        calls.append(1)
        conn.exec_driver_sql("ALTER TABLE runs ADD COLUMN note TEXT")

    monkeypatch.setattr(store_engine, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setitem(store_engine.MIGRATIONS, SCHEMA_VERSION, add_note_column)
    assert init_schema(engine) == SCHEMA_VERSION + 1
    assert init_schema(engine) == SCHEMA_VERSION + 1
    assert calls == [1]
    assert "note" in {c["name"] for c in inspect(engine).get_columns("runs")}


def _schema(engine) -> dict[str, tuple[set[str], set[str]]]:
    """Each table's column names and index names, as the database reports them."""
    insp = inspect(engine)
    return {table: ({c["name"] for c in insp.get_columns(table)}, {i["name"] for i in insp.get_indexes(table)})
            for table in insp.get_table_names()}


# What versions 2 to 5 added (docs/STORE.md): undone, they leave a database as version 1 made it.
_ADDED_SINCE_V1 = [
    "DROP INDEX ix_runs_owner", "ALTER TABLE runs DROP COLUMN owner",  # 2
    "DROP TABLE server_instances",  # 2
    "DROP TABLE annotators",  # 3
    "DROP INDEX ix_runs_group_id", "ALTER TABLE runs DROP COLUMN group_id",  # 4
    *(stmt for table in ("datasets", "runs") for stmt in (  # 5 (annotators is already gone)
        f"DROP INDEX ix_{table}_created_by", f"ALTER TABLE {table} DROP COLUMN created_by")),
    "UPDATE schema_meta SET value = '1' WHERE key = 'schema_version'",
]


def test_a_version_1_database_is_migrated_to_the_current_schema_with_its_rows_kept(db_url):
    """Every migration step, in order, on the backend at hand; the result equals a database made new."""
    engine = make_engine(db_url)
    init_schema(engine)
    seed_catalog(engine)
    fresh = _schema(engine)
    ds_id, run_id = new_id(), new_id()
    with write_session(engine) as s:
        s.add(Dataset(id=ds_id, file_name="old.h5ad", sha256="c" * 64, size_bytes=1))
        s.flush()
        s.add(Run(id=run_id, application_id="cell-type-annotation", model_id="baseline", dataset_id=ds_id,
                  status="done", metrics={"macro_f1": 0.9}))
    with engine.begin() as conn:  # as a version-1 release left it
        for stmt in _ADDED_SINCE_V1:
            conn.exec_driver_sql(stmt)
    assert schema_version(engine) == 1
    assert "owner" not in _schema(engine)["runs"][0] and "annotators" not in _schema(engine)
    engine.dispose()

    engine = make_engine(db_url)
    assert init_schema(engine) == SCHEMA_VERSION
    assert schema_version(engine) == SCHEMA_VERSION
    assert _schema(engine) == fresh
    with read_session(engine) as s:
        run = s.get(Run, run_id)
    assert (run.status, run.metrics, run.owner, run.group_id, run.created_by) == ("done", {"macro_f1": 0.9}, None,
                                                                                   None, None)
    assert init_schema(engine) == SCHEMA_VERSION  # and again: nothing left to do
    engine.dispose()


def test_sqlite_and_postgresql_get_the_same_tables_columns_indexes_and_version(tmp_path, postgres_url):
    engines = [make_engine(_url(tmp_path)), make_engine(postgres_url)]
    for engine in engines:
        assert init_schema(engine) == SCHEMA_VERSION
    sqlite_schema, pg_schema = (_schema(e) for e in engines)
    assert sqlite_schema == pg_schema
    assert [schema_version(e) for e in engines] == [SCHEMA_VERSION, SCHEMA_VERSION]
    for engine in engines:
        engine.dispose()


@pytest.mark.slow
def test_sixteen_threads_of_read_then_write_transactions_hit_no_lock_error(db_url):
    """16 threads x 200 read-then-write transactions on one SQLite file (or PostgreSQL database): every one
    commits."""
    engine = make_engine(db_url)
    init_schema(engine)
    seed_catalog(engine)
    with write_session(engine) as s:
        s.add(Dataset(id=(ds_id := new_id()), file_name="q.h5ad", sha256="b" * 64, size_bytes=1))
    errors: list[BaseException] = []
    run_ids = [new_id() for _ in range(16)]

    def worker(i: int) -> None:
        try:
            with write_session(engine) as s:
                s.add(Run(id=run_ids[i], application_id="cell-type-annotation", model_id="baseline",
                          dataset_id=ds_id))
            for _ in range(199):
                with write_session(engine) as s:  # read, then write what was read plus one
                    run = s.get(Run, run_ids[i])
                    run.cells_done += 1
                    run.stage = f"step {run.cells_done}"
                    s.add(run)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with read_session(engine) as s:
        done = s.exec(select(Run.cells_done)).all()
    assert sorted(done) == [199] * 16
