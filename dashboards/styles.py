"""Shared looks of the page: what lets a table fit its width, and the smaller type of captions (no fixed colour,
so that the dark theme keeps its contrast)."""

from __future__ import annotations

# a table as wide as its place (Tabulator's fit_columns): long words and column titles break onto more lines
# rather than being cut off or pushing the table sideways
FITTING_TABLE = """
.tabulator-col-title { white-space: normal !important; overflow-wrap: anywhere; text-overflow: clip !important; }
.tabulator-cell { overflow-wrap: anywhere; text-overflow: clip !important; }
"""
CAPTION = {"font-size": "0.85em", "opacity": "0.8"}
