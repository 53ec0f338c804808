"""The annotators' REST handlers: list, show, save from a run, delete, export one file, import one file."""

from __future__ import annotations

from app.annotators import annotator_json
from app.rest_base import ApiError, ApiHandler, attachment, platform
from app.users import ANONYMOUS

MAX_IMPORT_BYTES = 100 << 20  # Tornado's own body limit: an annotator is a few MB


class AnnotatorsHandler(ApiHandler):
    async def get(self) -> None:
        mine = self.mine()
        self.send([annotator_json(a) for a in await self.call(platform().annotators.list)
                   if mine is None or a.created_by == mine])

    async def post(self) -> None:
        """Save a finished run's head: ``{"run_id", "name", "description", "author", "ontology"}``."""
        body = self.body_json()
        if not isinstance(body.get("run_id"), str) or not isinstance(body.get("name"), str):
            raise ApiError(400, "invalid_request", "Give run_id and name (strings).")
        for key in ("description", "author"):
            if body.get(key) is not None and not isinstance(body[key], str):
                raise ApiError(400, "invalid_request", f"{key} must be a string.")
        a = await self.call(platform().annotators.save_from_run, body["run_id"], body["name"],
                            body.get("description") or "", body.get("author") or self.author(),
                            body.get("ontology"), user=self.user)
        self.send(annotator_json(a), 201)


    def author(self) -> str:
        """The caller's name, unless nobody is identified."""
        return self.user.name if self.user is not None and self.user.name != ANONYMOUS else ""


class AnnotatorHandler(ApiHandler):
    async def get(self, annotator_id: str) -> None:
        self.send(annotator_json(await self.call(platform().annotators.get, annotator_id)))

    async def delete(self, annotator_id: str) -> None:
        a = await self.call(platform().annotators.delete, annotator_id, user=self.user)
        self.send({"deleted": a.id, "name": a.name})


class AnnotatorExportHandler(ApiHandler):
    async def get(self, annotator_id: str) -> None:
        p = platform()
        a = await self.call(p.annotators.get, annotator_id)
        path = await self.call(p.annotators.export, a.id)
        self.set_header("Content-Type", "application/zip")
        self.set_header("Content-Disposition", attachment(f"annotator-{a.name}.zip"))
        self.finish(path.read_bytes())


class AnnotatorImportHandler(ApiHandler):
    max_body_bytes = MAX_IMPORT_BYTES + 2**20  # read whole; app/server_access.py bounds every other body to 2 MB
    body_timeout_s = 600

    async def post(self) -> None:
        """The body is an exported annotator file (``application/zip`` or ``application/octet-stream``);
        ``?name=`` renames it."""
        ctype = (self.request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype not in ("application/zip", "application/octet-stream"):
            raise ApiError(415, "unsupported_media_type", "Send the annotator file as the body with 'Content-Type: "
                           "application/zip'.", {"content_type": ctype})
        if len(self.request.body) > MAX_IMPORT_BYTES:
            raise ApiError(413, "too_large", "An annotator file is a few MB; this one is too large.")
        a = await self.call(platform().annotators.import_file, bytes(self.request.body),
                            self.get_query_argument("name", None), user=self.user)
        self.send(annotator_json(a), 201)


ROUTES = [
    (r"/api/annotators", AnnotatorsHandler, {}),
    (r"/api/annotators/import", AnnotatorImportHandler, {}),
    (r"/api/annotators/([^/]+)/export", AnnotatorExportHandler, {}),
    (r"/api/annotators/([^/]+)", AnnotatorHandler, {}),
]
