"""The Platform: one per server process, shared by every session (dashboard, REST API, notebook)."""

from __future__ import annotations

import atexit
import json
import logging
import threading
import time

from app.catalog import list_applications, list_models, seed_catalog
from app.lease import Lease
from app.settings import Settings
from app.weights import ensure_generated_weights, refresh_weights_status, weights_locations
from inference.cluster import Compute, start_compute
from store.artifacts import ArtifactStore
from store.engine import init_schema, make_engine
from store.tables import Application, ModelEntry

RETENTION_EVERY_S = 3600.0

log = logging.getLogger(__name__)

_shared: Platform | None = None
_shared_lock = threading.Lock()
PARTIALS_AGE_S = 3600  # a partial file untouched this long belongs to no live writer


class Platform:
    """Database, data home and Dask cluster behind every view and API call.

    The cluster starts in a background thread, so the first page is served while workers spawn. Constructing
    one changes nothing that other processes own: housekeeping (failing dead servers' runs, removing stale
    partial files) is ``start()``, which servers and the shared notebook Platform call, never the CLI.
    """

    def __init__(self, settings: Settings, start_cluster: bool = True) -> None:
        self.settings = settings
        if settings.tokens_file is not None:  # a malformed tokens file stops the start, with its line
            from app.users import read_tokens

            read_tokens(settings.tokens_file)
        self.artifacts = ArtifactStore(settings.home)
        self.engine = make_engine(settings.db_url)
        self.schema_version = init_schema(self.engine)
        seed_catalog(self.engine)
        self._compute: Compute | None = None
        self._compute_error: BaseException | None = None
        self._compute_ready = threading.Event()
        self._reconnect_lock = threading.Lock()
        self._described: tuple[float, dict] | None = None
        self._retention_stop: threading.Event | None = None
        self.weights = weights_locations(settings)
        if start_cluster:  # a server: make sure every model can run, with generated weights if need be
            try:
                ensure_generated_weights(settings, self.engine)
            except Exception:  # the catalog then says "missing" and how to stage weights
                log.exception("could not prepare generated weights")
        refresh_weights_status(self.engine, self.weights)
        from app.annotators import AnnotatorsService
        from app.builtin_annotators import install as install_builtin_annotators
        from app.runs import RunsService

        self.lease = Lease(self.engine, self.artifacts, settings.lease_s)
        self.runs = RunsService(self)
        self.annotators = AnnotatorsService(self)
        try:
            install_builtin_annotators(self)  # ready at first start, offline (app/builtin_annotators.py)
        except Exception:  # a damaged install must not keep the platform from starting; say so in the log
            log.exception("could not install the built-in annotators")
        self.datasets = self.runs.datasets
        if start_cluster:
            self._security = None
            if not settings.scheduler_address:
                # made here, not in the starting thread: importing cryptography there while this thread imports it
                # too (Panel's login cookies) once left a served instance's cluster never started (CI, a server
                # with --basic-auth: no scheduler log line, its run waiting for good)
                from inference.cluster import local_security

                self._security = local_security()
            threading.Thread(target=self._start_compute, name="start-dask", daemon=True).start()
        else:
            self._compute_error = RuntimeError("this process was started without a Dask cluster")
            self._compute_ready.set()

    def start(self) -> Platform:
        """Housekeeping of a process that serves runs: hold this instance's lease (a heartbeat), fail the runs
        of servers that are gone (now and at every beat), remove partial files no live writer can own (a dead
        process's of this host at once, others' once an hour old) and dataset files no row records (an hour old)."""
        log.info("settings in effect: %s", json.dumps(self.settings.public(), sort_keys=True))
        self.lease.start(reconcile=True)
        removed = self.artifacts.remove_partials(older_than_s=PARTIALS_AGE_S)
        if removed:
            log.warning("removed %d partial files left by an interrupted write", len(removed))
        stale = self.datasets.embeddings.remove_partials()  # writers gone: nobody holds their key's lock
        if stale:
            log.warning("removed %d half-written stored embeddings left by an interrupted run", len(stale))
        from app.lifecycle import recover, remove_orphan_datasets

        recover(self)  # deletions a dead process left half done
        remove_orphan_datasets(self)
        self._retention_stop = threading.Event()
        threading.Thread(target=self._housekeeping_loop, name="housekeeping", daemon=True).start()
        return self

    def _housekeeping_loop(self) -> None:
        """Every hour after start, until closed: remove dataset files no row records and partial files no
        live writer owns (a crash leaves them; a replica sharing the data home may be writing its own, which the age
        bounds spare), and, at start too, delete runs past the retention period when one is set."""
        from app.lifecycle import apply_retention, remove_orphan_datasets

        first = True
        while True:
            try:
                if not first:  # start() did these
                    remove_orphan_datasets(self)
                    self.artifacts.remove_partials(older_than_s=PARTIALS_AGE_S)
                if self.settings.retention_days:
                    apply_retention(self)
            except Exception:  # a failed sweep is retried at the next hour; the server keeps serving
                log.exception("housekeeping sweep failed")
            first = False
            if self._retention_stop.wait(RETENTION_EVERY_S):
                return

    @classmethod
    def shared(cls, settings: Settings | None = None) -> Platform:
        """The process-wide, started Platform (``panel serve`` runs the app script once per session)."""
        global _shared
        with _shared_lock:
            if _shared is None:
                _shared = cls(settings or Settings.from_env()).start()
                atexit.register(_shared.close)
            return _shared

    def _start_compute(self) -> None:
        s = self.settings
        try:
            self._compute = start_compute(s.scheduler_address, s.n_workers, s.threads_per_worker,
                                          s.worker_memory_limit, self._security)
        except BaseException as exc:  # reported to the user through compute_status
            log.exception("could not start or reach the Dask cluster")
            self._compute_error = exc
        finally:
            self._compute_ready.set()

    def compute(self, timeout: float | None = 120) -> Compute:
        """The Dask cluster, waiting for it to come up; raises with the reason if it could not."""
        if not self._compute_ready.wait(timeout):
            raise TimeoutError("The Dask cluster is still starting; try again in a moment.")
        if self._compute is None:
            where = self.settings.scheduler_address or "a LocalCluster"
            raise RuntimeError(f"The Dask cluster ({where}) is not available: {self._compute_error}")
        if self._compute.cluster is None and self._compute.client.status == "closed":
            self._reconnect()
        return self._compute

    def _reconnect(self) -> None:
        """An external scheduler was away longer than the client waits (30 s): connect a new client."""
        with self._reconnect_lock:
            if self._compute.client.status != "closed":
                return
            log.warning("reconnecting to the Dask scheduler at %s", self.settings.scheduler_address)
            try:
                self._compute = start_compute(self.settings.scheduler_address)
            except OSError as exc:
                raise RuntimeError(f"The Dask scheduler at {self.settings.scheduler_address} does not answer "
                                   f"({exc}); runs wait for it to come back.") from None

    def compute_status(self) -> dict[str, object]:
        """Cheap enough for every session's poll and the health probe: the client's own state first (a lost
        scheduler must not read as ready from a cached identity), the scheduler's figures at most once a second."""
        if not self._compute_ready.is_set():
            return {"state": "starting"}
        if self._compute is None:
            return {"state": "unavailable", "error": str(self._compute_error)}
        client_status = self._compute.client.status
        if client_status != "running":
            if client_status == "closed" and self._compute.cluster is None:
                threading.Thread(target=self._try_reconnect, name="dask-reconnect", daemon=True).start()
            where = self.settings.scheduler_address or "the LocalCluster"
            return {"state": "unavailable", "error": f"lost the Dask scheduler at {where} (client {client_status});"
                                                     " reconnecting"}
        now = time.monotonic()
        if self._described is None or now - self._described[0] > 1.0:
            self._described = (now, self._compute.describe())
        return {"state": "ready", **self._described[1]}

    def _try_reconnect(self) -> None:
        if self._reconnect_lock.locked():
            return
        try:
            self._reconnect()
        except RuntimeError as exc:
            log.info("%s", exc)

    def applications(self) -> list[Application]:
        return list_applications(self.engine)

    def models(self, application_id: str | None = None) -> list[ModelEntry]:
        return list_models(self.engine, application_id)

    def close(self) -> None:
        if self._retention_stop is not None:
            self._retention_stop.set()
        self.lease.stop()
        self.runs.close()
        self._compute_ready.wait(60)
        if self._compute is not None:
            try:
                self._compute.close()
            except Exception:  # closing at exit: nothing left to tell
                log.debug("error while closing the Dask cluster", exc_info=True)
            self._compute = None
        self.engine.dispose()
