"""The documents that claim test results point at tests that exist."""

from __future__ import annotations

import re

from tests.conftest import REPO
from tests.reliability import DOC, SECTIONS


def test_every_row_of_reliability_md_names_an_existing_test():
    text = DOC.read_text()
    for title in SECTIONS.values():
        assert f"## {title}" in text, title
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| Case")]
    assert len(rows) >= 30
    for row in rows:
        tests = re.findall(r"`(tests/[\w/]+\.py)::(\w+)", row)
        assert tests, row
        for path, name in tests:
            assert re.search(rf"^def {name}\(", (REPO / path).read_text(), re.M), (path, name)
