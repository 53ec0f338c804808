"""How long the first page takes right after the server starts: the issue's goal is 2 s.

    python bench/first_page.py --rounds 3

Per round: `make serve` on a fresh data home; the clock starts when the port first accepts a connection (the
server listens), then (1) the first ``GET /`` (Panel builds the session's page in that request), (2) a headless
chromium opening the page until the dashboard's run form is on screen, (3) the same for a second session. Also
the server's own worst event-loop stall once it listens (``/api/health?since=``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
READY = ".run-button"  # the run form's button: the dashboard is there and usable


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def one_round() -> dict[str, float]:
    import requests

    from tests.conftest import free_port
    from tests.serving import browser_page, wait_until

    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = {**os.environ, "HELICAL_PLATFORM_PORT": str(port), "HELICAL_PLATFORM_HOME": str(Path(tmp) / "home"),
               "HELICAL_PLATFORM_WORKERS": "1"}
        started = time.perf_counter()
        with open(Path(tmp) / "serve.log", "w") as log:
            proc = subprocess.Popen(["make", "serve"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        try:
            wait_until(lambda: _listening(port), 300, "the server to listen", interval=0.05)
            listening, listening_at = time.perf_counter(), time.time()
            url = f"http://localhost:{port}"
            requests.get(url + "/", timeout=120).raise_for_status()
            first_get = time.perf_counter() - listening
            pages = []
            for _ in range(2):
                with browser_page({"width": 1440, "height": 900}) as page:
                    t = time.perf_counter()
                    page.goto(url + "/", timeout=120_000)
                    page.locator(READY).first.wait_for(timeout=120_000)
                    pages.append(time.perf_counter() - t)
            loop = requests.get(url + "/api/health", params={"since": listening_at}, timeout=60).json()["event_loop"]
            stall = loop["max_lag_ms"]
            if os.environ.get("BENCH_VERBOSE"):
                print("stalls after listening (s, ms):", [(round(t - listening_at, 2), ms) for t, ms in loop["stalls"]],
                      file=sys.stderr)
            return {"start_to_listen_s": listening - started, "first_get_s": first_get,
                    "first_page_s": pages[0], "second_page_s": pages[1], "max_loop_stall_ms": stall}
        finally:
            os.killpg(proc.pid, 15)
            proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rounds = [one_round() for _ in range(args.rounds)]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    print(f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit}, {platform.node()} ({os.cpu_count()} CPUs)")
    print("| round | start to listening | first GET / | first page in chromium | second page | "
          "max loop stall after listening |")
    print("|---|---|---|---|---|---|")
    for i, r in enumerate(rounds, 1):
        print(f"| {i} | {r['start_to_listen_s']:.1f} s | {r['first_get_s']:.2f} s | {r['first_page_s']:.2f} s | "
              f"{r['second_page_s']:.2f} s | {r['max_loop_stall_ms']} ms |")
    first = [r["first_page_s"] for r in rounds]
    print(f"\nfirst page: median {statistics.median(first):.2f} s, min {min(first):.2f} s, max {max(first):.2f} s")
    print(json.dumps(rounds))


if __name__ == "__main__":
    main()
