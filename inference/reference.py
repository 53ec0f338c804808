"""The reference of an annotation run and the head learnt from it.

A reference's labels are read at once (a column of ``obs``); its counts only when a head must be trained (a cached
head needs none of them), and then only the cells the head trains on, a block of the file at a time. Those are the
labelled cells, or, for a reference of more than ``max_cells`` labelled cells, a seeded sample of that many
stratified by type: each type keeps its share of the reference (so the head learns the reference's proportions, as
from every cell), and no type falls below ``MIN_CELLS_PER_TYPE`` cells (or all it has, or an equal split of the
sample when that is smaller), so rare types stay. Memory then follows the sample, not the atlas. A reference under
the limit trains on every labelled cell, exactly as before the limit existed (same head, same cache key). Why
proportions and not a fixed number per type: on a 100,000-cell reference, a kNN head trained on at most 10,000
cells of each type lost 0.06 macro-F1 to the head trained on every cell (docs/BENCHMARKS.md, "A million-cell
reference").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from inference.annotation_stage import Stage
from inference.backends.base import Backend, check_stop
from inference.counts import AnnotationError, Counts
from inference.embedding import REUSED, embed_dataset, embedding_key
from inference.embedding_store import EmbeddingStore
from inference.heads import FINE_TUNE, Head, head_cache_key
from inference.run_files import head_file
from inference.timing import StageTimer

MAX_REFERENCE_CELLS = 100_000  # labelled cells a head trains on at most (a stratified, seeded sample beyond)
MIN_CELLS_PER_TYPE = 500  # a sampled type keeps at least this many cells (or all it has)
READ_BLOCK = 10_000  # rows of the reference file read at a time to collect the sampled cells


def sample_sizes(class_counts: dict[str, int], max_cells: int | None) -> dict[str, int]:
    """Cells of each type a head trains on: all of them up to ``max_cells`` labelled cells in all (None or 0: no
    limit); beyond, each type's share of ``max_cells``, and at least ``MIN_CELLS_PER_TYPE`` (at most an equal
    split of ``max_cells``; or all the type has)."""
    total = sum(class_counts.values())
    if not max_cells or total <= max_cells:
        return dict(class_counts)
    floor = min(MIN_CELLS_PER_TYPE, max_cells // max(1, len(class_counts)))
    return {c: min(n, max(n * max_cells // total, floor)) for c, n in class_counts.items()}


def stratified_sample(labels: np.ndarray, max_cells: int | None, seed: int = 0) -> np.ndarray:
    """Mask over ``labels``: the cells ``sample_sizes`` allows of each type, drawn at random with ``seed``."""
    labels = np.asarray(labels).astype(str)
    types, codes, counts = np.unique(labels, return_inverse=True, return_counts=True)  # sorted: stable draws
    sizes = sample_sizes(dict(zip(types, counts.tolist(), strict=True)), max_cells)
    if sum(sizes.values()) == len(labels):
        return np.ones(len(labels), dtype=bool)
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(labels), dtype=bool)
    for t, name in enumerate(types):
        idx = np.flatnonzero(codes == t)
        keep[idx if sizes[name] == len(idx) else rng.choice(idx, size=sizes[name], replace=False)] = True
    return keep


def read_rows(cells: Counts | AnnData, rows: np.ndarray, block: int | None = None) -> AnnData:
    """The cells at ``rows`` (sorted file positions) with their counts: a file is read ``block`` rows at a time,
    skipping blocks with none of them, and only the chosen rows are kept."""
    block = block or READ_BLOCK
    if isinstance(cells, AnnData):
        return cells[rows].copy()
    if len(rows) == cells.n_obs:
        return cells.whole()
    parts = []
    for start in range(0, cells.n_obs, block):
        stop = min(start + block, cells.n_obs)
        lo, hi = np.searchsorted(rows, [start, stop])
        if lo < hi:
            got = cells.block(start, stop)
            parts.append(got[rows[lo:hi] - start].copy())
    first = parts[0]
    out = AnnData(X=sp.vstack([p.X for p in parts], format="csr"),
                  obs=_concat_obs([p.obs for p in parts]), var=first.var.copy())
    out.uns.update(first.uns)
    return out


def _concat_obs(frames: list):  # noqa: ANN001, ANN202 - pandas frames of the same columns
    import pandas as pd

    return pd.concat(frames, axis=0)


@dataclass
class Reference:
    """A reference's cells (an open file's counts, or cells in memory), which rows are labelled and used (``keep``:
    in evaluation mode, not held out), their labels, and the file's sha256."""

    cells: Counts | AnnData
    keep: np.ndarray
    labels: np.ndarray  # the labels of the kept rows, in file order
    sha256: str
    max_cells: int | None = MAX_REFERENCE_CELLS
    seed: int = 0
    _sample: np.ndarray | None = field(default=None, repr=False)

    @property
    def sample(self) -> np.ndarray:
        """Mask over the kept rows: the ones a head trains on."""
        if self._sample is None:
            self._sample = stratified_sample(self.labels, self.max_cells, self.seed)
        return self._sample

    @property
    def sampled(self) -> bool:
        """Whether the reference had more than ``max_cells`` labelled cells (the head trains on a sample)."""
        return bool((~self.sample).any())

    @property
    def trained_rows(self) -> np.ndarray:
        return np.flatnonzero(self.keep)[self.sample]

    @property
    def trained_labels(self) -> np.ndarray:
        return self.labels[self.sample]

    def read(self) -> AnnData:
        """The counts of the cells the head trains on."""
        return read_rows(self.cells, self.trained_rows)

    @property
    def sample_settings(self) -> dict[str, object]:
        """How the sample is drawn: part of a sampled head's cache key and of its provenance."""
        return {"max_cells": self.max_cells, "min_per_type": MIN_CELLS_PER_TYPE, "seed": self.seed}

    def describe(self) -> dict[str, object]:
        """What provenance records about the cells trained on."""
        out: dict[str, object] = {"reference_cells": int(self.sample.sum())}
        if self.sampled:
            out["reference_sample"] = {"labelled_cells": int(len(self.labels)), **self.sample_settings}
        return out


@dataclass
class HeadRequest:
    """What the head of a run is keyed and trained by."""

    head: dict
    label_column: str
    heads_dir: str | None
    seed: int


def trained_head(request: HeadRequest, backend: Backend, model_info: dict, ref: Reference, ref_key: str,
                 timer: StageTimer, should_stop: Callable[[], bool] | None,
                 store: EmbeddingStore | None) -> tuple[Head, str, bool]:
    """The head for this model, reference and settings: from the cache, or trained (then cached). A model that
    learns nothing from the reference embeds the whole reference file through the embedding store (computed once,
    shared with every run on that file) and trains on its labelled rows, unless the reference is sampled (then it
    embeds only the sample)."""
    settings = {**request.head, "backend_state": backend.has_state}
    if ref.sampled:  # only then: heads cached before the cap keep their keys
        settings["reference_sample"] = ref.sample_settings
    key = head_cache_key(model_info.get("checksum", backend.key), ref_key, request.label_column, settings)
    head_path = head_file(request.heads_dir, key) if request.heads_dir else None
    if head_path and head_path.is_file():
        head = Head.load(head_path)
        if backend.has_state:
            backend.set_state(head.extra)
        return head, key, True
    if head_path:
        head_path.parent.mkdir(parents=True, exist_ok=True)
    if request.head.get("kind") == FINE_TUNE:
        from inference.finetune_head import train_fine_tuned_head

        head = train_fine_tuned_head(backend, ref.read(), ref.trained_labels, request.head, model_info,
                                     request.seed, timer, should_stop,
                                     head_path.with_suffix(".safetensors") if head_path else None)
    else:
        features = None
        if store is not None and not backend.has_state and not ref.sampled:
            n = ref.cells.n_obs
            timer.stage(Stage.EMBEDDING_REFERENCE, 0, n)
            embedded = embed_dataset(ref.cells, backend, timer.report, should_stop, store,
                                     embedding_key(backend, model_info, ref.sha256),
                                     on_reused=lambda: timer.say(REUSED, n, n))
            features = np.asarray(embedded.features[ref.keep])
        cells = ref.read() if features is None else None
        head = train_head(backend, cells, ref.trained_labels, request.head, request.seed, timer, should_stop,
                          features)
    if head_path:
        head.save(head_path)
    return head, key, False


def train_head(backend: Backend, reference: AnnData | None, labels: np.ndarray, settings: dict, seed: int = 0,
               timer: StageTimer | None = None, should_stop: Callable[[], bool] | None = None,
               features: np.ndarray | None = None) -> Head:
    """Fit the backend to the reference (the baseline learns its genes), embed it (unless its ``features`` are
    given), train the head; the backend's fitted state is kept with the head."""
    timer = timer or StageTimer(None)
    if features is None:
        timer.stage(Stage.EMBEDDING_REFERENCE, 0, reference.n_obs)
        backend.fit(reference)
        features = backend.embed(reference, progress=timer.report, should_stop=should_stop).for_head
    check_stop(should_stop)
    timer.stage(Stage.TRAINING_HEAD)
    head = Head.train(features, labels, settings, seed=seed)
    if backend.has_state:
        head.extra = backend.state()
    return head


MIN_ANNOTATOR_GENE_SHARE = 0.5


def annotator_head(path: str, checksum_required: str | None, backend: Backend,
                   model_info: dict) -> tuple[Head, str, bool, int]:
    """A saved annotator's head, refused unless this model's weights are the ones it was trained on."""
    checksum = model_info.get("checksum", backend.key)
    if checksum_required and checksum != checksum_required:
        raise AnnotationError(
            f"This annotator was trained on weights with checksum {checksum_required[:16]}…, but the model's "
            f"weights here have checksum {str(checksum)[:16]}…: its head would read another model's embeddings. "
            "Stage the weights it was trained on, or train an annotator on these.")
    head = Head.load(Path(path))
    if backend.has_state:
        backend.set_state(head.extra)
    cells = int(np.diff(head.fit.offsets).sum())
    return head, f"annotator:{Path(path).stem}", True, cells


def check_annotator_genes(backend: Backend, query: Counts) -> None:
    """An annotator learnt from genes the query may lack: refuse before embedding when it lacks most of them."""
    found = backend.genes_present(query.block(0, min(1, query.n_obs)))
    if found and found[1] and found[0] < MIN_ANNOTATOR_GENE_SHARE * found[1]:
        raise AnnotationError(
            f"The query has {found[0]:,} of the {found[1]:,} genes this annotator reads (needs at least "
            f"{MIN_ANNOTATOR_GENE_SHARE:.0%}): check that the genes are human and named by Ensembl id or current "
            "symbol, as in the reference it learnt from.")
