"""Untrusted bytes: a checkpoint carrying code is refused without running it; uploads are never unpickled."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import pytest
import torch

from inference.backends.geneformer import checkpoint_shapes
from tests.reliability import record


class _Payload:
    """Unpickling this runs ``open(marker, 'w')``: what a booby-trapped checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_carrying_code_is_refused_and_the_code_never_runs(tmp_path, request):
    marker = tmp_path / "pwned"
    evil = tmp_path / "pytorch_model.bin"
    torch.save({"bert.embeddings.word_embeddings.weight": torch.zeros(2, 2), "trap": _Payload(marker)}, evil)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        checkpoint_shapes(evil)
    assert not marker.exists()
    pickle.loads(pickle.dumps(_Payload(marker)))  # the control: plain unpickling would have run it
    assert marker.exists()
    record("security", "A checkpoint carrying code (pickle __reduce__)", "pytorch_model.bin through our loader "
           "(torch.load weights_only=True, as for every checkpoint of Geneformer and scGPT)",
           "UnpicklingError; the payload never ran (plain pickle.loads runs it: the control)",
           "nothing executed", request.node.nodeid)


@pytest.mark.parametrize("name", ["cells.pkl", "cells.h5ad", "cells.pt"])
def test_an_uploaded_pickle_is_never_unpickled(platform, tmp_path, name, request):
    from app.datasets import DatasetRejected

    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(marker))
    with pytest.raises(DatasetRejected) as err:
        platform.datasets.ingest(io.BytesIO(payload), name)
    assert not marker.exists()
    assert platform.datasets.list() == []
    record("security", "An uploaded pickle (cells.pkl / .pt, or renamed .h5ad)", f"upload of {name}",
           f"refused: {str(err.value)[:120]}", "never unpickled; nothing stored", request.node.nodeid)
