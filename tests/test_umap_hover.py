"""The UMAP's hover tells the truth about the spot under the mouse, read in Chromium from a served page.

Spots of known cells at exact coordinates (so the number of cells drawn on each spot's pixels is known): the test
finds where Bokeh draws each spot, moves the mouse there in turn (and back) and reads the tooltip's text through
the shadow roots. Each must name that spot's count and labels, never "undefined" and never the previous spot's
values (HoloViews' server-side ``selector`` hover showed "undefined" first, then each position's answer one move
late). A click shows the clicked cell's details, answered by the server for that click.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pandas as pd
import panel as pn

from dashboards.plots import umap_plot
from dashboards.result_cells import UmapDetails
from tests.conftest import free_port
from tests.serving import browser_page, wait_until

# spot -> (x, y, {label: cells}); the last one holds two labels on one pixel
SPOTS = {"T": (0.0, 0.0, {"T cells": 7}), "B": (10.0, 0.0, {"B cells": 13}), "NK": (0.0, 10.0, {"NK cells": 5}),
         "mixed": (10.0, 10.0, {"T cells": 4, "Monocytes": 2})}
ORDER = ["T", "B", "NK", "mixed", "T", "mixed", "B"]
CORNERS = [(-5.0, -5.0), (15.0, 15.0)]  # one cell each, far from the spots: the spots lie inside the frame


def _cells() -> pd.DataFrame:
    rows = [(x, y, label) for x, y, counts in SPOTS.values() for label, n in counts.items() for _ in range(n)]
    rows += [(x, y, "Dendritic cells") for x, y in CORNERS]
    cells = pd.DataFrame(rows, columns=["umap_1", "umap_2", "predicted_label"])
    cells["cell_id"] = [f"cell-{i}" for i in range(len(cells))]
    cells["confidence"] = np.linspace(0.5, 0.99, len(cells))
    cells["reference_fit"] = np.linspace(0.01, 0.9, len(cells))
    return cells


@contextmanager
def _served(make: object) -> Iterator[str]:
    """``make()`` served by Panel in this process on a free port until the block ends."""
    port = free_port()
    server = pn.serve({"umap": make}, port=port, show=False, threaded=True, start=True)
    try:
        yield f"http://localhost:{port}/umap"
    finally:
        server.stop()


# the visible text of the elements with class ``name``, through shadow roots (Bokeh and Panel draw in them)
TEXT_JS = """(name) => {
  const texts = []
  const text = (node) => {
    if (node.nodeType === Node.TEXT_NODE) return node.textContent
    if (node.nodeType !== Node.ELEMENT_NODE || node.tagName === "STYLE" || node.tagName === "LINK") return ""
    const kids = [...(node.shadowRoot ? node.shadowRoot.childNodes : []), ...node.childNodes]
    return kids.map(text).join(" ")
  }
  const walk = (root) => {
    for (const el of root.querySelectorAll("*")) {
      if (el.shadowRoot) walk(el.shadowRoot)
      if (el.classList.contains(name) && el.getBoundingClientRect().width > 0
          && getComputedStyle(el).display !== "none" && getComputedStyle(el).visibility !== "hidden")
        texts.push(text(el).replace(/\\s+/g, " ").trim())
    }
  }
  walk(document)
  return texts.filter((t) => t.length > 0)
}"""


# the page position of data coordinates (x, y) on the first Bokeh plot that draws an image
POSITION_JS = """([x, y]) => {
  const plot = [...Bokeh.index.query((v) => v.model.type === "Figure" || v.model.type === "Plot")][0]
  if (!plot || !plot.frame) return null
  const box = plot.canvas_view.el.getBoundingClientRect()
  return [box.left + plot.frame.x_scale.compute(x), box.top + plot.frame.y_scale.compute(y)]
}"""


def _position(page, x: float, y: float) -> tuple[float, float]:  # noqa: ANN001 - a Playwright page
    return wait_until(lambda: page.evaluate(POSITION_JS, [x, y]), 60, "the plot to be laid out")


def _expected(spot: str) -> tuple[int, dict[str, int]]:
    counts = SPOTS[spot][2]
    return sum(counts.values()), counts


def _check_tooltip(text: str, spot: str) -> None:
    total, counts = _expected(spot)
    assert "undefined" not in text and "NaN" not in text, (spot, text)
    drawn = re.search(r"cells drawn here:?\s*(\d+)", text)
    assert drawn and int(drawn.group(1)) == total, (spot, text)
    named = dict((label, int(n)) for label, n in re.findall(r"([A-Za-z][A-Za-z ]*?):\s*(\d+)", text)
                 if label.strip() in {lab for s in SPOTS.values() for lab in s[2]})
    assert {k.strip(): v for k, v in named.items()} == counts, (spot, text)


def test_the_tooltip_names_the_count_and_labels_of_the_spot_under_the_mouse_each_time():
    cells = _cells()

    def make() -> pn.viewable.Viewable:
        return pn.pane.HoloViews(umap_plot(cells, width=420, height=420, title="hover"))

    with _served(make) as url, browser_page({"width": 1000, "height": 700}) as page:
        page.goto(url)
        page.wait_for_selector(".bk-Canvas, .bk-Figure", state="attached", timeout=60_000)
        seen = []
        for spot in ORDER:
            x, y = _position(page, *SPOTS[spot][:2])
            page.mouse.move(x, y, steps=4)
            texts = wait_until(lambda: page.evaluate(TEXT_JS, "bk-Tooltip"), 10, f"a tooltip at spot {spot}")
            seen.append((spot, texts))
            assert len(texts) == 1, seen
            _check_tooltip(texts[0], spot)


def test_a_click_shows_that_cells_details_from_the_server():
    cells = _cells()
    reads: list[int] = []

    def read(i: int) -> pd.DataFrame:
        reads.append(i)
        return cells.iloc[[i]]

    made: dict[str, UmapDetails] = {}
    lock = threading.Lock()

    def make() -> pn.viewable.Viewable:
        with lock:
            made["view"] = UmapDetails(cells, read, width=420, height=420, title="click")
        return made["view"].__panel__()

    def details(page) -> str:  # noqa: ANN001
        return " ".join(page.evaluate(TEXT_JS, "umap-cell-details"))

    with _served(make) as url, browser_page({"width": 1000, "height": 800}) as page:
        page.goto(url)
        page.wait_for_selector(".umap-cell-details", timeout=60_000)
        for spot in ("B", "NK", "T"):
            x, y = _position(page, *SPOTS[spot][:2])
            page.mouse.click(x, y)
            label = next(iter(SPOTS[spot][2]))
            wait_until(lambda: label in details(page) and "cell-" in details(page), 30,  # noqa: B023
                       f"the details of a cell of spot {spot}")
            text = details(page)
            shown = cells.iloc[reads[-1]]
            assert shown["predicted_label"] == label and (shown["umap_1"], shown["umap_2"]) == SPOTS[spot][:2]
            assert shown["cell_id"] in text and f"{shown['confidence']:.3f}" in text, text
            assert f"{shown['reference_fit']:.3f}" in text, text
        x, y = _position(page, 5.0, 5.0)  # empty space between the spots: no cell is named
        page.mouse.click(x, y)
        wait_until(lambda: "No cell" in details(page), 30, "the empty spot's answer")
