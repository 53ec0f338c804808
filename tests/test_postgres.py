"""The runs service on a real PostgreSQL server (a throwaway cluster, tests/postgres.py): a Platform whose
``HELICAL_PLATFORM_DB_URL`` names it, on the session's Dask cluster, ingests the shipped PBMC subset and runs
the baseline to done; the rows the worker path wrote are read back from PostgreSQL itself."""

from __future__ import annotations

import pytest
from sqlmodel import select

from app.platform import Platform
from app.settings import Settings
from store.engine import read_session, schema_version
from store.tables import SCHEMA_VERSION, Dataset, Run, ServerInstance
from tests.conftest import PBMC
from tests.generated_weights import seed as seed_generated_weights
from tests.serving import wait_until

FINISHED = ("done", "failed", "cancelled")


@pytest.fixture(scope="module")
def pg_url(postgres_cluster):
    url = postgres_cluster.create_database("runs_service")
    yield url
    postgres_cluster.drop_database(url)


@pytest.fixture(scope="module")
def platform(pg_url, tmp_path_factory, dask_scheduler):
    home = seed_generated_weights(tmp_path_factory.mktemp("pg-home"))
    settings = Settings.from_env({"HELICAL_PLATFORM_HOME": str(home),
                                  "HELICAL_PLATFORM_DB_URL": pg_url, "DASK_SCHEDULER_ADDRESS": dask_scheduler,
                                  "HELICAL_PLATFORM_DEVICE": "cpu"})
    p = Platform(settings).start()  # a server: its lease (a server_instances row) lives in PostgreSQL
    try:
        p.compute(timeout=180)
        yield p
    finally:
        p.close()


@pytest.mark.slow
def test_the_platform_runs_on_postgresql_and_a_baseline_run_finishes_with_results(platform, pg_url):
    assert platform.engine.dialect.name == "postgresql"
    assert platform.schema_version == schema_version(platform.engine) == SCHEMA_VERSION
    with open(PBMC, "rb") as fh:
        ds = platform.datasets.ingest(fh, "pbmc3k subset ü.h5ad")
    run = platform.runs.submit("cell-type-annotation", "baseline", ds.id, label_column="celltype")
    status = wait_until(lambda: (s := platform.runs.status(run.id))["status"] in FINISHED and s, 300,
                        f"run {run.id} to finish")
    assert status["status"] == "done", status

    results = platform.runs.results(run.id, offset=0, limit=5)
    assert results["metrics"]["macro_f1"] > 0.6
    assert len(results["cells"]["items"]) == 5

    with read_session(platform.engine) as s:  # what PostgreSQL holds, not a cache
        row = s.get(Run, run.id)
        dataset = s.get(Dataset, ds.id)
        instances = s.exec(select(ServerInstance)).all()
    assert row.status == "done" and row.finished_at is not None and row.metrics["macro_f1"] > 0.6
    assert row.owner in {i.id for i in instances if i.stopped_at is None}
    assert row.stage_timings and row.device == "cpu"
    assert dataset.file_name == "pbmc3k subset ü.h5ad" and dataset.n_cells > 0
    assert [r.id for r in platform.runs.list()][:1] == [run.id]
