"""An upload's first check: forked from the check server against a spawned interpreter, on the same file.

    python bench/upload_check.py --file tests/data/pbmc3k_subset.h5ad --rounds 10

Both ways run the same check (``inference.check_sandbox``: the structural gate, then the usual check) in a child
with the same limits and environment. "spawned" starts a Python interpreter per check (what every check did
before the check server); "forked" forks a child from the check server, which has the readers imported. The
check server's own start (once per server process) is timed apart. Prints one JSON line per way and the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference import check_sandbox  # noqa: E402


def timed(path: Path, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        started = time.perf_counter()
        report = check_sandbox.check_isolated(path, path.name, {}, 4096, 300)
        out.append(time.perf_counter() - started)
        assert report["ok"], report["errors"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--file", default="tests/data/pbmc3k_subset.h5ad")
    p.add_argument("--rounds", type=int, default=10)
    args = p.parse_args()
    path = Path(args.file)
    check_sandbox.USE_CHECK_SERVER = False
    spawned = timed(path, args.rounds)
    check_sandbox.USE_CHECK_SERVER = True
    started = time.perf_counter()
    first = timed(path, 1)[0]  # starts the check server, then forks
    forked = timed(path, args.rounds)
    rows = {"spawned": spawned, "forked": forked}
    for way, times in rows.items():
        print(json.dumps({"way": way, "file": path.name, "mb": round(path.stat().st_size / 2**20, 2),
                          "rounds": len(times), "median_s": round(statistics.median(times), 3),
                          "max_s": round(max(times), 3)}))
    print(json.dumps({"check_server_start_and_first_check_s": round(first, 3),
                      "total_s": round(time.perf_counter() - started, 3),
                      "spawned_over_forked": round(statistics.median(spawned) / statistics.median(forked), 1)}))


if __name__ == "__main__":
    main()
