"""Cluster consensus ("majority voting", as CellTypist does it): over-cluster the query, give every cell its
cluster's most common predicted label.

A single cell's call is noisy; a cluster of similar cells is not. Over-clustering (many small Leiden clusters on
the kNN graph of the embedding, resolution growing with the cell count) keeps rare types in clusters of their own
while smoothing the calls inside each one.

Above ``CLUSTER_MAX_CELLS`` cells the graph is built on a seeded sample of that many and every other cell joins
the cluster whose centre (mean embedding of its sampled cells) is nearest, as the UMAP of a large run is fitted on
a sample and places the rest. A million cells' kNN graph and Leiden took 4.5 minutes and 4.6 GiB on two cores
(docs/BENCHMARKS.md); over-clusters are small local patches, so their centres place a cell as its neighbours would.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

NEIGHBOURS = 15
CLUSTER_MAX_CELLS = 200_000
ASSIGN_CHUNK = 50_000


def resolution_for(n_cells: int) -> float:
    """CellTypist's schedule: finer clusters for more cells."""
    for limit, resolution in ((5_000, 5.0), (20_000, 10.0), (40_000, 15.0), (100_000, 20.0), (200_000, 25.0)):
        if n_cells < limit:
            return resolution
    return 30.0


def over_cluster(basis: np.ndarray, seed: int = 0, resolution: float | None = None,
                 max_cells: int = CLUSTER_MAX_CELLS) -> np.ndarray:
    """Leiden cluster ids (as strings) on the kNN graph of ``basis`` (cells x dims); above ``max_cells`` cells, on a
    seeded sample of them, the other cells joining the nearest cluster centre."""
    n = len(basis)
    resolution = resolution or resolution_for(n)
    if n <= max_cells:
        return _leiden(np.asarray(basis, dtype=np.float32), seed, resolution)
    sample = np.sort(np.random.default_rng(seed).choice(n, size=max_cells, replace=False))
    sampled = np.asarray(basis[sample], dtype=np.float32)
    ids = _leiden(sampled, seed, resolution)
    names, codes = np.unique(ids, return_inverse=True)
    centres = np.zeros((len(names), sampled.shape[1]), dtype=np.float64)
    np.add.at(centres, codes, sampled)
    centres = (centres / np.bincount(codes)[:, None]).astype(np.float32)
    out = np.empty(n, dtype=object)
    out[sample] = ids
    rest = np.setdiff1d(np.arange(n), sample, assume_unique=True)
    squared = (centres ** 2).sum(axis=1)
    for start in range(0, len(rest), ASSIGN_CHUNK):  # bounded memory: a chunk's distances to every centre
        part = rest[start:start + ASSIGN_CHUNK]
        x = np.asarray(basis[part], dtype=np.float32)
        out[part] = names[np.argmin(squared[None, :] - 2 * x @ centres.T, axis=1)]
    return out.astype(str)


def _leiden(basis: np.ndarray, seed: int, resolution: float) -> np.ndarray:
    import scanpy as sc

    from inference.numba_cache import cache_kernels

    cache_kernels()  # scanpy's neighbours are umap-learn's kernels
    from anndata import AnnData

    n = len(basis)
    if n < 3:
        return np.array(["0"] * n)
    a = AnnData(obsm={"X_basis": basis}, obs=pd.DataFrame(index=map(str, range(n))))
    sc.pp.neighbors(a, n_neighbors=min(NEIGHBOURS, n - 1), use_rep="X_basis", random_state=seed)
    sc.tl.leiden(a, resolution=resolution, random_state=seed, flavor="igraph", n_iterations=2, directed=False)
    return a.obs["leiden"].astype(str).to_numpy()


def majority_vote(clusters: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Each cell gets its cluster's most common predicted label ("unassigned" counts as a label: a cluster mostly
    left unassigned stays so); ties go to the label first in alphabetical order."""
    table = pd.DataFrame({"cluster": np.asarray(clusters).astype(str), "label": np.asarray(predicted).astype(str)})
    counts = table.groupby(["cluster", "label"]).size().reset_index(name="n")
    counts = counts.sort_values(["cluster", "n", "label"], ascending=[True, False, True])
    winner = counts.drop_duplicates("cluster").set_index("cluster")["label"]
    return table["cluster"].map(winner).to_numpy().astype(str)
