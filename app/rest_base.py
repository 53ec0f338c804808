"""What every REST handler shares: the JSON error contract, the service exceptions as status codes, access
(bearer token, login cookie, the cross-site rule) and running slow calls off the event loop."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import re
import sys
from functools import partial
from pathlib import Path

import numpy as np
import tornado.web

from app.annotators import AnnotatorFileError, AnnotatorInUse, Conflict
from app.cross_site import cross_site_refusal, is_json
from app.datasets import DatasetInUse, DatasetRejected, NotFound
from app.lifecycle import QuotaExceeded, RunInUse
from app.loopwatch import WATCH
from app.platform import Platform
from app.runs import InvalidRun, ModelCannotUse, RunNotFinished
from app.server_access import dashboard_login
from app.users import ANONYMOUS, Forbidden, User, token_user, user
from inference.annotator_file import json_depth
from store.artifacts import InvalidIdError, UploadTooLargeError

log = logging.getLogger(__name__)
MAX_JSON_BODY = 1 << 20  # the API's JSON requests are a few hundred bytes; an ontology map of 10,000 labels fits
MAX_JSON_DEPTH = 32  # the deepest request (submit's options, an ontology map) nests 2 levels


def _default(obj: object) -> object:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (dt.datetime, dt.date)):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: object = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


def translate(exc: BaseException) -> ApiError:
    """The service's exceptions, as the contract's status codes."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, InvalidIdError):
        return ApiError(400, "invalid_id", str(exc))
    if isinstance(exc, NotFound):
        return ApiError(404, "not_found", str(exc))
    if isinstance(exc, Forbidden):
        return ApiError(403, "forbidden", str(exc))
    if isinstance(exc, RunNotFinished):
        return ApiError(409, "not_finished", str(exc))
    if isinstance(exc, UploadTooLargeError):
        return ApiError(413, "too_large", str(exc))
    if isinstance(exc, QuotaExceeded):
        return ApiError(413, "over_quota", str(exc))
    if isinstance(exc, DatasetRejected):
        if exc.unreadable:
            return ApiError(415, "unreadable_file", str(exc), exc.report)
        return ApiError(400, "invalid_file", str(exc), exc.report)
    if isinstance(exc, Conflict):
        return ApiError(409, "conflict", str(exc))
    if isinstance(exc, (AnnotatorInUse, DatasetInUse, RunInUse)):
        return ApiError(409, "in_use", str(exc))
    if isinstance(exc, AnnotatorFileError):
        return ApiError(400, "invalid_annotator", str(exc))
    if isinstance(exc, ModelCannotUse):
        return ApiError(422, "model_cannot_use", str(exc))
    if isinstance(exc, (InvalidRun, ValueError)):
        return ApiError(400, "invalid_request", str(exc))
    return ApiError(500, "internal", "Something went wrong on the server; the error is in its log.")


def platform() -> Platform:
    return Platform.shared()


class ApiHandler(tornado.web.RequestHandler):
    user: User | None = None  # who calls (app/users.py), set by ``authorize``

    def prepare(self) -> None:
        WATCH.start()
        self.authorize()

    def authorize(self) -> None:
        """A bearer token when ``HELICAL_PLATFORM_API_TOKEN`` is set; or the dashboard's own login cookie.

        Anything but the token (the login cookie, or no credentials on an open server) is what another site's page
        can make a browser send, so state-changing calls must then come from this server's own pages
        (app/cross_site.py): checked first, so that such a call is refused whatever it carries.
        """
        settings = platform().settings
        header = self.request.headers.get("Authorization", "")
        if header.startswith("Bearer ") and (by_token := token_user(settings, header[7:].strip())) is not None:
            self.user = by_token
            return  # no other site's page can hold the token
        refusal = cross_site_refusal(self.request.method, self.request.headers, self.request.protocol,
                                     self.request.host, settings.allowed_origins)
        if refusal is not None:
            raise ApiError(403, "cross_origin", refusal.message, refusal.details)
        login = self.login_name()
        if login:  # logged in to the dashboard through Panel's authentication
            self.user = user(settings, login)
            return
        if not settings.api_token and settings.tokens_file is None and not dashboard_login(self.application):
            self.user = user(settings, ANONYMOUS)  # an open server: no token, no tokens file, no dashboard login
            return
        raise ApiError(401, "unauthorized", "Send 'Authorization: Bearer <token>' (HELICAL_PLATFORM_API_TOKEN, or "
                       "your own from HELICAL_PLATFORM_TOKENS), or sign in to the dashboard first (its login "
                       "cookie is accepted).")

    def login_name(self) -> str:
        """The user Panel's authentication (basic auth, OAuth/OIDC) logged in, or ''."""
        if not self.application.settings.get("cookie_secret"):
            return ""
        # no older than the login's lifetime as Panel set it (its oauth_expiry, 1 day by default; app imports no
        # Panel, so it is read from the Panel this server runs): Tornado's default accepts a 31-day-old cookie
        config = getattr(sys.modules.get("panel"), "config", None)
        raw = self.get_secure_cookie("user", max_age_days=float(getattr(config, "oauth_expiry", 1) or 1))
        return raw.decode(errors="replace").strip('"') if raw else ""

    def mine(self) -> str | None:
        """``?mine=true``: the caller's name, to list only what they made; else None (everyone's)."""
        value = self.get_query_argument("mine", "false")
        if value not in ("true", "false"):
            raise ApiError(400, "invalid_request", "mine must be true or false.")
        return self.user.name if value == "true" and self.user is not None else None

    def send(self, obj: object, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(obj, default=_default))

    def send_error_json(self, err: ApiError) -> None:
        if err.status == 500:
            log.error("API error on %s %s", self.request.method, self.request.path)
        self.send({"error": {"code": err.code, "message": err.message, "details": err.details}}, err.status)

    def write_error(self, status_code: int, **kwargs: object) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, tornado.web.HTTPError):
            err = ApiError(status_code, "http_error", exc.log_message or self._reason)
        else:
            err = translate(exc) if exc else ApiError(status_code, "http_error", self._reason)
            if err.status == 500 and exc is not None:
                log.error("API error", exc_info=kwargs.get("exc_info"))
        self.send_error_json(err)

    def _handle_request_exception(self, e: BaseException) -> None:  # one place for every handler's errors
        if isinstance(e, tornado.web.Finish) or self._finished:
            return super()._handle_request_exception(e)
        if isinstance(e, tornado.web.HTTPError):  # e.g. 405 for a method no route answers
            code = {405: "method_not_allowed", 404: "not_found"}.get(e.status_code, "http_error")
            self.send_error_json(ApiError(e.status_code, code, e.log_message or self._reason or code))
            return
        err = translate(e)
        if err.status == 500:
            log.exception("API error on %s %s", self.request.method, self.request.path)
        self.send_error_json(err)

    async def call(self, fn, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201
        return await asyncio.get_running_loop().run_in_executor(None, partial(fn, *args, **kwargs))

    def body_json(self) -> dict:
        """The body as a JSON object; only sent as application/json, which no other site's form can send."""
        ctype = self.request.headers.get("Content-Type")
        if not is_json(ctype):
            raise ApiError(415, "unsupported_media_type", "Send the body as JSON with 'Content-Type: "
                           "application/json'.", {"content_type": ctype})
        body = self.request.body or b"{}"
        if len(body) > MAX_JSON_BODY:
            raise ApiError(413, "too_large", f"A JSON body is at most {MAX_JSON_BODY:,} bytes; this one is "
                           f"{len(body):,}. Files go to their own endpoints (e.g. /api/upload).")
        try:
            data = json.loads(body)
        except RecursionError:  # the parser recurses once per level: [[[[…]]]] 100,000 deep exhausts it
            raise ApiError(400, "invalid_json", f"The body nests lists or objects too deeply; at most "
                           f"{MAX_JSON_DEPTH} levels are read.") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, "invalid_json", f"The body is not JSON: {exc}.") from None
        if json_depth(data, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:  # parsed, but code that walks it may recurse too
            raise ApiError(400, "invalid_json", f"The body nests lists or objects more than {MAX_JSON_DEPTH} "
                           "levels deep; no request of this API needs that.")
        if not isinstance(data, dict):
            raise ApiError(400, "invalid_json", "The body must be a JSON object.")
        return data


def attachment(file_name: str) -> str:
    """A Content-Disposition that always downloads, with a name no browser or shell misreads: characters
    outside ``[A-Za-z0-9._-]`` become ``_`` (the RFC 5987 ``filename*`` keeps the name as given, encoded)."""
    from urllib.parse import quote

    safe = re.sub(r"[^A-Za-z0-9._-]", "_", file_name).lstrip(".") or "download"
    return f"attachment; filename=\"{safe}\"; filename*=UTF-8''{quote(file_name, safe='')}"
