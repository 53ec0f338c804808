"""Atlas-sized single-cell files from real PBMCs, written block by block: making a million cells needs no more
memory than a block of them (the issue's third point).

    python bench/atlas_data.py --cells 1000000 --out atlas.h5ad                  # the shipped 599-cell subset
    python bench/atlas_data.py --source pbmc3k_10x.h5ad --cells 1000000 --out atlas.h5ad  # the full 2,700-cell pbmc3k

Each cell is a real cell of the source, drawn with replacement and thinned binomially to a depth drawn per cell
(40-95 % of its UMIs: a shallower sequencing of the same cell), so no two cells are copies. Two cell-type mixes,
half the cells each (``obs['mix']``): ``A`` draws cells as the source has them; ``B`` draws the cell types
evenly (rare types common, as another tissue or a sorted sample would give) and scales every gene by its own
log-normal factor (sd 0.2, another donor or kit), so that the map is not clumps of copies of one distribution.
Labels (``obs['celltype']``) are the source cell's. The counts are written with anndata's own writer, the first
block creating ``X`` and the others appended (``anndata.io.sparse_dataset(...).append``); ``obs`` and ``var``
first, from the drawn indices alone. ``--json`` prints the figures, with the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "tests" / "data" / "pbmc3k_subset.h5ad"
BLOCK = 20_000
DEPTH = (0.4, 0.95)
GENE_SD = 0.2


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def draw_cells(labels: np.ndarray, n_cells: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Which source cell each new cell copies, and its mix: A as the source's proportions, B even across types."""
    rng = np.random.default_rng(seed)
    mix_b = rng.random(n_cells) < 0.5
    rows = rng.integers(0, len(labels), n_cells)
    types, codes = np.unique(labels, return_inverse=True)
    by_type = [np.flatnonzero(codes == t) for t in range(len(types))]
    n_b = int(mix_b.sum())
    picked = rng.integers(0, len(types), n_b)  # a type, evenly, then a cell of it
    rows[mix_b] = [by_type[t][i % len(by_type[t])] for t, i in zip(picked, rng.integers(0, 2**31, n_b), strict=True)]
    return rows, mix_b


def make_atlas(source: Path, n_cells: int, out: Path, seed: int = 0, block: int = BLOCK,
               label_column: str = "celltype") -> dict[str, object]:
    """Write ``n_cells`` cells to ``out`` (``.h5ad``); the figures of what was written."""
    import anndata as ad
    import h5py
    import pandas as pd
    import scipy.sparse as sp
    from anndata.io import sparse_dataset, write_elem

    started = time.perf_counter()
    src = ad.read_h5ad(source)
    x_src = sp.csr_matrix(src.X, dtype=np.float32)
    labels = src.obs[label_column].astype(str).to_numpy()
    rows, mix_b = draw_cells(labels, n_cells, seed)
    rng = np.random.default_rng(seed + 1)
    gene_factor = np.exp(rng.normal(0.0, GENE_SD, src.n_vars)).astype(np.float32)

    obs = pd.DataFrame({label_column: pd.Categorical(labels[rows]),
                        "mix": pd.Categorical(np.where(mix_b, "B", "A")),
                        "source_cell": pd.Categorical(src.obs_names.to_numpy()[rows])},
                       index=pd.Index([f"cell-{i}" for i in range(n_cells)]))
    ad.AnnData(obs=obs, var=src.var.copy(), uns={"generated_by": "bench/atlas_data.py", "source": source.name,
                                                  "seed": seed}).write_h5ad(out)
    del obs
    nnz = 0
    with h5py.File(out, "a") as f:
        if "X" in f:
            del f["X"]
        for start in range(0, n_cells, block):
            stop = min(start + block, n_cells)
            x = x_src[rows[start:stop]].tocoo()
            values = x.data.astype(np.float64)
            b = mix_b[start:stop][x.row]
            values[b] = rng.poisson(values[b] * gene_factor[x.col[b]])  # mix B: another donor's gene scales
            depth = rng.uniform(*DEPTH, stop - start)
            values = rng.binomial(values.astype(np.int64), depth[x.row]).astype(np.float32)
            counts = sp.csr_matrix((values, (x.row, x.col)), shape=x.shape)
            counts.eliminate_zeros()
            counts.indices = counts.indices.astype(np.int32)
            counts.indptr = counts.indptr.astype(np.int64)
            nnz += counts.nnz
            if start == 0:
                write_elem(f, "X", counts)  # resizable: anndata makes its arrays appendable
            else:
                sparse_dataset(f["X"]).append(counts)
    return {"cells": n_cells, "genes": int(src.n_vars), "nnz": nnz, "file_mb": round(out.stat().st_size / 1e6, 1),
            "mix_b": int(mix_b.sum()), "seconds": round(time.perf_counter() - started, 1),
            "peak_rss_mb": round(_peak_rss_mb(), 1), "block": block}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--source", type=Path, default=SOURCE, help="a labelled .h5ad of raw counts")
    parser.add_argument("--label-column", default="celltype")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--block", type=int, default=BLOCK)
    parser.add_argument("--json", action="store_true", help="print only the figures, as JSON")
    args = parser.parse_args()
    figures = make_atlas(args.source, args.cells, args.out, args.seed, args.block, args.label_column)
    print(json.dumps(figures) if args.json else json.dumps(figures, indent=2), file=sys.stdout)


if __name__ == "__main__":
    main()
