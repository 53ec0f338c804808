"""The page fits the screen, and everything it loads comes from the server itself.

The shared token server (``token_server``) with one finished baseline run of this module (submitted through the
REST API: this test is about the page, not the form). At 1280×800, 1440×900 and 1920×1080 the page showing that
run's results is measured in headless Chromium: no section (Panel's layouts and panes, tables' bodies, cells and
column titles, shadow roots included) is wider than its box, the page does not scroll sideways, and at 1440×900
and wider the run's headline (scores, confusion matrix, UMAP) lies whole above the fold. Every request the page
makes goes to the server (a lab server is often offline). Screenshots and the numbers measured go to
test-output/page-fit/.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest

from tests.api_client import wait_run
from tests.conftest import PBMC, TEST_OUTPUT
from tests.serving import browser_page

SHOTS = TEST_OUTPUT / "page-fit"
VIEWPORTS = [(1280, 800), (1440, 900), (1920, 1080)]
HEADLINE = (".metrics", ".confusion-matrix", ".umap-plot")
SLACK = 1  # px: sub-pixel rounding of scroll and client widths

# Every element of the page, through shadow roots, that is one of Panel's sections (layouts, panes, widgets'
# roots) or a part of a table that can overflow; each one that is laid out and whose content is wider than its
# box is reported. Bokeh's own canvas layers (clipped by design) and sliders' handles are not sections.
OVERFLOWS = """
([slack]) => {
  const SECTION = /^(bk-panel-models-|bk-(Row|Column|GridBox|Tabs|Figure)$|tabulator-(tableholder|cell|col-title)$)/;
  const found = [];
  const visit = (root) => {
    for (const el of root.querySelectorAll('*')) {
      if (el.shadowRoot) visit(el.shadowRoot);
      const classes = typeof el.className === 'string' ? el.className.split(/\\s+/) : [];
      if (!classes.some(c => SECTION.test(c)) || el.getClientRects().length === 0) continue;
      const rect = el.getBoundingClientRect();
      if (rect.width < 4) continue;  // a hidden column's 1 px stub
      const what = classes.filter(c => c).join('.') + ' "' + (el.textContent || '').trim().slice(0, 40) + '"';
      if (el.scrollWidth > el.clientWidth + slack) {
        found.push({what, scroll_width: el.scrollWidth, client_width: el.clientWidth});
      } else if (rect.right > window.innerWidth + slack) {
        found.push({what, right: Math.round(rect.right), viewport: window.innerWidth});
      }
    }
  };
  visit(document);
  return found;
}
"""
# the element that scrolls the page's main area (the template's), to screenshot the whole of it
MAIN_HEIGHT = """
() => Math.max(...[...document.querySelectorAll('*')].filter(e => e.scrollHeight > e.clientHeight + 1 &&
  ['auto', 'scroll'].includes(getComputedStyle(e).overflowY)).map(e => e.scrollHeight + e.getBoundingClientRect().top),
  document.documentElement.scrollHeight)
"""


@pytest.fixture(scope="module")
def server(token_server):
    """The shared served dashboard (``token_server``) with this module's finished baseline run on the shipped PBMC
    subset (a 70/30 split of its own labels, so the results have metrics, a confusion matrix and a UMAP), submitted
    last on a quiet server: the newest run, which a new page shows."""
    from tests.api_client import api, settle, upload

    settle(token_server)
    dataset = upload(token_server, PBMC).json()["dataset_id"]
    submitted = api(token_server, "POST", "/api/submit", json={
        "application": "cell-type-annotation", "model": "baseline", "dataset": dataset,
        "label_column": "celltype", "truth_column": "celltype", "options": {}})
    assert submitted.status_code == 202, submitted.text
    run_id = submitted.json()["run_id"]
    assert wait_run(token_server, run_id)["status"] == "done"
    return SimpleNamespace(url=token_server.url, run_id=run_id)


def _same_server(url: str, server) -> bool:
    """Whether a request goes to the server (blob: and data: URLs are made by the page itself)."""
    parts = urlsplit(url)
    if parts.scheme in ("blob", "data"):
        return True
    return parts.netloc == urlsplit(server.url).netloc


def test_the_page_fits_every_screen_and_loads_nothing_from_elsewhere(server):
    SHOTS.mkdir(parents=True, exist_ok=True)
    measured = {}
    for width, height in VIEWPORTS:
        size = f"{width}x{height}"
        with browser_page({"width": width, "height": height}) as page:
            requests = []
            page.on("request", lambda r, seen=requests: seen.append(r.url))
            page.goto(server.url + "/", timeout=120_000)
            picker = page.locator(".result-run-picker select")
            picker.wait_for(timeout=120_000)
            assert server.run_id[:8] in picker.locator("option:checked").text_content()  # the newest run, shown
            for selector in HEADLINE:
                page.locator(selector).first.wait_for(timeout=120_000)
            page.locator(".umap-plot canvas").first.wait_for(timeout=60_000)
            page.locator(".confusion-matrix canvas").first.wait_for(timeout=60_000)
            page.locator(".cell-table .tabulator-row").first.wait_for(timeout=60_000)
            page.locator(".catalog-models .tabulator-row").first.wait_for(timeout=60_000)
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(SHOTS / f"{size}.png"))
            boxes = {s: page.locator(s).first.bounding_box() for s in HEADLINE}
            overflows = page.evaluate(OVERFLOWS, [SLACK])
            page_width = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
            full = int(page.evaluate(MAIN_HEIGHT))
            page.set_viewport_size({"width": width, "height": full})
            page.screenshot(path=str(SHOTS / f"{size}-whole.png"))
            foreign = sorted({u for u in requests if not _same_server(u, server)})
        measured[size] = {"overflows": overflows, "page_width": page_width, "page_height": full,
                          "headline": {s: {"top": round(b["y"]), "bottom": round(b["y"] + b["height"])}
                                       for s, b in boxes.items()}, "foreign_requests": foreign}
        (SHOTS / "measured.json").write_text(json.dumps(measured, indent=1))

        assert foreign == [], f"{size}: the page asked other hosts for {foreign}"
        assert page_width[0] <= page_width[1], f"{size}: the page scrolls sideways ({page_width})"
        assert overflows == [], f"{size}: sections wider than their box: {json.dumps(overflows, indent=1)}"
        if width >= 1440:  # a laptop's screen and wider: the headline is seen whole without scrolling
            for selector, box in boxes.items():
                assert box["y"] >= 0 and box["y"] + box["height"] <= height, (size, selector, box)


# Every laid-out element, through shadow roots, with text of its own: its text colour against the first opaque
# background behind it (its own, or its ancestors', crossing shadow hosts), as WCAG's contrast ratio.
CONTRAST = """
() => {
  const rgba = (s) => (s.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const parent = (el) => el.parentElement || (el.getRootNode() && el.getRootNode().host) || null;
  const background = (el) => {
    for (let e = el; e; e = parent(e)) {
      const c = rgba(getComputedStyle(e).backgroundColor);
      if (c.length >= 3 && (c.length < 4 || c[3] > 0.5)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const found = [];
  const visit = (root) => {
    for (const el of root.querySelectorAll('*')) {
      if (el.shadowRoot) visit(el.shadowRoot);
      const own = [...el.childNodes].filter(n => n.nodeType === 3).map(n => n.textContent.trim()).join(' ');
      if (!own || el.getClientRects().length === 0) continue;
      const style = getComputedStyle(el);
      if (style.visibility === 'hidden' || Number(style.opacity) === 0) continue;
      const fg = rgba(style.color).slice(0, 3), bg = background(el);
      const [hi, lo] = [lum(fg), lum(bg)].sort((a, b) => b - a);
      const ratio = (hi + 0.05) / (lo + 0.05);
      found.push({text: own.slice(0, 40), tag: el.tagName.toLowerCase(), ratio: Math.round(ratio * 100) / 100,
                  color: style.color, background: `rgb(${bg.join(', ')})`});
    }
  };
  visit(document);
  return found;
}
"""


def test_the_dark_theme_is_readable(server):
    """Panel's dark theme (``?theme=dark``): every piece of text on the page showing a finished run stands out
    from what is behind it (WCAG's 3:1, the large-text and interface level), and the page is dark."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    with browser_page({"width": 1440, "height": 900}) as page:
        page.goto(server.url + "/?theme=dark", timeout=120_000)
        for selector in HEADLINE:
            page.locator(selector).first.wait_for(timeout=120_000)
        page.locator(".cell-table .tabulator-row").first.wait_for(timeout=60_000)
        page.locator(".catalog-models .tabulator-row").first.wait_for(timeout=60_000)
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(SHOTS / "dark-1440x900.png"))
        texts = page.evaluate(CONTRAST)
        body = page.evaluate("getComputedStyle(document.body).backgroundColor")
    (SHOTS / "dark-contrast.json").write_text(json.dumps(texts, indent=1))
    assert len(texts) > 50, texts  # the page's text was measured, not an empty page
    dark = [int(x) for x in body[body.find("(") + 1:body.find(")")].split(",")[:3]]
    assert sum(dark) < 3 * 80, f"the page is not dark: {body}"
    faint = [t for t in texts if t["ratio"] < 3.0]
    assert faint == [], f"text that does not stand out in the dark theme: {json.dumps(faint[:20], indent=1)}"
