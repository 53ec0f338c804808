"""Geneformer's side of fine-tuning: helical's ``GeneformerFineTuningModel`` on the backend's verified files.

helical sizes the classification head from the config's ``embsize``, not from the loaded model; for any
checkpoint whose width differs (every generated tiny one) the head is resized to the model's hidden size, as
helical's own ``set_dim_size`` allows. The cell embedding inside ``_forward`` is the mean of the last hidden
layer over real tokens: the one the Geneformer backend computes, so a fine-tuned backbone loaded into the backend
and the saved head give helical's own logits.
"""

from __future__ import annotations

import numpy as np

from inference.backends.common import helical_input
from inference.backends.geneformer import GeneformerBackend
from inference.helical_env import isolated


class Adapter:
    """A ``FineTuneAdapter`` for a loaded ``GeneformerBackend`` (which supplies the files and device)."""

    def __init__(self, backend: GeneformerBackend, n_classes: int, batch_size: int = 12, seed: int = 0) -> None:
        import torch

        with isolated():
            from helical.models.geneformer import GeneformerFineTuningModel

            self.model = GeneformerFineTuningModel(geneformer_config=backend.helical_config(batch_size),
                                                   fine_tuning_head="classification", output_size=n_classes)
        torch.manual_seed(seed)  # the head's initial weights
        self.model.fine_tuning_head.set_dim_size(self.model.model.config.hidden_size)
        self.device = backend.device
        self.model.model.to(self.device)
        self.model.fine_tuning_head.to(self.device)
        self.layers = len(self.model.model.bert.encoder.layer)
        self.dataset = None

    def prepare(self, adata: object) -> int:
        with isolated():
            self.dataset = self.model.process_data(helical_input(adata), gene_names="ensembl_id")
        return len(self.dataset)

    def lengths(self) -> np.ndarray:
        """Each cell's token count (batches group similar lengths: ``inference.finetune.epoch_batches``)."""
        return np.asarray(self.dataset["length"])

    def forward(self, idx: np.ndarray) -> object:
        from helical.models.geneformer.geneformer_utils import (
            gen_attention_mask,
            get_model_input_size,
            pad_tensor_list,
        )

        minibatch = self.dataset.select([int(i) for i in idx])
        max_len = int(max(minibatch["length"]))
        minibatch.set_format(type="torch", device=self.device)
        input_ids = pad_tensor_list(minibatch["input_ids"], max_len, self.model.pad_token_id,
                                    get_model_input_size(self.model.model)).to(self.device)
        return self.model._forward(input_ids=input_ids, attention_mask_minibatch=gen_attention_mask(minibatch),
                                   original_lengths=minibatch["length"])

    def freeze(self, n_layers: int) -> None:
        for layer in self.model.model.bert.encoder.layer[:n_layers]:
            for p in layer.parameters():
                p.requires_grad = False

    def modules(self) -> list[object]:
        """helical's ``train()`` leaves the encoder as ``from_pretrained`` made it, in eval mode (no dropout), and
        the head in train mode; so do we: the same arithmetic, and no dropout masks over 2,048-token attention
        kept for the backward pass (they tripled peak memory in bench/finetune.py)."""
        return [self.model.fine_tuning_head]

    def parameters(self) -> list[object]:
        return [*self.model.model.parameters(), *self.model.fine_tuning_head.parameters()]

    def state(self) -> dict[str, object]:
        linear = self.model.fine_tuning_head.linear
        return {**{f"bert.{k}": v for k, v in self.model.model.bert.state_dict().items()},
                "head.weight": linear.weight, "head.bias": linear.bias}


def apply_backbone(backend: GeneformerBackend, backbone: dict[str, object]) -> None:
    """Load fine-tuned encoder tensors into a (copied) backend's model, every tensor accounted for."""
    bert = {k[len("bert."):]: v for k, v in backbone.items() if k.startswith("bert.")}
    missing, unexpected = backend.model.model.bert.load_state_dict(bert, strict=False)
    if missing or unexpected or len(bert) != len(backbone):
        raise ValueError(f"fine-tuned tensors do not fit this Geneformer: missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}")
