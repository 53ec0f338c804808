"""The classification head of a fine-tuned model: helical's linear layer as trained with its backbone.

It is not trained on frozen features like the other kinds (``inference/finetune.py`` trains it with the
backbone), so ``train`` refuses; its logits on the fine-tuned backbone's embedding are helical's own
``get_outputs``, divided by a temperature fitted on the validation cells so its probabilities are honest.
"""

from __future__ import annotations

import numpy as np

from inference.calibration import softmax
from inference.counts import AnnotationError
from inference.heads.base import Classifier


class FineTunedHead(Classifier):
    kind = "fine_tuned_linear"
    trainable = False  # made by fine-tuning, not offered as a head option of its own

    def __init__(self, classes: np.ndarray, weight: np.ndarray, bias: np.ndarray, temperature: float = 1.0,
                 calibration_cells: int = 0) -> None:
        self.classes, self.weight, self.bias = np.asarray(classes).astype(str), weight, bias
        self.temperature, self.calibration_cells = float(temperature), int(calibration_cells)

    @classmethod
    def train(cls, x: np.ndarray, labels: np.ndarray, settings: dict, seed: int = 0) -> FineTunedHead:
        raise AnnotationError("A fine-tuned head is trained with its model (head = fine-tune), not on embeddings.")

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) @ self.weight.T.astype(np.float64) + self.bias

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return softmax(self.logits(x) / self.temperature)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"classes": self.classes, "weight": self.weight, "bias": self.bias,
                "temperature": np.array(self.temperature), "calibration_cells": np.array(self.calibration_cells)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> FineTunedHead:
        return cls(arrays["classes"], arrays["weight"], arrays["bias"], float(arrays.get("temperature", 1.0)),
                   int(arrays.get("calibration_cells", 0)))

    def describe(self) -> dict[str, object]:
        return {"kind": self.kind, "temperature": round(self.temperature, 4),
                "calibration_cells": self.calibration_cells}
