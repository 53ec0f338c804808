"""Security headers on every response of the server (dashboard pages, static files and the REST API).

Defence in depth behind the escaping of user text (``dashboards/safe_text.py``): a Content-Security-Policy
whose script rule carries a fresh nonce per page, so an injected ``<script>`` or inline event handler
(``onerror=``, ``onload=``) does not run even if some text escaped unescaped; ``nosniff`` so a stored file is
never read as script or HTML; no framing by other sites.

What Bokeh and Panel need, measured in headless Chromium on the served dashboard (tests/test_untrusted_text.py
records every CSP violation the page reports and fails on any):
- ``script-src 'self' 'nonce-…' 'unsafe-eval'``: the page's own inline scripts (Bokeh's bootstrap and the
  template's) get the nonce; Bokeh compiles some callbacks with ``new Function`` (``'unsafe-eval'``). No
  ``'unsafe-inline'`` for scripts, so inline event handlers are blocked, except the few that Panel's template
  writes into the page itself (sidebar, theme and full-screen buttons), allowed by the hash of their exact
  text (``'unsafe-hashes'``): an injected handler has other text and stays blocked.
- Panel's template asks fonts.googleapis.com for a font: blocked (a lab server is often offline anyway).
- ``style-src 'self' 'unsafe-inline'``: Bokeh and Panel set styles inline in their shadow roots.
- ``img-src 'self' data: blob:``, ``font-src 'self' data:``: rendered plots and icon fonts are data URLs.
- ``connect-src 'self' ws: wss:``: the Bokeh websocket (its origin is checked by ``--allow-websocket-origin``).

Panel's ``panel serve`` offers no hook for response headers, so ``install()`` adds this transform to the
Tornado application Bokeh builds; ``app.rest`` (the ``--plugins`` module) calls it before the server starts.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
import secrets

import tornado.httputil
import tornado.web

_SCRIPT_TAG = re.compile(rb"<script(?=[\s>])", re.IGNORECASE)
_HANDLER = re.compile(rb"""\son[a-z]+\s*=\s*(?:"([^"]*)"|'([^']*)')""", re.IGNORECASE)

_PAGE_POLICY = ("default-src 'self'; script-src 'self' 'nonce-{nonce}' 'unsafe-eval'{handlers}; "
                "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:; "
                "connect-src 'self' ws: wss:; object-src 'none'; base-uri 'self'; form-action 'self'; "
                "frame-ancestors 'self'")
# anything that is not a page (JSON, downloads, static files): nothing in it may run if a browser opens it
_OTHER_POLICY = "default-src 'none'; frame-ancestors 'none'; sandbox"


def page_policy(nonce: str, handler_hashes: list[str] | tuple[str, ...] = ()) -> str:
    """The Content-Security-Policy of an HTML page whose own script tags carry ``nonce`` and whose own inline
    event handlers (Panel's template: the sidebar and theme buttons) are allowed by their hashes alone."""
    handlers = "".join(f" '{h}'" for h in handler_hashes)
    return _PAGE_POLICY.format(nonce=nonce, handlers=" 'unsafe-hashes'" + handlers if handlers else "")


def handler_hashes(body: bytes) -> list[str]:
    """CSP hashes of the inline event handlers written in a page the server rendered itself."""
    found = {html.unescape(b.decode("utf-8", "replace")) for m in _HANDLER.finditer(body) for b in m.groups() if b}
    return sorted("sha256-" + base64.b64encode(hashlib.sha256(h.encode()).digest()).decode() for h in found)


def add_nonce(body: bytes, nonce: str) -> bytes:
    """``nonce`` on every ``<script`` tag of a page the server itself rendered (Bokeh's and Panel's templates;
    user text never reaches the page's HTML: it arrives later as JSON over the websocket)."""
    return _SCRIPT_TAG.sub(b'<script nonce="' + nonce.encode() + b'"', body)


class SecurityHeaders(tornado.web.OutputTransform):
    """Adds the headers above; for HTML it also puts the per-response nonce on the page's script tags."""

    def transform_first_chunk(self, status_code: int, headers: tornado.httputil.HTTPHeaders, chunk: bytes,
                              finishing: bool) -> tuple[int, tornado.httputil.HTTPHeaders, bytes]:
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("Referrer-Policy", "same-origin")
        if headers.get("Content-Type", "").startswith("text/html"):
            nonce = secrets.token_urlsafe(18)
            chunk = add_nonce(chunk, nonce)
            headers["Content-Security-Policy"] = page_policy(nonce, handler_hashes(chunk))
            headers.setdefault("X-Frame-Options", "SAMEORIGIN")
            if "Content-Length" in headers:
                headers["Content-Length"] = str(len(chunk))
        elif status_code != 101:  # not the websocket's upgrade
            headers.setdefault("Content-Security-Policy", _OTHER_POLICY)
        return status_code, headers, chunk


_installed = False


def install() -> None:
    """Make every Bokeh server application built in this process add ``SecurityHeaders`` first."""
    global _installed
    if _installed:
        return
    from bokeh.server.tornado import BokehTornado

    original = BokehTornado.__init__

    def __init__(self: BokehTornado, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)
        self.transforms.insert(0, SecurityHeaders)  # before any compression: it reads the page as written

    BokehTornado.__init__ = __init__
    _installed = True
