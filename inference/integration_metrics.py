"""The scIB integration metrics of an embedding, computed by the published `scib-metrics` package.

Nothing here reimplements a metric: the metric list, each metric's call and its arguments, the result names and
the aggregate weights are the library's own (`scib_metrics.benchmark`: `BioConservation()`, `BatchCorrection()`,
`MetricAnnDataAPI`, `metric_name_cleaner`, `Benchmarker.get_results`), so the numbers equal what
`Benchmarker(...).get_results(min_max_scale=False)` reports for the same cells and neighbour graph. What this module
adds is what a service needs around it: a seeded stratified sample above `DEFAULT_MAX_CELLS` (two metrics are
quadratic in the cells), progress and cancellation between metrics, and a record of how the numbers were made.
Pure arrays in, a JSON-able dict out; no import of app/, store/ or dashboards/.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

import numpy as np

# Above this many cells the metrics are computed on a seeded stratified sample. Set from bench/integration_metrics.py
# (docs/BENCHMARKS.md, "scIB integration metrics: time and memory"): silhouette label, isolated labels and BRAS are
# quadratic in the cells.
DEFAULT_MAX_CELLS = 20_000
# every batch x label stratum keeps at least this many cells (all of a smaller one): kBET skips a label with fewer
# than 10 cells, and a silhouette needs more than one cell of a group
MIN_PER_STRATUM = 10
# Benchmarker's neighbour counts (15: graph connectivity, 50: kBET, 90: LISI); one search at the largest, subset
NEIGHBOUR_VALUES = (15, 50, 90)
# of the default batch-correction metrics, the only ones whose library call reads no cell-type label
LABEL_FREE = ("ilisi_knn", "pcr_comparison")
STAGE = "integration metrics"


def exact_neighbours(x: np.ndarray, k: int):
    """The k nearest neighbours of every cell (itself included), exact, as the library's `NeighborsResults`.

    The signature of `Benchmarker.prepare(neighbor_computer=...)`. Exact rather than the library's default
    pynndescent: deterministic by construction, no numba compilation (about 30 s in a fresh process), faster at
    the sampled sizes (0.7 s against 2.8 s at 10k cells x 50 dimensions), and what pynndescent approximates
    (recall 0.9996 there), so the numbers are the library's up to that approximation.
    """
    from scib_metrics.nearest_neighbors import NeighborsResults
    from sklearn.neighbors import NearestNeighbors

    distances, indices = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(x).kneighbors(x)
    return NeighborsResults(indices=indices, distances=distances.astype(np.float32))


NEIGHBOURS = (f"exact Euclidean (sklearn NearestNeighbors, brute force), k={max(NEIGHBOUR_VALUES)} with each cell "
              f"itself, subset to {', '.join(map(str, NEIGHBOUR_VALUES))} as Benchmarker.prepare does")


def stratified_sample(strata: np.ndarray, max_cells: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded sample of about max_cells, proportional to each stratum's size, every stratum
    keeping min(size, MIN_PER_STRATUM) cells (so a rare cell type in one batch is not lost, which would change
    which labels count as isolated and which kBET can score)."""
    keys, inverse, sizes = np.unique(strata, return_inverse=True, return_counts=True)
    floor = np.minimum(sizes, MIN_PER_STRATUM)
    budget = max(max_cells - int(floor.sum()), 0)
    spare = sizes - floor
    quota = budget * spare / max(int(spare.sum()), 1)
    take = np.floor(quota).astype(int)
    # largest remainders get the cells the floors left over, ties to the earlier (sorted) stratum
    left = min(budget - int(take.sum()), int((spare - take).sum()))
    if left > 0:
        order = np.argsort(-(quota - take), kind="stable")
        take[order[:left]] += 1
    take = np.minimum(floor + take, sizes)
    members = np.split(np.argsort(inverse, kind="stable"), np.cumsum(sizes)[:-1])  # each stratum's cells, in order
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(cells, size=int(k), replace=False) for cells, k in zip(members, take, strict=True)]
    return np.sort(np.concatenate(chosen))


def sample_cells(batch: np.ndarray, labels: np.ndarray | None, max_cells: int, seed: int) -> tuple[np.ndarray, dict]:
    """The cells the metrics are computed on (sorted indices) and the record of how they were chosen: all of them
    up to max_cells, else a stratified_sample by batch x label (batch alone without labels)."""
    batch = np.asarray(batch).astype(str)
    stratified_by = ["batch"] if labels is None else ["batch", "label"]
    strata = batch if labels is None else np.char.add(np.char.add(batch, "\x1f"), np.asarray(labels).astype(str))
    n = len(batch)
    sampled = n > max_cells
    keep = stratified_sample(strata, max_cells, seed) if sampled else np.arange(n)
    return keep, {"sampled": bool(sampled), "cells": int(len(keep)), "of": int(n), "seed": int(seed),
                  "rule": f"above {max_cells:,} cells, a seeded random sample of about {max_cells:,} cells, "
                          f"stratified by {' x '.join(stratified_by)} in proportion to each stratum's size, keeping "
                          f"at least {MIN_PER_STRATUM} cells of every stratum (all of a smaller one)",
                  "stratified_by": stratified_by}


def integration_metrics(embedding: np.ndarray, batch: np.ndarray, labels: np.ndarray | None,
                        unintegrated: np.ndarray, seed: int = 0, max_cells: int | None = None,
                        progress: Callable[[str, int, int], None] | None = None,
                        should_stop: Callable[[], bool] | None = None) -> dict:
    """scib-metrics' default benchmark of one embedding, raw (not min-max scaled) values.

    With labels: every metric `BioConservation()` and `BatchCorrection()` enable by default (scib-metrics 0.6.1:
    Isolated labels, KMeans NMI, KMeans ARI, Silhouette label, cLISI; BRAS, iLISI, KBET, Graph connectivity, PCR
    comparison; Leiden NMI/ARI and sBEE are off by default). Without labels: only the batch metrics that read none
    (iLISI, PCR comparison); Bio conservation and Total are then None. `unintegrated` (the same cells' uncorrected
    PCA) is the PCR comparison's pre-integration embedding. Aggregates as `Benchmarker.get_results`: the mean of
    each type's metrics (NaN skipped), Total = 0.6 x bio + 0.4 x batch.

    Above max_cells (default DEFAULT_MAX_CELLS) cells, everything is computed on one seeded sample stratified by
    batch x label (batch alone without labels); "sample" records it. Same inputs and seed give the same numbers.
    progress(stage, done, total) is called before each step with what runs now ("integration metrics: KBET (8 of
    10)") and after it with the bare stage (the neighbour graph, then each library metric call); should_stop() is
    checked before each, raising Cancelled.

    Returns {"metrics": {name: float, or None where the library gives NaN (KBET when no label has 10 cells in two
    batches)}, "aggregates": {"Bio conservation", "Batch correction", "Total"},
    "sample": {...}, "library": {"scib-metrics": version, "neighbours": how}}.
    """
    import pandas as pd
    import scib_metrics
    from anndata import AnnData
    from scib_metrics.benchmark._core import (
        _BATCH,
        _LABELS,
        _X_PRE,
        BatchCorrection,
        BioConservation,
        MetricAnnDataAPI,
        metric_name_cleaner,
    )

    from inference.backends.base import Cancelled

    embedding = np.asarray(embedding)
    unintegrated = np.asarray(unintegrated)
    if embedding.ndim != 2 or unintegrated.ndim != 2:
        raise ValueError(f"embedding and unintegrated must be 2-D (cells x dimensions), got shapes "
                         f"{embedding.shape} and {unintegrated.shape}")
    n = embedding.shape[0]
    batch = np.asarray(batch).astype(str)
    if batch.shape != (n,) or unintegrated.shape[0] != n or (labels is not None and np.shape(labels) != (n,)):
        raise ValueError(f"one row per cell: embedding {embedding.shape}, batch {batch.shape}, unintegrated "
                         f"{unintegrated.shape}" + ("" if labels is None else f", labels {np.shape(labels)}"))
    k = max(NEIGHBOUR_VALUES)
    max_cells = DEFAULT_MAX_CELLS if max_cells is None else int(max_cells)
    if min(n, max_cells) < k:
        raise ValueError(f"the metrics need at least {k} cells (the library's largest neighbourhood): "
                         f"{n} cells, max_cells {max_cells}")
    if len(np.unique(batch)) < 2:
        raise ValueError(f"batch-integration metrics need at least 2 batches, got {len(np.unique(batch))}")
    labels = None if labels is None else np.asarray(labels).astype(str)
    keep, sample = sample_cells(batch, labels, max_cells, seed)

    # Benchmarker's own AnnData for one embedding: X = the embedding, obs batch/labels, obsm X_pre, uns neighbours.
    # A float32 C-ordered copy: the library's KMeans centres its input in place, and the caller's array stays intact.
    x = np.array(embedding[keep], dtype=np.float32, order="C")
    obs = pd.DataFrame({_BATCH: batch[keep]}, index=pd.Index(np.arange(len(keep)).astype(str)))
    if labels is not None:
        obs[_LABELS] = labels[keep]
    ad = AnnData(x, obs=obs)
    ad.obsm[_X_PRE] = np.asarray(unintegrated[keep], dtype=np.float32)

    calls: list[tuple[str, str, object]] = []  # (metric type, library function name, kwargs or True)
    for metric_type, collection in (("Bio conservation", BioConservation()), ("Batch correction", BatchCorrection())):
        for name, use in asdict(collection).items():
            if use is not False and (labels is not None or name in LABEL_FREE):
                calls.append((metric_type, name, use))

    total = len(calls) + 1
    done = 0

    def running(label: str) -> None:
        """Say which step runs now, before it runs: one metric (kBET, iLISI) may take minutes on a busy machine,
        and a bare stage name with a still ETA reads as a hang."""
        if progress is not None:
            progress(f"{STAGE}: {label} ({done + 1} of {total})", done, total)

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(STAGE, done, total)

    def check() -> None:
        if should_stop is not None and should_stop():
            raise Cancelled("cancelled by the user")

    check()
    running("neighbour graph")
    neighbours = exact_neighbours(x, k)
    for m in NEIGHBOUR_VALUES:
        ad.uns[f"{m}_neighbor_res"] = neighbours.subset_neighbors(n=m)
    step()

    metrics: dict[str, float | None] = {}
    types: dict[str, str] = {}
    for metric_type, name, use in calls:
        check()
        running(metric_label(name))
        fn = getattr(scib_metrics, name)
        if isinstance(use, dict):
            fn = _partial(fn, use)
        value = getattr(MetricAnnDataAPI, name)(ad, fn)
        values = {f"{name}_{part}": v for part, v in value.items()} if isinstance(value, dict) else {name: value}
        for key, v in values.items():
            clean = metric_name_cleaner.get(key, key)
            metrics[clean] = None if np.isnan(float(v)) else float(v)  # JSON has no NaN
            types[clean] = metric_type
        step()

    def mean(metric_type: str) -> float | None:
        vals = [v for key, v in metrics.items() if types[key] == metric_type and v is not None]
        return float(np.mean(vals)) if vals else None

    bio = mean("Bio conservation") if labels is not None else None
    batch_score = mean("Batch correction")
    aggregates = {"Bio conservation": bio, "Batch correction": batch_score,
                  "Total": None if bio is None or batch_score is None else 0.4 * batch_score + 0.6 * bio}
    return {"metrics": metrics, "aggregates": aggregates, "sample": sample,
            "library": {"scib-metrics": scib_metrics.__version__, "neighbours": NEIGHBOURS}}


def metric_label(name: str) -> str:
    """A library metric's name as its results table spells it ("kbet_per_label" -> "KBET"; a call giving two
    values -> "KMeans NMI / KMeans ARI")."""
    from scib_metrics.benchmark._core import metric_name_cleaner

    return metric_name_cleaner.get(name) or " / ".join(
        v for k, v in metric_name_cleaner.items() if k.startswith(f"{name}_")) or name


def _partial(fn: Callable, kwargs: dict) -> Callable:
    from functools import partial

    return partial(fn, **kwargs)
