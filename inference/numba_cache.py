"""umap-learn's and pynndescent's numba kernels compiled once per installation, not once per process.

umap-learn declares most of its kernels without ``cache=True``, so every fresh process (each Dask worker, each
command-line call, each notebook kernel) compiles them again before its first layout. Measured on the 2-core VM
in fresh processes (``python -m inference.numba_cache --measure``, twice): a 2,000-cell fit took 10.0 s with its
kernels compiled and 3.3 s with them read from the cache; after a 5,000-cell fit, placing 1,000 more cells with
``transform`` took 32.7 s against 0.4 s. Numba can cache any module-level kernel: ``cache_kernels`` switches that
on for those the two packages define, before their first compile. The cache lives where numba puts it: the
package's ``__pycache__`` when writable, else the account's cache folder, or ``NUMBA_CACHE_DIR``; it is keyed by
the source file, so a new umap-learn version compiles afresh. A kernel numba has no folder to write for stays
compiled per process. Kernels that take another kernel as an argument (pynndescent's NN-descent, used above
4,096 cells: most of the 12 s of that 5,000-cell fit) are still compiled per process: numba cannot key them
across processes.

The cache is code that numba loads: ``NUMBA_CACHE_DIR`` must be a folder only the server's account can write.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading

log = logging.getLogger(__name__)

PACKAGES = ("umap", "pynndescent")
_MODULES = ("umap.umap_", "umap.layouts", "umap.distances", "umap.sparse", "umap.utils", "umap.spectral",
            "pynndescent.pynndescent_", "pynndescent.distances", "pynndescent.sparse", "pynndescent.utils",
            "pynndescent.rp_trees", "pynndescent.sparse_nndescent", "pynndescent.graph_utils")
_lock = threading.Lock()
_done = False


def cache_kernels() -> int:
    """Switch on numba's on-disk cache for umap-learn's and pynndescent's module-level kernels (once per process;
    later calls return 0). Returns how many kernels it switched on."""
    global _done
    with _lock:
        if _done:
            return 0
        _done = True
        from numba.core.caching import NullCache
        from numba.core.registry import CPUDispatcher

        for name in _MODULES:
            try:
                importlib.import_module(name)
            except ImportError:  # an older or newer layout of the package: cache what exists
                log.debug("no module %s to cache kernels of", name)
        switched = 0
        for name, module in list(sys.modules.items()):
            if module is None or name.split(".")[0] not in PACKAGES:
                continue
            for value in list(vars(module).values()):
                if not isinstance(value, CPUDispatcher) or not isinstance(value._cache, NullCache):
                    continue
                try:
                    value.enable_caching()
                except RuntimeError:  # no folder numba may write to for this file: compiled per process as before
                    log.debug("numba cannot cache %s", getattr(value, "__qualname__", value), exc_info=True)
                    continue
                switched += 1
        log.debug("numba on-disk cache switched on for %d umap-learn and pynndescent kernels", switched)
        return switched


def _measure() -> None:
    """Times a small fit and a transform in this process (run it twice: the second process reads the cache)."""
    import time
    import warnings

    import numpy as np

    cache_kernels()
    import umap

    warnings.simplefilter("ignore")
    x = np.random.default_rng(0).normal(size=(6_000, 50)).astype(np.float32)
    started = time.perf_counter()
    umap.UMAP(random_state=0).fit(x[:2_000])
    small = time.perf_counter()
    reducer = umap.UMAP(random_state=0).fit(x[:5_000])
    large = time.perf_counter()
    reducer.transform(x[5_000:])
    print(f"fit 2,000 cells: {small - started:.2f} s; fit 5,000: {large - small:.2f} s; "
          f"transform 1,000 more: {time.perf_counter() - large:.2f} s")


def main() -> None:
    """``python -m inference.numba_cache``: compile and cache the kernels now (an image build, a new install), by
    laying out a small random matrix; ``--measure`` prints the times of that layout."""
    if "--measure" in sys.argv[1:]:
        _measure()
        return
    import numpy as np

    from inference.layout import umap_layout

    basis = np.random.default_rng(0).normal(size=(600, 20)).astype(np.float32)
    umap_layout(basis, full_max=500, sample_cells=500, chunk=100, use_gpu=False)
    print("umap-learn's kernels are compiled and cached")


if __name__ == "__main__":
    main()
