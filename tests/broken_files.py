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
