"""Raw counts of a stored file, whole or a block of cells at a time.

An ``.h5ad`` stays open backed: a block reads only its rows from disk, so a query's memory grows with the block,
not with the file. Other formats (10x h5, MTX, loom, CSV) are read whole by their readers and cut into blocks.
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
        try:
            self.found, errors, _ = find_counts(self._opened)
        except BaseException:
            self.close()
            raise
        if errors:
            self.close()
            raise AnnotationError(f"{inp.name}: " + " ".join(e["message"] for e in errors))
        self.obs: pd.DataFrame = self._opened.obs
        self.obs_names = self._opened.obs_names
        self.n_obs = self._opened.n_obs
        self.source = {k: v for k, v in self.found.items() if k in ("source", "recovered", "totals_column")}

    def __enter__(self) -> Counts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._backed:
            self._opened.file.close()
            self._backed = False

    def block(self, start: int, stop: int) -> AnnData:
        """Cells ``start:stop`` in memory, raw counts in X (from X, a layer, .raw, or recovered)."""
        part = self._opened[start:stop]
        return _counts_of(part.to_memory() if self._backed else part, self.found)

    def whole(self) -> AnnData:
        return self.block(0, self.n_obs)

    def blocks(self, size: int) -> Iterator[tuple[int, AnnData]]:
        for start in range(0, self.n_obs, size):
            yield start, self.block(start, min(start + size, self.n_obs))


def _counts_of(adata: AnnData, counts: dict) -> AnnData:
    source = counts["source"]
    if source == "raw.X":
        x, var = adata.raw.X, adata.raw.var.copy()
    elif source.startswith("layers"):
        x, var = adata.layers[source.split("'")[1]], adata.var.copy()
    else:
        x, var = adata.X, adata.var.copy()
    x = sp.csr_matrix(x, dtype=np.float32)
    if counts.get("recovered"):
        totals = adata.obs[counts["totals_column"]].to_numpy(dtype=np.float64)
        x = sp.diags(totals / counts["target_sum"]) @ x.expm1()
        x.data = np.round(x.data)
        x.eliminate_zeros()
        x = sp.csr_matrix(x, dtype=np.float32)
    out = AnnData(X=x, obs=adata.obs.copy(), var=var)
    out.uns["counts_source"] = {k: v for k, v in counts.items() if k in ("source", "recovered", "totals_column")}
    return out


def load_counts(inp: DataInput) -> AnnData:
    """The whole file's cells with raw counts in X."""
    with Counts(inp) as counts:
        return counts.whole()
