"""The runs service: submit (returns at once), status, cancel, results and export; the work goes to Dask.

Each run's model phase goes to its model's actor (created on first use, kept loaded); the CPU phase (UMAP,
files) is a plain task on any worker. A thread per run waits for Dask, so nothing here blocks a web server's
event loop; progress arrives as worker events and is written to the run's row by one writer thread.
"""

from __future__ import annotations

import errno
import logging
import queue
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from sqlmodel import select

from app.datasets import DatasetService, NotFound
from inference.actors import PROGRESS_TOPIC, ModelActor, ModelSpec, cancel_event_name, finish_run
from inference.backends.base import Cancelled
from inference.checks import LABEL_MAX_CLASSES, LABEL_MIN_CLASSES
from inference.pipeline import AnnotationError, AnnotationJob, DataInput
from inference.weights import WeightsError, helical_cache_dir
from store.artifacts import new_id, validate_uuid4
from store.engine import read_session, write_session
from store.tables import Application, ModelEntry, Run

log = logging.getLogger(__name__)

ACTIVE = ("queued", "running")
# Share of a run's time per stage, for one progress figure (the model stages dominate).
STAGE_WEIGHTS = {"starting": 0.0, "loading model": 0.05, "checking": 0.02, "embedding reference": 0.33,
                 "training head": 0.05, "embedding query": 0.35, "predicting": 0.02, "UMAP": 0.12, "writing": 0.06}
SCHEDULER_LOST = ("scheduler-connection-lost", "lost the connection to the scheduler")
WORKER_LOST = ("Worker holding Actor was lost", "KilledWorker", "CommClosedError", "worker", "Stream is closed")


class InvalidRun(ValueError):
    """A submission that cannot run; the message says which field and what to do."""


class RunNotFinished(RuntimeError):
    pass


def _now() -> datetime:
    return datetime.now(UTC)


def _progress(stage: str, done: int, total: int) -> float:
    names = list(STAGE_WEIGHTS)
    if stage not in STAGE_WEIGHTS:
        return 0.0
    before = sum(STAGE_WEIGHTS[n] for n in names[: names.index(stage)])
    within = done / total if total else 0.0
    return round(min(0.99, before + STAGE_WEIGHTS[stage] * within), 4)


def _result(future, client):  # noqa: ANN001, ANN202 - a distributed Future or ActorFuture
    """Wait for ``future``, but give up as soon as the client loses the scheduler: an actor call talks to its
    worker directly and would otherwise wait out every connection retry (minutes) before failing."""
    while True:
        try:
            return future.result(timeout=1)
        except TimeoutError:
            if client.status != "running":
                raise ConnectionError("Client lost the connection to the scheduler "
                                      f"(scheduler-connection-lost; client {client.status})") from None


LABEL_COLUMNS = ("predicted_label", "true_label", "split")


class RunsService:
    def __init__(self, platform) -> None:  # noqa: ANN001 - app.platform.Platform
        self.platform = platform
        self.datasets = DatasetService(platform)
        self._actors: dict[str, object] = {}
        self._actors_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="run")
        self._updates: queue.Queue = queue.Queue()
        self._subscribed = False
        self._scheduler_id: str | None = None
        self._subscribed_client = None
        self._started: dict[str, float] = {}
        self.workers: dict[str, dict] = {}  # run id -> the worker process now running it (from its events)
        threading.Thread(target=self._write_progress, name="run-progress", daemon=True).start()

    # ---- submission -------------------------------------------------------------------------------------
    def submit(self, application_id: str, model_id: str, dataset_id: str, reference_id: str | None = None,
               label_column: str | None = None, truth_column: str | None = None,
               options: dict | None = None) -> Run:
        """Validate, record the run as queued and return it at once; the work starts in the background."""
        options = dict(options or {})
        with read_session(self.platform.engine) as s:
            app = s.get(Application, application_id)
            model = s.get(ModelEntry, model_id)
        if app is None:
            raise NotFound(f"No application {application_id!r}.")
        if model is None:
            raise NotFound(f"No model {model_id!r}.")
        if application_id not in model.applications:
            raise InvalidRun(f"{model.name} does not serve {app.name}.")
        if model.weights_status == "missing":
            raise InvalidRun(f"{model.name} has no weights: {model.weights_detail}")
        variant = options.get("variant")
        if variant and model.backend == "geneformer":
            status, detail = self.platform.weights.status("geneformer", variant)
            if status == "missing":
                raise InvalidRun(f"Geneformer {variant} has no weights: {detail}")
        query = self.datasets.get(dataset_id)
        reference = self.datasets.get(reference_id) if reference_id else None
        labels_from = reference or query
        columns = labels_from.check_report.get("label_columns", {})
        if not label_column:
            raise InvalidRun("Give the label column of the " + ("reference." if reference else "query (evaluation "
                             "mode: without a reference, the query's own labels are split 70/30)."))
        why = labels_from.check_report.get("rejected_label_columns", {}).get(label_column)
        if label_column not in columns and why:
            raise InvalidRun(f"{label_column!r} in {labels_from.file_name} cannot be used as labels: {why}. Label "
                             f"columns need {LABEL_MIN_CLASSES}-{LABEL_MAX_CLASSES} classes; this file's are: "
                             f"{', '.join(columns) or 'none'}.")
        if label_column not in columns:
            raise InvalidRun(f"{label_column!r} is not a label column of {labels_from.file_name}; its label columns"
                             f" are: {', '.join(columns) or 'none'}.")
        if truth_column and truth_column not in query.check_report.get("label_columns", {}):
            raise InvalidRun(f"{truth_column!r} is not a label column of the query {query.file_name}.")
        for ds in filter(None, (query, reference)):
            overlap = ds.check_report.get("overlap", {}).get(model.backend)
            if overlap and not overlap["ok"]:
                raise ModelCannotUse(f"{model.name} cannot use {ds.file_name}: {overlap['message']}")
        threshold = float(options.get("confidence_threshold", 0.5))
        if not 0 <= threshold <= 1:
            raise InvalidRun("confidence_threshold must lie between 0 and 1.")
        params = {"variant": options.get("variant") or model.variant or None, "confidence_threshold": threshold,
                  "seed": int(options.get("seed", 0)), "evaluation_mode": reference is None,
                  "weights": model.weights_status}
        run = Run(id=new_id(), application_id=application_id, model_id=model_id, dataset_id=query.id,
                  reference_dataset_id=reference.id if reference else None, label_column=label_column,
                  truth_column=truth_column or (label_column if reference is None else None), status="queued",
                  stage="queued", cells_total=int(query.n_cells or 0), parameters=params)
        with write_session(self.platform.engine) as s:
            s.add(run)
        self._executor.submit(self._execute, run.id)
        return run

    # ---- execution --------------------------------------------------------------------------------------
    def _spec(self, model: ModelEntry, variant: str | None, device: str) -> ModelSpec:
        s = self.platform.settings
        return ModelSpec(model.backend, variant if model.backend == "geneformer" else None, device,
                         str(s.weights_dir), str(s.generated_weights_dir), str(helical_cache_dir()),
                         s.allow_download)

    def _device_and_resources(self) -> tuple[str, dict | None]:
        compute = self.platform.compute()
        if compute.describe()["gpus"] and self.platform.settings.device != "cpu":
            return "cuda", {"GPU": 1}
        return ("cpu" if self.platform.settings.device == "auto" else self.platform.settings.device), None

    def actor_for(self, model: ModelEntry, variant: str | None):  # noqa: ANN201 - a distributed Actor
        device, resources = self._device_and_resources()
        spec = self._spec(model, variant, device)
        with self._actors_lock:
            if spec.key not in self._actors:
                client = self.platform.compute().client
                workers = list(client.scheduler_info()["workers"])
                used = [getattr(a, "_address", None) for a in self._actors.values()]
                target = min(workers, key=lambda w: sum(u == w for u in used)) if workers else None
                future = client.submit(ModelActor, spec, actor=True, resources=resources, pure=False,
                                       workers=[target] if target and not resources else None,
                                       allow_other_workers=True)
                self._actors[spec.key] = future.result(timeout=120)
            return spec.key, self._actors[spec.key]

    def forget_actor(self, key: str) -> None:
        with self._actors_lock:
            self._actors.pop(key, None)

    def _subscribe(self) -> None:
        """Subscribe to progress on this scheduler; a restarted scheduler knows neither the topic nor the actors."""
        client = self.platform.compute().client
        scheduler_id = client.scheduler_info().get("id")
        with self._actors_lock:
            if scheduler_id != self._scheduler_id:
                if self._scheduler_id is not None:
                    log.warning("the Dask scheduler changed (%s -> %s): model actors are started afresh",
                                self._scheduler_id, scheduler_id)
                    self._actors.clear()
                    if self._subscribed_client is client:
                        client.unsubscribe_topic(PROGRESS_TOPIC)
                self._scheduler_id, self._subscribed = scheduler_id, False
            if not self._subscribed:
                client.subscribe_topic(PROGRESS_TOPIC, lambda event: self._updates.put(event[1]))
                self._subscribed, self._subscribed_client = True, client

    def _execute(self, run_id: str) -> None:
        actor_key = None
        run_dir = self.platform.artifacts.run_dir(run_id)
        staging = self.platform.artifacts.home / "tmp" / f"{run_id}-prediction"
        try:
            compute = self.platform.compute()
            self._subscribe()
            with write_session(self.platform.engine) as s:
                run = s.get(Run, run_id)
                if run.status != "queued":
                    return
                run.status, run.stage, run.started_at = "running", "starting", _now()
                s.add(run)
                model = s.get(ModelEntry, run.model_id)
            self._started[run_id] = time.monotonic()
            job = self._job(run, run_dir)
            actor_key, actor = self.actor_for(model, run.parameters.get("variant"))
            summary = _result(actor.predict(job, run_id, str(staging)), compute.client)
            if self._cancel_requested(run_id):
                raise Cancelled("cancelled by the user")
            result = _result(compute.client.submit(finish_run, job, run_id, str(staging), pure=False), compute.client)
            self._finish(run_id, "done", result=result, device=summary["device"])
        except Cancelled:
            shutil.rmtree(run_dir, ignore_errors=True)
            self._finish(run_id, "cancelled", error="Cancelled by the user.")
        except (AnnotationError, WeightsError) as exc:
            self._finish(run_id, "failed", error=str(exc))
        except Exception as exc:  # reported on the run; the server carries on
            text = f"{type(exc).__name__}: {exc}"
            if any(marker in text for marker in SCHEDULER_LOST) or self._scheduler_lost():
                with self._actors_lock:
                    self._actors.clear()
                log.warning("run %s lost the Dask scheduler: %s", run_id, text)
                self._finish(run_id, "failed", error=(
                    "The connection to the Dask scheduler was lost while this run was in flight. Submit it again "
                    f"once the cluster is back (the sidebar shows its state). ({text})"))
                shutil.rmtree(run_dir, ignore_errors=True)
                return
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                log.error("run %s: disk full: %s", run_id, exc)
                shutil.rmtree(staging, ignore_errors=True)  # free what this run took before recording it
                shutil.rmtree(run_dir, ignore_errors=True)
                self._finish(run_id, "failed", error=(
                    f"The disk is full (or over quota) where the results are written ({exc.filename or run_dir}): "
                    "nothing was kept. Free space in the data home and submit the run again."))
                return
            if "Cancelled" in text:
                shutil.rmtree(run_dir, ignore_errors=True)
                self._finish(run_id, "cancelled", error="Cancelled by the user.")
                return
            if actor_key and any(marker in text for marker in WORKER_LOST):
                self.forget_actor(actor_key)
                text = ("The worker running this run stopped (killed or out of memory) before it finished. "
                        f"Submit the run again: the model is loaded afresh on a live worker. ({text})")
            log.exception("run %s failed", run_id)
            self._finish(run_id, "failed", error=text)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            self._started.pop(run_id, None)
            self.workers.pop(run_id, None)

    def _scheduler_lost(self) -> bool:
        """Workers close when they lose the scheduler, so a worker error may really be the scheduler's."""
        compute = self.platform._compute
        if compute is None:
            return False
        if compute.client.status != "running":
            return True
        try:  # the client may not have noticed yet: ask the scheduler itself
            compute.client.sync(compute.client.scheduler.identity, callback_timeout=5)
            return False
        except Exception:  # refused, closed or timed out: the scheduler is gone
            return True

    def _job(self, run: Run, run_dir: Path) -> AnnotationJob:
        query = self.datasets.get(run.dataset_id)
        reference = self.datasets.get(run.reference_dataset_id) if run.reference_dataset_id else None

        def inp(ds) -> DataInput:  # noqa: ANN001
            return DataInput(str(self.datasets.path(ds)), ds.file_name, ds.sha256)

        p = run.parameters
        return AnnotationJob(model_id=run.model_id, query=inp(query), reference=inp(reference) if reference else None,
                             label_column=run.label_column, truth_column=run.truth_column if reference else None,
                             out_dir=str(run_dir), heads_dir=str(self.platform.artifacts.home / "heads"),
                             confidence_threshold=p.get("confidence_threshold", 0.5), seed=p.get("seed", 0))

    def _finish(self, run_id: str, status: str, result: dict | None = None, error: str | None = None,
                device: str | None = None) -> None:
        """Record the outcome; retried once (e.g. the disk full for the database too), else logged: a restart's
        reconciliation then fails the run rather than leaving it running."""
        for attempt in (1, 2):
            try:
                self._record_finish(run_id, status, result, error, device)
                return
            except Exception:
                log.exception("could not record run %s as %s (attempt %d)", run_id, status, attempt)
                time.sleep(1)

    def _record_finish(self, run_id: str, status: str, result: dict | None, error: str | None,
                       device: str | None) -> None:
        with write_session(self.platform.engine) as s:
            run = s.get(Run, run_id)
            run.status, run.finished_at, run.error = status, _now(), error
            run.stage = status
            if device:
                run.device = device
            if result:
                run.progress, run.cells_done = 1.0, result["n_cells"]
                run.metrics = result["metrics"]
                run.provenance = result["provenance"]
                run.stage_timings = result["stage_timings"]
                run.result_dir = str(self.platform.artifacts.run_dir(run_id))
                run.parameters = {**run.parameters, "predicted_counts": result["predicted_counts"]}
            s.add(run)

    def _write_progress(self) -> None:
        while True:
            event = self._updates.get()
            try:
                self._apply_progress(event)
            except Exception:  # a progress write must never stop the writer
                log.exception("could not record progress %s", event)

    def _apply_progress(self, event: dict) -> None:
        self.workers[event["run_id"]] = {"address": event.get("worker"), "pid": event.get("pid")}
        with write_session(self.platform.engine) as s:
            run = s.get(Run, event["run_id"])
            if run is None or run.status != "running":
                return
            run.stage = event["stage"]
            if event["stage"] in ("embedding reference", "embedding query") and event["total"]:
                run.cells_done, run.cells_total = event["done"], event["total"]
            run.progress = max(run.progress, _progress(event["stage"], event["done"], event["total"]))
            s.add(run)

    # ---- queries ----------------------------------------------------------------------------------------
    def get(self, run_id: str) -> Run:
        validate_uuid4(run_id, "run id")
        with read_session(self.platform.engine) as s:
            run = s.get(Run, run_id)
        if run is None:
            raise NotFound(f"No run {run_id}.")
        return run

    def status(self, run_id: str) -> dict:
        run = self.get(run_id)
        eta = None
        started = self._started.get(run_id)
        if run.status == "running" and started and run.progress > 0.05:
            elapsed = time.monotonic() - started
            eta = round(elapsed / run.progress * (1 - run.progress), 1)
        return {"run_id": run.id, "status": run.status, "stage": run.stage, "progress": run.progress,
                "cells_done": run.cells_done, "cells_total": run.cells_total, "eta_s": eta, "error": run.error,
                "device": run.device, "model": run.model_id}

    def list(self, limit: int = 200) -> list[Run]:
        with read_session(self.platform.engine) as s:
            return list(s.exec(select(Run).order_by(Run.created_at.desc()).limit(limit)))

    def cancel(self, run_id: str) -> dict:
        run = self.get(run_id)
        if run.status not in ACTIVE:
            return self.status(run_id)
        from distributed import Event

        Event(cancel_event_name(run_id), client=self.platform.compute().client).set()
        with write_session(self.platform.engine) as s:
            r = s.get(Run, run_id)
            if r.status == "queued":
                r.status, r.stage, r.finished_at, r.error = "cancelled", "cancelled", _now(), "Cancelled by the user."
                s.add(r)
        return self.status(run_id)

    def _cancel_requested(self, run_id: str) -> bool:
        from distributed import Event

        return Event(cancel_event_name(run_id), client=self.platform.compute().client).is_set()

    def result_dir(self, run_id: str) -> Path:
        run = self.get(run_id)
        if run.status != "done":
            raise RunNotFinished(f"Run {run_id} is {run.status}; results exist once it is done.")
        return self.platform.artifacts.run_dir(run_id)

    def results(self, run_id: str, offset: int = 0, limit: int = 100) -> dict:
        """Metrics, confusion matrix, provenance and a page of per-cell predictions, from the run's files."""
        run = self.get(run_id)
        offset, limit = max(0, offset), max(0, min(limit, 10_000))
        page, total = self.page(run_id, offset, limit)
        classes = run.provenance.get("head", {}).get("classes", [])
        return {"run_id": run_id, "metrics": run.metrics, "classes": classes,
                "confusion_matrix": run.metrics.get("confusion_matrix"), "provenance": run.provenance,
                "predicted_counts": run.parameters.get("predicted_counts", {}),
                "cells": {"offset": offset, "limit": limit, "total": total,
                          "items": page.to_dict(orient="records")}}

    def page(self, run_id: str, offset: int, limit: int, columns: list[str] | None = None) -> tuple[pd.DataFrame, int]:
        """Rows ``offset`` to ``offset + limit`` of the per-cell predictions and the total: only the parquet row
        groups that hold them are read, so a page of a million-cell run costs what a page of a small one does."""
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(self.result_dir(run_id) / "predictions.parquet")
        meta = pf.metadata
        groups, first, start = [], None, 0
        for i in range(meta.num_row_groups):
            n = meta.row_group(i).num_rows
            if limit and start + n > offset and start < offset + limit:
                groups.append(i)
                first = start if first is None else first
            start += n
        if not groups:
            empty = pf.schema_arrow.empty_table()
            return (empty.select(columns) if columns else empty).to_pandas(), meta.num_rows
        table = pf.read_row_groups(groups, columns=columns)
        return table.slice(offset - first, limit).to_pandas(), meta.num_rows

    def cells(self, run_id: str, columns: list[str] | None = None) -> pd.DataFrame:
        """Per-cell predictions of a finished run (only the columns asked for are read). Labels come as
        categoricals (parquet's dictionary, not a string per cell: 10 million cells load in seconds, not minutes)."""
        import pyarrow.parquet as pq

        path = self.result_dir(run_id) / "predictions.parquet"
        available = pq.ParquetFile(path).schema_arrow.names
        wanted = [c for c in columns if c in available] if columns else available
        labels = [c for c in LABEL_COLUMNS if c in wanted]
        return pq.read_table(path, columns=wanted, read_dictionary=labels).to_pandas()

    def export(self, run_id: str, fmt: str) -> Path:
        """The annotated .h5ad, or the per-cell CSV (written once, atomically, from the predictions)."""
        folder = self.result_dir(run_id)
        if fmt == "h5ad":
            return folder / "annotated.h5ad"
        if fmt != "csv":
            raise InvalidRun(f"Unknown format {fmt!r}: choose h5ad or csv.")
        csv = folder / "predictions.csv"
        if not csv.exists():
            from store.artifacts import atomic_path

            with atomic_path(csv) as tmp:
                pd.read_parquet(folder / "predictions.parquet").to_csv(tmp, index=False)
        return csv

    def reconcile(self) -> int:
        """At start: runs left queued or running by a previous server are failed, never left running."""
        with write_session(self.platform.engine) as s:
            stale = list(s.exec(select(Run).where(Run.status.in_(ACTIVE))))
            for run in stale:
                run.status, run.stage, run.finished_at = "failed", "failed", _now()
                run.error = "Interrupted by a restart of the server before it finished; submit it again."
                s.add(run)
        for run in stale:
            shutil.rmtree(self.platform.artifacts.run_dir(run.id), ignore_errors=True)
        return len(stale)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class ModelCannotUse(InvalidRun):
    """A valid file the chosen model cannot use (too little vocabulary overlap)."""
