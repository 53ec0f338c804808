"""Which per-cell values a finished run holds, and whether each is categorical or continuous.

Read from the predictions file's footer (its schema), never from the cells, so asking costs the same for a million
cells as for a hundred. Views fill their choices from it (the UMAP's colouring), so a run offers what it has.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from inference.run_files import PREDICTIONS, PROBABILITY_PREFIX

__all__ = ["PROBABILITY_PREFIX", "column_kind", "run_columns"]

CATEGORICAL, CONTINUOUS = "categorical", "continuous"
# what identifies a cell and where it is drawn, not a value of the cell
NOT_VALUES = ("cell_id", "umap_1", "umap_2")


def column_kind(dtype: pa.DataType) -> str | None:
    """Labels, text and yes/no are categorical; numbers continuous; anything else (lists, times) neither."""
    if pa.types.is_dictionary(dtype) or pa.types.is_boolean(dtype) or pa.types.is_string(dtype) \
            or pa.types.is_large_string(dtype):
        return CATEGORICAL
    if pa.types.is_integer(dtype) or pa.types.is_floating(dtype):
        return CONTINUOUS
    return None


def run_columns(platform, run_id: str) -> dict[str, str]:  # noqa: ANN001 - app.platform.Platform
    """Column name -> ``"categorical"`` or ``"continuous"`` for the per-cell values of a finished run, in file order.

    Raises what ``platform.runs.result_dir`` raises for an unknown or unfinished run."""
    schema = pq.read_schema(platform.runs.result_dir(run_id) / PREDICTIONS)
    kinds = {f.name: column_kind(f.type) for f in schema if f.name not in NOT_VALUES}
    return {name: kind for name, kind in kinds.items() if kind}


# the query's own columns and genes, offered beside the run's: a colour key names where it comes from
QUERY_PREFIX, GENE_PREFIX = "query:", "gene:"
ROWS_PER_READ = 10_000  # a gene's column is read this many cells at a time: memory bounded by a chunk, not X


class UnknownGene(KeyError):
    """The gene asked for is not among the query's genes."""


def _open_query(platform, run_id: str):  # noqa: ANN001, ANN202 - Platform -> AnnData (backed)
    """The run's query file, opened backed through the readers (their structural gate first)."""
    from inference.readers import open_anndata

    ds = platform.datasets.get(platform.runs.get(run_id).dataset_id)
    return open_anndata(platform.datasets.path(ds), ds.file_name)[0]


def query_columns(platform, run_id: str) -> tuple[dict[str, str], list[str]]:  # noqa: ANN001
    """(obs column -> kind, gene names) of the run's query: what else its UMAP can be coloured by. Read from the
    file's obs and var only (the matrix stays on disk)."""
    adata = _open_query(platform, run_id)
    try:
        kinds = {name: _series_kind(adata.obs[name]) for name in adata.obs.columns}
        return {name: kind for name, kind in kinds.items() if kind}, [str(g) for g in adata.var_names]
    finally:
        adata.file.close()


def _series_kind(values) -> str | None:  # noqa: ANN001 - pandas Series
    import pandas as pd

    if pd.api.types.is_bool_dtype(values) or isinstance(values.dtype, pd.CategoricalDtype) \
            or pd.api.types.is_string_dtype(values) or values.dtype == object:
        return CATEGORICAL
    if pd.api.types.is_numeric_dtype(values):
        return CONTINUOUS
    return None


def query_values(platform, run_id: str, key: str, cell_ids) -> object:  # noqa: ANN001
    """The values of ``key`` (``query:<obs column>`` or ``gene:<gene>``) for the run's cells ``cell_ids``, in
    their order: an obs column, or one gene's column of X read ``ROWS_PER_READ`` cells at a time (sparse or
    dense), never the whole matrix. Raises ``UnknownGene`` for a gene the query does not have."""
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    adata = _open_query(platform, run_id)
    try:
        order = pd.Index(adata.obs_names).get_indexer(pd.Index(cell_ids).astype(str))
        if (order < 0).any():  # cells the query's names do not find: the run's cells are the file's, in order
            order = np.arange(len(cell_ids)) if len(cell_ids) == adata.n_obs else order
        if key.startswith(QUERY_PREFIX):
            values = adata.obs[key[len(QUERY_PREFIX):]]
            if isinstance(values.dtype, pd.CategoricalDtype):
                values = values.cat.rename_categories([str(c) for c in values.cat.categories])
            return values.iloc[order].reset_index(drop=True) if (order >= 0).all() else \
                pd.Series(values.to_numpy(), dtype=object).reindex(order).reset_index(drop=True)
        gene = key[len(GENE_PREFIX):]
        where = np.flatnonzero(np.asarray(adata.var_names) == gene)
        if not len(where):
            raise UnknownGene(gene)
        column, j = np.zeros(adata.n_obs, dtype=np.float32), int(where[0])
        for start in range(0, adata.n_obs, ROWS_PER_READ):
            chunk = adata.X[start:start + ROWS_PER_READ]
            part = chunk[:, j]
            column[start:start + chunk.shape[0]] = (part.toarray() if sp.issparse(part) else np.asarray(part)).ravel()
        return np.where(order >= 0, column[np.maximum(order, 0)], np.nan).astype(np.float32)
    finally:
        adata.file.close()
