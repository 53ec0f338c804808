"""``helical-platform integrate`` (one file, several models, scIB metrics) and ``helical-platform datasets``
(list, delete, see or free stored embeddings) on this data home, without a server."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from app.settings import Settings


def _platform(settings: Settings):  # noqa: ANN202
    from app.platform import Platform

    return Platform(settings, start_cluster=False)


def cmd_integrate(args: argparse.Namespace, settings: Settings) -> int:
    from app.integrate import integrate_files
    from inference.applications.base import SubmissionError
    from inference.counts import AnnotationError

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        out = integrate_files(settings, models, Path(args.data), Path(args.out), args.batch_column,
                              args.label_column, args.seed, args.max_metric_cells)
    except (AnnotationError, SubmissionError, ValueError, LookupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    untrained = [m for m, r in out["results"].items() if not r["provenance"]["model"].get("trained", True)]
    if untrained:
        print(f"NOTE: {', '.join(untrained)}: generated, untrained weights; their scores mean nothing.")
    print(f"wrote {args.out}")
    table = out["table"]
    if args.json:
        print(table.to_json(orient="index", indent=2))
    else:
        print(table.round(3).to_string())
        for model, r in out["results"].items():
            sample = r["metrics"].get("sample") or {}
            if sample.get("sampled"):
                print(f"{model}: metrics on {sample['cells']:,} of {sample['of']:,} cells ({sample['rule']})")
    return 0


def cmd_datasets_list(args: argparse.Namespace, settings: Settings) -> int:
    platform = _platform(settings)
    try:
        rows = [(d, platform.datasets.embeddings_size(d)) for d in platform.datasets.list()]
    finally:
        platform.close()
    for d, emb in rows:
        print(f"{d.id}  {d.file_name:<40} {d.n_cells or 0:>9,} cells  {d.size_bytes / 2**20:>8.1f} MB  "
              f"embeddings {emb / 2**20:>8.1f} MB")
    return 0


def cmd_datasets_delete(args: argparse.Namespace, settings: Settings) -> int:
    from app.datasets import DatasetInUse, NotFound

    platform = _platform(settings)
    try:
        out = platform.datasets.delete(args.dataset, cascade=args.cascade)
    except (DatasetInUse, NotFound, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        platform.close()
    print(f"deleted dataset {out['dataset_id']} and {len(out['runs_deleted'])} run(s); "
          f"freed {out['bytes_freed'] / 2**20:.1f} MB")
    return 0


def cmd_datasets_embeddings(args: argparse.Namespace, settings: Settings) -> int:
    from app.datasets import NotFound

    platform = _platform(settings)
    try:
        out = (platform.datasets.delete_embeddings(args.dataset) if args.delete
               else platform.datasets.embeddings_of(args.dataset))
    except (NotFound, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        platform.close()
    print(json.dumps(out, indent=2, default=str))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    it = sub.add_parser("integrate", help="embed a multi-batch file with several models and score each with the "
                                          "scIB metrics")
    it.add_argument("data", help="an .h5ad (or other single-cell file) with a batch column")
    it.add_argument("--models", required=True,
                    help="comma-separated: baseline, harmony, geneformer[:VARIANT], scgpt (one run each)")
    it.add_argument("--batch-column", required=True, help="the obs column of each cell's batch, donor or condition")
    it.add_argument("--label-column", help="the obs column of cell types: enables the bio-conservation metrics")
    it.add_argument("--out", required=True, help="the .h5ad to write (obsm X_<model>, X_umap_<model>; metrics in "
                                                 "uns)")
    it.add_argument("--seed", type=int, default=0)
    it.add_argument("--max-metric-cells", type=int,
                    help="above it, the metrics use a seeded sample stratified by batch and cell type")
    it.add_argument("--json", action="store_true", help="print the metrics table as JSON")
    it.set_defaults(func=cmd_integrate)

    ds = sub.add_parser("datasets", help="list stored datasets, delete one, see or free its stored embeddings")
    dsub = ds.add_subparsers(dest="datasets_command", required=True)
    li = dsub.add_parser("list", help="datasets with their size and their stored embeddings' size")
    li.set_defaults(func=cmd_datasets_list)
    de = dsub.add_parser("delete", help="delete a dataset, its file and stored embeddings")
    de.add_argument("dataset", help="the dataset id")
    de.add_argument("--cascade", action="store_true", help="also delete its finished runs")
    de.set_defaults(func=cmd_datasets_delete)
    em = dsub.add_parser("embeddings", help="a dataset's stored embeddings (one per model, weights, settings)")
    em.add_argument("dataset", help="the dataset id")
    em.add_argument("--delete", action="store_true", help="free them (the next run computes them again)")
    em.set_defaults(func=cmd_datasets_embeddings)
