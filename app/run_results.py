"""Reading a finished run's files: the results page of the API, paged cells, columns for the views, exports.

Only what is asked for is read: a page reads the parquet row groups that hold it, the UMAP only its columns,
so a million-cell run costs what a small one does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from inference import applications
from inference.csv_safe import write_csv
from inference.run_files import ANNOTATED, CELLXGENE, CSV, PREDICTIONS, PROBABILITY_PREFIX, UNSAFE_CSV, atomic_path
from store.artifacts import ArtifactStore
from store.tables import Run, RunStatus

LABEL_COLUMNS = ("predicted_label", "true_label", "split")


class RunNotFinished(RuntimeError):
    pass


class ResultsReader:
    def __init__(self, artifacts: ArtifactStore, get_run: Callable[[str], Run]) -> None:
        self.artifacts, self.get_run = artifacts, get_run

    def result_dir(self, run_id: str) -> Path:
        run = self.get_run(run_id)
        if run.status != RunStatus.DONE:
            raise RunNotFinished(f"Run {run_id} is {run.status}; results exist once it is done.")
        return self.artifacts.run_dir(run_id)

    def results(self, run_id: str, offset: int = 0, limit: int = 100, probabilities: bool = False) -> dict:
        """Metrics, confusion matrix, provenance and a page of per-cell predictions, from the run's files; with
        ``probabilities``, every class's probability per cell (``p_<class>``), else only the best one's."""
        import pyarrow.parquet as pq

        run = self.get_run(run_id)
        offset, limit = max(0, offset), max(0, min(limit, 10_000))
        names = pq.read_schema(self.result_dir(run_id) / PREDICTIONS).names
        columns = names if probabilities else [c for c in names if not c.startswith(PROBABILITY_PREFIX)]
        page, total = self.page(run_id, offset, limit, columns)
        classes = run.provenance.get("head", {}).get("classes", [])
        return {"run_id": run_id, "application": run.application_id, "group_id": run.group_id,
                "metrics": run.metrics, "classes": classes,
                "confusion_matrix": run.metrics.get("confusion_matrix"), "provenance": run.provenance,
                "predicted_counts": run.parameters.get("predicted_counts", {}),
                "cells": {"offset": offset, "limit": limit, "total": total,
                          "items": page.to_dict(orient="records")}}

    def page(self, run_id: str, offset: int, limit: int, columns: list[str] | None = None) -> tuple[pd.DataFrame, int]:
        """Rows ``offset`` to ``offset + limit`` of the per-cell predictions and the total: only the parquet row
        groups that hold them are read, so a page of a million-cell run costs what a page of a small one does."""
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(self.result_dir(run_id) / PREDICTIONS)
        meta = pf.metadata
        groups, first, start = [], None, 0
        for i in range(meta.num_row_groups):
            n = meta.row_group(i).num_rows
            if limit and start + n > offset and start < offset + limit:
                groups.append(i)
                first = start if first is None else first
            start += n
        if not groups:
            empty = pf.schema_arrow.empty_table()
            return (empty.select(columns) if columns else empty).to_pandas(), meta.num_rows
        table = pf.read_row_groups(groups, columns=columns)
        return table.slice(offset - first, limit).to_pandas(), meta.num_rows

    def cells(self, run_id: str, columns: list[str] | None = None) -> pd.DataFrame:
        """Per-cell predictions of a finished run (only the columns asked for are read). Labels come as
        categoricals (parquet's dictionary, not a string per cell: 10 million cells load in seconds, not minutes)."""
        return read_cells(self.result_dir(run_id) / PREDICTIONS, columns)


    def export(self, run_id: str, fmt: str) -> Path:
        """The annotated .h5ad, or the per-cell CSV (written once, atomically, from the predictions)."""
        folder = self.result_dir(run_id)
        offered = applications.get(self.get_run(run_id).application_id).downloads
        if fmt not in offered:
            raise ValueError(f"This run's results come as {', '.join(offered)}, not {fmt!r}.")
        if fmt == "h5ad":
            return folder / ANNOTATED
        if fmt == "cellxgene":
            out = folder / CELLXGENE
            if not out.exists():
                from inference.cellxgene import cellxgene_from_result

                cellxgene_from_result(folder, out)  # written under a temporary name, renamed when complete
            return out
        if fmt != "csv":
            raise ValueError(f"Unknown format {fmt!r}: choose h5ad, csv or cellxgene.")
        (folder / UNSAFE_CSV).unlink(missing_ok=True)  # an older version's CSV, cells not neutralised
        csv = folder / CSV
        if not csv.exists():  # a row group (10,000 cells) at a time: a million-cell table is never held whole
            import pyarrow.parquet as pq

            source = pq.ParquetFile(folder / PREDICTIONS)
            with atomic_path(csv) as tmp, open(tmp, "w", newline="") as fh:
                for i in range(source.num_row_groups):
                    write_csv(source.read_row_group(i).to_pandas(), fh, header=i == 0)  # no formula cells
        return csv


def read_cells(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """The columns asked for of a predictions table (all without), labels as categoricals."""
    import pyarrow.parquet as pq

    available = pq.ParquetFile(path).schema_arrow.names
    wanted = [c for c in columns if c in available] if columns else available
    labels = [c for c in LABEL_COLUMNS if c in wanted]
    return pq.read_table(path, columns=wanted, read_dictionary=labels).to_pandas()
