"""User text through the escaping helper and Panel's own Markdown renderer: shown as typed, never markup."""

from __future__ import annotations

import base64
import hashlib

import pandas as pd
import pytest

from app.security_headers import add_nonce, handler_hashes, page_policy
from dashboards.data import report_markdown
from dashboards.safe_text import code, html, md, plain_formatters
from tests.payloads import FILE_NAME, LABEL_COLUMN, PAYLOADS
from tests.rendering import rendered_html, shown

MORE = ["www.evil.example http://a.example/c a@b.example", "$$x^2$$ $y$", "# heading", "1. item", "- item",
        "> quote", "|a|b|\n|-|-|", "a\\b &amp; &lt; ;", "(c) -- ...", "line\n===", "``` fenced", "<!-- x -->"]


@pytest.mark.parametrize("text", PAYLOADS + MORE)
@pytest.mark.parametrize("helper", [md, code])
def test_user_text_renders_as_typed_and_creates_no_element(text, helper):
    out = rendered_html(helper(text)).strip()
    inner = out.removeprefix("<p>").removesuffix("</p>")
    if helper is code:
        inner = inner.removeprefix("<code>").removesuffix("</code>")
    assert "<" not in inner and ">" not in inner, out  # no tag at all: not <a>, <img>, <em>, <h1>, <code>
    assert shown(helper(text)) == " ".join(text.split()), out


def test_html_helper_escapes_attributes_and_content():
    assert html('"><img src=x onerror=1>') == "&quot;&gt;&lt;img src=x onerror=1&gt;"


def test_the_check_report_shows_hostile_names_and_labels_as_typed():
    report = {"ok": True, "file": FILE_NAME, "n_cells": 10, "n_genes": 5, "values": {}, "genes": {},
              "overlap": {}, "warnings": [{"message": PAYLOADS[1]}],
              "label_columns": {LABEL_COLUMN: {PAYLOADS[0]: 5, PAYLOADS[3]: 5}},
              "rejected_label_columns": {PAYLOADS[2]: PAYLOADS[4]}}
    page = rendered_html(report_markdown(report))
    assert "<img" not in page and "<svg" not in page and "<script" not in page and 'href="javascript' not in page
    text = shown(report_markdown(report))
    for expected in (FILE_NAME, LABEL_COLUMN, PAYLOADS[0], PAYLOADS[1], PAYLOADS[2], PAYLOADS[3], PAYLOADS[4]):
        assert expected in text


def test_tables_show_text_columns_as_plain_text():
    frame = pd.DataFrame({"cell": ["<b>x</b>"], "n": [1], "label": pd.Categorical(["<i>y</i>"])})
    assert plain_formatters(frame) == {"cell": {"type": "plaintext"}, "label": {"type": "plaintext"}}


def test_page_policy_allows_the_pages_own_scripts_and_handlers_only():
    page = b'<html><script>boot()</script><SCRIPT type="x">y</SCRIPT><span onclick="closeNav()">'
    nonced = add_nonce(page, "abc")
    assert nonced.count(b'nonce="abc"') == 2 and b"<scripts" not in nonced
    hashes = handler_hashes(page)
    assert hashes == ["sha256-" + base64.b64encode(hashlib.sha256(b"closeNav()").digest()).decode()]
    policy = page_policy("abc", hashes)
    assert "'nonce-abc'" in policy and "'unsafe-hashes'" in policy and hashes[0] in policy
    assert "'unsafe-inline'" not in policy.split("script-src")[1].split(";")[0]
    assert "'unsafe-hashes'" not in page_policy("abc")
