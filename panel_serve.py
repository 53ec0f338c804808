"""Composition root: settings -> Platform -> Dashboard. ``make serve`` runs ``panel serve`` on this file."""

from app.loopwatch import WATCH
from app.platform import Platform
from dashboards.dashboard import Dashboard

WATCH.start()  # measures the server's event loop (GET /api/health)
Dashboard(Platform.shared()).servable_page()
