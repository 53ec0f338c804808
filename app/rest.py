"""The REST API, served by the same Tornado server as the dashboard (``panel serve --plugins app.rest``).

Every handler calls the same services as the dashboard; slow calls run in a thread, never on the event loop.
Errors are JSON ``{"error": {"code", "message", "details"}}`` with 400/401/403/404/409/413/415/422, never a stack
trace. State-changing calls from another site's page are refused (403, app/cross_site.py).
"""

from __future__ import annotations

import logging

import tornado.web

from app import security_headers, server_access
from app.cross_site import harden_cookies
from app.downloads import link_refusal
from app.loopwatch import WATCH
from app.rest_annotators import ROUTES as ANNOTATOR_ROUTES
from app.rest_base import ApiError, ApiHandler, attachment, platform
from app.rest_datasets import DATASET_ROUTES
from app.rest_json import application_json, dataset_json, model_json, run_json
from app.rest_lifecycle import LIFECYCLE_ROUTES
from app.rest_upload import UploadHandler
from app.runs import TooManyRuns
from inference.backends import requires_gpu
from inference.devices import device_label

log = logging.getLogger(__name__)
CHUNK = 1 << 20
security_headers.install()  # this module is the server's --plugins module: imported before the server starts
server_access.install()  # unknown Host headers refused (DNS rebinding); no start without a login when users exist
harden_cookies()  # SameSite, Secure over HTTPS, HttpOnly on the login cookie (Panel sets none of the first two)


def _models_json(application_id: str | None) -> list[dict]:
    """The catalog with where each model would run: ``needs a GPU`` for a GPU-only model on a cluster without."""
    p = platform()
    gpus = int(p.compute_status().get("gpus") or 0)
    return [model_json(m, device_label(p.settings.device, gpus, gpu_only := requires_gpu(m.backend)), gpu_only)
            for m in p.models(application_id)]


class ApplicationsHandler(ApiHandler):
    async def get(self) -> None:
        self.send([application_json(a) for a in await self.call(platform().applications)])


class ModelsHandler(ApiHandler):
    async def get(self, application_id: str | None = None) -> None:
        p = platform()
        if application_id is not None and application_id not in {a.id for a in await self.call(p.applications)}:
            raise ApiError(404, "not_found", f"No application {application_id!r}.")
        self.send(await self.call(_models_json, application_id))


class DatasetsHandler(ApiHandler):
    async def get(self) -> None:
        p = platform()

        def listing() -> list[dict]:
            return [dataset_json(d, p.datasets.embeddings_size(d)) for d in p.datasets.list()
                    if mine is None or d.created_by == mine]

        mine = self.mine()

        self.send(await self.call(listing))


class SubmitHandler(ApiHandler):
    async def post(self) -> None:
        try:
            await self._submit()
        except TooManyRuns as exc:  # the caller's own queue is full: come back later, not a malformed request
            self.set_header("Retry-After", "60")
            raise ApiError(429, "too_many_runs", str(exc)) from None

    async def _submit(self) -> None:
        """One run (``model``), or one per model, grouped (``models``: a list); ``batch_column`` goes to the
        options (the integration application's)."""
        body = self.body_json()
        missing = [k for k in ("application", "dataset") if not body.get(k)]
        if not body.get("model") and not body.get("models"):
            missing.insert(1, "model (or models)")
        if missing:
            raise ApiError(400, "invalid_request", f"Missing field(s): {', '.join(missing)}.")
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise ApiError(400, "invalid_request", "options must be an object.")
        for key in ("application", "model", "dataset", "reference", "label_column", "truth_column", "batch_column"):
            if body.get(key) is not None and not isinstance(body[key], str):
                raise ApiError(400, "invalid_request", f"{key} must be a string.")
        if body.get("annotator") is not None and not isinstance(body["annotator"], str):
            raise ApiError(400, "invalid_request", "annotator must be a string (an annotator's id or name).")
        if body.get("batch_column") is not None:
            options = {**options, "batch_column": body["batch_column"]}
        if body.get("truth_ontology") is not None:  # checked by the runs service (label -> CL id or null)
            options = {**options, "truth_ontology": body["truth_ontology"]}
        models = body.get("models")
        if models is not None:
            if body.get("model") or not isinstance(models, list) or not models \
                    or not all(isinstance(m, str) and m for m in models) or len(models) > 20:
                raise ApiError(400, "invalid_request", "models must be a list of 1-20 model ids (and model left "
                                                       "out): one run per model, grouped.")
            if body.get("annotator") is not None:
                raise ApiError(400, "invalid_request", "An annotator names its model: give model, not models.")
            runs = await self.call(platform().runs.submit_group, body["application"], models, body["dataset"],
                                   body.get("reference"), body.get("label_column"), body.get("truth_column"),
                                   options, user=self.user)
            self.send({"group_id": runs[0].group_id, "run_id": runs[0].id, "status": runs[0].status,
                       "runs": [{"run_id": r.id, "model": r.model_id, "status": r.status} for r in runs]}, 202)
            return
        run = await self.call(platform().runs.submit, body["application"], body["model"], body["dataset"],
                              body.get("reference"), body.get("label_column"), body.get("truth_column"), options,
                              body.get("annotator"), user=self.user)
        self.send({"run_id": run.id, "status": run.status}, 202)


class StatusHandler(ApiHandler):
    async def get(self, run_id: str) -> None:
        self.send(await self.call(platform().runs.status, run_id))


class CancelHandler(ApiHandler):
    async def post(self, run_id: str) -> None:
        """Another user's run: 403 unless the caller is an admin (the rule of deletion)."""
        self.send(await self.call(platform().runs.cancel, run_id, user=self.user))


class RunsHandler(ApiHandler):
    async def get(self) -> None:
        mine = self.mine()
        self.send([run_json(r) for r in await self.call(platform().runs.list) if mine is None or r.created_by == mine])


class ResultsHandler(ApiHandler):
    async def get(self, run_id: str) -> None:
        try:
            offset = int(self.get_query_argument("offset", "0"))
            limit = int(self.get_query_argument("limit", "100"))
        except ValueError:
            raise ApiError(400, "invalid_request", "offset and limit must be whole numbers.") from None
        if offset < 0 or not 0 <= limit <= 10_000:
            raise ApiError(400, "invalid_request", "offset must be >= 0 and limit between 0 and 10000.")
        probabilities = self.get_query_argument("probabilities", "best")
        if probabilities not in ("best", "all"):
            raise ApiError(400, "invalid_request", "probabilities must be 'best' (the default: each cell's best "
                           "class and its confidence) or 'all' (every class's probability, p_<class>).")
        self.send(await self.call(platform().runs.results, run_id, offset, limit, probabilities == "all"))


class DownloadHandler(ApiHandler):
    def authorize(self) -> None:
        """A signed link the server made (app/downloads.py: this run, this format, not expired) lets its holder
        in; anything else needs what every call needs (a token, or the dashboard's login when users exist). A
        forged, changed or expired link is no credential: refused with why, unless the caller brings one."""
        sig = self.get_query_argument("sig", None)
        refusal = None
        if sig is not None:
            run_id = self.path_args[0] if self.path_args else ""
            refusal = link_refusal(platform(), run_id, self.get_query_argument("format", "h5ad"),
                                   self.get_query_argument("exp", None), sig)
            if refusal is None:
                return
        try:
            super().authorize()
        except ApiError as err:
            if refusal is not None and err.status == 401:
                raise ApiError(401, "invalid_link", f"{refusal} Or send 'Authorization: Bearer <token>'.") from None
            raise

    async def get(self, run_id: str) -> None:
        fmt = self.get_query_argument("format", "h5ad")
        if fmt not in ("h5ad", "csv", "cellxgene"):
            raise ApiError(400, "invalid_request", "format must be h5ad, csv or cellxgene.")
        path = await self.call(platform().runs.export, run_id, fmt)
        self.set_header("Content-Type", "text/csv; charset=utf-8" if fmt == "csv" else "application/octet-stream")
        name = {"h5ad": "annotated-{}.h5ad", "csv": "predictions-{}.csv", "cellxgene": "cellxgene-{}.h5ad"}[fmt]
        self.set_header("Content-Disposition", attachment(name.format(run_id[:8])))
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
    *LIFECYCLE_ROUTES,
    *ANNOTATOR_ROUTES,
    *DATASET_ROUTES,
    (r"/api/health", HealthHandler, {}),
    (r"/api/openapi.json", OpenApiHandler, {}),
    (r"/api/docs/?", DocsHandler, {}),
    (r"/api/docs/static/(.*)", _LazyStatic, {"path": "."}),
]
