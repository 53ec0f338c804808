"""What the model phase of an annotation run hands to its CPU phase, saved in the run's staging folder so that
another worker can finish the run (embeddings written as they were produced stay where they are)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inference.run_files import EMBEDDINGS


@dataclass
class Prediction:
    """What the model phase hands to the CPU phase (UMAP, files): arrays per cell and what was done."""

    cell_ids: np.ndarray
    predicted: np.ndarray
    confidence: np.ndarray
    assigned: np.ndarray
    proba: np.ndarray
    reference_fit: np.ndarray
    reason: np.ndarray
    classes: np.ndarray
    features: np.ndarray
    basis: np.ndarray
    truth: np.ndarray | None
    held_out: np.ndarray | None
    metrics: dict
    provenance: dict
    timings: dict

    ARRAYS = ("cell_ids", "predicted", "confidence", "assigned", "proba", "reference_fit", "reason", "classes",
              "features", "basis", "truth", "held_out")

    def save(self, folder: Path) -> None:
        """Into ``folder`` (on the shared data home), so another worker can finish the run. Embeddings already
        written there as they were produced stay where they are."""
        folder.mkdir(parents=True, exist_ok=True)
        in_place = file_of(self.features) == (folder / EMBEDDINGS).resolve()
        basis_is_features = self.basis is self.features
        skip = {"features"} if in_place else set()
        if basis_is_features:
            skip.add("basis")
        arrays = {k: getattr(self, k) for k in self.ARRAYS if getattr(self, k) is not None and k not in skip}
        arrays = {k: v.astype(str) if v.dtype == object else v for k, v in arrays.items()}
        np.savez(folder / "prediction.npz", **arrays)
        if not in_place:
            (folder / EMBEDDINGS).unlink(missing_ok=True)
            source = file_of(self.features)
            try:  # the embedding store's file (immutable once published): linked, not copied
                if source is None:
                    raise OSError("in memory")
                os.link(source, folder / EMBEDDINGS)
            except OSError:
                np.save(folder / EMBEDDINGS, np.asarray(self.features, dtype=np.float32))
        (folder / "prediction.json").write_text(json.dumps(
            {"metrics": self.metrics, "provenance": self.provenance, "timings": self.timings,
             "basis_is_features": basis_is_features}, default=str))

    @classmethod
    def load(cls, folder: Path) -> Prediction:
        with np.load(folder / "prediction.npz", allow_pickle=False) as z:
            arrays = {k: (z[k] if k in z.files else None) for k in cls.ARRAYS}
        meta = json.loads((folder / "prediction.json").read_text())
        arrays["features"] = np.load(folder / EMBEDDINGS, mmap_mode="r")
        if meta.get("basis_is_features"):
            arrays["basis"] = arrays["features"]
        return cls(**arrays, metrics=meta["metrics"], provenance=meta["provenance"], timings=meta["timings"])


def file_of(array: np.ndarray) -> Path | None:
    """The file behind a memory-mapped array (None for one in memory)."""
    while array is not None and not isinstance(array, np.memmap):
        array = getattr(array, "base", None)
    return Path(array.filename).resolve() if array is not None and array.filename else None
