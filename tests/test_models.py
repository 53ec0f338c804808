"""Backends through helical's own classes on tiny generated checkpoints and real PBMCs.

Parity: our Geneformer path equals bare helical ``get_embeddings``; our scGPT path equals helical at batch size
one, whatever the batch. Offline: no socket is opened. Side effects of helical do not leak.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from inference.backends import create_backend
from inference.helical_env import isolated
from tests.conftest import TINY_VARIANTS


@pytest.mark.slow
@pytest.mark.parametrize("variant", TINY_VARIANTS)
def test_geneformer_equals_bare_helical_get_embeddings(tiny_locations, pbmc_small, variant, no_network):
    backend = create_backend("geneformer", variant, tiny_locations, device="cpu", max_tokens=3000)
    backend.load()
    ours = backend.embed(pbmc_small)
    dataset, _ = backend.tokenize(pbmc_small)
    with isolated():
        bare = backend.model.get_embeddings(dataset)
    assert ours.features.shape == (pbmc_small.n_obs, backend.model.model.config.hidden_size)
    assert np.abs(bare - ours.features).max() <= 1e-5
    assert len(set(np.asarray(dataset["length"]))) > 5  # batches of mixed lengths were exercised
    assert ours.genes_used > 10_000
    assert backend.load_info["tensors_loaded"] == backend.load_info["tensors_needed"]
    assert no_network == []


def test_scgpt_gives_each_cell_what_helical_gives_it_alone(tiny_locations, pbmc_small, no_network):
    backend = create_backend("scgpt", None, tiny_locations, device="cpu", max_tokens=4000)
    backend.load()
    ours = backend.embed(pbmc_small)
    dataset, _ = backend.prepare(pbmc_small)
    with isolated():
        backend.model.config["batch_size"] = 1
        alone = backend.model.get_embeddings(dataset)
        backend.model.config["batch_size"] = 24
        batched = backend.model.get_embeddings(dataset)
    assert np.abs(alone - ours.features).max() <= 1e-5
    # bare helical's batched mean runs over padding: the number that moves with the batch
    assert np.abs(alone - batched).max() > 1e-3
    # and ours does not depend on the company a cell keeps
    subset = backend.embed(pbmc_small[::3].copy())
    assert np.abs(subset.features - ours.features[::3]).max() <= 1e-5
    assert no_network == []


def test_helical_side_effects_do_not_leak(tiny_locations, pbmc_small):
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    np.random.seed(1234)
    expected_draw = np.random.RandomState(1234).random_sample()
    obs_cols, var_cols = list(pbmc_small.obs.columns), list(pbmc_small.var.columns)
    for name in ("scgpt", "geneformer"):
        backend = create_backend(name, None, tiny_locations, device="cpu")
        backend.load()
        backend.embed(pbmc_small)
    assert root.level == level and root.handlers == handlers
    assert not logging._warnings_showwarning  # warnings are not rerouted into logging
    assert np.random.random_sample() == expected_draw  # helical's reseeding did not reach us
    assert list(pbmc_small.obs.columns) == obs_cols and list(pbmc_small.var.columns) == var_cols


def test_baseline_embeds_with_the_reference_genes(pbmc_small):
    import anndata as ad

    from tests.conftest import PBMC

    reference = ad.read_h5ad(PBMC)[1::2].copy()
    backend = create_backend("baseline", None, None)
    backend.load()
    backend.fit(reference)
    out = backend.embed(pbmc_small)
    # the head reads the reference's 2,000 genes; what is stored (and drawn) is their 50 PCs
    assert out.head_input.shape == (pbmc_small.n_obs, 2000) and out.for_head is out.head_input
    assert out.features.shape == (pbmc_small.n_obs, 50) and out.basis is out.features
    assert np.isfinite(out.head_input).all() and out.genes_used == 2000
    assert np.array_equal(backend.head_input(pbmc_small[:7].copy()), out.head_input[:7])
    # the same cells under symbols only (no Ensembl column) give the same features
    symbols_only = pbmc_small.copy()
    del symbols_only.var["gene_ids"]
    again = backend.embed(symbols_only)
    assert np.corrcoef(again.head_input.ravel(), out.head_input.ravel())[0, 1] > 0.9


def test_cancel_stops_between_batches(tiny_locations, pbmc_small):
    from inference.backends import Cancelled

    backend = create_backend("geneformer", None, tiny_locations, device="cpu", max_tokens=2000)
    backend.load()
    seen = []
    with pytest.raises(Cancelled):
        backend.embed(pbmc_small, progress=lambda done, total: seen.append(done),
                      should_stop=lambda: len(seen) >= 2)
    assert len(seen) == 2 and seen[-1] < pbmc_small.n_obs
