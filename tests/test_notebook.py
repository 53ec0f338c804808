"""examples/quickstart.ipynb executes headlessly and displays the dashboard without error."""

from __future__ import annotations

import os

import nbformat
from nbclient import NotebookClient

from tests.conftest import REPO


def test_the_quickstart_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("HELICAL_PLATFORM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HELICAL_PLATFORM_WORKERS", "1")
    nb = nbformat.read(REPO / "examples" / "quickstart.ipynb", as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}},
                            env={**os.environ})
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    shown = [o for o in nb.cells[2].outputs if o.get("output_type") in ("display_data", "execute_result")]
    assert any("application/vnd.holoviews_load.v0+json" in o.get("data", {}) or
               "application/vnd.bokehjs_exec.v0+json" in o.get("data", {}) or
               "text/html" in o.get("data", {}) for o in shown)
    assert "macro-F1" in "".join(o.get("text", "") for o in nb.cells[4].outputs)
    integration = nb.cells[6].outputs
    reused = "".join(o.get("text", "") for o in integration)
    assert "embeddings reused" in reused and "True" in reused  # Harmony's PCs are the baseline's, embedded once
    table = "".join(o.get("data", {}).get("text/html", "") for o in integration)
    assert "Batch correction" in table and "harmony" in table
