"""The notebook process's memory while ``hp.connect`` uploads an AnnData to a lab server: the issue's goal is extra
memory under ~1.5x the file (the AnnData is written once to a temporary ``.h5ad`` and streamed from disk).

    python bench/notebook_upload.py --mb 300                 # serves with `make serve` on a fresh data home
    python bench/notebook_upload.py --url URL --token T --mb 48 --json   # against a running server

The AnnData is real PBMCs (the test subset's cells, tiled until the counts take ``--mb`` MB), built before the
measure. The measure is the process's peak resident memory during the upload alone (Linux: the peak is reset
through ``/proc/self/clear_refs`` just before it, read from ``VmHWM`` after), minus the resident memory before it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PBMC = REPO / "tests" / "data" / "pbmc3k_subset.h5ad"


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def cells_of_size(mb: float):  # noqa: ANN201
    """Real PBMC counts tiled to about ``mb`` MB of CSR arrays (float32 values, int32 indices), unique cell names."""
    import anndata as ad
    import numpy as np
    import scipy.sparse as sp

    pbmc = ad.read_h5ad(PBMC)
    x = sp.csr_matrix(pbmc.X, dtype=np.float32)
    per_copy = x.data.nbytes + x.indices.nbytes
    copies = max(1, round(mb * 1e6 / per_copy))
    big = sp.vstack([x] * copies, format="csr")
    obs = pbmc.obs.iloc[np.tile(np.arange(pbmc.n_obs), copies)].reset_index(drop=True)
    obs.index = [f"cell-{i}" for i in range(len(obs))]
    return ad.AnnData(X=big, obs=obs, var=pbmc.var.copy())


def measure(url: str, token: str | None, mb: float) -> dict[str, object]:
    """Upload ``mb`` MB of cells through the Python API's remote client; the memory it took beyond the AnnData."""
    from app.notebook_remote import RemoteClient

    client = RemoteClient(url, token)
    adata = cells_of_size(mb)
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
    before_kb = _status_kb("VmRSS")
    started = time.perf_counter()
    dataset_id = client._upload(adata, "query")
    seconds = time.perf_counter() - started
    peak_kb = _status_kb("VmHWM")
    extra = (peak_kb - before_kb) * 1024
    file_bytes = client._get(f"/api/datasets/{dataset_id}")["size_bytes"]  # the file as the client wrote it
    return {"dataset_id": dataset_id, "cells": adata.n_obs, "file_mb": round(file_bytes / 1e6, 1),
            "extra_mb": round(extra / 1e6, 1), "extra_over_file": round(extra / file_bytes, 3),
            "upload_s": round(seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=300)
    parser.add_argument("--url", help="a running server; without it, `make serve` on a fresh data home")
    parser.add_argument("--token")
    parser.add_argument("--json", action="store_true", help="print only the figures, as JSON")
    args = parser.parse_args()
    if args.url:
        result = measure(args.url, args.token, args.mb)
    else:
        from tests.serving import make_serve

        token = "bench-upload-token-0123456789"
        with tempfile.TemporaryDirectory() as tmp, make_serve(Path(tmp), {
                "HELICAL_PLATFORM_API_TOKEN": token, "HELICAL_PLATFORM_MAX_UPLOAD_MB": str(int(args.mb * 2 + 64))}) \
                as server:
            # the measure runs in a fresh process: this one holds the server's bookkeeping
            out = subprocess.run([sys.executable, __file__, "--url", server.url, "--token", token,
                                  "--mb", str(args.mb), "--json"], capture_output=True, text=True, check=True)
            result = json.loads(out.stdout)
    if args.json:
        print(json.dumps(result))
        return
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    print(f"# {datetime.now(UTC):%Y-%m-%d}, commit {commit}, {platform.machine()} {os.cpu_count()} cores")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
