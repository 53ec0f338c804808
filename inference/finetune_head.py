"""A run's head made by fine-tuning (``head = fine-tune``): the model trained on the reference, then its head.

The fine-tuned backbone travels with the head (its tensors among the head's extra arrays), so a cached head, and
an annotator saved from the run, carry everything a later run needs; the run also keeps the weights as one
safetensors file beside the cached head. The validation cells that chose the epoch also fit the temperature and
give the head's check (say so: they are not an untouched test set).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
from anndata import AnnData

from inference.backends.base import Backend
from inference.backends.fine_tuned import BACKBONE_PREFIX, FineTunedBackend
from inference.calibration import fit_temperature
from inference.finetune import FineTuneSettings, adapter_module, fine_tune, validation_split
from inference.finetune_files import save_fine_tuned
from inference.heads import FINE_TUNE, Head, Space
from inference.heads.fine_tuned import FineTunedHead
from inference.metrics import annotation_metrics
from inference.novelty import ReferenceFit
from inference.timing import StageTimer

FINE_TUNING = "fine-tuning"
CHECK_METHOD = ("validation split: the fifth of each reference type (types of 5 cells or more) that fine-tuning "
                "held back to choose its best epoch; not an untouched test set")


def fine_tune_settings(head: dict, seed: int) -> FineTuneSettings:
    """The fine-tuning settings a run recorded (``head`` = its head settings, kind ``fine-tune``)."""
    names = {f.name for f in fields(FineTuneSettings)}
    return FineTuneSettings.from_options({**{k: v for k, v in head.items() if k in names}, "seed": seed})


FINE_TUNE_OPTIONS = {f.name for f in fields(FineTuneSettings)} - {"seed"}  # run options of head = fine-tune


def head_options(options: dict) -> dict:
    """A run's head settings for ``head = fine-tune`` from its options (checked; defaults filled in)."""
    given = {k: v for k, v in options.items() if k in FINE_TUNE_OPTIONS}
    return {"kind": FINE_TUNE, **{k: v for k, v in asdict(FineTuneSettings.from_options(given)).items()
                                  if k != "seed"}}


def train_fine_tuned_head(backend: Backend, reference: AnnData, labels: np.ndarray, head_settings: dict,
                          model_info: dict, seed: int, timer: StageTimer,
                          should_stop: Callable[[], bool] | None, weights_path: Path | None) -> Head:
    settings = fine_tune_settings(head_settings, seed)
    labels = np.asarray(labels).astype(str)
    classes = sorted(set(labels))
    untrained = model_info.get("trained") is False
    timer.stage(FINE_TUNING, 0, settings.epochs)
    if untrained:
        timer.say("from generated, untrained weights (random start: the result means nothing)", 0, settings.epochs)
    adapter = adapter_module(backend.backend).Adapter(backend, len(classes), settings.batch_size, settings.seed)

    def report(e) -> None:  # noqa: ANN001 - an EpochReport
        timer.say(f"epoch {e.epoch}/{e.epochs}, loss {e.train_loss:.3f}, validation macro-F1 {e.val_macro_f1:.3f}, "
                  f"about {e.eta_s:.0f} s left", e.epoch, e.epochs)

    base = {k: model_info.get(k) for k in ("backend", "variant", "checksum", "trained")}
    result = fine_tune(adapter, reference, labels, settings, base, report, should_stop)
    del adapter  # helical's training copy of the model
    sha = save_fine_tuned(result, weights_path) if weights_path is not None else None
    tensors = {k: v.float().numpy() for k, v in result.tensors.items()}
    weight, bias = tensors.pop("head.weight"), tensors.pop("head.bias")
    tuned = FineTunedBackend(backend, tensors)
    timer.stage("embedding reference", 0, reference.n_obs)
    features = tuned.embed(reference, progress=timer.report, should_stop=should_stop).features
    held = validation_split(labels, settings.validation_fraction, settings.seed)  # the split fine_tune used
    classifier = FineTunedHead(np.asarray(classes), weight, bias)
    logits = classifier.logits(features[held])
    classifier.temperature = fit_temperature(logits, np.searchsorted(classes, labels[held]))
    classifier.calibration_cells = int(held.sum())
    space = Space.train(features, seed)
    calls = np.asarray(classes)[logits.argmax(axis=1)]
    m = annotation_metrics(labels[held], calls)
    check = {"method": CHECK_METHOD, "n_cells": m["n_cells"], "macro_f1": round(m["macro_f1"], 4),
             "accuracy": round(m["accuracy"], 4),
             "per_class_f1": {str(c): round(v["f1"], 4) for c, v in m["per_class"].items()},
             "fine_tuning": {**{k: v for k, v in result.metadata().items() if k not in ("classes", "format")},
                             "safetensors_sha256": sha, "from_untrained_weights": untrained}}
    return Head(classifier, space, ReferenceFit.train(space.project(features), labels),
                extra={BACKBONE_PREFIX + k: v for k, v in tensors.items()}, check=check)
