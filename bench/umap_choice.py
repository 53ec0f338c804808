"""What the UMAP of a large run should be: time and picture of umap-learn's options on a real basis.

    python bench/umap_choice.py --data pbmc3k_10x.h5ad      # ~8 minutes on 2 cores

The basis is the baseline's 50 principal components of pbmc3k cells resampled (with replacement, counts thinned
binomially as in bench/scaling.py) to 100,000 cells, the reference being pbmc3k itself. Each variant runs in this
process, seeded (so single-threaded, as in a run), after a warm-up that compiles umap-learn's kernels. The
picture is judged by label agreement: for 5,000 cells drawn at random, the share of their 15 nearest neighbours on
the 2-D map that carry the same pbmc3k label. Writes bench/out/umap_choice.json and docs/images/umap_choice.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

# (label, cells, init, fit on a sample of) — spectral beyond 30k is left out: over 5 minutes at 50k
VARIANTS = [("spectral, every cell", 10_000, "spectral", None), ("PCA start, every cell", 10_000, "pca", None),
            ("spectral, every cell", 20_000, "spectral", None), ("PCA start, every cell", 20_000, "pca", None),
            ("PCA start, every cell", 50_000, "pca", None), ("PCA start, every cell", 100_000, "pca", None),
            ("PCA start, fit on 50k + transform", 100_000, "pca", 50_000),
            ("PCA start, fit on 10k + transform", 100_000, "pca", 10_000)]


def label_agreement(coords: np.ndarray, labels: np.ndarray, k: int = 15, n: int = 5_000) -> float:
    from sklearn.neighbors import NearestNeighbors

    idx = np.random.default_rng(0).choice(len(coords), size=min(n, len(coords)), replace=False)
    _, nbrs = NearestNeighbors(n_neighbors=k + 1).fit(coords).kneighbors(coords[idx])
    return float((labels[nbrs[:, 1:]] == labels[idx, None]).mean())


def main() -> None:
    import anndata as ad
    from scaling import resample

    from inference.backends.baseline import BaselineBackend
    from inference.layout import umap_layout

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "tests" / "data" / "pbmc3k_subset.h5ad")
    parser.add_argument("--label", default="celltype")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    reference = ad.read_h5ad(args.data)
    backend = BaselineBackend()
    backend.fit(reference)
    with tempfile.TemporaryDirectory() as tmp:
        query = ad.read_h5ad(resample(args.data, 100_000, Path(tmp) / "q.h5ad"))
    basis = backend.embed(query).basis
    labels = query.obs[args.label].astype(str).to_numpy()
    umap_layout(np.random.default_rng(0).normal(size=(5_000, 10)).astype(np.float32))  # compile the kernels
    rows, pictures = [], {}
    for name, cells, init, sample in VARIANTS:
        take = np.sort(np.random.default_rng(1).choice(len(basis), cells, replace=False)) if cells < len(basis) \
            else np.arange(len(basis))
        started = time.perf_counter()
        coords, info = umap_layout(basis[take], params={"init": init}, full_max=sample or cells,
                                   sample_cells=sample or cells, use_gpu=False)
        seconds = time.perf_counter() - started
        row = {"variant": name, "cells": cells, "seconds": round(seconds, 1),
               "ms_per_1k_cells": round(seconds / cells * 1e6, 1),
               "label_agreement": round(label_agreement(coords, labels[take]), 3), "fit_on": info["fit_on"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if cells == 100_000 and (sample in (None, 50_000)):
            pictures[name] = coords
    out = REPO / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "umap_choice.json").write_text(json.dumps({"data": str(args.data), "rows": rows}, indent=2))
    plot(pictures, labels, REPO / "docs" / "images" / "umap_choice.png")


def plot(pictures: dict[str, np.ndarray], labels: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = sorted(set(labels))
    colours = {c: plt.cm.tab10(i % 10) for i, c in enumerate(classes)}
    fig, axes = plt.subplots(1, len(pictures), figsize=(6 * len(pictures), 5.5))
    for ax, (name, coords) in zip(np.atleast_1d(axes), pictures.items(), strict=True):
        for c in classes:
            m = labels == c
            ax.scatter(coords[m, 0], coords[m, 1], s=0.2, color=colours[c], label=c, rasterized=True)
        ax.set_title(f"100,000 cells: {name}")
        ax.set_xticks([])
        ax.set_yticks([])
    np.atleast_1d(axes)[-1].legend(markerscale=20, fontsize=8, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()
