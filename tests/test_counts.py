"""Counts read a block of cells at a time, from wherever the file keeps them, equal to reading them whole."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from app.annotate import sha256_of
from inference.counts import AnnotationError, Counts, DataInput
from tests.conftest import PBMC


def _layouts(folder):
    """The same 599 real PBMCs' counts stored five ways users store them."""
    cells = ad.read_h5ad(PBMC)
    counts = sp.csr_matrix(cells.X, dtype=np.float32)
    totals = np.asarray(counts.sum(axis=1)).ravel()
    logged = sp.diags((1e4 / totals).astype(np.float32)) @ counts
    logged.data = np.log1p(logged.data)
    made = {}

    def save(name, adata):
        path = folder / f"{name}.h5ad"
        adata.write_h5ad(path)
        made[name] = path

    save("x_rows", ad.AnnData(X=counts, obs=cells.obs, var=cells.var))
    save("x_columns", ad.AnnData(X=sp.csc_matrix(counts), obs=cells.obs, var=cells.var))
    with_raw = ad.AnnData(X=counts, obs=cells.obs, var=cells.var)
    with_raw.raw = with_raw.copy()
    with_raw.X = logged
    save("raw", with_raw)
    save("layer", ad.AnnData(X=logged, obs=cells.obs, var=cells.var, layers={"counts": counts}))
    save("recovered", ad.AnnData(X=logged, obs=cells.obs.assign(n_counts=totals), var=cells.var))
    return counts, made


@pytest.mark.parametrize("layout", ["x_rows", "x_columns", "raw", "layer", "recovered"])
def test_blocks_equal_the_whole_wherever_the_counts_are(layout, tmp_path):
    counts, made = _layouts(tmp_path)
    path = made[layout]
    with Counts(DataInput(str(path), path.name, sha256_of(path))) as c:
        # the file stays open backed (X and .raw read per block; anndata holds layers in memory), except a
        # column-wise X, read once (its rows are not cheap to slice)
        assert c._backed == (layout != "x_columns")
        blocks = [b for _, b in c.blocks(128)]
        assert [b.n_obs for b in blocks] == [128, 128, 128, 128, 87]
        joined = sp.vstack([b.X for b in blocks]).tocsr()
        assert c.source["source"] == {"raw": "raw.X", "layer": "layers['counts']"}.get(layout, "X")
    assert (abs(joined - counts) > (0.5 if layout == "recovered" else 0)).nnz == 0
    assert list(blocks[1].obs_names) == list(ad.read_h5ad(path, backed="r").obs_names[128:256])
    if c._backed:
        with pytest.raises(ValueError, match="closed"):
            c.block(0, 10)


def test_a_file_without_cells_is_refused_by_name(tmp_path):
    path = tmp_path / "none.h5ad"
    ad.AnnData(X=sp.csr_matrix((0, 5), dtype=np.float32)).write_h5ad(path)
    with pytest.raises(AnnotationError, match="none.h5ad has no cells"):
        Counts(DataInput(str(path), path.name, "x"))
