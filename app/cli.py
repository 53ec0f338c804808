"""``helical-platform``: the command line for scripts and HPC users (later issues add subcommands)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from app.settings import Settings, SettingsError


def _platform(settings: Settings):  # noqa: ANN202 - imported late: `--help` stays fast
    from app.platform import Platform

    return Platform(settings, start_cluster=False)


def cmd_info(args: argparse.Namespace, settings: Settings) -> int:
    """Settings, schema version and catalog: what a user checks first when something looks wrong."""
    platform = _platform(settings)
    try:
        info = {
            "settings": settings.describe(),
            "schema_version": platform.schema_version,
            "applications": [a.model_dump() for a in platform.applications()],
            "models": [m.model_dump(exclude={"accuracy_source"}) for m in platform.models()],
        }
    finally:
        platform.close()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    for key, value in info["settings"].items():
        print(f"{key:>10}: {value}")
    print(f"    schema: version {info['schema_version']}")
    for app in info["applications"]:
        print(f"\n{app['name']} ({app['id']})")
        for m in info["models"]:
            if app["id"] in m["applications"]:
                acc = "—" if m["accuracy"] is None else f"{m['accuracy']:.2f}"
                print(f"  {m['id']:<12} {m['name']:<48} speed {m['speed']:<5} accuracy {acc:<5} "
                      f"weights {m['weights_status']}")
    return 0


def cmd_init(args: argparse.Namespace, settings: Settings) -> int:
    """Create the data home and database, seed the catalog (the server does this at start too)."""
    platform = _platform(settings)
    platform.close()
    print(f"initialised {settings.home} (schema version {platform.schema_version})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="helical-platform", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="show settings, schema version and the catalog")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=cmd_info)
    init = sub.add_parser("init", help="create the data home and database and seed the catalog")
    init.set_defaults(func=cmd_init)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return args.func(args, settings)


if __name__ == "__main__":
    sys.exit(main())
