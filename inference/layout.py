"""UMAP of embeddings, seeded: on every cell up to a size, beyond it fit on a sample and place the rest.

Measured on pbmc3k resampled to 100,000 cells (``python bench/umap_choice.py``, docs/BENCHMARKS.md): umap-learn's
spectral start is what made large runs slow (one core: 20 s at 10k cells, 23-76 s at 20k depending on the draw,
over 5 minutes at 50k), while with a PCA start the time follows the cells (16 s at 20k, 42 s at 50k, 80 s at
100k). So: spectral (umap-learn's and scanpy's default) up to ``SPECTRAL_MAX_CELLS``, a PCA start above; every
cell in the fit up to ``FULL_UMAP_MAX_CELLS``; above that, fit on ``SAMPLE_CELLS`` cells drawn with the run's
seed and ``transform`` the other cells, ``TRANSFORM_CHUNK`` at a time (time then grows with the cells, not faster;
memory with the chunk). On a worker with a CUDA GPU and RAPIDS cuML installed, cuML's UMAP lays out the cells
instead (same sizes; on any cuML error the layout falls back to umap-learn and says why). What was done is
returned for the run's provenance and shown under the plot.
"""

from __future__ import annotations

import time

import numpy as np

from inference.numba_cache import cache_kernels

SPECTRAL_MAX_CELLS = 10_000
FULL_UMAP_MAX_CELLS = 100_000
SAMPLE_CELLS = 50_000
TRANSFORM_CHUNK = 50_000  # cells placed by one ``transform`` call: the layout's memory follows this, not the run
DEFAULT_UMAP = {"n_neighbors": 15, "min_dist": 0.3, "metric": "euclidean"}


def gpu_umap():  # noqa: ANN201 - cuml.manifold.UMAP or None
    """cuML's UMAP class where this worker has a CUDA GPU and cuML is installed, else None."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        from cuml.manifold import UMAP
    except Exception:  # noqa: BLE001 - any import failure means: not usable here
        return None
    return UMAP


def umap_layout(basis: np.ndarray, seed: int = 0, params: dict | None = None,
                full_max: int | None = None, sample_cells: int | None = None,
                spectral_max: int | None = None, use_gpu: bool = True,
                chunk: int | None = None) -> tuple[np.ndarray, dict[str, object]]:
    """2-D coordinates per cell and what was done (recorded in the run's provenance). The sizes default to the
    module's constants as they are at the call (read then, not bound at import, so that setting them takes)."""
    full_max = FULL_UMAP_MAX_CELLS if full_max is None else full_max
    sample_cells = SAMPLE_CELLS if sample_cells is None else sample_cells
    spectral_max = SPECTRAL_MAX_CELLS if spectral_max is None else spectral_max
    chunk = TRANSFORM_CHUNK if chunk is None else chunk
    p = {**DEFAULT_UMAP, **(params or {})}
    n = len(basis)
    if n < 4:
        return np.zeros((n, 2), dtype=np.float32), {"method": "none", "reason": f"only {n} cells", "n_cells": n}
    p["n_neighbors"] = int(min(p["n_neighbors"], n - 1))
    asked_init = p.pop("init", None)
    started = time.perf_counter()
    fit_on = n if n <= full_max else min(sample_cells, n)
    gpu = gpu_umap() if use_gpu else None
    info: dict[str, object] = {}
    if gpu is not None:
        try:
            init = asked_init if asked_init in ("spectral", "random") else "spectral"  # cuML has no PCA start
            coords = _fit(lambda: gpu(n_components=2, random_state=seed, init=init, **p), basis, fit_on, seed,
                          chunk)
            import cuml

            info = {"method": "cuML UMAP on the GPU", "implementation": f"cuML {cuml.__version__}", "init": init}
        except Exception as exc:  # noqa: BLE001 - out of GPU memory or any cuML failure: the CPU still can
            info = {"gpu_fallback": f"cuML failed ({type(exc).__name__}: {exc}); umap-learn was used"}
    if "method" not in info:
        cache_kernels()
        import umap

        init = asked_init or ("spectral" if fit_on <= spectral_max else "pca")
        coords = _fit(lambda: umap.UMAP(n_components=2, random_state=seed, init=init, **p), basis, fit_on, seed,
                      chunk)
        info.update({"method": "umap-learn", "implementation": f"umap-learn {umap.__version__}",
                     "init": init})
    info["fit_on"] = fit_on
    info.update({"n_cells": n, "params": p, "seed": seed, "seconds": round(time.perf_counter() - started, 2)})
    return np.asarray(coords, dtype=np.float32), info


def _fit(make, basis: np.ndarray, fit_on: int, seed: int, chunk: int) -> np.ndarray:  # noqa: ANN001
    """Every cell when ``fit_on`` is all of them; else a seeded sample, the other cells placed by ``transform``
    a chunk at a time (bounded memory)."""
    n = len(basis)
    reducer = make()
    if fit_on == n:
        return np.asarray(reducer.fit_transform(np.asarray(basis)), dtype=np.float32)
    sample = np.sort(np.random.default_rng(seed).choice(n, size=fit_on, replace=False))
    rest = np.setdiff1d(np.arange(n), sample, assume_unique=True)
    coords = np.empty((n, 2), dtype=np.float32)
    coords[sample] = np.asarray(reducer.fit_transform(np.asarray(basis[sample])))
    for start in range(0, len(rest), chunk):
        part = rest[start:start + chunk]
        coords[part] = np.asarray(reducer.transform(np.asarray(basis[part])))
    return coords
