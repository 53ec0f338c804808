"""What the whole server enforces before any handler runs: the ``Host`` of every HTTP request, and, at start, a
dashboard login whenever users are configured.

Host (DNS rebinding). A page on ``evil.example`` can have its name re-resolved to this server's address; the
visitor's browser then treats this server as ``evil.example`` itself: same origin, so the page reads every answer
and its requests carry ``Origin: http://evil.example:5006`` that matches their own ``Host`` header, which is how
app/cross_site.py tells this server's own pages apart. The one thing that gives it away is that ``Host`` header,
so every HTTP request (dashboard pages, static files, the REST API, the websocket's upgrade) whose ``Host`` is not
an allowed host answers 403 before any handler sees it. The allowed hosts are the list the dashboard's websocket
already uses, read from the running Bokeh server (``--allow-websocket-origin``; ``make serve`` passes
``HELICAL_PLATFORM_ALLOW_ORIGIN``; Bokeh's default is ``localhost:<port>``), matched as Bokeh matches it
(``host[:port]``, port 80 when none is given). ``localhost``, ``127.0.0.1`` and ``[::1]`` on the port the request
arrived at are always allowed: a rebinding page's requests carry its own name, never these, and local probes
(the Docker image's health check) keep working whatever the list.

Login. With users configured (``HELICAL_PLATFORM_TOKENS`` or ``HELICAL_PLATFORM_ADMINS``), a dashboard without
Panel's login would let anyone in as one anonymous user while the API asks for tokens, so the server refuses to
start and says how to add ``--basic-auth`` or OAuth.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import tornado.httputil
import tornado.web

from app.settings import Settings, SettingsError
from app.users import multi_user

log = logging.getLogger(__name__)

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
ALLOW_VARIABLE = "HELICAL_PLATFORM_ALLOW_ORIGIN"


def host_allowed(host: str, allowed: Iterable[str], local_port: int | None = None) -> bool:
    """Whether a request's ``Host`` header names this server: in ``allowed`` (Bokeh's websocket list and its
    matching, wildcards included), or a loopback name with the port the request arrived at."""
    from bokeh.server.util import check_allowlist

    host = host.strip().lower()
    if not host or any(c in host for c in "/@ \t\\"):
        return False
    if local_port is not None and host in {f"{name}:{local_port}" for name in LOOPBACK_NAMES}:
        return True
    if local_port == 80 and host in LOOPBACK_NAMES:
        return True
    return check_allowlist(host, [a.lower() for a in allowed])


def host_refusal_message(host: str) -> str:
    """The answer to a request for an unknown host: what happened and how to allow the name if it is ours."""
    shown = host.strip()[:200] or "(none)"
    return (f"Refused: this server does not answer to the host {shown!r} (the request's Host header), which is not "
            f"one of its allowed hosts; a page on another name that resolves here (DNS rebinding) is refused so. If "
            f"this server is meant to be reached as {shown!r}, add it to {ALLOW_VARIABLE} (comma-separated host or "
            f"host:port, e.g. {ALLOW_VARIABLE}=localhost:5006,lab.example.org make serve; it becomes panel serve's "
            "--allow-websocket-origin) and restart the server.")


@tornado.web.stream_request_body  # a refused upload is never buffered: answered at its headers, body dropped
class HostRefused(tornado.web.RequestHandler):
    """403 for any method and path, JSON under /api (the API's error shape), plain text elsewhere."""

    def prepare(self) -> None:
        message = host_refusal_message(self.request.host)
        self.set_status(403)
        if self.request.path.startswith("/api/"):
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"error": {"code": "unknown_host", "message": message,
                                              "details": {"host": self.request.host[:200]}}}))
        else:
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish(message + "\n")

    def data_received(self, chunk: bytes) -> None:
        pass


def _local_port(request: tornado.httputil.HTTPServerRequest) -> int | None:
    try:
        return int(request.connection.stream.socket.getsockname()[1])  # type: ignore[union-attr]
    except (AttributeError, OSError, IndexError, TypeError, ValueError):
        return None


def dashboard_login(application: tornado.web.Application) -> bool:
    """Whether the dashboard asks for a login (Panel's ``--basic-auth`` or an OAuth provider, not optional)."""
    provider = getattr(application, "auth_provider", None)
    if provider is None or not (provider.get_user or provider.get_user_async):
        return False
    import panel as pn

    return not pn.config.oauth_optional


def _check_login(has_login: bool) -> None:
    try:
        refusal = login_refusal(Settings.from_env(), has_login)
    except SettingsError as exc:
        raise SystemExit(f"Not starting: {exc}") from None
    if refusal is not None:
        raise SystemExit(refusal)


def _panel_serve_login() -> bool | None:
    """Under ``panel serve``: whether a login is configured (its ``--basic-auth``/``--oauth-provider`` options, or
    Panel's ``PANEL_BASIC_AUTH``/``PANEL_OAUTH_PROVIDER`` variables); None in any other process. Read from the
    command line because ``--warm`` runs the app script before Panel has applied those options (``sys.orig_argv``:
    Bokeh replaces ``sys.argv`` while it runs the script)."""
    argv = list(getattr(sys, "orig_argv", sys.argv))
    starts = [i for i, a in enumerate(argv[:-1]) if Path(a).name == "panel" and argv[i + 1] == "serve"]
    if not starts:
        return None
    options = argv[starts[0] + 2:]
    import panel as pn

    given = any(a.split("=", 1)[0] in ("--basic-auth", "--oauth-provider") for a in options)
    optional = "--oauth-optional" in options or pn.config.oauth_optional
    return (given or bool(pn.config.basic_auth or pn.config.oauth_provider)) and not optional


def refuse_start_without_login() -> None:
    """Under ``panel serve``: stop the process, saying how to add a login, when users are configured without
    one (panel_serve.py calls it before the platform starts its cluster; app.rest again when Panel imports it)."""
    if (login := _panel_serve_login()) is not None:
        _check_login(login)
        options = _serve_options()
        try:
            settings = Settings.from_env()
        except SettingsError as exc:
            raise SystemExit(f"Not starting: {exc}") from None
        if (why := basic_auth_refusal(settings, _option(options, "--basic-auth")
                                      or os.environ.get("PANEL_BASIC_AUTH"))) is not None:
            raise SystemExit(why)
        if not login and settings.api_token:
            log.warning("HELICAL_PLATFORM_API_TOKEN guards the REST API but the dashboard on %s has no login: every "
                        "account on this host can use the dashboard, and through it all the token guards. On a "
                        "shared host, give it a login (README, Lab server).", settings.address)
        for secret in ("--cookie-secret", "--oauth-secret"):
            if _option(options, secret):
                log.warning("%s is on the command line, where every account on this host reads it (ps, "
                            "/proc/<pid>/cmdline) and can forge a login with it: give it as the environment "
                            "variable PANEL_%s instead.", secret, secret[2:].upper().replace("-", "_"))


def _serve_options() -> list[str]:
    argv = list(getattr(sys, "orig_argv", sys.argv))
    starts = [i for i, a in enumerate(argv[:-1]) if Path(a).name == "panel" and argv[i + 1] == "serve"]
    return argv[starts[0] + 2:] if starts else []


def _option(options: list[str], name: str) -> str | None:
    for i, a in enumerate(options):
        if a == name and i + 1 < len(options):
            return options[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def basic_auth_refusal(settings: Settings, basic_auth: str | None) -> str | None:
    """Why Panel's basic auth as given does not tell users apart: ``--basic-auth`` with one password (not a file
    of users) lets anyone sign in under any name, an admin's too."""
    if not basic_auth or not multi_user(settings) or Path(basic_auth).is_file():
        return None
    return ("Not starting: --basic-auth is given one password, not a file of users, so anyone holding it may sign "
            "in under any name, an admin's too; with users configured (HELICAL_PLATFORM_TOKENS or "
            "HELICAL_PLATFORM_ADMINS) give it a JSON file of {\"user\": \"password\"} with the same names, "
            "--basic-auth users.json (README, Lab server).")


def login_refusal(settings: Settings, has_login: bool) -> str | None:
    """Why the server must not start: users are configured for the API but the dashboard has no login; or the
    shared API token guards the API of a server listening beyond this machine while its dashboard, which can do
    all the API can, is open (on loopback only local accounts reach it, and the Host check keeps pages out)."""
    if has_login:
        return None
    if not multi_user(settings):
        if settings.api_token and not _loopback(settings.address):
            return (f"Not starting: HELICAL_PLATFORM_API_TOKEN guards the REST API, but the dashboard, listening on "
                    f"{settings.address}, has no login, and anyone who reaches it could do all the token guards. "
                    "Give it one: PANEL_COOKIE_SECRET=$(openssl rand -hex 32) make serve SERVE_ARGS=\"--basic-auth "
                    "users.json\" or an OAuth/OIDC provider (README, Lab server); or serve on localhost "
                    "(HELICAL_PLATFORM_ADDRESS=localhost).")
        return None
    which = " and ".join(v for v, on in (("HELICAL_PLATFORM_TOKENS", settings.tokens_file is not None),
                                         ("HELICAL_PLATFORM_ADMINS", bool(settings.admins))) if on)
    return (f"Not starting: {which} configures users, so the REST API asks who calls, but the dashboard has no "
            "login and would let anyone in as one anonymous user. Give it one: basic auth with a JSON file of "
            "{\"user\": \"password\"} and a random cookie secret in the environment (not on the command line, "
            "where every local account reads it), PANEL_COOKIE_SECRET=$(openssl rand -hex 32) make serve "
            "SERVE_ARGS=\"--basic-auth users.json\" (use the same user names as the tokens file), or an "
            "OAuth/OIDC provider, SERVE_ARGS=\"--oauth-provider generic --oauth-key <client id>\" with "
            "PANEL_OAUTH_SECRET and PANEL_COOKIE_SECRET set (README, Lab server); or, for a single-user server, unset "
            f"{which}.")


def _loopback(address: str) -> bool:
    if address.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: whatever it resolves to, not this machine alone


_installed = False


BUFFERED_BODY_BYTES = 2 * 2**20  # a body read whole before its handler runs: JSON (1 MB at most) and framing
BUFFERED_BODY_S = 60  # ... and the time it may take to arrive


def limit_body(request: tornado.httputil.HTTPServerRequest, handler_class: type) -> None:
    """Bound what Tornado buffers for a handler that reads its body whole: by default 100 MB with no time limit,
    read before the handler (and its check of who calls) runs, so that many slow or large bodies from anyone held
    the server's memory and connections. A handler may say more (``max_body_bytes``, ``body_timeout_s``: the
    annotator import); a streamed one (the upload) limits itself: its size, quota and idle timeout."""
    if getattr(handler_class, "_stream_request_body", False):
        return
    connection = request.connection
    if hasattr(connection, "set_max_body_size"):
        connection.set_max_body_size(int(getattr(handler_class, "max_body_bytes", BUFFERED_BODY_BYTES)))
        connection.set_body_timeout(float(getattr(handler_class, "body_timeout_s", BUFFERED_BODY_S)))


def install() -> None:
    """Make every Bokeh server built in this process refuse unknown hosts, and refuse to start without a login
    when users are configured (called by app.rest, the ``--plugins`` module, before the server is built)."""
    global _installed
    if _installed:
        return
    refuse_start_without_login()
    from bokeh.server.tornado import BokehTornado

    original_init = BokehTornado.__init__
    original_find = BokehTornado.find_handler

    def __init__(self: BokehTornado, *args: object, **kwargs: object) -> None:
        original_init(self, *args, **kwargs)
        _check_login(dashboard_login(self))  # any Bokeh server of this process (e.g. one started by pn.serve)

    def find_handler(self: BokehTornado, request: tornado.httputil.HTTPServerRequest,
                     **kwargs: object) -> tornado.web._HandlerDelegate:
        if not host_allowed(request.host, self.websocket_origins, _local_port(request)):
            return self.get_handler_delegate(request, HostRefused)
        delegate = original_find(self, request, **kwargs)
        limit_body(request, delegate.handler_class)
        return delegate

    BokehTornado.__init__ = __init__
    BokehTornado.find_handler = find_handler
    _installed = True
