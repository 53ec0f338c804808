"""A SLURM cluster for the platform, with dask-jobqueue: GPU workers that declare the ``GPU`` resource.

On the login node (or a node that can submit jobs), with the data home on a filesystem every node mounts:

    python examples/cluster/slurm.py          # starts the scheduler, asks SLURM for 2 GPU workers, prints
                                              # the address; keep it running
    DASK_SCHEDULER_ADDRESS=tcp://HOST:PORT HELICAL_PLATFORM_HOME=/shared/helical make serve

Model actors go to workers with ``GPU`` (one model per GPU); UMAP and file writing go to any worker.
"""

from __future__ import annotations

from dask_jobqueue import SLURMCluster


def make_cluster(partition: str = "gpu", account: str | None = None, gpus_per_job: int = 1,
                 venv: str = "/shared/helical-platform/.venv") -> SLURMCluster:
    """One Dask worker per SLURM job, each with ``gpus_per_job`` GPUs advertised as the GPU resource."""
    return SLURMCluster(
        queue=partition,
        account=account,
        cores=8,
        processes=1,
        memory="64GB",
        walltime="08:00:00",
        job_extra_directives=[f"--gres=gpu:{gpus_per_job}"],
        worker_extra_args=["--resources", f"GPU={gpus_per_job}"],
        job_script_prologue=[f"source {venv}/bin/activate", "export HELICAL_PLATFORM_DEVICE=cuda"],
        scheduler_options={"dashboard_address": ":8787"},
    )


if __name__ == "__main__":
    import time

    cluster = make_cluster()
    cluster.scale(jobs=2)
    print("scheduler:", cluster.scheduler_address)
    print(cluster.job_script())
    while True:
        time.sleep(3600)
