"""``POST /api/upload``: the body streams to a temporary file (raw bytes or one multipart file field).

With a quota, the upload's bytes are reserved before its first byte is written (``Content-Length``, or growing as
the body arrives: ``app/lifecycle.py`` QuotaReservation), so uploads at once cannot together pass it. A body that
sends nothing for ``HELICAL_PLATFORM_UPLOAD_IDLE_S`` is answered 408 and its connection, temporary file and
reservation dropped: a client that stalls must not hold them for good.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

import tornado.web
from tornado.ioloop import IOLoop

from app.datasets import run_ingest
from app.lifecycle import RESERVE_STEP, QuotaExceeded, reserve
from app.rest_base import ApiError, ApiHandler, platform
from app.rest_json import dataset_json
from store.artifacts import UploadTooLargeError, partial_prefix, validate_file_name

log = logging.getLogger(__name__)


@tornado.web.stream_request_body
class UploadHandler(ApiHandler):
    """The body streams to a temporary file (raw bytes, or one multipart file field): never whole in memory."""

    async def prepare(self) -> None:
        self.failure: Exception | None = None
        self.out = self.tmp_path = self.reservation = self._idle_timer = None
        self.body_bytes, self._body_done, self._last_byte = 0, False, time.monotonic()
        self._watch_idle()
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
        if not ctype.startswith("multipart/form-data") and not self.file_name:
            raise ApiError(400, "invalid_request", "Give the file name: POST /api/upload?filename=cells.h5ad with "
                                                   "the raw bytes, or a multipart form with a 'file' field.")
        if self.user is not None:
            try:  # before anything is written: Content-Length now, more as a body of unknown length arrives
                self.reservation = await self.call(reserve, p, self.user.name, length)
            except QuotaExceeded as exc:  # answered once the body is read and dropped (see above)
                self.failure = exc
                return
        fd, name = tempfile.mkstemp(prefix=partial_prefix("upload"), dir=p.artifacts.home / "tmp")
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

    def _watch_idle(self) -> None:
        """Answer 408 and drop the connection once the body has sent nothing for ``upload_idle_s``."""
        idle = platform().settings.upload_idle_s

        def check() -> None:
            if self._body_done or self._finished:
                return
            quiet = time.monotonic() - self._last_byte
            if quiet < idle:
                self._idle_timer = IOLoop.current().call_later(min(idle - quiet, 1.0) + 0.01, check)
                return
            log.warning("upload from %s sent nothing for %d s after %d bytes: dropped", self.request.remote_ip,
                        idle, self.body_bytes)
            self._cleanup()
            self.send_error_json(ApiError(408, "upload_idle", f"The upload sent nothing for {idle} s "
                                          f"(HELICAL_PLATFORM_UPLOAD_IDLE_S) after {self.body_bytes} bytes; nothing "
                                          "was kept. Send the file again from a steady connection."))
            self.request.connection.close()

        self._idle_timer = IOLoop.current().call_later(min(idle, 1.0), check)

    async def data_received(self, chunk: bytes) -> None:
        """Errors are kept and answered once the body is read: raising here would drop the connection."""
        self._last_byte = time.monotonic()
        self.body_bytes += len(chunk)
        if self.failure is not None or self._finished:
            return
        try:
            if self.reservation is not None and self.body_bytes > self.reservation.reserved:
                await self.call(self.reservation.ensure, self.body_bytes, RESERVE_STEP)
            if self.parser is not None:
                self.parser.write(chunk)
            else:
                self._write(chunk)
        except (UploadTooLargeError, QuotaExceeded) as exc:
            self.failure = exc
            await self._give_back()  # nothing more is written; the rest of the body is read and dropped
        except Exception as exc:  # the multipart parser's own errors
            self.failure = ApiError(400, "invalid_request", f"The multipart body is malformed ({exc}); send the "
                                                            "file as the 'file' field, or as a raw body.")

    async def post(self) -> None:
        self._body_done = True
        if self.out is None or self.failure is not None:  # refused; the body was read and dropped
            await self._give_back()
            raise self.failure
        try:
            self.out.close()
            if self.failure is not None:
                raise self.failure
            if not self.file_name:
                raise ApiError(400, "invalid_request", "The multipart body has no file field.")
            validate_file_name(self.file_name)
            with open(self.tmp_path, "rb") as fh:
                ds = await run_ingest(platform().datasets.ingest, fh, self.file_name, user=self.user,
                                      reservation=self.reservation)
        finally:
            self.tmp_path.unlink(missing_ok=True)
            if self.reservation is not None:
                await self.call(self.reservation.release)  # a no-op once the dataset's transaction settled it
        self.send({**dataset_json(ds), "report": ds.check_report}, 201)

    def on_finish(self) -> None:
        self._cleanup()

    def on_connection_close(self) -> None:
        self._cleanup()
        super().on_connection_close()  # ends the wait for the body: the handler is not left pending for good

    async def _give_back(self) -> None:
        """Clean up, and give the reservation back before the refusal is answered: a client that reads its 413 and
        asks for its quota must see the room again (fire-and-forget let the answer overtake the release)."""
        reservation, self.reservation = self.reservation, None
        self._cleanup()
        if reservation is not None and reservation.id is not None:
            await self.call(_release, reservation)

    def _cleanup(self) -> None:
        """Close and remove the temporary file, stop the idle watch and give the reservation back (in a thread:
        it writes to the database); safe to call more than once."""
        if (timer := getattr(self, "_idle_timer", None)) is not None:
            IOLoop.current().remove_timeout(timer)
            self._idle_timer = None
        out = getattr(self, "out", None)
        if out is not None and not out.closed:
            out.close()
        if getattr(self, "_body_done", False) and getattr(self, "failure", None) is None:
            return  # post() is storing and checking the file: it owns the file and the reservation until it ends
        if getattr(self, "tmp_path", None) is not None:
            self.tmp_path.unlink(missing_ok=True)
        reservation, self.reservation = getattr(self, "reservation", None), None
        if reservation is not None and reservation.id is not None:
            IOLoop.current().run_in_executor(None, _release, reservation)


def _release(reservation) -> None:  # noqa: ANN001 - app.lifecycle.QuotaReservation
    try:
        reservation.release()
    except Exception:  # the server itself drops it when this process is gone (its owner's lease)
        log.exception("could not release an upload's quota reservation")
