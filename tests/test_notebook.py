"""examples/quickstart.ipynb executes headlessly: the Python API (annotate, show, integrate) and the dashboard."""

from __future__ import annotations

import os

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO
from tests.generated_weights import seed as seed_generated_weights


@pytest.mark.slow
def test_the_quickstart_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("HELICAL_PLATFORM_HOME", str(seed_generated_weights(tmp_path / "home")))
    monkeypatch.setenv("HELICAL_PLATFORM_WORKERS", "1")
    nb = nbformat.read(REPO / "examples" / "quickstart.ipynb", as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}},
                            env={**os.environ})
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    models = "".join(o.get("data", {}).get("text/html", "") for o in code[0].outputs)
    assert "geneformer" in models and "baseline" in models  # hp.models() as a table
    annotate = code[1].outputs
    assert "baseline: done, macro-F1 0." in "".join(o.get("text", "") for o in annotate)
    assert "predicted_label" in "".join(o.get("data", {}).get("text/html", "") for o in annotate)
    shown = [o for o in code[2].outputs if o.get("output_type") in ("display_data", "execute_result")]
    assert any("application/vnd.holoviews_exec.v0+json" in o.get("data", {}) or
               "application/vnd.bokehjs_exec.v0+json" in o.get("data", {}) for o in shown), shown  # hp.show
    integration = code[3].outputs
    assert "X_harmony" in "".join(o.get("text", "") for o in integration)
    table = "".join(o.get("data", {}).get("text/html", "") for o in integration)
    assert "Batch correction" in table and "harmony" in table
    dashboard = [o for o in code[4].outputs if o.get("output_type") in ("display_data", "execute_result")]
    assert any("application/vnd.holoviews_load.v0+json" in o.get("data", {}) or
               "application/vnd.bokehjs_exec.v0+json" in o.get("data", {}) or
               "text/html" in o.get("data", {}) for o in dashboard)
