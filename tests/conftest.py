"""Shared fixtures: every test gets its own data home and SQLite file under pytest's tmp_path."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

# numba's compiled kernels (umap-learn's and pynndescent's, inference/numba_cache.py) in one folder for the session,
# set before anything imports numba: each served instance, worker, command line and kernel the tests start reads
# them instead of compiling them again, and no run of the suite reads what an earlier one left.
if "NUMBA_CACHE_DIR" not in os.environ:
    os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="helical-platform-numba-")
    atexit.register(shutil.rmtree, os.environ["NUMBA_CACHE_DIR"], True)

from app.settings import Settings

REPO = Path(__file__).resolve().parents[1]
TEST_OUTPUT = Path(os.environ.get("HELICAL_PLATFORM_TEST_OUTPUT", REPO / "test-output"))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env({"HELICAL_PLATFORM_HOME": str(tmp_path / "home")})


@pytest.fixture
def platform(settings: Settings):
    from app.platform import Platform

    p = Platform(settings, start_cluster=False)
    yield p
    p.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DATA = REPO / "tests" / "data"
PBMC = DATA / "pbmc3k_subset.h5ad"
TINY_VARIANTS = ["gf-6L-10M-i2048", "gf-12L-38M-i4096"]


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """Tiny untrained checkpoints in helical's layout: v1 (pytorch_model.bin), v2 (safetensors), scGPT."""
    from inference.checkpoints import generate

    root = tmp_path_factory.mktemp("tiny-weights")
    generate(root, "tiny", TINY_VARIANTS, scgpt=True, seed=0)
    return root


@pytest.fixture(scope="session")
def pbmc_small():
    """60 real PBMCs (raw counts, all 32,738 genes) from the shipped subset."""
    import anndata as ad

    adata = ad.read_h5ad(PBMC)
    return adata[::10].copy()


@pytest.fixture
def tiny_locations(tiny_weights, tmp_path):
    from inference.weights import WeightsLocations

    return WeightsLocations(staged=tmp_path / "staged", generated=tiny_weights,
                            helical_cache=tmp_path / "helical-cache")


def refuse_network(monkeypatch) -> list[object]:  # noqa: ANN001 - a pytest MonkeyPatch
    """Fail any socket connection or name lookup from now on (until ``monkeypatch`` undoes it); returns the list
    the attempts are recorded in."""
    attempts: list[object] = []

    def refuse_connect(self, address):  # noqa: ANN001
        attempts.append(address)
        raise OSError(f"network disabled in this test (tried {address})")

    def refuse_lookup(*args, **kwargs):  # noqa: ANN002, ANN003
        attempts.append(args[:2])
        raise socket.gaierror(f"name lookup disabled in this test ({args[:2]})")

    monkeypatch.setattr(socket.socket, "connect", refuse_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse_connect)
    monkeypatch.setattr(socket, "getaddrinfo", refuse_lookup)
    return attempts


@pytest.fixture
def no_network(monkeypatch):
    """Fail any socket connection or name lookup, and record the attempts."""
    return refuse_network(monkeypatch)


MARKERS = {
    "browser": "drives Debian's chromium (Playwright) through a served page",
    "served": "uses a `make serve` instance (a subprocess with its own Dask cluster)",
    "postgres": "uses the session's throwaway PostgreSQL cluster",
    "faults": "starts, kills or restarts processes of its own (SIGKILL, replicas, load): that is what it tests",
    "slow": "over ~30 s alone on a 2-core machine (model runs, UMAPs, integration metrics, browser flows)",
    "gpu": "needs a CUDA device; skipped where torch sees none",
}


def pytest_configure(config) -> None:  # noqa: ANN001
    for name, meaning in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {meaning}")


def _calls(func: object, name: str) -> bool:
    import inspect

    try:
        return f"{name}(" in inspect.getsource(func)
    except (OSError, TypeError):
        return False


def pytest_collection_modifyitems(config, items) -> None:  # noqa: ANN001
    """Markers that follow from what a test uses, so that none is forgotten: ``browser`` where the test or one of
    its fixtures opens a browser page, ``served`` where one starts ``make serve``, ``postgres`` where it asks for
    the PostgreSQL cluster (or is a parametrised test's ``postgresql`` case). ``gpu`` tests are skipped without
    CUDA. ``faults`` and ``slow`` are set by hand."""
    cuda = None
    for item in items:
        funcs = [getattr(item, "function", None)]
        funcs += [d.func for defs in item._fixtureinfo.name2fixturedefs.values() for d in defs]
        if any(_calls(f, "browser_page") for f in funcs):
            item.add_marker(pytest.mark.browser)
        if "shared_servers" in item.fixturenames or any(_calls(f, "make_serve") for f in funcs):
            item.add_marker(pytest.mark.served)
        params = getattr(item, "callspec", None)
        if {"postgres_url", "postgres_cluster"} & set(item.fixturenames) or (
                params is not None and "postgresql" in map(str, params.params.values())):
            item.add_marker(pytest.mark.postgres)
        if item.get_closest_marker("gpu") is not None:
            if cuda is None:
                import torch

                cuda = torch.cuda.is_available()
            if not cuda:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)"))


def pytest_sessionstart(session) -> None:  # noqa: ANN001
    from tests import reliability

    reliability.clear()


def pytest_sessionfinish(session, exitstatus) -> None:  # noqa: ANN001
    from tests import reliability

    reliability.write_report(passed=exitstatus == 0)


TOKEN_SERVER_ENV = {  # one served instance for the REST and browser modules that need only the API token
    "HELICAL_PLATFORM_API_TOKEN": "test-token-1234",  # tests/api_client.TOKEN
    "HELICAL_PLATFORM_WORKERS": "2",
    "HELICAL_PLATFORM_MAX_UPLOAD_MB": "400",
    "HELICAL_PLATFORM_CHECK_MEMORY_MB": "2048",
    "HELICAL_PLATFORM_TEST_ENV_SECRET": "ENVSECRET-77e2b1",  # must never come back in any answer (hostile files)
}


@pytest.fixture(scope="session")
def shared_servers(tmp_path_factory):
    """Served instances shared by every module of the session that asks for the same configuration."""
    from tests.serving import SharedServers

    servers = SharedServers(tmp_path_factory.mktemp("shared-servers"))
    try:
        yield servers
    finally:
        servers.close()


@pytest.fixture(scope="session")
def token_server(shared_servers):
    """The shared instance with the API token (``TOKEN_SERVER_ENV``)."""
    return shared_servers.get("token", TOKEN_SERVER_ENV)


@pytest.fixture(scope="session")
def dask_scheduler() -> str:
    """One warm Dask cluster for the session's in-process platforms: two worker processes on 127.0.0.1 with the
    platform's worker plugins, reached through ``DASK_SCHEDULER_ADDRESS`` as a deployment reaches its own cluster
    (SLURM, Kubernetes). Its workers import torch and helical once for every module that uses it. Tests that kill
    workers, count them, or check the LocalCluster the platform starts itself keep their own."""
    from distributed import Client, LocalCluster

    from inference.cluster import ImportFirst, YieldToServer

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None)
    try:
        with Client(cluster) as client:
            client.register_plugin(YieldToServer())
            client.register_plugin(ImportFirst())
        yield cluster.scheduler_address
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def postgres_cluster():
    """A throwaway PostgreSQL cluster (tests/postgres.py), started on first use and stopped at the session's end,
    even after failures. Missing server binaries fail the test that asks for it, naming what to install."""
    from tests.postgres import PostgresCluster, PostgresUnavailable

    try:
        cluster = PostgresCluster().start()  # a failed start removes what it made
    except PostgresUnavailable as exc:
        missing = str(exc)
    else:
        missing = None
    if missing:  # fail, never skip: CI installs postgresql (.ci/run)
        pytest.fail(missing, pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()  # pg_ctl stop -m immediate, then its folder goes


@pytest.fixture
def postgres_url(postgres_cluster, request) -> str:
    """A fresh, empty database on the session's PostgreSQL cluster, dropped after the test: its SQLAlchemy URL."""
    url = postgres_cluster.create_database(request.node.name)
    yield url
    postgres_cluster.drop_database(url)
