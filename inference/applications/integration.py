"""Embeddings and batch integration: one model's embedding of a multi-batch dataset, scored with scIB metrics.

A submission names a dataset, its batch column, optionally its cell-type column, and one or more models; the run
service makes one run per model, grouped, so the dashboard and the API show the models side by side. The science
is in ``inference/integration.py``; this module says what a submission needs and what runs where.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inference.applications.base import (
    Accepted,
    Application,
    ModelCannotUse,
    Outcome,
    RunRequest,
    ShouldStop,
    StageProgress,
    SubmissionError,
)
from inference.checks import CheckReport
from inference.counts import DataInput
from inference.embedding_store import EMBEDDINGS_DIR
from inference.integration import IntegrationJob, Stage, embed_model, finish_integration

MIN_BATCH_CELLS = 10  # fewer cells than this in a batch: no neighbourhood to mix, its scores would be noise


class EmbeddingIntegration(Application):
    id = "embedding-integration"
    name = "Embeddings and batch integration"
    description = ("Embed a dataset with several batches, donors or conditions with each model and score how well "
                   "each mixes the batches while keeping cell types apart (scIB metrics).")
    stages = {Stage.CHECKING: 0.02, Stage.EMBEDDING: 0.5, Stage.INTEGRATING: 0.05, Stage.UNINTEGRATED: 0.05,
              Stage.METRICS: 0.2, Stage.UMAP: 0.13, Stage.WRITING: 0.05}

    def validate(self, request: RunRequest) -> Accepted:
        data, options = request.query, request.options
        if request.reference is not None or request.annotator is not None:
            raise SubmissionError("Integration takes one dataset with its batch column: leave reference and "
                                  "annotator out.")
        report = CheckReport(data.check_report)
        columns = report.label_columns
        batch_column = options.get("batch_column")
        if not batch_column or not isinstance(batch_column, str):
            raise SubmissionError(f"Give the batch column of {data.file_name} (the batch, donor, condition or lab "
                                  f"of each cell); its candidate columns are: {', '.join(columns) or 'none'}.")
        if batch_column not in columns:
            why = report.rejected_label_columns.get(batch_column)
            raise SubmissionError(
                f"{batch_column!r} cannot be the batch column of {data.file_name}: "
                + (f"{why}. " if why else "it is not a text or categorical column of obs. ")
                + f"Its candidate columns are: {', '.join(columns) or 'none'}.")
        batches = {k: v for k, v in columns[batch_column].items() if k != "(missing)"}
        if "(missing)" in columns[batch_column]:
            raise SubmissionError(f"{columns[batch_column]['(missing)']:,} cells of {data.file_name} have no value "
                                  f"in {batch_column!r}: give every cell a batch (e.g. 'unknown').")
        small = {k: v for k, v in batches.items() if v < MIN_BATCH_CELLS}
        if len(batches) - len(small) < 2:
            raise SubmissionError(f"{batch_column!r} needs at least 2 batches of {MIN_BATCH_CELLS} or more cells; "
                                  f"it has {_listing(batches)}.")
        if small:
            raise SubmissionError(f"In {batch_column!r}, {_listing(small)} ha{'s' if len(small) == 1 else 've'} "
                                  f"fewer than {MIN_BATCH_CELLS} cells: merge or drop such batches first.")
        label_column = request.label_column or None
        if label_column is not None:
            if label_column == batch_column:
                raise SubmissionError("The cell-type column and the batch column must differ.")
            if label_column not in columns:
                why = report.rejected_label_columns.get(label_column)
                raise SubmissionError(f"{label_column!r} cannot be the cell-type column of {data.file_name}: "
                                      + (f"{why}. " if why else "it is not a label column. ")
                                      + f"Its label columns are: {', '.join(columns) or 'none'}.")
        overlap = report.overlap.get(request.model.backend)
        if overlap and not overlap["ok"]:
            raise ModelCannotUse(f"{request.model.name} cannot use {data.file_name}: {overlap['message']}")
        try:
            seed = int(options.get("seed", 0))
        except (TypeError, ValueError):
            raise SubmissionError("seed must be a whole number.") from None
        max_cells = options.get("max_metric_cells")
        if max_cells is not None and (isinstance(max_cells, bool) or not isinstance(max_cells, int)
                                      or max_cells < 100):
            raise SubmissionError("max_metric_cells must be a whole number of at least 100 (the metrics' sample).")
        unknown = set(options) - {"batch_column", "seed", "max_metric_cells", "variant"}
        if unknown:
            raise SubmissionError(f"Unknown option(s) for integration: {', '.join(sorted(map(str, unknown)))}; "
                                  "it takes batch_column, seed and max_metric_cells.")
        return Accepted(parameters={"batch_column": batch_column, "seed": seed, "max_metric_cells": max_cells,
                                    "batches": len(batches)},
                        label_column=label_column, truth_column=None, cells_total=int(data.n_cells or 0))

    def job(self, request: RunRequest, accepted: Accepted, out_dir: Path, home: Path) -> IntegrationJob:
        d, p = request.query, accepted.parameters
        return IntegrationJob(model_id=request.model.id, data=DataInput(d.path, d.file_name, d.sha256),
                              batch_column=p["batch_column"], label_column=accepted.label_column,
                              out_dir=str(out_dir), embeddings_dir=str(home / EMBEDDINGS_DIR),
                              seed=p.get("seed", 0), max_metric_cells=p.get("max_metric_cells"))

    def model_phase(self, job: IntegrationJob, backend: Any, model_info: dict, workdir: Path,
                    progress: StageProgress, should_stop: ShouldStop) -> None:
        embed_model(job, backend, model_info, workdir, progress, should_stop)

    def cpu_phase(self, job: IntegrationJob, workdir: Path, progress: StageProgress,
                  should_stop: ShouldStop) -> Outcome:
        result = finish_integration(job, workdir, progress, should_stop)
        return Outcome(n_cells=result["n_cells"], metrics=result["metrics"], provenance=result["provenance"],
                       stage_timings=result["stage_timings"])


def _listing(counts: dict[str, int]) -> str:
    shown = [f"{k!r} ({v:,} cells)" for k, v in list(counts.items())[:8]]
    return ", ".join(shown) + (f" and {len(counts) - 8} more" if len(counts) > 8 else "") if counts else "none"
