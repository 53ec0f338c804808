"""The REST API, served by the same Tornado server as the dashboard (``panel serve --plugins app.rest``).

Every handler calls the same services as the dashboard; slow calls run in a thread, never on the event loop.
Errors are JSON ``{"error": {"code", "message", "details"}}`` with 400/401/403/404/409/413/415/422, never a stack
trace. State-changing calls from another site's page are refused (403, app/cross_site.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import json
import logging
import os
import re
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import tornado.web

from app import security_headers
from app.cross_site import cross_site_refusal, harden_cookies, is_json
from app.datasets import DatasetRejected, NotFound
from app.downloads import download_signature
from app.loopwatch import WATCH
from app.platform import Platform
from app.runs import InvalidRun, ModelCannotUse, RunNotFinished
from store.artifacts import PARTIAL_PREFIX, InvalidIdError, UploadTooLargeError, validate_file_name

log = logging.getLogger(__name__)
CHUNK = 1 << 20
security_headers.install()  # this module is the server's --plugins module: imported before the server starts
harden_cookies()  # SameSite, Secure over HTTPS, HttpOnly on the login cookie (Panel sets none of the first two)


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
    if isinstance(exc, RunNotFinished):
        return ApiError(409, "not_finished", str(exc))
    if isinstance(exc, UploadTooLargeError):
        return ApiError(413, "too_large", str(exc))
    if isinstance(exc, DatasetRejected):
        if exc.unreadable:
            return ApiError(415, "unreadable_file", str(exc), exc.report)
        return ApiError(400, "invalid_file", str(exc), exc.report)
    if isinstance(exc, ModelCannotUse):
        return ApiError(422, "model_cannot_use", str(exc))
    if isinstance(exc, (InvalidRun, ValueError)):
        return ApiError(400, "invalid_request", str(exc))
    return ApiError(500, "internal", "Something went wrong on the server; the error is in its log.")


def platform() -> Platform:
    return Platform.shared()


class ApiHandler(tornado.web.RequestHandler):
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
        token = settings.api_token
        header = self.request.headers.get("Authorization", "")
        if token and header.startswith("Bearer ") and hmac.compare_digest(header[7:].strip(), token):
            return  # no other site's page can hold the token
        refusal = cross_site_refusal(self.request.method, self.request.headers, self.request.protocol,
                                     self.request.host, settings.allowed_origins)
        if refusal is not None:
            raise ApiError(403, "cross_origin", refusal.message, refusal.details)
        if not token:
            return
        if self.application.settings.get("cookie_secret") and self.get_secure_cookie("user"):
            return  # logged in to the dashboard through Panel's authentication
        raise ApiError(401, "unauthorized", "Send 'Authorization: Bearer <token>' (HELICAL_PLATFORM_API_TOKEN).")

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
        try:
            data = json.loads(self.request.body or b"{}")
        except json.JSONDecodeError as exc:
            raise ApiError(400, "invalid_json", f"The body is not JSON: {exc}.") from None
        if not isinstance(data, dict):
            raise ApiError(400, "invalid_json", "The body must be a JSON object.")
        return data


def application_json(a) -> dict:  # noqa: ANN001
    return {"id": a.id, "name": a.name, "description": a.description}


def model_json(m, device: str) -> dict:  # noqa: ANN001
    return {"id": m.id, "name": m.name, "speed": m.speed, "accuracy": m.accuracy,
            "accuracy_source": m.accuracy_source, "description": m.description, "applications": m.applications,
            "weights": m.weights_status, "weights_detail": m.weights_detail,
            "untrained": m.weights_status == "generated", "variant": m.variant, "device": device}


def dataset_json(d) -> dict:  # noqa: ANN001
    return {"dataset_id": d.id, "file_name": d.file_name, "sha256": d.sha256, "size_bytes": d.size_bytes,
            "n_cells": d.n_cells, "n_genes": d.n_genes, "created_at": d.created_at, "check": d.check_report}


def run_json(r) -> dict:  # noqa: ANN001
    return {"run_id": r.id, "status": r.status, "application": r.application_id, "model": r.model_id,
            "dataset": r.dataset_id, "reference": r.reference_dataset_id, "label_column": r.label_column,
            "truth_column": r.truth_column, "stage": r.stage, "progress": r.progress, "error": r.error,
            "created_at": r.created_at, "started_at": r.started_at, "finished_at": r.finished_at,
            "macro_f1": r.metrics.get("macro_f1"), "parameters": r.parameters}


def _device() -> str:
    p = platform()
    status = p.compute_status()
    return "cuda" if status.get("gpus") and p.settings.device != "cpu" else "cpu"


class ApplicationsHandler(ApiHandler):
    async def get(self) -> None:
        self.send([application_json(a) for a in await self.call(platform().applications)])


class ModelsHandler(ApiHandler):
    async def get(self, application_id: str | None = None) -> None:
        p = platform()
        if application_id is not None and application_id not in {a.id for a in await self.call(p.applications)}:
            raise ApiError(404, "not_found", f"No application {application_id!r}.")
        device = await self.call(_device)
        self.send([model_json(m, device) for m in await self.call(p.models, application_id)])


class DatasetsHandler(ApiHandler):
    async def get(self) -> None:
        self.send([dataset_json(d) for d in await self.call(platform().datasets.list)])


@tornado.web.stream_request_body
class UploadHandler(ApiHandler):
    """The body streams to a temporary file (raw bytes, or one multipart file field): never whole in memory."""

    def prepare(self) -> None:
        self.failure: Exception | None = None
        self.out = self.tmp_path = None
        try:
            super().prepare()
        except ApiError as exc:
            if exc.status not in (401, 403):
                raise
            # Refused for who sent it (no credentials, or another site's page): nothing is opened or written, and
            # the body is read and dropped before the answer. Answering mid-body makes Tornado close the connection
            # on unread bytes, and the reset loses the answer: the client, a browser's form too, would see a broken
            # connection instead of why. Past Tornado's default body limit (100 MB) it drops the connection anyway.
            self.failure = exc
            return
        p = platform()
        self.limit = p.settings.max_upload_mb * 2**20
        # room for multipart framing; past it Tornado drops the connection (an endless body gets no answer)
        slack = 16 * 2**20
        self.request.connection.set_max_body_size(self.limit + slack)
        length = int(self.request.headers.get("Content-Length") or 0)
        if length > self.limit + slack:
            raise UploadTooLargeError(self.limit)
        ctype = self.request.headers.get("Content-Type", "")
        self.file_name = self.get_query_argument("filename", None)
        self.received = 0
        fd, name = tempfile.mkstemp(prefix=PARTIAL_PREFIX + "upload-", dir=p.artifacts.home / "tmp")
        self.tmp_path = Path(name)
        self.out = os.fdopen(fd, "wb")
        self.parser = None
        if ctype.startswith("multipart/form-data"):
            from python_multipart.multipart import MultipartParser, parse_options_header

            _, params = parse_options_header(ctype)
            boundary = params.get(b"boundary")
            if not boundary:
                raise ApiError(400, "invalid_request", "multipart body without a boundary.")
            self._in_file = False
            self._part_header_name = b""
            self._part_headers: dict[bytes, bytes] = {}
            self.parser = MultipartParser(boundary, callbacks={
                "on_part_begin": self._part_begin, "on_part_data": self._part_data,
                "on_header_field": self._header_name, "on_header_value": self._header_value,
                "on_headers_finished": self._headers_done})
        elif not self.file_name:
            raise ApiError(400, "invalid_request", "Give the file name: POST /api/upload?filename=cells.h5ad with "
                                                   "the raw bytes, or a multipart form with a 'file' field.")

    def _part_begin(self) -> None:
        self._part_headers, self._in_file = {}, False

    def _header_name(self, data: bytes, start: int, end: int) -> None:
        self._part_header_name = data[start:end].lower()

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        name = self._part_header_name
        self._part_headers[name] = self._part_headers.get(name, b"") + data[start:end]

    def _headers_done(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, params = parse_options_header(self._part_headers.get(b"content-disposition", b""))
        if b"filename" in params and not self.file_name:
            self.file_name = params[b"filename"].decode("utf-8", "replace")
            self._in_file = True

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self._write(data[start:end])

    def _write(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.limit:
            raise UploadTooLargeError(self.limit)
        self.out.write(chunk)

    def data_received(self, chunk: bytes) -> None:
        """Errors are kept and answered once the body is read: raising here would drop the connection."""
        if self.failure is not None:
            return
        try:
            if self.parser is not None:
                self.parser.write(chunk)
            else:
                self._write(chunk)
        except UploadTooLargeError as exc:
            self.failure = exc
        except Exception as exc:  # the multipart parser's own errors
            self.failure = ApiError(400, "invalid_request", f"The multipart body is malformed ({exc}); send the "
                                                            "file as the 'file' field, or as a raw body.")

    async def post(self) -> None:
        if self.out is None:  # refused in prepare; the body was read and dropped
            raise self.failure
        try:
            self.out.close()
            if self.failure is not None:
                raise self.failure
            if not self.file_name:
                raise ApiError(400, "invalid_request", "The multipart body has no file field.")
            validate_file_name(self.file_name)
            with open(self.tmp_path, "rb") as fh:
                ds = await self.call(platform().datasets.ingest, fh, self.file_name)
        finally:
            self.tmp_path.unlink(missing_ok=True)
        self.send({**dataset_json(ds), "report": ds.check_report}, 201)

    def on_finish(self) -> None:
        self._cleanup()

    def on_connection_close(self) -> None:
        self._cleanup()

    def _cleanup(self) -> None:
        out = getattr(self, "out", None)
        if out is not None and not out.closed:
            out.close()
        if getattr(self, "tmp_path", None) is not None:
            self.tmp_path.unlink(missing_ok=True)


class SubmitHandler(ApiHandler):
    async def post(self) -> None:
        body = self.body_json()
        missing = [k for k in ("application", "model", "dataset") if not body.get(k)]
        if missing:
            raise ApiError(400, "invalid_request", f"Missing field(s): {', '.join(missing)}.")
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise ApiError(400, "invalid_request", "options must be an object.")
        for key in ("application", "model", "dataset", "reference", "label_column", "truth_column"):
            if body.get(key) is not None and not isinstance(body[key], str):
                raise ApiError(400, "invalid_request", f"{key} must be a string.")
        run = await self.call(platform().runs.submit, body["application"], body["model"], body["dataset"],
                              body.get("reference"), body.get("label_column"), body.get("truth_column"), options)
        self.send({"run_id": run.id, "status": run.status}, 202)


class StatusHandler(ApiHandler):
    async def get(self, run_id: str) -> None:
        self.send(await self.call(platform().runs.status, run_id))


class CancelHandler(ApiHandler):
    async def post(self, run_id: str) -> None:
        self.send(await self.call(platform().runs.cancel, run_id))


class RunsHandler(ApiHandler):
    async def get(self) -> None:
        self.send([run_json(r) for r in await self.call(platform().runs.list)])


class ResultsHandler(ApiHandler):
    async def get(self, run_id: str) -> None:
        try:
            offset = int(self.get_query_argument("offset", "0"))
            limit = int(self.get_query_argument("limit", "100"))
        except ValueError:
            raise ApiError(400, "invalid_request", "offset and limit must be whole numbers.") from None
        if offset < 0 or not 0 <= limit <= 10_000:
            raise ApiError(400, "invalid_request", "offset must be >= 0 and limit between 0 and 10000.")
        self.send(await self.call(platform().runs.results, run_id, offset, limit))


def attachment(file_name: str) -> str:
    """A Content-Disposition that always downloads, with a name no browser or shell misreads: characters
    outside ``[A-Za-z0-9._-]`` become ``_`` (the RFC 5987 ``filename*`` keeps the name as given, encoded)."""
    from urllib.parse import quote

    safe = re.sub(r"[^A-Za-z0-9._-]", "_", file_name).lstrip(".") or "download"
    return f"attachment; filename=\"{safe}\"; filename*=UTF-8''{quote(file_name, safe='')}"


class DownloadHandler(ApiHandler):
    def authorize(self) -> None:
        sig = self.get_query_argument("sig", None)
        run_id = self.path_args[0] if self.path_args else ""
        fmt = self.get_query_argument("format", "h5ad")
        if sig and hmac.compare_digest(sig, download_signature(platform(), run_id, fmt)):
            return
        super().authorize()

    async def get(self, run_id: str) -> None:
        fmt = self.get_query_argument("format", "h5ad")
        if fmt not in ("h5ad", "csv"):
            raise ApiError(400, "invalid_request", "format must be h5ad or csv.")
        path = await self.call(platform().runs.export, run_id, fmt)
        self.set_header("Content-Type", "text/csv; charset=utf-8" if fmt == "csv" else "application/octet-stream")
        stem = "annotated" if fmt == "h5ad" else "predictions"
        self.set_header("Content-Disposition", attachment(f"{stem}-{run_id[:8]}.{fmt}"))
        self.set_header("Content-Length", str(path.stat().st_size))
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                self.write(chunk)
                await self.flush()
        self.finish()


class HealthHandler(ApiHandler):
    """Public, like a load balancer's probe: is the database answering, the cluster up, the event loop free."""

    def prepare(self) -> None:
        WATCH.start()

    async def get(self) -> None:
        try:
            since = float(self.get_query_argument("since")) if self.get_query_argument("since", None) else None
        except ValueError:
            raise ApiError(400, "invalid_request", "since must be a Unix time in seconds.") from None
        p = platform()
        try:
            await self.call(p.applications)
            database = "ok"
        except Exception as exc:  # reported, not raised: the probe itself must answer
            database = f"error: {type(exc).__name__}"
        cluster = (await self.call(p.compute_status)).get("state")
        ok = database == "ok" and cluster in ("ready", "starting")
        self.send({"status": "ok" if ok else "degraded", "database": database, "cluster": cluster,
                   "event_loop": WATCH.snapshot(since)}, 200 if ok else 503)


class OpenApiHandler(ApiHandler):
    def prepare(self) -> None:  # the contract is public, like the docs page
        pass

    def get(self) -> None:
        from app.openapi import openapi_document

        self.send(openapi_document())


class DocsHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/html")
        self.finish("""<!doctype html><html><head><meta charset="utf-8"><title>Helical AI Platform API</title>
<link rel="stylesheet" href="/api/docs/static/swagger-ui.css"></head><body><div id="swagger-ui"></div>
<script src="/api/docs/static/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({url: "/api/openapi.json", dom_id: "#swagger-ui"});</script>
</body></html>""")


def _swagger_path() -> str:
    import swagger_ui_bundle

    return swagger_ui_bundle.swagger_ui_path


class _LazyStatic(tornado.web.StaticFileHandler):
    @classmethod
    def get_absolute_path(cls, root: str, path: str) -> str:
        return super().get_absolute_path(_swagger_path(), path)

    def validate_absolute_path(self, root: str, absolute_path: str) -> str | None:
        return super().validate_absolute_path(_swagger_path(), absolute_path)


UUID = r"([^/]+)"
ROUTES = [
    (r"/api/applications", ApplicationsHandler, {}),
    (r"/api/applications/([^/]+)/models", ModelsHandler, {}),
    (r"/api/models", ModelsHandler, {}),
    (r"/api/datasets", DatasetsHandler, {}),
    (r"/api/upload", UploadHandler, {}),
    (r"/api/submit", SubmitHandler, {}),
    (rf"/api/status/{UUID}", StatusHandler, {}),
    (rf"/api/results/{UUID}", ResultsHandler, {}),
    (rf"/api/download/{UUID}", DownloadHandler, {}),
    (rf"/api/runs/{UUID}/cancel", CancelHandler, {}),
    (r"/api/runs", RunsHandler, {}),
    (r"/api/health", HealthHandler, {}),
    (r"/api/openapi.json", OpenApiHandler, {}),
    (r"/api/docs/?", DocsHandler, {}),
    (r"/api/docs/static/(.*)", _LazyStatic, {"path": "."}),
]
