"""The Python API (``helical_platform``) on the real path: a Platform on a real SQLite file and a real Dask
cluster (the session's), helical's classes on generated tiny checkpoints, in-memory pbmc3k cells.

It must give what the command line gives for the same cells, write into the caller's object only when asked, refuse
what an upload would refuse with the same report, and cancel the run when the kernel is interrupted."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import helical_platform as hp
from app import notebook_api
from app.platform import Platform
from app.settings import Settings
from store.tables import RunStatus
from tests.conftest import PBMC
from tests.generated_weights import seed as seed_generated_weights
from tests.multibatch import with_batch_effect

pytestmark = pytest.mark.slow  # a module fixture starts a Dask cluster: not for the edit loop


REF_MODEL = "geneformer"


@pytest.fixture(scope="module")
def platform(tmp_path_factory, dask_scheduler):
    home = seed_generated_weights(tmp_path_factory.mktemp("notebook-api") / "home")
    p = Platform(Settings.from_env({"HELICAL_PLATFORM_HOME": str(home), "DASK_SCHEDULER_ADDRESS": dask_scheduler,
                                    "HELICAL_PLATFORM_DEVICE": "cpu"}))
    p.compute(timeout=180)
    hp.use_local(p)
    yield p
    notebook_api._client = None  # the next user of the API gets the default (shared) Platform again
    p.close()


@pytest.fixture(scope="module")
def cells() -> tuple[ad.AnnData, ad.AnnData]:
    """A labelled reference (two thirds of the pbmc3k subset) and a query (the other third), in memory."""
    pbmc = ad.read_h5ad(PBMC)
    every_third = np.arange(pbmc.n_obs) % 3 == 0
    query = pbmc[every_third].copy()
    query.obs["donor_note"] = ["note"] * query.n_obs  # a plain string column: must stay one in the caller's object
    return pbmc[~every_third].copy(), query


@pytest.fixture(scope="module")
def annotated(platform, cells) -> ad.AnnData:
    ref, query = cells
    return hp.annotate(query, model=REF_MODEL, reference=ref, label_column="celltype", truth_column="celltype",
                       progress=False)


def test_annotate_equals_the_command_line_on_the_same_cells(platform, cells, annotated, tmp_path, monkeypatch):
    from app.cli import main

    ref, query = cells
    assert "predicted_label" not in query.obs and query.obs["donor_note"].dtype == object  # the caller's, unchanged
    ref_file, query_file, out = tmp_path / "ref.h5ad", tmp_path / "query.h5ad", tmp_path / "cli.h5ad"
    ref.copy().write_h5ad(ref_file, compression="gzip")  # other bytes than the API's upload: the CLI embeds anew
    query.copy().write_h5ad(query_file, compression="gzip")  # (copies: anndata's writer changes string columns)
    monkeypatch.setenv("HELICAL_PLATFORM_HOME", str(platform.settings.home))
    monkeypatch.setenv("HELICAL_PLATFORM_DEVICE", "cpu")
    assert main(["annotate", "--model", REF_MODEL, "--reference", str(ref_file), "--label-column", "celltype",
                 "--query", str(query_file), "--truth-column", "celltype", "--out", str(out)]) == 0
    cli = ad.read_h5ad(out)
    cli_provenance = json.loads(cli.uns["helical_platform"]["provenance_json"])
    assert cli_provenance["embedding"]["reused"] is False  # computed in this process, not read from the API's run

    assert list(annotated.obs.columns) == list(cli.obs.columns)
    assert sorted(annotated.obsm.keys()) == sorted(cli.obsm.keys())
    assert annotated.uns["helical_platform"].keys() == cli.uns["helical_platform"].keys()
    assert annotated.uns["helical_platform"]["model"] == cli.uns["helical_platform"]["model"] == REF_MODEL
    assert list(annotated.obs_names) == list(query.obs_names)
    assert (annotated.X != query.X).nnz == 0  # the caller's counts, untouched
    assert (annotated.obs["predicted_label"].astype(str) == cli.obs["predicted_label"].astype(str)).all()
    np.testing.assert_allclose(annotated.obsm[f"X_{REF_MODEL}"], cli.obsm[f"X_{REF_MODEL}"], atol=1e-5)
    probabilities, cli_probabilities = annotated.obsm["prediction_probabilities"], cli.obsm["prediction_probabilities"]
    assert list(probabilities.columns) == list(cli_probabilities.columns) and len(probabilities.columns) >= 5
    np.testing.assert_allclose(probabilities.to_numpy(), cli_probabilities.to_numpy(), atol=1e-5)
    np.testing.assert_allclose(annotated.obs["prediction_confidence"], cli.obs["prediction_confidence"], atol=1e-5)

    runs = hp.runs()
    assert {"run_id", "status", "model", "macro_f1"} <= set(runs.columns)
    assert (runs["model"] == REF_MODEL).any() and (runs["status"] == "done").any()


def test_inplace_writes_the_result_into_the_given_object(platform, cells, annotated, capsys):
    ref, query = cells
    mine = query.copy()
    mine.obsm["X_umap"] = np.zeros((mine.n_obs, 2), dtype=np.float32)  # the caller's own UMAP is kept aside
    returned = hp.annotate(mine, model=REF_MODEL, reference=ref, label_column="celltype", truth_column="celltype",
                           inplace=True)
    assert returned is mine
    bar = capsys.readouterr().err
    assert "100%" in bar and f"{query.n_obs:,}/{query.n_obs:,} cells" in bar, bar  # the progress bar, closed
    new_obs = [c for c in annotated.obs.columns if c not in query.obs.columns]
    assert {"predicted_label", "prediction_confidence", "reference_fit"} <= set(new_obs)
    for key in new_obs:
        assert np.array_equal(mine.obs[key].to_numpy(dtype=object), annotated.obs[key].to_numpy(dtype=object)), key
    assert mine.obs["donor_note"].dtype == object and (mine.obs["celltype"] == query.obs["celltype"]).all()
    np.testing.assert_allclose(mine.obsm[f"X_{REF_MODEL}"], annotated.obsm[f"X_{REF_MODEL}"], atol=1e-6)
    np.testing.assert_allclose(mine.obsm["prediction_probabilities"].to_numpy(),
                               annotated.obsm["prediction_probabilities"].to_numpy(), atol=1e-6)
    assert list(mine.obsm["prediction_probabilities"].index) == list(mine.obs_names)
    assert np.array_equal(mine.obsm["X_umap_input"], np.zeros((mine.n_obs, 2)))  # as the downloaded file does
    assert mine.obsm["X_umap"].shape == (mine.n_obs, 2) and np.abs(mine.obsm["X_umap"]).sum() > 0
    assert json.loads(mine.uns["helical_platform"]["provenance_json"])["model"]["trained"] is False
    assert (mine.X != query.X).nnz == 0


def test_bad_input_raises_typed_errors_with_the_check_report(platform, cells):
    import scanpy as sc

    ref, query = cells
    lognorm = query[:120].copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    with pytest.raises(hp.InputError) as refused:
        hp.annotate(lognorm, model="baseline", reference=ref, label_column="celltype", progress=False)
    assert refused.value.code == "invalid_file" and isinstance(refused.value, hp.PlatformError)
    assert refused.value.report["ok"] is False
    assert "log-normalised and no raw counts" in json.dumps(refused.value.report)
    assert "log-normalised and no raw counts" in refused.value.message

    with pytest.raises(hp.InputError) as no_column:
        hp.annotate(query, model="baseline", reference=ref, label_column="cell_type", progress=False)
    assert no_column.value.code == "invalid_request" and no_column.value.report is None
    assert "'cell_type' is not a label column" in str(no_column.value) and "celltype" in str(no_column.value)

    with pytest.raises(hp.NotFound) as unknown:
        hp.annotate(query, model="genefromer", reference=ref, label_column="celltype", progress=False)
    assert unknown.value.code == "not_found"
    assert "'genefromer'" in unknown.value.message
    assert all(m in unknown.value.message for m in ("baseline", "geneformer", "scgpt"))
    with pytest.raises(hp.NotFound) as no_annotator:
        hp.annotate(query, annotator="PBMC 4k", progress=False)
    assert "'PBMC 4k'" in no_annotator.value.message and "'PBMC 3k (baseline)'" in no_annotator.value.message

    models = hp.models()
    assert {"geneformer", "baseline", "harmony"} <= set(models["id"])
    assert models.set_index("id").loc["geneformer", "weights"] == "generated"
    assert "PBMC 3k (baseline)" in set(hp.annotators()["name"])


def test_an_interrupt_while_waiting_cancels_the_run(platform, cells):
    ref, query = cells
    seen: list[dict] = []

    def stop_button(status: dict) -> None:  # the kernel's stop button, pressed once the cluster runs it
        seen.append(status)
        if status["status"] == "running":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        hp.annotate(query, model="scgpt", reference=ref, label_column="celltype", progress=stop_button)
    assert seen[-1]["status"] == "running" and [s["status"] for s in seen].count("running") == 1
    run = platform.runs.get(seen[-1]["run_id"])
    assert run.status == RunStatus.CANCELLED, (run.status, run.error)  # stopped before the call returned
    assert run.started_at is not None and "cancel" in run.error.lower()
    assert not platform.artifacts.run_dir(run.id).exists()  # nothing half-written
    assert hp.runs().set_index("run_id").loc[run.id, "status"] == "cancelled"


def test_integrate_returns_every_model_and_the_metrics_table(platform):
    data = with_batch_effect(ad.read_h5ad(PBMC)[::2].copy())  # 300 cells, two labs
    seen: list[dict] = []
    result, metrics = hp.integrate(data, ["baseline", "harmony"], batch_column="batch", label_column="celltype",
                                   progress=seen.append)
    assert {"X_baseline", "X_harmony", "X_umap_baseline", "X_umap_harmony"} <= set(result.obsm.keys())
    assert result.obsm["X_harmony"].shape[0] == data.n_obs and "X_baseline" not in data.obsm
    assert isinstance(metrics, pd.DataFrame) and set(metrics.index) == {"baseline", "harmony"}
    in_uns = json.loads(result.uns["helical_platform"]["integration_metrics_json"])
    for model in ("baseline", "harmony"):
        assert metrics.loc[model, "Batch correction"] == pytest.approx(in_uns[model]["aggregates"]["Batch correction"])
    assert metrics.loc["harmony", "Batch correction"] > metrics.loc["baseline", "Batch correction"]
    assert seen[-1]["status"] == "done" and len(seen[-1]["runs"]) == 2

    mine = data.copy()
    again = hp.integrate(mine, "baseline", batch_column="batch", inplace=True, progress=False)
    assert again.adata is mine and {"X_baseline", "X_umap_baseline"} <= set(mine.obsm.keys())
    np.testing.assert_allclose(mine.obsm["X_baseline"], result.obsm["X_baseline"], atol=1e-5)
