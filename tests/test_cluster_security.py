"""The LocalCluster the platform starts admits only this process and its workers (mutual TLS with credentials made
in memory, inference/cluster.py local_security): another local account's Dask client, with no certificate, a plain
tcp:// connection or a certificate of its own making, is refused, while the platform's own client still runs work."""

from __future__ import annotations

import socket
import ssl

import pytest
from distributed import Client
from distributed.security import Security

from inference.cluster import start_compute
from tests.reliability import record


@pytest.fixture(scope="module")
def compute():
    c = start_compute(None, n_workers=1, threads_per_worker=1, memory_limit="1GiB")
    yield c
    c.close()


def _refused(address: str, security: Security | None) -> str:
    """Try to connect as an outsider would; the error text when refused, '' when let in."""
    if security is None and address.startswith("tls://"):  # distributed itself will not try TLS without a context
        return _raw_tls_refused(address)
    try:
        client = Client(address, security=security, timeout="3s")
    except (OSError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {str(exc)[:100]}"
    try:  # let in: prove it by running code on the cluster, as an attacker would
        client.submit(sum, [1, 2]).result(timeout=10)
    finally:
        client.close()
    return ""


def _raw_tls_refused(address: str) -> str:
    """A TLS connection that offers no client certificate (and trusts any server), then a Dask frame."""
    host, port = address.removeprefix("tls://").rsplit(":", 1)
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection((host, int(port)), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
            tls.sendall(b"\x00" * 16)
            data = tls.recv(1)
    except TimeoutError:  # held open and listening: not refused
        return ""
    except (ssl.SSLError, OSError) as exc:
        return f"{type(exc).__name__}: {str(exc)[:100]}"
    return "" if data else "closed by the scheduler"


def test_the_local_scheduler_speaks_tls_and_the_platform_still_runs_work(compute, request):
    address = compute.client.scheduler.address
    assert address.startswith("tls://127.0.0.1:"), address
    assert compute.client.submit(lambda x: x + 1, 41).result(timeout=60) == 42
    workers = compute.client.scheduler_info()["workers"]
    assert workers and all(w.startswith("tls://") for w in workers)
    record("security", "The LocalCluster's scheduler (any local account can reach 127.0.0.1)",
           "the platform's own client submits a task", f"{address.split(':')[0]}:// scheduler and workers; the "
           "task ran", "the platform's runs go on", request.node.nodeid)


@pytest.mark.parametrize("how", ["no certificate", "plain tcp", "a self-made certificate"])
def test_an_outsider_client_cannot_connect_to_the_local_scheduler(compute, how, request):
    address = compute.client.scheduler.address
    assert address.startswith("tls://"), f"the scheduler at {address} takes plain connections"
    if how == "plain tcp":
        address, security = address.replace("tls://", "tcp://"), None
    elif how == "a self-made certificate":
        security = Security.temporary()  # valid TLS, but not signed by the cluster's own key
    else:
        security = None
    refusal = _refused(address, security)
    assert refusal, f"a client with {how} connected to {address} and ran code"
    assert compute.client.submit(sum, [2, 3]).result(timeout=60) == 5  # the cluster is unharmed
    record("security", "The LocalCluster's scheduler (any local account can reach 127.0.0.1)",
           f"distributed.Client({address.split('://')[0]}://127.0.0.1:<port>) with {how}", f"refused ({refusal})",
           "no code sent by another process ran; the platform's client still works", request.node.nodeid)
