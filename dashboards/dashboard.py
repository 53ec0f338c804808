"""The Dashboard: what ``panel serve panel_serve.py`` serves at / and what a notebook displays."""

from __future__ import annotations

import panel as pn

from app.platform import Platform
from dashboards.catalog import CatalogView

TITLE = "Helical AI Platform"


class Dashboard(pn.viewable.Viewer):
    """The whole page, composed of smaller views; every session gets its own, sharing one Platform."""

    def __init__(self, platform: Platform, **params) -> None:
        super().__init__(**params)
        self._platform = platform
        self.catalog = CatalogView(platform)

    def _compute_status(self) -> str:
        status = self._platform.compute_status()
        if status["state"] != "ready":
            return f"**Compute:** {status['state']} {status.get('error', '')}"
        return (f"**Compute:** {status['kind']}, {status['workers']} workers, {status['threads']} threads, "
                f"{status['gpus']} GPUs")

    def __panel__(self) -> pn.viewable.Viewable:
        settings = "  \n".join(f"**{k}:** `{v}`" for k, v in self._platform.settings.describe().items())
        status = pn.pane.Markdown(self._compute_status(), css_classes=["compute-status"])
        if pn.state.curdoc is not None and pn.state.curdoc.session_context is not None:
            cb = pn.state.add_periodic_callback(lambda: setattr(status, "object", self._compute_status()),
                                                period=2000, count=60)
            pn.state.on_session_destroyed(lambda _ctx: cb.stop())
        return pn.Column(self.catalog, pn.pane.Markdown(settings), status, sizing_mode="stretch_width")

    def servable_page(self) -> pn.template.BaseTemplate:
        template = pn.template.FastListTemplate(title=TITLE, main=[self], header_background="#2b5797")
        return template.servable()
