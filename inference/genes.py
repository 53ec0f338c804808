"""Gene identifiers: Ensembl ids and symbols, mapped offline with the shipped GENCODE v48 table."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from importlib import resources

import numpy as np
import pandas as pd

GENCODE_FILE = "genes_homo_sapiens_gencode_v48.csv.gz"
_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{11}(\.\d+)?$")
# When one symbol names several Ensembl genes, prefer the one a model most likely knows.
_BIOTYPE_RANK = {"protein_coding": 0, "miRNA": 1, "lncRNA": 2}


@functools.lru_cache(maxsize=1)
def gencode() -> pd.DataFrame:
    """The GENCODE table: ensembl_id, symbol, version, length, biotype (one row per Ensembl gene)."""
    with resources.files("inference.data").joinpath(GENCODE_FILE).open("rb") as fh:
        table = pd.read_csv(fh, compression="gzip", header=None,
                            names=["ensembl_id", "symbol", "version", "length", "biotype"],
                            dtype={"ensembl_id": str, "symbol": str, "biotype": str})
    return table


@functools.lru_cache(maxsize=1)
def symbol_to_ensembl() -> dict[str, str]:
    """Symbol -> Ensembl id, deterministic for duplicated symbols (biotype rank, then the lowest id)."""
    t = gencode().copy()
    t["rank"] = t["biotype"].map(_BIOTYPE_RANK).fillna(9)
    t = t.sort_values(["symbol", "rank", "ensembl_id"])
    first = t.drop_duplicates("symbol", keep="first")
    mapping = dict(zip(first["symbol"], first["ensembl_id"], strict=True))
    upper = {s.upper(): e for s, e in mapping.items() if s.upper() not in mapping}
    return {**upper, **mapping}


@functools.lru_cache(maxsize=1)
def ensembl_to_symbol() -> dict[str, str]:
    t = gencode()
    return dict(zip(t["ensembl_id"], t["symbol"], strict=True))


def strip_version(ensembl_id: str) -> str:
    return ensembl_id.split(".", 1)[0]


def looks_ensembl(values: pd.Index | pd.Series | list[str]) -> np.ndarray:
    return np.array([bool(_ENSEMBL.match(str(v))) for v in values])


@dataclass
class GeneIds:
    """Both identifiers for every gene of a dataset (empty string where unknown), and how they were found."""

    ensembl_id: list[str]
    symbol: list[str]
    source: str
    n_ensembl_given: int = 0
    n_mapped: int = 0
    n_unmapped: int = 0
    n_duplicated: int = 0
    n_versioned: int = 0
    versioned_example: str = ""
    unmapped_examples: list[str] = field(default_factory=list)

    def report(self) -> dict[str, object]:
        return {
            "source": self.source,
            "ensembl_given": self.n_ensembl_given,
            "mapped_from_symbols": self.n_mapped,
            "unmapped": self.n_unmapped,
            "duplicated_ensembl_ids": self.n_duplicated,
            "version_suffixes": self.n_versioned,
            "unmapped_examples": self.unmapped_examples[:10],
        }


def resolve_gene_ids(var: pd.DataFrame, var_names: pd.Index) -> GeneIds:
    """Work out Ensembl ids and symbols from ``var_names`` and the usual ``var`` columns.

    An Ensembl column (``gene_ids``, ``ensembl_id``, ``gene_id``, ...) wins over mapping symbols, since mapping
    is lossy for older symbols; version suffixes are stripped.
    """
    ens_col = next((c for c in ("ensembl_id", "gene_ids", "gene_id", "ensembl", "feature_id")
                    if c in var.columns and looks_ensembl(var[c].astype(str)).mean() > 0.9), None)
    sym_col = next((c for c in ("gene_symbols", "gene_symbol", "symbol", "feature_name", "gene_name")
                    if c in var.columns and looks_ensembl(var[c].astype(str)).mean() < 0.1), None)
    names = pd.Index(var_names.astype(str))
    names_are_ensembl = looks_ensembl(names)
    e2s, s2e = ensembl_to_symbol(), symbol_to_ensembl()

    if ens_col is not None:
        ens = [strip_version(str(v)) for v in var[ens_col]]
        symbols = [str(v) for v in var[sym_col]] if sym_col else (
            list(names) if names_are_ensembl.mean() < 0.1 else [e2s.get(e, "") for e in ens])
        source = f"var['{ens_col}']"
        ids = GeneIds(ens, symbols, source, n_ensembl_given=len(ens))
    else:
        ens, symbols = [], []
        mapped = unmapped = given = 0
        examples: list[str] = []
        for name, is_ens in zip(names, names_are_ensembl, strict=True):
            if is_ens:
                e = strip_version(name)
                ens.append(e)
                symbols.append(e2s.get(e, ""))
                given += 1
                continue
            e = s2e.get(name) or s2e.get(name.upper(), "")
            ens.append(e)
            symbols.append(name)
            if e:
                mapped += 1
            else:
                unmapped += 1
                examples.append(name)
        source = "var_names (Ensembl ids)" if given and not (mapped + unmapped) else (
            "var_names (symbols, mapped with GENCODE v48)" if not given else "var_names (mixed ids and symbols)")
        ids = GeneIds(ens, symbols, source, given, mapped, unmapped, unmapped_examples=examples)
    given_ids = [str(v) for v in var[ens_col]] if ens_col is not None else list(names[names_are_ensembl])
    versioned = [v for v in given_ids if _ENSEMBL.match(v) and strip_version(v) != v]
    ids.n_versioned, ids.versioned_example = len(versioned), (versioned[0] if versioned else "")
    counts = pd.Series([e for e in ids.ensembl_id if e]).value_counts()
    ids.n_duplicated = int((counts > 1).sum())
    return ids
