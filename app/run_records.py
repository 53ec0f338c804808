"""What happens to a run, written into its row: progress from the workers' events and the outcome when it ends.

Progress goes through one writer thread: many workers' events never contend for the database, and a slow write
never holds the worker that sent it. An outcome is recorded once, unless another replica has already ended the
run (the lease): then it is refused and logged.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
from datetime import UTC, datetime

from sqlalchemy import Engine

from app.failures import FailureKind
from inference import applications
from inference.applications.base import Outcome
from store.artifacts import ArtifactStore
from store.engine import TerminalStatusError, read_session, write_session
from store.tables import Run, RunStatus

log = logging.getLogger(__name__)


def now() -> datetime:
    return datetime.now(UTC)


class RunRecords:
    def __init__(self, engine: Engine, artifacts: ArtifactStore) -> None:
        self.engine, self.artifacts = engine, artifacts
        self.workers: dict[str, dict] = {}  # run id -> the worker process now running it (from its events)
        self._updates: queue.Queue = queue.Queue()
        threading.Thread(target=self._write_progress, name="run-progress", daemon=True).start()

    def progress(self, event: dict) -> None:
        """A worker's progress event (run id, stage, done, total, worker, pid): written by the writer thread."""
        self._updates.put(event)

    def finish(self, run_id: str, status: RunStatus, outcome: Outcome | None = None, error: str | None = None,
                device: str | None = None, kind: FailureKind | None = None) -> None:
        """Record the outcome; retried once (e.g. the disk full for the database too), else logged: the lease
        then fails the run rather than leaving it running."""
        for attempt in (1, 2):
            try:
                self._record_finish(run_id, status, outcome, error, device, kind)
                return
            except TerminalStatusError:  # e.g. failed by a replica that took this process for dead
                log.warning("run %s already ended elsewhere; its %s outcome is not recorded", run_id, status)
                with read_session(self.engine) as s:
                    run = s.get(Run, run_id)
                if run is None or run.status != RunStatus.DONE:
                    shutil.rmtree(self.artifacts.run_dir(run_id), ignore_errors=True)
                return
            except Exception:
                log.exception("could not record run %s as %s (attempt %d)", run_id, status, attempt)
                time.sleep(1)

    def _record_finish(self, run_id: str, status: RunStatus, outcome: Outcome | None, error: str | None,
                       device: str | None, kind: FailureKind | None) -> None:
        with write_session(self.engine) as s:
            run = s.get(Run, run_id)
            run.status, run.finished_at, run.error, run.stage = status, now(), error, status
            if kind is not None:
                run.parameters = {**run.parameters, "failure": str(kind)}
            if device:
                run.device = device
            if outcome is not None:
                run.progress, run.cells_done = 1.0, outcome.n_cells
                run.metrics, run.provenance = outcome.metrics, outcome.provenance
                run.stage_timings = outcome.stage_timings
                run.result_dir = str(self.artifacts.run_dir(run_id))
                run.parameters = {**run.parameters, **outcome.summary}
            s.add(run)

    def _write_progress(self) -> None:
        while True:
            event = self._updates.get()
            try:
                self._apply_progress(event)
            except Exception:  # a progress write must never stop the writer
                log.exception("could not record progress %s", event)

    def _apply_progress(self, event: dict) -> None:
        self.workers[event["run_id"]] = {"address": event.get("worker"), "pid": event.get("pid")}
        with write_session(self.engine) as s:
            run = s.get(Run, event["run_id"])
            if run is None or run.status != RunStatus.RUNNING:
                return
            run.stage = event["stage"]
            if event["stage"].startswith("embedding") and event["total"]:
                run.cells_done, run.cells_total = event["done"], event["total"]
            app = applications.get(run.application_id)
            run.progress = max(run.progress, app.progress(event["stage"], event["done"], event["total"]))
            s.add(run)
