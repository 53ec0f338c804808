"""The results follow the user (issue 39, item 6): a run of this session that finishes opens, whichever run is
shown, and while a run's UMAP loads the previous run's map never stands under the new run's scores."""

from __future__ import annotations

import panel as pn

from tests.test_views import _done_run_with_cells


def _watch_headline(results) -> list[tuple[str, str]]:  # noqa: ANN001 - dashboards.results.ResultsView
    """(header's run, map's run) after every change of the headline or of its map, as a browser would see them:
    the map's run is the one its plot was built for, or the run its loading note names."""
    built: dict[int, str] = {}
    original = results._umap

    def tagged(run_id=None, color=None):  # noqa: ANN001, ANN202
        shown = original(run_id, color)
        built[id(shown)] = run_id or results.run
        return shown

    results._umap = tagged
    steps: list[tuple[str, str]] = []
    watched: set[int] = set()

    def record(*_events) -> None:  # noqa: ANN002
        header, flex = results.headline.objects
        header_run = next(c[4:] for c in header.css_classes if c.startswith("run-"))
        (shown,) = flex.objects[1].objects
        if id(shown) in built:
            steps.append((header_run, built[id(shown)]))
        else:  # the note naming the run whose map is loading
            assert "Loading the UMAP of" in shown.object and header_run[:8] in shown.object
            steps.append((header_run, "loading " + header_run))
        if id(flex.objects[1]) not in watched:
            watched.add(id(flex.objects[1]))
            flex.objects[1].param.watch(record, "objects")

    results.headline.param.watch(record, "objects")
    return steps


def test_a_finished_run_opens_and_header_scores_and_map_always_show_the_same_run(platform):
    from dashboards.dashboard import Dashboard

    first = _done_run_with_cells(platform, 60, run_fields={"metrics": {}})
    dash = Dashboard(platform)
    results = dash.results
    assert results.run == first and results.map_run == first
    steps = _watch_headline(results)

    second = _done_run_with_cells(platform, 80, run_fields={"metrics": {}})
    dash.runs.finished += 1  # what the run panel does when one of this session's runs ends
    dash.open_finished({"statuses": {second: {"status": "done"}}})  # what the poll then does
    assert results.run == second  # opened although another run was shown
    assert steps == [(second, "loading " + second), (second, second)]

    steps.clear()
    results.color_by = "confidence"  # another colour: the same run's map, drawn again
    assert steps == [(second, second)]
    steps.clear()
    dash.runs.opened = first  # clicked in the history
    assert results.run == first and steps == [(first, "loading " + first), (first, first)]
    steps.clear()
    results.run = second
    dash.runs.param.trigger("opened")  # the same run clicked again (the run panel triggers it): opened again
    assert results.run == first
    assert all(header == shown.removeprefix("loading ") for header, shown in steps) and len(steps) == 4

    # a run that failed, or another session's run, opens nothing
    dash.open_finished({"statuses": {second: {"status": "failed"}}})
    assert results.run == first


def test_served_the_map_is_drawn_on_the_next_tick_after_the_note_naming_its_run(platform, monkeypatch):
    """Served, the note naming the run goes to the browser with the run's scores; the map is drawn on the next
    tick, and a map whose run or colour changed meanwhile is never drawn."""
    from dashboards.results import ResultsView

    first = _done_run_with_cells(platform, 60)
    second = _done_run_with_cells(platform, 70)
    view = ResultsView(platform=platform)
    later: list = []
    monkeypatch.setattr(pn.state, "execute", lambda callback, schedule=False: later.append(callback))
    view.run = second if view.run == first else first
    shown = view.run
    slot = view.headline.objects[1].objects[1]
    assert "Loading the UMAP of" in slot.objects[0].object and len(later) == 1
    view.run = first if shown == second else second  # switched again before the map was drawn
    later.pop(0)()  # the stale map: dropped
    assert "Loading the UMAP of" in slot.objects[0].object
    later.pop(0)()
    drawn = view.headline.objects[1].objects[1].objects[0]
    assert "umap-loading" not in drawn.css_classes and isinstance(drawn, pn.Column)
