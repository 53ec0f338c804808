"""umap-learn's kernels are compiled once and read from numba's cache by every later process
(inference/numba_cache.py): the second process lays out cells without compiling any umap-learn kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

LAYOUT = r"""
import json, numpy as np
import umap  # its kernels declared with a signature compile here, at import, before any cache can be switched on
from numba.core import event
compiled = []
class Compiles(event.Listener):
    def on_start(self, ev):
        f = ev.data["dispatcher"].py_func
        compiled.append(f"{f.__module__}.{f.__qualname__}")
    def on_end(self, ev):
        pass
event.register("numba:compile", Compiles())
from inference.layout import umap_layout
x = np.random.default_rng(0).normal(size=(700, 20)).astype(np.float32)
coords, info = umap_layout(x, full_max=600, sample_cells=600, chunk=50, use_gpu=False)  # a fit and a transform
print(json.dumps({"compiled": sorted(set(compiled)), "method": info["method"],
                  "finite": bool(np.isfinite(coords).all()), "first": coords[:3].tolist()}))
"""


def _layout(cache_dir) -> dict:  # noqa: ANN001
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", LAYOUT], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # two fresh processes, one of them compiling: about 25 s
def test_a_second_process_compiles_no_umap_kernel_and_lays_out_the_same(tmp_path):
    first = _layout(tmp_path)
    umap_kernels = [k for k in first["compiled"] if k.startswith("umap.")]
    # the kernels this layout needs: the exact neighbours, the fuzzy set, the layout's epochs, the transform's
    assert {"umap.utils.fast_knn_indices", "umap.umap_.smooth_knn_dist", "umap.utils.submatrix"} <= set(umap_kernels)
    assert any(p.name.startswith("umap") for p in tmp_path.iterdir()), list(tmp_path.iterdir())
    second = _layout(tmp_path)
    assert [k for k in second["compiled"] if k.startswith(("umap.", "pynndescent."))] == []
    assert second["method"] == first["method"] == "umap-learn" and second["finite"]
    assert second["first"] == first["first"]  # the cached kernels give the same seeded layout
