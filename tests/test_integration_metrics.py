"""scIB integration metrics (inference/integration_metrics.py) on real PBMCs with a simulated batch effect.

The shipped pbmc3k subset (599 cells, 8 types) is split at random into batches "a" and "b"; in "b" the counts of a
random 10 % of genes are tripled (a gene-specific technical effect, as a different chemistry or protocol makes).
The uncorrected embedding is the usual scanpy PCA (normalize_total, log1p, 2,000 HVGs, scale, 50 PCs); the
integrated one is Harmony's (harmonypy) on those PCs. No mocks: the numbers come from scib-metrics itself.
"""

from __future__ import annotations

import numpy as np
import pytest

from inference.backends.base import Cancelled
from inference.integration_metrics import (
    DEFAULT_MAX_CELLS,
    MIN_PER_STRATUM,
    STAGE,
    exact_neighbours,
    integration_metrics,
    sample_cells,
)

pytestmark = pytest.mark.slow  # its module fixture computes every integration metric (scib): not for the edit loop


BIO = ["Isolated labels", "KMeans NMI", "KMeans ARI", "Silhouette label", "cLISI"]
BATCH = ["BRAS", "iLISI", "KBET", "Graph connectivity", "PCR comparison"]


@pytest.fixture(scope="module")
def data() -> dict:
    import anndata as ad
    import harmonypy
    import pandas as pd
    import scipy.sparse as sp

    from tests.conftest import PBMC
    from tests.multibatch import plain_pcs

    raw = ad.read_h5ad(PBMC)
    rng = np.random.default_rng(0)
    batch = np.where(rng.permutation(raw.n_obs) < raw.n_obs // 2, "a", "b")
    factor = np.zeros(raw.n_vars, dtype=np.float32)
    factor[rng.choice(raw.n_vars, raw.n_vars // 10, replace=False)] = 2.0  # x3 = x + 2x
    x = sp.csr_matrix(raw.X, dtype=np.float32)
    x = sp.csr_matrix(x + sp.diags((batch == "b").astype(np.float32)) @ x @ sp.diags(factor))
    obs = pd.DataFrame({"batch": batch}, index=raw.obs_names)
    pcs = plain_pcs(ad.AnnData(x, obs=obs))
    z = np.asarray(harmonypy.run_harmony(pcs, obs, "batch", verbose=False).Z_corr)
    z = z if z.shape[0] == raw.n_obs else z.T  # cells x PCs in harmonypy 2.x (PCs x cells before)
    return {"pcs": pcs, "harmony": np.asarray(z, dtype=np.float32), "batch": batch,
            "labels": np.asarray(raw.obs["celltype"], dtype=str)}


@pytest.fixture(scope="module")
def ours(data) -> dict:
    calls: list[tuple[str, int, int]] = []
    out = {"pcs": integration_metrics(data["pcs"], data["batch"], data["labels"], data["pcs"],
                                      progress=lambda *a: calls.append(a)),
           "harmony": integration_metrics(data["harmony"], data["batch"], data["labels"], data["pcs"])}
    out["progress"] = calls
    return out


def test_equal_to_scib_benchmarker(data, ours):
    """The same numbers as the library's own Benchmarker (default metrics, raw values), given the same graph."""
    import anndata as ad
    import pandas as pd
    from scib_metrics.benchmark import Benchmarker

    n = len(data["batch"])
    adata = ad.AnnData(np.zeros((n, 1), dtype=np.float32),
                       obs=pd.DataFrame({"batch": data["batch"], "celltype": data["labels"]},
                                        index=[str(i) for i in range(n)]))
    adata.obsm["harmony"] = data["harmony"].copy()  # a copy: the library's KMeans centres its input in place
    adata.obsm["X_unintegrated"] = data["pcs"].copy()
    bm = Benchmarker(adata, batch_key="batch", label_key="celltype", embedding_obsm_keys=["harmony"],
                     pre_integrated_embedding_obsm_key="X_unintegrated", progress_bar=False)
    bm.prepare(neighbor_computer=exact_neighbours)
    bm.benchmark()
    table = bm.get_results(min_max_scale=False)

    assert list(ours["harmony"]["metrics"]) == BIO + BATCH
    assert set(table.columns) == set(BIO + BATCH) | {"Bio conservation", "Batch correction", "Total"}
    for name, value in {**ours["harmony"]["metrics"], **ours["harmony"]["aggregates"]}.items():
        assert value == pytest.approx(float(table.loc["harmony", name]), abs=1e-6), name
    agg = ours["harmony"]["aggregates"]
    assert agg["Total"] == pytest.approx(0.6 * agg["Bio conservation"] + 0.4 * agg["Batch correction"])
    assert ours["harmony"]["library"]["scib-metrics"] == "0.6.1"
    assert ours["harmony"]["sample"] == {**ours["harmony"]["sample"], "sampled": False, "cells": n, "of": n}
    steps = ["neighbour graph", *BIO, *BATCH]
    steps[2:4] = ["KMeans NMI / KMeans ARI"]  # one library call, two values
    expected = []  # before each step, what runs now (issue 39, item 8); after it, the count
    for i, step in enumerate(steps):
        expected += [(f"{STAGE}: {step} ({i + 1} of 10)", i, 10), (STAGE, i + 1, 10)]
    assert ours["progress"] == expected  # the neighbour graph, then 9 library calls
    # same inputs, same numbers, bit for bit (the library's kBET runs its own seeded pynndescent and ARPACK)
    assert integration_metrics(data["harmony"], data["batch"], data["labels"], data["pcs"]) == ours["harmony"]


def test_harmony_corrects_the_simulated_batch_effect(data, ours):
    """The simulated effect is real (the uncorrected PCA predicts the batch) and Harmony scores better on it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    def predictable(x):
        return cross_val_score(LogisticRegression(max_iter=2000), x, data["batch"], cv=5).mean()

    assert predictable(data["pcs"]) > 0.85 > 0.7 > predictable(data["harmony"])
    pcs, harmony = ours["pcs"], ours["harmony"]
    assert harmony["aggregates"]["Batch correction"] > pcs["aggregates"]["Batch correction"] + 0.1
    assert harmony["metrics"]["iLISI"] > pcs["metrics"]["iLISI"]
    assert harmony["metrics"]["KBET"] > pcs["metrics"]["KBET"]
    assert pcs["metrics"]["PCR comparison"] == 0.0  # the baseline against itself: no change in batch variance
    assert harmony["metrics"]["PCR comparison"] > 0.5


def test_without_labels_only_label_free_batch_metrics(data, ours):
    out = integration_metrics(data["harmony"], data["batch"], None, data["pcs"])
    assert list(out["metrics"]) == ["iLISI", "PCR comparison"]
    assert out["aggregates"]["Bio conservation"] is None and out["aggregates"]["Total"] is None
    assert out["aggregates"]["Batch correction"] == pytest.approx(np.mean(list(out["metrics"].values())))
    for name, value in out["metrics"].items():  # neither reads the labels: the labelled run's values (to float32
        # precision: iLISI's parallel float32 sums differed by 1.2e-6 between two computations once, under load)
        assert value == pytest.approx(ours["harmony"]["metrics"][name], abs=1e-5)
    assert out["sample"]["stratified_by"] == ["batch"]


def test_sample_is_stratified_seeded_and_recorded(data):
    batch, labels = data["batch"], data["labels"]
    n = len(batch)
    keep, record = sample_cells(batch, labels, 400, seed=3)
    assert record == {"sampled": True, "cells": 400, "of": n, "seed": 3, "rule": record["rule"],
                      "stratified_by": ["batch", "label"]}
    assert "400" in record["rule"] and "stratified" in record["rule"]
    assert len(np.unique(keep)) == 400
    strata = np.char.add(np.char.add(batch, "|"), labels)
    got = dict(zip(*np.unique(strata[keep], return_counts=True), strict=True))
    for key, size in zip(*np.unique(strata, return_counts=True), strict=True):
        assert got[key] >= min(size, MIN_PER_STRATUM), key  # every stratum kept, small ones whole
        assert abs(got[key] / 400 - size / n) < 0.05, key  # in proportion, up to the floors
    assert np.array_equal(keep, sample_cells(batch, labels, 400, seed=3)[0])
    assert not np.array_equal(keep, sample_cells(batch, labels, 400, seed=4)[0])
    assert sample_cells(batch, labels, n, seed=3)[1]["sampled"] is False

    # through the metrics (label-free here, to keep the test fast: a new cell count recompiles every jax kernel)
    first = integration_metrics(data["harmony"], batch, None, data["pcs"], seed=3, max_cells=400)
    again = integration_metrics(data["harmony"], batch, None, data["pcs"], seed=3, max_cells=400)
    other = integration_metrics(data["harmony"], batch, None, data["pcs"], seed=4, max_cells=400)
    assert first == again
    assert first["metrics"] != other["metrics"]
    assert first["sample"] == {**first["sample"], "sampled": True, "cells": 400, "of": n, "seed": 3,
                               "stratified_by": ["batch"]}
    assert np.unique(batch[sample_cells(batch, None, 400, seed=3)[0]], return_counts=True)[1].tolist() == \
        np.round(400 * np.unique(batch, return_counts=True)[1] / n).astype(int).tolist()
    assert DEFAULT_MAX_CELLS >= 10_000


def test_progress_cancel_and_bad_input(data):
    pcs, batch = data["pcs"], data["batch"]
    calls: list[tuple[str, int, int]] = []
    checks = iter([False, True])
    with pytest.raises(Cancelled, match="cancelled by the user"):
        integration_metrics(pcs, batch, None, pcs, progress=lambda *a: calls.append(a),
                            should_stop=lambda: next(checks))
    # the neighbour graph said and done, stopped before the first metric
    assert calls == [(f"{STAGE}: neighbour graph (1 of 3)", 0, 3), (STAGE, 1, 3)]
    with pytest.raises(ValueError, match="at least 2 batches"):
        integration_metrics(pcs, np.full(len(batch), "a"), None, pcs)
    with pytest.raises(ValueError, match="one row per cell"):
        integration_metrics(pcs, batch[:-1], None, pcs)
    with pytest.raises(ValueError, match="one row per cell"):
        integration_metrics(pcs, batch, None, pcs[:-1])
    with pytest.raises(ValueError, match="one row per cell"):
        integration_metrics(pcs, batch, data["labels"][:-1], pcs)
