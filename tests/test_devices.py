"""One rule for the device, used by the server (cluster GPUs), the CLI and the workers (torch's GPUs)."""

from __future__ import annotations

import pytest

from app.failures import FailureKind, classify
from inference.devices import DeviceUnavailable, choose_device


@pytest.mark.parametrize(("setting", "gpus", "device"), [
    ("auto", 0, "cpu"), ("auto", 2, "cuda"), (None, 1, "cuda"), ("cpu", 4, "cpu"), ("cuda", 1, "cuda"),
    ("cuda:1", 2, "cuda:1"), ("CPU", 0, "cpu"),
])
def test_the_device_rule(setting, gpus, device):
    assert choose_device(setting, gpus) == device


def test_cuda_without_a_gpu_is_said_and_is_the_users_to_fix():
    with pytest.raises(DeviceUnavailable, match="HELICAL_PLATFORM_DEVICE=cuda.*auto or cpu"):
        choose_device("cuda", 0)
    try:
        choose_device("cuda", 0)
    except DeviceUnavailable as exc:
        assert classify(exc, scheduler_gone=False) is FailureKind.USER_ERROR
