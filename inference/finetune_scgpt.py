"""scGPT's side of fine-tuning: helical's ``scGPTFineTuningModel`` on the backend's verified checkpoint.

helical's ``_forward`` feeds its head the mean of ``_encode``'s output over every position after ``<cls>``,
padding included, unnormalised: a cell's logits then depend on which cells share its minibatch, and are not
what the scGPT backend embeds (the mean over the cell's own tokens, then L2-normalised). So ``forward`` builds
the minibatch exactly as helical's ``train`` does (its ``DataCollator`` on its ``Dataset``), runs helical's
``_encode`` and helical's ``ClassificationHead``, but gives the head the backend's embedding: the head is
trained on the vector it will be applied to. The normalisation lives in the head (``UnitClassificationHead``),
so helical's own ``get_outputs`` with one cell per batch (no padding: its mean is the real-token mean) gives the
pipeline's logits exactly.
"""

from __future__ import annotations

import numpy as np

from inference.backends.scgpt import ScGPTBackend
from inference.finetune import ModulesBackbone, load_modules_state, modules_state
from inference.helical_env import isolated

BACKBONE = ("encoder", "value_encoder", "transformer_encoder")  # the modules ``_encode`` runs (decoders: not)


def unit_head(n_classes: int) -> object:
    """helical's ``ClassificationHead`` (dropout, then ``linear``) on the L2-normalised cell embedding."""
    import torch
    from helical.models.fine_tune.fine_tuning_heads import ClassificationHead

    class UnitClassificationHead(ClassificationHead):
        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return super().forward(torch.nn.functional.normalize(inputs, dim=1, eps=0.0))

    return UnitClassificationHead(n_classes)


class Adapter(ModulesBackbone):
    """A ``FineTuneAdapter`` for a loaded ``ScGPTBackend`` (which supplies the checkpoint, device and tokenisation)."""

    backbone = BACKBONE

    def __init__(self, backend: ScGPTBackend, n_classes: int, batch_size: int = 12, seed: int = 0) -> None:
        import torch

        with isolated():
            from helical.models.scgpt import scGPTConfig, scGPTFineTuningModel
            from helical.models.scgpt.data_collator import DataCollator

            cfg = scGPTConfig(batch_size=batch_size, device=backend.device, **backend.architecture)
            cfg.config["model_path"] = backend.weights.path("scgpt/scGPT_CP/best_model.pt")
            cfg.config["list_of_files_to_download"] = []  # the backend verified the files
            self.model = scGPTFineTuningModel(scGPT_config=cfg, fine_tuning_head=unit_head(n_classes),
                                              output_size=n_classes)
        net = self.model.model
        torch.manual_seed(seed)  # the head's initial weights, sized to the loaded model (helical uses the config)
        self.model.fine_tuning_head.set_dim_size(net.encoder.embedding.embedding_dim)
        self.device = next(net.parameters()).device
        self.model.fine_tuning_head.to(self.device)
        self.backend = backend
        self.layers = len(net.transformer_encoder.layers)
        config = self.model.config
        self.pad_id = self.model.vocab[config["pad_token"]]
        self.collator = DataCollator(do_padding=True, pad_token_id=self.pad_id, pad_value=config["pad_value"],
                                     do_mlm=False, do_binning=True, max_length=config["MAX_LENGTH"],
                                     sampling=True, keep_first_n_tokens=1)  # helical's train/get_outputs collator
        self.dataset = None

    def prepare(self, adata: object) -> int:
        self.dataset, _ = self.backend.prepare(adata)  # helical's process_data, as the backend embeds
        return len(self.dataset)

    def forward(self, idx: np.ndarray) -> object:
        batch = self.collator([self.dataset[int(i)] for i in idx])
        genes = batch["gene"].to(self.device)
        padding = genes.eq(self.pad_id)
        out = self.model.model._encode(genes, batch["expr"].to(self.device), src_key_padding_mask=padding)
        real = (~padding[:, 1:]).unsqueeze(-1).to(out.dtype)  # after <cls>, the cell's own genes only
        mean = (out[:, 1:, :] * real).sum(dim=1) / real.sum(dim=1).clamp(min=1)
        return self.model.fine_tuning_head(mean)


def backbone_state(net: object) -> dict[str, object]:
    """The tensors ``_encode`` uses, named as the backend's ``model.model`` names them."""
    return modules_state(net, BACKBONE)


def apply_backbone(backend: ScGPTBackend, backbone: dict[str, object]) -> None:
    """Load fine-tuned encoder tensors into a (copied) backend's model, every tensor accounted for."""
    load_modules_state(backend.model.model, backbone, BACKBONE, "scGPT")
