"""The exceptions of the Python API (``helical_platform``): one family whatever runs the work.

Their codes are the REST API's error codes (``app/rest_base.py``), so the local mode (the service's exceptions,
translated by the same function the REST handlers use) and a remote mode (the JSON error body of a server) raise the
same class with the same code and message.
"""

from __future__ import annotations

__all__ = ["AccessDenied", "Conflict", "InputError", "NotFound", "PlatformError", "RunFailed", "Unavailable",
           "error_from_code", "error_from_service"]


class PlatformError(Exception):
    """Anything the platform refused or could not do; ``code`` is the REST API's error code, ``details`` its
    details (for a rejected file: the check report)."""

    def __init__(self, message: str, code: str = "internal", details: object = None) -> None:
        super().__init__(message)
        self.message, self.code, self.details = message, code, details

    def __str__(self) -> str:
        return self.message


class InputError(PlatformError):
    """The data or the request cannot be used as given (a file without counts, an unknown label column, ...)."""

    @property
    def report(self) -> dict | None:
        """The check report of a rejected AnnData (what was found, what to fix); None for other input errors."""
        return self.details if self.code in ("invalid_file", "unreadable_file") else None


class NotFound(PlatformError):
    """No such model, annotator, dataset or run."""


class Conflict(PlatformError):
    """The request clashes with what exists (a name taken, a run not finished, a dataset in use)."""


class AccessDenied(PlatformError):
    """Not allowed: no or a wrong token, or another user's run or annotator."""


class Unavailable(PlatformError):
    """The cluster (or, remotely, the server) cannot be reached now; trying again later may work."""


class RunFailed(PlatformError):
    """The run was accepted but ended failed, or was cancelled by someone else; ``details`` has its ``run_id``."""


CLASSES: dict[str, type[PlatformError]] = {
    "invalid_request": InputError, "invalid_file": InputError, "unreadable_file": InputError,
    "invalid_id": InputError, "too_large": InputError, "over_quota": InputError, "model_cannot_use": InputError,
    "invalid_annotator": InputError, "invalid_json": InputError, "unsupported_media_type": InputError,
    "not_found": NotFound, "conflict": Conflict, "in_use": Conflict, "not_finished": Conflict,
    "unauthorized": AccessDenied, "forbidden": AccessDenied, "cross_origin": AccessDenied,
    "unavailable": Unavailable, "run_failed": RunFailed, "cancelled": RunFailed,
}


def error_from_code(code: str, message: str, details: object = None) -> PlatformError:
    """The exception for an error code and message (a REST error body's ``code``, ``message``, ``details``)."""
    return CLASSES.get(code, PlatformError)(message, code, details)


def error_from_service(exc: BaseException) -> PlatformError | None:
    """The service's exception as the API's, through the REST handlers' own translation; None for an internal
    error (a bug: the caller lets the original propagate with its traceback rather than hide it)."""
    from app.rest_base import translate

    err = translate(exc)
    if err.code == "internal":
        return None
    return error_from_code(err.code, err.message, err.details)
