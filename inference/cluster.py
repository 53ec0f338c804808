"""The Dask side: connect to a configured scheduler, or start a LocalCluster of worker processes.

The LocalCluster speaks mutual TLS with credentials made in memory at its start (``local_security``): a Dask
scheduler runs whatever code a connected client sends, and on a shared host every account can reach 127.0.0.1.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin
from distributed.security import Security

log = logging.getLogger(__name__)


@dataclass
class Compute:
    """A client, and the LocalCluster behind it when the platform started one itself."""

    client: Client
    cluster: LocalCluster | None = None

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def describe(self) -> dict[str, object]:
        info = self.client.scheduler_info()
        workers = info.get("workers", {})
        return {
            "kind": "LocalCluster (started by the platform)" if self.cluster else "existing scheduler",
            "scheduler": info.get("address", ""),
            "workers": len(workers),
            "threads": sum(w.get("nthreads", 0) for w in workers.values()),
            "gpus": sum(w.get("resources", {}).get("GPU", 0) for w in workers.values()),
            "dashboard": self.client.dashboard_link,
        }


WORKER_NICENESS = 10


class YieldToServer(WorkerPlugin):
    """Local worker processes run at a lower CPU priority than the web server that started them.

    On a small machine the workers keep every core busy during a run; at equal priority the server's event loop
    (every dashboard session and API call) then waits for CPU. Absolute, so a re-run of ``setup`` adds nothing.
    """

    name = "helical-platform-yield-to-server"

    def __init__(self, niceness: int = WORKER_NICENESS) -> None:
        self.niceness = niceness

    def setup(self, worker) -> None:  # noqa: ANN001 - distributed.Worker
        try:
            os.setpriority(os.PRIO_PROCESS, 0, max(self.niceness, os.getpriority(os.PRIO_PROCESS, 0)))
        except OSError:  # not permitted here: run at the normal priority
            log.debug("could not lower the worker's priority", exc_info=True)


class ImportFirst(WorkerPlugin):
    """Import scikit-learn once when a worker starts, before any task (about a second; umap-learn, which compiles
    with numba at import, is left to the first run).

    A worker runs a model's actor and CPU tasks in different threads. Two threads importing scikit-learn for the
    first time at once can meet inside its circular imports and one gets ``ImportError: cannot import name … from
    partially initialized module`` (seen in CI: scib-metrics, importing umap and so scikit-learn, in an
    integration's CPU task while the actor's thread imported scikit-learn). Imported whole first, it is never
    partially initialised again."""

    name = "helical-platform-import-first"

    def setup(self, worker) -> None:  # noqa: ANN001 - distributed.Worker
        try:
            import sklearn.base  # noqa: F401
        except Exception:  # a worker without it fails its runs with the import's own message
            log.warning("could not pre-import scikit-learn", exc_info=True)


def local_security() -> Security:
    """Mutual TLS for a LocalCluster, from a key and self-signed certificate made now, in this process's memory.

    Why TLS and not a firewall or a Unix socket: the scheduler, its workers and their nannies listen on TCP ports of
    127.0.0.1, which every local account can reach, and a Dask scheduler runs the code any connected client sends
    (as the server's account: its data home, its tokens file, its database). With ``Security.temporary()`` every
    listener asks for a certificate signed by this key and every connection is encrypted: the key exists only in
    this process and is handed to the worker processes it spawns (through the nanny's pipe, not the command line or
    the environment), so another account's ``distributed.Client("tls://127.0.0.1:<port>")`` fails the handshake
    and a plain ``tcp://`` client is refused. It needs ``cryptography``. A scheduler the deployment runs itself
    (``DASK_SCHEDULER_ADDRESS``) is secured by its own Dask configuration (``distributed.comm.tls``), which the
    client reads."""
    return Security.temporary()


def start_compute(
    scheduler_address: str | None,
    n_workers: int = 2,
    threads_per_worker: int = 1,
    memory_limit: str = "auto",
    security: Security | None = None,
) -> Compute:
    """Connect to ``scheduler_address``, or start a LocalCluster of worker processes when it is None.

    Worker processes import the installed packages, never the server's working directory, so a spawned
    worker finds the same code whatever folder ``panel serve`` was started from.
    """
    if scheduler_address:
        log.info("connecting to the Dask scheduler at %s", scheduler_address)
        client = Client(scheduler_address, timeout="30s")
        client.register_plugin(ImportFirst())
        return Compute(client)
    cluster = LocalCluster(
        n_workers=n_workers,
        threads_per_worker=threads_per_worker,
        processes=True,
        memory_limit=memory_limit,
        security=security or local_security(),  # only this process and the workers it spawns connect (see there)
        dashboard_address="127.0.0.1:0",  # Dask's own dashboard: this machine only (any origin may use its websocket)
    )
    client = Client(cluster)
    client.register_plugin(YieldToServer())
    client.register_plugin(ImportFirst())
    log.info("started a LocalCluster of %s worker processes (CPU priority %d)", n_workers, WORKER_NICENESS)
    return Compute(client, cluster)
