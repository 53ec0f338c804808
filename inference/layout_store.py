"""A query's UMAP layout, computed once per stored embedding and layout settings, kept beside that embedding.

The UMAP was most of a small run (65-90 s of a 97-126 s baseline run on 2,500 cells) and came out the same for
every run of the same embedding, seed and settings. So a layout is stored inside its embedding's entry
(``<entry>/layouts/<layout digest>/{coords.npy, layout.json}``): it is keyed by the embedding entry's digest (the
weights, variant, precision, dataset sha256 and embedding settings), the cells laid out, the UMAP parameters,
seed, sample sizes, the engine (GPU or CPU) and umap-learn's version. Living inside the entry, it goes when the
dataset's embeddings are deleted (or the entry is rewritten), counts in their disk use, and follows the store's
safety: written into a ``.partial-*`` folder renamed into place, under a lock per key (a second run of the same
key waits, then reuses), half-written ones removed by ``EmbeddingStore.remove_partials``. An embedding that is not
in a store (no data home) is laid out as before and nothing is kept.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from inference import layout
from inference.embedding_store import LAYOUTS_DIR
from inference.run_files import PARTIAL_PREFIX

COORDS, LAYOUT = "coords.npy", "layout.json"
LAYOUT_FORMAT = 1
REUSED = "layout reused"  # what progress says when a stored layout is used


def layout_key(embedding_key: str, n_cells: int, seed: int, params: dict | None) -> dict[str, Any]:
    """Everything that changes the coordinates of one embedding's layout."""
    try:
        umap_version = metadata.version("umap-learn")
    except metadata.PackageNotFoundError:
        umap_version = "not installed"
    return {"format": LAYOUT_FORMAT, "embedding": embedding_key, "cells": int(n_cells), "seed": int(seed),
            "params": {**layout.DEFAULT_UMAP, **(params or {})}, "full_max": layout.FULL_UMAP_MAX_CELLS,
            "sample_cells": layout.SAMPLE_CELLS, "spectral_max": layout.SPECTRAL_MAX_CELLS,
            "chunk": layout.TRANSFORM_CHUNK, "engine": "gpu" if layout.gpu_umap() is not None else "cpu",
            "umap_learn": umap_version}


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32]


def stored_umap(basis: np.ndarray, seed: int, params: dict | None, embedding: dict | None,
                on_reused: Callable[[], None] | None = None) -> tuple[np.ndarray, dict[str, object]]:
    """``basis``'s layout and what was done: from the store when the embedding's entry (``embedding``: its
    provenance, with ``store`` and ``key``) already holds it, else computed and kept there. ``info['reused']``
    and ``info['layout_key']`` say which, so a run's provenance names the layout it shows."""
    folder = _entry_folder(embedding)
    if folder is None:
        coords, info = layout.umap_layout(basis, seed=seed, params=params)
        return coords, {**info, "reused": False, "stored": False}
    key = layout_key(folder.name, len(basis), seed, params)
    digest = key_digest(key)
    layouts = folder / LAYOUTS_DIR
    try:
        layouts.mkdir(exist_ok=True)  # never parents: an entry deleted meanwhile is not brought back
        lock = open(layouts / f"{digest}.lock", "a+")  # noqa: SIM115 - held across the compute below
    except OSError:
        coords, info = layout.umap_layout(basis, seed=seed, params=params)
        return coords, {**info, "reused": False, "stored": False, "layout_key": digest}
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            began = time.perf_counter()
            found = _read(layouts / digest, key, len(basis))
            if found is not None:
                coords, info = found
                if on_reused is not None:
                    on_reused()
                return coords, {**info, "reused": True, "layout_key": digest, "embedding_key": folder.name,
                                "computed_seconds": info.get("seconds"),
                                "seconds": round(time.perf_counter() - began, 3)}
            coords, info = layout.umap_layout(basis, seed=seed, params=params)
            stored = _write(layouts, digest, key, coords, info)
            return coords, {**info, "reused": False, "stored": stored, "layout_key": digest,
                            "embedding_key": folder.name}
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _entry_folder(embedding: dict | None) -> Path | None:
    """The stored embedding's entry folder, when the run's embedding is one (and it is still there)."""
    if not embedding or not embedding.get("store") or not embedding.get("key"):
        return None
    folder = Path(str(embedding["store"]))
    if folder.name != embedding["key"] or not folder.is_dir():
        return None
    return folder


def _read(folder: Path, key: dict[str, Any], n_cells: int) -> tuple[np.ndarray, dict] | None:
    """A stored layout of exactly ``key`` and ``n_cells`` cells, or None (absent, unreadable or another key)."""
    try:
        record = json.loads((folder / LAYOUT).read_text())
        if record.get("key") != json.loads(json.dumps(key, default=str)):
            return None
        coords = np.load(folder / COORDS)
    except (OSError, ValueError):
        return None
    if coords.shape != (n_cells, 2):
        return None
    return np.asarray(coords, dtype=np.float32), dict(record.get("info", {}))


def _write(layouts: Path, digest: str, key: dict[str, Any], coords: np.ndarray, info: dict) -> bool:
    """Publish a layout at once (a ``.partial-*`` folder renamed into place); False when it could not be kept
    (the dataset's embeddings deleted meanwhile, a full disk): the run goes on with its coordinates."""
    staging = layouts / f"{PARTIAL_PREFIX}{uuid.uuid4().hex[:8]}-{digest}"
    try:
        staging.mkdir()
        np.save(staging / COORDS, np.asarray(coords, dtype=np.float32))
        (staging / LAYOUT).write_text(json.dumps({"key": key, "info": info, "created": time.time()}, indent=2,
                                                 default=str))
        shutil.rmtree(layouts / digest, ignore_errors=True)  # an unreadable leftover of the same key
        os.replace(staging, layouts / digest)
        return True
    except OSError:
        return False
    finally:
        shutil.rmtree(staging, ignore_errors=True)
