"""``helical-platform``: the command line for scripts and HPC users (later issues add subcommands)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from app.catalog import NEEDS_GPU, needs_gpu
from app.cli_annotators import add_parser as add_annotators_parser
from app.cli_integrate import add_parser as add_integrate_parser
from app.cli_runs import add_parser as add_runs_parser
from app.cli_tuning import add_tuning_arguments, tuning_options
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
            "models": [{**m.model_dump(exclude={"accuracy_source"}), "requires_gpu": needs_gpu(m)}
                       for m in platform.models()],
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
                      f"weights {m['weights_status']}" + (f" ({NEEDS_GPU}: runs on GPU workers only)"
                                                          if m["requires_gpu"] else ""))
    return 0


def cmd_init(args: argparse.Namespace, settings: Settings) -> int:
    """Create the data home and database, seed the catalog (the server does this at start too)."""
    platform = _platform(settings)
    platform.close()
    print(f"initialised {settings.home} (schema version {platform.schema_version})")
    return 0


def cmd_weights_stage(args: argparse.Namespace, settings: Settings) -> int:
    from inference.weights_stage import stage

    staged = stage(Path(args.src), settings.weights_dir, trained=not args.untrained, note=args.note or "")
    for backend, variants in staged.items():
        for variant in variants:
            print(f"staged {backend} {variant} into {settings.weights_dir}")
    _refresh(settings)
    return 0


def cmd_weights_verify(args: argparse.Namespace, settings: Settings) -> int:
    from inference.weights_stage import verify

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
    written = generate(out, args.size, variants, scgpt=not args.no_scgpt, seed=args.seed, uce=args.uce,
                       nicheformer=args.nicheformer, transcriptformer=args.transcriptformer)
    for key in written:
        print(f"generated {key} ({args.size}, untrained, random weights) in {out}")
    _refresh(settings)
    return 0


def _refresh(settings: Settings) -> None:
    from app.weights import refresh_weights_status

    platform = _platform(settings)
    refresh_weights_status(platform.engine, platform.weights)
    platform.close()


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    from app.annotate import vocabularies
    from app.weights import weights_locations
    from inference.checks import CheckReport, check_file

    report = check_file(Path(args.file), vocabularies=vocabularies(weights_locations(settings)))
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(format_report(report))
    return 0 if CheckReport(report).ok else 1


def format_report(data: dict) -> str:
    """The check report in words a biologist reads top to bottom."""
    from inference.checks import CheckReport

    report = CheckReport(data)
    lines = [f"{report.file}: {'OK' if report.ok else 'NOT USABLE'}"
             + (f" ({report.format})" if report.format else "")]
    if "n_cells" in data:
        lines.append(f"  {report.n_cells:,} cells x {report.n_genes:,} genes")
    values = report.values
    if values.get("source"):
        how = "recovered from log-normalised values" if values.get("recovered") else values.get("detail", "")
        lines.append(f"  counts: {values['source']} ({how})")
    genes = report.genes
    if genes:
        lines.append(f"  gene ids: {genes['source']}; {genes['ensembl_given']:,} Ensembl, "
                     f"{genes['mapped_from_symbols']:,} mapped from symbols, {genes['unmapped']:,} unmapped, "
                     f"{genes['duplicated_ensembl_ids']:,} duplicated")
    for model, o in report.overlap.items():
        lines.append(f"  {model}: {o['genes']:,} genes in vocabulary, {o['count_share']:.0%} of counts "
                     f"[{o['level']}] {o['message']}")
    for col, classes in report.label_columns.items():
        shown = ", ".join(f"{k} {v}" for k, v in list(classes.items())[:8])
        more = f", … ({len(classes)} classes)" if len(classes) > 8 else ""
        lines.append(f"  label column {col!r}: {shown}{more}")
    for e in report.errors:
        lines.append(f"  ERROR [{e['code']}]: {e['message']}")
    for w in report.warnings:
        lines.append(f"  warning [{w['code']}]: {w['message']}")
    return "\n".join(lines)


def cmd_annotate(args: argparse.Namespace, settings: Settings) -> int:
    from app.annotate import annotate_files
    from inference.applications.base import SubmissionError
    from inference.pipeline import AnnotationError

    try:
        result = annotate_files(settings, args.model, Path(args.query), Path(args.out), args.label_column,
                                Path(args.reference) if args.reference else None, args.truth_column, args.csv,
                                args.confidence, args.seed, _annotate_options(args), args.annotator, args.cellxgene,
                                _truth_terms(args.truth_term))
    except (AnnotationError, SubmissionError, ValueError, LookupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    model = result["provenance"]["model"]
    if not model.get("trained", True):
        print("NOTE: this model's weights are generated and untrained; its predictions mean nothing.")
    extra = [str(Path(args.out).with_suffix(s)) for s, on in ((".csv", args.csv),
                                                              (".cellxgene.h5ad", args.cellxgene)) if on]
    print(f"wrote {args.out}" + "".join(f" and {e}" for e in extra))
    counts = ", ".join(f"{k} {v}" for k, v in result["predicted_counts"].items())
    print(f"predicted: {counts}")
    m = result["metrics"]
    if m:
        print(f"macro-F1 {m['macro_f1']:.3f}  accuracy {m['accuracy']:.3f}  ({m['scope']}, {_covers(m)})")
        if m.get("majority_voting"):
            v = m["majority_voting"]
            print(f"majority voting ({v['clusters']} clusters): macro-F1 {v['macro_f1']:.3f}  "
                  f"accuracy {v['accuracy']:.3f}  ({_covers(v)})")
        if m.get("cell_class"):
            print(_class_line(m["cell_class"], result.get("truth_ontology") or {}))
        cal = m.get("calibration") or {}
        if cal.get("ece") is not None:
            before = (f" (before temperature scaling {cal['ece_before_temperature']:.3f}, T = {cal['temperature']:.2f})"
                      if cal.get("ece_before_temperature") is not None else "")
            print(f"expected calibration error {cal['ece']:.3f}{before}")
        for cls, r in m["per_class"].items():
            print(f"  {cls:<24} precision {r['precision']:.2f} recall {r['recall']:.2f} f1 {r['f1']:.2f} "
                  f"support {r['support']}")
    return 0


def _covers(m: dict) -> str:
    """'8 classes, 2,500 labelled cells' or, for part of them, '2 classes, 259 of 2,500 labelled cells'."""
    from app.rest_json import coverage

    c = coverage(m)
    of = f" of {c['labelled_cells']:,}" if "labelled_cells" in m else ""
    return f"{c['n_classes']} class{'es' if c['n_classes'] != 1 else ''}, {c['n_cells']:,}{of} labelled cells"


def _class_line(m: dict, terms: dict) -> str:
    """The cell-class score with what it covers, what it leaves out, and plainly when it is not the run's score."""
    from app.rest_json import coverage

    c = coverage(m)
    text = (f"cell class (Cell Ontology): macro-F1 {m['macro_f1']:.3f}  accuracy {m['accuracy']:.3f}  "
            f"({_covers(m)})")
    if c["partial"]:
        text = "NOT THE RUN'S SCORE (too few cells or classes): " + text
    if c["left_out_cells"]:
        text += (f"\n  {c['left_out_cells']:,} cells whose true label has no Cell Ontology class are left out ("
                 f"{', '.join(c['left_out_labels'])}): map them with --truth-term LABEL=CL:ID")
    given = sorted(label for label, t in terms.items() if t.get("how") == "given")
    mapped = sum(1 for t in terms.values() if t.get("term_id"))
    if terms:
        text += (f"\n  true labels mapped: {mapped} of {len(terms)}"
                 + (f" ({len(given)} as given with --truth-term, the rest as suggested)" if given else
                    " (as suggested; --truth-term LABEL=CL:ID changes one)"))
    return text


def _truth_terms(pairs: list[str] | None) -> dict[str, str | None] | None:
    """``--truth-term "CD4 T cells=CL:0000624"`` (repeatable; nothing after '=': the label stays unmapped)."""
    if not pairs:
        return None
    out: dict[str, str | None] = {}
    for pair in pairs:
        label, sep, term = pair.rpartition("=")
        if not sep or not label.strip():
            raise ValueError(f"--truth-term {pair!r}: write LABEL=CL:ID (e.g. \"CD4 T cells=CL:0000624\"), or "
                             "LABEL= to leave the label unmapped.")
        out[label.strip()] = term.strip() or None
    return out


def _annotate_options(args: argparse.Namespace) -> dict[str, object]:
    options: dict[str, object] = {"majority_voting": args.majority_voting,
                                  "novelty_threshold": args.novelty_threshold}
    if args.head is not None:
        options["head"] = args.head
    if args.k is not None:
        options["k"] = args.k
    if args.max_reference_cells is not None:
        options["max_reference_cells"] = args.max_reference_cells
    return {**options, **tuning_options(args)}


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
    ge.add_argument("--uce", action="store_true",
                    help="also write UCE (4-layer layout; loading it takes about 4 GB of memory)")
    ge.add_argument("--nicheformer", action="store_true",
                    help="also write Nicheformer (its release's 20,310-gene vocabulary and 1,500-token context)")
    ge.add_argument("--transcriptformer", action="store_true",
                    help="also write TranscriptFormer tf_sapiens (runs only on GPU workers; never generated at start)")
    ge.add_argument("--seed", type=int, default=0)
    ge.add_argument("--out", help="folder to write into (default: the data home's weights-generated/)")
    ge.set_defaults(func=cmd_weights_generate)
    check = sub.add_parser("check", help="check a single-cell file and say what was found")
    check.add_argument("file")
    check.add_argument("--json", action="store_true", help="machine-readable report")
    check.set_defaults(func=cmd_check)

    ann = sub.add_parser("annotate", help="annotate a query file with a model and a labelled reference")
    ann.add_argument("--model", help="baseline, geneformer[:VARIANT] or scgpt (with --annotator: its model)")
    ann.add_argument("--query", required=True, help="the cells to annotate")
    ann.add_argument("--reference", help="a labelled reference; without it, evaluate on a 70/30 split of the query")
    ann.add_argument("--label-column", help="the reference's (or query's, without one) labels")
    ann.add_argument("--annotator", help="a saved annotator (name or id) instead of a reference")
    ann.add_argument("--truth-column", help="the query's true labels: enables metrics")
    ann.add_argument("--truth-term", action="append", metavar="LABEL=CL:ID",
                     help="the Cell Ontology term of a true label, for the cell-class scores (repeatable; LABEL= "
                          "leaves it unmapped); other labels take the annotator's term for the same spelling, else "
                          "the suggested one; with --annotator only")
    ann.add_argument("--out", required=True, help="the annotated .h5ad to write")
    ann.add_argument("--csv", action="store_true", help="also write OUT.csv with per-cell predictions")
    ann.add_argument("--cellxgene", action="store_true",
                     help="also write OUT.cellxgene.h5ad with CELLxGENE's cell_type_ontology_term_id and cell_type "
                          "(needs an annotator whose labels map to Cell Ontology terms)")
    ann.add_argument("--confidence", type=float, default=0.5, help="below it a cell is 'unassigned'")
    ann.add_argument("--seed", type=int, default=0)
    ann.add_argument("--head", choices=["logistic_regression", "knn", "fine-tune"],
                     help="logistic regression (the default), kNN reference mapping, or fine-tune the model "
                          "(Geneformer, scGPT, UCE) on the reference")
    ann.add_argument("--k", type=int, help="neighbours of the knn head (default 15, or the smallest class's size)")
    add_tuning_arguments(ann)
    ann.add_argument("--max-reference-cells", type=int,
                     help="train the head on at most this many labelled reference cells (default 100000; beyond, "
                          "a seeded sample keeping each type's share, at least 500 of each type; 0: every cell)")
    ann.add_argument("--majority-voting", action="store_true",
                     help="also label each over-cluster of the query by its majority (obs['majority_voting'])")
    ann.add_argument("--novelty-threshold", type=float, default=0.0,
                     help="cells whose reference_fit is below it are 'unassigned' (0 to 1; default 0: none)")
    ann.set_defaults(func=cmd_annotate)
    add_annotators_parser(sub)
    add_integrate_parser(sub)
    add_runs_parser(sub)
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
