"""The annotation pipeline end to end on real PBMCs, for all three models, and its command line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from app.annotate import sha256_of
from inference.backends import create_backend
from inference.pipeline import AnnotationError, AnnotationJob, DataInput, run_annotation
from tests.conftest import PBMC, REPO
from tests.rendering import shown


@pytest.fixture(scope="module")
def split_files(tmp_path_factory) -> tuple[Path, Path]:
    """A labelled reference (odd cells) and a query with true labels (every fourth even cell)."""
    folder = tmp_path_factory.mktemp("split")
    full = ad.read_h5ad(PBMC)
    ref, query = folder / "reference.h5ad", folder / "query.h5ad"
    full[1::2].copy().write_h5ad(ref)
    full[0::8].copy().write_h5ad(query)
    return ref, query


def _input(path: Path) -> DataInput:
    return DataInput(str(path), path.name, sha256_of(path))


def _job(tmp_path, ref, query, model="baseline", **kw) -> AnnotationJob:
    return AnnotationJob(model_id=model, query=_input(query), reference=_input(ref) if ref else None,
                         label_column="celltype", truth_column="celltype" if ref else None,
                         out_dir=str(tmp_path / kw.pop("name", "run")), heads_dir=str(tmp_path / "heads"), **kw)


class CountingBackend:
    """Wraps a backend to count how many sets of cells it embeds."""

    def __init__(self, inner):
        self.inner, self.embedded = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def embed(self, adata, **kw):
        self.embedded.append(adata.n_obs)
        return self.inner.embed(adata, **kw)


@pytest.mark.slow
def test_baseline_end_to_end_writes_every_result_and_reuses_its_head(split_files, tmp_path):
    ref, query = split_files
    backend = CountingBackend(create_backend("baseline", None, None))
    stages = []
    result = run_annotation(_job(tmp_path, ref, query), backend, {"checksum": "baseline:v1", "trained": True},
                            progress=lambda stage, done, total: stages.append(stage))
    assert [s for s in dict.fromkeys(stages)] == ["checking", "embedding reference", "training head",
                                                  "embedding query", "predicting", "UMAP", "writing"]
    run = tmp_path / "run"
    assert {"predictions.parquet", "embeddings.npy", "metrics.json", "provenance.json",
            "annotated.h5ad"} <= {p.name for p in run.iterdir()}
    assert not list(tmp_path.glob(".partial-*"))
    metrics = result["metrics"]
    assert metrics["macro_f1"] > 0.7 and metrics["scope"] == "all labelled query cells"
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["inputs"]["query"]["sha256"] == sha256_of(query)
    assert prov["versions"]["helical"] == "3.1.4" and prov["head"]["reused"] is False
    assert prov["umap"]["seed"] == 0 and "n_neighbors" in prov["umap"]["params"]

    # the same model, reference and settings: the cached head is used and the reference is not embedded again
    backend.embedded.clear()
    again = run_annotation(_job(tmp_path, ref, query, name="run2"), backend,
                           {"checksum": "baseline:v1", "trained": True})
    assert backend.embedded == [ad.read_h5ad(query, backed="r").n_obs]
    assert again["provenance"]["head"]["reused"] is True
    assert "embedding reference" not in again["stage_timings"]
    assert again["metrics"]["macro_f1"] == pytest.approx(metrics["macro_f1"])


@pytest.mark.slow
def test_metrics_equal_scikit_learns_on_the_same_predictions(split_files, tmp_path):
    ref, query = split_files
    result = run_annotation(_job(tmp_path, ref, query, confidence_threshold=0.9),
                            create_backend("baseline", None, None), {"checksum": "b", "trained": True})
    table = pd.read_parquet(tmp_path / "run" / "predictions.parquet")
    truth, pred = table["true_label"].to_numpy(), table["predicted_label"].to_numpy()
    classes = sorted(set(truth))
    m = result["metrics"]
    assert (pred == "unassigned").any()  # the threshold left some cells unassigned
    assert m["accuracy"] == pytest.approx(accuracy_score(truth, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(truth, pred, labels=classes, average="macro"))
    cm = confusion_matrix(truth, pred, labels=m["confusion_matrix"]["columns"])[: len(classes)]
    assert m["confusion_matrix"]["counts"] == cm.tolist()
    for cls in classes:
        assert m["per_class"][cls]["f1"] == pytest.approx(f1_score(truth, pred, labels=[cls], average="macro"))
    probs = table[[c for c in table.columns if c.startswith("p_")]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)


@pytest.mark.slow
def test_the_annotated_file_keeps_the_input_and_adds_the_predictions(split_files, tmp_path):
    ref, query = split_files
    run_annotation(_job(tmp_path, ref, query), create_backend("baseline", None, None),
                   {"checksum": "b", "trained": True})
    out = ad.read_h5ad(tmp_path / "run" / "annotated.h5ad")
    original = ad.read_h5ad(query)
    assert out.shape == original.shape and (out.X != original.X).nnz == 0
    assert (out.obs["celltype"] == original.obs["celltype"]).all()
    assert {"predicted_label", "prediction_confidence", "prediction_assigned"} <= set(out.obs.columns)
    assert out.obsm["X_umap"].shape == (out.n_obs, 2) and out.obsm["X_baseline"].shape == (out.n_obs, 50)
    assert out.uns["helical_platform"]["weights"] == "trained"


def test_the_annotated_copy_edits_only_what_the_run_adds(tmp_path):
    """An .h5ad is copied and edited in place (its matrices never loaded): everything of the user's is still there,
    a former X_umap kept as X_umap_input; a CSV is read and written anew with the same additions."""
    from inference.annotated import write_annotated

    cells = ad.read_h5ad(PBMC)[:120].copy()
    cells.layers["counts"] = cells.X.copy()
    cells.raw = cells.copy()
    cells.obsm["X_umap"] = np.arange(240, dtype=np.float32).reshape(120, 2)
    cells.uns["lab"] = {"note": "mine"}
    source = tmp_path / "in.h5ad"
    cells.write_h5ad(source)
    before = sha256_of(source)
    features = np.lib.format.open_memmap(tmp_path / "emb.npy", mode="w+", dtype=np.float32, shape=(120, 8))
    features[:] = np.random.default_rng(0).normal(size=(120, 8))
    coords = np.random.default_rng(1).normal(size=(120, 2)).astype(np.float32)
    obs = {"predicted_label": pd.Categorical(["T"] * 60 + ["B"] * 60), "prediction_confidence": np.full(120, 0.9)}
    uns = {"helical_platform": {"model": "baseline", "weights": "trained"}}
    out = tmp_path / "out.h5ad"
    assert write_annotated(source, "in.h5ad", out, obs, {"X_baseline": features, "X_umap": coords}, uns) == "copy"
    assert sha256_of(source) == before  # the stored input is never touched
    got = ad.read_h5ad(out)
    assert (got.X != cells.X).nnz == 0 and (got.layers["counts"] != cells.layers["counts"]).nnz == 0
    assert got.raw is not None and got.raw.shape == cells.raw.shape
    assert got.obs["celltype"].tolist() == cells.obs["celltype"].tolist()
    assert got.obs["predicted_label"].tolist() == ["T"] * 60 + ["B"] * 60
    assert np.array_equal(got.obsm["X_umap_input"], cells.obsm["X_umap"])
    assert np.array_equal(got.obsm["X_umap"], coords) and np.array_equal(got.obsm["X_baseline"], features)
    assert got.uns["lab"]["note"] == "mine" and got.uns["helical_platform"]["model"] == "baseline"

    csv = tmp_path / "in.csv"
    cells.to_df().to_csv(csv)
    out_csv = tmp_path / "from_csv.h5ad"
    assert write_annotated(csv, "in.csv", out_csv, obs, {"X_umap": coords}, uns) == "rewrite"
    again = ad.read_h5ad(out_csv)
    assert again.shape == cells.shape and np.array_equal(again.obsm["X_umap"], coords)
    assert again.obs["predicted_label"].tolist() == obs["predicted_label"].tolist()


@pytest.mark.slow
@pytest.mark.parametrize("model", ["geneformer", "scgpt"])
def test_foundation_models_run_the_same_pipeline_and_say_they_are_untrained(model, split_files, tiny_locations,
                                                                            tmp_path):
    ref, query = split_files
    backend = create_backend(model, None, tiny_locations, device="cpu")
    backend.load()
    info = {"checksum": backend.weights.checksum, "trained": backend.weights.trained}
    result = run_annotation(_job(tmp_path, ref, query, model=model), backend, info)
    assert result["metrics"]["n_cells"] == ad.read_h5ad(query, backed="r").n_obs
    out = ad.read_h5ad(tmp_path / "run" / "annotated.h5ad")
    assert out.obsm[f"X_{model}"].shape[1] == 32
    assert "untrained" in out.uns["helical_platform"]["weights"]
    assert result["provenance"]["model"]["trained"] is False


@pytest.mark.slow
@pytest.mark.parametrize("model", ["baseline", "geneformer"])
def test_the_query_is_read_embedded_and_classified_a_block_at_a_time(model, split_files, tiny_locations, tmp_path,
                                                                     monkeypatch):
    """A query of 75 cells in blocks of 32: only a block's rows leave the file at a time, the embeddings go to the
    run's folder as they are produced, and every number equals the run made in one block."""
    from inference import pipeline
    from inference.counts import Counts

    ref, query = split_files
    backend = create_backend(model, None, tiny_locations, device="cpu")
    backend.load()
    info = {"checksum": getattr(getattr(backend, "weights", None), "checksum", "b"), "trained": True}
    whole = pipeline.predict(_job(tmp_path, ref, query, model=model, name="whole"), backend, info)
    assert not isinstance(whole.features, np.memmap)

    read = []
    real_block = Counts.block
    monkeypatch.setattr(Counts, "block", lambda self, a, b: read.append((a, b)) or real_block(self, a, b))
    monkeypatch.setattr(pipeline, "QUERY_BLOCK", 32)
    work = tmp_path / "work"
    work.mkdir()
    blocked = pipeline.predict(_job(tmp_path, ref, query, model=model, name="blocked"), backend, info,
                               workdir=work)
    assert read == [(0, 32), (32, 64), (64, 75)]  # the query's blocks; the head is the first run's: no reference
    assert isinstance(blocked.features, np.memmap) and Path(blocked.features.filename) == work / "embeddings.npy"
    # matrix products over other row counts (the baseline's PCA, the head, a transformer's batches) may round the
    # last bit differently
    assert np.allclose(blocked.features, whole.features, atol=1e-5, rtol=0)
    assert np.allclose(blocked.basis, whole.basis, atol=1e-5, rtol=0)
    assert np.allclose(blocked.proba, whole.proba, atol=1e-5, rtol=0)
    assert (blocked.predicted == whole.predicted).all() and blocked.metrics == whole.metrics
    assert blocked.provenance["parameters"]["query_block_cells"] == 32

    # handed to the CPU phase through the folder: the embeddings are not copied, the run's file is a link to them
    blocked.save(work)
    loaded = pipeline.Prediction.load(work)
    assert loaded.basis is loaded.features  # every backend's stored embedding is its UMAP's basis
    job = _job(tmp_path, ref, query, model=model, name="blocked")
    pipeline.finish(job, loaded)
    stored = np.load(tmp_path / "blocked" / "embeddings.npy")
    assert np.array_equal(stored, np.asarray(blocked.features))
    assert os.stat(tmp_path / "blocked" / "embeddings.npy").st_ino == os.stat(work / "embeddings.npy").st_ino


@pytest.mark.slow
def test_the_baseline_stores_its_pcs_and_its_head_reads_the_genes_again_from_the_counts(split_files, tmp_path,
                                                                                          monkeypatch):
    """What the baseline stores per cell is its 50 PCs (the store's entry, the run folder, ``obsm``), not the
    2,000 genes its head reads: a second run reusing the stored entry recomputes those genes block by block from
    the query's counts and calls every cell as the first run did."""
    from inference import pipeline
    from inference.counts import Counts

    ref, query = split_files
    backend = create_backend("baseline", None, None)
    info = backend.provenance()
    monkeypatch.setattr(pipeline, "QUERY_BLOCK", 32)
    first = pipeline.predict(_job(tmp_path, ref, query, name="first", embeddings_dir=str(tmp_path / "emb")),
                             backend, info, workdir=tmp_path)
    n = ad.read_h5ad(query, backed="r").n_obs
    assert first.provenance["embedding"]["reused"] is False and first.features.shape == (n, 50)
    entries = list((tmp_path / "emb").rglob("*.npy"))
    assert entries and all(np.load(e, mmap_mode="r").shape == (n, 50) for e in entries)

    read = []
    real_block = Counts.block
    monkeypatch.setattr(Counts, "block", lambda self, a, b: read.append((a, b)) or real_block(self, a, b))
    again = pipeline.predict(_job(tmp_path, ref, query, name="again", embeddings_dir=str(tmp_path / "emb")),
                             create_backend("baseline", None, None), info, workdir=tmp_path / "w2")
    assert again.provenance["embedding"]["reused"] is True and again.provenance["head"]["reused"] is True
    assert read == [(0, 32), (32, 64), (64, n)]  # the reference not at all (the head is cached), the query by block
    assert np.array_equal(again.proba, first.proba) and (again.predicted == first.predicted).all()
    assert np.array_equal(np.asarray(again.features), np.asarray(first.features))
    pipeline.finish(_job(tmp_path, ref, query, name="again"), again)
    out = ad.read_h5ad(tmp_path / "again" / "annotated.h5ad", backed="r")
    assert out.obsm["X_baseline"].shape == (n, 50)


@pytest.mark.slow
def test_evaluation_mode_trains_on_a_stratified_split_and_scores_the_held_out_part(tmp_path):
    result = run_annotation(_job(tmp_path, None, PBMC), create_backend("baseline", None, None),
                            {"checksum": "b", "trained": True})
    table = pd.read_parquet(tmp_path / "run" / "predictions.parquet")
    held = table["split"] == "held-out"
    assert 0.25 < held.mean() < 0.35
    assert result["metrics"]["n_cells"] == held.sum() and result["metrics"]["scope"] == "held-out split"
    # every class with two or more cells is represented in the held-out part
    assert set(table.loc[held, "true_label"]) == set(table["true_label"])


def test_reference_problems_get_messages(split_files, tmp_path):
    ref, query = split_files
    bad = ad.read_h5ad(ref)
    bad.obs["empty"] = pd.Categorical([np.nan] * bad.n_obs, categories=["T cell"])
    bad_path = tmp_path / "bad_ref.h5ad"
    bad.write_h5ad(bad_path)
    job = _job(tmp_path, bad_path, query)
    job.label_column = "empty"
    with pytest.raises(AnnotationError, match="all values are missing"):
        run_annotation(job, create_backend("baseline", None, None), {})
    job.label_column = "cell_type_typo"
    with pytest.raises(AnnotationError, match="has no column 'cell_type_typo'"):
        run_annotation(job, create_backend("baseline", None, None), {})


def test_the_head_gives_scikit_learns_probabilities_and_temperature_changes_only_their_sharpness():
    from scipy.special import softmax
    from sklearn.linear_model import LogisticRegression

    from inference.heads import Head

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    for n_classes in (2, 4):
        y = np.array(list("abcd"[:n_classes]))[rng.integers(0, n_classes, 200)]
        ref = LogisticRegression(max_iter=2000, random_state=0).fit(x, y)
        plain = Head.train(x, y, {"calibrate": False})
        assert plain.classifier.temperature == 1.0
        assert np.allclose(plain.predict_proba(x), ref.predict_proba(x), atol=1e-6)
        calibrated = Head.train(x, y, {})
        t = calibrated.classifier.temperature
        assert t != 1.0 and 36 <= calibrated.classifier.calibration_cells <= 44  # a fifth of each class held back
        logits = ref.decision_function(x)
        logits = np.column_stack([np.zeros(len(x)), logits]) if n_classes == 2 else logits
        assert np.allclose(calibrated.predict_proba(x), softmax(logits / t, axis=1), atol=1e-6)
        assert (calibrated.predict_proba(x).argmax(1) == ref.predict_proba(x).argmax(1)).all()


@pytest.mark.slow
def test_the_command_line_annotates_and_checks(split_files, tmp_path, monkeypatch, capsys):
    """The first call goes through the installed command; the others call its ``main`` in this process (the same
    parser and code, without a Python start and torch's import each: tests/cli_inprocess.py)."""
    from tests.cli_inprocess import run_main

    ref, query = split_files

    def run(*argv: str) -> tuple[int, str, str]:
        return run_main(capsys, *argv)

    env = {**os.environ, "HELICAL_PLATFORM_HOME": str(tmp_path / "home")}
    cli = shutil.which("helical-platform") or str(Path(os.sys.executable).parent / "helical-platform")
    out = tmp_path / "annotated.h5ad"
    done = subprocess.run([cli, "annotate", "--model", "baseline", "--reference", str(ref), "--label-column",
                           "celltype", "--query", str(query), "--truth-column", "celltype", "--out", str(out),
                           "--csv"], env=env, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "macro-F1" in done.stdout and "[embedding query]" in done.stderr
    assert "expected calibration error" in done.stdout
    assert "predicted_label" in ad.read_h5ad(out).obs
    assert "predicted_label" in pd.read_csv(out.with_suffix(".csv")).columns
    monkeypatch.setenv("HELICAL_PLATFORM_HOME", str(tmp_path / "home"))
    common = ["annotate", "--model", "baseline", "--reference", str(ref), "--label-column", "celltype",
              "--query", str(query), "--truth-column", "celltype", "--out", str(tmp_path / "knn.h5ad")]
    code, knn_out, knn_err = run(*common, "--head", "knn", "--k", "3", "--majority-voting", "--novelty-threshold",
                                 "0.01")
    assert code == 0, knn_err
    assert "majority voting (" in knn_out and "[majority voting]" in knn_err
    annotated = ad.read_h5ad(tmp_path / "knn.h5ad")
    assert {"majority_voting", "over_clustering", "reference_fit", "unassigned_reason"} <= set(annotated.obs)
    assert json.loads(annotated.uns["helical_platform"]["provenance_json"])["head"]["k"] == 3
    for extra, words in ((["--head", "knn", "--k", "100000"], "larger than the reference"),
                         (["--novelty-threshold", "2"], "novelty_threshold must lie between 0 and 1")):
        code, _, err = run(*common, *extra)
        assert code == 1 and words in err, err
    code, checked, _ = run("check", str(query), "--json")
    assert code == 0 and json.loads(checked)["label_columns"]["celltype"]
    (tmp_path / "broken.h5ad").write_bytes(b"")
    code, checked, _ = run("check", str(tmp_path / "broken.h5ad"))
    assert code == 1 and "empty (0 bytes)" in checked


def test_umap_takes_every_cell_up_to_a_size_and_a_seeded_sample_beyond_and_says_so():
    """599 real PBMCs: all in the fit below the size, a 200-cell sample above it (the rest placed by transform),
    each recorded; the same seed gives the same map; cells placed by transform land among their own type."""
    from sklearn.neighbors import NearestNeighbors

    from dashboards.results import umap_caption
    from inference.layout import umap_layout

    cells = ad.read_h5ad(PBMC)
    backend = create_backend("baseline", None, None)
    backend.fit(cells)
    basis = backend.embed(cells).basis
    labels = cells.obs["celltype"].astype(str).to_numpy()

    def agreement(coords: np.ndarray) -> float:
        _, nbrs = NearestNeighbors(n_neighbors=11).fit(coords).kneighbors(coords)
        return float((labels[nbrs[:, 1:]] == labels[:, None]).mean())

    full, info = umap_layout(basis, seed=3)
    assert info["fit_on"] == info["n_cells"] == 599 and info["init"] == "spectral" and info["seed"] == 3
    assert info["implementation"].startswith("umap-learn")  # no GPU here: cuML is not used
    assert umap_caption(info, 599).endswith("of all 599 cells.")
    sampled, info_s = umap_layout(basis, seed=3, full_max=300, sample_cells=200, spectral_max=100, chunk=150)
    assert info_s["fit_on"] == 200 and info_s["n_cells"] == 599 and info_s["init"] == "pca"
    caption = umap_caption(info_s, 599)
    assert "PCA start" in caption
    assert "random sample of 200 of the 599 cells; the other 399 cells were placed" in caption
    # a run recorded before the cell count was kept: the caption counts the run's cells
    old = {"method": "umap-learn fit on a sample, transform of the rest", "fit_on": 50_000, "params": {}, "seed": 0}
    assert "random sample of 50,000 of the 200,000 cells" in umap_caption(old, 200_000)
    again, _ = umap_layout(basis, seed=3, full_max=300, sample_cells=200, spectral_max=100, chunk=150)
    assert np.array_equal(sampled, again) and np.isfinite(sampled).all()
    assert agreement(full) > 0.8
    # the 399 placed cells land among their own type: the type most of their 10 nearest fitted cells have on the
    # map is theirs about as often as in the 50 PCs the map is made from (0.79-0.86 against 0.76-0.82 over seeds
    # and chunk sizes; a ratio to the full map's agreement was once used and sat within 0.01 of its limit)
    fitted = np.sort(np.random.default_rng(3).choice(599, size=200, replace=False))  # the layout's seeded sample
    placed = np.setdiff1d(np.arange(599), fitted)

    def placed_among_own_type(space: np.ndarray) -> float:
        _, nbrs = NearestNeighbors(n_neighbors=10).fit(space[fitted]).kneighbors(space[placed])
        votes = labels[fitted][nbrs]
        majority = np.array([max(set(v), key=list(v).count) for v in votes])
        return float((majority == labels[placed]).mean())

    assert placed_among_own_type(sampled) >= placed_among_own_type(basis) - 0.05


def test_a_failing_gpu_umap_falls_back_to_umap_learn_and_says_why(monkeypatch):
    """cuML cannot be installed without a GPU here: a GPU library that fails the way it does when the GPU's memory
    is taken stands in for it. The map is still made, by umap-learn, and the run's record says why."""
    from dashboards.results import umap_caption
    from inference import layout

    class OutOfGpuMemory:
        def __init__(self, **kw):
            self.kw = kw

        def fit_transform(self, x):
            raise MemoryError("std::bad_alloc: out of memory on the GPU")

    monkeypatch.setattr(layout, "gpu_umap", lambda: OutOfGpuMemory)
    basis = np.random.default_rng(0).normal(size=(300, 10)).astype(np.float32)
    coords, info = layout.umap_layout(basis)
    assert coords.shape == (300, 2) and np.isfinite(coords).all()
    assert info["implementation"].startswith("umap-learn") and "out of memory" in info["gpu_fallback"]
    assert "cuML failed (MemoryError" in shown(umap_caption(info, 300))
