"""The Python API's local client: this process's Platform (SQLite + a Dask cluster), the same services the REST
API and the dashboard call.

An in-memory AnnData goes through exactly what an upload goes through (written to a temporary ``.h5ad``, ingested,
checked); the result is the run's own annotated file, read back, so the API returns what a download would give.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from app.catalog import CELL_TYPE_ANNOTATION, EMBEDDING_INTEGRATION
from app.notebook_api import Integrated, Progress, until, wait_runs
from app.notebook_errors import InputError, NotFound, PlatformError, Unavailable, error_from_service
from store.tables import ACTIVE

if TYPE_CHECKING:
    from anndata import AnnData

    from app.platform import Platform
    from store.tables import Dataset

POLL_S = 0.5
CANCEL_WAIT_S = 60  # after an interrupt: how long to wait for the cluster to stop the run and remove its files
CLUSTER_WAIT_S = 180
DEFAULT_MODEL = "geneformer"


@contextmanager
def _translated() -> Iterator[None]:
    """The service's exceptions as the API's (internal errors keep their own type and traceback)."""
    try:
        yield
    except PlatformError:
        raise
    except Exception as exc:
        err = error_from_service(exc)
        if err is None:
            raise
        raise err from exc


class LocalClient:
    """Runs on a Platform in this process: the one given, or the shared one (started on first use)."""

    def __init__(self, platform: Platform | None = None) -> None:
        self._platform = platform

    @property
    def platform(self) -> Platform:
        if self._platform is None:
            from app.platform import Platform

            self._platform = Platform.shared()  # Settings.from_env(): DASK_SCHEDULER_ADDRESS, HOME, DB_URL, ...
        return self._platform

    # ---- listings (the REST API's JSON shapes) ---------------------------------------------------------------
    def models(self, application: str | None = None) -> list[dict]:
        from app.rest_json import model_json
        from inference.backends import requires_gpu
        from inference.devices import device_label

        p = self.platform
        gpus = int(p.compute_status().get("gpus") or 0)
        return [model_json(m, device_label(p.settings.device, gpus, gpu_only := requires_gpu(m.backend)), gpu_only)
                for m in p.models(application)]

    def annotators(self) -> list[dict]:
        from app.annotators import annotator_json

        return [annotator_json(a) for a in self.platform.annotators.list()]

    def runs(self, limit: int = 200) -> list[dict]:
        from app.rest_json import run_json

        return [run_json(r) for r in self.platform.runs.list(limit)]

    # ---- applications ----------------------------------------------------------------------------------------
    def annotate(self, adata: AnnData, model: str | None, reference: AnnData | None, label_column: str | None,
                 annotator: str | None, truth_column: str | None, options: dict,
                 progress: Progress | None) -> AnnData:
        p = self.platform
        with _translated():
            if annotator is not None:
                found = self._annotator(annotator)
                model = model or found.model_id + (f":{found.variant}" if found.variant else "")
            model_id, options = self._model(model or DEFAULT_MODEL, CELL_TYPE_ANNOTATION, options)
            self._cluster()
            query = self._ingest(adata, "query")
            ref = self._ingest(reference, "reference") if reference is not None else None
            run = p.runs.submit(CELL_TYPE_ANNOTATION, model_id, query.id, ref.id if ref else None, label_column,
                                truth_column, options, annotator)
            self._wait([run.id], progress)
            return _read_h5ad(p.runs.export(run.id, "h5ad"))

    def integrate(self, adata: AnnData, models: list[str], batch_column: str, label_column: str | None,
                  options: dict, progress: Progress | None) -> Integrated:
        from app.integrate import integrated_uns, metrics_table, model_obsm
        from inference.annotated import write_annotated

        p = self.platform
        with _translated():
            if not models:
                raise InputError("Give one or more models, e.g. ['baseline', 'harmony'].", "invalid_request")
            if any(self._model(m, EMBEDDING_INTEGRATION, {})[1] for m in models):  # one options dict for the group
                raise InputError("Integration runs each model's default variant: give model ids without ':VARIANT'.",
                                 "invalid_request")
            self._cluster()
            data = self._ingest(adata, "data")
            group = p.runs.submit_group(EMBEDDING_INTEGRATION, models, data.id, None, label_column, None,
                                        {**options, "batch_column": batch_column})
            self._wait([r.id for r in group], progress)
            runs = [p.runs.get(r.id) for r in group]
            results = {r.model_id: {"metrics": r.metrics, "provenance": r.provenance} for r in runs}
            obsm: dict = {}
            for r in runs:
                obsm.update(model_obsm(p.runs.export(r.id, "h5ad"), r.model_id))
            with tempfile.TemporaryDirectory(prefix="integrated-", dir=p.artifacts.home / "tmp") as tmp:
                out = Path(tmp) / "integrated.h5ad"
                write_annotated(p.datasets.path(data), data.file_name, out, {}, obsm,
                                integrated_uns(results, batch_column, label_column))
                return Integrated(_read_h5ad(out), metrics_table(results))

    def annotated(self, run_id: str) -> AnnData:
        """A finished run's annotated file, as its download gives it."""
        with _translated():
            return _read_h5ad(self.platform.runs.export(run_id, "h5ad"))

    # ---- the steps ---------------------------------------------------------------------------------------------
    def _model(self, model: str, application: str, options: dict) -> tuple[str, dict]:
        """The catalog id of ``model`` (``id`` or ``id:VARIANT``) and the options with its variant; NotFound
        names the models that serve the application."""
        model_id, _, variant = model.partition(":")
        served = [m.id for m in self.platform.models(application)]
        if model_id not in served:
            raise NotFound(f"No model {model!r} for {application}: choose one of {', '.join(served)} (a variant "
                           "as id:VARIANT, e.g. geneformer:gf-12L-38M-i4096).", "not_found")
        return model_id, ({**options, "variant": variant} if variant else options)

    def _annotator(self, id_or_name: str):  # noqa: ANN202 - store.tables.AnnotatorEntry
        from app.datasets import NotFound as ServiceNotFound

        try:
            return self.platform.annotators.get(id_or_name)
        except ServiceNotFound:
            names = [a.name for a in self.platform.annotators.list()]
            raise NotFound(f"No annotator {id_or_name!r}: the saved ones are {', '.join(map(repr, names)) or 'none'}"
                           " (hp.annotators() lists them).", "not_found") from None

    def _cluster(self) -> None:
        try:
            self.platform.compute(timeout=CLUSTER_WAIT_S)
        except (TimeoutError, RuntimeError) as exc:
            raise Unavailable(str(exc), "unavailable") from exc

    def _ingest(self, adata: AnnData, role: str) -> Dataset:
        """Store ``adata`` as an upload is stored: its ``.h5ad`` bytes, checked; a refused one raises InputError
        with the check report. Written without converting the caller's string columns (anndata's default would
        change them in the caller's object)."""
        p = self.platform
        with tempfile.TemporaryDirectory(prefix="notebook-", dir=p.artifacts.home / "tmp") as tmp:
            path = Path(tmp) / f"notebook-{role}.h5ad"
            try:
                adata.write_h5ad(path, convert_strings_to_categoricals=False)
            except OSError:
                raise
            except Exception as exc:  # something anndata cannot store: the caller's object must change
                raise InputError(f"The {role} AnnData cannot be written as .h5ad ({exc}).", "invalid_request") \
                    from exc
            with open(path, "rb") as fh:
                return p.datasets.ingest(fh, path.name)

    def _wait(self, run_ids: list[str], progress: Progress | None) -> None:
        """Poll until every run ends, telling ``progress``; an interrupt (the kernel's stop button) cancels them
        through the runs service, waits for the cluster to stop them (so nothing is left half-written), and is
        raised again. A run that did not finish raises RunFailed."""
        runs = self.platform.runs
        wait_runs(lambda r: _status(runs, r), self._cancel, run_ids, progress, POLL_S)

    def _cancel(self, run_ids: list[str]) -> None:
        runs = self.platform.runs
        for r in run_ids:
            runs.cancel(r)
        until(lambda: all(runs.status(r)["status"] not in ACTIVE for r in run_ids), CANCEL_WAIT_S, POLL_S)


def _status(runs, run_id: str) -> dict:  # noqa: ANN001 - app.runs.RunsService
    """The run's status as the REST API sends it (the status a plain string)."""
    status = runs.status(run_id)
    return {**status, "status": str(status["status"])}


def _read_h5ad(path: Path) -> AnnData:
    import anndata as ad

    return ad.read_h5ad(path)
