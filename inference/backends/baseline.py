"""The baseline: normalise to 10k counts, log1p, the reference's 2,000 highly variable genes (seurat flavour).

No foundation model: the plain recipe a user would write, so users see what the foundation models add. Its
features feed the same heads as the others. They are deliberately *not* scaled by the reference's gene means and
deviations: under a shift (stimulated, treated or another lab's cells) the query's genes move away from the
reference's statistics, and scaled features lost up to 0.02 accuracy and macro-F1 to the unscaled recipe (measured
in docs/BENCHMARKS.md). Only the UMAP's basis is a PCA of scaled features, as scanpy draws it.

What is stored as its embedding (embedding store, run folder, ``obsm['X_baseline']``) is that basis, 50 numbers
per cell, as ``obsm['X_pca']`` would be; the head's 2,000 genes are recomputed from the counts block by block
whenever a head needs them (a block's normalisation and a column pick), so a million-cell run never holds or
writes 8 GB of them.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from inference.backends.base import Backend, Embedding, Progress, ShouldStop, check_stop
from inference.genes import resolve_gene_ids

CHUNK = 10_000


def gene_keys(adata: AnnData) -> list[str]:
    """One identifier per gene, Ensembl where known (so reference and query match across naming styles)."""
    ids = resolve_gene_ids(adata.var, adata.var_names)
    return [e or s or str(n) for e, s, n in zip(ids.ensembl_id, ids.symbol, adata.var_names, strict=True)]


def log_normalised(x, target: float = 1e4):  # noqa: ANN001, ANN201 - sparse or dense block
    """normalize_total(target_sum=1e4) then log1p, per row block, keeping sparsity."""
    x = sp.csr_matrix(x, dtype=np.float32)
    totals = np.asarray(x.sum(axis=1)).ravel()
    scale = np.divide(target, totals, out=np.zeros_like(totals), where=totals > 0)
    x = sp.diags(scale.astype(np.float32)) @ x
    x.data = np.log1p(x.data)
    return x


class BaselineBackend(Backend):
    backend = "baseline"
    variant = ""

    def __init__(self, n_top_genes: int = 2000, n_pcs: int = 50, seed: int = 0) -> None:
        self.n_top_genes = n_top_genes
        self.n_pcs = n_pcs
        self.seed = seed
        self.genes: list[str] | None = None
        self.scaler = None
        self.pca = None

    def load(self) -> None:
        self.loads += 1  # nothing to load: the model is learnt from each reference

    def fit(self, reference: AnnData) -> None:
        import scanpy as sc
        from sklearn.decomposition import PCA
        from sklearn.preprocessing import StandardScaler

        ref = AnnData(X=log_normalised(reference.X), var={"key": gene_keys(reference)})
        ref.var_names = [f"g{i}" for i in range(ref.n_vars)]
        n_top = min(self.n_top_genes, ref.n_vars)
        sc.pp.highly_variable_genes(ref, n_top_genes=n_top, flavor="seurat")
        hvg = ref.var["highly_variable"].to_numpy()
        self.genes = list(ref.var["key"][hvg])
        block = ref.X[:, hvg].toarray()
        self.scaler = StandardScaler().fit(block)
        scaled = np.clip(self.scaler.transform(block), -10, 10)
        self.pca = PCA(n_components=min(self.n_pcs, *scaled.shape), random_state=self.seed).fit(scaled)

    head_reads_counts = True

    def head_input(self, adata: AnnData, progress: Progress | None = None,
                   should_stop: ShouldStop | None = None) -> np.ndarray:
        """The reference's 2,000 genes of ``adata``, log-normalised (absent genes are zero): what the head reads."""
        if self.genes is None:
            raise RuntimeError("The baseline has not been fitted on a reference.")
        keys = gene_keys(adata)
        position = {k: i for i, k in enumerate(keys)}
        cols = np.array([position.get(g, -1) for g in self.genes])
        present = cols >= 0
        out = np.zeros((adata.n_obs, len(self.genes)), dtype=np.float32)
        for start in range(0, adata.n_obs, CHUNK):
            check_stop(should_stop)
            stop = min(start + CHUNK, adata.n_obs)
            block = log_normalised(adata.X[start:stop])
            out[start:stop, present] = block[:, cols[present]].toarray()
            if progress:
                progress(stop, adata.n_obs)
        return out

    def basis(self, features: np.ndarray) -> np.ndarray:
        """50 PCs of the features scaled by the reference's gene statistics (clipped at 10): the UMAP's basis."""
        return self.pca.transform(np.clip(self.scaler.transform(features), -10, 10)).astype(np.float32)

    def embed(self, adata: AnnData, progress: Progress | None = None,
              should_stop: ShouldStop | None = None) -> Embedding:
        genes = self.head_input(adata, progress, should_stop)
        present = len(set(self.genes) & set(gene_keys(adata)))
        basis = self.basis(genes)
        return Embedding(features=basis, basis=basis, genes_used=present, head_input=genes)

    needs_weights = False

    def genes_present(self, adata: AnnData) -> tuple[int, int] | None:
        return len(set(self.genes or ()) & set(gene_keys(adata))), len(self.genes or ())

    @property
    def has_state(self) -> bool:
        return True

    def provenance(self) -> dict[str, object]:
        return {"backend": self.backend, "checksum": "baseline:v2", "trained": True, "weights": "none"}

    def fit_settings(self) -> dict[str, object]:
        return {"n_top_genes": self.n_top_genes, "n_pcs": self.n_pcs, "seed": self.seed, "flavor": "seurat"}

    def embedding_settings(self) -> dict[str, object]:
        """The baseline's embedding follows what it learnt from its reference (genes, scaling, PCA). ``stores``
        keeps entries written before the embedding became the 50 PCs (2,000 genes each) from being served: the
        model and its heads are unchanged, so its checksum (which saved annotators are checked against) is too."""
        from inference.embedding_store import state_digest

        if self.genes is None:
            raise RuntimeError("The baseline has not been fitted on a reference.")
        return {"state": state_digest(self.state()), "stores": "pcs"}

    def state(self) -> dict[str, np.ndarray]:
        """What ``fit`` learnt, as plain arrays (kept with the cached head)."""
        return {"genes": np.array(self.genes), "scaler_mean": self.scaler.mean_, "scaler_scale": self.scaler.scale_,
                "pca_components": self.pca.components_, "pca_mean": self.pca.mean_}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        from sklearn.decomposition import PCA
        from sklearn.preprocessing import StandardScaler

        self.genes = [str(g) for g in state["genes"]]
        self.scaler = StandardScaler()
        self.scaler.mean_, self.scaler.scale_ = state["scaler_mean"], state["scaler_scale"]
        self.scaler.var_ = self.scaler.scale_ ** 2
        self.scaler.n_features_in_ = len(self.genes)
        self.pca = PCA(n_components=len(state["pca_components"]))
        self.pca.components_, self.pca.mean_ = state["pca_components"], state["pca_mean"]
        self.pca.n_features_in_ = len(self.genes)
        self.pca.whiten = False

    def describe(self) -> dict[str, object]:
        return {"backend": self.backend, "variant": "", "device": "cpu", "n_top_genes": self.n_top_genes,
                "n_pcs": self.n_pcs, "weights": {"origin": "none", "trained": True,
                                                  "detail": "learnt from the reference at each run"}}
