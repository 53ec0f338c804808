"""The atlas-sized test data (bench/atlas_data.py): written block by block, so ten times the cells take about the
same memory; a readable .h5ad of real, thinned PBMC counts in two cell-type mixes, no cell a copy of another."""

from __future__ import annotations

import json
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest

from tests.conftest import REPO


def _make(cells: int, out, block: int = 5_000) -> dict:  # noqa: ANN001
    done = subprocess.run([sys.executable, str(REPO / "bench" / "atlas_data.py"), "--cells", str(cells), "--out",
                           str(out), "--block", str(block), "--json"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.slow
def test_ten_times_the_cells_take_about_the_same_memory(tmp_path):
    small, large = _make(10_000, tmp_path / "small.h5ad"), _make(100_000, tmp_path / "large.h5ad")
    assert large["nnz"] > 9 * small["nnz"]
    # what grows with the cells is obs (labels, names) and the drawn indices: tens of MB here, not the counts
    assert large["peak_rss_mb"] < small["peak_rss_mb"] + 150, (small, large)

    atlas = ad.read_h5ad(tmp_path / "large.h5ad", backed="r")
    assert atlas.shape == (100_000, large["genes"]) and atlas.obs_names.is_unique
    x = atlas.X[95_000:100_000]  # the last block: appended, not lost
    assert x.nnz > 0 and np.allclose(x.data, np.round(x.data)) and x.data.min() >= 1  # counts
    obs = atlas.obs
    assert set(obs["mix"]) == {"A", "B"} and abs((obs["mix"] == "B").mean() - 0.5) < 0.02
    in_b = obs.loc[obs["mix"] == "B", "celltype"].value_counts(normalize=True)
    in_a = obs.loc[obs["mix"] == "A", "celltype"].value_counts(normalize=True)
    assert in_b.max() - in_b.min() < 0.03  # mix B: the types evenly
    assert in_a["CD4 T"] > 0.35 and in_a["Megakaryocytes"] < 0.03  # mix A: as the source has them

    # cells drawn from the same source cell are not copies of it (thinned to their own depth)
    first = obs.iloc[:5_000]
    twins = first.groupby("source_cell", observed=True).indices
    pair = next(rows for rows in twins.values() if len(rows) >= 2)[:2]
    a, b = (atlas.X[int(i):int(i) + 1].toarray().ravel() for i in pair)
    assert not np.array_equal(a, b)
    atlas.file.close()
