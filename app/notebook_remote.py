"""The Python API's remote client: a lab server's REST API, so a laptop's notebook drives the server's cluster.

The same calls as the local client (``app/notebook_local.py``) and the same exceptions: the server's JSON error
body becomes the ``PlatformError`` of its code. The AnnData is written once to a temporary ``.h5ad`` and streamed
up from disk (never held twice in memory); the result is the run's annotated file, streamed down to a temporary
file and read back.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from app.notebook_api import ACTIVE, Integrated, Progress, until, wait_runs
from app.notebook_errors import AccessDenied, InputError, PlatformError, Unavailable, error_from_code

if TYPE_CHECKING:
    import requests
    from anndata import AnnData

POLL_S = 1.0
CANCEL_WAIT_S = 60
CHUNK = 1 << 20
ANNOTATION, INTEGRATION = "cell-type-annotation", "embedding-integration"


class RemoteClient:
    """Runs on the server at ``url`` (``http://lab-server:5006``), with ``token`` when it asks for one."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 300) -> None:
        import requests

        self.url, self.timeout = url.rstrip("/"), timeout
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self._get("/api/applications")  # fail now (server down, token refused), not at the first run

    # ---- HTTP ------------------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kw: object) -> requests.Response:
        import requests

        try:
            response = self.session.request(method, self.url + path, timeout=self.timeout, **kw)
        except requests.ConnectionError as exc:
            raise Unavailable(f"Cannot reach {self.url} ({type(exc).__name__}): is the server running, and is the "
                              "address right?", "unavailable") from None
        except requests.Timeout:
            raise Unavailable(f"{self.url} did not answer within {self.timeout:.0f} s.", "unavailable") from None
        if response.status_code >= 400:
            raise _error(response)
        return response

    def _get(self, path: str, **params: object) -> object:
        return self._request("GET", path, params=params or None).json()

    # ---- listings --------------------------------------------------------------------------------------------
    def models(self, application: str | None = None) -> list[dict]:
        return self._get(f"/api/applications/{application}/models" if application else "/api/models")

    def annotators(self) -> list[dict]:
        return self._get("/api/annotators")

    def runs(self, limit: int = 200) -> list[dict]:
        return self._get("/api/runs")[:limit]

    # ---- applications ----------------------------------------------------------------------------------------
    def annotate(self, adata: AnnData, model: str | None, reference: AnnData | None, label_column: str | None,
                 annotator: str | None, truth_column: str | None, options: dict,
                 progress: Progress | None) -> AnnData:
        if annotator is not None and model is None:
            found = self._get(f"/api/annotators/{annotator}")
            model = found["model"] + (f":{found['variant']}" if found.get("variant") else "")
        model_id, _, variant = (model or "geneformer").partition(":")
        query = self._upload(adata, "query")
        ref = self._upload(reference, "reference") if reference is not None else None
        body = {"application": ANNOTATION, "model": model_id, "dataset": query, "reference": ref,
                "label_column": label_column, "truth_column": truth_column, "annotator": annotator,
                "options": {**options, **({"variant": variant} if variant else {})}}
        run_id = self._request("POST", "/api/submit", json=body).json()["run_id"]
        self._wait([run_id], progress)
        with self._download(run_id) as path:
            return _read_h5ad(path)

    def integrate(self, adata: AnnData, models: list[str], batch_column: str, label_column: str | None,
                  options: dict, progress: Progress | None) -> Integrated:
        from app.integrate import integrated_uns, metrics_table, model_obsm

        if not models:
            raise InputError("Give one or more models, e.g. ['baseline', 'harmony'].", "invalid_request")
        data = self._upload(adata, "data")
        body = {"application": INTEGRATION, "models": models, "dataset": data, "label_column": label_column,
                "batch_column": batch_column, "options": options}
        runs = [r["run_id"] for r in self._request("POST", "/api/submit", json=body).json()["runs"]]
        self._wait(runs, progress)
        results, obsm = {}, {}
        for run_id in runs:
            res = self._get(f"/api/results/{run_id}", limit=1)
            model = self._get(f"/api/status/{run_id}")["model"]
            results[model] = {"metrics": res["metrics"], "provenance": res["provenance"]}
            with self._download(run_id) as path:
                obsm.update(model_obsm(path, model))
        out = adata.copy()
        for key, value in obsm.items():
            out.obsm[key] = value
        out.uns.update(integrated_uns(results, batch_column, label_column))
        return Integrated(out, metrics_table(results))

    def annotated(self, run_id: str) -> AnnData:
        """A finished run's annotated file, streamed down and read."""
        with self._download(run_id) as path:
            return _read_h5ad(path)

    # ---- the steps -------------------------------------------------------------------------------------------
    def _upload(self, adata: AnnData, role: str) -> str:
        """Write ``adata`` once to a temporary ``.h5ad`` and stream it up from disk; the dataset's id. A refused
        file raises InputError with the server's check report; one over the server's limit says the limit."""
        with tempfile.TemporaryDirectory(prefix="hp-upload-") as tmp:
            path = Path(tmp) / f"notebook-{role}.h5ad"
            try:
                adata.write_h5ad(path, convert_strings_to_categoricals=False)
            except OSError:
                raise
            except Exception as exc:  # something anndata cannot store
                raise InputError(f"The {role} AnnData cannot be written as .h5ad ({exc}).", "invalid_request") \
                    from exc
            with open(path, "rb") as fh:
                # a file object: sent with its Content-Length (the server refuses an upload over its limit before
                # reading it, saying the limit) and read in blocks, never whole
                r = self._request("POST", "/api/upload", params={"filename": path.name}, data=fh,
                                  headers={"Content-Type": "application/octet-stream"})
        return r.json()["dataset_id"]

    def _wait(self, run_ids: list[str], progress: Progress | None) -> None:
        """Poll until every run ends; an interrupt (the kernel's stop button) cancels them on the server and waits
        for the cluster to stop them, then is raised again."""
        wait_runs(lambda r: self._get(f"/api/status/{r}"), self._cancel, run_ids, progress, POLL_S)

    def _cancel(self, run_ids: list[str]) -> None:
        for r in run_ids:
            self._request("POST", f"/api/runs/{r}/cancel")
        until(lambda: all(self._get(f"/api/status/{r}")["status"] not in ACTIVE for r in run_ids), CANCEL_WAIT_S,
              POLL_S)

    @contextmanager
    def _download(self, run_id: str) -> Iterator[Path]:
        """The run's annotated ``.h5ad``, streamed to a temporary file."""
        with tempfile.TemporaryDirectory(prefix="hp-result-") as tmp:
            path = Path(tmp) / f"{run_id}.h5ad"
            with self._request("GET", f"/api/download/{run_id}", params={"format": "h5ad"}, stream=True) as r, \
                    open(path, "wb") as fh:
                for block in r.iter_content(CHUNK):
                    fh.write(block)
            yield path


def _error(response: requests.Response) -> PlatformError:
    """The server's error body as the API's exception (a body that is not the API's: by its HTTP status)."""
    try:
        err = response.json()["error"]
        return error_from_code(err.get("code", "internal"), err.get("message", response.reason), err.get("details"))
    except (ValueError, KeyError, TypeError, AttributeError):
        if response.status_code in (401, 403):
            return AccessDenied(f"{response.status_code} {response.reason}", "unauthorized")
        return PlatformError(f"{response.status_code} {response.reason}: {response.text[:200]}", "internal")


def _read_h5ad(path: Path) -> AnnData:
    import anndata as ad

    return ad.read_h5ad(path)
