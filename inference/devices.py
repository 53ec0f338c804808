"""The one rule for where a model runs, used by the server (for the cluster's GPUs), the CLI and the workers
(for the GPUs torch sees), so that they never disagree."""

from __future__ import annotations


class DeviceUnavailable(ValueError):
    """A GPU was asked for and there is none: said, never silently replaced by the CPU."""


def choose_device(setting: str | None, gpus: int) -> str:
    """``auto``: a GPU when there is one, else the CPU; ``cpu``: the CPU; ``cuda`` (or ``cuda:N``): the GPU,
    and an error that says what to do when there is none."""
    wanted = (setting or "auto").lower()
    if wanted == "cpu":
        return "cpu"
    if gpus > 0:
        return "cuda" if wanted == "auto" else wanted
    if wanted.startswith("cuda"):
        raise DeviceUnavailable("HELICAL_PLATFORM_DEVICE=cuda, but there is no GPU (no GPU worker in the Dask "
                                "cluster, or none torch can see). Set it to auto or cpu, or add GPU workers.")
    return "cpu"
