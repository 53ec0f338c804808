"""The embedding-integration application end to end through REST, and the embedding store under it: computed once,
reused across runs and applications, keyed by weights and settings, computed once under concurrency, deleted with
its dataset. Real data (PBMCs with a simulated batch effect), a served instance, helical's classes on generated
checkpoints."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from inference.backends import create_backend
from inference.counts import DataInput
from inference.embedding import embed_dataset, embedding_key
from inference.embedding_store import EmbeddingStore
from tests.api_client import api, error_of, upload, wait_run
from tests.conftest import PBMC
from tests.multibatch import with_batch_effect, write_multibatch

APP = "embedding-integration"


@pytest.fixture(scope="module")
def multibatch(tmp_path_factory) -> Path:
    return write_multibatch(PBMC, tmp_path_factory.mktemp("multibatch") / "pbmc-two-labs.h5ad")


@pytest.fixture(scope="module")
def server(token_server):
    """The shared token server (two workers: baseline and Harmony run at once, one reusing the other's PCs)."""
    from tests.conftest import TOKEN_SERVER_ENV

    assert TOKEN_SERVER_ENV["HELICAL_PLATFORM_WORKERS"] == "2"
    return token_server


def _group(server, dataset_id: str, models: list[str], label_column: str | None = "celltype") -> dict:
    r = api(server, "POST", "/api/submit", json={"application": APP, "models": models, "dataset": dataset_id,
                                                 "batch_column": "batch", "label_column": label_column})
    assert r.status_code == 202, r.text
    body = r.json()
    assert [x["model"] for x in body["runs"]] == models
    for x in body["runs"]:
        status = wait_run(server, x["run_id"], timeout=600)
        assert status["status"] == "done", status
    return body


def _results(server, run_id: str) -> dict:
    r = api(server, "GET", f"/api/results/{run_id}", params={"limit": 5})
    assert r.status_code == 200, r.text
    return r.json()


def test_integration_through_rest(server, multibatch, tmp_path):
    """Three models in one submission: a group, metrics per model equal to scib-metrics on the downloaded
    embeddings, Harmony mixing batches better than the uncorrected baseline, the untrained model labelled; a second
    submission and an annotation of the same file embed nothing; deleting the dataset removes its embeddings."""
    from inference.integration_metrics import integration_metrics

    apps = {a["id"] for a in api(server, "GET", "/api/applications").json()}
    assert {APP, "cell-type-annotation"} <= apps
    models = {m["id"]: m for m in api(server, "GET", f"/api/applications/{APP}/models").json()}
    assert {"baseline", "harmony", "geneformer", "scgpt"} <= set(models)
    ds = upload(server, multibatch).json()
    assert ds["report"]["label_columns"]["batch"] == {"lab-A": ds["report"]["label_columns"]["batch"]["lab-A"],
                                                      "lab-B": ds["report"]["label_columns"]["batch"]["lab-B"]}

    body = _group(server, ds["dataset_id"], ["baseline", "harmony", "geneformer"])
    group = api(server, "GET", f"/api/groups/{body['group_id']}").json()
    assert [row["model"] for row in group["table"]] == ["baseline", "harmony", "geneformer"]
    assert [row["untrained"] for row in group["table"]] == [False, False, True]

    embeddings, results, reused = {}, {}, {}
    for x in body["runs"]:
        res = _results(server, x["run_id"])
        assert res["application"] == APP and res["group_id"] == body["group_id"]
        reused[x["model"]] = res["provenance"]["embedding"]["reused"]
        assert res["cells"]["total"] == ds["n_cells"]
        assert {"cell_id", "batch", "cell_type", "umap_1", "umap_2"} <= set(res["cells"]["items"][0])
        r = api(server, "GET", f"/api/download/{x['run_id']}", params={"format": "h5ad"})
        assert r.status_code == 200
        path = tmp_path / f"{x['model']}.h5ad"
        path.write_bytes(r.content)
        out = ad.read_h5ad(path)
        embeddings[x["model"]] = out.obsm[f"X_{x['model']}"]
        assert "X_umap" in out.obsm and "integration_metrics_json" in out.uns["helical_platform"]
        results[x["model"]] = res["metrics"]
        assert error_of(api(server, "GET", f"/api/download/{x['run_id']}", params={"format": "cellxgene"}))
    # baseline and Harmony read the same PCs: the run that came second (they run at once) reused the first's
    assert sorted([reused["baseline"], reused["harmony"]]) == [False, True] and reused["geneformer"] is False
    source = ad.read_h5ad(multibatch)
    batch, labels = source.obs["batch"].astype(str).to_numpy(), source.obs["celltype"].astype(str).to_numpy()
    for model, metrics in results.items():
        direct = integration_metrics(embeddings[model], batch, labels, embeddings["baseline"], seed=0)
        assert metrics["metrics"] == pytest.approx(direct["metrics"], abs=1e-6), model
        assert metrics["aggregates"] == pytest.approx(direct["aggregates"], abs=1e-6), model
    assert results["harmony"]["aggregates"]["Batch correction"] > results["baseline"]["aggregates"]["Batch correction"]
    assert results["harmony"]["metrics"]["iLISI"] > results["baseline"]["metrics"]["iLISI"]

    # a second submission and another application on the same file: every embedding comes from the store
    again = _group(server, ds["dataset_id"], ["baseline", "geneformer"], label_column=None)
    for x in again["runs"]:
        res = _results(server, x["run_id"])
        assert res["provenance"]["embedding"]["reused"] is True
        assert res["metrics"]["aggregates"]["Bio conservation"] is None  # no cell-type column: batch metrics only
        assert set(res["metrics"]["metrics"]) <= {"iLISI", "PCR comparison"}
    r = api(server, "POST", "/api/submit", json={"application": "cell-type-annotation", "model": "geneformer",
                                                 "dataset": ds["dataset_id"], "label_column": "celltype"})
    assert r.status_code == 202, r.text
    assert wait_run(server, r.json()["run_id"])["status"] == "done"
    annotated = _results(server, r.json()["run_id"])
    assert annotated["provenance"]["embedding"]["reused"] is True  # the integration run's geneformer embedding

    usage = {d["dataset_id"]: d for d in api(server, "GET", "/api/datasets").json()}[ds["dataset_id"]]
    assert usage["embeddings_bytes"] > 0
    entries = api(server, "GET", f"/api/datasets/{ds['dataset_id']}/embeddings").json()["entries"]
    kinds = {e["checksum"] for e in entries}  # the baseline's PCs, Harmony's correction, Geneformer's embedding
    assert {"baseline:v2", "harmony-correction"} <= kinds and len(kinds) == 3
    folder = server.home / "embeddings" / ds["sha256"]
    assert folder.is_dir()
    refused = api(server, "DELETE", f"/api/datasets/{ds['dataset_id']}")
    assert refused.status_code == 409 and "cascade" in error_of(refused)["message"]
    assert folder.is_dir()  # nothing lost on refusal
    gone = api(server, "DELETE", f"/api/datasets/{ds['dataset_id']}", params={"cascade": "true"})
    assert gone.status_code == 200, gone.text
    assert len(gone.json()["runs_deleted"]) == 6 and not folder.exists()
    assert api(server, "GET", f"/api/groups/{body['group_id']}").status_code == 404
    assert ds["dataset_id"] not in {d["dataset_id"] for d in api(server, "GET", "/api/datasets").json()}


def test_bad_integration_input_is_refused_and_nothing_stored(server, multibatch, tmp_path):
    adata = ad.read_h5ad(multibatch)
    adata.obs["one_lab"] = "lab-A"
    adata.obs["tiny_batch"] = np.where(np.arange(adata.n_obs) < 4, "rare", adata.obs["batch"].astype(str))
    adata.obs["donor_number"] = np.arange(adata.n_obs) % 2  # numbers: not offered as a batch
    path = tmp_path / "odd-columns.h5ad"
    adata.write_h5ad(path)
    ds = upload(server, path).json()["dataset_id"]
    before = len(api(server, "GET", "/api/runs").json())

    def refused(status: int, expect: str, **fields) -> None:
        body = {"application": APP, "models": ["baseline"], "dataset": ds, **fields}
        r = api(server, "POST", "/api/submit", json={k: v for k, v in body.items() if v is not ...})
        assert r.status_code == status, r.text
        assert expect in error_of(r)["message"], error_of(r)["message"]

    refused(400, "Give the batch column")
    refused(400, "'nope' cannot be the batch column", batch_column="nope")
    refused(400, "only one class", batch_column="one_lab")
    refused(400, "fewer than 10 cells", batch_column="tiny_batch")
    refused(400, "not a text or categorical column", batch_column="donor_number")
    refused(400, "must differ", batch_column="batch", label_column="batch")
    refused(400, "cannot be the cell-type column", batch_column="batch", label_column="missing_column")
    refused(400, "leave reference and annotator out", batch_column="batch", reference=ds)
    refused(400, "max_metric_cells", batch_column="batch", options={"max_metric_cells": 5})
    refused(400, "Unknown option", batch_column="batch", options={"head": "knn"})
    refused(400, "models must be a list", batch_column="batch", models="baseline")
    refused(400, "model (or models)", batch_column="batch", models=[])
    refused(404, "No model", batch_column="batch", models=["baseline", "no-such-model"])
    r = api(server, "POST", "/api/submit", json={"application": "cell-type-annotation", "model": "harmony",
                                                 "dataset": ds, "label_column": "celltype"})
    assert r.status_code == 400 and "does not serve" in error_of(r)["message"]
    assert len(api(server, "GET", "/api/runs").json()) == before  # all or nothing: no run recorded


# ---- the embedding store, in this process ---------------------------------------------------------------------

class Counting:
    """A real backend whose ``embed`` calls are counted (and optionally slowed, to overlap two runs)."""

    def __init__(self, backend, delay: float = 0.0) -> None:  # noqa: ANN001
        self.backend, self.delay, self.calls = backend, delay, 0

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self.backend, name)

    def embed(self, adata, progress=None, should_stop=None):  # noqa: ANN001, ANN201
        self.calls += 1
        time.sleep(self.delay)
        return self.backend.embed(adata, progress, should_stop)


def _integrate(model: str, backend, info: dict, data: DataInput, home: Path, name: str) -> dict:  # noqa: ANN001
    from inference import applications
    from inference.applications.base import DatasetInfo, ModelInfo, RunRequest
    from inference.checks import check_file

    app = applications.get(APP)
    report = check_file(Path(data.path), data.name)
    request = RunRequest(ModelInfo(model, model, model), DatasetInfo("", data.name, data.path, data.sha256,
                                                                     599, report),
                         None, "celltype", None, {"batch_column": "batch"})
    job = app.job(request, app.validate(request), home / "runs" / name, home)
    work = home / "tmp" / name
    work.mkdir(parents=True)
    app.model_phase(job, backend, info, work, lambda *a: None, lambda: False)
    return __import__("json").loads((work / "integration.json").read_text())


@pytest.mark.slow
def test_store_computes_once_and_is_keyed_by_weights_and_settings(tmp_path, multibatch, tiny_locations):
    from app.annotate import sha256_of

    data = DataInput(str(multibatch), multibatch.name, sha256_of(multibatch))
    home = tmp_path / "home"
    gf = create_backend("geneformer", None, tiny_locations, device="cpu")
    gf.load()
    counted = Counting(gf)
    info = gf.provenance()
    first = _integrate("geneformer", counted, info, data, home, "first")
    assert counted.calls == 1 and first["provenance"]["embedding"]["reused"] is False
    second = _integrate("geneformer", counted, info, data, home, "second")
    assert counted.calls == 1 and second["provenance"]["embedding"]["reused"] is True  # embedded nothing

    other_weights = _integrate("geneformer", counted, {**info, "checksum": "0" * 64}, data, home, "other-weights")
    assert counted.calls == 2 and other_weights["provenance"]["embedding"]["reused"] is False
    gf.emb_layer = 0  # another layer: other settings, another entry
    _integrate("geneformer", counted, info, data, home, "other-layer")
    assert counted.calls == 3
    store = EmbeddingStore(home / "embeddings")
    assert len(store.entries(data.sha256)) == 3
    a = np.load(Path(first["provenance"]["embedding"]["store"]) / "features.npy")
    b = np.load(Path(other_weights["provenance"]["embedding"]["store"]) / "features.npy")
    assert np.array_equal(a, b)  # the same weights really: only the key differs, and it is not served across


def test_a_second_harmony_run_opens_no_file_and_reuses_the_correction(tmp_path, multibatch, monkeypatch):
    """Everything Harmony's model phase needs is in the store after its first run: the second reads nothing."""
    import inference.integration as integration
    from app.annotate import sha256_of

    data = DataInput(str(multibatch), multibatch.name, sha256_of(multibatch))
    home = tmp_path / "home"
    harmony = create_backend("harmony", None, None, device="cpu")
    harmony.load()
    first = _integrate("harmony", harmony, harmony.provenance(), data, home, "first")
    assert first["provenance"]["embedding"]["reused"] is False and first["provenance"]["integration"]["reused"] is False

    def no_file(*_args, **_kwargs):  # noqa: ANN202
        raise AssertionError("the second run opened the dataset")

    monkeypatch.setattr(integration, "Counts", no_file)
    second = _integrate("harmony", harmony, harmony.provenance(), data, home, "second")
    assert second["provenance"]["embedding"]["reused"] is True and second["provenance"]["integration"]["reused"]
    a, b = (np.load(home / "tmp" / name / "integration.npy") for name in ("first", "second"))
    assert np.array_equal(a, b)
    other_method = {**harmony.provenance(), "integration": "harmony with other settings"}
    with pytest.raises(AssertionError, match="opened the dataset"):  # another correction: the file is needed
        _integrate("harmony", harmony, other_method, data, home, "third")


def test_half_written_entries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    """A worker killed while embedding leaves a staging folder: the next start (or the next writer of that key)
    removes it; one whose key's lock is held is being written and stays."""
    import fcntl

    from inference.embedding_store import EmbeddingKey

    store = EmbeddingStore(tmp_path / "embeddings")
    dead_key, live_key = (EmbeddingKey("c" * 64, "", "fp32", "d" * 64, {"n": i}) for i in (1, 2))
    dead, live = (store.folder(k).parent / f".partial-0000000{i}-{store.folder(k).name}"
                  for i, k in enumerate((dead_key, live_key)))
    for staging in (dead, live):
        staging.mkdir(parents=True)
        (staging / "features.npy").write_bytes(b"half")
    with open(store.folder(live_key).parent / f"{store.folder(live_key).name}.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a live writer (any process: flock is per open file)
        assert store.remove_partials() == [dead]
        assert live.is_dir() and not dead.exists()
    dead.mkdir()
    with store.claim(dead_key, 3) as writer:  # the next writer of the key clears what a dead one left
        assert not dead.exists()
        writer.write(0, np.ones((3, 2), dtype=np.float32))
    assert store.get(dead_key) is not None and store.remove_partials() == [live]


def test_concurrent_runs_of_one_key_embed_once(tmp_path, pbmc_small):
    store = EmbeddingStore(tmp_path / "embeddings")
    backend = create_backend("baseline", None, None)
    backend.fit(pbmc_small)
    counted = Counting(backend, delay=0.5)
    key = embedding_key(backend, backend.provenance(), "ab" * 32)
    out: list = []

    def run() -> None:
        out.append(embed_dataset(pbmc_small, counted, lambda *a: None, store=store, key=key))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counted.calls == 1
    assert sorted(e.reused for e in out) == [False, True, True]
    assert all(np.array_equal(e.features, out[0].features) for e in out)


@pytest.mark.slow
def test_annotation_embeds_nothing_the_second_time(tmp_path, tiny_locations):
    """Annotating one query twice with different references: the query is embedded once (the store), each
    reference once; evaluation mode on the query afterwards embeds nothing at all."""
    from app.annotate import sha256_of
    from inference.pipeline import AnnotationJob, predict

    full = with_batch_effect(ad.read_h5ad(PBMC))
    paths = {}
    for name, rows in (("query", slice(0, None, 3)), ("ref1", slice(1, None, 3)), ("ref2", slice(2, None, 3))):
        paths[name] = tmp_path / f"{name}.h5ad"
        full[rows].copy().write_h5ad(paths[name])
    inp = {k: DataInput(str(p), p.name, sha256_of(p)) for k, p in paths.items()}
    gf = create_backend("geneformer", None, tiny_locations, device="cpu")
    gf.load()
    counted, info = Counting(gf), gf.provenance()

    def annotate(reference: str | None, name: str):  # noqa: ANN202
        job = AnnotationJob(model_id="geneformer", query=inp["query"], label_column="celltype",
                            out_dir=str(tmp_path / name), reference=inp[reference] if reference else None,
                            heads_dir=str(tmp_path / "heads"), embeddings_dir=str(tmp_path / "embeddings"))
        return predict(job, counted, info)

    p1 = annotate("ref1", "one")
    assert counted.calls == 2 and p1.provenance["embedding"]["reused"] is False  # reference, query
    p2 = annotate("ref2", "two")
    assert counted.calls == 3 and p2.provenance["embedding"]["reused"] is True  # the new reference only
    assert np.array_equal(p1.features, p2.features)
    p3 = annotate(None, "evaluation")  # the query as its own reference: both from the store
    assert counted.calls == 3 and p3.provenance["embedding"]["reused"] is True


def test_dataset_deletion_takes_its_embeddings_and_waits_for_active_runs(platform, multibatch):
    from app.datasets import DatasetInUse
    from store.engine import write_session
    from store.tables import Run, RunStatus

    with open(multibatch, "rb") as fh:
        ds = platform.datasets.ingest(fh, multibatch.name)
    backend = create_backend("baseline", None, None)
    cells = ad.read_h5ad(multibatch)
    backend.fit(cells)
    store = platform.datasets.embeddings
    embed_dataset(cells, backend, lambda *a: None, store=store,
                  key=embedding_key(backend, backend.provenance(), ds.sha256))
    assert platform.datasets.embeddings_size(ds) > 0
    entries = platform.datasets.embeddings_of(ds.id)["entries"]
    assert len(entries) == 1 and entries[0]["checksum"] == "baseline:v2"

    run = Run(id="00000000-0000-4000-8000-000000000001", application_id=APP, model_id="baseline",
              dataset_id=ds.id, status=RunStatus.RUNNING)
    with write_session(platform.engine) as s:
        s.add(run)
    with pytest.raises(DatasetInUse, match="queued or running"):
        platform.datasets.delete(ds.id, cascade=True)
    assert platform.datasets.path(ds).is_file() and platform.datasets.embeddings_size(ds) > 0
    with write_session(platform.engine) as s:
        r = s.get(Run, run.id)
        r.status = RunStatus.FAILED
        s.add(r)
    with pytest.raises(DatasetInUse, match="cascade"):
        platform.datasets.delete(ds.id)
    out = platform.datasets.delete(ds.id, cascade=True)
    assert out["runs_deleted"] == [run.id] and out["bytes_freed"] > 0
    assert not platform.datasets.path(ds).exists() and not (store.root / ds.sha256).exists()
    assert platform.datasets.list() == []


@pytest.mark.slow
def test_the_command_line_integrates_and_manages_datasets(tmp_path, multibatch, monkeypatch, capsys):
    """`helical-platform integrate` writes every model's embedding and UMAP with the metrics table; a second call
    embeds nothing (the data home's store); `datasets` lists, shows and deletes what the server would. The first
    call goes through the installed command; the others call its ``main`` in this process (the same parser and
    code, without a Python start and torch's import each: tests/cli_inprocess.py)."""
    import json
    import os
    import shutil
    import subprocess

    from tests.cli_inprocess import run_main
    from tests.conftest import REPO

    env = {**os.environ, "HELICAL_PLATFORM_HOME": str(tmp_path / "home")}
    cli = shutil.which("helical-platform") or str(Path(os.sys.executable).parent / "helical-platform")
    out = tmp_path / "integrated.h5ad"
    args = ["integrate", str(multibatch), "--models", "baseline,harmony", "--batch-column", "batch",
            "--label-column", "celltype", "--out", str(out)]
    done = subprocess.run([cli, *args], env=env, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert done.returncode == 0, done.stderr
    assert "Batch correction" in done.stdout and "[integration metrics]" in done.stderr
    result = ad.read_h5ad(out)
    assert {"X_baseline", "X_harmony", "X_umap_baseline", "X_umap_harmony"} <= set(result.obsm)
    table = json.loads(result.uns["helical_platform"]["integration_metrics_json"])
    assert table["harmony"]["aggregates"]["Batch correction"] > table["baseline"]["aggregates"]["Batch correction"]

    monkeypatch.setenv("HELICAL_PLATFORM_HOME", str(tmp_path / "home"))

    def run(*argv: str) -> tuple[int, str, str]:
        return run_main(capsys, *argv)

    code, _, err = run(*args[:3], "baseline", *args[4:])
    assert code == 0 and "[embedding: embeddings reused]" in err, err
    for extra, words in ((["--batch-column", "nope"], "'nope' cannot be the batch column"),
                         (["--models", "baseline,unknown"], "Unknown model 'unknown'")):
        code, _, err = run(*args, *extra)
        assert code == 1 and words in err, err

    from app.platform import Platform
    from app.settings import Settings

    p = Platform(Settings.from_env({"HELICAL_PLATFORM_HOME": str(tmp_path / "home")}), start_cluster=False)
    try:
        with open(multibatch, "rb") as fh:
            ds = p.datasets.ingest(fh, multibatch.name)  # the same bytes: its stored embeddings are the CLI's
    finally:
        p.close()
    code, listed, _ = run("datasets", "list")
    assert ds.id in listed and "embeddings" in listed and " 0.0 MB" not in listed.split("embeddings")[-1]
    code, shown, _ = run("datasets", "embeddings", ds.id)
    assert json.loads(shown)["bytes"] > 0
    code, _, err = run("datasets", "delete", ds.id)
    assert code == 0, err
    assert not (tmp_path / "home" / "embeddings" / ds.sha256).exists()
