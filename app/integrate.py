"""Integrating a file from the command line, in this process: one model after another, the same application,
checks and jobs as a served run (embeddings from and into the data home's embedding store)."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from app.annotate import _dataset, build_backend, parse_model, vocabularies
from app.catalog import EMBEDDING_INTEGRATION
from app.settings import Settings
from inference import applications
from inference.applications.base import ModelInfo, RunRequest
from inference.run_files import ANNOTATED, atomic_path
from store.artifacts import ArtifactStore


def metrics_table(results: dict[str, dict]) -> pd.DataFrame:
    """Models as rows, the scIB metrics and aggregate scores as columns (raw values, not min-max scaled)."""
    rows = {model: {**r["metrics"].get("metrics", {}), **r["metrics"].get("aggregates", {})}
            for model, r in results.items()}
    return pd.DataFrame.from_dict(rows, orient="index")


def integrated_uns(results: dict[str, dict], batch_column: str, label_column: str | None) -> dict[str, object]:
    """``uns`` of an integrated file (the command line's and the Python API's): each model's metrics, and which
    models' weights were generated."""
    return {"helical_platform": {
        "application": EMBEDDING_INTEGRATION, "batch_column": batch_column, "label_column": label_column or "",
        "integration_metrics_json": json.dumps({m: r["metrics"] for m, r in results.items()}, default=str),
        "untrained_models": [m for m, r in results.items() if not r["provenance"]["model"].get("trained", True)]}}


def model_obsm(annotated: Path, model: str) -> dict[str, np.ndarray]:
    """One model's embedding and UMAP from its run's annotated file, under the integrated file's keys."""
    import anndata as ad

    done = ad.read_h5ad(annotated, backed="r")
    try:
        return {f"X_{model}": np.asarray(done.obsm[f"X_{model}"]), f"X_umap_{model}": np.asarray(done.obsm["X_umap"])}
    finally:
        done.file.close()


def integrate_files(settings: Settings, models: list[str], data: Path, out: Path, batch_column: str,
                    label_column: str | None = None, seed: int = 0,
                    max_metric_cells: int | None = None) -> dict[str, object]:
    """Each model's embedding of ``data``, scored; ``out`` gets every embedding (``obsm['X_<model>']``), each
    model's UMAP (``obsm['X_umap_<model>']``) and the metrics table (``uns``)."""
    from app.weights import weights_locations
    from inference.annotated import write_annotated

    if not models:
        raise ValueError("Give one or more models (--models baseline,harmony,geneformer).")
    application = applications.get(EMBEDDING_INTEGRATION)
    locations = weights_locations(settings)
    dataset = _dataset(data, vocabularies(locations))
    options = {"batch_column": batch_column, "seed": seed,
               **({"max_metric_cells": max_metric_cells} if max_metric_cells else {})}
    requests = []
    for model in models:  # every model checked before any is run
        backend_name, variant = parse_model(model)
        request = RunRequest(ModelInfo(backend_name, model, backend_name), dataset, None, label_column, None,
                             options)
        requests.append((backend_name, variant, request, application.validate(request)))

    def progress(stage: str, done: int, total: int) -> None:
        counted = f" {done}/{total} cells" if total else ""
        print(f"[{stage}]{counted}", file=sys.stderr, flush=True)

    store = ArtifactStore(settings.home)
    results: dict[str, dict] = {}
    obsm: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="integrate-", dir=store.home / "tmp") as tmp:
        for backend_name, variant, request, accepted in requests:
            print(f"== {backend_name}", file=sys.stderr, flush=True)
            backend, info = build_backend(backend_name, variant, locations, settings.device)
            result_dir, work = Path(tmp) / backend_name / "result", Path(tmp) / backend_name / "work"
            work.mkdir(parents=True)
            job = application.job(request, accepted, result_dir, store.home)
            application.model_phase(job, backend, info, work, progress, lambda: False)
            outcome = application.cpu_phase(job, work, progress, lambda: False)
            results[backend_name] = {"metrics": outcome.metrics, "provenance": outcome.provenance}
            obsm.update(model_obsm(result_dir / ANNOTATED, backend_name))
        table = metrics_table(results)
        with atomic_path(out) as tmp_out:
            write_annotated(data, data.name, tmp_out, {}, obsm, integrated_uns(results, batch_column, label_column))
    return {"results": results, "table": table}
