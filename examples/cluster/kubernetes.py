"""A Kubernetes cluster for the platform, with the dask-kubernetes operator: GPU workers with the GPU resource.

    python examples/cluster/kubernetes.py > helical-dask.yaml && kubectl apply -f helical-dask.yaml
    DASK_SCHEDULER_ADDRESS=tcp://helical-dask-scheduler.<namespace>:8786 make serve

The image must contain this project (`docker build -t helical-platform .` and push it); the data home must be
a volume every pod mounts (e.g. a ReadWriteMany PersistentVolumeClaim at /data).
"""

from __future__ import annotations

from dask_kubernetes.operator import make_cluster_spec


def cluster_spec(image: str = "registry.example.org/helical-platform:latest", n_workers: int = 2,
                 gpus_per_worker: int = 1, claim: str = "helical-data") -> dict:
    """A DaskCluster resource whose workers each get one GPU and advertise it to Dask."""
    spec = make_cluster_spec(
        name="helical-dask", image=image, n_workers=n_workers,
        resources={"limits": {"nvidia.com/gpu": str(gpus_per_worker), "memory": "64Gi"},
                   "requests": {"cpu": "8", "memory": "32Gi"}},
        env={"HELICAL_PLATFORM_HOME": "/data", "HELICAL_PLATFORM_DEVICE": "cuda"},
    )
    worker = spec["spec"]["worker"]["spec"]
    container = worker["containers"][0]
    container["args"] += ["--resources", f"GPU={gpus_per_worker}"]
    volume = {"name": "data", "persistentVolumeClaim": {"claimName": claim}}
    for pod in (worker, spec["spec"]["scheduler"]["spec"]):
        pod.setdefault("volumes", []).append(volume)
        for c in pod["containers"]:
            c.setdefault("volumeMounts", []).append({"name": "data", "mountPath": "/data"})
    return spec


if __name__ == "__main__":
    import yaml

    print(yaml.safe_dump(cluster_spec(), sort_keys=False))
