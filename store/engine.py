"""Engine, sessions and schema for any SQLAlchemy URL, tuned for SQLite shared by a multi-user server.

SQLite under concurrent writers fails with "database is locked" unless it runs in WAL mode, waits on a busy
lock (busy_timeout), and starts read-then-write transactions with ``BEGIN IMMEDIATE`` (a deferred transaction
that later upgrades to a write lock fails at once, without waiting). ``write_session`` does that.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, event, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session as OrmSession
from sqlmodel import Session, SQLModel, create_engine, select

from store.tables import SCHEMA_VERSION, TERMINAL, Run, SchemaMeta

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 30_000

# Ordered migrations: MIGRATIONS[n] takes a database at version n to n + 1, inside one write transaction.
# A later schema change appends a function here and bumps SCHEMA_VERSION (docs/STORE.md explains).
def _v1_to_v2(conn: Connection) -> None:
    """Runs get their owner (a server instance with a heartbeat); ``server_instances`` is made by create_all."""
    conn.exec_driver_sql("ALTER TABLE runs ADD COLUMN owner VARCHAR")
    conn.exec_driver_sql("CREATE INDEX IF NOT EXISTS ix_runs_owner ON runs (owner)")


def _v2_to_v3(conn: Connection) -> None:
    """Annotators: a new table (``annotators``), made by create_all; nothing existing changes."""


def _v3_to_v4(conn: Connection) -> None:
    """Runs submitted together (an integration's models) share a ``group_id``."""
    conn.exec_driver_sql("ALTER TABLE runs ADD COLUMN group_id VARCHAR")
    conn.exec_driver_sql("CREATE INDEX IF NOT EXISTS ix_runs_group_id ON runs (group_id)")


def _v4_to_v5(conn: Connection) -> None:
    """Datasets, runs and annotators record the user who made them (``created_by``)."""
    for table in ("datasets", "runs", "annotators"):
        # A database older than version 3 has just had ``annotators`` made by create_all, column included.
        if "created_by" not in {c["name"] for c in inspect(conn).get_columns(table)}:
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN created_by VARCHAR")
        conn.exec_driver_sql(f"CREATE INDEX IF NOT EXISTS ix_{table}_created_by ON {table} (created_by)")


def _v5_to_v6(conn: Connection) -> None:
    """Quota reservations of uploads in progress: a new table (``upload_reservations``), made by create_all."""


MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4, 4: _v4_to_v5,
                                                       5: _v5_to_v6}


class TerminalStatusError(RuntimeError):
    """A write that would move a run out of done/failed/cancelled: refused, the row stays as it was."""


@event.listens_for(OrmSession, "before_flush")
def _terminal_is_final(session: OrmSession, _context: object, _instances: object) -> None:
    """Terminal statuses are final, whoever writes (two processes, a late worker, a reconciliation)."""
    for obj in session.dirty:
        if not isinstance(obj, Run):
            continue
        history = inspect(obj).attrs.status.history
        if history.deleted and history.added and history.deleted[0] in TERMINAL \
                and history.added[0] != history.deleted[0]:
            log.warning("refused to move run %s from %s to %s", obj.id, history.deleted[0], history.added[0])
            raise TerminalStatusError(f"Run {obj.id} is already {history.deleted[0]}; its status cannot become "
                                      f"{history.added[0]}.")


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(url: str) -> Engine:
    """An engine for ``url``; for SQLite files, creates the parent folder and sets WAL and busy timeout."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # noqa: ANN001
        # Let SQLAlchemy emit BEGIN itself (pysqlite's implicit BEGIN cannot be IMMEDIATE).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = "IMMEDIATE" if conn.get_execution_options().get("sqlite_immediate") else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


@contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session:
        yield session


@contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """A session whose transaction takes the write lock up front (SQLite) and commits on success."""
    with Session(engine, expire_on_commit=False) as session:
        if is_sqlite(engine):
            session.connection(execution_options={"sqlite_immediate": True})
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def lock_key(session: Session, key: str) -> None:
    """Serialise the write transactions that name ``key`` (one user's quota, say) until ``session`` commits.

    SQLite needs nothing more: ``write_session`` holds the database's only write lock from its first statement.
    PostgreSQL gets a transaction-level advisory lock on a 63-bit hash of ``key``, so two replicas counting then
    inserting for the same key take turns instead of both passing the count."""
    if session.get_bind().dialect.name != "postgresql":
        return
    import hashlib

    number = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") >> 1
    session.connection().exec_driver_sql(f"SELECT pg_advisory_xact_lock({number})")


def schema_version(engine: Engine) -> int | None:
    with read_session(engine) as s:
        try:
            row = s.get(SchemaMeta, "schema_version")
        except Exception:  # table missing: a new database
            return None
        return int(row.value) if row else None


def init_schema(engine: Engine) -> int:
    """Create missing tables and bring the recorded schema version up to date; safe to call at every start."""
    SQLModel.metadata.create_all(engine)
    with write_session(engine) as s:
        row = s.exec(select(SchemaMeta).where(SchemaMeta.key == "schema_version")).first()
        if row is None:
            s.add(SchemaMeta(key="schema_version", value=str(SCHEMA_VERSION)))
            return SCHEMA_VERSION
        version = int(row.value)
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"The database is at schema version {version}, newer than this code ({SCHEMA_VERSION}); "
                "upgrade the platform before opening it."
            )
        conn = s.connection()
        while version < SCHEMA_VERSION:
            MIGRATIONS[version](conn)
            version += 1
        row.value = str(version)
        s.add(row)
        return version
