"""Raw counts of a stored file, whole or a block of cells at a time.

An ``.h5ad`` whose counts are in X or ``.raw`` (row-wise sparse or dense) stays open backed: a block reads only
its rows of that one matrix from disk, so a query's memory grows with the block, not with the file. anndata's
backed mode holds layers in memory, so counts in a layer are read whole; so are a column-wise (CSC) matrix
(slicing its rows would read every column, per block) and the other formats (10x h5, MTX, loom, CSV), which are
then cut into blocks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from inference.checks import find_counts
from inference.readers import UnreadableFileError, open_anndata


class AnnotationError(ValueError):
    """Input the pipeline cannot use; the message says what was found and what to do."""


@dataclass
class DataInput:
    path: str
    name: str
    sha256: str


class Counts:
    """Where a file's counts are (found once, from a sample) and its cells' counts on demand."""

    def __init__(self, inp: DataInput) -> None:
        try:
            self._opened, _ = open_anndata(Path(inp.path), inp.name, backed=True)
        except (UnreadableFileError, OSError) as exc:
            raise AnnotationError(f"The stored copy of {inp.name} cannot be read: {exc} Upload the file "
                                  "again.") from exc
        self._backed = bool(getattr(self._opened, "isbacked", False))
        self._closed = False
        if self._opened.n_obs == 0:
            self.close()
            raise AnnotationError(f"{inp.name} has no cells: upload a file with at least one cell.")
        try:
            self.found, errors, _ = find_counts(self._opened)
            if not errors and self._backed and _column_wise(self._matrix()):
                in_memory = self._opened.to_memory()  # read once, not once per block
                self.close()
                self._opened, self._backed, self._closed = in_memory, False, False
        except BaseException:
            self.close()
            raise
        if errors:
            self.close()
            raise AnnotationError(f"{inp.name}: " + " ".join(e["message"] for e in errors))
        self.obs: pd.DataFrame = self._opened.obs
        self.obs_names = self._opened.obs_names
        self.n_obs = self._opened.n_obs
        self.source = _summary(self.found)

    def __enter__(self) -> Counts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the file; an in-memory file's counts stay readable (nothing to release)."""
        if self._backed and not self._closed:
            self._opened.file.close()
            self._closed = True

    def _matrix(self):  # noqa: ANN202 - a backed dataset or an in-memory matrix
        source = self.found["source"]
        if source == "raw.X":
            return self._opened.raw.X
        if source.startswith("layers"):
            return self._opened.layers[source.split("'")[1]]
        return self._opened.X

    def block(self, start: int, stop: int) -> AnnData:
        """Cells ``start:stop`` in memory, raw counts in X (from X, a layer, .raw, or recovered). Only the counts'
        own matrix is read (not the other matrices of the file)."""
        if self._closed:
            raise ValueError("The file of these counts is closed.")
        source = self.found["source"]
        var = self._opened.raw.var if source == "raw.X" else self._opened.var
        return _counts_of(self._matrix()[start:stop], var, self._opened.obs.iloc[start:stop], self.found)

    def whole(self) -> AnnData:
        return self.block(0, self.n_obs)

    def blocks(self, size: int) -> Iterator[tuple[int, AnnData]]:
        for start in range(0, self.n_obs, size):
            yield start, self.block(start, min(start + size, self.n_obs))


def _summary(counts: dict) -> dict:
    """Where the counts came from, as recorded in provenance."""
    return {k: v for k, v in counts.items() if k in ("source", "recovered", "totals_column")}


def _column_wise(matrix) -> bool:  # noqa: ANN001
    return getattr(matrix, "format", None) == "csc" or sp.isspmatrix_csc(matrix)


def _counts_of(x, var: pd.DataFrame, obs: pd.DataFrame, counts: dict) -> AnnData:  # noqa: ANN001 - any matrix
    x = sp.csr_matrix(x, dtype=np.float32)
    if counts.get("recovered"):
        totals = obs[counts["totals_column"]].to_numpy(dtype=np.float64)
        x = sp.diags(totals / counts["target_sum"]) @ x.expm1()
        x.data = np.round(x.data)
        x.eliminate_zeros()
        x = sp.csr_matrix(x, dtype=np.float32)
    out = AnnData(X=x, obs=obs.copy(), var=var.copy())
    out.uns["counts_source"] = _summary(counts)
    return out


def load_counts(inp: DataInput) -> AnnData:
    """The whole file's cells with raw counts in X."""
    with Counts(inp) as counts:
        return counts.whole()
