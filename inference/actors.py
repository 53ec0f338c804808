"""Model actors: one per model, variant and device, holding the loaded backend on a Dask worker.

A second run of a model loads nothing. Progress leaves the actor as worker events (``log_event``), so reading it
never waits for the actor's thread, which is busy with the run; cancellation is a Dask ``Event`` the run checks
between batches.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from inference import applications
from inference.applications.base import Outcome
from inference.backends import create_backend
from inference.weights import WeightsLocations

PROGRESS_TOPIC = "helical-platform-progress"
CHECK_CANCEL_EVERY_S = 0.5


@dataclass(frozen=True)
class ModelSpec:
    """Which model an actor holds; plain data, so it travels to any worker."""

    backend: str
    variant: str | None
    device: str
    staged: str
    generated: str
    helical_cache: str
    allow_download: bool = False

    @property
    def key(self) -> str:
        return f"{self.backend}:{self.variant or ''}:{self.device}"

    def locations(self) -> WeightsLocations:
        return WeightsLocations(Path(self.staged), Path(self.generated), Path(self.helical_cache),
                                self.allow_download)


def cancel_event_name(run_id: str) -> str:
    return f"helical-platform-cancel-{run_id}"


class _Stopper:
    """``should_stop`` for a run: asks the scheduler at most every half second."""

    def __init__(self, run_id: str) -> None:
        from distributed import Event

        self.event = Event(cancel_event_name(run_id))
        self.last, self.answer = 0.0, False

    def __call__(self) -> bool:
        now = time.monotonic()
        if not self.answer and now - self.last > CHECK_CANCEL_EVERY_S:
            self.last, self.answer = now, self.event.is_set()
        return self.answer


def _reporter(run_id: str):  # noqa: ANN202 - a progress callback
    from distributed import get_worker

    worker = get_worker()
    started = time.monotonic()

    def report(stage: str, done: int, total: int) -> None:
        worker.log_event(PROGRESS_TOPIC, {"run_id": run_id, "stage": str(stage), "done": done, "total": total,
                                          "elapsed_s": round(time.monotonic() - started, 2),
                                          "worker": worker.address, "pid": os.getpid()})

    return report


class ModelActor:
    """Loads the model once (on first use) and runs the model phase of every job sent to it, in order."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.loads = 0
        self.runs = 0
        self._backend = None
        self._info: dict = {}

    def preload(self) -> dict:
        """Load now (the preload setting) rather than at the first run."""
        if self._backend is None:
            self._load()
        return self.describe()

    def _load(self) -> None:
        backend = create_backend(self.spec.backend, self.spec.variant, self.spec.locations(), device=self.spec.device)
        backend.load()
        self._backend, self._info = backend, backend.provenance()
        self.loads += 1

    def run(self, application_id: str, job: object, run_id: str, staging: str) -> dict:
        """The model phase of a run of any application; its output goes to ``staging`` for the CPU phase."""
        report = _reporter(run_id)
        if self._backend is None:
            report("loading model", 0, 0)
            self._load()
        self.runs += 1
        folder = Path(staging)
        folder.mkdir(parents=True, exist_ok=True)
        applications.get(application_id).model_phase(job, self._backend, self._info, folder, report,
                                                     _Stopper(run_id))
        return {"device": getattr(self._backend, "device", "cpu"), "pid": os.getpid(), "loads": self.loads}

    def describe(self) -> dict:
        return {"spec": self.spec.key, "loads": self.loads, "runs": self.runs, "pid": os.getpid(),
                "loaded": self._backend is not None}


def finish_run(application_id: str, job: object, run_id: str, staging: str) -> Outcome:
    """The CPU phase (layout, files) as a plain task on any worker, so a GPU is free once the model is done."""
    report = _reporter(run_id)
    try:
        return applications.get(application_id).cpu_phase(job, Path(staging), report, _Stopper(run_id))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
