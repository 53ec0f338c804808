"""The served dashboard in headless Chromium: the whole flow a user takes, with a screenshot of each step."""

from __future__ import annotations

import os
import shutil

import anndata as ad

from tests.conftest import PBMC, REPO, TEST_OUTPUT
from tests.serving import browser_page, make_serve

SHOTS = TEST_OUTPUT / "dashboard"


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _wait_done(page, model_text: str, count: int, timeout_ms: int = 300_000) -> None:
    """Wait until the history lists ``count`` finished runs whose model contains ``model_text``."""
    rows = page.locator(".run-history .tabulator-row").filter(has_text=model_text).filter(has_text="done")
    rows.nth(count - 1).wait_for(timeout=timeout_ms)


def test_the_whole_flow_in_a_browser(tmp_path):
    with make_serve(tmp_path, {"HELICAL_PLATFORM_WORKERS": "2"}) as server, \
            browser_page({"width": 1500, "height": 3200}) as page:
        page.goto(server.url + "/")
        page.locator(".model-picker select").wait_for(timeout=120_000)
        assert page.locator(".application-picker select").input_value() == "Cell type annotation"
        _shot(page, "1-opened")

        page.locator(".upload input[type=file]").set_input_files(str(PBMC))
        report = page.locator(".check-report")
        report.get_by_text("599 cells").wait_for(timeout=120_000)
        report.get_by_text("raw counts in").wait_for(timeout=10_000)  # shadow DOM: read through locators
        report.get_by_text("celltype").first.wait_for(timeout=10_000)
        _shot(page, "2-checked")

        assert page.locator(".label-picker select").input_value() == "celltype"
        page.locator(".run-button button").click()  # the baseline, in evaluation mode
        _wait_done(page, "Baseline", 1)
        page.locator(".umap-plot canvas").first.wait_for(timeout=60_000)
        page.locator(".umap-caption").get_by_text("of all 599 cells").wait_for(timeout=30_000)  # how it was made
        page.locator(".confusion-matrix canvas").first.wait_for(timeout=60_000)
        _shot(page, "3-baseline-done")

        gf = page.locator(".model-picker select")
        gf.select_option(label="Geneformer — generated, untrained")
        page.locator(".model-card").get_by_text("Generated, untrained weights").wait_for(timeout=30_000)
        page.locator(".run-button button").click()
        page.locator(".run-progress-text").get_by_text("Geneformer").first.wait_for(timeout=30_000)
        _shot(page, "4-geneformer-running")
        _wait_done(page, "Geneformer", 1)
        # the results list learns of a finished run at the next poll: wait until it holds both runs
        page.locator(".result-run-picker select option").nth(2).wait_for(state="attached", timeout=60_000)
        page.locator(".result-run-picker select").select_option(index=1)  # newest finished run first
        page.locator(".untrained-banner").wait_for(timeout=60_000)
        page.locator(".compare-picker select").select_option(index=2)
        page.locator(".compare-plot canvas").first.wait_for(timeout=60_000)
        page.locator(".disagreement").wait_for(timeout=30_000)
        _shot(page, "5-compare")

        page.locator(".result-run-picker select").select_option(index=2)  # the baseline again
        page.locator(".compare-picker select").select_option(index=1)
        page.locator(".confusion-matrix canvas").first.wait_for(timeout=60_000)
        with page.expect_download(timeout=120_000) as info:
            page.locator("a.download-h5ad").click()
        path = tmp_path / "downloaded.h5ad"
        info.value.save_as(path)
        annotated = ad.read_h5ad(path)
        assert {"predicted_label", "prediction_confidence", "prediction_assigned"} <= set(annotated.obs.columns)
        assert annotated.obsm["X_umap"].shape == (599, 2)
        _shot(page, "6-final")
        if os.environ.get("HELICAL_PLATFORM_UPDATE_DOCS") == "1":
            (REPO / "docs" / "images").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(SHOTS / "6-final.png", REPO / "docs" / "images" / "dashboard.png")
