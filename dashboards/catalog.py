"""The catalog section: applications and the models that serve them, read from the database."""

from __future__ import annotations

import pandas as pd
import panel as pn
import param

from app.platform import Platform

WEIGHTS_WORDS = {
    "installed": "installed (trained)",
    "generated": "generated, untrained",
    "missing": "missing",
}


def models_frame(platform: Platform, application_id: str | None) -> pd.DataFrame:
    """One row per model with what a user weighs when picking one (pure: testable without a browser)."""
    rows = [
        {
            "model": m.name,
            "speed": m.speed,
            "accuracy": m.accuracy,
            "accuracy source": m.accuracy_source,
            "variant": m.variant,
            "weights": WEIGHTS_WORDS.get(m.weights_status, m.weights_status),
            "description": m.description,
        }
        for m in platform.models(application_id)
    ]
    return pd.DataFrame(rows, columns=["model", "speed", "accuracy", "accuracy source", "variant", "weights",
                                       "description"])


class CatalogView(pn.viewable.Viewer):
    """Pick an application; see the models that serve it."""

    application = param.Selector(doc="The application whose models are listed.")

    def __init__(self, platform: Platform, **params) -> None:
        self._platform = platform
        apps = platform.applications()
        super().__init__(**params)
        self.param.application.objects = {a.name: a.id for a in apps}
        if apps and self.application is None:
            self.application = apps[0].id

    @param.depends("application")
    def _models(self) -> pn.viewable.Viewable:
        return pn.widgets.Tabulator(
            models_frame(self._platform, self.application), show_index=False, disabled=True,
            layout="fit_data_table", css_classes=["catalog-models"], sizing_mode="stretch_width",
        )

    def __panel__(self) -> pn.viewable.Viewable:
        picker = pn.widgets.Select.from_param(self.param.application, name="Application",
                                             css_classes=["application-picker"], width=320)
        return pn.Column("## Catalog", picker, self._models, sizing_mode="stretch_width")
