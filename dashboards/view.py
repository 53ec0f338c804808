"""What every view of the dashboard shares: the Platform it shows, as a documented parameter."""

from __future__ import annotations

import panel as pn
import param

from app.platform import Platform
from app.users import ANONYMOUS, User, user

EVERYONE, MINE = "everyone", "mine"  # what a list shows: every user's items, or the session user's own


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

    def shown(self, rows: list, show: str, keep: str = "") -> list:
        """``rows`` (with ``created_by``) as a list set to ``show`` lists them: all, or this user's own (and the
        row ``keep``, the one picked now, which a user who uploaded bytes another user stored first still needs)."""
        if show != MINE:
            return rows
        return [r for r in rows if r.created_by == self.user.name or (keep and r.id == keep)]


def show_selector(doc: str) -> param.Selector:
    """The parameter of what a list shows: ``EVERYONE`` (the default) or ``MINE``."""
    return param.Selector(default=EVERYONE, objects=[EVERYONE, MINE], doc=doc)


def show_toggle(parameter: param.Parameter, css_class: str) -> pn.widgets.RadioButtonGroup:
    """The everyone / mine switch of a list."""
    return pn.widgets.RadioButtonGroup.from_param(parameter, button_type="primary", button_style="outline",
                                                  css_classes=[css_class], width=200)
