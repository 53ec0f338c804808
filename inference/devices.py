"""The one rule for where a model runs, used by the server (for the cluster's GPUs), the CLI and the workers
(for the GPUs torch sees), so that they never disagree."""

from __future__ import annotations

NEEDS_GPU = "needs a GPU"
GPU_HELP = ("Point the platform at a Dask scheduler with GPU workers: DASK_SCHEDULER_ADDRESS=tcp://host:8786, "
            "workers started with --resources GPU=1 (README, 'Running on a cluster'; docs/MODELS.md).")


class DeviceUnavailable(ValueError):
    """A GPU was asked for and there is none: said, never silently replaced by the CPU."""


class GpuRequired(DeviceUnavailable):
    """A model that helical runs on CUDA only, with no GPU to run it on: refused before it is queued."""


def choose_device(setting: str | None, gpus: int, requires_gpu: bool = False, model: str = "This model",
                  where: str = "the Dask cluster's workers have none") -> str:
    """``auto``: a GPU when there is one, else the CPU; ``cpu``: the CPU; ``cuda`` (or ``cuda:N``): the GPU,
    and an error that says what to do when there is none. A model that ``requires_gpu`` gets a GPU or an error
    (``GpuRequired``, saying ``where`` none was found), never the CPU."""
    wanted = (setting or "auto").lower()
    if requires_gpu:
        if gpus <= 0:
            raise GpuRequired(f"{model} needs a GPU (helical runs it on CUDA only), and {where}. {GPU_HELP}")
        if wanted == "cpu":
            raise GpuRequired(f"{model} needs a GPU (helical runs it on CUDA only), but HELICAL_PLATFORM_DEVICE=cpu."
                              " Set it to auto or cuda.")
        return "cuda" if wanted == "auto" else wanted
    if wanted == "cpu":
        return "cpu"
    if gpus > 0:
        return "cuda" if wanted == "auto" else wanted
    if wanted.startswith("cuda"):
        raise DeviceUnavailable("HELICAL_PLATFORM_DEVICE=cuda, but there is no GPU (no GPU worker in the Dask "
                                "cluster, or none torch can see). Set it to auto or cpu, or add GPU workers.")
    return "cpu"


def device_label(setting: str | None, gpus: int, requires_gpu: bool = False) -> str:
    """Where a model would run, as listed (REST ``device``): ``needs a GPU`` for a GPU-only model without one."""
    try:
        return choose_device(setting, gpus, requires_gpu)
    except GpuRequired:
        return NEEDS_GPU
    except DeviceUnavailable:
        return "cuda (no GPU available)"
