"""What every view of the dashboard shares: the Platform it shows, as a documented parameter."""

from __future__ import annotations

import panel as pn
import param

from app.platform import Platform
from app.users import ANONYMOUS, User, user


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
        # read here, in the session's own context: polls and handlers run in threads where pn.state has no user
        self._user_name = pn.state.user or ANONYMOUS

    @property
    def user(self) -> User:
        """Who this session is: Panel's login (basic auth, OAuth/OIDC) or, without one, the one anonymous user."""
        return user(self.platform.settings, self._user_name)
