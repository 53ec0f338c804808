"""Applications: one module each, one line each in ``REGISTRY``; the run service knows none by name."""

from __future__ import annotations

from inference.applications.annotation import CellTypeAnnotation
from inference.applications.base import Application
from inference.applications.integration import EmbeddingIntegration

REGISTRY: dict[str, Application] = {app.id: app for app in (
    CellTypeAnnotation(),
    EmbeddingIntegration(),
)}


def get(application_id: str) -> Application:
    """The application with this id; ``KeyError`` names the ones there are."""
    try:
        return REGISTRY[application_id]
    except KeyError:
        raise KeyError(f"No application {application_id!r}; there are: {', '.join(REGISTRY)}.") from None
