"""Refusing what other web sites make a user's browser send here (cross-site request forgery).

A page on any site can make a visitor's browser POST to this server: a plain HTML form (``multipart/form-data``,
``text/plain`` or url-encoded) or a ``fetch`` with such a "simple" content type needs no CORS preflight, and the
browser attaches the dashboard's login cookie when its SameSite rules allow it. A server on ``localhost`` without
authentication needs no cookie at all. The one thing such a page cannot choose is the ``Origin`` header the browser
adds (or the ``Referer`` where an older browser sends no ``Origin``). So:

- a state-changing call whose ``Origin``/``Referer`` is not the server's own origin, nor one listed in
  ``HELICAL_PLATFORM_ALLOWED_ORIGINS``, is refused (:func:`cross_site_refusal`); calls with neither header come
  from scripts (curl, requests, the Python client), not from a page, and pass;
- JSON endpoints take only ``application/json`` (:func:`is_json`): a form cannot send it, and a foreign page's
  ``fetch`` can only after a CORS preflight, which this server never grants.

The server's own origin is the scheme and ``Host`` header of the request itself: behind a reverse proxy, the proxy
must pass the ``Host`` header through, and the scheme is the proxy's only with ``panel serve --use-xheaders``
(Tornado then takes it from ``X-Forwarded-Proto``/``X-Scheme``; Tornado never reads ``X-Forwarded-Host``).

Also here: the login cookie's SameSite and Secure attributes (:func:`harden_cookies`), which Panel never sets.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import NamedTuple
from urllib.parse import urlsplit

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DEFAULT_PORTS = {"http": 80, "https": 443}
ALLOWED_ORIGINS_VARIABLE = "HELICAL_PLATFORM_ALLOWED_ORIGINS"


class Origin(NamedTuple):
    """scheme, host, port: what browsers compare to tell one origin from another (``Origin`` omits default ports)."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = DEFAULT_PORTS.get(self.scheme) == self.port
        return f"{self.scheme}://{host}" if default else f"{self.scheme}://{host}:{self.port}"


def parse_origin(text: str, strict: bool = False) -> Origin | None:
    """``'https://Lab.example.org'`` -> ``Origin('https', 'lab.example.org', 443)``; None for anything else.

    ``Origin: null`` (sandboxed frames, ``file:`` pages, some redirects) and non-http schemes give None, which the
    check treats as foreign. With ``strict`` (the setting), a path, query, user or anything past the port is an
    error rather than ignored, so that a typo in the setting is named instead of silently allowing a URL's origin.
    """
    text = text.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        if strict:
            raise ValueError(f"{text!r} is not an origin (scheme://host[:port]).") from None
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        if strict:
            raise ValueError(f"{text!r} is not an origin: give scheme://host[:port], e.g. https://lab.example.org.")
        return None
    if strict and (parts.path not in ("", "/") or parts.query or parts.fragment or parts.username):
        raise ValueError(f"{text!r} is not an origin: give only scheme://host[:port], without a path.")
    return Origin(scheme, parts.hostname.lower(), port or DEFAULT_PORTS[scheme])


def parse_allowed_origins(value: str | None) -> tuple[Origin, ...]:
    """The setting: comma-separated origins. ``*`` is refused: the point of the list is to be explicit."""
    out: list[Origin] = []
    for item in (value or "").split(","):
        if not item.strip():
            continue
        if item.strip() == "*":
            raise ValueError("give the origins one by one: '*' would let every site in.")
        origin = parse_origin(item, strict=True)
        assert origin is not None  # strict parsing raises instead
        out.append(origin)
    return tuple(out)


def own_origin(protocol: str, host: str) -> Origin | None:
    """The origin this request was sent to: its scheme (``X-Forwarded-Proto`` with xheaders) and ``Host`` header."""
    return parse_origin(f"{protocol}://{host}") if host else None


def claimed_origin(headers: Mapping[str, str]) -> tuple[str, Origin | None] | None:
    """Which header names the page that sent the request, and the origin in it; None when neither is sent."""
    origin = headers.get("Origin")
    if origin is not None and origin.strip():
        return "Origin", parse_origin(origin)
    referer = headers.get("Referer")
    if referer is not None and referer.strip():
        return "Referer", parse_origin(referer)
    return None


class Refusal(NamedTuple):
    """A request refused as sent by another site's page: the JSON error's message and details."""

    message: str
    details: dict[str, str]


def cross_site_refusal(method: str, headers: Mapping[str, str], protocol: str, host: str,
                       allowed: Iterable[Origin] = ()) -> Refusal | None:
    """Why a request must be refused as sent by another site's page, or None when it may go on.

    Only state-changing methods are checked: reading changes nothing, and a foreign page cannot read the answer
    (this server sends no CORS headers), so links such as the dashboard's signed downloads keep working.
    """
    if method.upper() not in STATE_CHANGING:
        return None
    claimed = claimed_origin(headers)
    if claimed is None:
        return None  # not sent by a page: curl, scripts, the Python client
    header, origin = claimed
    own = own_origin(protocol, host)
    if origin is not None and (origin == own or origin in set(allowed)):
        return None
    said = str(origin) if origin is not None else headers.get(header, "").strip()[:200]
    message = (f"Refused: this {method.upper()} comes from a page at {said} ({header} header), not from this "
               f"server ({own or 'unknown'}): another site cannot change data here through a user's browser. "
               f"For a separate front end, list its origin in {ALLOWED_ORIGINS_VARIABLE} (comma-separated, e.g. "
               "https://lab.example.org:8443); a script can send no Origin header, or authenticate with "
               "'Authorization: Bearer <token>' (HELICAL_PLATFORM_API_TOKEN).")
    return Refusal(message, {"header": header, "origin": said, "server_origin": str(own or "")})


def is_json(content_type: str | None) -> bool:
    """``application/json``, with or without parameters such as ``; charset=utf-8``.

    Insisting on it is what keeps a JSON endpoint out of a foreign page's reach: HTML forms can only send
    url-encoded, multipart or ``text/plain`` bodies, and ``fetch`` needs a CORS preflight for anything else.
    """
    return (content_type or "").split(";", 1)[0].strip().lower() == "application/json"


# Cookies. Panel's login (``--basic-auth``, OAuth) sets ``user`` and ``id_token`` HttpOnly but with no SameSite
# and never Secure, and Panel, Bokeh and Tornado offer no setting for either (Panel's cookie options are
# ``--cookie-secret``, ``--cookie-path`` and ``--oauth-expiry``). Every cookie goes through Tornado's
# ``RequestHandler.set_cookie`` (``set_secure_cookie`` and ``clear_cookie`` call it), and its ``Set-Cookie``
# header is written after any output transform has run, so that one method is where all of them can be amended.
LOGIN_COOKIES = frozenset({"user", "id_token", "access_token", "refresh_token", "oauth_expiry", "is_guest",
                           "next_url", "panel-oauth-state", "panel-oauth-code"})
SAMESITE = "Lax"


def cookie_attributes(name: str, https: bool, given: Mapping[str, object]) -> dict[str, object]:
    """What to add to a cookie about to be set: attributes its caller left out, never overriding one it gave.

    SameSite=Lax: the browser leaves the cookie off requests other sites start, except top-level GET
    navigations, so a link into the dashboard from elsewhere still finds the user logged in (Strict would not), and
    Panel's OAuth state cookies still come back with the provider's redirect (a top-level GET).
    Secure over HTTPS (as the request arrived, or ``X-Forwarded-Proto`` with ``--use-xheaders``): the login never
    travels in clear. HttpOnly for Panel's login cookies only: page scripts have no use for them, while Bokeh's
    ``_xsrf`` cookie (``--enable-xsrf-cookies``) must stay readable by its client.
    """
    extra: dict[str, object] = {}
    if not given.get("samesite"):
        extra["samesite"] = SAMESITE
    if https and not given.get("secure"):
        extra["secure"] = True
    if name in LOGIN_COOKIES and not given.get("httponly"):
        extra["httponly"] = True
    return extra


def harden_cookies() -> None:
    """Make every cookie this server sets carry :func:`cookie_attributes` (idempotent; called by app.rest)."""
    import tornado.web

    original = tornado.web.RequestHandler.set_cookie
    if getattr(original, "hardened", False):
        return

    @functools.wraps(original)
    def set_cookie(self: tornado.web.RequestHandler, name: str, value: str | bytes, *args: object,
                   **kwargs: object) -> None:
        kwargs.update(cookie_attributes(name, self.request.protocol == "https", kwargs))
        original(self, name, value, *args, **kwargs)

    set_cookie.hardened = True  # type: ignore[attr-defined]
    tornado.web.RequestHandler.set_cookie = set_cookie  # type: ignore[method-assign]
