"""``helical-platform runs …`` (list, delete) and ``helical-platform usage``: the data lifecycle on this data home,
without a server (the same services the REST API calls)."""

from __future__ import annotations

import argparse
import json
import sys

from app.settings import Settings


def _platform(settings: Settings):  # noqa: ANN202
    from app.platform import Platform

    return Platform(settings, start_cluster=False)


def cmd_runs_list(args: argparse.Namespace, settings: Settings) -> int:
    platform = _platform(settings)
    try:
        runs = platform.runs.list(limit=args.limit)
    finally:
        platform.close()
    for r in runs:
        print(f"{r.id}  {r.created_at:%Y-%m-%d %H:%M}  {r.status:<9} {r.application_id:<22} {r.model_id:<16} "
              f"dataset {r.dataset_id[:8]}")
    return 0


def cmd_runs_delete(args: argparse.Namespace, settings: Settings) -> int:
    from app.datasets import NotFound
    from app.lifecycle import RunInUse

    platform = _platform(settings)
    try:
        for run_id in args.run:
            try:
                out = platform.runs.delete(run_id)
            except (RunInUse, NotFound, ValueError) as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            print(f"deleted run {out['run_id']}; freed {out['bytes_freed'] / 2**20:.1f} MB")
    finally:
        platform.close()
    return 0


def cmd_usage(args: argparse.Namespace, settings: Settings) -> int:
    from app.lifecycle import usage

    platform = _platform(settings)
    try:
        out = usage(platform)
    finally:
        platform.close()
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return 0
    mb = 2**20
    t = out["totals"]
    print(f"datasets {t['datasets_bytes'] / mb:,.1f} MB · runs {t['runs_bytes'] / mb:,.1f} MB · disk free "
          f"{t['disk_free_bytes'] / 2**30:,.1f} GB of {t['disk_total_bytes'] / 2**30:,.1f} GB")
    for d in sorted(out["datasets"], key=lambda d: -(d["file_bytes"] + d["embeddings_bytes"])):
        print(f"  dataset {d['id'][:8]} {d['file_name']:<40} {d['file_bytes'] / mb:>9,.1f} MB file  "
              f"{d['embeddings_bytes'] / mb:>9,.1f} MB embeddings")
    for r in sorted(out["runs"], key=lambda r: -r["bytes"]):
        print(f"  run     {r['id'][:8]} {r['model']:<16} {r['status']:<9} {r['bytes'] / mb:>9,.1f} MB")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    runs = sub.add_parser("runs", help="list runs, delete finished ones")
    rsub = runs.add_subparsers(dest="runs_command", required=True)
    li = rsub.add_parser("list", help="runs, newest first")
    li.add_argument("--limit", type=int, default=200)
    li.set_defaults(func=cmd_runs_list)
    de = rsub.add_parser("delete", help="delete finished runs (rows and files; a queued or running one is refused)")
    de.add_argument("run", nargs="+", help="run ids")
    de.set_defaults(func=cmd_runs_delete)
    us = sub.add_parser("usage", help="disk use of every dataset and run, and the disk's free space")
    us.add_argument("--json", action="store_true")
    us.set_defaults(func=cmd_usage)
