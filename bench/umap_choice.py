"""What the UMAP of a large run should be: time and picture of umap-learn's options on a real basis.

    python bench/umap_choice.py --data pbmc3k_10x.h5ad      # ~8 minutes on 2 cores

Time: the basis is the baseline's 50 principal components of pbmc3k cells resampled (with replacement, counts
thinned binomially as in bench/scaling.py) to 100,000 cells, the reference being pbmc3k itself. Each variant runs
in this process, seeded (so single-threaded, as in a run), after a warm-up that compiles umap-learn's kernels.

Picture: resampled cells are copies of 2,700 cells, so their map is clumps of copies and says nothing of the
layout's quality. The picture is therefore judged on the 2,700 real cells, every cell against a fit on half of
them with the other half placed by ``transform`` (the same proportion as 50,000 of 100,000), by label agreement:
the share of each cell's 15 nearest neighbours on the 2-D map that carry its pbmc3k label.
``--picture-only`` redoes only that part. Writes bench/out/umap_choice.json and docs/images/umap_choice.png.
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
    parser.add_argument("--picture-only", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    reference = ad.read_h5ad(args.data)
    backend = BaselineBackend()
    backend.fit(reference)
    out = REPO / "bench" / "out" / "umap_choice.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [] if args.picture_only else timings(args, backend, umap_layout, resample)
    if args.picture_only:
        rows = [{k: v for k, v in r.items() if k != "label_agreement"}  # copies of cells: not a measure
                for r in json.loads(out.read_text())["rows"] if "picture" not in r]
    real = backend.embed(reference).basis
    labels = reference.obs[args.label].astype(str).to_numpy()
    pictures = {}
    for name, fit_on in ((f"every cell ({len(real):,})", len(real)),
                         (f"fit on {len(real) // 2:,}, the rest by transform", len(real) // 2)):
        coords, info = umap_layout(real, params={"init": "pca"}, full_max=fit_on, sample_cells=fit_on,
                                   use_gpu=False)
        row = {"picture": name, "cells": len(real), "fit_on": info["fit_on"],
               "label_agreement": round(label_agreement(coords, labels), 3)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        pictures[name] = coords
    out.write_text(json.dumps({"data": str(args.data), "rows": rows}, indent=2))
    plot(pictures, labels, REPO / "docs" / "images" / "umap_choice.png")


def timings(args: argparse.Namespace, backend, umap_layout, resample) -> list[dict]:  # noqa: ANN001
    import anndata as ad

    with tempfile.TemporaryDirectory() as tmp:
        query = ad.read_h5ad(resample(args.data, 100_000, Path(tmp) / "q.h5ad"))
    basis = backend.embed(query).basis
    umap_layout(np.random.default_rng(0).normal(size=(5_000, 10)).astype(np.float32))  # compile the kernels
    rows = []
    for name, cells, init, sample in VARIANTS:
        take = np.sort(np.random.default_rng(1).choice(len(basis), cells, replace=False)) if cells < len(basis) \
            else np.arange(len(basis))
        started = time.perf_counter()
        coords, info = umap_layout(basis[take], params={"init": init}, full_max=sample or cells,
                                   sample_cells=sample or cells, use_gpu=False)
        seconds = time.perf_counter() - started
        row = {"variant": name, "cells": cells, "seconds": round(seconds, 1),
               "ms_per_1k_cells": round(seconds / cells * 1e6, 1), "fit_on": info["fit_on"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


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
            ax.scatter(coords[m, 0], coords[m, 1], s=2, color=colours[c], label=c, rasterized=True)
        ax.set_title(f"pbmc3k, PCA start: {name}")
        ax.set_xticks([])
        ax.set_yticks([])
    np.atleast_1d(axes)[-1].legend(markerscale=5, fontsize=8, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()
