"""SQLModel tables: the platform's metadata. Big results live in files under the data home, not here."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

SCHEMA_VERSION = 6


class RunStatus(StrEnum):
    """A run's status; the last three are terminal: once there, the store refuses any other value."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


ACTIVE = frozenset({RunStatus.QUEUED, RunStatus.RUNNING})
TERMINAL = frozenset({RunStatus.DONE, RunStatus.FAILED, RunStatus.CANCELLED})


def utcnow() -> datetime:
    return datetime.now(UTC)


def _json(factory: type) -> Any:
    return Field(default_factory=factory, sa_column=Column(JSON, nullable=False))


class SchemaMeta(SQLModel, table=True):
    """Key/value facts about the database itself (the schema version above all)."""

    __tablename__ = "schema_meta"
    key: str = Field(primary_key=True)
    value: str


class Application(SQLModel, table=True):
    __tablename__ = "applications"
    id: str = Field(primary_key=True)
    name: str
    description: str = ""


class ModelEntry(SQLModel, table=True):
    """A model offered by the catalog, with the attributes the seed catalog lists and how it is run."""

    __tablename__ = "models"
    id: str = Field(primary_key=True)
    name: str
    speed: str
    accuracy: float | None = None
    accuracy_source: str = ""
    description: str = ""
    applications: list[str] = _json(list)
    backend: str
    variant: str = ""
    weights_status: str = "missing"
    weights_detail: str = ""
    parameters_count: int | None = None


class Dataset(SQLModel, table=True):
    """An uploaded file, stored once per content (sha256) under the data home."""

    __tablename__ = "datasets"
    id: str = Field(primary_key=True)
    file_name: str
    sha256: str = Field(index=True)
    size_bytes: int
    n_cells: int | None = None
    n_genes: int | None = None
    check_report: dict[str, Any] = _json(dict)
    created_at: datetime = Field(default_factory=utcnow)
    created_by: str | None = Field(default=None, index=True)  # the user who uploaded it first (schema 5)


class ServerInstance(SQLModel, table=True):
    """A process that runs work (a server, a notebook): its runs are its own while its heartbeat is fresh."""

    __tablename__ = "server_instances"
    id: str = Field(primary_key=True)
    host: str
    pid: int
    started_at: datetime = Field(default_factory=utcnow)
    heartbeat_at: datetime = Field(default_factory=utcnow, index=True)
    stopped_at: datetime | None = None


class Run(SQLModel, table=True):
    __tablename__ = "runs"
    id: str = Field(primary_key=True)
    application_id: str = Field(foreign_key="applications.id")
    model_id: str = Field(foreign_key="models.id")
    dataset_id: str = Field(foreign_key="datasets.id")
    reference_dataset_id: str | None = Field(default=None, foreign_key="datasets.id")
    label_column: str | None = None
    truth_column: str | None = None
    status: str = Field(default="queued", index=True)
    progress: float = 0.0
    stage: str = ""
    cells_done: int = 0
    cells_total: int = 0
    error: str | None = None
    device: str | None = None
    created_at: datetime = Field(default_factory=utcnow, index=True)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    parameters: dict[str, Any] = _json(dict)
    metrics: dict[str, Any] = _json(dict)
    stage_timings: dict[str, Any] = _json(dict)
    provenance: dict[str, Any] = _json(dict)
    result_dir: str | None = None
    owner: str | None = Field(default=None, index=True)  # the ServerInstance that runs it
    group_id: str | None = Field(default=None, index=True)  # runs submitted together (one per model), shown together
    created_by: str | None = Field(default=None, index=True)  # the user who submitted it (schema 5)


class ClassifierHead(SQLModel, table=True):
    """A trained classifier head, keyed by what determines it, so that a second run with the same
    model, reference, label column and settings trains nothing."""

    __tablename__ = "classifier_heads"
    cache_key: str = Field(primary_key=True)
    model_id: str
    model_checksum: str
    reference_sha256: str
    label_column: str
    settings: dict[str, Any] = _json(dict)
    path: str
    classes: list[str] = _json(list)
    metrics: dict[str, Any] = _json(dict)
    created_at: datetime = Field(default_factory=utcnow)


class AnnotatorEntry(SQLModel, table=True):
    """A named, immutable trained annotator: a model's head and what it learnt from, reusable without a reference.

    Its arrays live in the data home, addressed by their sha256 (``annotators/<sha256>.npz``); this row is what it
    is: the model and weights it needs, the reference, its classes, its held-out check, its Cell Ontology map."""

    __tablename__ = "annotators"
    id: str = Field(primary_key=True)
    name: str = Field(index=True, unique=True)
    description: str = ""
    author: str = ""
    created_at: datetime = Field(default_factory=utcnow, index=True)
    format_version: int = 1
    model_id: str
    backend: str
    variant: str = ""
    model_checksum: str
    trained: bool = True
    head_kind: str
    head_sha256: str
    label_column: str
    reference: dict[str, Any] = _json(dict)  # file name, sha256, cells
    classes: dict[str, Any] = _json(dict)  # class -> reference cells
    genes_used: int | None = None
    check: dict[str, Any] = _json(dict)
    ontology: dict[str, Any] = _json(dict)  # label -> CL term id (absent or None: unmapped)
    provenance: dict[str, Any] = _json(dict)
    builtin: bool = False
    created_by: str | None = Field(default=None, index=True)  # the user who saved or imported it (schema 5)


class UploadReservation(SQLModel, table=True):
    """Bytes an upload in progress holds against its user's quota (``HELICAL_PLATFORM_QUOTA_GB``).

    Reserved when the upload starts, grown as its bytes arrive, and gone when it is stored (in the transaction that
    adds its dataset) or refused; a reservation whose server is gone (``owner``, as for runs) counts no more."""

    __tablename__ = "upload_reservations"
    id: str = Field(primary_key=True)
    user: str = Field(index=True)
    bytes: int = 0
    owner: str  # the ServerInstance holding it
    created_at: datetime = Field(default_factory=utcnow)
