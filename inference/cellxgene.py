"""CELLxGENE-ready cell types: ``obs['cell_type_ontology_term_id']`` and ``obs['cell_type']`` by the schema's rules.

Rules as read in the CELLxGENE schema 7.1.0 (chanzuckerberg/single-cell-curation, schema/7.1.0/schema.md; the same in
5.x-7.0) and its validator's schema_definition.yaml, matching the schema version ``cellxgene-ontology-guide`` 1.11.1
pins (7.1.0, CL v2026-03-26):

- ``cell_type_ontology_term_id``: categorical of str; a CL term, CL:0000000 'cell' or below it; "unknown" when no
  appropriate term can be found; never CL:0000255 'eukaryotic cell', CL:0000257 'Eumycetozoan cell' or CL:0000548
  'animal cell'; obsolete terms MUST NOT be used. ("na" is for cell lines only; ZFA/FBbt/WBbt terms are allowed for
  fish, flies and worms: neither applies to these predictions.)
- ``cell_type``: categorical of str; "unknown" when the id is "unknown", else the id's CL label.

``cell_type`` is written by CELLxGENE Discover itself: its validator refuses an upload that already has it ("Add
labels error: Column 'cell_type' is a reserved column name"). ``write_cellxgene`` writes it for people reading the
file; pass ``labels=None`` for a file to upload.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from inference.ontology import OntologyError, check_term

UNKNOWN = "unknown"
TERM_COLUMN = "cell_type_ontology_term_id"
LABEL_COLUMN = "cell_type"


def cellxgene_columns(predicted_labels: np.ndarray, mapping: Mapping[str, str | None],
                      unassigned: str = "unassigned") -> tuple[np.ndarray, np.ndarray]:
    """Per cell, the CELLxGENE term id and label of its predicted label: "unknown" for unassigned and unmapped.

    ``mapping``: label -> confirmed CL id or None. An id ``check_term`` refuses (forbidden, obsolete, not CL)
    raises ``OntologyError`` naming the label, so no such term is ever written.
    """
    codes, uniques = pd.factorize(pd.Series(np.asarray(predicted_labels, dtype=object)), use_na_sentinel=True)
    ids, labels = [], []
    for label in uniques:
        term_id = None if _missing(label) or label == unassigned else mapping.get(label)
        if not term_id:
            ids.append(UNKNOWN)
            labels.append(UNKNOWN)
            continue
        try:
            labels.append(check_term(term_id))
        except OntologyError as e:
            raise OntologyError(f"label {label!r}: {e}") from None
        ids.append(term_id)
    ids.append(UNKNOWN)  # for missing labels (code -1)
    labels.append(UNKNOWN)
    return np.array(ids, dtype=object)[codes], np.array(labels, dtype=object)[codes]


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _free_name(columns: pd.Index, name: str) -> str:
    """``name``, or ``name_2``, ``name_3``... when the user already has a column of that name."""
    candidate, n = name, 1
    while candidate in columns:
        n += 1
        candidate = f"{name}_{n}"
    return candidate


def _checked(term_ids: np.ndarray, labels: np.ndarray | None, n_obs: int) -> None:
    """Refuse what the schema refuses before anything is written: wrong length, bad terms, labels not the term's."""
    if len(term_ids) != n_obs or (labels is not None and len(labels) != n_obs):
        raise ValueError(f"The file has {n_obs} cells but {len(term_ids)} term ids"
                         + ("" if labels is None else f" and {len(labels)} labels") + " were given.")
    pairs = pd.DataFrame({"id": np.asarray(term_ids, dtype=object),
                          "label": np.asarray(term_ids if labels is None else labels, dtype=object)}).drop_duplicates()
    for term_id, label in pairs.itertuples(index=False):
        expected = UNKNOWN if term_id == UNKNOWN else check_term(term_id)
        if labels is not None and label != expected:
            raise ValueError(f"cell_type {label!r} is not the label of {term_id} ({expected!r}).")


def write_cellxgene(src_h5ad: Path, dst: Path, term_ids: np.ndarray, labels: np.ndarray | None) -> Path:
    """A copy of ``src_h5ad`` at ``dst`` with the two CELLxGENE columns set, every other column kept.

    The user's own ``cell_type`` / ``cell_type_ontology_term_id`` columns are kept, renamed ``cell_type_original``
    / ``cell_type_ontology_term_id_original`` (``_2``, ``_3``... if those names are taken too). ``labels=None``
    writes no ``cell_type`` (CELLxGENE Discover adds it on upload). The file is copied as it is (streamed) and only
    its ``obs`` is rewritten in the copy, so a million-cell file's matrices never pass through memory; written to a
    temporary name first, so a failure leaves no partial ``dst``.
    """
    import h5py
    from anndata.io import read_elem, write_elem

    src, dst = Path(src_h5ad), Path(dst)
    if src.resolve() == dst.resolve():
        raise ValueError("Write the CELLxGENE copy to a new file, not over the original.")
    with h5py.File(src, "r") as f:
        obs: pd.DataFrame = read_elem(f["obs"])
    _checked(term_ids, labels, len(obs))
    renames = {c: _free_name(obs.columns, f"{c}_original") for c in (LABEL_COLUMN, TERM_COLUMN) if c in obs.columns}
    obs = obs.rename(columns=renames)
    obs[TERM_COLUMN] = pd.Categorical(np.asarray(term_ids, dtype=str))
    if labels is not None:
        obs[LABEL_COLUMN] = pd.Categorical(np.asarray(labels, dtype=str))
    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = dst.with_name(f".{dst.name}.partial.h5ad")
    try:
        shutil.copyfile(src, partial)
        with h5py.File(partial, "r+") as f:
            del f["obs"]
            write_elem(f, "obs", obs)
        os.replace(partial, dst)
    finally:
        partial.unlink(missing_ok=True)
    return dst


def cellxgene_from_result(result_dir: Path, out: Path) -> Path:
    """The CELLxGENE copy of a finished run's annotated file: each cell's predicted label as its Cell Ontology
    term, as the run recorded it (the annotator's confirmed map); refused, in plain words, for a run whose labels
    were not mapped."""
    import pyarrow.parquet as pq

    from inference.run_files import ANNOTATED, PREDICTIONS, atomic_path

    predictions = Path(result_dir) / PREDICTIONS
    if "predicted_cell_type_ontology_term_id" not in pq.ParquetFile(predictions).schema_arrow.names:
        raise OntologyError("This run's labels are not mapped to Cell Ontology terms, so it has no CELLxGENE "
                            "cell_type: save it as an annotator (confirming a term for each label) and annotate "
                            "with that annotator, or use one that maps its labels (the built-in PBMC one does).")
    table = pd.read_parquet(predictions, columns=["predicted_label", "predicted_cell_type_ontology_term_id"])
    pairs = table.drop_duplicates()
    mapping = {str(label): (str(term) or None) for label, term in pairs.itertuples(index=False)}
    term_ids, labels = cellxgene_columns(table["predicted_label"].to_numpy(), mapping)
    with atomic_path(out) as tmp:  # a name of its own: two downloads at once never share a partial file
        write_cellxgene(Path(result_dir) / ANNOTATED, tmp, term_ids, labels)
    return Path(out)
