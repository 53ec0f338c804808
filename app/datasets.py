"""Datasets: uploaded files stored once per content, checked at once, recorded with their report."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from sqlmodel import select

from app.annotate import vocabularies
from inference.check_sandbox import check_isolated
from inference.checks import CheckReport
from inference.embedding_store import EmbeddingStore
from store.artifacts import InvalidIdError, file_suffix, new_id, validate_file_name, validate_uuid4
from store.engine import read_session, write_session
from store.tables import Dataset

if TYPE_CHECKING:
    from app.lifecycle import QuotaReservation
    from app.users import User

log = logging.getLogger(__name__)
# Storing and checking an upload can take minutes (its check is a child process of up to the check's time limit):
# they get threads of their own, two at a time, so that uploads waiting their turn never hold the threads every
# other API call and dashboard action runs on.
INGEST_THREADS = 2
_ingest_pool = ThreadPoolExecutor(max_workers=INGEST_THREADS, thread_name_prefix="ingest")


async def run_ingest[T](fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    """Run ``fn`` (an ingest: store, check, record) on the ingest threads, from the event loop."""
    return await asyncio.get_running_loop().run_in_executor(_ingest_pool, partial(fn, *args, **kwargs))


# CheckReport: for the views
__all__ = ["CheckReport", "DatasetInUse", "DatasetRejected", "DatasetService", "NotFound", "run_ingest"]


class DatasetRejected(ValueError):
    """The file is not usable; ``report`` says what was found and what to do."""

    def __init__(self, report: dict) -> None:
        self.report = report
        super().__init__(CheckReport(report).problems())

    @property
    def unreadable(self) -> bool:
        return CheckReport(self.report).unreadable


class _Metered:
    """A stream that grows its upload's quota reservation as its bytes are read (before they are written)."""

    def __init__(self, source: BinaryIO, reservation: QuotaReservation, step: int) -> None:
        self.source, self.reservation, self.step, self.seen = source, reservation, step, 0

    def read(self, n: int = -1) -> bytes:
        chunk = self.source.read(n)
        self.seen += len(chunk)
        self.reservation.ensure(self.seen, self.step)
        return chunk


def _known_size(source: BinaryIO) -> int:
    """The bytes left in ``source`` when it can say (a file, a BytesIO), else 0 (the reservation then grows)."""
    try:
        if hasattr(source, "getbuffer"):
            return len(source.getbuffer()) - source.tell()
        return os.fstat(source.fileno()).st_size - source.tell()
    except (OSError, ValueError, AttributeError):
        return 0


class NotFound(LookupError):
    pass


class DatasetInUse(RuntimeError):
    """A deletion that would take runs with it: active runs always refuse it, finished ones unless asked."""


class DatasetService:
    def __init__(self, platform) -> None:  # noqa: ANN001 - app.platform.Platform (import cycle)
        self.platform = platform

    def ingest(self, source: BinaryIO, file_name: str, user: User | None = None, size: int | None = None,
               reservation: QuotaReservation | None = None) -> Dataset:
        """Stream the upload into the store, check it, and record it (``user`` as its maker, when the bytes are
        new); refuse (keeping nothing) if unusable.

        With a quota, the bytes are reserved before any is written (``size`` when known) and the reservation grows
        as they are read, so uploads at once cannot together pass it; a caller that reserved already (the REST
        upload, as its body arrived) passes its ``reservation`` and releases it."""
        validate_file_name(file_name)
        from app.lifecycle import RESERVE_STEP, reserve

        own = reservation is None
        if own and user is not None:
            reservation = reserve(self.platform, user.name, size if size is not None else _known_size(source))
        try:
            stream = source if reservation is None else _Metered(source, reservation, RESERVE_STEP)
            store = self.platform.artifacts
            sha, path, size = store.ingest(stream, file_name,
                                           max_bytes=self.platform.settings.max_upload_mb * 2**20)
            return self._record(sha, path, size, file_name, user, reservation)
        finally:
            if own and reservation is not None:
                reservation.release()

    def ingest_server_file(self, relative: str, user: User | None = None) -> Dataset:
        """A file already on the server, under the allowed root (symlinks resolved and confined)."""
        root = self.platform.settings.files_root
        if root is None:
            raise InvalidIdError("Picking files on the server is not enabled: set HELICAL_PLATFORM_FILES_ROOT.")
        path = (root / relative).resolve()
        if root.resolve() not in path.parents:
            raise InvalidIdError(f"{relative!r} is outside the allowed folder {root}.")
        if not path.is_file():
            raise NotFound(f"No file {relative!r} under {root}.")
        with open(path, "rb") as fh:
            return self.ingest(fh, path.name, user, size=path.stat().st_size)

    def _record(self, sha: str, path: Path, size: int, file_name: str, user: User | None = None,
                reservation: QuotaReservation | None = None) -> Dataset:
        with read_session(self.platform.engine) as s:
            existing = s.exec(select(Dataset).where(Dataset.sha256 == sha)).first()
        if existing is not None:
            return existing  # the same bytes are stored once: nothing new counts against a quota
        if reservation is not None:
            from app.lifecycle import QuotaExceeded

            try:
                reservation.ensure(size)  # held already as the bytes came; the exact size now
            except QuotaExceeded:
                path.unlink(missing_ok=True)  # no other dataset has these bytes (checked above)
                raise
        settings = self.platform.settings  # the first check of a stranger's bytes: in a limited child process
        report = check_isolated(path, file_name, vocabularies(self.platform.weights), settings.check_memory_mb,
                                settings.check_timeout_s)
        checked = CheckReport(report)
        if not checked.ok:
            path.unlink(missing_ok=True)  # no other dataset has these bytes (checked above)
            raise DatasetRejected(report)
        ds = Dataset(id=new_id(), file_name=file_name, sha256=sha, size_bytes=size, n_cells=checked.n_cells,
                     n_genes=checked.n_genes, check_report=report, created_by=user.name if user else None)
        with write_session(self.platform.engine) as s:
            if reservation is not None:
                reservation.settle(s)  # the dataset now counts instead, in the same transaction
            s.add(ds)
        return ds

    def gated(self, ds: Dataset) -> Dataset:
        """``ds``, once its file has passed the structure gate: a dataset stored before the gate existed is checked
        again (in the limited child process) before its first run, and refused (``DatasetRejected``) if it fails;
        its report is replaced by the new one."""
        if CheckReport(ds.check_report).gated:
            return ds
        settings = self.platform.settings
        report = check_isolated(self.path(ds), ds.file_name, vocabularies(self.platform.weights),
                                settings.check_memory_mb, settings.check_timeout_s)
        if not CheckReport(report).ok:
            log.warning("dataset %s (stored before the file gate) fails it now: %s", ds.id,
                        CheckReport(report).problems()[:300])
            raise DatasetRejected(report)
        with write_session(self.platform.engine) as s:
            row = s.get(Dataset, ds.id)
            if row is not None:
                row.check_report = report
                s.add(row)
        ds.check_report = report
        return ds

    def get(self, dataset_id: str) -> Dataset:
        validate_uuid4(dataset_id, "dataset id")
        with read_session(self.platform.engine) as s:
            ds = s.get(Dataset, dataset_id)
        if ds is None:
            raise NotFound(f"No dataset {dataset_id}.")
        return ds

    def path(self, ds: Dataset) -> Path:
        return self.platform.artifacts.dataset_path(ds.sha256, file_suffix(ds.file_name))

    def list(self) -> list[Dataset]:
        with read_session(self.platform.engine) as s:
            return list(s.exec(select(Dataset).order_by(Dataset.created_at.desc())))

    # ---- the embedding store and deletion ----------------------------------------------------------------
    @property
    def embeddings(self) -> EmbeddingStore:
        return EmbeddingStore(self.platform.artifacts.home / "embeddings")

    def embeddings_of(self, dataset_id: str) -> dict:
        """The dataset's stored embeddings (one entry per model, weights and settings) and their size."""
        ds = self.get(dataset_id)
        entries = self.embeddings.entries(ds.sha256)
        return {"dataset_id": ds.id, "bytes": sum(e["bytes"] for e in entries),
                "entries": [{"key": e["digest"], "checksum": e["key"]["checksum"], "variant": e["key"]["variant"],
                             "precision": e["key"]["precision"], "settings": e["key"]["settings"],
                             "cells": e["cells"], "dims": e["dims"], "bytes": e["bytes"],
                             "seconds": e.get("seconds")} for e in entries]}

    def embeddings_size(self, ds: Dataset) -> int:
        return self.embeddings.size(ds.sha256)

    def delete_embeddings(self, dataset_id: str, user: User | None = None) -> dict:
        """Remove the dataset's stored embeddings (the next run computes them again); runs keep their own copy.
        Another user's dataset's only for an admin (``user`` None: the server or the local command line)."""
        from app.users import check_delete

        ds = self.get(dataset_id)
        check_delete(user, ds.created_by, f"Dataset {ds.file_name} (its stored embeddings)")
        return {"dataset_id": ds.id, "bytes_freed": self.embeddings.delete(ds.sha256)}

    def delete(self, dataset_id: str, cascade: bool = False, user: User | None = None) -> dict:
        """Delete the dataset, its file, stored embeddings and cached heads; with ``cascade`` its finished runs
        (``app/lifecycle.py``: rows in one transaction, files under a journal a restart finishes)."""
        from app.lifecycle import delete_dataset

        return delete_dataset(self.platform, dataset_id, cascade, user)
