"""Composition root: settings -> Platform -> Dashboard. ``make serve`` runs ``panel serve`` on this file."""

from app.server_access import refuse_start_without_login

refuse_start_without_login()  # users configured but no dashboard login: stop before anything starts a cluster

import logging  # noqa: E402

from app.loopwatch import WATCH  # noqa: E402
from app.platform import Platform  # noqa: E402
from dashboards.dashboard import Dashboard  # noqa: E402

logging.getLogger("app").setLevel(logging.INFO)  # the settings in effect at start, deletions (an admin's record)
WATCH.start()  # measures the server's event loop (GET /api/health)
Dashboard(Platform.shared()).servable_page()
