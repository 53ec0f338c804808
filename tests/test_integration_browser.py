"""Embeddings and batch integration in headless Chromium, on the served dashboard at a laptop's size (1440×900):
a two-batch file uploaded, the application, batch and cell-type columns and two models picked, both runs followed
to the end and opened from the run history; their UMAPs and the scIB table show the runs' own numbers.

On the shared token server (``token_server``), with a file of its own and only its own runs counted;
``HELICAL_PLATFORM_UPDATE_DOCS=1`` also writes docs/images/integration.png.
"""

from __future__ import annotations

import os
import re
import shutil
from types import SimpleNamespace

import pytest

from tests.api_client import api, own_copy, settle
from tests.conftest import PBMC, REPO, TEST_OUTPUT
from tests.multibatch import write_multibatch
from tests.serving import browser_page, wait_until

SHOTS = TEST_OUTPUT / "integration"
LAPTOP = {"width": 1440, "height": 900}
APPLICATION = "Embeddings and batch integration"
BEST = "★"


@pytest.fixture(scope="module")
def server(token_server, tmp_path_factory):
    """The shared token server, quiet, with this module's own two-batch file (bytes no other module uploads: the
    dashboard must meet it as new, under its own name)."""
    tmp = tmp_path_factory.mktemp("integration")
    data = own_copy(write_multibatch(PBMC, tmp / "multibatch.h5ad"), tmp / "two-labs.h5ad", "integration-browser")
    settle(token_server)
    return SimpleNamespace(url=token_server.url, data=data,
                           before={r["run_id"] for r in _integration_runs(token_server)})


def _shot(page, name: str, locator=None) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    if locator is None:
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    else:
        locator.screenshot(path=str(SHOTS / f"{name}.png"))


def _integration_runs(server) -> list[dict]:
    """The integration runs this module submitted (the shared server holds other modules' too)."""
    return [r for r in api(server, "GET", "/api/runs").json()
            if r["application"] == "embedding-integration" and r["run_id"] not in getattr(server, "before", ())]


def _fits(page, *selectors: str) -> None:
    """Nothing reaches past the laptop's width: no sideways scrolling."""
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= LAPTOP["width"], f"the page is {width} px wide"
    for selector in selectors:
        for box in (page.locator(selector).nth(i).bounding_box() for i in range(page.locator(selector).count())):
            if box is not None:
                assert box["x"] + box["width"] <= LAPTOP["width"], (selector, box)


def test_two_models_integrated_side_by_side_in_a_browser(server):
    with browser_page(LAPTOP) as page:
        page.goto(server.url + "/")
        page.locator(".model-picker select").wait_for(timeout=120_000)
        page.locator(".application-picker select").select_option(label=APPLICATION)
        page.locator(".integration-form").wait_for(timeout=30_000)
        assert not page.locator(".run-button button").is_visible()  # the annotation form stands aside

        page.locator(".upload input[type=file]").set_input_files(str(server.data))
        page.locator(".check-report").get_by_text("599 cells").wait_for(timeout=120_000)
        page.locator(".integration-dataset").get_by_text("two-labs.h5ad").wait_for(timeout=30_000)
        wait_until(lambda: page.locator(".batch-picker select").input_value() == "batch", 30, "the batch column")
        assert page.locator(".cell-type-picker select").input_value() == "celltype"
        models = page.locator(".integration-models")
        checked = [models.get_by_role("checkbox", name=re.compile(f"^{name}")).is_checked()
                   for name in ("Baseline", "Harmony", "Geneformer", "scGPT")]
        assert checked == [True, True, False, False]  # the default: the baseline and Harmony
        _fits(page, ".integration-form", ".integration-run-button", ".integration-models", ".cell-type-picker")
        _shot(page, "1-form")

        page.locator(".integration-run-button button").click()
        page.locator(".integration-message").get_by_text("Submitted 2 runs").wait_for(timeout=60_000)
        runs = wait_until(lambda: (lambda rs: rs if len(rs) == 2 else None)(_integration_runs(server)), 60,
                          "the two runs to be recorded")
        assert len({r["group_id"] for r in runs}) == 1 and {r["model"] for r in runs} == {"baseline", "harmony"}
        page.locator(".run-progress-text").get_by_text("Harmony").first.wait_for(timeout=30_000)

        def finished() -> list[dict] | None:
            now = _integration_runs(server)
            return now if all(r["status"] in ("done", "failed", "cancelled") for r in now) else None

        runs = wait_until(finished, 600, "both runs to finish", interval=1)
        assert [r["status"] for r in runs] == ["done", "done"], [r["error"] for r in runs]
        history = page.locator(".run-history .tabulator-row")
        rows = {r["model"]: history.filter(has_text=r["run_id"][:8]).filter(has_text="done") for r in runs}
        for row in rows.values():
            row.wait_for(timeout=60_000)  # the history learns of them at the next poll
        rows["harmony"].locator('.tabulator-cell[tabulator-field="model"]').click()  # opened from the run history

        results = page.locator(".integration-results")
        results.wait_for(timeout=60_000)
        harmony_id = next(r["run_id"] for r in runs if r["model"] == "harmony")
        picked = page.locator(".result-run-picker select")
        wait_until(lambda: harmony_id[:8] in picked.locator("option:checked").text_content(), 30,
                   "the run clicked in the history to be the one shown")
        page.locator(".integration-umap canvas").nth(3).wait_for(timeout=120_000)  # 2 models × batch, cell type
        page.locator(".integration-heatmap canvas").first.wait_for(timeout=60_000)
        assert not page.locator(".confusion-matrix").is_visible()

        table = page.locator(".integration-metrics-table")
        names = {"baseline": "Baseline", "harmony": "Harmony"}
        scores = {}
        for run in runs:
            metrics = api(server, "GET", f"/api/results/{run['run_id']}", params={"limit": 0}).json()["metrics"]
            values = {**metrics["metrics"], **metrics["aggregates"]}
            assert set(metrics["metrics"]) == {"Isolated labels", "KMeans NMI", "KMeans ARI", "Silhouette label",
                                               "cLISI", "BRAS", "iLISI", "KBET", "Graph connectivity",
                                               "PCR comparison"}
            row = table.locator(".tabulator-row").filter(has_text=names[run["model"]])
            for metric, value in values.items():
                cell = row.locator(f'.tabulator-cell[tabulator-field="{metric}"]')
                text = cell.text_content().strip()
                assert text.removesuffix(BEST).strip() == f"{value:.3f}", (run["model"], metric, text)
                scores[(run["model"], metric)] = (value, text.endswith(BEST))
        for metric in {m for _, m in scores}:
            top = max(scores[(model, metric)][0] for model in names)
            for model in names:  # the starred one is the best (ties both)
                value, starred = scores[(model, metric)]
                assert starred == (value == top), (model, metric, value, top)
        _fits(page, ".integration-results", ".integration-umap", ".integration-metrics-table",
              ".integration-heatmap")
        _shot(page, "2-results")
        # the page scrolls inside its main area: a screen tall enough to hold the whole view, for its picture
        page.set_viewport_size({"width": LAPTOP["width"], "height": 3000})
        results.scroll_into_view_if_needed()
        page.locator(".integration-umap canvas").nth(3).wait_for(timeout=60_000)
        _shot(page, "integration", results)
        if os.environ.get("HELICAL_PLATFORM_UPDATE_DOCS") == "1":
            (REPO / "docs" / "images").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(SHOTS / "integration.png", REPO / "docs" / "images" / "integration.png")
