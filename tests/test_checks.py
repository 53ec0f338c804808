"""Input checks on real files and on broken ones built here: each finding has its own message."""

from __future__ import annotations

from pathlib import Path

import pytest
import scanpy

from inference.checks import Vocabulary, check_file
from inference.weights import vocabulary_genes
from tests.broken_files import BROKEN, duplicated_genes
from tests.conftest import PBMC

PBMC68K = Path(scanpy.__file__).parent / "datasets" / "10x_pbmc68k_reduced.h5ad"


def _vocabs(tiny_locations):
    out = {}
    for backend, variant in (("geneformer", "gf-6L-10M-i2048"), ("scgpt", "whole-human")):
        kind, genes = vocabulary_genes(tiny_locations.resolve(backend, variant, verify=False))
        out[backend] = Vocabulary(kind, genes)
    return out


def test_the_pbmc_subset_is_raw_counts_with_ensembl_ids_and_a_label_column(tiny_locations):
    report = check_file(PBMC, vocabularies=_vocabs(tiny_locations))
    assert report["ok"] and report["errors"] == []
    assert (report["n_cells"], report["n_genes"]) == (599, 32738)
    assert report["values"]["source"] == "X" and report["values"]["kind"] == "counts"
    assert report["genes"]["source"] == "var['gene_ids']" and report["genes"]["ensembl_given"] == 32738
    assert report["label_columns"]["celltype"]["CD4 T"] == 255
    for model in ("geneformer", "scgpt"):
        assert report["overlap"][model]["ok"] and report["overlap"][model]["count_share"] > 0.9


def test_scanpys_pbmc68k_reduced_recovers_counts_from_raw_and_is_refused_for_few_genes(tiny_locations):
    report = check_file(PBMC68K, vocabularies=_vocabs(tiny_locations))
    assert report["ok"]
    assert report["values"] | {"source": "raw.X", "recovered": True, "totals_column": "n_counts"} == report["values"]
    assert any(w["code"] == "counts_recovered" for w in report["warnings"])
    assert report["genes"]["mapped_from_symbols"] == 700
    assert "bulk_labels" in report["label_columns"] and "n_genes" not in report["label_columns"]
    assert not report["overlap"]["geneformer"]["ok"]
    assert "765 genes" in report["overlap"]["geneformer"]["message"]


@pytest.mark.parametrize("case", list(BROKEN))
def test_each_broken_file_gets_its_own_message(case, tmp_path):
    make, expected = BROKEN[case]
    report = check_file(make(tmp_path))
    assert not report["ok"], report
    text = " ".join(e["message"] for e in report["errors"])
    assert expected in text, text


def test_duplicated_gene_names_are_a_warning_naming_the_gene(tmp_path):
    report = check_file(duplicated_genes(tmp_path))
    assert report["ok"]
    assert any(w["code"] == "duplicate_genes" for w in report["warnings"])


def test_distinct_messages_for_distinct_problems(tmp_path):
    messages = set()
    for i, (make, _) in enumerate(BROKEN.values()):
        folder = tmp_path / str(i)
        folder.mkdir()
        report = check_file(make(folder))
        messages.add(report["errors"][0]["message"].split(":")[0][:60])
    assert len(messages) >= 12


def test_other_formats_are_read(tmp_path):
    import anndata as ad

    a = ad.read_h5ad(PBMC)[:50, :300].copy()
    csv = tmp_path / "cells.csv"
    a.to_df().to_csv(csv)
    report = check_file(csv)
    assert report["format"] == "csv" and report["n_cells"] == 50 and report["values"]["kind"] == "counts"
    loom = tmp_path / "cells.loom"
    a.write_loom(loom)
    assert check_file(loom)["format"] == "loom"
