"""UMAP of embeddings: umap-learn, seeded, on every cell up to a size; beyond it, fit on a sample."""

from __future__ import annotations

import numpy as np

FULL_UMAP_MAX_CELLS = 50_000
DEFAULT_UMAP = {"n_neighbors": 15, "min_dist": 0.3, "metric": "euclidean"}


def umap_layout(basis: np.ndarray, seed: int = 0, params: dict | None = None,
                full_max: int = FULL_UMAP_MAX_CELLS) -> tuple[np.ndarray, dict[str, object]]:
    """2-D coordinates per cell and what was done (recorded in the run's provenance)."""
    import umap

    p = {**DEFAULT_UMAP, **(params or {})}
    n = len(basis)
    if n < 4:
        return np.zeros((n, 2), dtype=np.float32), {"method": "none", "reason": f"only {n} cells"}
    p["n_neighbors"] = int(min(p["n_neighbors"], n - 1))
    reducer = umap.UMAP(n_components=2, random_state=seed, **p)
    if n <= full_max:
        coords = reducer.fit_transform(basis)
        info = {"method": "umap-learn", "fit_on": n, "params": p, "seed": seed}
    else:
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(n, size=full_max, replace=False))
        reducer.fit(basis[sample])
        coords = reducer.transform(basis)
        info = {"method": "umap-learn fit on a sample, transform of the rest", "fit_on": full_max, "params": p,
                "seed": seed}
    return np.asarray(coords, dtype=np.float32), info
