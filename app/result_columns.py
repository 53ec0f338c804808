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
