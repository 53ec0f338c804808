"""A multi-batch dataset from real PBMCs: the cells split at random into two batches, the second given a simulated
batch effect (a lab's or a kit's: every gene scaled by its own log-normal factor, then the depth thinned).

Integration methods are judged on such data by whether they undo the effect (batches mix) without merging cell
types; the effect is strong enough that an uncorrected PCA separates the batches.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp


def with_batch_effect(adata: ad.AnnData, seed: int = 0, gene_sd: float = 0.6, depth: float = 0.6,
                      batches: tuple[str, str] = ("lab-A", "lab-B")) -> ad.AnnData:
    """A copy of ``adata`` (raw counts in X) with ``obs['batch']``: half the cells (at random) keep their counts,
    the other half get each gene's counts scaled by exp(N(0, gene_sd)) (Poisson-resampled) and thinned to
    ``depth`` of their reads (binomial)."""
    rng = np.random.default_rng(seed)
    x = sp.csr_matrix(adata.X, dtype=np.float32)
    second = rng.random(adata.n_obs) < 0.5
    factor = np.exp(rng.normal(0.0, gene_sd, adata.n_vars)).astype(np.float32)
    shifted = x[second].tocoo()
    values = rng.poisson(shifted.data * factor[shifted.col])
    values = rng.binomial(values, depth).astype(np.float32)
    shifted = sp.csr_matrix((values, (shifted.row, shifted.col)), shape=shifted.shape)
    shifted.eliminate_zeros()
    rows = np.empty(adata.n_obs, dtype=np.int64)
    rows[np.flatnonzero(~second)] = np.arange((~second).sum())
    rows[np.flatnonzero(second)] = (~second).sum() + np.arange(second.sum())
    stacked = sp.vstack([x[~second], shifted]).tocsr()[rows]
    out = ad.AnnData(X=stacked, obs=adata.obs.copy(), var=adata.var.copy())
    out.obs["batch"] = np.where(second, batches[1], batches[0])
    out.obs["batch"] = out.obs["batch"].astype("category")
    return out


def write_multibatch(source: Path, dest: Path, seed: int = 0, **effect: float) -> Path:
    """``source`` (an .h5ad of raw counts) written to ``dest`` with two batches, the second shifted."""
    with_batch_effect(ad.read_h5ad(source), seed, **effect).write_h5ad(dest, compression="gzip")
    return dest


def plain_pcs(adata: ad.AnnData) -> np.ndarray:
    """The plain scanpy recipe a user would write (normalise, log1p, 2,000 HVGs, scale, PCA 50) on raw counts:
    the uncorrected embedding tests and benchmarks score, computed without the platform's code."""
    import scanpy as sc

    adata = adata.copy()
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(adata, n_top_genes=2000)
    adata = adata[:, adata.var["highly_variable"]].copy()
    adata.X = adata.X.toarray()
    sc.pp.scale(adata, max_value=10)
    sc.tl.pca(adata, n_comps=50, random_state=0)
    return np.asarray(adata.obsm["X_pca"], dtype=np.float32)
