"""Broken and awkward single-cell files, built by the tests (no checked-in binaries)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from tests.conftest import PBMC


def _base(n: int = 120) -> ad.AnnData:
    a = ad.read_h5ad(PBMC)[:n].copy()
    return a


def _write(a: ad.AnnData, path: Path) -> Path:
    a.write_h5ad(path)
    return path


def empty_file(d: Path) -> Path:
    p = d / "empty.h5ad"
    p.write_bytes(b"")
    return p


def truncated_h5ad(d: Path) -> Path:
    full = _write(_base(), d / "full.h5ad").read_bytes()
    p = d / "truncated.h5ad"
    p.write_bytes(full[: len(full) // 3])
    return p


def corrupted_h5ad(d: Path) -> Path:
    data = bytearray(_write(_base(), d / "full2.h5ad").read_bytes())
    for i in range(4096, len(data), 997):
        data[i] ^= 0xFF
    p = d / "corrupted.h5ad"
    p.write_bytes(bytes(data))
    return p


def csv_renamed(d: Path) -> Path:
    p = d / "table.h5ad"
    p.write_text("cell,GENE1,GENE2\nc1,1,2\nc2,3,4\n")
    return p


def png_renamed(d: Path) -> Path:
    p = d / "picture.h5ad"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 200)
    return p


def zero_cells(d: Path) -> Path:
    return _write(_base()[:0].copy(), d / "zero_cells.h5ad")


def zero_genes(d: Path) -> Path:
    return _write(_base()[:, :0].copy(), d / "zero_genes.h5ad")


def scaled_only(d: Path) -> Path:
    import scanpy as sc

    a = _base()
    sc.pp.normalize_total(a)
    sc.pp.log1p(a)
    a = a[:, :2000].copy()
    sc.pp.scale(a)
    return _write(a, d / "scaled.h5ad")


def lognorm_without_totals(d: Path) -> Path:
    import scanpy as sc

    a = _base()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    return _write(a, d / "lognorm.h5ad")


def negative_values(d: Path) -> Path:
    a = _base()
    x = a.X.toarray()
    x[0, :10] = -1
    a.X = sp.csr_matrix(x)
    return _write(a, d / "negative.h5ad")


def nan_values(d: Path) -> Path:
    a = _base()
    x = a.X.toarray()
    x[0, 0] = np.nan
    a.X = sp.csr_matrix(x)
    return _write(a, d / "nan.h5ad")


def inf_values(d: Path) -> Path:
    a = _base()
    x = a.X.toarray()
    x[1, 3] = np.inf
    a.X = x
    return _write(a, d / "inf.h5ad")


def duplicated_cells(d: Path) -> Path:
    a = _base()
    a.obs_names = ["cell"] * 2 + list(a.obs_names[2:])
    return _write(a, d / "dup_cells.h5ad")


def duplicated_genes(d: Path) -> Path:
    a = _base()
    names = list(a.var_names)
    names[1] = names[0]
    a.var_names = names
    return _write(a, d / "dup_genes.h5ad")


def unknown_genes(d: Path) -> Path:
    a = _base()
    a.var = pd.DataFrame(index=[f"mouse_gene_{i}" for i in range(a.n_vars)])
    return _write(a, d / "unknown_genes.h5ad")


def all_zero(d: Path) -> Path:
    a = _base()
    a.X = sp.csr_matrix(a.shape, dtype=np.float32)
    return _write(a, d / "all_zero.h5ad")


BROKEN: dict[str, tuple[Callable[[Path], Path], str]] = {
    "empty file": (empty_file, "empty (0 bytes)"),
    "truncated HDF5": (truncated_h5ad, "could not be read"),
    "corrupted HDF5": (corrupted_h5ad, "could not be read"),
    "CSV renamed .h5ad": (csv_renamed, "looks like text"),
    "PNG renamed .h5ad": (png_renamed, "PNG image"),
    "zero cells": (zero_cells, "0 cells"),
    "zero genes": (zero_genes, "0 genes"),
    "only scaled values": (scaled_only, "scaled"),
    "log-normalised without totals": (lognorm_without_totals, "log-normalised and no raw counts"),
    "negative values": (negative_values, "negative"),
    "NaN values": (nan_values, "NaN"),
    "infinite values": (inf_values, "infinite"),
    "duplicated cell names": (duplicated_cells, "cell names are duplicated"),
    "genes of no model": (unknown_genes, "human Ensembl id or GENCODE symbol"),
    "all zero": (all_zero, "zero"),
}


# ---- awkward but usable files, and files whose label columns cannot serve -------------------------------

def ensembl_with_versions(d: Path) -> Path:
    a = _base()
    a.var = pd.DataFrame(index=[f"{e}.{i % 19 + 1}" for i, e in enumerate(a.var["gene_ids"])])
    return _write(a, d / "versioned_ids.h5ad")


def mixed_ids_and_symbols(d: Path) -> Path:
    a = _base()
    names = [e if i % 2 else s for i, (s, e) in enumerate(zip(a.var_names, a.var["gene_ids"], strict=True))]
    a.var = pd.DataFrame(index=pd.Index(names))
    a.var_names_make_unique()
    return _write(a, d / "mixed_ids.h5ad")


def tenx_h5(d: Path) -> Path:
    """Cell Ranger v3 layout: /matrix with CSC (genes x cells) arrays and /matrix/features."""
    import h5py

    a = _base()
    x = sp.csr_matrix(a.X).astype(np.int32)  # CSR cells x genes == CSC genes x cells
    p = d / "filtered_feature_bc_matrix.h5"
    with h5py.File(p, "w") as f:
        m = f.create_group("matrix")
        m["barcodes"] = np.array(a.obs_names, dtype="S")
        m["data"], m["indices"], m["indptr"] = x.data, x.indices.astype(np.int64), x.indptr.astype(np.int64)
        m["shape"] = np.array([a.n_vars, a.n_obs], dtype=np.int32)
        feats = m.create_group("features")
        feats["id"] = np.array(a.var["gene_ids"], dtype="S")
        feats["name"] = np.array(a.var_names, dtype="S")
        feats["feature_type"] = np.array(["Gene Expression"] * a.n_vars, dtype="S")
        feats["genome"] = np.array(["GRCh38"] * a.n_vars, dtype="S")
        feats["_all_tag_keys"] = np.array([b"genome"])
    return p


HUGE_CELLS, HUGE_GENES, HUGE_GENES_PER_CELL = 200_000, 30_000, 25


def huge_sparse(d: Path) -> Path:
    """200,000 cells x 30,000 real genes, 25 counts each: 5 M stored values (about 60 MB on disk)."""
    genes = ad.read_h5ad(PBMC, backed="r").var["gene_ids"].to_numpy()[:HUGE_GENES]
    rng = np.random.default_rng(0)
    k = HUGE_GENES_PER_CELL
    indices = np.sort(rng.choice(HUGE_GENES, size=(HUGE_CELLS, k)), axis=1)
    x = sp.csr_matrix((rng.integers(1, 6, HUGE_CELLS * k).astype(np.float32), indices.ravel(),
                       np.arange(0, HUGE_CELLS * k + 1, k)), shape=(HUGE_CELLS, HUGE_GENES))
    x.sum_duplicates()
    a = ad.AnnData(X=x, obs=pd.DataFrame(index=[f"cell-{i}" for i in range(HUGE_CELLS)]),
                   var=pd.DataFrame(index=genes))
    return _write(a, d / "huge_sparse.h5ad")


def one_class_labels(d: Path) -> Path:
    a = _base()
    a.obs["sample"] = pd.Categorical(["donor-1"] * a.n_obs)
    return _write(a, d / "one_class.h5ad")


def thousands_of_classes(d: Path) -> Path:
    base = ad.read_h5ad(PBMC)
    a = ad.concat([base] * 4, index_unique="-", merge="same")
    a.obs["clone"] = [f"clone-{i}" for i in range(a.n_obs)]
    return _write(a, d / "many_classes.h5ad")


def labels_all_nan(d: Path) -> Path:
    a = _base()
    a.obs["celltype"] = pd.Categorical([None] * a.n_obs, categories=["B", "CD4 T"])
    return _write(a, d / "labels_all_nan.h5ad")


class Case:
    """One corpus entry: how to make it, whether it must be refused, and the words the user must see."""

    def __init__(self, make: Callable[[Path], Path], refused: bool, words: str, label_column: str | None = None,
                 name: str | None = None) -> None:
        self.make, self.refused, self.words, self.label_column, self.name = make, refused, words, label_column, name


def _good(d: Path) -> Path:
    return _write(_base(), d / "good.h5ad")


CORPUS: dict[str, Case] = {
    **{case: Case(make, True, words) for case, (make, words) in BROKEN.items()},
    "duplicated gene names": Case(duplicated_genes, False, "gene names are duplicated"),
    "Ensembl ids with version suffixes": Case(ensembl_with_versions, False, "carry a version suffix"),
    "mixed symbols and Ensembl ids": Case(mixed_ids_and_symbols, False, "mix"),
    "a 10x .h5 (Cell Ranger v3)": Case(tenx_h5, False, "120 cells"),
    "huge sparse file (200,000 x 30,000)": Case(huge_sparse, False, "200,000 cells"),
    "label column with one class": Case(one_class_labels, False, "only one class", label_column="sample"),
    "label column with thousands of classes": Case(thousands_of_classes, False, "2,396 classes",
                                                   label_column="clone"),
    "reference whose labels are all NaN": Case(labels_all_nan, False, "all values are missing",
                                               label_column="celltype"),
    "file name with path separators": Case(_good, True, "path separator", name="../../etc/cells.h5ad"),
    "file name with a Windows path": Case(_good, True, "path separator", name="..\\..\\windows\\cells.h5ad"),
    "unicode file name": Case(_good, False, "Zellen Müller 細胞.h5ad", name="Zellen Müller 細胞.h5ad"),
}
