"""UCE's side of fine-tuning: helical's ``UCEFineTuningModel`` around a copy of the backend's loaded network.

Building ``UCEFineTuningModel`` the ordinary way loads UCE again, with its ~3 GB token table. Instead the
fine-tuning model is made without ``UCE.__init__`` and given a deep copy of the backend's network that *shares*
the token table (``pe_embedding``): the table is not trained (looked up under ``no_grad``, left out of the
optimizer and of the saved tensors), so sharing it is safe, and the worker's own network is never changed.

helical's ``_forward`` embeds a batch padded to its longest sentence, and its float attention mask shifts the
shorter cells' attention (see ``inference/backends/uce.py``). So ``forward`` runs each sentence length of a
minibatch as its own sub-batch through helical's ``_forward`` with no padding: the head is trained on exactly the
embedding the backend gives the cell, and helical's ``get_outputs`` at batch size 1 (no padding) reproduces the
pipeline's logits.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np

from inference.backends.uce import UCEBackend
from inference.finetune import ModulesBackbone, load_modules_state, modules_state
from inference.helical_env import isolated

BACKBONE = ("encoder", "transformer_encoder", "decoder")  # the modules ``model.forward`` trains (not pe, decoders)


def fine_tuning_model(backend: UCEBackend, n_classes: int, batch_size: int) -> object:
    """helical's ``UCEFineTuningModel`` on a copy of ``backend``'s network that shares its token table."""
    with isolated():
        from helical.models.base_models import HelicalBaseFineTuningModel
        from helical.models.uce import UCEFineTuningModel

        base = backend.model
        net = base.model
        model = UCEFineTuningModel.__new__(UCEFineTuningModel)  # no UCE.__init__: no second load
        HelicalBaseFineTuningModel.__init__(model, "classification", n_classes)
        model.config = {**base.config, "batch_size": batch_size}
        model.device, model.model_dir, model.embeddings = base.device, base.model_dir, base.embeddings
        model.accelerator = None
        model.model = copy.deepcopy(net, memo={id(net.pe_embedding): net.pe_embedding})
        model.fine_tuning_head.set_dim_size(int(model.config["output_dim"]))
    return model


class Adapter(ModulesBackbone):
    """A ``FineTuneAdapter`` for a loaded ``UCEBackend`` (which supplies the network, device and sentences)."""

    backbone = BACKBONE

    def __init__(self, backend: UCEBackend, n_classes: int, batch_size: int = 12, seed: int = 0) -> None:
        import torch

        torch.manual_seed(seed)  # the head's initial weights
        self.model = fine_tuning_model(backend, n_classes, batch_size)
        self.device = next(self.model.model.parameters()).device
        self.model.fine_tuning_head.to(self.device)
        self.backend = backend
        self.layers = len(self.model.model.transformer_encoder.layers)
        self.sentences: list[object] = []
        self._lengths = np.empty(0, dtype=np.int64)
        self._tmp: tempfile.TemporaryDirectory | None = None

    def prepare(self, adata: object) -> int:
        """helical's sentences of the cells, as the backend embeds them (its counts file in a folder of ours)."""
        self._tmp = tempfile.TemporaryDirectory(prefix="uce-ft-")
        dataset, _ = self.backend.prepare(adata, Path(self._tmp.name))
        self.sentences, lengths = [], []
        for i in range(len(dataset)):
            sentence, _mask, _idx, length, _ = dataset[i]
            self.sentences.append(sentence[0, :length].long())
            lengths.append(int(length))
        self._lengths = np.asarray(lengths, dtype=np.int64)
        return len(self.sentences)

    def lengths(self) -> np.ndarray:
        return self._lengths

    def forward(self, idx: np.ndarray) -> object:
        import torch

        idx = np.asarray(idx)
        out: list[object] = [None] * len(idx)
        for length in np.unique(self._lengths[idx]):  # one sub-batch per sentence length: no padding
            where = np.flatnonzero(self._lengths[idx] == length)
            tokens = torch.stack([self.sentences[int(idx[j])] for j in where]).to(self.device).permute(1, 0)
            with torch.no_grad():  # the shared token table is not trained
                tokens = torch.nn.functional.normalize(self.model.model.pe_embedding(tokens), dim=2)
            logits = self.model._forward(tokens, mask=torch.ones(len(where), int(length), device=self.device))
            for k, j in enumerate(where):
                out[j] = logits[k]
        return torch.stack(out)


def backbone_state(net: object) -> dict[str, object]:
    """The tensors fine-tuning changes, named as the backend's ``model.model`` names them."""
    return modules_state(net, BACKBONE)


def apply_backbone(backend: UCEBackend, backbone: dict[str, object]) -> None:
    """Load fine-tuned tensors into a (copied) backend's network, every tensor accounted for."""
    load_modules_state(backend.model.model, backbone, BACKBONE, "UCE")
