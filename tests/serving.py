"""Start the real server (`make serve`) and a real browser (Debian's chromium) for end-to-end tests."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import requests

from tests.conftest import REPO, free_port
from tests.generated_weights import OWN_WEIGHTS
from tests.generated_weights import seed as seed_generated_weights

CHROMIUM = os.environ.get("HELICAL_PLATFORM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


class Server:
    def __init__(self, proc: subprocess.Popen, url: str, home: Path, log_path: Path) -> None:
        self.proc, self.url, self.home, self.log_path = proc, url, home, log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def make_serve(tmp: Path, extra_env: dict[str, str] | None = None, timeout: float = 240) -> Iterator[Server]:
    """Run `make serve` on a free port and a fresh data home until the block ends."""
    port = free_port()
    home = tmp / "home"
    extra_env = extra_env or {}
    env = {**os.environ, "HELICAL_PLATFORM_PORT": str(port), "HELICAL_PLATFORM_HOME": str(home),
           "HELICAL_PLATFORM_WORKERS": "1", **extra_env}
    if not any(k in extra_env for k in OWN_WEIGHTS):
        seed_generated_weights(home)  # what this fresh home would generate first (tests/generated_weights.py)
    log_path = tmp / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(["make", "serve"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    server = Server(proc, f"http://localhost:{port}", home, log_path)
    try:
        wait_until(lambda: _answers(server), timeout, "the server to answer")
        _check_settings(server, env)
        yield server
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        except ProcessLookupError:  # a test killed the group already
            pass


SETTINGS_LINE = re.compile(r"settings in effect: (\{.*\})$", re.M)


def _check_settings(server: Server, env: dict[str, str]) -> None:
    """The settings the server logged at start are those ``env`` gives (parsed here the same way): a test that
    relies on a limit or a user list fails at once, naming the setting, when it did not take effect."""
    from app.settings import Settings

    found = wait_until(lambda: SETTINGS_LINE.search(server.log()), 60, "the server's 'settings in effect' line")
    logged = json.loads(found.group(1))
    expected = Settings.from_env(env).public()
    wrong = {k: (logged.get(k), v) for k, v in expected.items() if logged.get(k) != v}
    assert not wrong, f"settings that did not take effect (served, expected): {wrong}"


class SharedServers:
    """Served instances kept for the whole session, one per configuration, started on first use: modules whose
    tests need the same settings share one instead of paying a start (torch, helical, a Dask cluster) each.
    A test on a shared instance must not depend on what others stored: it uploads files of its own bytes (uploads
    are stored by content) and compares what it made, never whole listings."""

    def __init__(self, root: Path) -> None:
        self.root, self._servers, self._stack = root, {}, ExitStack()

    def get(self, name: str, env: dict[str, str]) -> Server:
        key = (name, tuple(sorted(env.items())))
        if key not in self._servers:
            if any(n == name for n, _ in self._servers):
                raise ValueError(f"shared server {name!r} asked for with two configurations")
            folder = self.root / name
            folder.mkdir(parents=True, exist_ok=True)
            self._servers[key] = self._stack.enter_context(make_serve(folder, env))
        server = self._servers[key]
        if server.proc.poll() is not None:
            raise AssertionError(f"the shared server {name!r} has exited:\n{server.log()[-4000:]}")
        return server

    def close(self) -> None:
        self._stack.close()


def _answers(server: Server) -> bool:
    if server.proc.poll() is not None:
        raise AssertionError(f"make serve exited early:\n{server.log()}")
    try:
        requests.get(server.url + "/", timeout=60)
        return True
    except requests.ConnectionError:
        return False


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.25) -> object:
    """Poll ``condition`` until it is truthy (never sleep a guessed time); fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@contextmanager
def browser_page(viewport: dict[str, int] | None = None, executable: str | None = None) -> Iterator[object]:
    """A Playwright page in Debian's headless chromium (Playwright's own browser download cannot work here)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable or CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=viewport or {"width": 1400, "height": 900})
            yield page
        finally:
            browser.close()
