"""Harmony (harmonypy) on the baseline's 50 PCs: the classical batch-integration yardstick.

It is the baseline's embedding, corrected across batches: the same genes, scaling and PCA (so it reuses the
baseline's stored PCs of a dataset), then harmonypy's soft k-means correction over the batch column. It integrates a
dataset; it does not annotate, so the catalog offers it for the integration application only.
"""

from __future__ import annotations

from importlib import metadata
from typing import ClassVar

import numpy as np

from inference.backends.baseline import BaselineBackend


class HarmonyBackend(BaselineBackend):
    backend = "harmony"
    corrects_batches: ClassVar[bool] = True

    def correct(self, embedding: np.ndarray, batch: np.ndarray, seed: int = 0) -> np.ndarray:
        """``embedding`` (cells x dims) corrected for ``batch`` (one label per cell)."""
        import harmonypy
        import pandas as pd

        result = harmonypy.run_harmony(np.asarray(embedding, dtype=np.float64), pd.DataFrame({"batch": batch}),
                                       "batch", verbose=False, random_state=seed, ncores=1)
        z = np.asarray(result.Z_corr)
        if z.shape[0] != len(batch):  # harmonypy before 2.0 returns dims x cells
            z = z.T
        return z.astype(np.float32)

    def provenance(self) -> dict[str, object]:
        """The baseline's identity (its PCs are the input, shared with baseline runs) and harmonypy's version."""
        return {**super().provenance(), "integration": f"harmonypy {metadata.version('harmonypy')}"}

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "backend": self.backend,
                "integration": f"harmonypy {metadata.version('harmonypy')} on the baseline's {self.n_pcs} PCs"}
