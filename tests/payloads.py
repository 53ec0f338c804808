"""Strings an attacker would put in a file name, an obs column name, a label value or a cell id.

Each script payload sets its own ``window`` flag if it ever runs, or creates an element a test can look for; the
others (Markdown, templates) would change how the page looks if they were interpreted. Every one must be shown
exactly as typed. File names cannot hold '/', so ``FILE_NAME`` uses the payloads without one.
"""

from __future__ import annotations

SCRIPT_FLAGS = ["__xss_img", "__xss_script", "__xss_svg", "__xss_link", "__xss_mdimg", "__xss_a", "__xss_iframe",
                "__xss_tpl", "__xss_tpl2"]

PAYLOADS = [
    '<img src=x class=xss-probe onerror="window.__xss_img=1">',
    "<script>window.__xss_script=1</script>",
    '<svg class=xss-probe onload="window.__xss_svg=1">',
    "[click me](javascript:window.__xss_link=1)",
    "![pic](x.png onerror=window.__xss_mdimg=1)",
    '<a class=xss-probe href="javascript:window.__xss_a=1">a</a>',
    '<iframe class=xss-probe srcdoc="<script>parent.__xss_iframe=1</script>"></iframe>',
    "{{ window.__xss_tpl = 1 }}",
    "${window.__xss_tpl2=1}",
    "*bold* _em_ `code` # not a heading | not | a table",
]

# what makes an element exist if a payload was parsed as HTML or Markdown
PROBE_SELECTOR = ('.xss-probe, img[src="x"], img[src="x.png"], a[href^="javascript"], iframe[srcdoc], '
                  'svg[onload], script:not([src]):not([nonce]):not([type="application/json"])')

FILE_NAME = '<img src=x class=xss-probe onerror="window.__xss_img=1"> [f](javascript:alert(1)) ${x} {{y}}.h5ad'
LABEL_COLUMN = '<svg class=xss-probe onload="window.__xss_svg=1"> *type*'
