"""The embedding store: a dataset's cell embeddings, computed once per model and kept in the data home.

Every run of every application asks here first. An entry is keyed by what determines the numbers (the weights'
checksum, variant, precision, the dataset's sha256 and the embedding settings), so it is never served for other
weights or settings. Entries are memory-mapped ``.npy`` files: a run reads the rows it needs, not the whole array.

Layout: ``<home>/embeddings/<dataset sha256>/<key digest>/{features.npy, basis.npy?, entry.json}``; a dataset's
entries go with it. An entry is written into a ``.partial-*`` folder and renamed into place once complete, under a
file lock per key, so two runs of the same key on any workers of one data home compute it once: the second waits
and reads what the first wrote.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inference.run_files import PARTIAL_PREFIX

EMBEDDINGS_DIR = "embeddings"
FEATURES, BASIS, ENTRY = "features.npy", "basis.npy", "entry.json"
LAYOUTS_DIR = "layouts"  # an entry's stored UMAP layouts (inference/layout_store.py): they go with it
STORE_FORMAT = 1


@dataclass(frozen=True)
class EmbeddingKey:
    """What determines a dataset's embedding under a model; its digest names the entry."""

    checksum: str
    variant: str
    precision: str
    dataset_sha256: str
    settings: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"format": STORE_FORMAT, **asdict(self)}

    def digest(self) -> str:
        text = json.dumps(self.as_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]


def state_digest(state: dict[str, np.ndarray]) -> str:
    """A digest of what a backend learnt (the baseline's genes and PCA): part of its embedding's key."""
    h = hashlib.sha256()
    for name in sorted(state):
        a = np.ascontiguousarray(state[name])
        h.update(name.encode())
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.astype(str).tobytes() if a.dtype.kind in "OU" else a.tobytes())
    return h.hexdigest()[:32]


@dataclass
class StoredEmbedding:
    """An entry as a run uses it: memory-mapped features and basis (the same array when the model has no
    separate basis), and whether it was already there."""

    key: EmbeddingKey
    folder: Path
    features: np.ndarray
    basis: np.ndarray
    genes_used: int
    reused: bool
    seconds: float  # how long computing it took (when it was computed)

    def provenance(self) -> dict[str, Any]:
        return {"reused": self.reused, "key": self.key.digest(), "cells": int(self.features.shape[0]),
                "dims": int(self.features.shape[1]), "store": str(self.folder)}


class EmbeddingWriter:
    """Fills a new entry block by block (arrays are created at the first block, when their widths are known)."""

    def __init__(self, folder: Path | None, n_cells: int, features_name: str = FEATURES) -> None:
        self.folder, self.n_cells, self.features_name = folder, n_cells, features_name
        self.features: np.ndarray | None = None
        self.basis: np.ndarray | None = None
        self.genes_used = 0

    def write(self, start: int, features: np.ndarray, basis: np.ndarray | None = None, genes_used: int = 0) -> None:
        """Rows ``start:start+len(features)``; ``basis`` None when it is the features themselves."""
        if self.features is None:
            self.features = self._array(self.features_name, features.shape[1])
            if basis is not None:
                self.basis = self._array(BASIS, basis.shape[1])
            self.genes_used = int(genes_used)
        stop = start + len(features)
        self.features[start:stop] = features
        if self.basis is not None:
            self.basis[start:stop] = basis

    def _array(self, name: str, width: int) -> np.ndarray:
        """A memory-mapped file in the folder (a new one: never a file a published result shares by a hard
        link), or an array in memory without a folder."""
        if self.folder is None:
            return np.empty((self.n_cells, width), dtype=np.float32)
        (self.folder / name).unlink(missing_ok=True)
        return np.lib.format.open_memmap(self.folder / name, mode="w+", dtype=np.float32,
                                         shape=(self.n_cells, width))

    def close(self) -> None:
        for a in (self.features, self.basis):
            if isinstance(a, np.memmap):
                a.flush()
        if self.features is None:
            raise RuntimeError("No embedding was written.")


class EmbeddingStore:
    """The entries of one data home."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def folder(self, key: EmbeddingKey) -> Path:
        return self.root / key.dataset_sha256 / key.digest()

    def get(self, key: EmbeddingKey) -> StoredEmbedding | None:
        """The entry of ``key``, or None; an entry whose recorded key differs (never expected) is not served."""
        folder = self.folder(key)
        try:
            entry = json.loads((folder / ENTRY).read_text())
        except (OSError, ValueError):
            return None
        if entry.get("key") != json.loads(json.dumps(key.as_dict(), default=str)):
            return None
        features = np.load(folder / FEATURES, mmap_mode="r")
        basis = np.load(folder / BASIS, mmap_mode="r") if (folder / BASIS).is_file() else features
        return StoredEmbedding(key, folder, features, basis, int(entry.get("genes_used", 0)), True,
                               float(entry.get("seconds", 0.0)))

    @contextmanager
    def claim(self, key: EmbeddingKey, n_cells: int) -> Iterator[StoredEmbedding | EmbeddingWriter]:
        """The entry if it exists; else a writer whose entry is published when the block ends without error.
        Holds the key's lock throughout, so a concurrent run of the same key waits and then reuses."""
        folder = self.folder(key)
        folder.parent.mkdir(parents=True, exist_ok=True)
        with open(folder.parent / f"{folder.name}.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                found = self.get(key)
                if found is not None:
                    yield found
                    return
                _remove_dead_partials(folder)  # a writer of this key that died: we hold its lock now
                staging = folder.parent / f"{PARTIAL_PREFIX}{uuid.uuid4().hex[:8]}-{folder.name}"
                staging.mkdir()
                writer = EmbeddingWriter(staging, n_cells)
                began = time.perf_counter()
                try:
                    yield writer
                    writer.close()
                    entry = {"key": key.as_dict(), "cells": n_cells, "dims": int(writer.features.shape[1]),
                             "genes_used": writer.genes_used, "seconds": round(time.perf_counter() - began, 3),
                             "created": time.time()}
                    (staging / ENTRY).write_text(json.dumps(entry, indent=2, default=str))
                    shutil.rmtree(folder, ignore_errors=True)  # an unreadable leftover of the same key
                    os.replace(staging, folder)
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def remove_partials(self) -> list[Path]:
        """Remove the half-written entries of writers that are gone (a killed worker or server): a staging
        folder whose key's lock nobody holds. One whose lock is held belongs to a live writer and stays."""
        removed = []
        layouts = self.root.glob(f"*/*/{LAYOUTS_DIR}/{PARTIAL_PREFIX}*")  # inference/layout_store.py: same naming
        for staging in [*self.root.glob(f"*/{PARTIAL_PREFIX}*"), *layouts]:
            digest = staging.name.split("-", 2)[-1]  # .partial-<8 hex>-<key digest>
            lock_path = staging.parent / f"{digest}.lock"
            try:
                with open(lock_path, "a+") as lock:
                    try:
                        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # being written now
                    try:
                        if staging.exists():
                            shutil.rmtree(staging, ignore_errors=True)
                            removed.append(staging)
                    finally:
                        fcntl.flock(lock, fcntl.LOCK_UN)
            except FileNotFoundError:  # the dataset's entries were deleted meanwhile
                continue
        return removed

    def entries(self, dataset_sha256: str) -> list[dict[str, Any]]:
        """A dataset's entries: key, cells, dims, bytes."""
        out = []
        for folder in sorted((self.root / dataset_sha256).glob("*/")):
            if folder.name.startswith(PARTIAL_PREFIX) or not (folder / ENTRY).is_file():
                continue
            entry = json.loads((folder / ENTRY).read_text())
            layouts = sum(1 for d in (folder / LAYOUTS_DIR).glob("*/") if not d.name.startswith(PARTIAL_PREFIX))
            out.append({"digest": folder.name, **entry, "layouts": layouts, "bytes": _bytes(folder)})
        return out

    def size(self, dataset_sha256: str) -> int:
        """Bytes a dataset's entries take."""
        return _bytes(self.root / dataset_sha256)

    def delete(self, dataset_sha256: str) -> int:
        """Remove a dataset's entries (a run using one keeps its own hard-linked copy); the bytes freed."""
        folder = self.root / dataset_sha256
        freed = _bytes(folder)
        shutil.rmtree(folder, ignore_errors=True)
        return freed


def _remove_dead_partials(folder: Path) -> None:
    """Staging folders of ``folder``'s key; the caller holds the key's lock, so their writers are gone."""
    for staging in folder.parent.glob(f"{PARTIAL_PREFIX}*-{folder.name}"):
        shutil.rmtree(staging, ignore_errors=True)


def _bytes(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
