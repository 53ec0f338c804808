"""Stored XSS: a lab member's hostile file name, column name, label values and cell ids, through every view.

The shared token server (`token_server`: `make serve`, API token set). The browser test uploads the hostile file in
the dashboard, runs the baseline twice (evaluation split, then with the file as its own reference), and walks
every view; no payload may run (its ``window`` flag stays unset, no element it would create exists anywhere,
shadow roots included, and the page reports no blocked script) and each string must be shown as typed. The
REST test sends the same strings through the API and reads them back as the same JSON strings.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import pandas as pd
import pytest
import requests

from tests.api_client import api, settle, upload, wait_run
from tests.conftest import PBMC
from tests.payloads import FILE_NAME, LABEL_COLUMN, PAYLOADS, PROBE_SELECTOR, SCRIPT_FLAGS
from tests.reliability import record
from tests.serving import browser_page

VIEWS = ["check report", "stored-dataset picker", "reference picker", "label and truth pickers", "run history",
         "run message and progress", "metrics", "confusion matrix", "per-class F1 bars", "UMAP legend",
         "UMAP hover", "cell table", "comparison", "downloads", "save-as-annotator form (ontology table, message)",
         "annotators table and details", "annotator picker and note"]
# an annotator's name is checked by the platform (letters, digits, a few signs); its description and author are free
ANNOTATOR_NAME = "Lab hostile v1"
DESCRIPTION = f"{PAYLOADS[1]} {PAYLOADS[6]} {PAYLOADS[9]}"
AUTHOR = PAYLOADS[5]

# the page's own violations are measured in app/security_headers.py; anything here is a payload trying to run
WATCH_CSP = """window.__csp = [];
document.addEventListener('securitypolicyviolation', e => window.__csp.push(
  [e.violatedDirective, e.sample, (e.target && e.target.outerHTML || '').slice(0, 120)]), true);"""

DEEP_QUERY = """(sel) => { const out = [];
  const walk = root => { root.querySelectorAll(sel).forEach(e => out.push(e.outerHTML.slice(0, 160)));
                         root.querySelectorAll('*').forEach(e => { if (e.shadowRoot) walk(e.shadowRoot); }); };
  walk(document); return out; }"""

BOKEH_TEXT = """() => { const out = [];
  for (const doc of Bokeh.documents) for (const m of doc.all_models) {
    if (m.factors) out.push(...m.factors.flat(2).map(String));
    if (m.label && m.label.value !== undefined) out.push(String(m.label.value));
    if (m.title && m.title.text !== undefined) out.push(String(m.title.text)); }
  return out; }"""


HOVER_LABELS = """() => { const out = [];
  for (const doc of Bokeh.documents) for (const m of doc.all_models) {
    const a = m.args; if (a == null) continue;
    const labels = a instanceof Map ? a.get('labels') : a.labels;
    if (Array.isArray(labels)) out.push(...labels.map(String)); }
  return out; }"""


def hostile_label(celltype: str, i: int) -> str:
    return f"{PAYLOADS[i % len(PAYLOADS)]} {celltype}"


@pytest.fixture(scope="module")
def hostile_file(tmp_path_factory) -> Path:
    """The shipped PBMCs, with every user-controlled string carrying payloads (the counts are unchanged)."""
    adata = ad.read_h5ad(PBMC)
    kinds = sorted(adata.obs["celltype"].astype(str).unique())
    mapping = {k: hostile_label(k, i) for i, k in enumerate(kinds)}
    obs = pd.DataFrame(index=[f"{PAYLOADS[i % len(PAYLOADS)]} #{i}" for i in range(adata.n_obs)])
    obs[LABEL_COLUMN] = pd.Categorical(adata.obs["celltype"].astype(str).map(mapping).to_numpy())
    obs[PAYLOADS[2] + " score"] = range(adata.n_obs)  # a numeric column whose name is a payload
    adata.obs = obs
    folder = tmp_path_factory.mktemp("hostile")
    path = folder / FILE_NAME
    adata.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def server(token_server):
    return settle(token_server)  # the browser test counts the finished runs before its own: none may be in flight


def _labels(adata_path: Path) -> list[str]:
    return sorted(ad.read_h5ad(adata_path, backed="r").obs[LABEL_COLUMN].cat.categories)


def test_hostile_text_through_the_rest_api_comes_back_as_the_same_json_strings(server, hostile_file, request):
    r = upload(server, hostile_file, name=FILE_NAME)
    assert r.status_code == 201, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    body = r.json()
    assert body["file_name"] == FILE_NAME
    classes = body["report"]["label_columns"][LABEL_COLUMN]
    assert sorted(classes) == _labels(hostile_file)
    listed = {d["dataset_id"]: d for d in api(server, "GET", "/api/datasets").json()}
    assert listed[body["dataset_id"]]["file_name"] == FILE_NAME
    run = api(server, "POST", "/api/submit", json={"application": "cell-type-annotation", "model": "baseline",
                                                   "dataset": body["dataset_id"], "label_column": LABEL_COLUMN})
    assert run.status_code == 202, run.text
    assert wait_run(server, run.json()["run_id"])["status"] == "done"
    results = api(server, "GET", f"/api/results/{run.json()['run_id']}", params={"limit": 600}).json()
    cells = results["cells"]["items"]
    assert {f"{p} #{i}" for i, p in enumerate(PAYLOADS)} <= {c["cell_id"] for c in cells}
    assert {c["predicted_label"] for c in cells} <= set(classes) | {"unassigned"}
    assert set(results["classes"]) == set(classes)
    download = api(server, "GET", f"/api/download/{run.json()['run_id']}", params={"format": "csv"})
    assert download.status_code == 200
    assert download.headers["Content-Disposition"].startswith('attachment; filename="predictions-')
    assert download.headers["X-Content-Type-Options"] == "nosniff"
    # a hostile id in the URL is refused in JSON, never echoed as a page
    bad = api(server, "GET", "/api/status/%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E")
    assert bad.status_code in (400, 404) and bad.headers["Content-Type"].startswith("application/json")
    record("security", f"stored XSS through the API: {len(PAYLOADS)} payloads in label values and cell ids, "
           "plus a hostile file name and column names", "upload, datasets, check report, submit, results, CSV",
           "every string came back as the same JSON string; every answer application/json with nosniff; "
           "downloads are attachments", "held", request.node.nodeid)


def test_no_payload_runs_in_any_view_and_each_shows_as_typed(server, hostile_file, request):
    labels = _labels(hostile_file)
    with browser_page({"width": 1500, "height": 3000}) as page:
        page.add_init_script(WATCH_CSP)
        page.goto(server.url + "/")
        page.locator(".model-picker select").wait_for(timeout=120_000)

        page.locator(".upload input[type=file]").set_input_files(str(hostile_file))
        report = page.locator(".check-report")
        report.get_by_text("599 cells").wait_for(timeout=120_000)
        report.get_by_text(FILE_NAME).wait_for(timeout=10_000)  # the heading: the name exactly as typed
        report.get_by_text(LABEL_COLUMN, exact=False).first.wait_for(timeout=10_000)
        largest = next(label for label in labels if label.endswith(" CD4 T"))  # the report lists the largest
        report.get_by_text(largest, exact=False).first.wait_for(timeout=10_000)
        page.locator(".upload-status").get_by_text(FILE_NAME, exact=False).wait_for(timeout=10_000)
        assert page.locator(".label-picker select").input_value() == LABEL_COLUMN

        rows = page.locator(".run-history .tabulator-row").filter(has_text="done")
        before = rows.count()  # the REST test's run, when it ran first on this server
        page.locator(".run-button button").click()  # the baseline on a 70/30 split of the file
        rows.nth(before).wait_for(timeout=300_000)
        page.locator(".run-history").get_by_text(FILE_NAME).first.wait_for(timeout=10_000)

        reference = page.locator(".reference-picker select")
        options = reference.locator("option").all_text_contents()
        assert any(o.startswith(FILE_NAME) for o in options), options
        reference.select_option(index=1)
        page.locator(".run-button button").click()  # the file as its own reference, truth column set
        rows.nth(before + 1).wait_for(timeout=300_000)

        # the results list learns of a finished run at the next poll: wait until it holds every finished run, then
        # show the newest (the run with a reference)
        page.locator(".result-run-picker select option").nth(before + 2).wait_for(state="attached", timeout=60_000)
        page.locator(".result-run-picker select").select_option(index=1)
        page.locator(".umap-plot canvas").first.wait_for(timeout=60_000)
        page.locator(".confusion-matrix canvas").first.wait_for(timeout=60_000)
        page.locator(".f1-bars canvas").first.wait_for(timeout=60_000)
        table = page.locator(".cell-table")
        table.get_by_text(f"{PAYLOADS[0]} #0", exact=True).wait_for(timeout=30_000)
        first_label = str(ad.read_h5ad(hostile_file, backed="r").obs[LABEL_COLUMN].iloc[0])
        table.get_by_text(first_label, exact=True).first.wait_for(timeout=30_000)  # cell #0's true label

        drawn = set(page.evaluate(BOKEH_TEXT))  # canvas text (axes, legend): handed to Bokeh as plain strings
        assert set(labels) <= drawn, sorted(set(labels) - drawn)

        # the hover's tooltip is written in the browser from the image's pixels: the labels travel as data (the
        # formatter's arguments), and Bokeh escapes what a formatter returns before it becomes the tooltip
        hover_labels = set(page.evaluate(HOVER_LABELS))
        assert set(labels) <= hover_labels, sorted(hover_labels)[:20]

        _save_and_reuse_an_annotator(page, labels)

        page.locator(".compare-picker select").select_option(index=2)
        page.locator(".compare-plot canvas").first.wait_for(timeout=60_000)
        page.locator(".disagreement").wait_for(timeout=30_000)
        href = page.locator("a.download-csv").get_attribute("href")
        got = requests.get(server.url + href, timeout=60)
        assert got.status_code == 200 and got.headers["Content-Disposition"].startswith("attachment;")

        page.get_by_text("Stored datasets", exact=True).first.click()
        page.locator(".dataset-picker select").wait_for(timeout=30_000)
        picker_options = page.locator(".dataset-picker select option").all_text_contents()
        assert any(o.startswith(FILE_NAME) for o in picker_options), picker_options

        ran = page.evaluate(f"() => {SCRIPT_FLAGS!r}.filter(f => window[f] !== undefined)")
        assert ran == [], ran
        made = page.evaluate(DEEP_QUERY, PROBE_SELECTOR)
        assert made == [], made
        blocked = [v for v in page.evaluate("window.__csp") if v[0].startswith("script-src")]
        assert blocked == [], blocked
    record("security", f"stored XSS in the dashboard: {len(PAYLOADS) + 2} hostile strings (file name, column "
           f"names, {len(PAYLOADS)} label-value and cell-id payloads; an annotator's description and author) × "
           f"{len(VIEWS)} views", "headless Chromium: " + ", ".join(VIEWS),
           "no payload ran (window flags unset), no element created (shadow roots searched), no script blocked "
           "by the CSP; file name, column name, labels, cell ids and the annotator's description and author shown "
           "as typed", "held", request.node.nodeid)


def _save_and_reuse_an_annotator(page, labels: list[str]) -> None:
    """The run shown (the file as its own reference) saved as an annotator: its hostile classes in the ontology
    table, a hostile name refused in plain words, a hostile description and author shown as typed in the
    annotators table, its details and the run panel's annotator picker."""
    page.get_by_text("Save this run's head as an annotator").click()
    page.locator(".ontology-table").get_by_text(labels[0], exact=True).wait_for(timeout=30_000)
    name = page.locator(".annotator-name input")
    name.fill(PAYLOADS[0])
    page.locator(".save-annotator-button button").click()
    message = page.locator(".save-annotator-message")
    message.get_by_text("An annotator's name is").wait_for(timeout=30_000)
    name.fill(ANNOTATOR_NAME)
    page.locator(".annotator-author input").fill(AUTHOR)
    page.locator(".annotator-description input").fill(DESCRIPTION)
    page.locator(".save-annotator-button button").click()
    message.get_by_text("mapped to the Cell Ontology", exact=False).wait_for(timeout=30_000)

    table = page.locator(".annotators-table")
    table.get_by_text(AUTHOR, exact=True).wait_for(timeout=30_000)
    table.get_by_text(FILE_NAME, exact=True).first.wait_for(timeout=10_000)  # the reference it learnt from
    table.get_by_text(ANNOTATOR_NAME, exact=True).click()
    details = page.locator(".annotator-details")
    details.get_by_text(DESCRIPTION, exact=False).wait_for(timeout=30_000)
    details.get_by_text(f"by {AUTHOR}", exact=False).wait_for(timeout=10_000)
    for label in labels[:3]:
        details.get_by_text(label, exact=False).first.wait_for(timeout=10_000)

    page.locator(".labels-from").get_by_text("saved annotator", exact=True).click()
    picker = page.locator(".annotator-picker select")
    picker.wait_for(timeout=30_000)
    label = next(o for o in picker.locator("option").all_text_contents() if o.startswith(ANNOTATOR_NAME))
    picker.select_option(label=label)
    note = page.locator(".annotator-note")
    note.get_by_text(FILE_NAME, exact=False).wait_for(timeout=30_000)
    note.get_by_text(AUTHOR, exact=False).wait_for(timeout=10_000)
    page.locator(".labels-from").get_by_text("reference dataset", exact=True).click()


def test_pages_carry_the_security_headers(server):
    page = requests.get(server.url + "/", timeout=60)
    policy = page.headers["Content-Security-Policy"]
    scripts = policy.split("script-src")[1].split(";")[0]
    assert "'self' 'nonce-" in scripts and "'unsafe-inline'" not in scripts
    nonce = policy.split("'nonce-")[1].split("'")[0]
    assert f'nonce="{nonce}"' in page.text and page.headers["X-Content-Type-Options"] == "nosniff"
    assert requests.get(server.url + "/", timeout=60).headers["Content-Security-Policy"] != policy  # per page
    models = requests.get(server.url + "/api/openapi.json", timeout=60)
    assert models.headers["Content-Security-Policy"].startswith("default-src 'none'")
