"""``helical-platform annotators …``: list, show, save (from a run), train (from a reference), delete, export,
import. The same service as the REST API and the dashboard, on this data home, without a server."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from app.cli_tuning import add_tuning_arguments, tuning_options
from app.settings import Settings


def _platform(settings: Settings):  # noqa: ANN202
    from app.platform import Platform

    return Platform(settings, start_cluster=False)


def _ontology(pairs: list[str] | None) -> dict[str, str | None] | None:
    """``LABEL=CL:0000000`` (or ``LABEL=`` to leave a label unmapped) -> the map an annotator keeps."""
    if not pairs:
        return None
    out: dict[str, str | None] = {}
    for pair in pairs:
        label, sep, term = pair.rpartition("=")
        if not sep or not label:
            raise ValueError(f"--ontology takes LABEL=CL:NNNNNNN, not {pair!r}.")
        out[label] = term or None
    return out


def _row(a: dict) -> str:
    check = a["check"] or {}
    f1 = f"{check['macro_f1']:.3f}" if check.get("macro_f1") is not None else "—"
    ref = (a["reference"] or {}).get("file_name") or "—"
    untrained = "" if a["trained"] else "  (generated weights: its predictions mean nothing)"
    return (f"{a['name']:<28} {a['model']:<12} {a['head']:<20} {len(a['classes']):>3} classes  held-out macro-F1 {f1}"
            f"  reference {ref}  by {a['author'] or '—'}  {str(a['created_at'])[:16]}{untrained}")


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    from app.annotators import annotator_json

    p = _platform(settings)
    try:
        rows = [annotator_json(a) for a in p.annotators.list()]
    finally:
        p.close()
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        print("\n".join(_row(r) for r in rows) or "no annotators yet: save one from a run, or train one")
    return 0


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    from app.annotators import annotator_json

    p = _platform(settings)
    try:
        print(json.dumps(annotator_json(p.annotators.get(args.annotator)), indent=2, default=str))
    finally:
        p.close()
    return 0


def cmd_save(args: argparse.Namespace, settings: Settings) -> int:
    from app.annotators import annotator_json

    p = _platform(settings)
    try:
        a = p.annotators.save_from_run(args.run_id, args.name, args.description or "", args.author or "",
                                       _ontology(args.ontology))
    finally:
        p.close()
    print(_row(annotator_json(a)))
    return 0


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from app.annotate import train_annotator
    from inference.finetune_head import head_options
    from inference.heads import FINE_TUNE, head_settings

    tuning = tuning_options(args)
    if tuning and args.head != FINE_TUNE:
        raise ValueError(f"{', '.join('--' + k.replace('_', '-') for k in tuning)} apply to --head fine-tune only.")
    head = head_options(tuning) if args.head == FINE_TUNE else head_settings(args.head, args.k)
    a = train_annotator(settings, args.model, Path(args.reference), args.label_column, args.name,
                        head, args.description or "", args.author or "", _ontology(args.ontology), args.seed)
    print(_row(a))
    return 0


def cmd_delete(args: argparse.Namespace, settings: Settings) -> int:
    p = _platform(settings)
    try:
        a = p.annotators.delete(args.annotator)
    finally:
        p.close()
    print(f"deleted {a.name}")
    return 0


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    p = _platform(settings)
    try:
        shutil.copyfile(p.annotators.export(args.annotator), args.out)
    finally:
        p.close()
    print(f"wrote {args.out}")
    return 0


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    from app.annotators import annotator_json

    p = _platform(settings)
    try:
        a = p.annotators.import_file(Path(args.file), args.name)
    finally:
        p.close()
    print(_row(annotator_json(a)))
    return 0


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Every annotators command, with the service's refusals as plain ``error:`` lines (exit 1)."""
    from app.annotators import AnnotatorFileError, AnnotatorInUse, Conflict
    from app.datasets import NotFound
    from inference.counts import AnnotationError

    try:
        return args.annotators_func(args, settings)
    except (AnnotatorFileError, AnnotatorInUse, Conflict, NotFound, AnnotationError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    ann = sub.add_parser("annotators", help="saved annotators: list, show, save, train, delete, export, import")
    asub = ann.add_subparsers(dest="annotators_command", required=True)
    ann.set_defaults(func=run)
    li = asub.add_parser("list", help="every annotator of this data home")
    li.add_argument("--json", action="store_true")
    li.set_defaults(annotators_func=cmd_list)
    sh = asub.add_parser("show", help="one annotator, as JSON")
    sh.add_argument("annotator", help="name or id")
    sh.set_defaults(annotators_func=cmd_show)
    for name, helptext in (("save", "save the head of a finished run that had a reference"),
                           ("train", "train a head on a labelled reference file and save it")):
        p = asub.add_parser(name, help=helptext)
        if name == "save":
            p.add_argument("run_id")
        else:
            p.add_argument("--model", required=True, help="baseline, geneformer[:VARIANT] or scgpt")
            p.add_argument("--reference", required=True, help="a labelled reference file")
            p.add_argument("--label-column", required=True)
            p.add_argument("--head", choices=["logistic_regression", "knn", "fine-tune"],
                           default="logistic_regression",
                           help="fine-tune: train the model itself (Geneformer, scGPT, UCE)")
            p.add_argument("--k", type=int)
            add_tuning_arguments(p)
            p.add_argument("--seed", type=int, default=0)
        p.add_argument("--name", required=True)
        p.add_argument("--description")
        p.add_argument("--author")
        p.add_argument("--ontology", nargs="+", metavar="LABEL=CL:ID",
                       help="Cell Ontology terms for labels (LABEL= leaves one unmapped)")
        p.set_defaults(annotators_func=cmd_save if name == "save" else cmd_train)
    de = asub.add_parser("delete", help="remove an annotator (built-in ones stay)")
    de.add_argument("annotator")
    de.set_defaults(annotators_func=cmd_delete)
    ex = asub.add_parser("export", help="write one file to share")
    ex.add_argument("annotator")
    ex.add_argument("--out", required=True)
    ex.set_defaults(annotators_func=cmd_export)
    im = asub.add_parser("import", help="add a shared annotator file (every part is checked first)")
    im.add_argument("file")
    im.add_argument("--name", help="a new name (e.g. when its own is taken here)")
    im.set_defaults(annotators_func=cmd_import)
