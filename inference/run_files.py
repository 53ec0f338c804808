"""The one owner of a run folder's layout and of atomic writes: the file names, and writers that never leave a
half-written file where a reader looks (a crash leaves only ``.partial-*`` names, which clean-up removes).

Inference writes with these, the app reads with these names; nothing else spells a result file's name.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PARTIAL_PREFIX = ".partial-"  # store/artifacts.py removes what carries it (tests check both agree)

PREDICTIONS = "predictions.parquet"  # one row per cell: id, label, confidence, probabilities, UMAP (row groups)
EMBEDDINGS = "embeddings.npy"        # the query's features, cells x dims, float32
METRICS = "metrics.json"
PROVENANCE = "provenance.json"
ANNOTATED = "annotated.h5ad"         # the input file plus predictions (obs), embedding and UMAP (obsm)
CSV = "cells.csv"                    # written on first download; formula cells neutralised (csv_safe.py)
UNSAFE_CSV = "predictions.csv"       # the CSV as written before cells were neutralised: removed, never served
CELLXGENE = "cellxgene.h5ad"         # the annotated file with CELLxGENE's cell_type columns, on first download
HEAD_SUFFIX = ".npz"                 # a cached classifier head: plain arrays, never a pickle
PROBABILITY_PREFIX = "p_"  # predictions columns "p_<class>": one per class of the head, rows sum to 1


def head_file(heads_dir: str | os.PathLike[str], cache_key: str) -> Path:
    return Path(heads_dir) / f"{cache_key}{HEAD_SUFFIX}"


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary sibling of ``path`` for libraries that write by file name (anndata, pandas, numpy);
    renamed into place only if the block finishes."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{PARTIAL_PREFIX}{uuid.uuid4().hex[:8]}-{dest.name}")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Replace ``path`` with ``text`` at once: a reader sees the old file or the new one, never a part."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


@contextmanager
def atomic_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A staging folder beside ``path``, which replaces ``path`` whole when the block finishes (a run's results
    are published together or not at all)."""
    final = Path(path)
    staging = final.parent / f"{PARTIAL_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        yield staging
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
