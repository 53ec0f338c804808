"""Embedding a dataset through the embedding store: block by block, or not at all when it is already there.

Both applications embed here, so an annotation reuses an integration run's embeddings and the other way round.
``on_block`` sees each block of what the head reads as it comes (annotation classifies while it embeds); on a reused
entry it sees the stored blocks (or, for a backend whose head reads the counts, those recomputed block by block),
so the caller's code is the same either way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from anndata import AnnData

from inference.backends.base import Backend, ShouldStop, check_stop
from inference.counts import Counts
from inference.embedding_store import EmbeddingKey, EmbeddingStore, EmbeddingWriter, StoredEmbedding
from inference.run_files import EMBEDDINGS

BLOCK = 10_000  # cells read and embedded at a time: memory follows the block, not the file
OnBlock = Callable[[int, np.ndarray], None]
REUSED = "embeddings reused"  # what progress says when a stored embedding is used


@dataclass
class Embedded:
    """A dataset's features and UMAP basis (memory-mapped when stored), and whether they were reused."""

    features: np.ndarray
    basis: np.ndarray
    genes_used: int
    reused: bool
    provenance: dict[str, Any]


def embedding_key(backend: Backend, model_info: dict, dataset_sha256: str) -> EmbeddingKey:
    """The store's key of ``backend``'s embedding of a dataset (a fitted backend: after ``fit``/``set_state``)."""
    return EmbeddingKey(checksum=str(model_info.get("checksum", backend.key)), variant=backend.variant or "",
                        precision=backend.embedding_precision, dataset_sha256=dataset_sha256,
                        settings=backend.embedding_settings())


def _blocks(cells: Counts | AnnData, size: int) -> Iterator[tuple[int, AnnData]]:
    if isinstance(cells, Counts):
        yield from cells.blocks(size)
    else:
        for start in range(0, cells.n_obs, size):
            yield start, cells[start:start + size]


def _compute(cells: Counts | AnnData, backend: Backend, writer: EmbeddingWriter, progress: Callable[[int, int], None],
             should_stop: ShouldStop | None, on_block: OnBlock | None, size: int) -> None:
    n = cells.n_obs
    for start, block in _blocks(cells, size):
        check_stop(should_stop)
        emb = backend.embed(block, progress=lambda done, _t, s=start: progress(s + done, n), should_stop=should_stop)
        own_basis = emb.basis is not emb.features
        writer.write(start, emb.features, emb.basis if own_basis else None, emb.genes_used)
        if on_block is not None:
            on_block(start, emb.for_head)
        del emb


def _replay(cells: Counts | AnnData, backend: Backend, stored: StoredEmbedding, on_block: OnBlock,
            should_stop: ShouldStop | None, size: int) -> None:
    """``on_block`` over a stored entry: its blocks, or what the head reads recomputed from the counts."""
    if backend.head_reads_counts:
        for start, cells_block in _blocks(cells, size):
            check_stop(should_stop)
            on_block(start, backend.head_input(cells_block, should_stop=should_stop))
        return
    for start in range(0, cells.n_obs, size):
        check_stop(should_stop)
        on_block(start, np.asarray(stored.features[start:start + size]))


def embed_dataset(cells: Counts | AnnData, backend: Backend, progress: Callable[[int, int], None],
                  should_stop: ShouldStop | None = None, store: EmbeddingStore | None = None,
                  key: EmbeddingKey | None = None, workdir: Path | None = None, on_block: OnBlock | None = None,
                  block: int = BLOCK, prepare: Callable[[], None] | None = None,
                  on_reused: Callable[[], None] | None = None) -> Embedded:
    """``cells`` embedded by ``backend``: from the store when ``key`` is there, else computed once into it (other
    runs of the same key wait, then reuse). Without a store: into ``workdir`` (or memory without one).
    ``prepare`` runs only when the embedding is computed (a backend fitted on these cells fits there);
    ``on_reused`` is told when a stored entry is used (progress says so)."""
    n = cells.n_obs
    if store is not None and key is not None:
        with store.claim(key, n) as got:
            if isinstance(got, StoredEmbedding):
                if on_reused is not None:
                    on_reused()
                if on_block is not None:
                    _replay(cells, backend, got, on_block, should_stop, block)
                progress(n, n)
                return Embedded(got.features, got.basis, got.genes_used, True, got.provenance())
            if prepare is not None:
                prepare()
            _compute(cells, backend, got, progress, should_stop, on_block, block)
        stored = store.get(key)
        if stored is None:  # deleted between publishing and reading: never expected, said plainly if it happens
            raise RuntimeError("The embedding just stored was removed while this run was reading it; run again.")
        return Embedded(stored.features, stored.basis, stored.genes_used, False,
                        {**stored.provenance(), "reused": False})
    if prepare is not None:
        prepare()
    writer = EmbeddingWriter(workdir, n, EMBEDDINGS)
    _compute(cells, backend, writer, progress, should_stop, on_block, block)
    writer.close()
    basis = writer.basis if writer.basis is not None else writer.features
    return Embedded(writer.features, basis, writer.genes_used, False, {"reused": False, "store": None})
