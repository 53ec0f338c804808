"""A new page is built without reading what its sections fetch when shown (issue 39, item 12).

Building the Dashboard of a new session and its page (what ``GET /`` does, before the first byte) must not open
a run's query file, read a run's cells or the columns of its predictions file, nor list the runs: each section is
deferred until the page has loaded, and the results view reads its runs when first shown. Once shown, the query's
columns and genes are still read only when asked for (the button, or a gene typed), and the gene box is sent a
bounded number of matches, never the query's whole gene list.
"""

from __future__ import annotations

import sys

import panel as pn
import pytest
from bokeh.document import Document
from panel.io.state import set_curdoc

from tests.test_query_colours import _run_on_a_query_with_donors


@pytest.fixture
def counted(monkeypatch, platform):  # noqa: ANN001
    """Calls to the readers the page could use: the query file's opening, a run's cells, its file's columns, the
    results view's list of runs."""
    import app.result_columns as result_columns
    import dashboards.results as results

    calls: dict[str, int] = {"open_query": 0, "cells": 0, "run_columns": 0, "runs_list": 0}

    def counting(name, fn, caller: str = ""):  # noqa: ANN001, ANN202
        def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            if caller in sys._getframe(1).f_code.co_filename:
                calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(result_columns, "_open_query", counting("open_query", result_columns._open_query))
    monkeypatch.setattr(results, "run_columns", counting("run_columns", results.run_columns))
    monkeypatch.setattr(platform.runs, "cells", counting("cells", platform.runs.cells))
    # the results view's list of runs (the run history, another section, keeps its own)
    monkeypatch.setattr(platform.runs, "list", counting("runs_list", platform.runs.list, "dashboards/results.py"))
    return calls


def test_a_new_page_reads_no_run_file_or_table_until_its_sections_are_shown(platform, tmp_path, counted):
    from dashboards.dashboard import Dashboard

    run_id, _ = _run_on_a_query_with_donors(platform, tmp_path)
    for name in counted:
        counted[name] = 0
    doc = Document()
    pn.state._loaded[doc] = False  # a served session's document, its page not loaded in the browser yet
    try:
        with set_curdoc(doc):
            dashboard = Dashboard(platform=platform)
            dashboard.servable_page().server_doc(doc)  # the page a new session's GET / sends
            assert counted == {"open_query": 0, "cells": 0, "run_columns": 0, "runs_list": 0}
            assert not dashboard.results.run
            pn.state._on_load(doc)  # the browser has the page: the deferred sections are built now
    finally:
        dashboard._callback.stop()
        pn.state._loaded.pop(doc, None)
        pn.state._onload.pop(doc, None)
    assert dashboard.results.run == run_id
    assert counted["runs_list"] >= 1 and counted["run_columns"] >= 1
    assert counted["open_query"] == 0  # the query's columns and genes: only when asked for
    assert not any(k.startswith("query:") for k in dashboard.results.param.color_by.names.values())


def test_the_querys_colours_and_genes_are_read_when_asked_for_and_searched_on_the_server(platform, tmp_path,
                                                                                         counted):
    from dashboards.results import GENE_MATCHES, ResultsView

    run_id, query = _run_on_a_query_with_donors(platform, tmp_path)
    view = ResultsView(platform=platform)
    assert view.run == run_id and counted["open_query"] == 0 and view.gene_picker.options == []

    view.gene_picker.value_input = "c"  # the first letter typed: the genes are read once, matches sent
    assert counted["open_query"] == 1
    offered = view.gene_picker.options
    assert 0 < len(offered) <= GENE_MATCHES < query.n_vars
    assert all("c" in g.lower() for g in offered)
    view.gene_picker.value_input = "cd3"
    assert counted["open_query"] == 1 and "CD3E" in view.gene_picker.options
    assert all(g.lower().startswith("cd3") for g in view.gene_picker.options[:2])
    assert view.param.color_by.names["donor (query)"] == "query:donor"  # the query's columns offered too

    view.gene = "CD3E"
    assert view.color_by == "gene:CD3E"


def test_the_button_offers_the_querys_columns(platform, tmp_path, counted):
    from dashboards.results import ResultsView

    run_id, _ = _run_on_a_query_with_donors(platform, tmp_path)
    view = ResultsView(platform=platform)
    assert view.query_button.visible and "donor (query)" not in view.param.color_by.names
    view.query_button.clicks += 1
    assert counted["open_query"] == 1 and not view.query_button.visible
    assert view.param.color_by.names["donor (query)"] == "query:donor"
    view.load_query_colours()  # asked again for the same run: not read again
    assert counted["open_query"] == 1
