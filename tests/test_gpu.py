"""On a CUDA device, the foundation models embed what they embed on the CPU (tiny generated checkpoints, real
PBMCs). Marked ``gpu``: skipped where torch sees no CUDA device (tests/conftest.py), run on a GPU machine with
``pytest -m gpu``. The benchmark figures on a GPU are ``bench/models.py --device cuda``'s."""

from __future__ import annotations

import numpy as np
import pytest

from inference.backends import create_backend

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("model", ["geneformer", "scgpt"])
def test_a_model_on_cuda_embeds_as_on_the_cpu(model, tiny_locations, pbmc_small):
    embedded = {}
    for device in ("cpu", "cuda"):
        backend = create_backend(model, None, tiny_locations, device=device, max_tokens=3000)
        backend.load()
        weights = next(backend.model.model.parameters())
        assert weights.device.type == device, (model, device, weights.device)
        embedded[device] = backend.embed(pbmc_small).features
    assert embedded["cuda"].shape == embedded["cpu"].shape == (pbmc_small.n_obs, embedded["cpu"].shape[1])
    assert np.isfinite(embedded["cuda"]).all()
    # float32 on both; the GPU's kernels sum in another order: close, not bitwise equal
    assert np.abs(embedded["cuda"] - embedded["cpu"]).max() <= 1e-3 * max(1.0, np.abs(embedded["cpu"]).max())
