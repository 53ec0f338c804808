"""The served dashboard in headless Chromium: the whole flow a user takes, with a screenshot of each step.

One served instance for the module: the whole flow first, then a kNN run with majority voting on the same server,
then a run saved as an annotator and used instead of a reference.
"""

from __future__ import annotations

import os
import shutil

import anndata as ad
import pytest
import requests

from tests.conftest import PBMC, REPO, TEST_OUTPUT
from tests.serving import browser_page, make_serve, wait_until

SHOTS = TEST_OUTPUT / "dashboard"


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _wait_done(page, model_text: str, count: int, timeout_ms: int = 300_000) -> None:
    """Wait until the history lists ``count`` finished runs whose model contains ``model_text``."""
    rows = page.locator(".run-history .tabulator-row").filter(has_text=model_text).filter(has_text="done")
    rows.nth(count - 1).wait_for(timeout=timeout_ms)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with make_serve(tmp_path_factory.mktemp("dashboard"), {"HELICAL_PLATFORM_WORKERS": "2"}) as s:
        yield s


def _run_ids(server) -> set[str]:
    return {r["run_id"] for r in requests.get(server.url + "/api/runs", timeout=60).json()}


def _finished(server, run_id: str) -> dict:
    """The run as the API lists it, once it has finished (fails if it takes more than 5 minutes)."""
    def done():
        run = next(r for r in requests.get(server.url + "/api/runs", timeout=60).json() if r["run_id"] == run_id)
        return run if run["status"] in ("done", "failed", "cancelled") else None

    return wait_until(done, 300, f"run {run_id}", interval=1)


def _run_from_page(page, server) -> str:
    """Click Run and return the id of the run it submitted."""
    before = _run_ids(server)
    page.locator(".run-button button").click()
    return wait_until(lambda: next(iter(_run_ids(server) - before), None), 60, "the run to be submitted")


def _show_result(page, run_id: str) -> None:
    option = page.locator(".result-run-picker select option").filter(has_text=run_id[:8])
    option.wait_for(state="attached", timeout=60_000)  # offered at the next poll
    page.locator(".result-run-picker select").select_option(label=option.text_content())


def test_the_whole_flow_in_a_browser(server, tmp_path):
    with browser_page({"width": 1500, "height": 3200}) as page:
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


def test_a_knn_run_with_majority_voting_shows_its_calibration_and_consensus(server):
    """At a laptop's width: the head picker, k and the voting toggle reach the run; the results offer the
    reference fit and the consensus as colours, the per cell | majority voting switch and a reliability diagram."""
    with browser_page({"width": 1366, "height": 2600}) as page:
        page.goto(server.url + "/")
        page.locator(".model-picker select").wait_for(timeout=120_000)
        page.locator(".upload input[type=file]").set_input_files(str(PBMC))
        page.locator(".check-report").get_by_text("599 cells").wait_for(timeout=120_000)
        assert page.locator(".label-picker select").input_value() == "celltype"  # evaluation mode on its split

        assert not page.locator(".k-input input").is_visible()  # k belongs to the kNN head
        page.locator(".head-picker select").select_option(label="kNN reference mapping")
        page.locator(".k-input input").wait_for(timeout=30_000)  # blank: automatic
        page.locator(".majority-voting input[type=checkbox]").check()
        for control in (".run-button button", ".majority-voting", ".k-input input"):
            box = page.locator(control).bounding_box()
            assert box["x"] + box["width"] <= 1366, control  # the run panel fits a laptop's screen
        run_id = _run_from_page(page, server)
        run = _finished(server, run_id)
        assert run["status"] == "done", run["error"]
        assert run["parameters"]["head"]["kind"] == "knn" and run["parameters"]["head"]["k"] >= 1
        assert run["parameters"]["majority_voting"] is True

        _show_result(page, run_id)
        page.locator(".reliability-diagram canvas").first.wait_for(timeout=60_000)
        page.locator(".reliability-caption").get_by_text("ECE").first.wait_for(timeout=30_000)
        page.locator(".metrics").get_by_text("Head: kNN reference mapping").wait_for(timeout=30_000)
        colors = page.locator(".color-by select")
        offered = colors.locator("option").all_text_contents()
        assert {"reference fit", "majority voting", "over-clustering"} <= {o.strip() for o in offered}, offered
        colors.select_option(label="reference fit")
        page.locator(".umap-plot canvas").first.wait_for(timeout=60_000)
        page.locator(".label-source").get_by_text("majority voting", exact=True).click()
        page.locator(".metrics").get_by_text("Majority voting over").wait_for(timeout=30_000)
        wait_until(lambda: colors.input_value() == "majority voting", 30, "the UMAP to colour by the consensus")
        page.locator(".confusion-matrix canvas").first.wait_for(timeout=60_000)
        _shot(page, "7-knn-majority-voting")


def test_a_run_saved_as_an_annotator_labels_the_query_without_a_reference(server):
    """At a laptop's width: a run with the file as its own reference is saved from its results as an annotator (the
    suggested Cell Ontology terms accepted), is listed with the saved annotators, and labels the query in a run with
    no reference; that run names the annotator and offers its labels' coarse cell classes."""
    name = "PBMC baseline (browser)"
    with browser_page({"width": 1366, "height": 3200}) as page:
        page.goto(server.url + "/")
        page.locator(".model-picker select").wait_for(timeout=120_000)
        page.locator(".upload input[type=file]").set_input_files(str(PBMC))
        page.locator(".check-report").get_by_text("599 cells").wait_for(timeout=120_000)
        page.locator(".reference-picker select").select_option(index=1)  # the file as its own reference
        reference_run = _run_from_page(page, server)
        run = _finished(server, reference_run)
        assert run["status"] == "done", run["error"]

        _show_result(page, reference_run)
        page.get_by_text("Save this run's head as an annotator").click()
        ontology = page.locator(".ontology-table")
        ontology.get_by_text("CL:0001054").wait_for(timeout=30_000)  # CD14 Monocytes, as suggested
        page.locator(".annotator-name input").fill(name)
        page.locator(".annotator-author input").fill("Ada")
        page.locator(".save-annotator-button button").click()
        page.locator(".save-annotator-message").get_by_text("mapped to the Cell Ontology").wait_for(timeout=30_000)
        page.locator(".save-annotator").screenshot(path=str(SHOTS / "8-save-as-annotator.png"))
        page.locator(".annotators-table").get_by_text(name, exact=True).wait_for(timeout=30_000)
        saved = next(a for a in requests.get(server.url + "/api/annotators", timeout=60).json() if a["name"] == name)
        assert saved["author"] == "Ada" and saved["ontology"]["CD14 Monocytes"] == "CL:0001054"

        page.locator(".labels-from").get_by_text("saved annotator", exact=True).click()
        picker = page.locator(".annotator-picker select")
        picker.wait_for(timeout=30_000)
        label = next(o for o in picker.locator("option").all_text_contents() if o.startswith(name))
        picker.select_option(label=label)
        assert not page.locator(".reference-picker select").is_visible()
        assert not page.locator(".head-picker select").is_visible()
        page.locator(".annotator-note").get_by_text("held-out macro-F1").wait_for(timeout=30_000)
        for control in (".run-button", ".annotator-picker", ".truth-picker"):
            box = page.locator(control).bounding_box()
            assert box["x"] + box["width"] <= 1366, control  # the run panel still fits a laptop's screen
        annotated = _run_from_page(page, server)
        run = _finished(server, annotated)
        assert run["status"] == "done", run["error"]
        assert run["parameters"]["annotator"] == {"id": saved["annotator_id"], "name": name}
        results = requests.get(server.url + f"/api/results/{annotated}", params={"limit": 5}, timeout=60).json()
        assert results["cells"]["total"] == 599 and results["provenance"]["inputs"]["reference"] is None
        assert "predicted_cell_class" in results["cells"]["items"][0]

        _show_result(page, annotated)
        page.locator(".metrics").get_by_text(f"Annotator {name}").wait_for(timeout=30_000)
        page.locator(".label-level").get_by_text("cell class", exact=True).click()
        page.locator(".metrics").get_by_text("Cell class (the Cell Ontology").wait_for(timeout=30_000)
        wait_until(lambda: page.locator(".color-by select").input_value() == "predicted cell class", 30,
                   "the UMAP to colour by cell class")
        page.locator(".confusion-matrix canvas").first.wait_for(timeout=60_000)
        page.locator(".umap-plot canvas").first.wait_for(timeout=60_000)
        _shot(page, "9-annotator-run")
        page.locator(".annotators-table").get_by_text(name, exact=True).click()
        page.locator(".annotator-details").get_by_text("CL:0001054").wait_for(timeout=30_000)
        page.locator(".annotators").screenshot(path=str(SHOTS / "10-annotators.png"))
