"""``helical-platform``: the command line for scripts and HPC users (later issues add subcommands)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

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


def cmd_weights_stage(args: argparse.Namespace, settings: Settings) -> int:
    from inference.weights import stage

    staged = stage(Path(args.src), settings.weights_dir, trained=not args.untrained, note=args.note or "")
    for backend, variants in staged.items():
        for variant in variants:
            print(f"staged {backend} {variant} into {settings.weights_dir}")
    _refresh(settings)
    return 0


def cmd_weights_verify(args: argparse.Namespace, settings: Settings) -> int:
    from inference.weights import verify

    bad = 0
    for folder in (settings.weights_dir, settings.generated_weights_dir):
        results = verify(folder)
        if not results:
            print(f"{folder}: nothing staged")
        for rel, state in results:
            bad += state != "ok"
            print(f"{state:>8}  {folder / rel}")
    if bad:
        print(f"{bad} file(s) missing or corrupt: stage them again with `helical-platform weights stage SRC`.",
              file=sys.stderr)
    return 1 if bad else 0


def cmd_weights_list(args: argparse.Namespace, settings: Settings) -> int:
    from app.weights import weights_locations
    from inference.weights import catalog

    rows = catalog(weights_locations(settings))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(f"{row['backend']:<11} {row['variant']:<32} {row['status']:<10} {row['detail']}")
    return 0


def cmd_weights_generate(args: argparse.Namespace, settings: Settings) -> int:
    from inference.checkpoints import generate
    from inference.weights import GENEFORMER_VARIANTS

    variants = list(GENEFORMER_VARIANTS) if args.variant == ["all"] else args.variant
    out = Path(args.out) if args.out else settings.generated_weights_dir
    written = generate(out, args.size, variants, scgpt=not args.no_scgpt, seed=args.seed)
    for key in written:
        print(f"generated {key} ({args.size}, untrained, random weights) in {out}")
    _refresh(settings)
    return 0


def _refresh(settings: Settings) -> None:
    from app.weights import refresh_weights_status

    platform = _platform(settings)
    refresh_weights_status(platform.engine, platform.weights)
    platform.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="helical-platform", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="show settings, schema version and the catalog")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=cmd_info)
    init = sub.add_parser("init", help="create the data home and database and seed the catalog")
    init.set_defaults(func=cmd_init)

    weights = sub.add_parser("weights", help="stage, verify, list or generate model weights (no network)")
    wsub = weights.add_subparsers(dest="weights_command", required=True)
    st = wsub.add_parser("stage", help="copy a folder or archive in helical's cache layout into the weights folder")
    st.add_argument("src", help="a copy of ~/.cache/helical/models (folder, .tar, .tar.gz or .zip)")
    st.add_argument("--untrained", action="store_true", help="record these weights as untrained")
    st.add_argument("--note", help="a note kept in the manifest (where the weights came from)")
    st.set_defaults(func=cmd_weights_stage)
    ve = wsub.add_parser("verify", help="check every staged file against its recorded sha256")
    ve.set_defaults(func=cmd_weights_verify)
    li = wsub.add_parser("list", help="every model variant and where its weights are")
    li.add_argument("--json", action="store_true")
    li.set_defaults(func=cmd_weights_list)
    ge = wsub.add_parser("generate", help="write untrained checkpoints in helical's layout (tests, benchmarks)")
    ge.add_argument("--size", choices=["tiny", "real"], default="tiny",
                    help="tiny: for tests; real: the published architecture, random weights (benchmarks)")
    ge.add_argument("--variant", nargs="+", default=["gf-6L-10M-i2048"],
                    help="Geneformer variants to write, or 'all'")
    ge.add_argument("--no-scgpt", action="store_true", help="do not write scGPT")
    ge.add_argument("--seed", type=int, default=0)
    ge.add_argument("--out", help="folder to write into (default: the data home's weights-generated/)")
    ge.set_defaults(func=cmd_weights_generate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from inference.weights import WeightsError

    try:
        return args.func(args, settings)
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
