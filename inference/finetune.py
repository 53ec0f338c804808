"""Fine-tuning a foundation model on a labelled reference, with helical's fine-tuning classes.

helical's ``train()`` gives no per-epoch control: no callback, no early stopping, and calling it once per epoch
re-creates the optimizer (AdamW's moments are lost). So the loop is ours and everything inside a step is
helical's: its fine-tuning model (backbone + classification head), its tokenisation and its ``_forward``. A model
plugs in through a ``FineTuneAdapter`` (``inference/finetune_<model>.py``).

What a run gets back is the best epoch's weights (by validation macro-F1 on a stratified part of the reference),
saved as one safetensors file with its sha256: the backbone's tensors, the head's ``head.weight``/``head.bias``,
and in the file's metadata the base weights' checksum (an annotator made from it refuses other weights), the
classes, the settings and the per-epoch history.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np

from inference.backends.base import check_stop
from inference.calibration import calibration_split
from inference.counts import AnnotationError
from inference.finetune_files import FORMAT
from inference.metrics import annotation_metrics


@dataclass(frozen=True)
class FineTuneSettings:
    """A run's fine-tuning options (``options``: epochs, learning_rate, frozen_layers, ...), checked."""

    epochs: int = 10
    learning_rate: float = 5e-5
    frozen_layers: int = 2
    batch_size: int = 12
    validation_fraction: float = 0.2
    patience: int = 2
    seed: int = 0

    @classmethod
    def from_options(cls, options: dict) -> FineTuneSettings:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(options) - known)
        if unknown:
            raise AnnotationError(f"Unknown fine-tuning option(s) {', '.join(unknown)}: use "
                                  f"{', '.join(sorted(known))}.")
        s = cls(**options)
        checks = [
            (isinstance(s.epochs, int) and 1 <= s.epochs <= 200, "epochs must be a whole number from 1 to 200"),
            (isinstance(s.learning_rate, int | float) and 0 < s.learning_rate <= 0.1,
             "learning_rate must be above 0 and at most 0.1 (typical: 1e-5 to 1e-4)"),
            (isinstance(s.frozen_layers, int) and s.frozen_layers >= 0, "frozen_layers must be 0 or more"),
            (isinstance(s.batch_size, int) and 1 <= s.batch_size <= 512, "batch_size must be from 1 to 512"),
            (isinstance(s.validation_fraction, int | float) and 0.05 <= s.validation_fraction <= 0.5,
             "validation_fraction must be from 0.05 to 0.5"),
            (isinstance(s.patience, int) and s.patience >= 1, "patience must be 1 or more epochs"),
        ]
        for ok, message in checks:
            if not ok:
                raise AnnotationError(f"Fine-tuning: {message}.")
        return s


@dataclass
class EpochReport:
    """What a user watches per epoch: the loss, validation macro-F1, and how long the rest will take."""

    epoch: int
    epochs: int
    train_loss: float
    val_loss: float
    val_macro_f1: float
    seconds: float
    eta_s: float
    best: bool


@dataclass
class FineTuned:
    """The best epoch's weights and what made them."""

    tensors: dict[str, object]  # name -> torch.Tensor (CPU): the backbone's and ``head.weight``/``head.bias``
    classes: list[str]
    base: dict[str, object]  # backend, variant, checksum and trained flag of the weights fine-tuned from
    settings: FineTuneSettings
    history: list[EpochReport] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    frozen_layers: int = 0
    train_cells: int = 0
    validation_cells: int = 0

    def metadata(self) -> dict[str, object]:
        return {"format": FORMAT, "classes": self.classes, "base": self.base, "settings": asdict(self.settings),
                "history": [asdict(h) for h in self.history], "best_epoch": self.best_epoch,
                "stopped_early": self.stopped_early, "frozen_layers": self.frozen_layers,
                "train_cells": self.train_cells, "validation_cells": self.validation_cells}


class FineTuneAdapter(Protocol):
    """One model's side: helical's fine-tuning model for ``n_classes``, its tokenised cells, one forward step."""

    layers: int  # the backbone's encoder layers (frozen_layers may not exceed it)

    def prepare(self, adata: object) -> int:
        """Tokenise the cells (helical's ``process_data``); returns how many."""

    def forward(self, idx: np.ndarray) -> object:
        """Logits (a torch tensor with grad) of the tokenised cells ``idx``, through helical's ``_forward``."""

    def freeze(self, n_layers: int) -> None:
        """Keep the first ``n_layers`` encoder layers as they are (helical's ``freeze_layers``)."""

    def modules(self) -> list[object]:
        """The torch modules that train (backbone and head), to switch train/eval mode."""

    def parameters(self) -> list[object]: ...

    def state(self) -> dict[str, object]:
        """The tensors to save: the backbone's, named as the backend's model names them, and the head's."""


Progress = Callable[[EpochReport], None]


GROUP = 50  # batches per length-sorted group


def epoch_batches(train_idx: np.ndarray, lengths: np.ndarray | None, batch_size: int,
                  rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch's batches: a seeded shuffle; with token ``lengths``, each group of ``GROUP`` batches' cells is
    sorted by length before it is cut, and the batches are shuffled again (as Hugging Face's ``group_by_length``):
    a batch pads to its longest cell, so similar lengths save time and the memory of padded attention."""
    order = rng.permutation(train_idx)
    if lengths is None:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    batches = []
    span = batch_size * GROUP
    for start in range(0, len(order), span):
        chunk = order[start:start + span]
        chunk = chunk[np.argsort(-np.asarray(lengths)[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def validation_split(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Cells held back to choose the epoch and stop early: ``fraction`` of every type with 5 cells or more."""
    held = calibration_split(labels, fraction, seed)
    if held.sum() == 0:
        raise AnnotationError("The reference is too small to hold cells back for validation: fine-tuning needs at "
                              "least 5 cells of some cell type. Add cells, or use the logistic head.")
    return held


def fine_tune(adapter: FineTuneAdapter, adata: object, labels: np.ndarray, settings: FineTuneSettings,
              base: dict[str, object], progress: Progress | None = None,
              should_stop: Callable[[], bool] | None = None) -> FineTuned:
    """Train ``adapter``'s model on the labelled cells; keep the epoch with the best validation macro-F1 and stop
    after ``patience`` epochs without improvement. Cancellable between steps (``Cancelled``)."""
    import torch

    labels = np.asarray(labels).astype(str)
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise AnnotationError("Fine-tuning needs at least two cell types in the reference's label column.")
    if settings.frozen_layers > adapter.layers:
        raise AnnotationError(f"frozen_layers is {settings.frozen_layers} but this model has {adapter.layers} "
                              f"encoder layers: choose 0 to {adapter.layers}.")
    y = np.array([classes.index(v) for v in labels])
    held = validation_split(labels, settings.validation_fraction, settings.seed)
    train_idx, val_idx = np.flatnonzero(~held), np.flatnonzero(held)
    adapter.prepare(adata)
    lengths = adapter.lengths() if hasattr(adapter, "lengths") else None
    torch.manual_seed(settings.seed)
    adapter.freeze(settings.frozen_layers)
    optimizer = torch.optim.AdamW([p for p in adapter.parameters() if p.requires_grad], lr=settings.learning_rate)
    loss_fn = torch.nn.CrossEntropyLoss()
    rng = np.random.default_rng(settings.seed)
    target = torch.as_tensor(y)
    result = FineTuned({}, classes, base, settings, frozen_layers=settings.frozen_layers,
                       train_cells=len(train_idx), validation_cells=len(val_idx))
    best_key: tuple[float, float] | None = None
    best_state: dict[str, object] = {}
    since_best = 0
    for epoch in range(1, settings.epochs + 1):
        began = time.perf_counter()
        _mode(adapter, training=True)
        losses = []
        for batch in epoch_batches(train_idx, lengths, settings.batch_size, rng):
            check_stop(should_stop)
            logits = adapter.forward(batch)
            loss = loss_fn(logits, target[batch].to(logits.device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()) * len(batch))
        by_length = val_idx if lengths is None else val_idx[np.argsort(-lengths[val_idx], kind="stable")]
        val_loss, val_f1 = _validate(adapter, by_length, y, classes, loss_fn, settings.batch_size, should_stop)
        seconds = time.perf_counter() - began
        key = (val_f1, -val_loss)
        improved = best_key is None or key > best_key
        if improved:
            best_key, since_best, result.best_epoch = key, 0, epoch
            best_state = {k: v.detach().cpu().clone() for k, v in adapter.state().items()}
        else:
            since_best += 1
        stop = since_best >= settings.patience
        remaining = 0 if stop else settings.epochs - epoch
        report = EpochReport(epoch, settings.epochs, round(sum(losses) / len(train_idx), 5), round(val_loss, 5),
                             round(val_f1, 4), round(seconds, 2), round(remaining * seconds, 1), improved)
        result.history.append(report)
        if progress is not None:
            progress(report)
        if stop:
            result.stopped_early = epoch < settings.epochs
            break
    _mode(adapter, training=False)
    result.tensors = best_state
    return result


def _mode(adapter: FineTuneAdapter, training: bool) -> None:
    for module in adapter.modules():  # nn.Module.train of each part: helical's classes override train()
        module.train(training)


def _validate(adapter: FineTuneAdapter, idx: np.ndarray, y: np.ndarray, classes: list[str], loss_fn: object,
              batch_size: int, should_stop: Callable[[], bool] | None) -> tuple[float, float]:
    import torch

    _mode(adapter, training=False)
    calls, total = [], 0.0
    with torch.no_grad():
        for start in range(0, len(idx), batch_size):
            check_stop(should_stop)
            batch = idx[start:start + batch_size]
            logits = adapter.forward(batch)
            total += float(loss_fn(logits, torch.as_tensor(y[batch]).to(logits.device))) * len(batch)
            calls.append(logits.argmax(dim=1).cpu().numpy())
    predicted = np.asarray(classes)[np.concatenate(calls)]
    truth = np.asarray(classes)[y[idx]]
    return total / len(idx), float(annotation_metrics(truth, predicted)["macro_f1"])


class ModulesBackbone:
    """The shared part of adapters whose backbone is named top-level modules of helical's network
    (``self.model.model``: scGPT, UCE): freezing its first transformer layers, what trains, what is saved."""

    backbone: tuple[str, ...] = ()
    model: object  # helical's fine-tuning model

    def freeze(self, n_layers: int) -> None:
        for layer in self.model.model.transformer_encoder.layers[:n_layers]:
            for p in layer.parameters():
                p.requires_grad = False

    def modules(self) -> list[object]:
        return [self.model.model, self.model.fine_tuning_head]

    def parameters(self) -> list[object]:
        net = self.model.model
        return [p for name in self.backbone for p in getattr(net, name).parameters()] + [
            *self.model.fine_tuning_head.parameters()]

    def state(self) -> dict[str, object]:
        linear = self.model.fine_tuning_head.linear
        return {**modules_state(self.model.model, self.backbone), "head.weight": linear.weight,
                "head.bias": linear.bias}


def modules_state(net: object, names: tuple[str, ...]) -> dict[str, object]:
    """``net``'s tensors under the top-level modules ``names``, named as ``net`` names them."""
    return {k: v for k, v in net.state_dict().items() if k.split(".")[0] in names}


def load_modules_state(net: object, tensors: dict[str, object], names: tuple[str, ...], model: str) -> None:
    """Load fine-tuned tensors into ``net``: exactly those ``modules_state`` names, every one accounted for."""
    expected = set(modules_state(net, names))
    if set(tensors) != expected:
        raise ValueError(f"fine-tuned tensors do not fit this {model}: missing {sorted(expected - set(tensors))[:3]}, "
                         f"unexpected {sorted(set(tensors) - expected)[:3]}")
    missing, unexpected = net.load_state_dict(tensors, strict=False)
    if unexpected or set(missing) & expected:
        raise ValueError(f"fine-tuned tensors do not fit this {model}: unexpected {unexpected[:3]}")


# backend -> its module (``Adapter``, ``apply_backbone``)
ADAPTERS = {"geneformer": "inference.finetune_geneformer", "scgpt": "inference.finetune_scgpt",
            "uce": "inference.finetune_uce"}


def can_fine_tune(backend: str) -> bool:
    return backend in ADAPTERS


def adapter_module(backend: str):  # noqa: ANN201 - a module
    """The model's fine-tuning module; a model without one is refused with the list of those that have one."""
    import importlib

    if backend not in ADAPTERS:
        raise AnnotationError(f"{backend} cannot be fine-tuned here: fine-tuning is offered for "
                              f"{', '.join(ADAPTERS)}. Use the logistic or knn head with it.")
    return importlib.import_module(ADAPTERS[backend])
