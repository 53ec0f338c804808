"""Colouring a run's UMAP by the query's own columns and by a gene's expression (issue 39, item 10), on real
data: a copy of the PBMC file with a donor column and a hostile column name."""

from __future__ import annotations

import anndata as ad
import holoviews as hv
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from tests.conftest import PBMC
from tests.test_views import _done_run_with_cells

HOSTILE = '<img src=x onerror="alert(1)">'


def _run_on_a_query_with_donors(platform, tmp_path) -> tuple[str, ad.AnnData]:  # noqa: ANN001
    """A finished run whose query is PBMC with 'donor' and a hostile-named QC column, its cells in the file's order."""
    from store.artifacts import new_id
    from store.engine import write_session
    from store.tables import Run

    query = ad.read_h5ad(PBMC)
    query.obs["donor"] = pd.Categorical(np.where(np.arange(query.n_obs) % 2, "donor-A", "donor-B"))
    query.obs[HOSTILE] = np.arange(query.n_obs, dtype=float)
    path = tmp_path / "query.h5ad"
    query.write_h5ad(path)
    with open(path, "rb") as fh:
        ds = platform.datasets.ingest(fh, "query.h5ad")
    source = _done_run_with_cells(platform, query.n_obs)
    table = platform.runs.cells(source).assign(cell_id=list(query.obs_names))
    run_id = new_id()
    table.to_parquet(platform.artifacts.run_dir(run_id, create=True) / "predictions.parquet", index=False)
    with write_session(platform.engine) as s:
        s.add(Run(id=run_id, application_id="cell-type-annotation", model_id="baseline", dataset_id=ds.id,
                  status="done", label_column="celltype", metrics={}, provenance={}))
    return run_id, query


@pytest.mark.slow
def test_the_umap_colours_by_the_querys_columns_and_a_genes_expression(platform, tmp_path):
    from dashboards.results import ResultsView

    run_id, query = _run_on_a_query_with_donors(platform, tmp_path)
    view = ResultsView(platform=platform)
    view.run = run_id
    view.load_query_colours()  # the query's columns and genes: read when asked for (tests/test_lazy_page.py)
    offered = view.param.color_by.names
    assert offered["donor (query)"] == "query:donor" and offered["celltype (query)"] == "query:celltype"
    assert offered[f"{HOSTILE} (query)"] == f"query:{HOSTILE}"  # a picker's option: plain text, not markup
    view.gene_picker.value_input = "CD3"  # the gene box is sent the matches of what is typed
    assert "CD3E" in view.gene_picker.options and len(view.gene_picker.options) < query.n_vars

    view.color_by = "query:donor"
    drawn = view._cache[run_id]["query:donor"]
    assert list(drawn[:4]) == ["donor-B", "donor-A", "donor-B", "donor-A"]
    hv.render(view._umap().objects[0].object, backend="bokeh")
    view.color_by = f"query:{HOSTILE}"
    plot = hv.render(view._umap().objects[0].object, backend="bokeh")
    assert plot.title.text == f"UMAP by {HOSTILE} (query)"  # Bokeh draws a title as text

    view.gene = "CD3E"
    assert view.color_by == "gene:CD3E"
    expression = view._cache[run_id]["gene:CD3E"].to_numpy()
    j = list(query.var_names).index("CD3E")
    expected = np.asarray(query.X[:, j].toarray() if sp.issparse(query.X) else query.X[:, j]).ravel()
    assert np.allclose(expression, expected) and expected.max() > 0
    image = view._umap().objects[0].object
    plot = hv.render(image, backend="bokeh")
    assert plot.title.text == "UMAP by CD3E expression"
    assert any(getattr(r.glyph, "color_mapper", None) is not None for r in plot.renderers)  # a colour scale

    view.gene = HOSTILE
    assert view.gene_message.visible and "No gene named" in view.gene_message.object
    assert "<img" not in view.gene_message.object  # escaped
    assert view.color_by == "gene:CD3E"  # the colour shown stays


def test_a_genes_column_is_read_a_chunk_at_a_time(platform, tmp_path, monkeypatch):
    """Bounded memory: X is read ROWS_PER_READ cells at a time, never whole."""
    import app.result_columns as rc

    run_id, query = _run_on_a_query_with_donors(platform, tmp_path)
    monkeypatch.setattr(rc, "ROWS_PER_READ", 100)
    values = rc.query_values(platform, run_id, "gene:CD3E", list(query.obs_names)[::-1])
    j = list(query.var_names).index("CD3E")
    expected = np.asarray(query.X[:, j].toarray()).ravel()[::-1]
    assert np.allclose(values, expected)
    try:
        rc.query_values(platform, run_id, "gene:NOT-A-GENE", list(query.obs_names))
    except rc.UnknownGene:
        pass
    else:
        raise AssertionError("an unknown gene was read")
