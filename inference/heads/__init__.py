"""The trained head of a run: a classifier, the reference's PCA space, and the "fits the reference" score.

Everything a head learnt is kept as plain arrays in one ``.npz`` (no pickle) under a key of model, reference,
label column and settings, so a second run on the same reference reuses it. A new head kind is a module in this
package plus one line in ``HEAD_KINDS``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inference.calibration import calibration_split
from inference.counts import AnnotationError
from inference.heads.base import Classifier
from inference.heads.fine_tuned import FineTunedHead
from inference.heads.knn import KnnHead
from inference.heads.logistic import LogisticHead
from inference.metrics import annotation_metrics
from inference.novelty import ReferenceFit
from inference.run_files import atomic_path

HEAD_KINDS: dict[str, type[Classifier]] = {LogisticHead.kind: LogisticHead, KnnHead.kind: KnnHead,
                                           FineTunedHead.kind: FineTunedHead}
FINE_TUNE = "fine-tune"  # the head option that fine-tunes the model itself (inference/finetune.py)
HEAD_OPTIONS = [k for k, c in HEAD_KINDS.items() if c.trainable] + [FINE_TUNE]
DEFAULT_HEAD = {"kind": LogisticHead.kind, "C": 1.0, "max_iter": 2000, "class_weight": None}
HEAD_FORMAT = 3  # heads cached before the reference fit kept its cells (the shift allowance) are trained again
SPACE_COMPONENTS = 50


def head_cache_key(model_checksum: str, reference_sha256: str, label_column: str, settings: dict) -> str:
    payload = json.dumps([model_checksum, reference_sha256, label_column, settings, HEAD_FORMAT], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def head_settings(kind: str = LogisticHead.kind, k: int | None = None) -> dict:
    """The settings of a head kind as a run records them."""
    if kind not in HEAD_KINDS or not HEAD_KINDS[kind].trainable:
        raise AnnotationError(f"Unknown head {kind!r}: choose {' or '.join(HEAD_OPTIONS)}.")
    if kind == KnnHead.kind:
        return {"kind": kind, "k": k}
    return dict(DEFAULT_HEAD)


@dataclass
class Space:
    """The reference's principal components of the embedding: where kNN searches and the fit is measured."""

    components: np.ndarray
    mean: np.ndarray

    @classmethod
    def train(cls, features: np.ndarray, seed: int = 0) -> Space:
        from sklearn.decomposition import PCA

        n = min(SPACE_COMPONENTS, features.shape[1], max(1, features.shape[0] - 1))
        pca = PCA(n_components=n, random_state=seed).fit(features)
        return cls(pca.components_.astype(np.float32), pca.mean_.astype(np.float32))

    def project(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float32) - self.mean) @ self.components.T).astype(np.float32)


@dataclass
class HeadOutput:
    proba: np.ndarray
    reference_fit: np.ndarray  # of these cells taken as the whole query (the pipeline scores all blocks at once)
    coords: np.ndarray  # the cells in the head's PCA space: what the reference fit is scored in


@dataclass
class Head:
    classifier: Classifier
    space: Space
    fit: ReferenceFit
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # the backend's state (e.g. the baseline's genes)
    check: dict = field(default_factory=dict)  # how a head of this kind did on a held-back part of the reference

    @property
    def classes(self) -> np.ndarray:
        return self.classifier.classes

    @classmethod
    def train(cls, features: np.ndarray, labels: np.ndarray, settings: dict, seed: int = 0) -> Head:
        features = np.asarray(features)
        labels = np.asarray(labels).astype(str)
        bad = ~np.isfinite(features).all(axis=1)
        if bad.any():
            raise AnnotationError(
                f"{int(bad.sum()):,} of the reference's {len(features):,} cells have no usable embedding (NaN or "
                "infinite values), so no head can be trained on them. Check those cells (e.g. cells without counts) "
                "and remove them from the reference.")
        kind = settings.get("kind", LogisticHead.kind)
        if kind not in HEAD_KINDS:
            raise AnnotationError(f"Unknown head {kind!r}: choose {' or '.join(HEAD_KINDS)}.")
        space = Space.train(features, seed)
        coords = space.project(features)
        x = coords if HEAD_KINDS[kind].uses_space else features
        classifier = HEAD_KINDS[kind].train(x, labels, settings, seed)
        return cls(classifier, space, ReferenceFit.train(coords, labels),
                   check=reference_check(classifier, x, labels, settings, seed))

    def classify(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The class probabilities and the cells' coordinates in the reference fit's space (a block of a query:
        its reference fit is scored once the whole query is in, ``self.fit.score_query``)."""
        coords = self.space.project(features)
        proba = self.classifier.predict_proba(coords if self.classifier.uses_space else features)
        return proba, coords[:, :self.fit.components]

    def predict(self, features: np.ndarray) -> HeadOutput:
        proba, coords = self.classify(features)
        return HeadOutput(proba, self.fit.score_query(coords, proba.argmax(axis=1))[0], coords)

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return self.predict(features).proba

    def describe(self) -> dict[str, object]:
        return {**self.classifier.describe(), "space_components": int(len(self.space.components)),
                "reference_check": self.check}

    def save(self, path: Path) -> None:
        arrays = {"kind": np.array(self.classifier.kind), "check_json": np.array(json.dumps(self.check)),
                  "space__components": self.space.components, "space__mean": self.space.mean,
                  **{f"clf__{k}": v for k, v in self.classifier.arrays().items()},
                  **{f"fit__{k}": v for k, v in self.fit.arrays().items()},
                  **{f"extra__{k}": v for k, v in self.extra.items()}}
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: Path) -> Head:
        with np.load(path, allow_pickle=False) as z:
            def part(prefix: str) -> dict[str, np.ndarray]:
                return {k[len(prefix):]: z[k] for k in z.files if k.startswith(prefix)}

            kind = str(z["kind"])
            check = json.loads(str(z["check_json"])) if "check_json" in z.files else {}
            return cls(HEAD_KINDS[kind].from_arrays(part("clf__")), Space(z["space__components"], z["space__mean"]),
                       ReferenceFit.from_arrays(part("fit__")), part("extra__"), check)


CHECK_METHOD = ("held-out split: a head of the same kind trained on 80 % of each reference type (types of 5 cells "
                "or more), scored on the other 20 %")


def reference_check(classifier: Classifier, x: np.ndarray, labels: np.ndarray, settings: dict,
                    seed: int = 0) -> dict:
    """Macro-F1, accuracy and per-class F1 of this head kind on a held-back fifth of the reference: what a saved
    annotator says about itself. The logistic head's calibration fit already made these calls; others fit again."""
    if classifier.held_out is not None:
        held, calls = classifier.held_out
    else:
        held = calibration_split(labels, seed=seed)
        if held.sum() == 0 or len(np.unique(labels[~held])) < 2:
            return {"method": CHECK_METHOD, "skipped": "the reference is too small to hold cells back"}
        try:
            first = type(classifier).train(x[~held], labels[~held], {**settings, "calibrate": False}, seed)
        except AnnotationError:  # e.g. k no longer fits the smaller split: let it follow the split
            first = type(classifier).train(x[~held], labels[~held], {**settings, "k": None}, seed)
        calls = first.classes[first.predict_proba(x[held]).argmax(axis=1)]
    m = annotation_metrics(labels[held], calls)
    return {"method": CHECK_METHOD, "n_cells": m["n_cells"], "macro_f1": round(m["macro_f1"], 4),
            "accuracy": round(m["accuracy"], 4),
            "per_class_f1": {str(c): round(v["f1"], 4) for c, v in m["per_class"].items()}}
