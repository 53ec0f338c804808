"""How long the first page takes right after the server starts: the issue's goal is 2 s.

    python bench/first_page.py --rounds 3

Per round: `make serve` on a fresh data home; the clock starts when the port first accepts a connection (the
server listens), then (1) the first ``GET /`` (Panel builds the session's page in that request), (2) a headless
chromium opening the page until the dashboard's run form is on screen, (3) the same for a second session. Also
the server's own worst event-loop stall once it listens (``/api/health?since=``).

    python bench/first_page.py --in-flight 2 --gets 10 --json bench/out/first_page.json

A new page on a busy server (issue 39, item 12): one served instance with a finished baseline run (so the results
view has a run and a query file to show), ``--in-flight`` runs kept submitted and unfinished (a new one is submitted
as soon as one finishes), then ``--gets`` new pages (``GET /``, each a new session): the time to the first byte and
to the whole HTML, median and max; written as JSON with ``--json``.
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


def _timed_get(url: str) -> tuple[float, float]:
    """(seconds to the first byte, seconds to the whole body) of one ``GET url`` on a fresh connection."""
    import requests

    t = time.perf_counter()
    with requests.get(url, stream=True, timeout=300) as r:
        r.raise_for_status()
        chunks = r.iter_content(chunk_size=1)
        next(chunks)
        first = time.perf_counter() - t
        for _ in r.iter_content(chunk_size=65536):
            pass
        return first, time.perf_counter() - t


def busy_pages(in_flight: int, gets: int) -> dict:
    """New pages on one served instance with a finished run and ``in_flight`` runs kept unfinished."""
    import threading

    import anndata as ad

    from tests.api_client import TOKEN, api, upload, wait_run
    from tests.conftest import PBMC
    from tests.serving import make_serve, wait_until

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        full = ad.read_h5ad(PBMC)
        ref, query = tmp / "reference.h5ad", tmp / "query.h5ad"
        full[1::2].copy().write_h5ad(ref)
        full[0::2].copy().write_h5ad(query)
        with make_serve(tmp, {"HELICAL_PLATFORM_API_TOKEN": TOKEN, "HELICAL_PLATFORM_WORKERS": str(max(in_flight, 1))
                              }) as server:
            ref_id = upload(server, ref).json()["dataset_id"]
            query_id = upload(server, query).json()["dataset_id"]
            body = {"application": "cell-type-annotation", "model": "baseline", "dataset": query_id,
                    "reference": ref_id, "label_column": "celltype", "truth_column": "celltype"}

            def submit() -> str:
                r = api(server, "POST", "/api/submit", json=body)
                r.raise_for_status()
                return r.json()["run_id"]

            assert wait_run(server, submit())["status"] == "done"
            url = server.url + "/"
            _timed_get(url)  # the first page after start is bench one_round's business
            stop, submitted, busy = threading.Event(), [], []

            def keep_busy() -> None:
                running: list[str] = []
                while not stop.is_set():
                    statuses = {r: api(server, "GET", f"/api/status/{r}").json()["status"] for r in running}
                    running = [r for r, s in statuses.items() if s in ("queued", "running")]
                    if submitted:  # still unfinished at each check (then topped up again)
                        busy.append(len(running))
                    while len(running) < in_flight:
                        running.append(submit())
                        submitted.append(running[-1])
                    stop.wait(0.5)

            keeper = threading.Thread(target=keep_busy, daemon=True)
            if in_flight:
                keeper.start()
                wait_until(lambda: len(submitted) >= in_flight, 60, "the runs to be submitted")
                time.sleep(3)  # the runs past their start (reading, embedding)
            results = []
            try:
                for _ in range(gets):
                    results.append(_timed_get(url))
            finally:
                stop.set()
                if in_flight:
                    keeper.join(60)
    first, full_html = [r[0] for r in results], [r[1] for r in results]
    return {"in_flight": in_flight, "gets": gets, "runs_submitted": len(submitted),
            "unfinished_at_checks_mean": statistics.mean(busy) if busy else 0,
            "first_byte_s": first, "full_html_s": full_html,
            "first_byte_median_s": statistics.median(first), "first_byte_max_s": max(first),
            "full_html_median_s": statistics.median(full_html), "full_html_max_s": max(full_html)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=None,
                        help="time new pages on a busy server, with this many runs kept in flight")
    parser.add_argument("--gets", type=int, default=10, help="new pages timed (with --in-flight)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here (with --in-flight)")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    if args.in_flight is not None:
        out = {"date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "commit": commit, "machine": platform.node(),
               "cpus": os.cpu_count(), **busy_pages(args.in_flight, args.gets)}
        print(f"# {out['date']}, commit {commit}, {out['machine']} ({out['cpus']} CPUs), {args.in_flight} runs in "
              f"flight ({out['runs_submitted']} submitted), {args.gets} new pages")
        print(f"GET / first byte: median {out['first_byte_median_s']:.2f} s, max {out['first_byte_max_s']:.2f} s; "
              f"whole HTML: median {out['full_html_median_s']:.2f} s, max {out['full_html_max_s']:.2f} s")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(out, indent=1))
        return
    rounds = [one_round() for _ in range(args.rounds)]
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
