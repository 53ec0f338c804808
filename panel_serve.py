"""Composition root: settings -> Platform -> Dashboard. ``make serve`` runs ``panel serve`` on this file."""

from app.platform import Platform
from dashboards.dashboard import Dashboard

Dashboard(Platform.shared()).servable_page()
