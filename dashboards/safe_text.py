"""The one way user text reaches the page: shown as typed, never as markup.

Everything a user or a user's file supplies (file names, obs column names, label values, cell ids, run and
annotator names, error messages quoting any of these) is untrusted. Panel's Markdown and Alert panes render
Markdown *and raw HTML* (markdown-it with ``html=True``, linkify on), and Tabulator shows column titles as HTML;
so user text goes through ``md`` (for Markdown panes), ``code`` (a Markdown code span) or ``html`` (for an HTML
pane), and tables of user text use ``plain_formatters``. Tests render every helper with Panel's own renderer.
"""

from __future__ import annotations

import html as _html
import re
import string

import pandas as pd

# Every ASCII punctuation mark is a valid Markdown backslash escape; '&', '<' and '>' become entities instead,
# which markdown-it decodes back to the characters (so '&lt;' typed by a user still shows as '&lt;').
_BACKSLASHED = {c: "\\" + c for c in string.punctuation if c not in "&<>"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")


def _one_line(value: object) -> str:
    """Line breaks would let text start a Markdown block (a heading, a list, a table); shown as one space."""
    return _CONTROL.sub(" ", "" if value is None else str(value))


def md(value: object) -> str:
    """``value`` as inline Markdown text that renders exactly as typed: no HTML, link, emphasis, math or block."""
    text = _one_line(value).translate(str.maketrans(_BACKSLASHED))
    return _html.escape(text, quote=False)


def code(value: object) -> str:
    """``value`` as a Markdown code span (for names such as columns); markdown-it escapes HTML in code spans."""
    text = _one_line(value)
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def html(value: object) -> str:
    """``value`` as HTML text (element content or a quoted attribute value)."""
    return _html.escape(_one_line(value), quote=True)


def plain_formatters(frame: pd.DataFrame, wrap: tuple[str, ...] = ()) -> dict[str, dict[str, str]]:
    """Tabulator formatters that show every text column as plain text (Tabulator's own ``plaintext``); the
    columns named in ``wrap`` as plain text that wraps within the column's width (``textarea``, escaped as well),
    so that a table fits its width without cutting words off."""
    return {str(c): {"type": "textarea" if str(c) in wrap else "plaintext"} for c in frame.columns
            if frame[c].dtype == object or isinstance(frame[c].dtype, (pd.CategoricalDtype, pd.StringDtype))}
