"""`make serve` on a fresh data home answers on / with the catalog read from the database."""

from __future__ import annotations

import requests

from tests.conftest import TEST_OUTPUT
from tests.serving import browser_page, make_serve


def test_make_serve_shows_the_catalog_from_the_database_at_the_root(tmp_path):
    with make_serve(tmp_path) as server:
        response = requests.get(server.url + "/", timeout=60)
        assert response.status_code == 200
        assert response.url.rstrip("/") == server.url  # served at /, not redirected elsewhere
        assert f"{server.url}/" in server.log()  # make serve prints the URL
        assert (server.home / "platform.db").exists()

        with browser_page() as page:
            page.goto(server.url + "/")
            table = page.locator(".catalog-models")
            for name in ("Geneformer", "scGPT", "Baseline"):
                table.get_by_text(name, exact=False).first.wait_for(timeout=60_000)
            picker = page.locator(".application-picker select")
            assert picker.input_value(timeout=10_000) == "Cell type annotation"
            offered = " ".join(page.locator(".model-picker select option").all_text_contents())
            assert all(name in offered for name in ("Geneformer", "scGPT", "Baseline"))
            TEST_OUTPUT.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(TEST_OUTPUT / "serve-catalog.png"), full_page=True)
