"""The Python API against a served instance over real HTTP (``hp.connect``): the same result as the command line
on the same cells, the same exceptions as locally, an interrupt that cancels the run on the server, and the
server's upload limit said in the error."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest
import requests
import scipy.sparse as sp

import helical_platform as hp
from app import notebook_api
from tests.api_client import TOKEN, api
from tests.conftest import PBMC, free_port
from tests.serving import make_serve, wait_until

MODEL = "geneformer"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("notebook-remote")
    with make_serve(tmp, {"HELICAL_PLATFORM_API_TOKEN": TOKEN, "HELICAL_PLATFORM_MAX_UPLOAD_MB": "12"}) as s:
        hp.connect(s.url, token=TOKEN)
        yield s
    notebook_api._client = None  # the next user of the API gets the default (local) client again


@pytest.fixture(scope="module")
def cells() -> tuple[ad.AnnData, ad.AnnData]:
    pbmc = ad.read_h5ad(PBMC)
    every_third = np.arange(pbmc.n_obs) % 3 == 0
    return pbmc[~every_third].copy(), pbmc[every_third].copy()


def test_connect_annotates_on_the_server_as_the_command_line_does(server, cells, tmp_path, monkeypatch):
    from app.cli import main

    ref, query = cells
    before = query.copy()
    remote = hp.annotate(query, model=MODEL, reference=ref, label_column="celltype", truth_column="celltype",
                         progress=False)
    assert (query.X != before.X).nnz == 0 and list(query.obs.columns) == list(before.obs.columns)  # untouched
    from app.notebook_show import annotated_views_data  # what hp.show draws: the run's own numbers

    cells, metrics, about = annotated_views_data(remote)
    newest = hp.runs().iloc[0]
    assert newest["model"] == MODEL and metrics["macro_f1"] == pytest.approx(newest["macro_f1"], abs=1e-9)
    assert about == {"model": MODEL, "untrained": True} and len(cells) == query.n_obs

    ref_file, query_file, out = tmp_path / "ref.h5ad", tmp_path / "query.h5ad", tmp_path / "cli.h5ad"
    ref.write_h5ad(ref_file, compression="gzip")
    query.copy().write_h5ad(query_file, compression="gzip")
    monkeypatch.setenv("HELICAL_PLATFORM_HOME", str(server.home))  # the server's weights: the same checkpoint
    monkeypatch.setenv("HELICAL_PLATFORM_DEVICE", "cpu")
    assert main(["annotate", "--model", MODEL, "--reference", str(ref_file), "--label-column", "celltype",
                 "--query", str(query_file), "--truth-column", "celltype", "--out", str(out)]) == 0
    cli = ad.read_h5ad(out)
    assert list(remote.obs.columns) == list(cli.obs.columns) and sorted(remote.obsm) == sorted(cli.obsm)
    assert (remote.obs["predicted_label"].astype(str) == cli.obs["predicted_label"].astype(str)).all()
    np.testing.assert_allclose(remote.obsm[f"X_{MODEL}"], cli.obsm[f"X_{MODEL}"], atol=1e-5)
    np.testing.assert_allclose(remote.obsm["prediction_probabilities"].to_numpy(),
                               cli.obsm["prediction_probabilities"].to_numpy(), atol=1e-5)
    provenance = json.loads(remote.uns["helical_platform"]["provenance_json"])
    assert provenance["model"]["trained"] is False  # generated weights, said in the result

    runs = hp.runs()
    assert (runs["model"] == MODEL).any() and (runs["status"] == "done").any()
    assert "geneformer" in set(hp.models()["id"])


def test_the_same_exceptions_as_locally(server, cells):
    import scanpy as sc

    ref, query = cells
    lognorm = query[:120].copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    with pytest.raises(hp.InputError) as refused:
        hp.annotate(lognorm, model="baseline", reference=ref, label_column="celltype", progress=False)
    assert refused.value.code == "invalid_file" and refused.value.report["ok"] is False
    assert "log-normalised and no raw counts" in refused.value.message
    with pytest.raises(hp.NotFound):
        hp.annotate(query, annotator="PBMC 4k", progress=False)
    with pytest.raises(hp.AccessDenied) as denied:
        hp.connect(server.url, token="not-the-token")
    assert denied.value.code == "unauthorized"
    with pytest.raises(hp.Unavailable, match="Cannot reach .* is the server running"):
        hp.connect(f"http://127.0.0.1:{free_port()}", token=TOKEN)
    assert isinstance(notebook_api.client(), type(hp.connect(server.url, token=TOKEN)))

    big = ad.AnnData(X=sp.random(3000, 2000, density=0.9, format="csr", dtype=np.float32, random_state=0))
    big.X.data = np.ceil(big.X.data * 20)
    with pytest.raises(hp.InputError) as too_large:
        hp.annotate(big, model="baseline", reference=ref, label_column="celltype", progress=False)
    assert too_large.value.code == "too_large" and "12 MiB" in too_large.value.message


def test_an_interrupt_cancels_the_run_on_the_server(server, cells):
    ref, query = cells[0][:300].copy(), cells[1][:150].copy()  # new bytes: nothing to reuse from the store
    seen: list[str] = []

    def stop_when_running(status: dict) -> None:
        seen.append(status["run_id"])
        if status["status"] == "running":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        hp.annotate(query, model=MODEL, reference=ref, label_column="celltype", progress=stop_when_running)
    run_id = seen[-1]
    status = wait_until(lambda: (s := api(server, "GET", f"/api/status/{run_id}").json())["status"]
                        not in ("queued", "running") and s, 120, "the run to stop")
    assert status["status"] == "cancelled"
    assert requests.get(server.url + "/api/health", timeout=30).status_code == 200


def test_the_remote_notebook_runs_against_the_server(server, monkeypatch):
    import os

    import nbformat
    from nbclient import NotebookClient

    from tests.conftest import REPO

    nb = nbformat.read(REPO / "examples" / "remote.ipynb", as_version=4)
    monkeypatch.setenv("HELICAL_PLATFORM_URL", server.url)  # the kernel inherits this process's environment
    monkeypatch.setenv("HELICAL_PLATFORM_API_TOKEN", TOKEN)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}},
                   env={**os.environ}).execute()
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    outputs = [o for cell in code for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"], outputs
    assert "baseline on the server: done, macro-F1 0." in "".join(o.get("text", "") for o in code[1].outputs)
    for cell in code[2:]:  # hp.show of the returned AnnData and of the run by its id
        assert any("application/vnd.holoviews_exec.v0+json" in o.get("data", {}) or
                   "application/vnd.bokehjs_exec.v0+json" in o.get("data", {}) for o in cell.outputs)
