"""View logic without a browser: what the pickers offer and what the panels say."""

from __future__ import annotations

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn

from dashboards.catalog import ModelPicker, model_card, model_label, models_frame
from dashboards.data import report_markdown
from dashboards.plots import color_key, color_range, confusion_heatmap, disagreement, is_continuous, umap_plot
from dashboards.result_text import UNTRAINED_BANNER, top_probabilities
from dashboards.run_text import history_frame, progress_text
from inference.checks import check_file
from store.engine import write_session
from store.tables import ModelEntry, Run
from tests.conftest import PBMC
from tests.rendering import shown


def _set_weights(platform, model_id: str, status: str, detail: str = "") -> None:
    with write_session(platform.engine) as s:
        m = s.get(ModelEntry, model_id)
        m.weights_status, m.weights_detail = status, detail
        s.add(m)


def test_the_picker_offers_the_applications_models_and_says_which_are_untrained(platform):
    _set_weights(platform, "geneformer", "generated")
    _set_weights(platform, "scgpt", "missing", "not found: stage them with `helical-platform weights stage SRC`")
    picker = ModelPicker(platform)
    assert picker.application == "cell-type-annotation"
    labels = dict(picker.param.model.objects)
    assert labels["Geneformer — generated, untrained"] == "geneformer"
    assert labels["scGPT — weights missing"] == "scgpt"
    assert picker.model == "baseline"  # a usable model is picked first
    picker.model = "geneformer"
    card = shown(model_card(picker.selected()))
    # the seed catalog's 0.92 is neither published nor measured here: beside untrained weights it would read as
    # the model's accuracy, so no figure is shown (issue 39)
    assert "Generated, untrained weights" in card and "0.92" not in card and "not measured here" in card
    assert "BENCHMARKS" in card
    baseline = shown(model_card(_model(platform, "baseline")))
    assert "Measured by this platform" in baseline and "not measured here" not in baseline
    table = dict(zip(*[models_frame(platform.models())[c] for c in ("model", "accuracy")], strict=True))
    assert table["Geneformer"] == "not measured here" and "0.92" not in str(table)
    assert "weights stage" in shown(model_card(_model(platform, "scgpt")))


def _model(platform, model_id):
    return next(m for m in platform.models() if m.id == model_id)


def test_model_labels_for_installed_weights_say_nothing_extra(platform):
    _set_weights(platform, "geneformer", "installed")
    assert model_label(_model(platform, "geneformer")) == "Geneformer"


def test_the_check_panel_reports_what_was_found(tiny_locations):
    text = shown(report_markdown(check_file(PBMC)))
    assert "599 cells × 32,738 genes" in text and "raw counts in X" in text
    assert "Label column celltype" in text and "CD4 T (255)" in text
    bad = shown(report_markdown({"ok": False, "file": "x.h5ad",
                                 "errors": [{"code": "no_cells", "message": "0 cells"}]}))
    assert "cannot be used" in bad and "no cells" in bad


def test_history_and_progress_words():
    class R:
        id, status, model_id, dataset_id, stage, progress = "3f2b6c1e-8d4a-4e7b", "done", "baseline", "d1", "done", 1
        started_at = pd.Timestamp("2026-01-01 10:00:00", tz="UTC")
        finished_at = pd.Timestamp("2026-01-01 10:00:42", tz="UTC")
        created_at = started_at
        metrics, parameters = {"macro_f1": 0.9312}, {"weights": "installed"}
        created_by = "alice"

    frame = history_frame([R()], {"baseline": "Baseline"}, {"d1": "pbmc.h5ad"})
    row = frame.iloc[0]
    assert row["by"] == "alice"
    assert (row["model"], row["dataset"], row["duration_s"], row["macro_f1"]) == ("Baseline", "pbmc.h5ad", 42.0, 0.931)
    text = progress_text({"stage": "embedding query", "cells_done": 120, "cells_total": 599, "eta_s": 12.4,
                          "device": "cpu"}, "Geneformer")
    assert text == "**Geneformer** — embedding query · 120/599 cells · ETA 12 s · cpu"
    assert "untrained" in UNTRAINED_BANNER


def _cells(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"cell_id": [f"c{i}" for i in range(n)], "umap_1": rng.normal(size=n),
                         "umap_2": rng.normal(size=n), "predicted_label": rng.choice(["B", "T", "unassigned"], n),
                         "confidence": rng.random(n).astype(np.float32), "p_B": rng.random(n),
                         "p_T": rng.random(n)})


def test_plots_build_from_result_data_alone():
    cells = _cells()
    for color in ("predicted_label", "confidence"):
        hv.render(umap_plot(cells, color), backend="bokeh")
    key = color_key(["T", "B", "unassigned"])
    assert key["unassigned"] == "#c8c8c8" and key["B"] != key["T"]
    heat = confusion_heatmap({"rows": ["B", "T"], "columns": ["B", "T", "unassigned"], "counts": [[5, 1, 0],
                              [2, 7, 1]], "row_normalised": [[0.83, 0.17, 0], [0.2, 0.7, 0.1]]}, normalised=True)
    hv.render(heat, backend="bokeh")
    other = _cells(seed=1)
    merged = disagreement(cells, other, "A", "B")
    expected = (cells["predicted_label"].to_numpy() != other["predicted_label"].to_numpy()).sum()
    assert (merged["agreement"] != "agree").sum() == expected
    table = top_probabilities(cells)
    assert table["top1"].str.match(r"^(B|T) \(\d\.\d\d\)$").all()


def _done_run_with_cells(platform, n: int, extra: dict | None = None, run_fields: dict | None = None) -> str:
    """A finished run whose predictions file has n cells in row groups of 10,000 (as the pipeline writes), plus
    the per-cell ``extra`` columns (name -> values) and the Run row's ``run_fields`` (metrics, parameters, ...)."""
    from inference.result_writer import PARQUET_ROW_GROUP
    from store.artifacts import new_id
    from store.tables import Run

    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1, 1], n).astype(np.float32)
    table = pd.DataFrame({"cell_id": [f"cell-{i}" for i in range(n)], "predicted_label": np.where(
        probs[:, 0] > 0.5, "B", "T"), "confidence": probs.max(axis=1), "assigned": True,
        "umap_1": rng.normal(size=n), "umap_2": rng.normal(size=n), "p_B": probs[:, 0], "p_T": probs[:, 1],
        **(extra or {})})
    with open(PBMC, "rb") as fh:
        ds = platform.datasets.ingest(fh, "pbmc.h5ad")
    run_id = new_id()
    folder = platform.artifacts.run_dir(run_id, create=True)
    table.to_parquet(folder / "predictions.parquet", index=False, row_group_size=PARQUET_ROW_GROUP)
    with write_session(platform.engine) as s:
        s.add(Run(id=run_id, application_id="cell-type-annotation", model_id="baseline", dataset_id=ds.id,
                  status="done", label_column="celltype", **{"metrics": {}, "provenance": {}, **(run_fields or {})}))
    return run_id


def test_pages_of_cells_read_only_their_row_groups_and_match_the_file(platform):
    run_id = _done_run_with_cells(platform, 25_000)
    full = platform.runs.cells(run_id)
    assert isinstance(full["predicted_label"].dtype, pd.CategoricalDtype)  # the UMAP's labels: codes, not strings
    full = full.astype({c: object for c in ("predicted_label", "true_label", "split") if c in full})
    for offset, limit in ((0, 20), (9_995, 10), (24_990, 100), (30_000, 5)):
        page, total = platform.runs.page(run_id, offset, limit)
        assert total == 25_000
        expected = full.iloc[offset:offset + limit].reset_index(drop=True)
        pd.testing.assert_frame_equal(page, expected)
    assert platform.runs.results(run_id, 9_995, 10)["cells"]["items"][0]["cell_id"] == "cell-9995"

    from dashboards.results import ResultsView

    view = ResultsView(platform)
    assert view.run == run_id

    def position() -> str:
        return next(o.object for o in view.cells._table().objects[1].objects if hasattr(o, "object"))

    assert position() == "cells 1–20 of 25,000"
    view.cells.page = 3
    assert position() == "cells 61–80 of 25,000"
    assert view.cells._table().objects[0].value["cell_id"].tolist()[0] == "cell-60"
    view.cells.page = 10_000  # past the end: back to the last page
    view.cells._table()
    assert view.cells.page == 1_249 and position() == "cells 24,981–25,000 of 25,000"


def test_the_hover_is_written_in_the_browser_from_the_drawn_labels_never_asked_of_the_server():
    """HoloViews' server-side selector hover showed 'undefined' or the previous position's cell (issue 39): the
    tooltip is a plain Bokeh hover whose formatter reads the image's per-label counts; tests/test_umap_hover.py
    reads it in Chromium."""
    import json

    from bokeh.embed import json_item
    from bokeh.models import CustomJSHover, HoverTool

    cells = _cells()
    for color in ("predicted_label", "confidence"):
        fig = hv.render(umap_plot(cells, color), backend="bokeh")
        hovers = fig.select(type=HoverTool)
        assert len(hovers) == 1 and hovers[0].name == "umap-hover", hovers
        assert all(isinstance(f, CustomJSHover) for f in hovers[0].formatters.values())
        assert "selector" not in json.dumps(json_item(fig)).lower()  # no server round trip for the tooltip
    fig = hv.render(umap_plot(cells, "predicted_label"), backend="bokeh")
    formatter = fig.select(type=HoverTool)[0].formatters["@image"]
    assert set(formatter.args["labels"]) == set(cells["predicted_label"].astype(str))


def test_umaps_colour_by_any_numeric_column_with_its_mean_and_by_anything_else_per_value():
    cells = _cells().assign(novelty=np.linspace(-3, 5, 200), n_genes=np.arange(200),
                            split=np.where(np.arange(200) % 3, "train", "held-out"), assigned=np.arange(200) % 2 == 0)
    for color in ("novelty", "n_genes", "split", "assigned"):
        for hover in (True, False):
            hv.render(umap_plot(cells, color, hover=hover), backend="bokeh")
    assert is_continuous(cells["novelty"]) and is_continuous(cells["n_genes"]) and is_continuous(cells["confidence"])
    assert not is_continuous(cells["split"]) and not is_continuous(cells["assigned"])
    assert color_range(cells["confidence"]) == (0.0, 1.0)  # probabilities keep one scale across runs
    assert color_range(cells["novelty"]) == (-3.0, 5.0)


def test_colour_options_come_from_the_runs_own_columns_by_kind(platform):
    from app.result_columns import run_columns
    from dashboards.results import ResultsView

    n = 300
    rng = np.random.default_rng(1)
    bare = _done_run_with_cells(platform, n)
    rich = _done_run_with_cells(platform, n, {
        "true_label": pd.Categorical(rng.choice(["B", "T"], n)), "split": rng.choice(["train", "held-out"], n),
        "novelty": rng.random(n) * 7, "cluster": rng.integers(0, 5, n)})
    assert run_columns(platform, rich) == {
        "predicted_label": "categorical", "confidence": "continuous", "assigned": "categorical",
        "p_B": "continuous", "p_T": "continuous", "true_label": "categorical", "split": "categorical",
        "novelty": "continuous", "cluster": "continuous"}  # no cell id, no coordinates

    view = ResultsView(platform=platform)
    view.run = rich
    assert view.param.color_by.objects == ["predicted_label", "confidence", "assigned", "true_label", "split",
                                           "novelty", "cluster"]  # per-class probabilities stay in the table
    view.load_query_colours()  # '+ the query's columns': its file is opened only when asked (issue 39)
    own = [c for c in view.param.color_by.objects if not c.startswith("query:")]
    assert own == ["predicted_label", "confidence", "assigned", "true_label", "split", "novelty", "cluster"]
    assert "query:celltype" in view.param.color_by.objects
    assert view.color_by == "predicted_label"
    for color in ("novelty", "split", "true_label"):
        view.color_by = color
        plot = view._umap().objects[0].object
        hv.render(plot, backend="bokeh")
        assert color in view._cache[rich].columns
    view.color_by = "novelty"
    view.run = bare  # a run without that column: its own options, back to the predicted label
    assert "novelty" not in view.param.color_by.objects and "true_label" not in view.param.color_by.objects
    assert view.color_by == "predicted_label"
    hv.render(view._umap().objects[0].object, backend="bokeh")


def test_the_results_cache_keeps_only_the_runs_drawn_last(platform):
    from dashboards.results import MAX_CACHED_RUNS, ResultsView

    runs = [_done_run_with_cells(platform, 50) for _ in range(MAX_CACHED_RUNS + 2)]
    view = ResultsView(platform)
    for run_id in runs:
        view.run = run_id
        view._umap()
        assert len(view._cache) <= MAX_CACHED_RUNS
    assert list(view._cache) == runs[-MAX_CACHED_RUNS:]
    oldest, second = runs[-MAX_CACHED_RUNS], runs[-MAX_CACHED_RUNS + 1]
    view.run = oldest  # drawn again: the most recent now, so the next new run evicts the second oldest instead
    view._umap()
    view.run = runs[0]
    view._umap()
    assert second not in view._cache and list(view._cache)[-2:] == [oldest, runs[0]]
    assert len(view._cache) == MAX_CACHED_RUNS


def test_a_run_above_the_hover_limit_reads_only_what_its_image_needs_and_still_compares(platform, monkeypatch):
    """Above HOVER_CELL_MAX cells the UMAP hovers per label, so opening the run reads no cell names (a million of
    them took 0.3 of the 0.5 s first image); comparing it with another run reads them then, and agrees with the
    same comparison made from whole tables."""
    from dashboards import results as results_module
    from dashboards.results import ResultsView

    flipped = np.where(np.arange(300) % 3 == 0, "T", "B")  # another run's calls: some cells disagree
    run_id, other_id = _done_run_with_cells(platform, 300), _done_run_with_cells(platform, 300,
                                                                                 {"predicted_label": flipped})
    with write_session(platform.engine) as s:
        for rid in (run_id, other_id):
            s.get(Run, rid).cells_total = 300
    monkeypatch.setattr(results_module, "HOVER_CELL_MAX", 299)  # as if the runs held a million cells
    view = ResultsView(platform)
    view.run = run_id
    view._umap()
    assert set(view._cache[run_id].columns) == {"umap_1", "umap_2", "predicted_label"}
    view.compare_with = other_id
    shown = view._compare()
    words = shown.select(pn.pane.Markdown)[-1].object
    whole = [platform.runs.cells(r, None) for r in (run_id, other_id)]
    expected = int((whole[0]["predicted_label"].to_numpy() != whole[1]["predicted_label"].to_numpy()).sum())
    assert expected > 0 and words.startswith(f"{expected:,} of 300 cells")
    assert {"cell_id", "confidence"} <= set(view._cache[run_id].columns)


def test_the_dashboards_views_are_linked_by_parameters_and_take_the_platform_as_one(platform):
    import param

    from dashboards.dashboard import Dashboard
    from dashboards.data import DataPanel

    dash = Dashboard(platform)
    assert dash.platform is platform and Dashboard(platform=platform).runs.platform is platform
    for view in (dash.picker, dash.data, dash.runs, dash.results):
        assert view.platform is platform and isinstance(view.param.platform, param.ClassSelector)
    try:
        DataPanel("not a platform")
    except ValueError:
        pass
    else:
        raise AssertionError("a view took something that is not a Platform")

    assert (dash.runs.application, dash.runs.model) == ("cell-type-annotation", "baseline")
    dash.picker.model = "geneformer"
    assert dash.runs.model == "geneformer"

    with open(PBMC, "rb") as fh:
        ds = platform.datasets.ingest(fh, "pbmc.h5ad")
    dash.data.refresh()
    dash.data.dataset = ds.id
    assert dash.runs.dataset == ds.id and dash.runs.label_column == "celltype"
    assert ds.id in dash.runs.param.reference.objects.values()  # offered as a reference: it has labels

    assert dash.results.param.run.objects == {"(none)": ""}
    run_id = _done_run_with_cells(platform, 50)
    dash.runs.finished += 1  # what the run panel does when one of its runs ends
    assert dash.results.run == run_id


def test_download_links_come_from_the_service_signed_and_expiring(tmp_path):
    import hmac
    from types import SimpleNamespace

    from app.downloads import download_url, link_secret

    p = SimpleNamespace(settings=SimpleNamespace(home=tmp_path, download_link_s=600, api_token=None))
    url = download_url(p, "r1", "csv", now=1000)  # signed whatever the settings: a credential when one is needed
    sig = hmac.new(link_secret(tmp_path), b"helical-platform download\nr1\ncsv\n1600", "sha256").hexdigest()
    assert url == f"/api/download/r1?format=csv&exp=1600&sig={sig}"


def test_dashboards_import_only_the_app_layer_and_never_its_rest_module():
    import ast

    from tests.conftest import REPO

    for path in sorted((REPO / "dashboards").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert name.split(".")[0] not in ("store", "inference"), (path.name, name)
                assert name != "app.rest", (path.name, name)


CALIBRATION = {"ece": 0.0421, "n_cells": 180, "head": "logistic_regression", "temperature": 1.3,
               "ece_before_temperature": 0.0803,
               "bins": [{"lower": 0.4, "upper": 0.4667, "count": 10, "confidence": 0.44, "accuracy": 0.3},
                        {"lower": 0.9333, "upper": 1.0, "count": 170, "confidence": 0.97, "accuracy": 0.95}]}


def test_the_run_options_come_from_the_head_picker_k_voting_and_thresholds(platform):
    import asyncio

    from dashboards.run_text import HEADS, run_options
    from dashboards.runs import RunPanel
    from inference.heads import HEAD_OPTIONS

    assert set(HEADS.values()) == set(HEAD_OPTIONS)  # the picker offers every head a run can ask for
    assert run_options(0.5) == {"confidence_threshold": 0.5, "novelty_threshold": 0.0,
                                "head": "logistic_regression", "majority_voting": False}
    assert run_options(0.6, 0.2, "knn", 7, True) == {"confidence_threshold": 0.6, "novelty_threshold": 0.2,
                                                     "head": "knn", "k": 7, "majority_voting": True}
    assert "k" not in run_options(0.5, head="knn")  # blank: automatic
    assert "k" not in run_options(0.5, head="logistic_regression", k=7)  # k belongs to the kNN head only
    tuning = {"epochs": 3, "learning_rate": 1e-4, "frozen_layers": 1}
    assert run_options(0.5, head="fine-tune", tuning=tuning) == {
        "confidence_threshold": 0.5, "novelty_threshold": 0.0, "head": "fine-tune", "majority_voting": False, **tuning}
    assert "epochs" not in run_options(0.5, head="knn", tuning=tuning)  # fine-tuning options with fine-tuning only

    panel = RunPanel(platform)
    k_input = panel.__panel__().objects[1].objects[1].objects[1]  # the annotation form's second row
    assert k_input.visible is False and k_input.value is None
    panel.head, panel.k, panel.majority_voting, panel.novelty = "knn", 5, True, 0.25
    assert k_input.visible is True
    assert panel.submission_options() == {"confidence_threshold": 0.5, "novelty_threshold": 0.25, "head": "knn",
                                          "k": 5, "majority_voting": True, "max_reference_cells": 100_000}
    assert run_options(0.5, head="knn", max_reference_cells=0)["max_reference_cells"] == 0  # 0: every labelled cell
    assert "max_reference_cells" not in run_options(0.5, head=None, max_reference_cells=500)  # annotator: trained

    with open(PBMC, "rb") as fh:
        ds = platform.datasets.ingest(fh, "pbmc.h5ad")
    panel.param.update(datasets=platform.datasets.list(), dataset=ds.id, application="cell-type-annotation",
                       model="baseline", k=10_000)
    asyncio.run(panel._on_run(None))  # refused before anything runs, in plain words, where submissions say so
    assert panel.message.alert_type == "danger" and "k = 10000 is larger" in shown(panel.message.object)
    panel.param.update(k=None, head="fine-tune", epochs=3)  # the baseline has no model to fine-tune
    assert panel.submission_options()["epochs"] == 3
    asyncio.run(panel._on_run(None))
    assert panel.message.alert_type == "danger" and "cannot be fine-tuned here" in shown(panel.message.object)
    assert platform.runs.list() == []


def test_the_reliability_diagram_draws_the_bins_with_the_ece_in_its_title():
    from dashboards.plots import reliability_plot
    from dashboards.result_text import calibration_caption

    fig = hv.render(reliability_plot(CALIBRATION), backend="bokeh")
    assert fig.title.text == "Reliability (ECE 0.042)"
    assert (fig.x_range.start, fig.x_range.end, fig.y_range.start, fig.y_range.end) == (0, 1, 0, 1)
    text = shown(calibration_caption(CALIBRATION))
    assert "180 cells" in text and "ECE, the cell-weighted gap): 0.042" in text
    assert "Before temperature scaling (T = 1.30): ECE 0.080" in text
    knn = {k: v for k, v in CALIBRATION.items() if k not in ("temperature", "ece_before_temperature")}
    assert "temperature" not in shown(calibration_caption({**knn, "head": "knn"}))
    assert hv.render(reliability_plot({"ece": None, "n_cells": 0, "bins": []}), backend="bokeh").title.text \
        == "Reliability"


def _scores(macro_f1: float, labels=("B", "T")) -> dict:
    return {"macro_f1": macro_f1, "accuracy": macro_f1 + 0.01, "weighted_f1": macro_f1, "assigned_fraction": 0.9,
            "n_cells": 180, "per_class": {c: {"precision": 1.0, "recall": 1.0, "f1": macro_f1, "support": 90}
                                          for c in labels},
            "confusion_matrix": {"rows": list(labels), "columns": [*labels, "unassigned"],
                                 "counts": [[80, 5, 5], [3, 85, 2]], "row_normalised": [[0.89, 0.06, 0.06],
                                                                                         [0.03, 0.94, 0.02]]}}


def test_the_metrics_name_the_head_and_follow_per_cell_or_majority_voting():
    from types import SimpleNamespace

    from dashboards.result_text import CONSENSUS, PER_CELL, metrics_markdown, shown_metrics

    metrics = {**_scores(0.8), "scope": "held-out split", "calibration": CALIBRATION,
               CONSENSUS: {**_scores(0.9), "clusters": 12}}
    knn = SimpleNamespace(metrics=metrics, parameters={"head": {"kind": "knn", "k": 15}, "novelty_threshold": 0.3},
                          provenance={"head": {"kind": "knn", "k": 15, "reference_cells": 420}})
    per_cell = shown(metrics_markdown(knn))
    assert "Macro-F1 0.800" in per_cell and "With majority voting (12 clusters): macro-F1 0.900" in per_cell
    assert "Head: kNN reference mapping, k = 15 · novelty threshold 0.30" in per_cell
    voted = shown(metrics_markdown(knn, CONSENSUS))
    assert voted.startswith("Majority voting over 12 clusters: Macro-F1 0.900") and "Per cell: macro-F1 0.800" in voted
    assert shown_metrics(metrics, CONSENSUS)["macro_f1"] == 0.9 and shown_metrics(metrics, PER_CELL) is metrics
    assert shown_metrics({**metrics, CONSENSUS: None}, CONSENSUS)["macro_f1"] == 0.8  # nothing to switch to

    logistic = SimpleNamespace(metrics={}, parameters={"head": {"kind": "logistic_regression", "C": 1.0}},
                               provenance={"head": {"kind": "logistic_regression", "temperature": 1.2345}})
    text = shown(metrics_markdown(logistic))
    assert "no metrics" in text and "Head: Logistic regression, temperature 1.23" in text
    old = SimpleNamespace(metrics={}, parameters={}, provenance={})  # a run from before heads were recorded
    assert "Head" not in shown(metrics_markdown(old))


def test_a_majority_voting_run_offers_the_reference_fit_and_consensus_and_a_reliability_diagram(platform):
    from dashboards.result_text import CONSENSUS, PER_CELL
    from dashboards.results import ResultsView

    n = 300
    rng = np.random.default_rng(2)
    voted = rng.choice(["B", "T"], n)
    metrics = {**_scores(0.8), "scope": "held-out split", "calibration": CALIBRATION,
               CONSENSUS: {**_scores(0.9), "clusters": 40}}
    run_id = _done_run_with_cells(platform, n, {
        "unassigned_reason": rng.choice(["", "low confidence", "does not fit the reference"], n),
        "reference_fit": rng.random(n).astype(np.float32), "over_clustering": rng.integers(0, 40, n).astype(str),
        CONSENSUS: voted, "true_label": rng.choice(["B", "T"], n)},
        {"metrics": metrics, "parameters": {"head": {"kind": "knn", "k": 15}, "majority_voting": True}})
    plain = _done_run_with_cells(platform, n)

    view = ResultsView(platform)
    view.run = run_id
    names = view.param.color_by.names
    assert names["reference fit"] == "reference_fit" and names["majority voting"] == CONSENSUS
    assert names["over-clustering"] == "over_clustering" and names["predicted label"] == "predicted_label"
    assert view.has_consensus and view.label_source == PER_CELL

    def metrics_panes():  # the headline's words and matrix, the details' F1 bars and reliability diagram
        shown = [*view._summary().objects, view._confusion(), *view._details().objects]
        return [o for o in shown for o in getattr(o, "objects", [o])]

    def classes(pane) -> set:
        return set(pane.css_classes or [])

    panes = metrics_panes()
    diagram = next(p for p in panes if "reliability-diagram" in classes(p))
    assert hv.render(diagram.object, backend="bokeh").title.text == "Reliability (ECE 0.042)"
    assert "Head: kNN reference mapping, k = 15" in shown(next(p for p in panes if "metrics" in classes(p)).object)
    assert "0.800" in next(p for p in panes if "f1-bars" in classes(p)).object.opts.get().kwargs["title"]

    titles = {}
    for color in ("reference_fit", "over_clustering"):
        view.color_by = color
        titles[color] = hv.render(view._umap().objects[0].object, backend="bokeh").title.text
    assert titles["reference_fit"].endswith("UMAP by reference fit")
    assert titles["over_clustering"].endswith("UMAP by over-clustering")
    view.label_source = CONSENSUS  # majority voting: the UMAP colours by the consensus, the scores are its own
    assert view.color_by == CONSENSUS
    hv.render(view._umap().objects[0].object, backend="bokeh")
    assert "0.900" in next(p for p in metrics_panes() if "f1-bars" in classes(p)).object.opts.get().kwargs["title"]
    view.label_source = PER_CELL
    assert view.color_by == "predicted_label"

    view.label_source = CONSENSUS
    view.run = plain  # no consensus here: back to per-cell labels, no toggle, no diagram
    assert not view.has_consensus and view.label_source == PER_CELL and view.color_by == "predicted_label"
    assert not any("reliability-diagram" in classes(p) for p in metrics_panes())


def _annotator(platform, name: str, model_id: str = "baseline", trained: bool = True, builtin: bool = False,
               **fields) -> str:
    """A saved annotator's row (its arrays are not needed to list, show or delete it)."""
    from store.artifacts import new_id
    from store.tables import AnnotatorEntry

    row = AnnotatorEntry(id=new_id(), name=name, model_id=model_id, backend=model_id, model_checksum="0" * 64,
                         trained=trained, head_kind="logistic_regression", head_sha256="f" * 64,
                         label_column="celltype", builtin=builtin, classes={"B": 40, "CD4 T": 120, "NK": 12},
                         reference={"file_name": "reference.h5ad", "sha256": "a" * 64, "cells": 172},
                         check={"method": "held-out split (30%)", "n_cells": 52, "macro_f1": 0.91234,
                                "accuracy": 0.95, "per_class_f1": {"B": 0.97, "CD4 T": 0.93}},
                         ontology={"B": "CL:0000236", "CD4 T": "CL:0000624", "NK": None}, **fields)
    with write_session(platform.engine) as s:
        s.add(row)
    return row.id


def test_the_annotators_table_says_what_each_is_and_deletes_only_what_is_not_built_in(platform):
    import asyncio

    from dashboards.annotators import CONFIRM, AnnotatorsView, annotator_details, annotators_frame

    builtin = next(a.id for a in platform.annotators.list() if a.builtin)  # shipped, installed at first start
    untrained = _annotator(platform, "Geneformer PBMC", model_id="geneformer", trained=False)
    kept = _annotator(platform, "Lab PBMC v1", author="Ada", description="pbmc3k, 3 types")
    rows = platform.annotators.list()
    frame = annotators_frame(rows, {"baseline": "Baseline (log1p + HVG + logistic regression)",
                                    "geneformer": "Geneformer"})  # short model names: the table fits a laptop
    by_name = frame.set_index("name")
    assert list(frame.columns) == ["name", "model", "classes", "held-out macro-F1", "head", "built-in", "reference",
                                   "author", "saved", "id"]
    assert by_name.loc["Lab PBMC v1", ["model", "head", "classes", "held-out macro-F1", "reference", "author",
                                       "built-in"]].tolist() == ["Baseline", "logistic regression", 3, 0.912,
                                                                 "reference.h5ad", "Ada", ""]
    assert by_name.loc["Geneformer PBMC", ["model", "built-in"]].tolist() == ["Geneformer (untrained)", ""]
    assert frame.set_index("id").loc[builtin, "built-in"] == "yes"
    text = shown(annotator_details(next(a for a in rows if a.id == kept), {"baseline": "Baseline"}))
    assert "pbmc3k, 3 types" in text and "learnt from reference.h5ad (172 cells), labels celltype · by Ada" in text
    assert "macro-F1 0.912 · accuracy 0.950" in text and "CD4 T (120 cells, F1 0.93): CL:0000624" in text
    assert "NK (12 cells): not mapped to the Cell Ontology" in text
    assert "untrained" in shown(annotator_details(next(a for a in rows if a.id == untrained), {}))

    view = AnnotatorsView(platform)
    assert len(view.table.value) == 3 and view.delete_button.disabled
    assert view.table.formatters["name"] == {"type": "textarea"}  # names, authors, files: shown as typed, wrapped
    row_of = {row_id: i for i, row_id in enumerate(view.table.value["id"])}
    view.table.selection = [row_of[builtin]]
    assert view.selected == builtin and "PBMC 3k (baseline)" in shown(view.details.object)
    from panel.models.tabulator import CellClickEvent

    view.table.selection = []  # a second click on the selected row: Tabulator toggles it off ...
    view.table._process_event(CellClickEvent(model=None, column="name", row=row_of[builtin]))  # ... its click
    assert view.selected == builtin and view.table.selection == [row_of[builtin]]  # still shown, still marked
    view.table._process_event(CellClickEvent(model=None, column="author", row=row_of[kept]))  # any cell of a row
    assert view.selected == kept and "Lab PBMC v1" in shown(view.details.object)
    view.table.selection = [row_of[builtin]]
    asyncio.run(view._on_delete(None))  # refused by the service, in its words
    assert "is built in: it cannot be deleted" in shown(view.message.object) and len(platform.annotators.list()) == 3
    view.table.selection = [row_of[kept]]
    asyncio.run(view._on_delete(None))  # a first click asks
    assert view.delete_button.name == CONFIRM and "for everyone on this server" in shown(view.message.object)
    assert len(platform.annotators.list()) == 3
    asyncio.run(view._on_delete(None))
    assert {a.id for a in platform.annotators.list()} == {builtin, untrained} and view.deleted == 1
    assert "Deleted annotator Lab PBMC v1" in shown(view.message.object)
    assert set(view.table.value["id"]) == {builtin, untrained}


def test_the_run_panel_runs_with_a_saved_annotator_instead_of_a_reference(platform, monkeypatch):
    import asyncio

    from dashboards.run_text import ANNOTATOR, NO_TRUTH, REFERENCE, annotator_choices, run_options, submission
    from dashboards.runs import RunPanel

    options = run_options(0.6, 0.1, None, 7, True)
    assert options == {"confidence_threshold": 0.6, "novelty_threshold": 0.1, "majority_voting": True}
    with_head = run_options(0.6, head="knn", k=7)
    assert submission(ANNOTATOR, with_head, "ref-id", "celltype", "celltype", "ann-id") == {
        "reference_id": None, "label_column": None, "truth_column": "celltype",
        "options": {"confidence_threshold": 0.6, "novelty_threshold": 0.0, "majority_voting": False},
        "annotator": "ann-id"}  # the annotator brings its head: no reference, label column, head or k
    assert submission(REFERENCE, with_head, "ref-id", "celltype", NO_TRUTH, "ann-id") == {
        "reference_id": "ref-id", "label_column": "celltype", "truth_column": None, "options": with_head,
        "annotator": None}

    builtin = platform.annotators.get("PBMC 3k (baseline)").id
    other = _annotator(platform, "Geneformer PBMC", model_id="geneformer", trained=False)
    mine = _annotator(platform, "Lab PBMC v1")
    names = {"baseline": "Baseline", "geneformer": "Geneformer"}
    assert annotator_choices(platform.annotators.list(), names) == {
        "Lab PBMC v1 — Baseline · 3 classes": mine,
        "Geneformer PBMC — Geneformer · 3 classes · untrained (predictions mean nothing)": other,
        "PBMC 3k (baseline) — Baseline · 8 classes": builtin}

    with open(PBMC, "rb") as fh:
        ds = platform.datasets.ingest(fh, "pbmc.h5ad")
    panel = RunPanel(platform)
    layout = panel.__panel__()
    annotation = layout.objects[1]  # the annotation form (another application brings its own)
    reference, annotator, label = annotation.objects[0].objects[1:4]
    head = annotation.objects[1].objects[0]
    panel.param.update(datasets=platform.datasets.list(), dataset=ds.id, application="cell-type-annotation",
                       model="baseline")
    assert (reference.visible, annotator.visible, label.visible, head.visible) == (True, False, True, True)
    assert not panel.note.visible
    panel.labels_from = ANNOTATOR
    assert (reference.visible, annotator.visible, label.visible, head.visible) == (False, True, False, False)
    assert panel.annotator == mine  # the newest for the selected model
    assert panel.truth_column == "celltype"  # the query has the annotator's label column: metrics against it
    assert "3 classes learnt from reference.h5ad · held-out macro-F1 0.912" in shown(panel.note.object)

    panel.annotator = other  # another model's annotator: said at once, refused before anything is submitted
    assert panel.note.alert_type == "danger"
    assert "reads Geneformer's embeddings, and the selected model is Baseline (" in shown(panel.note.object)
    asyncio.run(panel._on_run(None))
    assert "pick Geneformer in the model picker" in shown(panel.message.object) and platform.runs.list() == []

    sent = {}

    def submit(*args, **kwargs):
        sent.update(args=args, kwargs=kwargs)
        raise ValueError("<b>stopped</b> here")

    monkeypatch.setattr(platform.runs, "submit", submit)
    panel.annotator = mine
    panel.head, panel.k = "knn", 5
    asyncio.run(panel._on_run(None))
    assert sent["args"] == ("cell-type-annotation", "baseline", ds.id)
    assert sent["kwargs"] == {"reference_id": None, "label_column": None, "truth_column": "celltype",
                              "options": {"confidence_threshold": 0.5, "novelty_threshold": 0.0,
                                          "majority_voting": False}, "annotator": mine,
                              "user": panel.user}  # the session's user (no sign-in here: the anonymous one)
    assert shown(panel.message.object) == "<b>stopped</b> here"  # the refusal, as typed

    _annotator(platform, "Newer PBMC")
    panel.annotators_changed += 1  # what the Dashboard does when one is saved
    assert len(panel.param.annotator.objects) == 4 and panel.annotator == mine  # the pick is kept


def test_a_run_with_a_reference_saves_as_an_annotator_with_confirmed_ontology_terms(platform, monkeypatch):
    import asyncio
    from types import SimpleNamespace

    from app.annotators import Conflict
    from dashboards.dashboard import Dashboard
    from dashboards.result_annotator import EDITED, ontology_frame, ontology_mapping, savable

    frame = ontology_frame(["CD14 Monocytes", "weird blob"],
                           {"CD14 Monocytes": {"term_id": "CL:0001054", "term_label": "CD14-positive monocyte",
                                               "how": "normalised"}, "weird blob": None})
    assert frame.to_dict("records") == [
        {"class": "CD14 Monocytes", "Cell Ontology id": "CL:0001054", "term": "CD14-positive monocyte",
         "suggested": "normalised"},
        {"class": "weird blob", "Cell Ontology id": "", "term": "", "suggested": "no suggestion"}]
    frame.loc[1, "Cell Ontology id"] = " CL:0000236 "
    assert ontology_mapping(frame) == {"CD14 Monocytes": "CL:0001054", "weird blob": "CL:0000236"}
    frame.loc[0, "Cell Ontology id"] = ""
    assert ontology_mapping(frame) == {"CD14 Monocytes": None, "weird blob": "CL:0000236"}

    with open(PBMC, "rb") as fh:
        reference = platform.datasets.ingest(fh, "reference.h5ad")
    head = {"kind": "logistic_regression", "classes": ["B", "CD14 Monocytes", "NK"]}
    run_id = _done_run_with_cells(platform, 50, run_fields={"reference_dataset_id": reference.id,
                                                           "provenance": {"head": head}})
    evaluation = _done_run_with_cells(platform, 50)  # trained on a split of its own query: nothing to save
    assert not savable(SimpleNamespace(status="done", reference_dataset_id=None, parameters={}))
    assert not savable(SimpleNamespace(status="done", reference_dataset_id="r",
                                       parameters={"annotator": {"id": "a", "name": "x"}}))

    dash = Dashboard(platform)
    dash.results.run = evaluation
    view = dash.results.save_form  # the results' save form follows the run shown
    assert not view.can_save
    dash.results.run = run_id
    assert view.can_save
    table = view.ontology.value
    assert table["class"].tolist() == head["classes"]
    assert table.set_index("class").loc["CD14 Monocytes", "Cell Ontology id"] == "CL:0001054"  # suggested
    assert view.ontology.formatters["class"] == {"type": "plaintext"}
    row = table["class"].tolist().index("NK")
    view.ontology.patch({"Cell Ontology id": [(row, "CL:0000938")]}, as_index=False)
    view._on_ontology_edit(SimpleNamespace(column="Cell Ontology id", row=row, value="CL:0000938"))
    assert view.ontology.value["term"].iloc[row] == EDITED

    sent = {}
    real = platform.annotators.save_from_run

    def save(*args):
        sent["args"] = args
        return real(*args)

    monkeypatch.setattr(platform.annotators, "save_from_run", save)
    view.param.update(annotator_name="<b>bad</b>", annotator_author="Ada <i>L</i>")
    asyncio.run(view._on_save(None))  # the service's refusal, shown as typed
    assert view.save_message.alert_type == "danger" and "An annotator's name is 1-80 letters" in \
        shown(view.save_message.object)
    assert sent["args"][0] == run_id and sent["args"][4]["NK"] == "CL:0000938"

    saved = SimpleNamespace(name="Lab PBMC v1", classes=dict.fromkeys(head["classes"], 10),
                            ontology={"B": "CL:0000236", "CD14 Monocytes": "CL:0001054", "NK": None})
    monkeypatch.setattr(platform.annotators, "save_from_run", lambda *args: saved)
    view.annotator_name = "Lab PBMC v1"
    before = dash.annotators_changed
    asyncio.run(view._on_save(None))
    text = shown(view.save_message.object)
    assert text.startswith("Saved annotator Lab PBMC v1") and "3 classes, 2 mapped to the Cell Ontology" in text
    assert dash.annotators_changed == before + 1 and dash.runs.annotators_changed == before + 1
    assert dash.annotators.annotators_changed == before + 1

    def taken(*_args):
        raise Conflict("An annotator named '<script>x</script>' exists: choose another name.")

    monkeypatch.setattr(platform.annotators, "save_from_run", taken)
    asyncio.run(view._on_save(None))
    assert shown(view.save_message.object) == "An annotator named '<script>x</script>' exists: choose another name."


def test_an_annotator_run_with_ontology_terms_shows_cell_types_or_cell_classes(platform):
    from dashboards.result_text import (
        CELL_CLASS,
        CELL_TYPE,
        CLASS_COLUMN,
        CONSENSUS,
        PER_CELL,
        metrics_markdown,
        shown_metrics,
    )
    from dashboards.results import ResultsView

    n = 300
    rng = np.random.default_rng(3)
    classes = {"B": "B cell", "T": "T cell"}
    predicted = rng.choice(["B", "T", "unassigned"], n)
    metrics = {**_scores(0.8), "scope": "all labelled query cells", CONSENSUS: {**_scores(0.85), "clusters": 9},
               CELL_CLASS: {**_scores(0.95, ("B cell", "T cell")), "scope": "cells whose true label maps"}}
    head = {"kind": "logistic_regression", "annotator": "Lab PBMC v1",
            "reference_check": {"macro_f1": 0.912, "method": "held-out split"}}
    run_id = _done_run_with_cells(platform, n, {
        "predicted_label": predicted, CLASS_COLUMN: [classes.get(p, "") for p in predicted],
        "predicted_cell_type_ontology_term_id": ["CL:0000236" if p == "B" else "" for p in predicted],
        CONSENSUS: rng.choice(["B", "T"], n), "true_label": rng.choice(["B", "T"], n)},
        {"metrics": metrics, "parameters": {"annotator": {"id": "a1", "name": "Lab PBMC v1"}},
         "provenance": {"head": head}})

    view = ResultsView(platform)
    view.run = run_id
    assert view.has_cell_class and view.level == CELL_TYPE and not view.save_form.can_save  # an annotator's run
    assert view.param.color_by.names["predicted cell class"] == CLASS_COLUMN
    text = shown(metrics_markdown(view._runs[run_id]))
    assert "At the cell-class level: macro-F1 0.950" in text
    assert "Annotator Lab PBMC v1 · Head: Logistic regression (held-out macro-F1 0.912 on its reference)" in text

    view.label_source = CONSENSUS
    view.level = CELL_CLASS  # the coarse level is each cell's own call: per cell, coloured by class
    assert view.label_source == PER_CELL and view.color_by == CLASS_COLUMN
    plot = view._umap().objects[0].object
    fig = hv.render(plot, backend="bokeh")
    assert fig.title.text.endswith("UMAP by predicted cell class")
    assert set(view._cache[run_id][CLASS_COLUMN]) == {"B cell", "T cell", "unassigned or unmapped"}
    classed = shown(metrics_markdown(view._runs[run_id], PER_CELL, CELL_CLASS))
    assert classed.startswith("Cell class (the Cell Ontology's coarse level, 2 classes): Macro-F1 0.950")
    assert shown_metrics(metrics, PER_CELL, CELL_CLASS)["confusion_matrix"]["rows"] == ["B cell", "T cell"]
    matrix = view._confusion()
    assert "confusion-matrix" in matrix.css_classes
    assert set(matrix.object.values()[0].dimension_values("true")) == {"B cell", "T cell"}
    view.label_source = CONSENSUS  # the consensus is of cell types: back to that level
    assert view.level == CELL_TYPE and view.color_by == CONSENSUS
    view.level = CELL_CLASS
    view.level = CELL_TYPE
    assert view.color_by == "predicted_label"

    plain = _done_run_with_cells(platform, 50)
    view.level = CELL_CLASS
    view.run = plain  # no classes here: no toggle, back to cell types
    assert not view.has_cell_class and view.level == CELL_TYPE and view.color_by == "predicted_label"


def test_a_fine_tuned_heads_line_says_its_epochs_best_epoch_and_untrained_start():
    from types import SimpleNamespace

    from dashboards.result_text import head_text

    history = [{"epoch": 1, "val_macro_f1": 0.5}, {"epoch": 2, "val_macro_f1": 0.75}, {"epoch": 3, "val_macro_f1": 0.7}]
    run = SimpleNamespace(parameters={"head": {"kind": "fine-tune", "epochs": 10}}, metrics={}, provenance={
        "head": {"kind": "fine_tuned_linear", "temperature": 1.5, "reference_check": {"fine_tuning": {
            "history": history, "best_epoch": 2, "stopped_early": True, "from_untrained_weights": True}}}})
    text = shown(head_text(run))
    assert "Head: Fine-tuned model, temperature 1.50" in text
    assert "fine-tuned 3 epochs, best epoch 2 (validation macro-F1 0.750), stopped early, from untrained weights" \
        in text


def test_a_head_trained_on_a_sample_of_its_reference_says_so():
    from types import SimpleNamespace

    from dashboards.result_text import head_text

    sampled = SimpleNamespace(parameters={"head": {"kind": "knn"}}, metrics={}, provenance={"head": {
        "kind": "knn", "k": 15, "reference_cells": 100_012,
        "reference_sample": {"labelled_cells": 1_000_000, "max_cells": 100_000, "min_per_type": 500, "seed": 0}}})
    assert shown(head_text(sampled)) == ("Head: kNN reference mapping, k = 15, trained on 100,012 of the reference's "
                                         "1,000,000 labelled cells (a seeded sample keeping each type's share, at "
                                         "least 500 cells of each type or all it has: 12 more than the 100,000 "
                                         "asked, so rare types are not lost)")
    whole = SimpleNamespace(parameters={"head": {"kind": "knn"}}, metrics={}, provenance={"head": {
        "kind": "knn", "k": 15, "reference_cells": 300}})
    assert "sample" not in shown(head_text(whole))


def test_before_any_run_the_results_say_how_to_make_one(tmp_path):
    from app.platform import Platform
    from app.settings import Settings
    from dashboards.results import GETTING_STARTED, ResultsView

    empty = Platform(Settings.from_env({"HELICAL_PLATFORM_HOME": str(tmp_path / "home")}), start_cluster=False)
    try:
        view = ResultsView(empty)
        shown = view._summary()
        assert shown.object == GETTING_STARTED and "results-empty" in shown.css_classes
        assert view._confusion().objects == [] and view.run == ""
    finally:
        empty.close()
