"""Why a run failed, as a type set where the failure is caught, and the words a user reads for it."""

from __future__ import annotations

import errno
from enum import StrEnum

from inference.applications.base import SubmissionError
from inference.backends.base import Cancelled
from inference.devices import DeviceUnavailable
from inference.pipeline import AnnotationError
from inference.weights import WeightsError

# Dask reports a lost actor worker and a lost scheduler as generic errors; these are the words it uses.
_SCHEDULER_LOST = ("scheduler-connection-lost", "lost the connection to the scheduler")
_WORKER_LOST = ("Worker holding Actor was lost", "KilledWorker", "CommClosedError", "Stream is closed")


class FailureKind(StrEnum):
    CANCELLED = "cancelled"
    USER_ERROR = "user error"
    WORKER_LOST = "worker lost"
    SCHEDULER_LOST = "scheduler lost"
    DISK_FULL = "disk full"
    INTERNAL = "internal"


def classify(exc: BaseException, scheduler_gone: bool) -> FailureKind:
    """The kind of a run's failure, from the exception's type first; Dask's own errors carry no type of ours."""
    if isinstance(exc, Cancelled):
        return FailureKind.CANCELLED
    if isinstance(exc, (AnnotationError, WeightsError, SubmissionError, DeviceUnavailable)):
        return FailureKind.USER_ERROR
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return FailureKind.DISK_FULL
    text = f"{type(exc).__name__}: {exc}"
    if scheduler_gone or any(marker in text for marker in _SCHEDULER_LOST):
        return FailureKind.SCHEDULER_LOST
    if "Cancelled" in text:  # a Cancelled raised on a worker arrives re-raised by Dask
        return FailureKind.CANCELLED
    if isinstance(exc, ConnectionError) or any(marker in text for marker in _WORKER_LOST) \
            or "worker" in text.lower():
        return FailureKind.WORKER_LOST
    return FailureKind.INTERNAL


def message(kind: FailureKind, exc: BaseException, where: str = "") -> str:
    """What the run's error says: what happened and what to do."""
    text = f"{type(exc).__name__}: {exc}"
    if kind is FailureKind.CANCELLED:
        return "Cancelled by the user."
    if kind is FailureKind.USER_ERROR:
        return str(exc)
    if kind is FailureKind.SCHEDULER_LOST:
        return ("The connection to the Dask scheduler was lost while this run was in flight. Submit it again once "
                f"the cluster is back (the sidebar shows its state). ({text})")
    if kind is FailureKind.DISK_FULL:
        place = getattr(exc, "filename", None) or where
        return (f"The disk is full (or over quota) where the results are written ({place}): nothing was kept. "
                "Free space in the data home and submit the run again.")
    if kind is FailureKind.WORKER_LOST:
        return ("The worker running this run stopped (killed or out of memory) before it finished. Submit the run "
                f"again: the model is loaded afresh on a live worker. ({text})")
    return text
