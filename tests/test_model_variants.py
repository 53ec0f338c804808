"""The run form offers every variant of a model with several, as the command line does (``geneformer:VARIANT``),
each said with whether this server has its weights; the pick reaches the submission, and a variant without
weights is refused by the service with how to stage them (issue 39, item 9)."""

from __future__ import annotations

import pytest

from app.platform import Platform
from app.runs import InvalidRun
from app.settings import Settings
from inference.weights import GENEFORMER_VARIANTS
from tests.conftest import PBMC

PICKED = "gf-12L-38M-i4096"


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    home = tmp_path_factory.mktemp("variants") / "home"
    settings = Settings.from_env({"HELICAL_PLATFORM_HOME": str(home)})
    from inference.checkpoints import generate

    generate(settings.generated_weights_dir, "tiny", ["gf-6L-10M-i2048"], scgpt=False)  # the catalog's default
    p = Platform(settings, start_cluster=False)
    yield p
    p.close()


def test_the_form_lists_every_geneformer_variant_with_its_weights_and_sends_the_pick(platform):
    from dashboards.runs import RunPanel

    with open(PBMC, "rb") as fh:
        ds = platform.datasets.ingest(fh, "pbmc.h5ad")
    panel = RunPanel(platform)
    panel.param.update(datasets=platform.datasets.list(), dataset=ds.id, application="cell-type-annotation",
                       model="baseline")
    assert not panel.has_variants and "variant" not in panel.submission_options()
    panel.model = "geneformer"
    choices = panel.param.variant.objects
    assert panel.has_variants and sorted(choices.values()) == sorted(GENEFORMER_VARIANTS)
    labels = {v: k for k, v in choices.items()}
    assert labels["gf-6L-10M-i2048"] == "gf-6L-10M-i2048 (default, generated, untrained weights)"
    assert labels[PICKED] == f"{PICKED} (no weights here)"
    assert panel.variant == "gf-6L-10M-i2048"
    assert panel.submission_options()["variant"] == "gf-6L-10M-i2048"
    panel.variant = PICKED
    options = panel.submission_options()
    assert options["variant"] == PICKED
    with pytest.raises(InvalidRun, match=f"{PICKED} has no weights"):  # what the form shows on Run
        platform.runs._prepare("cell-type-annotation", "geneformer", ds.id, ds.id, "celltype", None, options, None)
    ok = platform.runs._prepare("cell-type-annotation", "geneformer", ds.id, ds.id, "celltype", None,
                                {**options, "variant": "gf-6L-10M-i2048"}, None)
    assert ok.parameters["variant"] == "gf-6L-10M-i2048"
    panel.model = "baseline"
    assert not panel.has_variants and "variant" not in panel.submission_options()
