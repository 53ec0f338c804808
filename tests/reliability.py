"""The reliability record: tests write what they tried and what held; the suite turns it into RELIABILITY.md.

Every row names the test that produced it, so the document can only hold what a test did in this run.
``make test`` writes ``test-output/RELIABILITY.md``; with ``HELICAL_PLATFORM_UPDATE_DOCS=1`` it also replaces
``docs/RELIABILITY.md``. A partial run (``pytest -k ...``) writes only the test-output copy.
"""

from __future__ import annotations

import json
import os
import platform as _platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from tests.conftest import REPO, TEST_OUTPUT

RECORD_DIR = TEST_OUTPUT / "reliability"
DOC = REPO / "docs" / "RELIABILITY.md"
SECTIONS = {
    "bad input": "Bad input — each file through the API (`/api/upload`, raw and multipart) and the dashboard's "
                 "upload handler, on one server holding an earlier dataset and a finished run",
    "load": "Load — API clients submitting runs together against one served instance",
    "faults": "Faults — what was broken, and what was checked afterwards",
    "security": "Security — access, ids, limits and untrusted files",
}
COLUMNS = ("Case", "Tried", "Result", "Held", "Test")


def record(section: str, case: str, tried: str, result: str, held: str, test: str) -> None:
    """One row; ``test`` is the test's node id (``request.node.nodeid``)."""
    if section not in SECTIONS:
        raise ValueError(f"unknown section {section!r}")
    RECORD_DIR.mkdir(parents=True, exist_ok=True)
    row = {"section": section, "case": case, "tried": tried, "result": result, "held": held, "test": test}
    with open(RECORD_DIR / f"rows-{os.getpid()}.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")


def clear() -> None:
    for f in RECORD_DIR.glob("rows-*.jsonl"):
        f.unlink()


def rows() -> list[dict]:
    out = []
    for f in sorted(RECORD_DIR.glob("rows-*.jsonl")):
        out += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return out


def _merge(items: list[dict]) -> list[dict]:
    """Rows of one case from several paths (API, dashboard) become one row listing each path's result."""
    merged: dict[str, dict] = {}
    for r in items:
        m = merged.setdefault(r["case"], {**r, "tried": [], "result": [], "held": [], "test": []})
        for key in ("tried", "result", "held", "test"):
            if r[key] not in m[key]:
                m[key].append(r[key])
    return [{k: ("<br>".join(v) if isinstance(v, list) else v) for k, v in m.items()} for m in merged.values()]


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(items: list[dict]) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    lines = ["# Reliability", "",
             "Produced by the test suite (`make test`): every row below is one test, named in the last column, "
             "and holds what that test measured in the run that wrote this file. Regenerate with "
             "`HELICAL_PLATFORM_UPDATE_DOCS=1 make test`.", "",
             f"Run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit}, {_platform.node()} "
             f"({os.cpu_count()} CPUs, Python {_platform.python_version()}).", ""]
    for section, title in SECTIONS.items():
        part = _merge([r for r in items if r["section"] == section])
        if not part:
            continue
        lines += [f"## {title}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        for r in part:
            test = "<br>".join(f"`{t}`" for t in r["test"].split("<br>"))
            lines.append("| " + " | ".join(_cell(x) for x in (r["case"], r["tried"], r["result"], r["held"], test))
                         + " |")
        lines.append("")
    return "\n".join(lines)


def write_report(passed: bool = True) -> Path | None:
    """test-output/RELIABILITY.md from this run's rows; docs/ too when asked, every section has rows and the run
    passed (a failed run's figures never become the documented ones)."""
    items = rows()
    if not items:
        return None
    text = render(items)
    out = TEST_OUTPUT / "RELIABILITY.md"
    out.write_text(text)
    complete = {r["section"] for r in items} == set(SECTIONS)
    if complete and passed and os.environ.get("HELICAL_PLATFORM_UPDATE_DOCS") == "1":
        DOC.write_text(text)
    return out
