"""The Dashboard: what ``panel serve panel_serve.py`` serves at / and what a notebook displays."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import panel as pn
import param
from panel.theme.fast import Fast as PanelFast

from dashboards.annotators import AnnotatorsView
from dashboards.catalog import ModelPicker
from dashboards.data import DataPanel
from dashboards.results import ResultsView
from dashboards.runs import RunPanel
from dashboards.safe_text import md
from dashboards.usage import UsageView
from dashboards.view import PlatformView

TITLE = "Helical AI Platform"
# the page's type: the system's own sans-serif (Panel's Fast design asks Google for Open Sans, which an offline lab
# server cannot reach)
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"
# polls get their own threads: a slow poll (a scheduler that does not answer) never queues the API's calls
_POLLS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="dashboard-poll")
POLL_MS = 1000
_warmed = threading.Event()


def warm_up_once() -> None:
    """Compile datashader's kernels in the background when the first session opens."""
    if not _warmed.is_set():
        _warmed.set()
        from dashboards.plots import warm_up

        threading.Thread(target=warm_up, name="datashader-warm-up", daemon=True).start()


def link(source: param.Parameterized, target: param.Parameterized, *names: str) -> None:
    """Keep ``target``'s parameters ``names`` equal to ``source``'s, now and on every change: how views share
    state without calling each other."""
    target.param.update(**{name: getattr(source, name) for name in names})
    source.param.watch(lambda *events: target.param.update(**{e.name: e.new for e in events}), list(names))


def deferred(view: object, name: str) -> pn.viewable.Viewable:
    """``view`` (or what a function returns) built only once the page has loaded in the browser; until then a
    placeholder with the class ``deferred-<name>`` holds its place."""
    make = view if callable(view) and not isinstance(view, param.Parameterized) else (lambda: view)
    return pn.panel(pn.param.ParamFunction(make, defer_load=True, sizing_mode="stretch_width",
                                           css_classes=[f"deferred-{name}"]))


class Fast(PanelFast):
    """Panel's Fast design without its one asset from another host (a Google font): everything the page loads comes
    from this server (``tests/test_page_fit.py`` fails on any request elsewhere). Named as Panel's: Panel finds a
    design's own files (``fast/js/fast_design.js``) by its class's name."""

    _resources = {**PanelFast._resources, "font": {}}


class Dashboard(PlatformView):
    """The whole page, composed of smaller views; every session gets its own, sharing one Platform.

    The views are linked here, by parameters: the picked application and model and the data panel's dataset flow
    into the run panel; a finished run tells the results view to offer it (and the data panel to read the stored
    embeddings again), and one of this session's runs that finished, or one clicked in the run history, is
    opened there; an annotator saved (results view) or
    deleted (annotators view) bumps ``annotators_changed``, which the annotators view and the run panel's
    annotator choices follow."""

    annotators_changed = param.Integer(default=0, doc="Bumped whenever this session saves or deletes an annotator.")

    def __init__(self, platform=None, **params) -> None:  # noqa: ANN001 - app.platform.Platform
        super().__init__(platform, **params)
        self.picker = ModelPicker(self.platform)
        self.data = DataPanel(self.platform)
        self.runs = RunPanel(self.platform)
        # a served session's page not yet loaded (Panel's own test for deferred loading): the results read their
        # runs when first shown; elsewhere (a notebook, a test) at once
        self.results = ResultsView(self.platform, lazy=not pn.state.loaded)
        self.annotators = AnnotatorsView(self.platform)
        self.usage = UsageView(self.platform)
        link(self.picker, self.runs, "application", "model")
        link(self.data, self.runs, "dataset", "datasets")
        link(self.runs, self.results, "finished")
        # a run clicked in the history opens, clicked again (the run panel triggers ``opened`` anew) too
        self.runs.param.watch(lambda event: self.results.open(event.new), "opened")
        link(self.runs, self.data, "finished")
        # two views change the annotators: a shared counter, so neither needs to know the other's count
        self.results.param.watch(self._annotators_changed, "saved")
        self.annotators.param.watch(self._annotators_changed, "deleted")
        link(self, self.annotators, "annotators_changed")
        link(self, self.runs, "annotators_changed")
        self._callback = None
        self.compute = pn.pane.Markdown(self._compute_status(), css_classes=["compute-status"])
        warm_up_once()

    def _annotators_changed(self, *_events) -> None:  # noqa: ANN002
        self.annotators_changed += 1

    def _compute_status(self) -> str:
        status = self.platform.compute_status()
        if status["state"] != "ready":
            return f"**Compute:** {md(status['state'])} {md(status.get('error', ''))}"
        return (f"**Compute:** {status['kind']} · {status['workers']} workers · {status['threads']} threads · "
                f"{status['gpus']} GPUs")

    def start_polling(self) -> None:
        """Progress and history refresh every second, for this session only; stopped when it closes."""
        if self._callback is None:
            self._callback = pn.state.add_periodic_callback(self._poll, period=POLL_MS)
            if pn.state.curdoc is not None and pn.state.curdoc.session_context is not None:
                pn.state.on_session_destroyed(lambda _ctx: self._callback.stop())

    async def _poll(self) -> None:
        """Database and scheduler reads in a thread: the event loop is shared by every session and API call."""
        loop = asyncio.get_running_loop()
        snap, compute = await loop.run_in_executor(_POLLS, lambda: (self.runs.snapshot(), self._compute_status()))
        self.runs.apply(snap)
        self.open_finished(snap)
        if compute != self.compute.object:
            self.compute.object = compute

    def open_finished(self, snap: dict) -> None:
        """A run of this session that finished (the snapshot's statuses are this session's runs) opens in the
        results, whichever run they show: what the user submitted last is what they wait for."""
        done = [run_id for run_id, status in snap["statuses"].items() if status["status"] == "done"]
        if done:
            self.results.open(done[-1])

    def sidebar(self) -> list:
        return [self.picker, self.compute, self.usage]

    def __panel__(self) -> pn.viewable.Viewable:
        """The results first, so that a finished run's headline is what a laptop's screen shows; then the data and
        the run that make the next one, the saved annotators and the catalog.

        Each section is built after the page has reached the browser (Panel's deferred loading: a placeholder in
        the page, the section sent over the session's websocket once it has loaded), so that a new page is answered
        without reading a run, a file or a table, and without building every widget first (issue 39, item 12)."""
        self.start_polling()
        return pn.Column(deferred(self.results, "results"), pn.layout.Divider(), deferred(self.data, "data"),
                         pn.layout.Divider(), deferred(self.runs, "runs"), pn.layout.Divider(),
                         deferred(self.annotators, "annotators"), pn.layout.Divider(),
                         deferred(lambda: pn.Column("## Catalog", self.picker.table, sizing_mode="stretch_width"),
                                  "catalog"),
                         sizing_mode="stretch_width")

    def servable_page(self) -> pn.template.BaseTemplate:
        template = pn.template.FastListTemplate(title=TITLE, sidebar=self.sidebar(), main=[self],
                                                header_background="#2b5797", sidebar_width=340, design=Fast,
                                                font=FONT, font_url="")
        return template.servable()
