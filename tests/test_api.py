"""The REST API with a real HTTP client against a served instance (``make serve``)."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import psutil
import pytest
import requests
import scanpy

from inference.reference import sample_sizes
from tests.api_client import AUTH, TOKEN, api, error_of, upload, wait_run
from tests.conftest import PBMC, TOKEN_SERVER_ENV
from tests.reliability import record


@pytest.fixture(scope="module")
def server(token_server):
    assert TOKEN_SERVER_ENV["HELICAL_PLATFORM_MAX_UPLOAD_MB"] == "400"  # the limit the tests below go over
    return token_server


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("api-files")
    full = ad.read_h5ad(PBMC)
    ref, query = folder / "reference.h5ad", folder / "query.h5ad"
    full[1::2].copy().write_h5ad(ref)
    full[0::6].copy().write_h5ad(query)
    return ref, query


def test_the_whole_flow(server, files, tmp_path):
    apps = {a["id"]: a for a in api(server, "GET", "/api/applications").json()}
    assert set(apps) == {"cell-type-annotation", "embedding-integration"}
    assert apps["cell-type-annotation"]["name"] == "Cell type annotation"
    assert apps["embedding-integration"]["name"] == "Embeddings and batch integration"
    models = {m["id"]: m for m in api(server, "GET", "/api/applications/cell-type-annotation/models").json()}
    assert {"baseline", "geneformer", "scgpt"} <= set(models)
    assert models["geneformer"]["weights"] == "generated" and models["geneformer"]["untrained"] is True
    assert models["baseline"]["device"] == "cpu"

    ref, query = files
    r = upload(server, ref)
    assert r.status_code == 201, r.text
    ref_id = r.json()["dataset_id"]
    assert r.json()["report"]["label_columns"]["celltype"]
    q = upload(server, query, raw=False)  # multipart
    assert q.status_code == 201, q.text
    query_id = q.json()["dataset_id"]
    assert {d["dataset_id"] for d in api(server, "GET", "/api/datasets").json()} >= {ref_id, query_id}

    run_ids = {}
    for model in ("baseline", "geneformer"):
        s = api(server, "POST", "/api/submit", json={
            "application": "cell-type-annotation", "model": model, "dataset": query_id, "reference": ref_id,
            "label_column": "celltype", "truth_column": "celltype", "options": {"confidence_threshold": 0.3}})
        assert s.status_code == 202 and s.json()["status"] == "queued", s.text
        run_ids[model] = s.json()["run_id"]
    for model, run_id in run_ids.items():
        assert wait_run(server, run_id)["status"] == "done", model
    res = api(server, "GET", f"/api/results/{run_ids['baseline']}", params={"offset": 10, "limit": 20}).json()
    assert res["metrics"]["macro_f1"] > 0.6 and 0 <= res["metrics"]["accuracy"] <= 1
    assert res["cells"]["offset"] == 10 and len(res["cells"]["items"]) == 20 and res["cells"]["total"] == 100
    assert {"umap_1", "umap_2", "predicted_label", "confidence"} <= set(res["cells"]["items"][0])
    assert res["confusion_matrix"]["rows"] and res["provenance"]["inputs"]["query"]["sha256"]
    assert sum(res["predicted_counts"].values()) == 100
    gf = api(server, "GET", f"/api/results/{run_ids['geneformer']}", params={"limit": 1}).json()
    assert gf["provenance"]["model"]["trained"] is False

    d = api(server, "GET", f"/api/download/{run_ids['baseline']}", params={"format": "h5ad"})
    assert d.status_code == 200
    (tmp_path / "a.h5ad").write_bytes(d.content)
    assert "predicted_label" in ad.read_h5ad(tmp_path / "a.h5ad").obs
    csv = api(server, "GET", f"/api/download/{run_ids['baseline']}", params={"format": "csv"})
    assert csv.status_code == 200 and csv.text.startswith("cell_id,")
    runs = api(server, "GET", "/api/runs").json()
    assert [r["run_id"] for r in runs[:2]] == [run_ids["geneformer"], run_ids["baseline"]]

    # the data lifecycle: disk use, then a finished run deleted with its files
    used = api(server, "GET", "/api/usage").json()
    sizes = {r["id"]: r["bytes"] for r in used["runs"]}
    assert sizes[run_ids["geneformer"]] > 0 and used["totals"]["datasets_bytes"] > 0
    gone = api(server, "DELETE", f"/api/runs/{run_ids['geneformer']}")
    assert gone.status_code == 200 and gone.json()["bytes_freed"] > 0, gone.text
    assert api(server, "GET", f"/api/runs/{run_ids['geneformer']}").status_code == 404
    again = api(server, "DELETE", f"/api/runs/{run_ids['geneformer']}")
    assert again.status_code == 404 and error_of(again)["code"] == "not_found"
    assert run_ids["geneformer"] not in {r["run_id"] for r in api(server, "GET", "/api/runs").json()}
    assert api(server, "GET", f"/api/runs/{run_ids['baseline']}").json()["status"] == "done"  # the other stays


def test_knn_head_majority_voting_and_every_probability_agree_in_rest_csv_and_h5ad(server, files, tmp_path):
    import io

    import numpy as np
    import pandas as pd

    ref, query = files
    ref_id = upload(server, ref).json()["dataset_id"]
    query_id = upload(server, query).json()["dataset_id"]
    base = {"application": "cell-type-annotation", "model": "baseline", "dataset": query_id, "reference": ref_id,
            "label_column": "celltype", "truth_column": "celltype"}
    runs_before = len(api(server, "GET", "/api/runs").json())
    # bad options: each refused in plain words before anything is stored
    for options, words in (({"head": "knn", "k": 10_000}, "larger than the reference (299 labelled cells)"),
                           ({"head": "knn", "k": 40}, "larger than the reference's class"),
                           ({"head": "svm"}, "head must be one of logistic_regression, knn"),
                           ({"k": 5}, "k applies to the knn head only"),
                           ({"novelty_threshold": 1.5}, "novelty_threshold must lie between 0 and 1"),
                           ({"majority_voting": "yes"}, "majority_voting must be true or false"),
                           ({"max_reference_cells": -3}, "max_reference_cells must be a whole number of cells"),
                           ({"head": "fine-tune"}, "cannot be fine-tuned here"),  # the baseline has no model
                           ({"head": "knn", "epochs": 3}, "epochs apply to head = fine-tune only")):
        r = api(server, "POST", "/api/submit", json={**base, "options": options})
        assert r.status_code == 400 and words in error_of(r)["message"], (options, r.text)
    assert len(api(server, "GET", "/api/runs").json()) == runs_before

    s = api(server, "POST", "/api/submit", json={**base, "options": {
        "head": "knn", "majority_voting": True, "novelty_threshold": 0.02, "confidence_threshold": 0.0,
        "max_reference_cells": 200}})
    assert s.status_code == 202, s.text
    run_id = s.json()["run_id"]
    assert wait_run(server, run_id)["status"] == "done"
    res = api(server, "GET", f"/api/results/{run_id}", params={"limit": 1000, "probabilities": "all"}).json()
    classes = res["classes"]
    cells = pd.DataFrame(res["cells"]["items"])
    p_cols = [f"p_{c}" for c in classes]
    assert len(cells) == 100 and set(p_cols) <= set(cells.columns)
    assert np.allclose(cells[p_cols].sum(axis=1), 1, atol=1e-5)
    best = api(server, "GET", f"/api/results/{run_id}", params={"limit": 5}).json()["cells"]["items"][0]
    assert not any(k.startswith("p_") for k in best) and "reference_fit" in best
    assert api(server, "GET", f"/api/results/{run_id}", params={"probabilities": "some"}).status_code == 400
    provenance = res["provenance"]
    smallest = min(ad.read_h5ad(ref).obs["celltype"].value_counts())  # k left out: it follows the smallest class
    assert provenance["head"]["kind"] == "knn" and provenance["head"]["k"] == min(15, smallest) == 4
    # at most 200 of the reference's 299 labelled cells trained the head, each type keeping its share
    sizes = ad.read_h5ad(ref).obs["celltype"].value_counts()
    assert provenance["head"]["reference_cells"] == sum(sample_sizes(sizes.to_dict(), 200).values()) < sizes.sum()
    assert provenance["head"]["reference_sample"] == {"labelled_cells": int(sizes.sum()), "max_cells": 200,
                                                      "min_per_type": 500, "seed": 0}
    assert provenance["parameters"]["majority_voting"] is True
    m = res["metrics"]
    assert m["majority_voting"]["macro_f1"] > 0.5 and m["majority_voting"]["clusters"] >= 2
    assert 0 <= m["calibration"]["ece"] <= 1 and m["calibration"]["bins"]
    # cells that do not fit the reference are unassigned with that reason, and only those
    low = cells["reference_fit"] < 0.02
    assert (cells.loc[low, "unassigned_reason"] == "does not fit the reference").all()
    assert (cells.loc[low, "predicted_label"] == "unassigned").all()
    assert (cells.loc[~low, "unassigned_reason"] == "").all()

    csv = pd.read_csv(io.StringIO(api(server, "GET", f"/api/download/{run_id}", params={"format": "csv"}).text))
    d = api(server, "GET", f"/api/download/{run_id}", params={"format": "h5ad"})
    (tmp_path / "knn.h5ad").write_bytes(d.content)
    annotated = ad.read_h5ad(tmp_path / "knn.h5ad")
    probabilities = annotated.obsm["prediction_probabilities"]
    assert isinstance(probabilities, pd.DataFrame) and list(probabilities.columns) == classes
    assert list(probabilities.index) == list(annotated.obs_names) == list(csv["cell_id"]) == list(cells["cell_id"])
    assert np.allclose(probabilities.to_numpy(), csv[p_cols].to_numpy(), atol=1e-6)
    assert np.allclose(csv[p_cols].to_numpy(), cells[p_cols].to_numpy(), atol=1e-6)
    assert np.allclose(annotated.obs["reference_fit"], csv["reference_fit"], atol=1e-6)
    assert (annotated.obs["majority_voting"].astype(str).to_numpy() == csv["majority_voting"].to_numpy()).all()
    assert set(annotated.obs["over_clustering"].astype(str)) == set(csv["over_clustering"].astype(str))


def test_annotators_save_list_use_export_import_and_delete_over_rest(server, files, tmp_path):
    import numpy as np
    import pandas as pd

    ref, query = files
    ref_id = upload(server, ref).json()["dataset_id"]
    query_id = upload(server, query).json()["dataset_id"]
    base = {"application": "cell-type-annotation", "model": "baseline", "dataset": query_id}
    s = api(server, "POST", "/api/submit", json={**base, "reference": ref_id, "label_column": "celltype",
                                                  "truth_column": "celltype"})
    original = s.json()["run_id"]
    assert wait_run(server, original)["status"] == "done"
    builtin = [a for a in api(server, "GET", "/api/annotators").json() if a["builtin"]]
    assert [a["name"] for a in builtin] == ["PBMC 3k (baseline)"]

    body = {"run_id": original, "name": "lab PBMCs", "description": "from the API test", "author": "Grace",
            "ontology": {"CD14 Monocytes": "CL:0001054", "NK": None}}
    r = api(server, "POST", "/api/annotators", json={**body, "ontology": {"B": "CL:9999999"}})
    assert r.status_code == 400 and "CL:9999999" in error_of(r)["message"]
    saved = api(server, "POST", "/api/annotators", json=body)
    assert saved.status_code == 201, saved.text
    a = saved.json()
    assert a["author"] == "Grace" and a["reference"]["file_name"] == "reference.h5ad" and a["check"]["macro_f1"] > 0
    assert api(server, "POST", "/api/annotators", json=body).status_code == 409
    assert api(server, "GET", f"/api/annotators/{a['annotator_id']}").json()["name"] == "lab PBMCs"
    assert api(server, "GET", "/api/annotators/lab PBMCs").json()["annotator_id"] == a["annotator_id"]

    r = api(server, "POST", "/api/submit", json={**base, "annotator": a["annotator_id"], "reference": ref_id})
    assert r.status_code == 400 and "not both" in error_of(r)["message"]
    r = api(server, "POST", "/api/submit", json={**base, "model": "geneformer", "annotator": "lab PBMCs"})
    assert r.status_code == 400 and "choose the model baseline" in error_of(r)["message"]
    used = api(server, "POST", "/api/submit", json={**base, "annotator": "lab PBMCs", "truth_column": "celltype"})
    assert used.status_code == 202, used.text
    assert wait_run(server, used.json()["run_id"])["status"] == "done"

    def cells(run_id: str) -> pd.DataFrame:
        res = api(server, "GET", f"/api/results/{run_id}", params={"limit": 1000, "probabilities": "all"}).json()
        return pd.DataFrame(res["cells"]["items"]).set_index("cell_id")

    first, second = cells(original), cells(used.json()["run_id"])
    assert (first["predicted_label"] == second["predicted_label"]).all()
    p_cols = [c for c in first.columns if c.startswith("p_")]
    assert p_cols and np.allclose(first[p_cols].to_numpy(float), second[p_cols].to_numpy(float), atol=1e-6)
    monocytes = second["predicted_label"] == "CD14 Monocytes"
    assert (second.loc[monocytes, "predicted_cell_type_ontology_term_id"] == "CL:0001054").all()
    cxg = api(server, "GET", f"/api/download/{used.json()['run_id']}", params={"format": "cellxgene"})
    assert cxg.status_code == 200
    (tmp_path / "cxg.h5ad").write_bytes(cxg.content)
    obs = ad.read_h5ad(tmp_path / "cxg.h5ad").obs
    assert set(obs["cell_type_ontology_term_id"].astype(str)) <= {"CL:0001054", "unknown"}
    r = api(server, "GET", f"/api/download/{original}", params={"format": "cellxgene"})
    assert r.status_code == 400 and "not mapped to Cell Ontology terms" in error_of(r)["message"]

    exported = api(server, "GET", f"/api/annotators/{a['annotator_id']}/export")
    assert exported.status_code == 200 and exported.headers["Content-Type"] == "application/zip"
    zipped = {"Content-Type": "application/zip"}
    r = api(server, "POST", "/api/annotators/import", data=exported.content[:500], headers=zipped)
    assert r.status_code == 400 and "truncated" in error_of(r)["message"]
    assert api(server, "POST", "/api/annotators/import", data=exported.content, headers=zipped).status_code == 409
    copy = api(server, "POST", "/api/annotators/import", params={"name": "lab PBMCs copy"}, data=exported.content,
               headers=zipped)
    assert copy.status_code == 201 and copy.json()["author"] == "Grace"
    assert copy.json()["head_sha256"] == a["head_sha256"]
    assert api(server, "DELETE", f"/api/annotators/{copy.json()['annotator_id']}").status_code == 200
    assert api(server, "GET", f"/api/annotators/{copy.json()['annotator_id']}").status_code == 404
    r = api(server, "DELETE", f"/api/annotators/{builtin[0]['annotator_id']}")
    assert r.status_code == 409 and "built in" in error_of(r)["message"]
    assert api(server, "GET", f"/api/annotators/{a['annotator_id']}").status_code == 200


def test_every_error_code(server, files, tmp_path):
    ref, query = files
    assert error_of(requests.get(server.url + "/api/models", timeout=30))["code"] == "unauthorized"
    assert requests.get(server.url + "/api/models", timeout=30).status_code == 401

    r = api(server, "POST", "/api/submit", json={"model": "baseline"})
    assert r.status_code == 400 and "application" in error_of(r)["message"]
    r = api(server, "POST", "/api/submit", data="not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and error_of(r)["code"] == "invalid_json"
    r = api(server, "POST", "/api/submit", data='{"model": "baseline"}')  # JSON, but not sent as JSON
    assert r.status_code == 415 and error_of(r)["code"] == "unsupported_media_type"
    r = api(server, "GET", "/api/status/../../etc/passwd")
    assert r.status_code in (400, 404)
    r = api(server, "GET", "/api/status/not-a-uuid")
    assert r.status_code == 400 and error_of(r)["code"] == "invalid_id"
    r = api(server, "GET", "/api/status/3f2b6c1e-8d4a-4e7b-9c1d-2a5e6f7a8b9c")
    assert r.status_code == 404 and error_of(r)["code"] == "not_found"
    r = api(server, "GET", "/api/applications/nope/models")
    assert r.status_code == 404

    q = upload(server, query).json()["dataset_id"]
    r = api(server, "POST", "/api/submit", json={"application": "cell-type-annotation", "model": "baseline",
                                                 "dataset": q, "label_column": "no_such"})
    assert r.status_code == 400 and "celltype" in error_of(r)["message"]
    running = api(server, "POST", "/api/submit", json={"application": "cell-type-annotation", "model": "scgpt",
                                                       "dataset": q, "label_column": "celltype"}).json()["run_id"]
    r = api(server, "GET", f"/api/results/{running}")
    assert r.status_code == 409 and error_of(r)["code"] == "not_finished"
    api(server, "POST", f"/api/runs/{running}/cancel")

    big = tmp_path / "big.h5ad"
    big.write_bytes(b"\0" * (401 * 2**20))
    r = upload(server, big)
    assert r.status_code == 413 and error_of(r)["code"] == "too_large"
    png = tmp_path / "picture.h5ad"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    r = upload(server, png)
    assert r.status_code == 415 and "PNG" in error_of(r)["message"]
    a = ad.read_h5ad(PBMC)[:50].copy()
    a.X = -a.X.toarray()
    neg = tmp_path / "negative.h5ad"
    a.write_h5ad(neg)
    r = upload(server, neg)
    assert r.status_code == 400 and error_of(r)["details"]["errors"][0]["code"] == "scaled_values"
    r = upload(server, query, name="../../etc/x.h5ad")
    assert r.status_code == 400 and error_of(r)["code"] == "invalid_id"

    reduced = upload(server, Path(scanpy.__file__).parent / "datasets" / "10x_pbmc68k_reduced.h5ad")
    assert reduced.status_code == 201
    r = api(server, "POST", "/api/submit", json={"application": "cell-type-annotation", "model": "geneformer",
                                                 "dataset": reduced.json()["dataset_id"],
                                                 "label_column": "bulk_labels"})
    assert r.status_code == 422 and error_of(r)["code"] == "model_cannot_use"
    assert api(server, "GET", "/api/models").status_code == 200  # the server is still up


def test_a_300_mb_upload_streams_without_the_server_holding_it(server, request):
    panel = next(p for p in psutil.Process(server.proc.pid).children(recursive=True) if "panel" in " ".join(
        p.cmdline()))
    before = panel.memory_info().rss
    peak = [before]
    chunk = b"x" * (1 << 20)

    def body():
        for i in range(300):
            if i % 20 == 0:
                peak.append(panel.memory_info().rss)
            yield chunk

    r = requests.post(server.url + "/api/upload", params={"filename": "big.h5ad"}, data=body(),
                      headers={**AUTH, "Content-Type": "application/octet-stream"}, timeout=600)
    peak.append(panel.memory_info().rss)
    assert r.status_code == 415  # not HDF5: refused, and nothing kept
    assert max(peak) - before < 100 * 2**20, f"server memory grew by {(max(peak) - before) / 2**20:.0f} MiB"
    assert not list((server.home / "datasets").rglob("*big*"))
    assert not list((server.home / "tmp").glob(".partial-*"))
    record("security", "Upload size: streamed to disk, limit checked while reading", "a 300 MB raw upload "
           "(limit 400 MB); the 401 MB and the over-limit chunked uploads are in the bad-input table",
           f"server memory grew by {(max(peak) - before) / 2**20:.0f} MiB while receiving it",
           "nothing held in memory whole; refused bytes not kept", request.node.nodeid)


def test_openapi_document_and_offline_swagger_ui(server):
    doc = requests.get(server.url + "/api/openapi.json", timeout=30).json()
    assert doc["openapi"].startswith("3.1")
    for path in ("/api/applications", "/api/models", "/api/applications/{id}/models", "/api/upload",
                 "/api/submit", "/api/status/{run_id}", "/api/results/{run_id}", "/api/download/{run_id}",
                 "/api/runs/{run_id}/cancel", "/api/datasets", "/api/runs", "/api/annotators",
                 "/api/annotators/{annotator_id}", "/api/annotators/{annotator_id}/export", "/api/annotators/import",
                 "/api/runs/{run_id}", "/api/usage"):
        assert path in doc["paths"]
    page = requests.get(server.url + "/api/docs", timeout=30)
    assert page.status_code == 200 and "/api/docs/static/swagger-ui-bundle.js" in page.text
    js = requests.get(server.url + "/api/docs/static/swagger-ui-bundle.js", timeout=30)
    assert js.status_code == 200 and len(js.content) > 100_000
    assert "cdn" not in page.text.lower()


def test_schemathesis_finds_no_server_error(server):
    """Generated requests for every operation of the OpenAPI document: no 500, whatever the input."""
    import shutil
    import subprocess
    import sys

    cli = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    done = subprocess.run([cli, "run", f"{server.url}/api/openapi.json", "--checks", "not_a_server_error",
                           "--max-examples", "12", "--header", f"Authorization: Bearer {TOKEN}",
                           "--request-timeout", "120", "--phases", "examples,coverage,fuzzing"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    assert requests.get(server.url + "/api/models", headers=AUTH, timeout=30).status_code == 200


TRAVERSALS = ["../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2fplatform.db", "..",
              "00000000-0000-1000-8000-000000000000", "3F2B6C1E-8D4A-4E7B-9C1D-2A5E6F7A8B9C"]


def test_traversal_in_every_id_and_name_over_http_is_refused(server, files, request):
    """Run ids in status, results, download and cancel; dataset ids in submit; upload names; nothing escapes."""
    ref, _query = files
    tried = 0
    for bad in TRAVERSALS:
        for method, path in (("GET", f"/api/status/{bad}"), ("GET", f"/api/results/{bad}"),
                             ("GET", f"/api/download/{bad}?format=h5ad"), ("POST", f"/api/runs/{bad}/cancel")):
            r = api(server, method, path)
            tried += 1
            assert r.status_code in (400, 404), (path, r.status_code, r.text[:200])
            assert "root:" not in r.text and "SQLite" not in r.text
        r = api(server, "POST", "/api/submit", json={"application": "cell-type-annotation", "model": "baseline",
                                                     "dataset": bad, "label_column": "celltype"})
        tried += 1
        assert r.status_code in (400, 404), (bad, r.text)
        r = upload(server, ref, name=f"{bad}/cells.h5ad")
        tried += 1
        assert r.status_code == 400 and error_of(r)["code"] == "invalid_id", (bad, r.text)
    ds = upload(server, ref).json()["dataset_id"]
    run = api(server, "POST", "/api/submit", json={"application": "cell-type-annotation", "model": "baseline",
                                                   "dataset": ds, "label_column": "celltype"}).json()["run_id"]
    import uuid

    assert uuid.UUID(ds).version == 4 and uuid.UUID(run).version == 4  # random, unguessable ids
    d = api(server, "GET", f"/api/download/{run}", params={"format": "../../platform.db"})
    assert d.status_code in (400, 409), d.text
    record("security", "Path traversal in run ids, dataset ids, download requests and upload names",
           f"{tried} requests: {', '.join(TRAVERSALS[:3])} … in /api/status, /api/results, /api/download, "
           "/api/runs/{id}/cancel, /api/submit and upload file names; a download format of ../../platform.db",
           "every one 400 or 404 (names: 400 invalid_id); ids are uuid4", "no file outside the data home read",
           request.node.nodeid)
