"""A fine-tuned model's file: one safetensors file (the backbone's tensors, ``head.weight``/``head.bias``) whose
metadata holds the base weights' checksum, the classes, the settings and the per-epoch history. Reading it
refuses a file changed since it was saved (its sha256) and one fine-tuned from other weights than those loaded."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from inference.counts import AnnotationError
from inference.run_files import atomic_path
from inference.weights import sha256_file

if TYPE_CHECKING:
    from inference.finetune import FineTuned

FORMAT = "helical-platform fine-tuned model 1"


def save_fine_tuned(result: FineTuned, path: Path) -> str:
    """Write the safetensors file (atomically); returns its sha256."""
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in result.tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"helical_platform": json.dumps(result.metadata())})
    return sha256_file(path)


@dataclass
class LoadedFineTuned:
    backbone: dict[str, object]
    head_weight: np.ndarray
    head_bias: np.ndarray
    metadata: dict[str, object]


def read_fine_tuned(path: Path, sha256: str, base_checksum: str) -> LoadedFineTuned:
    """The file's tensors, refused unless the file is the one recorded (``sha256``) and it was fine-tuned from the
    weights now loaded (``base_checksum``)."""
    from safetensors import safe_open

    if not Path(path).is_file():
        raise AnnotationError(f"The fine-tuned weights {Path(path).name} are missing from the data home.")
    actual = sha256_file(path)
    if actual != sha256:
        raise AnnotationError(f"The fine-tuned weights {Path(path).name} have changed since they were saved "
                              f"(sha256 {actual[:12]}…, recorded {sha256[:12]}…): they are not loaded.")
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("helical_platform", "{}"))
        if meta.get("format") != FORMAT:
            raise AnnotationError(f"{Path(path).name} is not a fine-tuned model saved by this platform.")
        if meta["base"].get("checksum") != base_checksum:
            raise AnnotationError(
                f"These fine-tuned weights were trained from {meta['base'].get('backend')} "
                f"{meta['base'].get('variant')} weights with checksum {str(meta['base'].get('checksum'))[:12]}…, "
                f"but the weights installed now have checksum {base_checksum[:12]}…: stage the weights it was "
                "fine-tuned from, or fine-tune again.")
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a mapping
    weight, bias = tensors.pop("head.weight"), tensors.pop("head.bias")
    return LoadedFineTuned(tensors, weight.float().numpy(), bias.float().numpy(), meta)
