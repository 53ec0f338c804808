"""``POST /api/upload``: the body streams to a temporary file (raw bytes or one multipart file field)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import tornado.web

from app.rest_base import ApiError, ApiHandler, platform
from app.rest_json import dataset_json
from store.artifacts import PARTIAL_PREFIX, UploadTooLargeError, validate_file_name


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
                ds = await self.call(platform().datasets.ingest, fh, self.file_name, user=self.user)
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
