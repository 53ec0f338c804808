"""Annotators in one process: train on a reference, use without one, export and import on a second data home,
and every bad file or name refused with its reason and nothing stored."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from app.annotate import annotate_files, train_annotator
from app.annotators import AnnotatorFileError, AnnotatorInUse, Conflict
from app.platform import Platform
from app.settings import Settings
from inference.heads import head_settings
from tests.conftest import PBMC


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("annotator-files")
    full = ad.read_h5ad(PBMC)
    ref, query = folder / "reference.h5ad", folder / "query.h5ad"
    full[1::2].copy().write_h5ad(ref)
    full[0::4].copy().write_h5ad(query)
    return ref, query


@pytest.fixture(scope="module")
def homes(tmp_path_factory) -> tuple[Settings, Settings]:
    root = tmp_path_factory.mktemp("annotator-homes")
    return tuple(Settings.from_env({"HELICAL_PLATFORM_HOME": str(root / n)}) for n in ("lab", "elsewhere"))


@pytest.fixture(scope="module")
def trained(homes, files) -> dict:
    lab, _ = homes
    ref, _ = files
    return train_annotator(lab, "baseline", ref, "celltype", "PBMC baseline v1", head_settings(),
                           description="pbmc3k subset", author="Ada",
                           ontology={"CD14 Monocytes": "CL:0001054", "B": "CL:0000236", "NK": None})


def _predictions(out: Path) -> pd.DataFrame:
    a = ad.read_h5ad(out)
    return pd.concat([a.obs[["predicted_label", "prediction_confidence"]],
                      a.obsm["prediction_probabilities"]], axis=1)


@pytest.mark.slow
def test_a_trained_annotator_says_what_it_is(trained):
    assert trained["name"] == "PBMC baseline v1" and trained["author"] == "Ada" and trained["model"] == "baseline"
    assert trained["head"] == "logistic_regression" and trained["trained"] is True
    assert trained["classes"]["CD4 T"] > 0 and sum(trained["classes"].values()) == trained["reference"]["cells"]
    assert trained["check"]["method"].startswith("held-out split") and 0 < trained["check"]["macro_f1"] <= 1
    checked = {c for c, n in trained["classes"].items() if n >= 5}  # smaller types are all kept for training
    assert set(trained["check"]["per_class_f1"]) == checked and checked != set(trained["classes"])
    assert trained["ontology"] == {"CD14 Monocytes": "CL:0001054", "B": "CL:0000236", "NK": None}
    assert len(trained["head_sha256"]) == 64


@pytest.mark.slow
def test_annotating_with_it_equals_training_on_the_reference(homes, files, trained, tmp_path):
    lab, _ = homes
    ref, query = files
    with_ref = annotate_files(lab, "baseline", query, tmp_path / "ref.h5ad", "celltype", ref, "celltype")
    with_annotator = annotate_files(lab, None, query, tmp_path / "ann.h5ad", None, truth_column="celltype",
                                    annotator="PBMC baseline v1")
    a, b = _predictions(tmp_path / "ref.h5ad"), _predictions(tmp_path / "ann.h5ad")
    assert (a["predicted_label"].astype(str) == b["predicted_label"].astype(str)).all()
    assert np.allclose(a.drop(columns="predicted_label").to_numpy(float),
                       b.drop(columns="predicted_label").to_numpy(float), atol=1e-6)
    assert with_annotator["metrics"]["macro_f1"] == pytest.approx(with_ref["metrics"]["macro_f1"])
    assert with_annotator["provenance"]["head"]["annotator"] == "PBMC baseline v1"
    assert with_annotator["provenance"]["inputs"]["reference"] is None


def test_export_then_import_elsewhere_gives_the_same_predictions(homes, files, trained, tmp_path):
    lab, elsewhere = homes
    _, query = files
    p = Platform(lab, start_cluster=False)
    try:
        exported = p.annotators.export("PBMC baseline v1")
    finally:
        p.close()
    q = Platform(elsewhere, start_cluster=False)
    try:
        imported = q.annotators.import_file(exported)
        assert imported.author == "Ada" and imported.head_sha256 == trained["head_sha256"]
        assert imported.check == trained["check"] and imported.provenance["imported"] is True
    finally:
        q.close()
    annotate_files(lab, None, query, tmp_path / "here.h5ad", None, annotator="PBMC baseline v1")
    annotate_files(elsewhere, None, query, tmp_path / "there.h5ad", None, annotator="PBMC baseline v1")
    here, there = _predictions(tmp_path / "here.h5ad"), _predictions(tmp_path / "there.h5ad")
    assert here.astype(str).equals(there.astype(str))


def _tampered(source: Path, tmp_path: Path, name: str, change) -> Path:  # noqa: ANN001
    with zipfile.ZipFile(source) as z:
        parts = {n: z.read(n) for n in z.namelist()}
    change(parts)
    out = tmp_path / name
    with zipfile.ZipFile(out, "w") as z:
        for n, data in parts.items():
            z.writestr(n, data)
    return out


def test_bad_files_and_names_are_refused_with_their_reason_and_nothing_is_stored(homes, trained, tmp_path):
    lab, _ = homes
    p = Platform(lab, start_cluster=False)
    try:
        good = p.annotators.export("PBMC baseline v1")
        before = len(p.annotators.list())

        def newer(parts: dict) -> None:
            manifest = json.loads(parts["manifest.json"])
            manifest["version"] = 99
            parts["manifest.json"] = json.dumps(manifest).encode()

        def altered(parts: dict) -> None:
            buf = io.BytesIO()
            with np.load(io.BytesIO(parts["head.npz"])) as z:
                arrays = {k: z[k] for k in z.files}
            arrays["clf__coef"] = arrays["clf__coef"] * 2
            np.savez(buf, **arrays)
            parts["head.npz"] = buf.getvalue()

        def pickled(parts: dict) -> None:
            buf = io.BytesIO()
            with np.load(io.BytesIO(parts["head.npz"])) as z:
                arrays = {k: z[k] for k in z.files}
            arrays["clf__classes"] = np.array([object(), "x"], dtype=object)
            np.savez(buf, **arrays)
            parts["head.npz"] = buf.getvalue()
            manifest = json.loads(parts["manifest.json"])
            import hashlib

            manifest["parts"]["head.npz"] = {"sha256": hashlib.sha256(parts["head.npz"]).hexdigest(),
                                             "bytes": len(parts["head.npz"])}
            parts["manifest.json"] = json.dumps(manifest).encode()

        def smuggled(parts: dict) -> None:
            parts["evil.pkl"] = b"\x80\x04K\x01."

        truncated = tmp_path / "truncated.zip"
        truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        cases = [(truncated, "truncated"), (_tampered(good, tmp_path, "newer.zip", newer), "newer platform"),
                 (_tampered(good, tmp_path, "altered.zip", altered), "does not match its checksum"),
                 (_tampered(good, tmp_path, "pickled.zip", pickled), "carries a pickle"),
                 (_tampered(good, tmp_path, "smuggled.zip", smuggled), "evil.pkl")]
        for path, words in cases:
            with pytest.raises(AnnotatorFileError, match=words):
                p.annotators.import_file(path, name=f"copy {path.stem}")
        with pytest.raises(Conflict, match="exists"):
            p.annotators.import_file(good)
        with pytest.raises(ValueError, match="name is 1-80"):
            p.annotators.import_file(good, name="../etc/passwd")
        assert len(p.annotators.list()) == before
        assert {x.stem for x in (p.artifacts.home / "annotators").glob("*.npz")} == {
            a.head_sha256 for a in p.annotators.list()}  # no arrays of a refused file
    finally:
        p.close()


def test_an_unknown_or_malformed_cell_ontology_id_is_refused(homes, files):
    lab, _ = homes
    ref, _ = files
    for i, (term, words) in enumerate((("CL:9999999", "CL:9999999"), ("monocyte", "monocyte"),
                                       ("CL:0000548", "forbids"))):
        with pytest.raises(ValueError, match=words):
            train_annotator(lab, "baseline", ref, "celltype", f"bad ontology {i}", head_settings(),
                            ontology={"B": term})
    with pytest.raises(ValueError, match="not one of the annotator's classes"):
        train_annotator(lab, "baseline", ref, "celltype", "bad label", head_settings(),
                        ontology={"Neurons": "CL:0000540"})


def test_annotators_refuse_other_weights_and_queries_without_their_genes(homes, files, trained, tmp_path):
    lab, _ = homes
    _, query = files
    p = Platform(lab, start_cluster=False)
    try:
        from sqlmodel import select

        from store.engine import write_session
        from store.tables import AnnotatorEntry

        twin = p.annotators.import_file(p.annotators.export("PBMC baseline v1"), name="PBMC other weights")
        with write_session(p.engine) as s:
            row = s.exec(select(AnnotatorEntry).where(AnnotatorEntry.id == twin.id)).one()
            row.model_checksum = "0" * 64
    finally:
        p.close()
    from inference.counts import AnnotationError

    with pytest.raises(AnnotationError, match="trained on weights with checksum 0000"):
        annotate_files(lab, None, query, tmp_path / "x.h5ad", None, annotator="PBMC other weights")
    few = ad.read_h5ad(query)
    few = few[:, :1000].copy()  # the first 1,000 genes of the file: few of the annotator's 2,000
    few.write_h5ad(tmp_path / "few-genes.h5ad")
    from inference.applications.base import ModelCannotUse

    with pytest.raises(ModelCannotUse, match="of the 2,000 genes it reads, the file has"):  # before anything runs
        annotate_files(lab, None, tmp_path / "few-genes.h5ad", tmp_path / "y.h5ad", None,
                       annotator="PBMC baseline v1")
    p = Platform(lab, start_cluster=False)
    try:
        p.annotators.delete("PBMC other weights")
        assert "PBMC other weights" not in {a.name for a in p.annotators.list()}
        assert p.artifacts.annotator_path(trained["head_sha256"]).is_file()  # still held by the original
    finally:
        p.close()


def test_the_built_in_pbmc_annotator_is_there_at_first_start_and_annotates_unlabelled_cells(homes, files,
                                                                                            tmp_path):
    _, elsewhere = homes
    _, query = files
    p = Platform(elsewhere, start_cluster=False)
    try:
        builtin = p.annotators.get("PBMC 3k (baseline)")
        assert builtin.builtin and builtin.trained and builtin.reference["cells"] == 2700
        assert builtin.ontology["CD14 Monocytes"] == "CL:0001054" and len(builtin.classes) == 8
        assert builtin.check["macro_f1"] > 0.8  # its own held-out fifth of the 2,700 cells
        with pytest.raises(AnnotatorInUse, match="built in"):
            p.annotators.delete(builtin.id)
    finally:
        p.close()
    unlabelled = ad.read_h5ad(query)
    truth = unlabelled.obs["celltype"].astype(str).to_numpy()
    del unlabelled.obs["celltype"]
    unlabelled.write_h5ad(tmp_path / "unlabelled.h5ad")
    annotate_files(elsewhere, None, tmp_path / "unlabelled.h5ad", tmp_path / "out.h5ad", None,
                   annotator="PBMC 3k (baseline)")
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    # the subset's cells are among the 2,700 it learnt from: this checks the path, not its accuracy
    assert np.mean(out.obs["predicted_label"].astype(str).to_numpy() == truth) > 0.9
    assert set(out.obs["predicted_cell_class"].astype(str)) >= {"T cell", "B cell", "monocyte"}
    terms = dict(zip(out.obs["predicted_label"].astype(str), out.obs["predicted_cell_type_ontology_term_id"],
                     strict=True))
    assert terms["CD14 Monocytes"] == "CL:0001054" and terms.get("unassigned", "") == ""


@pytest.mark.slow
def test_the_command_line_lists_uses_exports_and_refuses(homes, files, tmp_path, capsys, monkeypatch):
    from tests.cli_inprocess import runner

    _, elsewhere = homes
    _, query = files
    run = runner(capsys, monkeypatch, elsewhere.home)  # the installed command first, then its main

    listed = run("annotators", "list")
    assert listed.returncode == 0 and "PBMC 3k (baseline)" in listed.stdout and "held-out macro-F1" in listed.stdout
    out = tmp_path / "cells.h5ad"
    done = run("annotate", "--annotator", "PBMC 3k (baseline)", "--query", str(query), "--out", str(out),
               "--cellxgene", "--truth-column", "celltype")
    assert done.returncode == 0, done.stderr
    cxg = ad.read_h5ad(tmp_path / "cells.cellxgene.h5ad")
    predicted = ad.read_h5ad(out).obs["predicted_label"].astype(str).to_numpy()
    ids = cxg.obs["cell_type_ontology_term_id"].astype(str).to_numpy()
    names = cxg.obs["cell_type"].astype(str).to_numpy()
    assert (ids[predicted == "CD14 Monocytes"] == "CL:0001054").all()
    assert (names[predicted == "CD14 Monocytes"] == "CD14-positive monocyte").all()
    assert ((ids == "unknown") == (predicted == "unassigned")).all()
    assert ((names == "unknown") == (ids == "unknown")).all()
    assert "celltype" in cxg.obs  # the user's own columns are kept
    assert run("annotators", "export", "PBMC 3k (baseline)", "--out", str(tmp_path / "pbmc.zip")).returncode == 0
    (tmp_path / "cut.zip").write_bytes((tmp_path / "pbmc.zip").read_bytes()[:1000])
    refused = run("annotators", "import", str(tmp_path / "cut.zip"), "--name", "cut")
    assert refused.returncode == 1 and "truncated" in refused.stderr
    taken = run("annotators", "import", str(tmp_path / "pbmc.zip"))
    assert taken.returncode == 1 and "exists" in taken.stderr
    no_terms = run("annotate", "--model", "baseline", "--query", str(query), "--label-column", "celltype",
                   "--out", str(tmp_path / "eval.h5ad"), "--cellxgene")
    assert no_terms.returncode == 1 and "not mapped to Cell Ontology terms" in no_terms.stderr
