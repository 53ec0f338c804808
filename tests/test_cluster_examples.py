"""The cluster examples in the README construct without error (no SLURM or Kubernetes needed to build them)."""

from __future__ import annotations

import importlib.util

from tests.conftest import REPO


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "examples" / "cluster" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_slurm_example_asks_for_gpu_workers_with_the_gpu_resource():
    cluster = _load("slurm").make_cluster(partition="gpu", account="lab")
    try:
        script = cluster.job_script()
        assert "#SBATCH --gres=gpu:1" in script and "--resources GPU=1" in script
        assert "#SBATCH -p gpu" in script and "HELICAL_PLATFORM_DEVICE=cuda" in script
    finally:
        cluster.close()


def test_the_kubernetes_example_gives_each_worker_a_gpu_and_the_shared_data_home():
    spec = _load("kubernetes").cluster_spec(n_workers=3)
    worker = spec["spec"]["worker"]
    container = worker["spec"]["containers"][0]
    assert worker["replicas"] == 3
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "GPU=1" in container["args"]
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
