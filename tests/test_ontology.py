"""Cell Ontology suggestions, refusals and classes, and CELLxGENE-ready columns: all with the network refused."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from inference import ontology
from inference.cellxgene import cellxgene_columns, write_cellxgene
from inference.ontology import (
    CELL_CLASSES,
    PHRASES,
    OntologyError,
    cell_class,
    check_term,
    label_columns,
    suggest_term,
    suggest_terms,
)
from tests.conftest import PBMC

pytestmark = pytest.mark.usefixtures("no_network")

# ids looked up in the CL release the package ships (v2026-03-26), by label
PBMC3K = {
    "B": ("CL:0000236", "B cell"),
    "CD14 Monocytes": ("CL:0001054", "CD14-positive monocyte"),
    "CD4 T": ("CL:0000624", "CD4-positive, alpha-beta T cell"),
    "CD8 T": ("CL:0000625", "CD8-positive, alpha-beta T cell"),
    "Dendritic": ("CL:0000451", "dendritic cell"),
    "FCGR3A Monocytes": ("CL:0002396", "CD14-low, CD16-positive monocyte"),
    "Megakaryocytes": ("CL:0000556", "megakaryocyte"),
    "NK": ("CL:0000623", "natural killer cell"),
}
PBMC68K = {  # scanpy's pbmc68k_reduced bulk_labels (Zheng et al. 2017 sorted populations)
    "CD14+ Monocyte": ("CL:0001054", "CD14-positive monocyte"),
    "CD19+ B": ("CL:0001201", "B cell, CD19-positive"),
    "CD4+/CD25 T Reg": ("CL:0000792", "CD4-positive, CD25-positive, alpha-beta regulatory T cell"),
    "CD4+/CD45RA+/CD25- Naive T": ("CL:0000895", "naive thymus-derived CD4-positive, alpha-beta T cell"),
    "CD4+/CD45RO+ Memory": ("CL:0000897", "CD4-positive, alpha-beta memory T cell"),
    "CD56+ NK": ("CL:0000623", "natural killer cell"),
    "CD8+ Cytotoxic T": ("CL:0000794", "CD8-positive, alpha-beta cytotoxic T cell"),
    "CD8+/CD45RA+ Naive Cytotoxic": ("CL:0000900", "naive thymus-derived CD8-positive, alpha-beta T cell"),
    "CD34+": None,  # CD34 marks progenitors and endothelium alike: no single cell type
    "Dendritic": ("CL:0000451", "dendritic cell"),
}


def test_loads_from_the_package_without_the_network(no_network):
    from cellxgene_ontology_guide.supported_versions import clear_ontology_file_cache

    clear_ontology_file_cache()
    ontology._cl.cache_clear()
    ontology.cell_class.cache_clear()
    assert suggest_term("NK").term_id == "CL:0000623"
    assert check_term("CL:0000236") == "B cell"
    assert cell_class("CL:0000624") == "T cell"
    assert ontology.cl_version().startswith("v")
    assert no_network == []


@pytest.mark.parametrize("table", [PBMC3K, PBMC68K], ids=["pbmc3k", "pbmc68k_bulk_labels"])
def test_reference_labels(table):
    got = suggest_terms(table)
    assert {k: (s.term_id, s.term_label) if s else None for k, s in got.items()} == table


def test_lab_spellings():
    for label in ("CD14+ Monocytes", "CD14 + Monocytes", "CD14 Mono", "cd14+ monocytes"):
        assert suggest_term(label).term_id == "CL:0001054", label
    for label in ("CD16+ Monocytes", "CD16 Mono", "FCGR3A+ Monocytes"):
        assert suggest_term(label).term_id == "CL:0002396", label
    assert suggest_term("CD14+CD16- Monocytes").term_id == "CL:0002057"
    assert suggest_term("CD16- monocytes").term_id == "CL:0002057"
    assert suggest_term("NK cells").term_id == "CL:0000623"
    assert suggest_term("DCs").term_id == "CL:0000451"
    assert suggest_term("Tregs").term_id == "CL:0000815"
    assert suggest_term("CD4+ T cells").term_id == "CL:0000624"


def test_how_and_order():
    assert suggest_term("B cell") == ontology.Suggestion("CL:0000236", "B cell", "exact")
    assert suggest_term("  natural KILLER cell ").how == "exact"
    assert suggest_term("NK cell").how == "synonym"
    assert suggest_term("pDC") == ontology.Suggestion("CL:0000784", "plasmacytoid dendritic cell", "synonym")
    assert suggest_term("Megakaryocytes").how == "normalised"
    assert list(suggest_terms(["NK", "B", "NK"])) == ["NK", "B"]


@pytest.mark.parametrize("label", ["Unknown", "unassigned", "Mystery cells", "", "CD34+", "CD14++ monocytes",
                                   "animal cell", "eukaryotic cell", "cell", "DC2 cells", "CD4-CD8- T"])
def test_no_clear_term_is_none(label):
    assert suggest_term(label) is None


def test_phrase_targets_are_current_terms():
    cl = ontology._cl()
    for target in PHRASES.values():
        assert target.casefold() in cl.by_label, target


@pytest.mark.parametrize(("term_id", "words"), [
    ("CL0000236", "not an ontology id"),
    ("B cell", "not an ontology id"),
    ("CL:236", "CL:0000236"),
    ("cl:0000236", "the form is CL:0000236"),
    ("CL_0000236", "the form is CL:0000236"),
    ("CL:9999999", "not in the Cell Ontology"),
    ("CL:0000003", "obsolete in the Cell Ontology (release v"),
    ("CL:0000255", "the CELLxGENE schema forbids it"),
    ("CL:0000257", "the CELLxGENE schema forbids it"),
    ("CL:0000548", "the CELLxGENE schema forbids it"),
    ("UBERON:0002048", "a UBERON term, not a Cell Ontology term"),
    ("unknown", "leave the label unmapped"),
])
def test_check_term_refusals(term_id, words):
    with pytest.raises(OntologyError, match=words.replace("(", r"\(")):
        check_term(term_id)


def test_deprecated_names_its_replacement():
    with pytest.raises(OntologyError, match="use CL:0000000 'cell' instead"):
        check_term("CL:0000003")  # 'obsolete native cell', replaced by 'cell'
    with pytest.raises(OntologyError, match="CLO:0000019, which is not a Cell Ontology term"):
        check_term("CL:0000002")  # 'obsolete immortal cell line cell', replaced outside CL


def test_check_term_accepts():
    assert check_term("CL:0001054") == "CD14-positive monocyte"
    assert check_term(" CL:0000084 ") == "T cell"
    assert check_term("CL:0000000") == "cell"  # the schema's allowed terms include the root itself


def test_cell_classes_are_current_cl_terms():
    terms = ontology._cl().terms
    for term_id, label in CELL_CLASSES:
        assert terms[term_id]["label"] == label and not terms[term_id].get("deprecated"), term_id


@pytest.mark.parametrize(("term_id", "expected"), [
    ("CL:0000624", "T cell"),  # CD4 T: "T cell", not "lymphocyte" or "leukocyte"
    ("CL:0000792", "T cell"),
    ("CL:0000939", "natural killer cell"),
    ("CL:0001201", "B cell"),
    ("CL:0000786", "plasma cell"),
    ("CL:0002396", "monocyte"),
    ("CL:0000784", "dendritic cell"),
    ("CL:0000556", "megakaryocyte"),
    ("CL:0000233", "platelet"),
    ("CL:0000037", "hematopoietic precursor cell"),
    ("CL:0000542", "lymphocyte"),
    ("CL:0000000", None),
])
def test_cell_class(term_id, expected):
    assert cell_class(term_id) == expected


def test_cell_class_refuses_bad_terms():
    with pytest.raises(OntologyError):
        cell_class("CL:0000255")


MAPPING = {"CD4 T": "CL:0000624", "NK": "CL:0000623", "Odd": None}
PREDICTED = np.array(["CD4 T", "NK", "unassigned", None, "Odd", "Novel", "CD4 T"], dtype=object)


def test_label_columns():
    cols = label_columns(PREDICTED, MAPPING)
    ids = ["CL:0000624", "CL:0000623", "", "", "", "", "CL:0000624"]
    assert list(cols["predicted_cell_type_ontology_term_id"]) == ids
    assert list(cols["predicted_cell_class"]) == ["T cell", "natural killer cell", "", "", "", "", "T cell"]


def test_label_columns_refuse_a_bad_mapping():
    with pytest.raises(OntologyError, match="label 'NK': CL:0000548"):
        label_columns(PREDICTED, {**MAPPING, "NK": "CL:0000548"})


def test_cellxgene_columns():
    ids, labels = cellxgene_columns(PREDICTED, {**MAPPING, "unassigned": "CL:0000084"})
    assert list(ids) == ["CL:0000624", "CL:0000623", "unknown", "unknown", "unknown", "unknown", "CL:0000624"]
    assert list(labels) == ["CD4-positive, alpha-beta T cell", "natural killer cell", "unknown", "unknown",
                            "unknown", "unknown", "CD4-positive, alpha-beta T cell"]
    for forbidden in ("CL:0000255", "CL:0000257", "CL:0000548"):
        with pytest.raises(OntologyError, match="forbids"):
            cellxgene_columns(PREDICTED, {"NK": forbidden})


def _small_h5ad(path, obs: dict) -> None:
    n = len(next(iter(obs.values())))
    adata = ad.AnnData(sp.random(n, 5, density=0.5, format="csr", dtype=np.float32, random_state=0),
                       obs=pd.DataFrame(obs, index=[f"c{i}" for i in range(n)]))
    adata.write_h5ad(path)


def test_write_cellxgene_keeps_and_renames_the_users_columns(tmp_path):
    src, dst = tmp_path / "in.h5ad", tmp_path / "out" / "cxg.h5ad"
    _small_h5ad(src, {"batch": ["a", "b", "a"], "cell_type": ["mine1", "mine2", "mine3"],
                      "cell_type_ontology_term_id": ["x", "y", "z"], "cell_type_original": ["o", "o", "o"]})
    ids, labels = cellxgene_columns(np.array(["NK", "CD4 T", "Novel"], dtype=object), MAPPING)
    write_cellxgene(src, dst, ids, labels)
    obs = ad.read_h5ad(dst).obs
    assert list(obs["batch"]) == ["a", "b", "a"]
    assert list(obs["cell_type_original"]) == ["o", "o", "o"]  # already taken: theirs stays, the next name is used
    assert list(obs["cell_type_original_2"]) == ["mine1", "mine2", "mine3"]
    assert list(obs["cell_type_ontology_term_id_original"]) == ["x", "y", "z"]
    assert list(obs["cell_type_ontology_term_id"]) == ["CL:0000623", "CL:0000624", "unknown"]
    assert list(obs["cell_type"]) == ["natural killer cell", "CD4-positive, alpha-beta T cell", "unknown"]
    assert isinstance(obs["cell_type"].dtype, pd.CategoricalDtype)
    assert isinstance(obs["cell_type_ontology_term_id"].dtype, pd.CategoricalDtype)


def test_write_cellxgene_for_upload_leaves_cell_type_to_discover(tmp_path):
    src, dst = tmp_path / "in.h5ad", tmp_path / "upload.h5ad"
    _small_h5ad(src, {"cell_type": ["mine1", "mine2"]})
    write_cellxgene(src, dst, np.array(["CL:0000623", "unknown"], dtype=object), None)
    obs = ad.read_h5ad(dst).obs
    assert "cell_type" not in obs and list(obs["cell_type_original"]) == ["mine1", "mine2"]
    assert list(obs["cell_type_ontology_term_id"]) == ["CL:0000623", "unknown"]


def test_write_cellxgene_refusals(tmp_path):
    src, dst = tmp_path / "in.h5ad", tmp_path / "out.h5ad"
    _small_h5ad(src, {"batch": ["a", "b"]})
    ids = np.array(["CL:0000623", "unknown"], dtype=object)
    with pytest.raises(ValueError, match="2 cells but 3 term ids"):
        write_cellxgene(src, dst, np.array(["unknown"] * 3), None)
    with pytest.raises(ValueError, match="not the label of CL:0000623"):
        write_cellxgene(src, dst, ids, np.array(["NK cell", "unknown"], dtype=object))
    with pytest.raises(OntologyError, match="forbids"):
        write_cellxgene(src, dst, np.array(["CL:0000255", "unknown"], dtype=object), None)
    with pytest.raises(ValueError, match="new file"):
        write_cellxgene(src, src, ids, None)
    assert not dst.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in.h5ad"]


def test_pbmc3k_end_to_end(tmp_path):
    """The shipped PBMC subset: its labels suggested, confirmed as is, written CELLxGENE-ready."""
    labels = ad.read_h5ad(PBMC, backed="r").obs["celltype"].astype(str).to_numpy()
    mapping = {label: s.term_id if s else None for label, s in suggest_terms(labels).items()}
    assert all(mapping.values())
    cols = label_columns(labels, mapping)
    assert set(cols["predicted_cell_class"]) == {"T cell", "monocyte", "B cell", "natural killer cell",
                                                 "dendritic cell", "megakaryocyte"}
    ids, names = cellxgene_columns(labels, mapping)
    dst = write_cellxgene(PBMC, tmp_path / "pbmc_cxg.h5ad", ids, names)
    obs = ad.read_h5ad(dst, backed="r").obs
    assert list(obs["celltype"]) == list(labels) and set(obs["cell_type_ontology_term_id"]) == set(mapping.values())
