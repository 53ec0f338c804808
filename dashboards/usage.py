"""Who this session is, and how much of the data home's disk the datasets and runs take (the sidebar)."""

from __future__ import annotations

import asyncio

import panel as pn

from app.users import ANONYMOUS, multi_user
from dashboards.data import size_text
from dashboards.safe_text import md
from dashboards.view import PlatformView


def who_text(name: str, admin: bool, users_apart: bool) -> str:
    """One line on who is signed in and what they may delete."""
    if name == ANONYMOUS:
        if users_apart:  # only outside a served dashboard: the server does not start without a login then
            return "**Not signed in**: this session may delete only what anonymous sessions made."
        return ("**Not signed in**: no sign-in is configured, so everyone who can reach this server is one anonymous "
                "user who may delete anything, anyone's (README, *Lab server*: users).")
    rights = "an admin: may delete anything" if admin or not users_apart else "may delete what they made"
    return f"**Signed in as** {md(name)} ({rights})."


def delete_rule(admins: tuple[str, ...], users_apart: bool) -> str:
    """Who may delete what on this server, for signed-in users (the rule of app/users.py, in words)."""
    if not users_apart:
        return ("*Deleting*: no admins are set, so every signed-in user may delete every dataset, run and "
                "annotator, anyone's; HELICAL_PLATFORM_ADMINS limits the others to their own.")
    who = ", ".join(md(a) for a in admins)
    admins_may = (f"the admins ({who}) may delete anyone's" if admins else
                  "no admins are set (HELICAL_PLATFORM_ADMINS), so no one deletes another user's")
    return f"*Deleting*: each user deletes the datasets, runs and annotators they made; {admins_may}."


def usage_markdown(usage: dict, top: int = 5) -> str:
    """Totals, then the largest datasets and runs (names escaped)."""
    t = usage["totals"]
    lines = [f"**Disk use**: datasets {size_text(t['datasets_bytes'])} · runs {size_text(t['runs_bytes'])} · "
             f"free {size_text(t['disk_free_bytes'])} of {size_text(t['disk_total_bytes'])}"]
    datasets = sorted(usage["datasets"], key=lambda d: -(d["file_bytes"] + d["embeddings_bytes"]))[:top]
    lines += [f"- {md(d['file_name'])}: {size_text(d['file_bytes'] + d['embeddings_bytes'])}" for d in datasets]
    if usage.get("retention_days"):
        lines.append(f"Finished runs are deleted after {usage['retention_days']} days.")
    return "\n".join(lines)


class UsageView(PlatformView):
    """Sign-in line and disk use, refreshed when asked (sizing every run's folder is not a per-second job)."""

    def __init__(self, platform=None, **params) -> None:  # noqa: ANN001 - app.platform.Platform
        super().__init__(platform, **params)
        me, settings = self.user, self.platform.settings
        apart = multi_user(settings)
        text = who_text(me.name, me.admin, apart)
        if me.name != ANONYMOUS:
            text += "\n\n" + delete_rule(settings.admins, apart)
        self.who = pn.pane.Markdown(text, css_classes=["who"], sizing_mode="stretch_width")
        self.usage = pn.pane.Markdown("", css_classes=["disk-usage"], sizing_mode="stretch_width")
        self.button = pn.widgets.Button(name="Disk use", button_type="default", css_classes=["usage-button"])
        self.button.on_click(self._refresh)

    async def _refresh(self, _event=None) -> None:  # noqa: ANN001
        from app.lifecycle import usage

        self.usage.object = usage_markdown(await asyncio.to_thread(usage, self.platform))

    def __panel__(self) -> pn.viewable.Viewable:
        return pn.Column(self.who, self.button, self.usage, sizing_mode="stretch_width")
