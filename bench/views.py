"""Result views at scale: the datashaded UMAP for 1e5, 1e6 and 1e7 cells, server time and bytes per image.

    python bench/views.py --points 100000 1000000 10000000

Cells are synthetic (10 Gaussian clusters, 10 labels, a confidence, a cell id each): the view's cost depends on
the number of points, not on what they mean. For each size: the first image (the dashboard's own `umap_plot`
rendered to Bokeh models, as a session does), a zoomed image (the same DynamicMap asked for a quarter of the
range, as a wheel zoom does, then three pans of that zoomed view, whose median is the cost per image while
exploring), with the hover (True and the default None: the per-label counts under the cursor, written in the
browser from the image's own aggregation) and without it (False); bytes are the Bokeh JSON of the figure, which
carries the image to the browser. With ``--from-table`` the first image includes reading the run's columns from
its parquet table, as the dashboard does (the cells' names up to ``HOVER_CELL_MAX`` cells, 500,000, for a click's
details). Writes bench/out/views.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def synthetic(n: int, seed: int = 0):  # noqa: ANN201 - a DataFrame
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    centres = rng.uniform(-10, 10, (10, 2))
    label = rng.integers(0, 10, n)
    xy = centres[label] + rng.normal(scale=1.0, size=(n, 2))
    names = np.array([f"type {i}" for i in range(10)])
    return pd.DataFrame({"cell_id": pd.Series(np.arange(n)).astype(str), "umap_1": xy[:, 0].astype(np.float32),
                         "umap_2": xy[:, 1].astype(np.float32),
                         "predicted_label": pd.Categorical(names[label], categories=list(names)),
                         "confidence": rng.uniform(0.3, 1, n).astype(np.float32)})


def as_run_table(cells, folder: Path) -> Path:  # noqa: ANN001 - a DataFrame
    """``cells`` written as a run writes its predictions (parquet, row groups of 10,000 cells)."""
    from inference.result_writer import PARQUET_ROW_GROUP

    path = folder / "predictions.parquet"
    cells.assign(true_label=cells["predicted_label"]).to_parquet(path, index=False, row_group_size=PARQUET_ROW_GROUP)
    return path


def measure(cells, hover: bool, table: Path | None = None) -> dict:  # noqa: ANN001
    """With ``table``, the first image includes reading the run's columns from it, as a session opening a run."""
    import holoviews as hv
    from bokeh.embed import json_item

    from app.run_results import read_cells
    from dashboards.plots import HOVER_CELL_MAX, umap_plot
    from dashboards.result_text import IMAGE_COLUMNS, UMAP_COLUMNS

    t = time.perf_counter()
    read_s = None
    if table is not None:  # as the dashboard: the cells' names only for the hover on the cell
        per_cell = hover if hover is not None else len(cells) <= HOVER_CELL_MAX
        cells = read_cells(table, UMAP_COLUMNS if per_cell else IMAGE_COLUMNS)
        read_s = round(time.perf_counter() - t, 3)
    obj = umap_plot(cells, "predicted_label", "bench", hover=hover)
    renderer = hv.renderer("bokeh")
    plot = renderer.get_plot(obj)
    first_s = time.perf_counter() - t
    first_bytes = len(json.dumps(json_item(plot.state)))
    (x0, x1), (y0, y1) = (float(cells.umap_1.min()), float(cells.umap_1.max())), (float(cells.umap_2.min()),
                                                                                  float(cells.umap_2.max()))
    stream = next(s for s in plot.streams if hasattr(s, "x_range"))
    times, sizes = [], []
    for k in range(4):  # a wheel zoom, then three pans of the zoomed view: each a new image
        dx, dy = (x1 - x0) / 4, (y1 - y0) / 4
        t = time.perf_counter()
        stream.event(x_range=(x0 + k * dx / 2, x0 + k * dx / 2 + dx), y_range=(y0 + k * dy / 2, y0 + k * dy / 2 + dy))
        times.append(time.perf_counter() - t)
        sizes.append(len(json.dumps(json_item(plot.state))))
    return {"first_s": round(first_s, 3), "read_s": read_s, "first_mb": round(first_bytes / 1e6, 3),
            "zoom_s": round(times[0], 3),
            "zoom_mb": round(sizes[0] / 1e6, 3), "next_images_median_s": round(sorted(times[1:])[1], 3),
            "next_images_max_mb": round(max(sizes) / 1e6, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--points", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    p.add_argument("--from-table", action="store_true",
                   help="the first image includes reading the run's columns from its parquet table")
    args = p.parse_args()
    import tempfile

    from dashboards.plots import warm_up

    warm_up()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.points:
            cells = synthetic(n)
            table = as_run_table(cells, Path(tmp)) if args.from_table else None
            for hover in (True, False, None):
                row = {"points": n, "hover": hover, **measure(cells, hover, table)}
                rows.append(row)
                print(json.dumps(row), flush=True)
            del cells
    out = REPO / "bench" / "out" / "views.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    print("\n| points | hover | first image (s) | of which reading (s) | first (MB) | zoom (s) | "
          "next 3 images, median (s) | largest (MB) |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        what = {True: "the cell", False: "per-label counts", None: "default"}[r["hover"]]
        print(f"| {r['points']:,} | {what} | {r['first_s']} | "
              f"{r['read_s'] if r['read_s'] is not None else '-'} | {r['first_mb']} | "
              f"{r['zoom_s']} | {r['next_images_median_s']} | {r['next_images_max_mb']} |")


if __name__ == "__main__":
    main()
