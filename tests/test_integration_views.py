"""The views of embeddings and batch integration without a browser: the submission form, the scIB table with the
best of each column marked, its heatmap, the per-model UMAPs, and the results view switching to them."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import holoviews as hv
import numpy as np
import pandas as pd
import pytest

from dashboards.integration import (
    BEST,
    MISSING,
    MODEL,
    UNTRAINED,
    IntegrationView,
    best_per_column,
    column_groups,
    column_titles,
    metric_order,
    metrics_table,
    pending_note,
    row_labels,
    scores_caption,
    scores_frame,
    umap_pair,
)
from dashboards.integration_form import IntegrationForm, default_columns, group_submission
from dashboards.plots import scores_heatmap
from dashboards.safe_text import md
from tests.conftest import PBMC
from tests.rendering import shown

BIO = {"Isolated labels": 0.496, "KMeans NMI": 0.640, "KMeans ARI": 0.480, "Silhouette label": 0.511,
       "cLISI": 0.944}
BATCH = {"BRAS": 0.863, "iLISI": 0.314, "KBET": 0.629, "Graph connectivity": 0.399, "PCR comparison": 0.0}


def _metrics(shift: float = 0.0, labels: bool = True, sampled: bool = False) -> dict:
    """A run's ``metrics`` as the integration application records them (numbers of the baseline on the 2-batch
    pbmc3k subset, moved by ``shift``)."""
    raw = {**BIO, **BATCH} if labels else {"iLISI": 0.314, "PCR comparison": 0.0}
    metrics = {k: v + shift for k, v in raw.items()}
    batch = float(np.mean([v for k, v in metrics.items() if k in BATCH]))
    bio = float(np.mean([v for k, v in metrics.items() if k in BIO])) if labels else None
    sample = ({"sampled": True, "cells": 20_000, "of": 50_000, "seed": 0, "rule": "above 20,000 cells, a seeded "
               "random sample of about 20,000 cells, stratified by batch x label"} if sampled
              else {"sampled": False, "cells": 599, "of": 599, "seed": 0})
    return {"metrics": metrics, "aggregates": {"Bio conservation": bio, "Batch correction": batch,
                                               "Total": None if bio is None else 0.6 * bio + 0.4 * batch},
            "sample": sample, "library": {"scib-metrics": "0.6.1"}, "batch_column": "batch",
            "label_column": "celltype" if labels else None, "cells_scored": 599,
            "batches": {"lab-A": 300, "lab-B": 299}}


def test_the_table_has_models_as_rows_metrics_in_the_librarys_order_and_the_best_starred():
    scores = scores_frame({"Baseline": _metrics(), "Harmony": _metrics(0.05)})
    assert list(scores.index) == ["Baseline", "Harmony"]
    assert list(scores.columns) == [*BIO, *BATCH, "Bio conservation", "Batch correction", "Total"]
    table = metrics_table(scores)
    assert list(table.columns) == [MODEL, *scores.columns]
    harmony = table.set_index(MODEL).loc["Harmony"]
    baseline = table.set_index(MODEL).loc["Baseline"]
    assert harmony["KMeans NMI"] == f"{0.640 + 0.05:.3f} {BEST}" and baseline["KMeans NMI"] == "0.640"
    assert all(v.endswith(BEST) for v in harmony) and not any(v.endswith(BEST) for v in baseline)
    titles = column_titles(["Graph connectivity", "KBET"])  # long words may break, softly hyphenated
    assert titles == {"Graph connectivity": "Graph connec\u00adtivity", "KBET": "KBET"}
    groups = column_groups(list(table.columns))
    assert groups["Bio conservation metrics"] == list(BIO) and groups["Aggregate scores"][-1] == "Total"


def test_ties_are_all_best_a_missing_value_is_a_dash_and_a_lone_model_is_nobodys_best():
    scores = scores_frame({"A": {"metrics": {"iLISI": 0.5, "KBET": 0.2}}, "B": {"metrics": {"iLISI": 0.5}},
                           "C": {"metrics": {"iLISI": 0.1, "KBET": float("nan")}}})
    assert best_per_column(scores) == {"iLISI": {"A", "B"}}  # KBET: one model only has it
    table = metrics_table(scores).set_index(MODEL)
    assert table.loc["B", "KBET"] == MISSING and table.loc["C", "KBET"] == MISSING
    assert table.loc["A", "KBET"] == "0.200"
    assert metrics_table(scores_frame({"A": _metrics()})).iloc[0].str.endswith(BEST).sum() == 0


def test_without_cell_types_only_the_label_free_scores_are_columns():
    assert metric_order([_metrics(labels=False)]) == ["iLISI", "PCR comparison", "Batch correction"]
    note = shown(scores_caption(_metrics(labels=False)))
    assert "No cell-type column was given" in note and "no bio conservation" in note


def test_the_caption_says_when_the_scores_come_from_a_sample():
    note = shown(scores_caption(_metrics(sampled=True)))
    assert "Scores computed on a sample of 20,000 of 50,000 cells (seed 0)" in note and "stratified" in note
    assert "scib-metrics 0.6.1" in note and "not min-max scaled" in note
    assert "all 599 cells" in shown(scores_caption(_metrics()))
    left_out = shown(scores_caption({**_metrics(), "cells_scored": 500}, cells_total=599))
    assert "99 cells without a cell type were left out" in left_out


def test_the_heatmap_draws_models_by_metrics_in_order_with_the_values_and_stars():
    scores = scores_frame({"Baseline": _metrics(), "Harmony": _metrics(0.05)})
    plot = scores_heatmap(scores, best_per_column(scores), "scIB")
    heat = plot.get(0)
    assert list(heat.dimension_values("score", expanded=False)) == list(scores.columns)
    assert list(heat.dimension_values("model", expanded=False)) == ["Baseline", "Harmony"]
    texts = [t for layer in (plot.get(1), plot.get(2)) for t in layer.dimension_values("text")]
    assert len(texts) == scores.size and f"{0.944 + 0.05:.2f} {BEST}" in texts and "0.94" in texts
    figure = hv.render(plot, backend="bokeh")
    assert list(figure.x_range.factors) == list(scores.columns)
    hv.render(scores_heatmap(scores_frame({"A": _metrics(labels=False)})), backend="bokeh")


def test_untrained_models_are_named_so_in_their_rows():
    runs = [SimpleNamespace(id="1", model_id="harmony", parameters={"weights": "installed"}),
            SimpleNamespace(id="2", model_id="geneformer", parameters={"weights": "generated"})]
    labels = row_labels(runs, {"harmony": "Harmony (on the baseline's 50 PCs)", "geneformer": "Geneformer"})
    assert labels == {"1": "Harmony", "2": "Geneformer (untrained)"}


def test_runs_of_the_group_not_done_are_said_with_their_stage_or_error_as_text():
    runs = [SimpleNamespace(id="1", status="running", stage="embedding: embeddings reused", error=None),
            SimpleNamespace(id="2", status="failed", stage="failed", error="<img src=x onerror=alert(1)> ran out"),
            SimpleNamespace(id="3", status="done", stage="done", error=None)]
    note = pending_note(runs, {"1": "Harmony", "2": "scGPT (untrained)", "3": "Baseline"})
    assert shown(note) == ("Harmony : running (embedding: embeddings reused) — shown here when done. scGPT "
                           "(untrained) : failed — <img src=x onerror=alert(1)> ran out")
    assert "<img" not in note


def _cells(n: int = 300, seed: int = 0, cell_types: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    cells = pd.DataFrame({"cell_id": [f"c{i}" for i in range(n)], "batch": rng.choice(["lab-A", "lab-B"], n),
                          "umap_1": rng.normal(size=n), "umap_2": rng.normal(size=n)})
    if cell_types:
        cells.insert(2, "cell_type", rng.choice(["B", "T", ""], n))
    return cells


def test_each_model_gets_a_umap_by_batch_and_one_by_cell_type_in_shared_colours():
    from dashboards.integration import NO_CELL_TYPE, umap_cells

    cells = umap_cells(_cells())
    assert NO_CELL_TYPE in set(cells["cell_type"])  # a cell without a type is named, not blank
    no_t = cells[cells["cell_type"] != "T"]  # a model whose cells lack a type still lists it, in the same colour
    types = ["B", "T", NO_CELL_TYPE]

    def legend(plot) -> list[tuple[str, str]]:
        figure = hv.render(plot, backend="bokeh")
        assert (figure.frame_width, figure.frame_height) == (280, 280)  # every model's maps line up
        return [(item.label["value"], item.renderers[0].glyph.fill_color) for item in figure.legend[0].items]

    harmony, other = umap_pair(cells, "Harmony", ["lab-A", "lab-B"], types), umap_pair(no_t, "X", ["lab-A", "lab-B"],
                                                                                        types)
    assert len(harmony) == 2 and [label for label, _ in legend(harmony[0])] == ["lab-A", "lab-B"]
    assert legend(harmony[1]) == legend(other[1]) and [label for label, _ in legend(other[1])] == sorted(types)
    assert len(umap_pair(_cells(cell_types=False), "Harmony", ["lab-A", "lab-B"], None)) == 1


def test_each_models_maps_keep_their_own_ranges_and_every_cell_inside_them():
    """Two models' UMAPs in one page: each model's coordinates are a space of their own. Panel links the axes of
    every HoloViews pane of a layout whose axes share a name, so the second model's maps were drawn in ranges
    shared with the first's and its cells outside them were not drawn (docs/images/integration.png)."""
    import panel as pn
    from bokeh.models import Plot, Range1d

    from dashboards.integration import NO_CELL_TYPE, umap_cells, umap_panes

    first = umap_cells(_cells())
    second = first.assign(umap_1=first["umap_1"] * 3 + 40, umap_2=first["umap_2"] * 0.5 - 25)  # far apart
    page = pn.Column(umap_panes(first, "Baseline", ["lab-A", "lab-B"], ["B", "T", NO_CELL_TYPE]),
                     umap_panes(second, "Harmony", ["lab-A", "lab-B"], ["B", "T", NO_CELL_TYPE]))
    root = page.get_root()
    figures = [f for f in root.select({"type": Plot}) if f.title is not None and f.title.text]
    by_model = {name: [f for f in figures if f.title.text.startswith(name)] for name in ("Baseline", "Harmony")}
    assert [len(v) for v in by_model.values()] == [2, 2], [f.title.text for f in figures]
    for name, cells in (("Baseline", first), ("Harmony", second)):
        for figure in by_model[name]:
            for axis, column in ((figure.x_range, "umap_1"), (figure.y_range, "umap_2")):
                assert isinstance(axis, Range1d)
                low, high = sorted((axis.start, axis.end))
                assert low <= cells[column].min() and high >= cells[column].max(), (figure.title.text, column,
                                                                                   low, high)
    harmony_ranges = {id(f.x_range) for f in by_model["Harmony"]}
    assert not harmony_ranges & {id(f.x_range) for f in by_model["Baseline"]}  # zooming one never moves the other


def test_default_columns_pick_the_batch_by_name_not_by_position():
    columns = {"celltype": {"B": 50, "T": 60, "NK": 20}, "batch": {"lab-A": 65, "lab-B": 65}}
    assert default_columns(columns) == ("batch", "celltype")
    assert default_columns({"donor_id": {"d1": 5, "d2": 5}, "cell_type": {"a": 5, "b": 5}}) == ("donor_id",
                                                                                                 "cell_type")
    assert default_columns({"x": {"a": 1, "b": 1, "c": 1}, "y": {"p": 1, "q": 1}}) == ("y", None)
    assert default_columns({}) == (None, None)
    assert group_submission("batch", "") == {"label_column": None, "options": {"batch_column": "batch"}}


@pytest.fixture(scope="module")
def multibatch(tmp_path_factory):
    from tests.multibatch import write_multibatch

    return write_multibatch(PBMC, tmp_path_factory.mktemp("multibatch") / "two-labs.h5ad")


def _ingest(platform, path, name: str):
    with open(path, "rb") as fh:
        return platform.datasets.ingest(fh, name)


def test_the_run_panel_shows_the_integration_form_and_submits_a_group(platform, multibatch, monkeypatch):
    from dashboards.dashboard import Dashboard

    ds = _ingest(platform, multibatch, "two-labs.h5ad")
    dash = Dashboard(platform)
    dash.data.refresh()
    dash.data.dataset = ds.id
    dash.picker.application = "embedding-integration"
    form = dash.runs.forms["embedding-integration"]
    assert form.dataset == ds.id
    assert (form.batch_column, form.cell_type_column) == ("batch", "celltype")
    assert "batch" not in form.param.cell_type_column.objects.values()  # the batch cannot be the cell types
    assert form.models == ["baseline", "harmony"]
    assert set(form.param.models.objects.values()) == {"baseline", "harmony", "geneformer", "scgpt", "uce",
                                                        "nicheformer", "transcriptformer"}
    assert shown(form.about.object).endswith("two-labs.h5ad — 599 cells · candidate columns: celltype (8 values), "
                                             "batch (2 values)")

    calls = []

    def submit_group(application, models, dataset, **kwargs):
        calls.append((application, models, dataset, kwargs))
        return [SimpleNamespace(id=f"run-{m}", model_id=m) for m in models]

    monkeypatch.setattr(platform.runs, "submit_group", submit_group)
    monkeypatch.setattr(platform.runs, "status", lambda run_id: {
        "status": "running", "stage": "embedding: embeddings reused", "progress": 0.3, "cells_done": 599,
        "cells_total": 599, "eta_s": None, "error": None, "device": "cpu", "model": run_id[4:]})
    asyncio.run(form._on_run(None))
    assert calls == [("embedding-integration", ["baseline", "harmony"], ds.id,
                      {"label_column": "celltype", "options": {"batch_column": "batch"}, "user": form.user})]
    assert "Submitted 2 runs" in shown(form.message.object)
    assert set(dash.runs._mine) == {"run-baseline", "run-harmony"}  # followed like the panel's own runs
    dash.runs.apply({"names": {"baseline": "Baseline", "harmony": "Harmony"}, "history": dash.runs.history.value,
                     "statuses": {r: platform.runs.status(r) for r in dash.runs._mine}})
    texts = [shown(text.object) for _bar, text in dash.runs._mine.values()]
    assert any("embedding: embeddings reused" in t for t in texts)
    followed = [c for c in dash.runs.in_flight.objects if "followed-run" in c.css_classes]
    assert len(followed) == 2 and all(c.visible for c in followed)
    dash.picker.application = "cell-type-annotation"  # under the annotation form: not these runs' bars
    assert dash.runs.application == "cell-type-annotation" and not any(c.visible for c in followed)
    dash.picker.application = "embedding-integration"
    assert all(c.visible for c in followed)


def test_the_sidebar_has_no_single_model_picker_where_the_form_picks_several(platform):
    """The integration form picks its models; the sidebar's one-model picker and card (the baseline described by
    the annotation head it feeds) would only mislead there."""
    from dashboards.catalog import ModelPicker

    picker = ModelPicker(platform)
    layout = picker.__panel__()
    select = next(o for o in layout.objects if "model-picker" in (o.css_classes or []))
    note = next(o for o in layout.objects if "form-picks-models" in (o.css_classes or []))
    picker.application = "cell-type-annotation"
    assert select.visible and not note.visible
    picker.application = "embedding-integration"
    assert not select.visible and note.visible and "picks its models" in note.object
    baseline = next(m for m in platform.models("embedding-integration") if m.id == "baseline")
    assert "logistic regression" not in baseline.name  # the model is the embedding, not the annotation's head


def test_a_refused_submission_says_the_services_words_as_text(platform, multibatch):
    ds = _ingest(platform, multibatch, "two-labs.h5ad")
    form = IntegrationForm(platform, dataset=ds.id, datasets=platform.datasets.list())
    form.models = []
    asyncio.run(form._on_run(None))
    assert form.message.alert_type == "danger" and "Give one or more models" in shown(form.message.object)

    one = _ingest(platform, PBMC, "one-lab.h5ad")  # no batch column: cell types as batches, some too small
    form.param.update(datasets=platform.datasets.list(), dataset=one.id)
    assert form.batch_column == "celltype" and form.cell_type_column == ""
    form.models = ["baseline"]
    asyncio.run(form._on_run(None))
    with pytest.raises(ValueError) as refused:
        platform.runs.submit_group("embedding-integration", ["baseline"], one.id,
                                   options={"batch_column": "celltype"})
    assert "fewer than 10 cells" in str(refused.value)
    assert form.message.alert_type == "danger" and form.message.object == md(refused.value)  # as text, escaped
    assert shown(form.message.object) == str(refused.value)
    form.dataset = ""
    asyncio.run(form._on_run(None))
    assert "Pick or upload the dataset" in shown(form.message.object)


def _integration_runs(platform, group: list[tuple[str, dict, str]]) -> list[str]:
    """Finished integration runs of one group (model id, metrics, weights), each with its per-cell table."""
    from store.artifacts import new_id
    from store.engine import write_session
    from store.tables import Run

    ds = _ingest(platform, PBMC, "two-labs.h5ad")
    group_id, ids = new_id(), []
    for i, (model_id, metrics, weights) in enumerate(group):
        run_id = new_id()
        folder = platform.artifacts.run_dir(run_id, create=True)
        _cells(seed=i).to_parquet(folder / "predictions.parquet", index=False)
        with write_session(platform.engine) as s:
            s.add(Run(id=run_id, application_id="embedding-integration", model_id=model_id, dataset_id=ds.id,
                      status="done", label_column="celltype", group_id=group_id, metrics=metrics, cells_total=599,
                      parameters={"batch_column": "batch", "weights": weights}, provenance={}))
        ids.append(run_id)
    return ids


def _text(view) -> str:
    return " ".join(shown(p.object) for p in view.body.select(lambda o: hasattr(o, "object") and
                                                              isinstance(o.object, str)))


def test_the_integration_view_shows_the_groups_table_heatmap_umaps_and_untrained_notes(platform):
    import panel as pn

    baseline, geneformer = _integration_runs(platform, [("baseline", _metrics(), "installed"),
                                                        ("geneformer", _metrics(0.1), "generated")])
    view = IntegrationView(platform, run=geneformer)
    assert view.body.visible
    table = next(w for w in view.body.select(pn.widgets.Tabulator))
    frame = table.value.set_index(MODEL)
    assert list(frame.index) == ["Baseline", "Geneformer (untrained)"]
    for name, value in {**BIO, **BATCH}.items():  # the numbers are the runs' own
        assert frame.loc["Baseline", name] == f"{value:.3f}"
        assert frame.loc["Geneformer (untrained)", name] == f"{value + 0.1:.3f} {BEST}"
    bold = table._get_style_data()["data"]  # what the browser gets: (row, column) -> CSS of the cell
    columns = list(table.value.columns)
    assert {(r, columns[c - 1]) for r, cells in bold.items() for c in cells} == \
        {(1, c) for c in columns if c != MODEL}  # every score of the better model, nothing else
    text = _text(view)
    assert f"Geneformer (untrained): generated, {UNTRAINED}" in text
    assert "Embeddings and batch integration of two-labs.h5ad" in text and "Batches from batch" in text
    umaps = view.body.select(lambda o: "integration-umap" in getattr(o, "css_classes", []))
    assert len(umaps) == 4  # two models, by batch and by cell type
    assert len(view.body.select(lambda o: "integration-heatmap" in getattr(o, "css_classes", []))) == 1

    objects = list(view.body.objects)
    view.finished += 1  # nothing of the group changed: nothing drawn again
    assert list(view.body.objects) == objects
    view.run = ""
    assert not view.body.visible


def test_the_results_view_hands_integration_runs_to_their_view_and_opens_a_run_clicked_in_the_history(platform):
    from dashboards.dashboard import Dashboard

    baseline, harmony = _integration_runs(platform, [("baseline", _metrics(), "installed"),
                                                     ("harmony", _metrics(0.05), "installed")])
    dash = Dashboard(platform)
    results = dash.results
    assert "integration" in next(k for k, v in results.param.run.objects.items() if v == harmony)
    assert harmony not in results.param.compare_with.objects.values()  # no annotation comparison with it
    dash.runs.refresh_history()
    row = list(dash.runs.history.value["id"]).index(harmony)
    dash.runs._on_history_click(SimpleNamespace(row=row))
    assert results.run == harmony and results.own is False
    view = results.views["embedding-integration"]
    assert view.run == harmony and view.body.visible
    for annotation_view in (results._summary, results._confusion, results._umap, results._details):
        assert annotation_view().objects == []  # the annotation views stand aside
    results.run = ""
    assert not view.body.visible and view.run == ""


def test_the_data_panel_shows_a_datasets_stored_embeddings_and_deletes_them(platform, multibatch):
    """Size per dataset, deletable from the page: what the store holds is read at each run's end."""
    import anndata as ad

    from dashboards.data import DataPanel, size_text
    from inference.backends import create_backend
    from inference.embedding import embed_dataset, embedding_key

    ds = _ingest(platform, multibatch, "stored-embeddings.h5ad")
    panel = DataPanel(platform)
    panel.dataset = ds.id
    assert shown(panel.embeddings.object).startswith("Stored embeddings: none yet")
    assert not panel.embeddings_button.visible

    backend = create_backend("baseline", None, None)
    cells = ad.read_h5ad(multibatch)
    backend.fit(cells)
    embed_dataset(cells, backend, lambda *a: None, store=platform.datasets.embeddings,
                  key=embedding_key(backend, backend.provenance(), ds.sha256))
    size = platform.datasets.embeddings_size(ds)
    assert size > 0
    panel.finished += 1  # a run ended: read again
    assert shown(panel.embeddings.object).startswith(f"Stored embeddings: 1 ({size_text(size)}), each computed once")
    assert panel.embeddings_button.visible

    asyncio.run(panel._delete_embeddings(None))
    assert platform.datasets.embeddings_size(ds) == 0 and platform.datasets.path(ds).is_file()  # the file stays
    assert shown(panel.status.object) == (f"Deleted the stored embeddings of stored-embeddings.h5ad "
                                          f"({size_text(size)}); the next run of each model computes them again.")
    assert not panel.embeddings_button.visible


def test_sizes_are_written_as_people_read_them():
    from dashboards.data import size_text

    assert [size_text(n) for n in (0, 999, 1000, 2_456_789, 3 * 10**9, 5 * 10**12)] == [
        "0 bytes", "999 bytes", "1.0 kB", "2.5 MB", "3.0 GB", "5.0 TB"]
