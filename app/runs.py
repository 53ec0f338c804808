"""The runs service: submit (returns at once), status, cancel; the work goes to Dask.

It knows no application by name: ``inference.applications`` says what a submission needs and what runs where.
Each run's model phase goes to its model's actor (``app/actor_pool.py``: created on first use, kept loaded);
the CPU phase (layout, files) is a plain task on any worker. A thread per run waits for Dask, so nothing here
blocks a web server's event loop; progress arrives as worker events, and ``app/run_records.py`` writes it
and each outcome to the run's row. Failures get a kind where they are caught (``app/failures.py``); results are read by
``app/run_results.py``.
"""

from __future__ import annotations

import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from sqlmodel import select

from app.actor_pool import ActorPool
from app.datasets import CheckReport, DatasetService, NotFound
from app.failures import FailureKind, classify, message
from app.run_records import RunRecords, now
from app.run_results import ResultsReader, RunNotFinished
from app.users import Forbidden, User
from inference import applications
from inference.actors import cancel_event_name, finish_run
from inference.applications.base import (
    Accepted,
    AnnotatorInfo,
    DatasetInfo,
    ModelCannotUse,
    ModelInfo,
    RunRequest,
    SubmissionError,
)
from inference.backends import requires_gpu
from inference.backends.base import Cancelled
from inference.devices import GpuRequired, choose_device
from inference.reference import MIN_CELLS_PER_TYPE as MIN_CELLS_PER_TYPE  # the run form says it
from store.artifacts import new_id, validate_uuid4
from store.engine import lock_key, read_session, write_session
from store.tables import ACTIVE, Application, Dataset, ModelEntry, Run, RunStatus

log = logging.getLogger(__name__)
CLUSTER_START_WAIT_S = 1800.0  # how long a queued run waits for the Dask cluster to come up

InvalidRun = SubmissionError  # the name the service's callers know
__all__ = ["InvalidRun", "ModelCannotUse", "RunNotFinished", "RunsService", "TooManyRuns"]


class TooManyRuns(InvalidRun):
    """A user with ``HELICAL_PLATFORM_MAX_QUEUED_RUNS`` runs queued or running submits more (REST: 429): one user
    must not fill the cluster's queue for everyone else."""


def check_cancel(who: User | None, run: Run) -> None:
    """Refuse (``Forbidden``) when ``who`` may not cancel ``run``: the rule of deletion (its maker or an admin;
    ``None``: the local command line or the server itself)."""
    if who is None or who.may_delete(run.created_by):
        return
    owner = run.created_by or "no recorded user (submitted before users were recorded)"
    raise Forbidden(f"Run {run.id[:8]} belongs to {owner}: only they or an admin (HELICAL_PLATFORM_ADMINS) may "
                    "cancel it.")


def _result(future, client):  # noqa: ANN001, ANN202 - a distributed Future or ActorFuture
    """Wait for ``future``, but give up as soon as the client loses the scheduler: an actor call talks to its
    worker directly and would otherwise wait out every connection retry (minutes) before failing.

    It polls ``done()`` and asks for the result only once there is one: ``result(timeout=...)`` in a loop
    (distributed 2026.8) could end a wait that was timing out just as the result came with UnboundLocalError
    from ``distributed.utils.sync``, and failed a finished run (seen once in the whole suite)."""
    pause = 0.01
    while not future.done():
        if client.status != "running":
            raise ConnectionError("Client lost the connection to the scheduler "
                                  f"(scheduler-connection-lost; client {client.status})")
        time.sleep(pause)
        pause = min(pause * 2, 0.25)
    return future.result()


def truth_ontology(request: RunRequest, truth_column: str | None, given: object) -> dict | None:
    """The term of each true label a run's class-level scores use (``inference.ontology.truth_terms``: ``given``,
    else the annotator's, else suggested), recorded in the run's parameters so the mapping is visible; None when
    the run has no class level (no truth column, or labels from no annotator mapping them to the Cell Ontology).
    ``given`` (label -> CL id or None) is refused where it cannot apply, and when malformed."""
    from inference.ontology import OntologyError, truth_terms

    annotator = request.annotator
    classes = bool(annotator is not None and any(annotator.ontology.values()))
    if given is not None:
        if not isinstance(given, dict) or not all(
                isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in given.items()):
            raise InvalidRun("truth_ontology must map true labels to Cell Ontology ids (or null: unmapped), e.g. "
                             '{"CD4 T cells": "CL:0000624"}.')
        if not classes or not truth_column:
            raise InvalidRun("truth_ontology maps the truth column's labels for the cell-class scores: give it with "
                             "a truth column and a saved annotator whose labels map to Cell Ontology terms.")
    if not classes or not truth_column:
        return None
    labels = CheckReport(request.query.check_report).label_columns.get(truth_column) or {}
    try:
        return truth_terms(labels, given, annotator.ontology)  # type: ignore[union-attr]
    except OntologyError as exc:
        raise InvalidRun(str(exc)) from None


def reference_sample(class_counts: dict[str, int], max_cells: int | None, evaluation: bool = False) -> dict:
    """What a head would train on, before a run: the labelled cells, those trained on, the types and the per-type
    minimum that can take a sample past the cap (``inference.reference.sample_sizes``); ``evaluation``: the
    query's training split is what is sampled."""
    from inference.pipeline import training_counts
    from inference.reference import sample_sizes

    counts = training_counts(class_counts) if evaluation else dict(class_counts)
    total, cap = sum(counts.values()), int(max_cells or 0)
    trained = sum(sample_sizes(counts, cap or None).values())
    return {"labelled_cells": total, "trained_cells": trained, "types": len(counts), "max_cells": cap,
            "sampled": bool(cap) and total > cap,
            "min_per_type": min(MIN_CELLS_PER_TYPE, cap // max(1, len(counts))) if cap else 0}


def with_truth_ontology[J](job: J, terms: dict | None) -> J:
    """The job with the recorded truth map (label -> CL id) where its application scores cell classes."""
    from dataclasses import fields, is_dataclass, replace

    from inference.ontology import term_ids

    if not terms or not is_dataclass(job) or "truth_ontology" not in {f.name for f in fields(job)}:
        return job
    return replace(job, truth_ontology=term_ids(terms))  # type: ignore[type-var]


class RunsService:
    def __init__(self, platform) -> None:  # noqa: ANN001 - app.platform.Platform
        self.platform = platform
        self.datasets = DatasetService(platform)
        self.records = RunRecords(platform.engine, platform.artifacts)
        self.workers = self.records.workers  # run id -> the worker process now running it (from its events)
        self.actors = ActorPool(platform, on_progress=self.records.progress)
        self.reader = ResultsReader(platform.artifacts, self.get)
        self._executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="run")
        self._started: dict[str, float] = {}

    # ---- submission -------------------------------------------------------------------------------------
    def _dataset_info(self, ds: Dataset) -> DatasetInfo:
        return DatasetInfo(ds.id, ds.file_name, str(self.datasets.path(ds)), ds.sha256, int(ds.n_cells or 0),
                           ds.check_report)

    def _request(self, model: ModelEntry, query: Dataset, reference: Dataset | None, label_column: str | None,
                 truth_column: str | None, options: dict, annotator: str | None = None) -> RunRequest:
        return RunRequest(ModelInfo(model.id, model.name, model.backend), self._dataset_info(query),
                          self._dataset_info(reference) if reference else None, label_column, truth_column,
                          options, self._annotator_info(annotator) if annotator else None)

    def _annotator_info(self, id_or_name: str) -> AnnotatorInfo:
        return self.platform.annotators.use(id_or_name)

    def submit(self, application_id: str, model_id: str, dataset_id: str, reference_id: str | None = None,
               label_column: str | None = None, truth_column: str | None = None,
               options: dict | None = None, annotator: str | None = None, user: User | None = None) -> Run:
        """Validate, record the run as queued (``user`` as its maker) and return it at once; the work starts in
        the background. ``annotator`` (an id or name) stands in for a reference: its saved head labels the query."""
        run = self._prepare(application_id, model_id, dataset_id, reference_id, label_column, truth_column,
                            options, annotator)
        run.created_by = user.name if user else None
        return self._record([run])[0]

    def submit_group(self, application_id: str, model_ids: list[str], dataset_id: str,
                     reference_id: str | None = None, label_column: str | None = None,
                     truth_column: str | None = None, options: dict | None = None,
                     user: User | None = None) -> list[Run]:
        """One run per model, sharing a group id so they are shown together; every model's submission is checked
        before any is recorded (all or nothing)."""
        models = list(dict.fromkeys(m for m in model_ids if m))
        if not models:
            raise InvalidRun("Give one or more models.")
        group = new_id()
        runs = [self._prepare(application_id, m, dataset_id, reference_id, label_column, truth_column, options,
                              None, group) for m in models]
        for run in runs:
            run.created_by = user.name if user else None
        return self._record(runs)

    def group(self, group_id: str) -> list[Run]:
        """The runs submitted together, in submission order."""
        validate_uuid4(group_id, "group id")
        with read_session(self.platform.engine) as s:
            runs = list(s.exec(select(Run).where(Run.group_id == group_id).order_by(Run.created_at)))
        if not runs:
            raise NotFound(f"No run group {group_id}.")
        return runs

    def _record(self, runs: list[Run]) -> list[Run]:
        self.platform.lease.start(reconcile=False)  # this process owns the run while its heartbeat lasts
        with write_session(self.platform.engine) as s:
            self._check_queue(s, runs)
            for run in runs:
                run.owner = self.platform.lease.instance_id
                s.add(run)
        for run in runs:
            self._executor.submit(self._execute, run.id)
        return runs

    def _check_queue(self, s, runs: list[Run]) -> None:  # noqa: ANN001 - a write session
        """``TooManyRuns`` when the submitter would hold more than ``max_queued_runs`` queued or running runs;
        counted in the transaction that records them, under the user's lock (two replicas take turns)."""
        name, cap = runs[0].created_by, self.platform.settings.max_queued_runs
        if name is None or not cap:
            return
        lock_key(s, f"runs:{name}")
        active = len(list(s.exec(select(Run.id).where(Run.created_by == name,
                                                      Run.status.in_([str(a) for a in ACTIVE])))))
        if active + len(runs) > cap:
            raise TooManyRuns(
                f"{name} has {active} run(s) queued or running; at most {cap} per user "
                f"(HELICAL_PLATFORM_MAX_QUEUED_RUNS), and this submission adds {len(runs)}. Wait for some to finish "
                "or cancel them (POST /api/runs/{id}/cancel), then submit again.")

    def _prepare(self, application_id: str, model_id: str, dataset_id: str, reference_id: str | None,
                 label_column: str | None, truth_column: str | None, options: dict | None,
                 annotator: str | None, group_id: str | None = None) -> Run:
        """A validated, not yet recorded run."""
        options = dict(options or {})
        given = options.pop("truth_ontology", None)
        with read_session(self.platform.engine) as s:
            app_row = s.get(Application, application_id)
            model = s.get(ModelEntry, model_id)
        if app_row is None or application_id not in applications.REGISTRY:
            raise NotFound(f"No application {application_id!r}.")
        if model is None:
            raise NotFound(f"No model {model_id!r}.")
        if application_id not in model.applications:
            raise InvalidRun(f"{model.name} does not serve {app_row.name}.")
        self._check_gpu(model)  # first: weights would not help a GPU-only model on a cluster without a GPU
        if model.weights_status == "missing":
            raise InvalidRun(f"{model.name} has no weights: {model.weights_detail}")
        variant = options.get("variant")
        if variant and model.variant:  # a model with variants: the one asked for must have weights
            status, detail = self.platform.weights.status(model.backend, variant)
            if status == "missing":
                raise InvalidRun(f"{model.name} {variant} has no weights: {detail}")
        query = self.datasets.gated(self.datasets.get(dataset_id))
        reference = self.datasets.gated(self.datasets.get(reference_id)) if reference_id else None
        request = self._request(model, query, reference, label_column, truth_column, options, annotator)
        accepted = applications.get(application_id).validate(request)
        params = {"variant": variant or model.variant or None, **accepted.parameters,
                  "weights": model.weights_status}
        terms = truth_ontology(request, accepted.truth_column, given)
        if terms is not None:
            params["truth_ontology"] = terms
        return Run(id=new_id(), application_id=application_id, model_id=model_id, dataset_id=query.id,
                   reference_dataset_id=reference.id if reference else None, label_column=accepted.label_column,
                   truth_column=accepted.truth_column, status=RunStatus.QUEUED, stage="queued",
                   cells_total=accepted.cells_total, parameters=params, group_id=group_id)

    def _check_gpu(self, model: ModelEntry) -> None:
        """A GPU-only model on a cluster whose workers have no GPU is refused now, not after it is queued. A
        cluster still starting is not waited for: the actor pool refuses such a run with the same message."""
        if not requires_gpu(model.backend):
            return
        status = self.platform.compute_status()
        if status.get("state") != "ready":
            return
        try:
            choose_device(self.platform.settings.device, int(status.get("gpus") or 0), True, model.name)
        except GpuRequired as exc:
            raise InvalidRun(str(exc)) from None

    # ---- execution --------------------------------------------------------------------------------------
    def _job(self, run: Run, run_dir: Path) -> object:
        """The worker's job for a recorded run, built by its application from the recorded submission."""
        with read_session(self.platform.engine) as s:
            model = s.get(ModelEntry, run.model_id)
        query = self.datasets.get(run.dataset_id)
        reference = self.datasets.get(run.reference_dataset_id) if run.reference_dataset_id else None
        request = self._request(model, query, reference, run.label_column, run.truth_column, run.parameters,
                                (run.parameters.get("annotator") or {}).get("id"))
        app = applications.get(run.application_id)
        accepted = Accepted(run.parameters, run.label_column, run.truth_column, run.cells_total)
        return with_truth_ontology(app.job(request, accepted, run_dir, self.platform.artifacts.home),
                                   run.parameters.get("truth_ontology"))

    def truth_terms(self, dataset_id: str, truth_column: str, annotator: str | None = None,
                    given: dict | None = None) -> dict[str, dict]:
        """The Cell Ontology term each true label of ``truth_column`` would be scored with at the class level
        (``truth_ontology``'s rule), for the run form to offer for confirmation."""
        from inference.ontology import OntologyError, truth_terms

        query = self.datasets.get(dataset_id)
        labels = CheckReport(query.check_report).label_columns.get(truth_column) or {}
        ontology = self._annotator_info(annotator).ontology if annotator else {}
        try:
            return truth_terms(labels, given, ontology)
        except OntologyError as exc:
            raise InvalidRun(str(exc)) from None

    def _execute(self, run_id: str) -> None:
        actor_key = None
        run_dir = self.platform.artifacts.run_dir(run_id)
        staging = self.platform.artifacts.staging_dir(run_id)
        try:
            # a run queued while the cluster starts waits for it (a loaded machine can take minutes): only a start
            # that failed, or one past CLUSTER_START_WAIT_S, fails the run
            compute = self.platform.compute(timeout=CLUSTER_START_WAIT_S)
            self.actors.subscribe()
            with write_session(self.platform.engine) as s:
                run = s.get(Run, run_id)
                if run.status != RunStatus.QUEUED:
                    return
                run.status, run.stage, run.started_at = RunStatus.RUNNING, "starting", now()
                s.add(run)
                model = s.get(ModelEntry, run.model_id)
            self._started[run_id] = time.monotonic()
            job = self._job(run, run_dir)
            actor_key, actor = self.actors.actor_for(model, run.parameters.get("variant"))
            summary = _result(actor.run(run.application_id, job, run_id, str(staging)), compute.client)
            if self._cancel_requested(run_id):
                raise Cancelled("cancelled by the user")
            outcome = _result(compute.client.submit(finish_run, run.application_id, job, run_id, str(staging),
                                                    pure=False), compute.client)
            self.records.finish(run_id, RunStatus.DONE, outcome=outcome, device=summary["device"])
        except Exception as exc:  # reported on the run with its kind; the server carries on
            self._fail(run_id, exc, actor_key, run_dir, staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            self._started.pop(run_id, None)
            self.workers.pop(run_id, None)

    def _fail(self, run_id: str, exc: Exception, actor_key: str | None, run_dir: Path, staging: Path) -> None:
        kind = classify(exc, scheduler_gone=not isinstance(exc, SubmissionError) and self._scheduler_lost())
        if kind is FailureKind.SCHEDULER_LOST:
            self.actors.clear()
            log.warning("run %s lost the Dask scheduler: %s", run_id, exc)
        elif kind is FailureKind.DISK_FULL:
            log.error("run %s: disk full: %s", run_id, exc)
            shutil.rmtree(staging, ignore_errors=True)  # free what this run took before recording it
        elif kind is FailureKind.WORKER_LOST and actor_key:
            self.actors.forget(actor_key)
        elif kind is FailureKind.INTERNAL:
            log.error("run %s failed", run_id, exc_info=exc)
        if kind is not FailureKind.USER_ERROR:
            shutil.rmtree(run_dir, ignore_errors=True)
        status = RunStatus.CANCELLED if kind is FailureKind.CANCELLED else RunStatus.FAILED
        self.records.finish(run_id, status, error=message(kind, exc, str(run_dir)), kind=kind)

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
        if run.status == RunStatus.RUNNING and started and run.progress > 0.05:
            elapsed = time.monotonic() - started
            eta = round(elapsed / run.progress * (1 - run.progress), 1)
        return {"run_id": run.id, "status": run.status, "stage": run.stage, "progress": run.progress,
                "cells_done": run.cells_done, "cells_total": run.cells_total, "eta_s": eta, "error": run.error,
                "device": run.device, "model": run.model_id}

    def list(self, limit: int = 200) -> list[Run]:
        with read_session(self.platform.engine) as s:
            return list(s.exec(select(Run).order_by(Run.created_at.desc()).limit(limit)))

    def cancel(self, run_id: str, user: User | None = None) -> dict:
        """Cancel a queued or running run; another user's only for an admin (``user`` None: the server, the local
        command line or a notebook in this process)."""
        run = self.get(run_id)
        check_cancel(user, run)
        if run.status not in ACTIVE:
            return self.status(run_id)
        from distributed import Event

        Event(cancel_event_name(run_id), client=self.platform.compute().client).set()
        with write_session(self.platform.engine) as s:
            r = s.get(Run, run_id)
            if r.status == RunStatus.QUEUED:
                r.status, r.stage, r.finished_at = RunStatus.CANCELLED, RunStatus.CANCELLED, now()
                r.error = "Cancelled by the user."
                s.add(r)
        return self.status(run_id)

    def delete(self, run_id: str, user: User | None = None) -> dict:
        """Delete a finished run, its row and folder (``app/lifecycle.py``); a queued or running one is refused,
        and another user's unless ``user`` is an admin."""
        from app.lifecycle import delete_run

        return delete_run(self.platform, run_id, user)

    def _cancel_requested(self, run_id: str) -> bool:
        from distributed import Event

        return Event(cancel_event_name(run_id), client=self.platform.compute().client).is_set()

    # ---- results (app/run_results.py) ---------------------------------------------------------------------
    def result_dir(self, run_id: str) -> Path:
        return self.reader.result_dir(run_id)

    def results(self, run_id: str, offset: int = 0, limit: int = 100, probabilities: bool = False) -> dict:
        return self.reader.results(run_id, offset, limit, probabilities)

    def page(self, run_id: str, offset: int, limit: int, columns: list[str] | None = None) -> tuple[pd.DataFrame, int]:
        return self.reader.page(run_id, offset, limit, columns)

    def cells(self, run_id: str, columns: list[str] | None = None) -> pd.DataFrame:
        return self.reader.cells(run_id, columns)

    def export(self, run_id: str, fmt: str) -> Path:
        return self.reader.export(run_id, fmt)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
