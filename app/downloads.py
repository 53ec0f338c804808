"""Download links for a finished run's files, for the dashboard and the REST API alike.

When ``HELICAL_PLATFORM_API_TOKEN`` is set, a link carries an HMAC of the run id and format keyed by the token, so
the dashboard can hand a browser a working link without the token ever leaving the server; the REST download route
accepts that signature in place of the token. Without a token the link is the plain route.
"""

from __future__ import annotations

import hmac


def download_signature(platform, run_id: str, fmt: str) -> str:  # noqa: ANN001 - app.platform.Platform
    """What ``sig=`` must be for this run and format (keyed by the API token; empty key without one)."""
    token = platform.settings.api_token or ""
    return hmac.new(token.encode(), f"{run_id}:{fmt}".encode(), "sha256").hexdigest()


def download_url(platform, run_id: str, fmt: str) -> str:  # noqa: ANN001
    """The server-relative link that streams the run's ``fmt`` file (``h5ad`` or ``csv``)."""
    sig = f"&sig={download_signature(platform, run_id, fmt)}" if platform.settings.api_token else ""
    return f"/api/download/{run_id}?format={fmt}{sig}"
