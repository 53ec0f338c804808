"""Which process owns which run: a heartbeat per process that runs work, and failing only the dead's runs.

Every process that runs work (a ``panel serve`` server, a notebook's shared Platform, a script that submits)
registers a ``ServerInstance`` row and renews its heartbeat every third of the lease. A run records its owner.
A run left queued or running is failed only when its owner is gone: it stopped cleanly, its heartbeat is older
than the lease, or, on this same host, its process no longer exists (so a restart fails its predecessor's runs at
once). ``helical-platform info``, a second replica on the same database or a second ``--num-procs`` process never
touch a live process's runs.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Engine
from sqlmodel import select

from store.artifacts import ArtifactStore, new_id
from store.engine import write_session
from store.tables import ACTIVE, Run, RunStatus, ServerInstance

log = logging.getLogger(__name__)
FORGET_AFTER = timedelta(days=1)  # instance rows older than this, with no run left to judge, are dropped


def _aware(moment: datetime) -> datetime:
    """SQLite hands datetimes back without their zone; every one we write is UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, owned by someone else
        return False
    return False


class Lease:
    """This process's instance row, its heartbeat thread, and the reconciliation of dead owners' runs."""

    def __init__(self, engine: Engine, artifacts: ArtifactStore, lease_s: int) -> None:
        self.engine, self.artifacts, self.lease_s = engine, artifacts, lease_s
        self.instance_id, self.host, self.pid = new_id(), socket.gethostname(), os.getpid()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reconciles = False
        self._lock = threading.Lock()

    def start(self, reconcile: bool) -> None:
        """Register and keep the heartbeat; with ``reconcile`` (servers) also fail dead owners' runs, now and
        at every beat, so a replica fails a killed one's runs within the lease."""
        with self._lock:
            self._reconciles = self._reconciles or reconcile
            if self._thread is not None:
                return
            with write_session(self.engine) as s:
                s.add(ServerInstance(id=self.instance_id, host=self.host, pid=self.pid))
            self._thread = threading.Thread(target=self._beat, name="run-lease", daemon=True)
            self._thread.start()
        if reconcile:
            self.reconcile()

    def _stamp(self, field: str) -> None:
        """This instance's ``heartbeat_at`` or ``stopped_at``, now."""
        with write_session(self.engine) as s:
            me = s.get(ServerInstance, self.instance_id)
            if me is not None:
                setattr(me, field, datetime.now(UTC))
                s.add(me)

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self._stamp("heartbeat_at")
                if self._reconciles:
                    self.reconcile()
            except Exception:  # a missed beat is retried at the next; the lease allows three
                log.exception("could not renew the run lease")

    def why_gone(self, owner: ServerInstance | None, now: datetime) -> str | None:
        """Why ``owner`` can no longer finish its runs, or None while it is alive."""
        if owner is None:
            return "its server is not known to this database (a run from before owners were recorded)"
        if owner.id == self.instance_id:
            return None
        where = f"process {owner.pid} on {owner.host}"
        if owner.stopped_at is not None:
            return f"{where} stopped at {_aware(owner.stopped_at):%Y-%m-%d %H:%M:%S} UTC"
        if owner.host == self.host and _process_gone(owner.pid):
            return f"{where} is gone"
        last = _aware(owner.heartbeat_at)
        if now - last > timedelta(seconds=self.lease_s):
            return f"{where} has sent no heartbeat since {last:%Y-%m-%d %H:%M:%S} UTC (lease {self.lease_s} s)"
        return None

    def reconcile(self) -> list[str]:
        """Fail the queued or running runs whose owner is gone, and remove their folders; returns their ids."""
        now = datetime.now(UTC)
        failed: list[str] = []
        with write_session(self.engine) as s:
            active = list(s.exec(select(Run).where(Run.status.in_([str(a) for a in ACTIVE]))))
            owner_ids = {r.owner for r in active if r.owner}
            owners = {o.id: o for o in s.exec(select(ServerInstance).where(ServerInstance.id.in_(owner_ids)))}
            for run in active:
                why = self.why_gone(owners.get(run.owner) if run.owner else None, now)
                if why is None:
                    continue
                run.status, run.stage, run.finished_at = RunStatus.FAILED, RunStatus.FAILED, now
                run.error = f"Interrupted by a restart or stop of its server before it finished ({why}); " \
                            "submit it again."
                s.add(run)
                failed.append(run.id)
            for old in s.exec(select(ServerInstance).where(ServerInstance.heartbeat_at < now - FORGET_AFTER)):
                if old.id not in owner_ids:
                    s.delete(old)
        for run_id in failed:  # its owner is gone: nobody writes there any more
            shutil.rmtree(self.artifacts.run_dir(run_id), ignore_errors=True)
            shutil.rmtree(self.artifacts.staging_dir(run_id), ignore_errors=True)
        if failed:
            log.warning("%d runs of servers that are gone were marked failed", len(failed))
        return failed

    def stop(self) -> None:
        """A clean stop: say so at once, so that a restart or a replica need not wait out the lease."""
        self._stop.set()
        if self._thread is None:
            return
        try:
            self._stamp("stopped_at")
        except Exception:  # the database may be gone at exit; the lease then expires by itself
            log.debug("could not record this instance's stop", exc_info=True)
