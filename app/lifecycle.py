"""Deleting runs and datasets, disk use, retention: what a lab server needs so that uploads do not stay forever.

A deletion is atomic from the user's view: the rows go in one transaction, so no half-deleted run or dataset is
ever listed. The files go after, under a journal written before the rows are deleted (``deleting/<id>.json``:
what to remove). A process that dies between the two leaves the journal; the next start finishes it
(``recover``), or drops it when the rows are still there (the transaction never committed).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import or_
from sqlmodel import select

from app.users import Forbidden, User, check_delete
from inference.run_files import write_text
from store.artifacts import new_id
from store.engine import lock_key, read_session, write_session
from store.tables import ACTIVE, ClassifierHead, Dataset, Run, RunStatus, ServerInstance, UploadReservation, utcnow

log = logging.getLogger(__name__)
JOURNAL = "deleting"
JOURNAL_STALE_S = 600  # a journal whose rows are still there and older than this was never committed


class RunInUse(RuntimeError):
    """A queued or running run cannot be deleted: it is cancelled first."""


class QuotaExceeded(ValueError):
    """An upload that would take a user over ``HELICAL_PLATFORM_QUOTA_GB`` (413, with the numbers)."""


def _file_bytes(platform, name: str) -> int:  # noqa: ANN001
    """What ``name`` takes on disk besides their datasets' files: those datasets' stored embeddings and the folders
    of the runs they started (read from the filesystem, outside any lock)."""
    with read_session(platform.engine) as s:
        datasets = list(s.exec(select(Dataset).where(Dataset.created_by == name)))
        runs = list(s.exec(select(Run).where(Run.created_by == name)))
    return (sum(platform.datasets.embeddings_size(d) for d in datasets)
            + _size([platform.artifacts.run_dir(r.id) for r in runs]))


def user_bytes(platform, name: str) -> int:  # noqa: ANN001
    """What ``name`` takes on disk: the files (and stored embeddings) of the datasets they uploaded first and the
    folders of the runs they started."""
    with read_session(platform.engine) as s:
        files = sum(d.size_bytes for d in s.exec(select(Dataset).where(Dataset.created_by == name)))
    return files + _file_bytes(platform, name)


RESERVE_STEP = 8 << 20  # a body of unknown length reserves this much more each time it passes what it holds


class QuotaReservation:
    """Bytes an upload in progress holds against its user's quota, in the database (``upload_reservations``).

    Why a row and not a check after the upload is stored: three uploads at once each passed the check while none
    was recorded yet. Every admission counts the user's datasets and every live reservation in one write
    transaction, serialised per user (``store.engine.lock_key``: SQLite's write lock, a PostgreSQL advisory lock),
    so two replicas on one database take turns too. ``ensure`` grows it as bytes arrive; the dataset's own
    transaction removes it (``settle``); ``release`` drops it when the upload fails."""

    def __init__(self, platform, name: str) -> None:  # noqa: ANN001 - app.platform.Platform
        self.platform, self.user, self.reserved = platform, name, 0
        self.id: str | None = None

    def ensure(self, total: int, step: int = 0) -> None:
        """Hold at least ``total`` bytes (``step`` more when it grows, to write less often); ``QuotaExceeded``
        when the user's data, their other uploads in progress and ``total`` would pass the quota."""
        if total <= self.reserved:
            return
        quota = self.platform.settings.quota_gb
        limit = int(quota * 1e9)
        wanted = max(total, self.reserved + step)
        others_on_disk = _file_bytes(self.platform, self.user)
        self.platform.lease.start(reconcile=False)  # the reservation's owner: a live process while it beats
        with write_session(self.platform.engine) as s:
            lock_key(s, f"quota:{self.user}")
            files = sum(d.size_bytes for d in s.exec(select(Dataset).where(Dataset.created_by == self.user)))
            held = sum(r.bytes for r in _live_reservations(self.platform, s, self.user) if r.id != self.id)
            stored = files + others_on_disk
            used = stored + held
            if used + total > limit:
                raise QuotaExceeded(
                    f"This upload ({_human(total)}) would take {self.user} to {_human(used + total)}, over the quota "
                    f"of {quota:g} GB per user (HELICAL_PLATFORM_QUOTA_GB); {self.user} uses {_human(stored)} now"
                    + (f" and has other uploads in progress holding {_human(held)}" if held else "")
                    + ". Delete datasets or runs you no longer need (GET /api/usage lists them), or ask an admin.")
            wanted = min(wanted, limit - used)
            row = s.get(UploadReservation, self.id) if self.id else None
            if row is None:
                self.id = new_id()
                row = UploadReservation(id=self.id, user=self.user, owner=self.platform.lease.instance_id)
            row.bytes = wanted
            s.add(row)
        self.reserved = wanted

    def settle(self, session) -> None:  # noqa: ANN001 - a write session
        """Drop the reservation in ``session``, the transaction that records what it reserved for (under the user's
        lock: a PostgreSQL admission reading datasets then reservations must see both before or both after)."""
        lock_key(session, f"quota:{self.user}")
        if self.id and (row := session.get(UploadReservation, self.id)) is not None:
            session.delete(row)
        self.id, self.reserved = None, 0

    def release(self) -> None:
        """Give the bytes back (a refused, failed or abandoned upload); safe to call twice."""
        if self.id is None:
            return
        with write_session(self.platform.engine) as s:
            self.settle(s)


def _live_reservations(platform, session, name: str) -> list[UploadReservation]:  # noqa: ANN001
    """``name``'s reservations whose server is alive; those of servers that are gone are deleted (a crash mid-upload
    must not hold a quota for good)."""
    rows = list(session.exec(select(UploadReservation).where(UploadReservation.user == name)))
    owners = {o.id: o for o in session.exec(select(ServerInstance).where(
        ServerInstance.id.in_({r.owner for r in rows})))} if rows else {}
    now, live = datetime.now(UTC), []
    for row in rows:
        if platform.lease.why_gone(owners.get(row.owner), now) is None:
            live.append(row)
        else:
            session.delete(row)
    return live


def reserve(platform, name: str | None, nbytes: int = 0) -> QuotaReservation | None:  # noqa: ANN001
    """A reservation of ``nbytes`` for ``name`` (``QuotaExceeded`` if it does not fit), or None when there is no
    quota or no user to charge (the server itself, the local command line)."""
    if name is None or not platform.settings.quota_gb:
        return None
    reservation = QuotaReservation(platform, name)
    reservation.ensure(max(nbytes, 1))
    return reservation


def _human(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _journal_dir(platform) -> Path:  # noqa: ANN001 - app.platform.Platform
    return platform.artifacts.inside(JOURNAL)


def _size(paths: Iterable[Path]) -> int:
    """Bytes under ``paths``, each file once (run folders hard-link stored embeddings)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for path in paths:
        files = [path] if path.is_file() else (p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
        for f in files:
            try:
                st = f.stat()
            except FileNotFoundError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def _remove(paths: Iterable[Path]) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _begin(platform, key: str, what: dict) -> Path:  # noqa: ANN001
    journal = _journal_dir(platform) / f"{key}.json"
    journal.parent.mkdir(parents=True, exist_ok=True)
    write_text(journal, json.dumps(what))
    return journal


def _finish(platform, journal: Path, what: dict | None = None) -> int:  # noqa: ANN001
    """Remove what the journal lists (files, folders, a dataset's stored embeddings), then the journal. The
    deleting process passes ``what`` itself: a replica starting meanwhile may have read or removed the journal."""
    what = what if what is not None else json.loads(journal.read_text())
    paths = [Path(p) for p in what.get("paths", [])]
    freed = _size(paths)
    _remove(paths)
    for sha in what.get("embeddings", []):
        freed += platform.datasets.embeddings.delete(sha)
    journal.unlink(missing_ok=True)
    return freed


def delete_run(platform, run_id: str, user: User | None = None) -> dict:  # noqa: ANN001
    """Delete a finished (done, failed or cancelled) run: its row and its folder. A queued or running run is
    refused (cancel it first), and another user's run unless ``user`` is an admin (``None``: the server or the
    local command line). Annotators saved from it keep their own copy of its head."""
    run = platform.runs.get(run_id)  # NotFound for an unknown id
    check_delete(user, run.created_by, f"Run {run.id[:8]}")
    paths = [platform.artifacts.run_dir(run.id), platform.artifacts.staging_dir(run.id)]
    what = {"kind": "run", "id": run.id, "paths": [str(p) for p in paths]}
    journal = _begin(platform, f"run-{run.id}", what)
    with write_session(platform.engine) as s:
        row = s.get(Run, run.id)
        if row is not None and row.status in ACTIVE:
            journal.unlink(missing_ok=True)
            raise RunInUse(f"Run {run.id[:8]} is {row.status}: cancel it first (POST /api/runs/{run.id}/cancel), "
                           "then delete it.")
        if row is not None:
            s.delete(row)
    freed = _finish(platform, journal, what)
    log.info("deleted run %s (%s, %s), %d bytes", run.id, run.model_id, run.status, freed)
    return {"run_id": run.id, "bytes_freed": freed}


def delete_dataset(platform, dataset_id: str, cascade: bool = False,  # noqa: ANN001
                   user: User | None = None) -> dict:
    """Delete a dataset: its row, its file, its stored embeddings and the cached heads trained on it; with
    ``cascade``, its finished runs too. Refused while a queued or running run uses it, and without ``cascade``
    while a finished run does."""
    from app.datasets import DatasetInUse

    ds = platform.datasets.get(dataset_id)
    check_delete(user, ds.created_by, f"Dataset {ds.file_name}")
    with read_session(platform.engine) as s:
        heads = list(s.exec(select(ClassifierHead).where(ClassifierHead.reference_sha256 == ds.sha256)))
    paths = [platform.datasets.path(ds)] + [Path(h.path) for h in heads]
    with write_session(platform.engine) as s:
        runs = list(s.exec(select(Run).where(or_(Run.dataset_id == ds.id, Run.reference_dataset_id == ds.id))))
        active = [r for r in runs if r.status in ACTIVE]
        if active:
            raise DatasetInUse(f"{ds.file_name} is used by {len(active)} queued or running run(s) "
                               f"({', '.join(r.id[:8] for r in active[:5])}): cancel them or wait, then delete.")
        others = [r for r in runs if user is not None and not user.may_delete(r.created_by)]
        if cascade and others:
            raise Forbidden(f"{ds.file_name} has {len(others)} finished run(s) of other users; only an admin "
                            "(HELICAL_PLATFORM_ADMINS) may delete them with it.")
        if runs and not cascade:
            raise DatasetInUse(f"{ds.file_name} has {len(runs)} finished run(s): delete with cascade "
                               "(REST ?cascade=true, CLI --cascade) to delete them with it.")
        paths += [platform.artifacts.run_dir(r.id) for r in runs]
        what = {"kind": "dataset", "id": ds.id, "paths": [str(p) for p in paths], "embeddings": [ds.sha256]}
        journal = _begin(platform, f"dataset-{ds.id}", what)
        for run in runs:
            s.delete(run)
        for head in heads:
            if (row := s.get(ClassifierHead, head.cache_key)) is not None:
                s.delete(row)
        s.delete(s.get(Dataset, ds.id))
    freed = _finish(platform, journal, what)
    log.info("deleted dataset %s (%s) with %d run(s), %d bytes", ds.id, ds.file_name, len(runs), freed)
    return {"dataset_id": ds.id, "runs_deleted": [r.id for r in runs], "bytes_freed": freed}


def recover(platform) -> list[str]:  # noqa: ANN001
    """Finish the deletions a dead process left half done; drop the journals of those that never committed."""
    folder = _journal_dir(platform)
    done = []
    for journal in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            what = json.loads(journal.read_text())
        except (OSError, ValueError):
            log.warning("unreadable deletion journal %s left as is", journal)
            continue
        table = {"run": Run, "dataset": Dataset}.get(what.get("kind"))
        if table is None:
            continue
        with read_session(platform.engine) as s:
            still_there = s.get(table, what.get("id")) is not None
        if still_there:  # the rows were never deleted: nothing to finish
            # ... unless another replica is between writing it and committing (seconds): a young one is left
            if time.time() - journal.stat().st_mtime > JOURNAL_STALE_S:
                journal.unlink(missing_ok=True)
            continue
        freed = _finish(platform, journal, what)
        log.warning("finished the deletion of %s %s that an interrupted process left (%d bytes)", what["kind"],
                    what["id"], freed)
        done.append(f"{what['kind']}:{what['id']}")
    return done


def usage(platform) -> dict:  # noqa: ANN001
    """Disk use of every dataset (file + stored embeddings) and run (its folder), with totals."""
    with read_session(platform.engine) as s:
        datasets = list(s.exec(select(Dataset)))
        runs = list(s.exec(select(Run)))
    ds_rows = [{"id": d.id, "file_name": d.file_name, "file_bytes": d.size_bytes,
                "embeddings_bytes": platform.datasets.embeddings_size(d)} for d in datasets]
    run_rows = [{"id": r.id, "model": r.model_id, "status": r.status, "dataset_id": r.dataset_id,
                 "bytes": _size([platform.artifacts.run_dir(r.id)])} for r in runs]
    home = platform.artifacts.home
    disk = shutil.disk_usage(home)
    return {"datasets": ds_rows, "runs": run_rows,
            "totals": {"datasets_bytes": sum(d["file_bytes"] + d["embeddings_bytes"] for d in ds_rows),
                       "runs_bytes": sum(r["bytes"] for r in run_rows), "disk_free_bytes": disk.free,
                       "disk_total_bytes": disk.total},
            "retention_days": platform.settings.retention_days or None}


def apply_retention(platform) -> list[str]:  # noqa: ANN001
    """Delete finished runs older than ``HELICAL_PLATFORM_RETENTION_DAYS`` (none when unset); each one logged."""
    days = platform.settings.retention_days
    if not days:
        return []
    cutoff = utcnow() - timedelta(days=days)
    terminal = [RunStatus.DONE, RunStatus.FAILED, RunStatus.CANCELLED]
    with read_session(platform.engine) as s:
        old = list(s.exec(select(Run).where(Run.status.in_(terminal))))
    removed = []
    for run in old:
        finished = run.finished_at or run.created_at
        if finished.tzinfo is None:  # SQLite gives naive UTC datetimes back
            finished = finished.replace(tzinfo=cutoff.tzinfo)
        if finished < cutoff:
            try:
                delete_run(platform, run.id)
            except (RunInUse, LookupError):  # restarted or deleted meanwhile
                continue
            log.warning("retention: deleted run %s (%s), finished %s, older than %d days", run.id, run.model_id,
                        finished.isoformat(timespec="seconds"), days)
            removed.append(run.id)
    return removed



ORPHAN_AGE_S = 3600  # a dataset file without a row for this long belongs to no upload being checked


def remove_orphan_datasets(platform, older_than_s: float = ORPHAN_AGE_S) -> list[Path]:  # noqa: ANN001
    """Remove the files under ``datasets/`` that no dataset row points at and nobody touched for ``older_than_s``.

    A process that died between storing an upload and recording it (or refusing it) left such a file: kept for
    good and counted by no quota. The age bound spares another replica's upload that is stored and being checked
    right now (a check ends within minutes; the same bytes uploaded again refresh the file's time)."""
    with read_session(platform.engine) as s:
        known = {platform.datasets.path(d) for d in s.exec(select(Dataset))}
    cutoff = time.time() - older_than_s
    removed = []
    for path in platform.artifacts.inside("datasets").glob("*/*"):
        try:
            if path.is_file() and path not in known and path.stat().st_mtime <= cutoff:
                with read_session(platform.engine) as s:  # recorded since the listing above: keep it
                    rows = list(s.exec(select(Dataset).where(Dataset.sha256 == path.name[:64])))
                if any(platform.datasets.path(d) == path for d in rows):
                    continue
                path.unlink()
                removed.append(path)
        except (FileNotFoundError, ValueError):
            continue
    if removed:
        log.warning("removed %d dataset file(s) that no dataset records (left by an interrupted upload): %s",
                    len(removed), ", ".join(p.name[:12] for p in removed[:5]))
    return removed
