"""Input checks: what is in a user's file, and what to do about it, before any model runs.

Reads only what it needs: ``.h5ad`` opens backed and the values are judged on a sample of rows. The report is
plain data (JSON-ready) so the command line, the dashboard and the API show the same words.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from inference.file_errors import UnsafeFileError
from inference.file_gate import check_structure
from inference.genes import resolve_gene_ids
from inference.readers import UnreadableFileError, detect_format, open_anndata

SAMPLE_CELLS = 2000
LABEL_MIN_CLASSES, LABEL_MAX_CLASSES = 2, 500
MAX_LABEL_CHARS = 200  # a cell type's name; longer ones are text, and would fill every user's copy of the report
# A model is refused for a file when fewer genes than this, or less than this share of the counts, fall in
# its vocabulary: below that the embedding describes a small, arbitrary part of the transcriptome.
MIN_OVERLAP_GENES = 1000
MIN_OVERLAP_COUNT_SHARE = 0.4
TOTALS_COLUMNS = ("n_counts", "total_counts", "nCount_RNA", "n_umis", "total_umis")
COUNT_LAYERS = ("counts", "raw_counts", "umi", "umis", "count")
GATE = "structure-gate/1"  # in a report whose file passed the gate (inference/file_gate.py); older ones lack it
UNSAFE = "unsafe_structure"  # the gate refused the file's structure (inference/hdf5_gate.py)
UNREADABLE_CODES = ("unreadable", UNSAFE, "check_failed")  # answered 415: the file could not be read safely


@dataclass(frozen=True)
class Vocabulary:
    """A model's genes, keyed the way the model keys them."""

    kind: str  # "ensembl" | "symbol"
    genes: frozenset[str]


def _sample_rows(n: int, k: int = SAMPLE_CELLS) -> np.ndarray:
    if n <= k:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).astype(int))


def _dense(m) -> np.ndarray:  # noqa: ANN001 - sparse or dense block
    return m.toarray() if sp.issparse(m) else np.asarray(m)


def _values_of(m) -> np.ndarray:  # noqa: ANN001
    return m.data if sp.issparse(m) else np.asarray(m).ravel()


def classify_values(block) -> dict[str, object]:  # noqa: ANN001 - a sample of rows
    """counts | log1p | normalized | scaled | nonfinite | empty, with the figures that decided it."""
    vals = np.asarray(_values_of(block), dtype=np.float64)
    if vals.size == 0 or not np.any(vals):
        return {"kind": "empty", "detail": "all sampled values are zero"}
    finite = np.isfinite(vals)
    if not finite.all():
        n_nan, n_inf = int(np.isnan(vals).sum()), int(np.isinf(vals).sum())
        return {"kind": "nonfinite", "nan": n_nan, "inf": n_inf,
                "detail": f"{n_nan} NaN and {n_inf} infinite values in the sampled cells"}
    vmin, vmax = float(vals.min()), float(vals.max())
    if vmin < 0:
        return {"kind": "scaled", "min": vmin, "max": vmax,
                "detail": f"negative values (min {vmin:.3g}): scaled or centred data"}
    if np.all(np.abs(vals - np.round(vals)) < 1e-4):
        return {"kind": "counts", "min": vmin, "max": vmax, "detail": f"non-negative integers up to {vmax:.0f}"}
    sums = np.asarray(np.expm1(_dense(block)).sum(axis=1)).ravel()
    sums = sums[sums > 0]
    if vmax < 30 and sums.size and np.std(sums) / np.mean(sums) < 0.01:
        target = float(np.median(sums))
        return {"kind": "log1p", "target_sum": round(target), "max": vmax,
                "detail": f"log1p of counts normalised to {target:,.0f} per cell"}
    kind = "log1p" if vmax < 30 else "normalized"
    return {"kind": kind, "max": vmax, "detail": f"non-integer values up to {vmax:.3g}"}


def _sources(adata: AnnData) -> list[tuple[str, object, pd.Index]]:
    out = [("X", adata.X, adata.var_names)]
    out += [(f"layers['{k}']", adata.layers[k], adata.var_names) for k in COUNT_LAYERS if k in adata.layers]
    if adata.raw is not None:
        out.append(("raw.X", adata.raw.X, adata.raw.var_names))
    return out


def _msg(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}


def find_counts(adata: AnnData) -> tuple[dict[str, object], list[dict], list[dict]]:
    """Where raw counts are (X, a layer, .raw, or recoverable from log1p and totals), and what was seen where."""
    rows = _sample_rows(adata.n_obs)
    seen: dict[str, dict] = {}
    for name, matrix, var_names in _sources(adata):
        if matrix is None:
            continue
        seen[name] = {**classify_values(matrix[rows]), "genes": len(var_names)}
    errors, warnings = [], []
    looked = ", ".join(seen) or "X"
    for name, info in seen.items():
        if info["kind"] == "nonfinite":
            errors.append(_msg("nonfinite_values", f"{name} holds {info['detail'].split(' in ')[0]}. Remove or "
                                                   "repair those cells (e.g. np.nan_to_num) and upload again."))
    counts = next((n for n, i in seen.items() if i["kind"] == "counts"), None)
    if counts:
        chosen = {"source": counts, "kind": "counts", "recovered": False, **seen[counts]}
        if counts != "X":
            warnings.append(_msg("counts_not_in_X", f"X holds {seen['X']['kind']} values; the raw counts in "
                                                   f"{counts} are used."))
        return chosen, errors, warnings
    totals = next((c for c in TOTALS_COLUMNS if c in adata.obs.columns), None)
    logged = next((n for n, i in seen.items() if i["kind"] == "log1p"), None)
    if logged and totals:
        target = seen[logged].get("target_sum") or 1e4
        warnings.append(_msg("counts_recovered",
                             f"No raw counts found; they are recovered from the log-normalised {logged} as "
                             f"round(expm1(x) * obs['{totals}'] / {target:,.0f}). Upload raw counts for exact "
                             "results."))
        return {"source": logged, "kind": "counts", "recovered": True, "totals_column": totals,
                "target_sum": target, **{k: v for k, v in seen[logged].items() if k != "kind"}}, errors, warnings
    if all(i["kind"] == "empty" for i in seen.values()):
        errors.append(_msg("all_zero", f"Every sampled value in {looked} is zero: the matrix is empty."))
    elif logged:
        errors.append(_msg("log_normalised_without_totals",
                           f"The values in {logged} are log-normalised and no raw counts were found (looked in "
                           f"{looked} and for per-cell totals in obs {', '.join(TOTALS_COLUMNS)}). The models "
                           "need raw counts: keep them when preprocessing (adata.layers['counts'] = adata.X.copy() "
                           "before sc.pp.normalize_total), or add the per-cell totals as obs['n_counts']."))
    elif any(i["kind"] == "scaled" for i in seen.values()):
        errors.append(_msg("scaled_values",
                           f"The values are scaled (negative numbers found; looked in {looked}) and no raw counts "
                           "were found. Scaling cannot be undone: upload the file with raw counts in X, in "
                           "layers['counts'] or in .raw."))
    elif not any(i["kind"] == "nonfinite" for i in seen.values()):
        errors.append(_msg("no_counts", f"No raw counts found (looked in {looked}: "
                                        f"{'; '.join(f'{n}: {i['detail']}' for n, i in seen.items())}). Upload raw "
                                        "integer counts."))
    return {"source": None, "kind": seen.get("X", {}).get("kind", "unknown")}, errors, warnings


def label_columns(obs: pd.DataFrame) -> tuple[dict[str, dict[str, int]], dict[str, str]]:
    """Categorical-like obs columns with 2-500 classes (class counts), and why the others are not offered."""
    usable, rejected = {}, {}
    for col in obs.columns:
        s = obs[col]
        if len(str(col)) > MAX_LABEL_CHARS:
            rejected[str(col)[:MAX_LABEL_CHARS] + "…"] = f"a column name longer than {MAX_LABEL_CHARS} characters"
            continue
        # numbers (counts, scores, integer QC metrics) are never labels; categories, strings and booleans may be
        if not (isinstance(s.dtype, pd.CategoricalDtype) or s.dtype == object or pd.api.types.is_string_dtype(s)
                or pd.api.types.is_bool_dtype(s)):
            continue
        values = s.dropna().astype(str)
        n_classes = values.nunique()
        if len(values) == 0:
            rejected[col] = "all values are missing"
        elif n_classes < LABEL_MIN_CLASSES:
            rejected[col] = f"only one class ({values.iloc[0][:80]!r})"
        elif n_classes > LABEL_MAX_CLASSES:
            rejected[col] = f"{n_classes:,} classes (at most {LABEL_MAX_CLASSES}): an id, not a label"
        elif (longest := max(len(v) for v in values.unique())) > MAX_LABEL_CHARS:
            rejected[col] = f"a class name of {longest:,} characters (at most {MAX_LABEL_CHARS}): not a label"
        else:
            counts = values.value_counts()
            usable[col] = {str(k): int(v) for k, v in counts.items()}
            if s.isna().any():
                usable[col]["(missing)"] = int(s.isna().sum())
    return usable, rejected


def vocabulary_overlap(adata: AnnData, counts: dict[str, object], vocabularies: Mapping[str, Vocabulary],
                       gene_ids) -> dict[str, dict[str, object]]:  # noqa: ANN001 - GeneIds
    """Per model: genes in its vocabulary and the share of (sampled) counts they carry; ok or refused."""
    if not vocabularies or not counts.get("source"):
        return {}
    source = counts["source"]
    matrix = adata.raw.X if source == "raw.X" else (adata.X if source == "X" else
                                                     adata.layers[source.split("'")[1]])
    block = matrix[_sample_rows(adata.n_obs)]
    if counts.get("recovered"):  # shares of counts, not of log values
        block = block.expm1() if sp.issparse(block) else np.expm1(block)
    per_gene = np.asarray(abs(block).sum(axis=0)).ravel()
    total = float(per_gene.sum()) or 1.0
    out = {}
    for model, vocab in vocabularies.items():
        keys = gene_ids.ensembl_id if vocab.kind == "ensembl" else gene_ids.symbol
        inside = np.array([bool(k) and k in vocab.genes for k in keys])
        n_genes, share = int(inside.sum()), float(per_gene[inside].sum() / total) if len(inside) else 0.0
        ok = n_genes >= MIN_OVERLAP_GENES and share >= MIN_OVERLAP_COUNT_SHARE
        out[model] = {"genes": n_genes, "count_share": round(share, 4), "ok": ok,
                      "level": "green" if share >= 0.75 and ok else ("amber" if ok else "red"),
                      "message": "" if ok else (
                          f"of the file's {len(keys):,} genes, {n_genes:,} carrying {share:.0%} of the counts are in "
                          f"{model}'s vocabulary "
                          f"(needs at least {MIN_OVERLAP_GENES:,} genes and {MIN_OVERLAP_COUNT_SHARE:.0%}); check "
                          "that the genes are human and named by Ensembl id or current symbol.")}
    return out


def check_anndata(adata: AnnData, vocabularies: Mapping[str, Vocabulary] | None = None) -> dict[str, object]:
    """The report for an opened AnnData (see ``check_file``)."""
    errors: list[dict] = []
    warnings: list[dict] = []
    report: dict[str, object] = {"n_cells": int(adata.n_obs), "n_genes": int(adata.n_vars)}
    if adata.n_obs == 0:
        errors.append(_msg("no_cells", "The file has 0 cells (no rows in X): export it again with its cells."))
    if adata.n_vars == 0:
        errors.append(_msg("no_genes", "The file has 0 genes (no columns in X): export it again with its genes."))
    if errors:
        return {**report, "ok": False, "errors": errors, "warnings": warnings}
    dup_cells = int(adata.obs_names.duplicated().sum())
    if dup_cells:
        errors.append(_msg("duplicate_cells", f"{dup_cells} cell names are duplicated (e.g. "
                                              f"{adata.obs_names[adata.obs_names.duplicated()][0]!r}); make them "
                                              "unique with adata.obs_names_make_unique()."))
    dup_genes = int(adata.var_names.duplicated().sum())
    if dup_genes:
        warnings.append(_msg("duplicate_genes", f"{dup_genes} gene names are duplicated (e.g. "
                                                f"{adata.var_names[adata.var_names.duplicated()][0]!r}); the first "
                                                "occurrence of each is used by scGPT, Ensembl ids by Geneformer."))
    counts, count_errors, count_warnings = find_counts(adata)
    errors += count_errors
    warnings += count_warnings
    genes_var = adata.raw.var if counts.get("source") == "raw.X" else adata.var
    genes_names = adata.raw.var_names if counts.get("source") == "raw.X" else adata.var_names
    ids = resolve_gene_ids(genes_var, genes_names)
    if not any(ids.ensembl_id):
        errors.append(_msg("genes_unrecognised",
                           f"None of the {len(genes_names):,} gene names is a human Ensembl id or GENCODE symbol "
                           f"(e.g. {genes_names[0]!r}). Name genes by Ensembl id (ENSG...) or HGNC symbol."))
    elif ids.n_unmapped:
        examples = ", ".join(ids.unmapped_examples[:3])
        warnings.append(_msg("genes_unmapped", f"{ids.n_unmapped:,} of {len(genes_names):,} gene symbols have no "
                                               f"Ensembl id in GENCODE v48 (e.g. {examples}); they are left out "
                                               "of Geneformer's input."))
    if ids.n_versioned:
        warnings.append(_msg("ensembl_versions", f"{ids.n_versioned:,} Ensembl ids carry a version suffix (e.g. "
                                                 f"{ids.versioned_example}); they are matched without it, since "
                                                 "versions change between annotation releases."))
    if ids.n_ensembl_given and ids.n_mapped + ids.n_unmapped and ids.source.endswith("(mixed ids and symbols)"):
        warnings.append(_msg("mixed_gene_ids", f"The gene names mix {ids.n_ensembl_given:,} Ensembl ids and "
                                               f"{ids.n_mapped + ids.n_unmapped:,} symbols; the symbols were mapped "
                                               f"to Ensembl ids with GENCODE v48 ({ids.n_unmapped:,} without a "
                                               "match). Name all genes one way if you can."))
    usable, rejected = label_columns(adata.obs)
    overlap = vocabulary_overlap(adata, counts, vocabularies or {}, ids) if not errors else {}
    return {**report, "ok": not errors, "errors": errors, "warnings": warnings, "values": counts,
            "genes": ids.report(), "overlap": overlap, "label_columns": usable, "rejected_label_columns": rejected}


def check_file(path: Path, name: str | None = None,
               vocabularies: Mapping[str, Vocabulary] | None = None) -> dict[str, object]:
    """Open ``path`` (format from ``name`` as uploaded) and report; never raises for a bad file.

    The format's gate validates the whole structure first (sparse matrices and codes block by block): this is a
    file's first check, run on the server in a separate process (``inference/check_sandbox.py``)."""
    try:
        check_structure(Path(path), detect_format(Path(path), name), full=True)
        adata, fmt = open_anndata(Path(path), name)
    except UnsafeFileError as exc:
        return {"file": name or Path(path).name, "ok": False, "format": None,
                "errors": [_msg(UNSAFE, str(exc))], "warnings": []}
    except UnreadableFileError as exc:
        return {"file": name or Path(path).name, "ok": False, "format": None,
                "errors": [_msg("unreadable", str(exc))], "warnings": []}
    try:
        return {"file": name or Path(path).name, "format": fmt, "gate": GATE, **check_anndata(adata, vocabularies)}
    except Exception as exc:  # a file that opens but breaks on reading: truncated, corrupted
        return {"file": name or Path(path).name, "ok": False, "format": fmt,
                "errors": [_msg("unreadable", f"The file opened but could not be read ({type(exc).__name__}: "
                                              f"{exc}); it may be truncated or corrupted.")], "warnings": []}
    finally:
        if getattr(adata, "isbacked", False):
            adata.file.close()


@dataclass(frozen=True)
class CheckReport:
    """The typed reading of a check report. The report itself stays the plain dict ``check_file`` returns (it is
    stored as JSON and served by the API as is); every consumer reads it through this, not by its keys."""

    data: Mapping[str, Any]

    @property
    def ok(self) -> bool:
        return bool(self.data.get("ok"))

    @property
    def file(self) -> str:
        return str(self.data.get("file") or "")

    @property
    def format(self) -> str | None:
        return self.data.get("format")

    @property
    def n_cells(self) -> int:
        return int(self.data.get("n_cells") or 0)

    @property
    def n_genes(self) -> int:
        return int(self.data.get("n_genes") or 0)

    @property
    def values(self) -> dict[str, Any]:
        """Where the raw counts are and how they were found (``source``, ``recovered``, ``detail``)."""
        return dict(self.data.get("values") or {})

    @property
    def genes(self) -> dict[str, Any]:
        return dict(self.data.get("genes") or {})

    @property
    def overlap(self) -> dict[str, dict[str, Any]]:
        """Per backend: genes in its vocabulary, share of the counts, ``ok``, level and message."""
        return dict(self.data.get("overlap") or {})

    @property
    def label_columns(self) -> dict[str, dict[str, int]]:
        """Usable label columns: name -> {class: cells}."""
        return dict(self.data.get("label_columns") or {})

    @property
    def rejected_label_columns(self) -> dict[str, str]:
        """Columns not offered as labels, with why."""
        return dict(self.data.get("rejected_label_columns") or {})

    @property
    def errors(self) -> list[dict[str, str]]:
        return list(self.data.get("errors") or [])

    @property
    def warnings(self) -> list[dict[str, str]]:
        return list(self.data.get("warnings") or [])

    @property
    def gated(self) -> bool:
        """Whether the file passed the structure gate when it was checked (reports of files stored before it was
        built did not)."""
        return self.data.get("gate") == GATE

    @property
    def unreadable(self) -> bool:
        return any(e.get("code") in UNREADABLE_CODES for e in self.errors)

    def problems(self) -> str:
        """The errors in one sentence, for an exception's message."""
        return " ".join(e["message"] for e in self.errors) or "The file is not usable."
