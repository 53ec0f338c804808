"""What a person reads from a Markdown string, rendered by Panel's own Markdown renderer (tags removed)."""

from __future__ import annotations

import html
import re

import panel as pn


def rendered_html(markdown: str) -> str:
    """The HTML Panel's Markdown pane sends to the browser for ``markdown``."""
    pane = pn.pane.Markdown(markdown)
    return html.unescape(pane._transform_object(pane.object)["object"])


def shown(markdown: str) -> str:
    """The text a reader sees: tags dropped, entities decoded, whitespace collapsed."""
    text = re.sub(r"<[^>]+>", " ", rendered_html(markdown))
    return re.sub(r"\s+", " ", html.unescape(text)).strip()
