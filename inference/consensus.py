"""Cluster consensus ("majority voting", as CellTypist does it): over-cluster the query, give every cell its
cluster's most common predicted label.

A single cell's call is noisy; a cluster of similar cells is not. Over-clustering (many small Leiden clusters on
the kNN graph of the embedding, resolution growing with the cell count) keeps rare types in clusters of their own
while smoothing the calls inside each one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

NEIGHBOURS = 15


def resolution_for(n_cells: int) -> float:
    """CellTypist's schedule: finer clusters for more cells."""
    for limit, resolution in ((5_000, 5.0), (20_000, 10.0), (40_000, 15.0), (100_000, 20.0), (200_000, 25.0)):
        if n_cells < limit:
            return resolution
    return 30.0


def over_cluster(basis: np.ndarray, seed: int = 0, resolution: float | None = None) -> np.ndarray:
    """Leiden cluster ids (as strings) on the kNN graph of ``basis`` (cells x dims)."""
    import scanpy as sc
    from anndata import AnnData

    n = len(basis)
    if n < 3:
        return np.array(["0"] * n)
    a = AnnData(obsm={"X_basis": np.asarray(basis, dtype=np.float32)}, obs=pd.DataFrame(index=map(str, range(n))))
    sc.pp.neighbors(a, n_neighbors=min(NEIGHBOURS, n - 1), use_rep="X_basis", random_state=seed)
    sc.tl.leiden(a, resolution=resolution or resolution_for(n), random_state=seed, flavor="igraph",
                 n_iterations=2, directed=False)
    return a.obs["leiden"].astype(str).to_numpy()


def majority_vote(clusters: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Each cell gets its cluster's most common predicted label ("unassigned" counts as a label: a cluster mostly
    left unassigned stays so); ties go to the label first in alphabetical order."""
    table = pd.DataFrame({"cluster": np.asarray(clusters).astype(str), "label": np.asarray(predicted).astype(str)})
    counts = table.groupby(["cluster", "label"]).size().reset_index(name="n")
    counts = counts.sort_values(["cluster", "n", "label"], ascending=[True, False, True])
    winner = counts.drop_duplicates("cluster").set_index("cluster")["label"]
    return table["cluster"].map(winner).to_numpy().astype(str)
