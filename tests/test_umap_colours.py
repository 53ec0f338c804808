"""The UMAP draws each label in the colour its legend gives it: judged by what is drawn, not by the legend's order.

Three tight clusters whose labels appear in the file in non-alphabetical order (the order a predictions file has):
for each image layer the test finds where its cells are and which cluster that is, and compares the colour that
layer is painted with the colour of that cluster's label in the rendered legend; then the same in Chromium, by the
pixels drawn at each cluster's centre.
"""

from __future__ import annotations

import subprocess

import holoviews as hv
import numpy as np
import pandas as pd
import pytest
from bokeh.io import save
from bokeh.resources import INLINE
from PIL import Image

from dashboards.plots import umap_plot
from tests.serving import CHROMIUM, CHROMIUM_ARGS

CENTRES = {"T cells": (0.0, 0.0), "B cells": (10.0, 0.0), "NK cells": (0.0, 10.0), "Monocytes": (10.0, 10.0)}
FILE_ORDER = ["T cells", "NK cells", "Monocytes", "B cells"]  # first appearance in the file: not sorted


def _cells(kind: str) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [(x + rng.normal(0, 0.2), y + rng.normal(0, 0.2), label) for label in FILE_ORDER
            for x, y in [CENTRES[label]] for _ in range(400)]
    cells = pd.DataFrame(rows, columns=["umap_1", "umap_2", "predicted_label"])
    if kind == "categorical in file order":
        cells["predicted_label"] = pd.Categorical(cells["predicted_label"], categories=FILE_ORDER)
    cells["confidence"] = 0.9
    cells["cell_id"] = [f"cell-{i}" for i in range(len(cells))]
    return cells


def _nearest(x: float, y: float) -> str:
    return min(CENTRES, key=lambda c: (CENTRES[c][0] - x) ** 2 + (CENTRES[c][1] - y) ** 2)


def _legend(fig) -> dict[str, str]:  # noqa: ANN001 - a bokeh figure
    out = {}
    for legend in fig.legend:
        for item in legend.items:
            glyph = item.renderers[0].glyph
            colour = glyph.fill_color if hasattr(glyph, "fill_color") else glyph.line_color
            out[item.label["value"]] = str(colour).lower()
    return out


KINDS = ["categorical in file order", "text"]
CATEGORY_LISTS = {"none given": None, "the run's sorted labels": sorted(CENTRES),
                  "a superset (both runs compared)": sorted([*CENTRES, "Dendritic cells", "unassigned"])}


@pytest.mark.parametrize("categories", list(CATEGORY_LISTS))
@pytest.mark.parametrize("kind", KINDS)
def test_each_layer_is_painted_in_its_labels_legend_colour(kind, categories):
    fig = hv.render(umap_plot(_cells(kind), categories=CATEGORY_LISTS[categories], width=300, height=300),
                    backend="bokeh")
    legend = _legend(fig)
    assert set(CENTRES) <= set(legend)
    stacks = [r for r in fig.renderers if type(r.glyph).__name__ == "ImageStack"]
    assert len(stacks) == 1
    src, palette = stacks[0].data_source.data, stacks[0].glyph.color_mapper.palette
    image = src["image"][0]
    drawn = {}
    for k in range(image.shape[2]):
        if image[:, :, k].max() == 0:
            continue
        iy, ix = np.unravel_index(np.argmax(image[:, :, k]), image.shape[:2])
        x = src["x"][0] + src["dw"][0] * (ix + 0.5) / image.shape[1]
        y = src["y"][0] + src["dh"][0] * (iy + 0.5) / image.shape[0]
        drawn[_nearest(x, y)] = palette[k].lower()
    assert drawn == {label: legend[label] for label in CENTRES}, (drawn, legend)


def _hex(rgb: tuple[int, ...]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb[:3])


def test_the_colours_drawn_in_chromium_at_each_cluster_are_its_legend_colours(tmp_path):
    cells = _cells("categorical in file order")
    plot = umap_plot(cells, width=400, height=400).opts(toolbar=None, title="")
    fig = hv.render(plot, backend="bokeh")
    fig.min_border = 0
    legend = _legend(fig)
    for box in fig.legend:  # its colours are read from the model above; its swatches would add pixels of each colour
        box.visible = False
    html, png = tmp_path / "umap.html", tmp_path / "umap.png"
    save(fig, html, resources=INLINE, title="umap")
    subprocess.run([CHROMIUM, *CHROMIUM_ARGS, "--hide-scrollbars", "--force-device-scale-factor=1",
                    "--window-size=700,500", f"--screenshot={png}", "--virtual-time-budget=5000", html.as_uri()],
                   check=True, capture_output=True, timeout=120)
    shot = np.asarray(Image.open(png).convert("RGB"))
    seen = {}
    for label in CENTRES:
        colour = legend[label]
        target = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
        close = np.argwhere(np.abs(shot.astype(int) - target).sum(axis=2) < 40)
        assert close.size, (label, colour)
        seen[label] = (close[:, 1].mean(), close[:, 0].mean())
    # the pixels painted in each legend colour sit where that label's cluster is, relative to the other clusters
    assert seen["B cells"][0] > seen["T cells"][0] + 20 and seen["Monocytes"][0] > seen["NK cells"][0] + 20, seen
    assert seen["NK cells"][1] < seen["T cells"][1] - 20 and seen["Monocytes"][1] < seen["B cells"][1] - 20, seen
