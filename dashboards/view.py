"""What every view of the dashboard shares: the Platform it shows, as a documented parameter."""

from __future__ import annotations

import panel as pn
import param

from app.platform import Platform


class PlatformView(pn.viewable.Viewer):
    """A view of one Platform. ``View(platform)`` and ``View(platform=platform)`` are the same.

    Views never call each other: each holds its state as parameters, and the Dashboard that composes them keeps
    the parameters that several views share in step (``dashboards.dashboard.link``)."""

    platform = param.ClassSelector(class_=Platform, constant=True,
                                   doc="The service behind the view (catalog, datasets, runs), shared by sessions.")

    def __init__(self, platform: Platform | None = None, **params) -> None:
        if platform is not None:
            params["platform"] = platform
        super().__init__(**params)
