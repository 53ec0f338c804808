"""Cell Ontology (CL) terms for predicted labels: suggest, validate, and a coarse class from the ancestors.

Labels in references are lab spellings ("CD14 Monocytes", "NK"); shared and CELLxGENE-ready results need CL ids.
The terms come from ``cellxgene-ontology-guide``, whose CL release ships inside the package (zstd-compressed JSON
under its ``data/`` folder, read with ``open``; the package imports no network library), so nothing here touches
the network; tests/test_ontology.py runs everything with sockets refused. We use the newest CELLxGENE schema the
package knows (7.1.0 for 1.11.1, pinning CL v2026-03-26).

Suggestions are only a starting point: the user confirms or changes each one (``check_term`` refuses bad ids in
plain words) and a label with no clear term stays unmapped. No fuzzy matching: a wrong term that looks right is
worse than none.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

ROOT = "CL:0000000"  # 'cell': every usable cell type is this term or below it
# The CELLxGENE schema (5.0.0 to 7.1.0, section cell_type_ontology_term_id; the validator's
# schema_definition.yaml lists the same three under "forbidden") says these MUST NOT be used.
FORBIDDEN_TERMS = {"CL:0000255": "eukaryotic cell", "CL:0000257": "Eumycetozoan cell", "CL:0000548": "animal cell"}

# The coarse level (obs['predicted_cell_class']), in order of preference when two unrelated classes both match.
# The most specific listed ancestor wins, so a plasma cell is "plasma cell", not "B cell"; a pDC is "dendritic cell".
CELL_CLASSES: tuple[tuple[str, str], ...] = (
    ("CL:0000084", "T cell"),
    ("CL:0000623", "natural killer cell"),
    ("CL:0001065", "innate lymphoid cell"),
    ("CL:0000236", "B cell"),
    ("CL:0000786", "plasma cell"),
    ("CL:0000576", "monocyte"),
    ("CL:0000235", "macrophage"),
    ("CL:0000451", "dendritic cell"),
    ("CL:0000556", "megakaryocyte"),
    ("CL:0000233", "platelet"),
    ("CL:0000232", "erythrocyte"),
    ("CL:0000775", "neutrophil"),
    ("CL:0000771", "eosinophil"),
    ("CL:0000767", "basophil"),
    ("CL:0000097", "mast cell"),
    ("CL:0008001", "hematopoietic precursor cell"),
    ("CL:0000542", "lymphocyte"),
    ("CL:0000738", "leukocyte"),
    ("CL:0000066", "epithelial cell"),
    ("CL:0000115", "endothelial cell"),
    ("CL:0000057", "fibroblast"),
    ("CL:0000192", "smooth muscle cell"),
    ("CL:0000540", "neuron"),
    ("CL:0000125", "glial cell"),
)

# Head words of lab labels, as the last word (after plural -> singular): the CL name they abbreviate.
ABBREVIATIONS = {
    "t": "T cell",
    "b": "B cell",
    "nk": "natural killer cell",
    "dc": "dendritic cell",
    "dendritic": "dendritic cell",
    "pdc": "plasmacytoid dendritic cell",
    "cdc": "conventional dendritic cell",
    "mono": "monocyte",
    "treg": "regulatory T cell",
    "plasma": "plasma cell",
}

# Labels the rules cannot reach, written as the normalised form (see ``_normalise``) -> the CL label. Each names
# one CL term without doubt for PBMC data: Seurat's pbmc3k tutorial, 10x/Zheng et al. 2017 sorted populations
# (scanpy's pbmc68k_reduced ``bulk_labels``), Azimuth's "CD16 Mono".
PHRASES = {
    "cd4-positive t cell": "CD4-positive, alpha-beta T cell",  # "CD4 T": CD4 T cells are alpha-beta T cells
    "cd8-positive t cell": "CD8-positive, alpha-beta T cell",
    "cd16-positive monocyte": "CD14-low, CD16-positive monocyte",  # non-classical, as "CD16 Mono" means in PBMC atlases
    "fcgr3a-positive monocyte": "CD14-low, CD16-positive monocyte",  # FCGR3A is the gene of CD16
    "fcgr3a monocyte": "CD14-low, CD16-positive monocyte",
    "cd14-positive, cd16-negative monocyte": "CD14-positive, CD16-negative classical monocyte",
    "cd56-positive natural killer cell": "natural killer cell",  # CD56 marks NK cells as a whole
    "cd8-positive cytotoxic t cell": "CD8-positive, alpha-beta cytotoxic T cell",
    "cd4-positive, cd25-positive regulatory t cell": "CD4-positive, CD25-positive, alpha-beta regulatory T cell",
    "cd4-positive, cd45ra-positive, cd25-negative naive t cell": "naive thymus-derived CD4-positive, alpha-beta T cell",
    "cd4-positive, cd45ro-positive memory": "CD4-positive, alpha-beta memory T cell",
    "cd4-positive, cd45ro-positive memory t cell": "CD4-positive, alpha-beta memory T cell",
    "cd8-positive, cd45ra-positive naive cytotoxic": "naive thymus-derived CD8-positive, alpha-beta T cell",
    "cd8-positive, cd45ra-positive naive cytotoxic t cell": "naive thymus-derived CD8-positive, alpha-beta T cell",
}

_MARKER = r"(?<![\w-])((?:(?i:CD)\d+|[A-Z][A-Z0-9]*\d)[A-Za-z0-9]*)"  # CD14, CD45RA, FCGR3A: a surface marker / gene
_POSITIVE = re.compile(_MARKER + r"\s*\+(?!\+)")  # CD14+ / CD14 + (CD14++ is left alone: no rule for "high")
_NEGATIVE = re.compile(_MARKER + r"\s*-(?![\w-])")  # CD16- (not CD16-positive, CD14-low)
# "CD14 Monocytes", "CD4 T": a CD marker named without a sign before the cell means positive (Seurat's labels)
_BARE = re.compile(r"(?<![\w-])((?i:CD)\d+[A-Za-z0-9]*)(?=\s+[A-Za-z])")
_JOIN = re.compile(r"(-positive|-negative)\s*[/,]?\s*(?=(?:(?i:CD)\d|[A-Z][A-Z0-9]*\d))")  # CD4+/CD25+ -> two markers
_ADJACENT = re.compile(r"([+-])(?=(?i:CD)\d|[A-Z][A-Z0-9]*\d)")  # CD14+CD16- -> CD14+ CD16-
_TREG = re.compile(r"\bT[\s-]?reg(s?)\b", re.IGNORECASE)


class OntologyError(ValueError):
    """A term id that cannot stand for a cell type; the message says why in plain words."""


@dataclass(frozen=True)
class Suggestion:
    """A proposed term for a label, and how it was found, for the user to confirm or change."""

    term_id: str
    term_label: str
    how: Literal["exact", "synonym", "normalised"]


@dataclass(frozen=True)
class _Cl:
    terms: Mapping[str, Any]  # CL id -> the package's record (label, synonyms, ancestors with distances, deprecated)
    version: str
    by_label: dict[str, str]  # casefolded label -> id, current terms that may be suggested
    by_synonym: dict[str, str]  # casefolded synonym -> id, only synonyms naming a single term


@functools.cache
def _cl() -> _Cl:
    """Loaded once per process, about 0.2 s cold here (package import 0.09 s, CL file 0.07 s, indexes 0.01 s)."""
    from cellxgene_ontology_guide.ontology_parser import OntologyParser

    parser = OntologyParser()
    terms = parser.cxg_schema.ontology("CL")
    by_label: dict[str, str] = {}
    synonyms: dict[str, set[str]] = {}
    for term_id, record in terms.items():
        if record.get("deprecated") or term_id in FORBIDDEN_TERMS or term_id == ROOT:
            continue  # 'cell' says nothing about a label, though the schema accepts it
        by_label[record["label"].casefold()] = term_id
        for synonym in record.get("synonyms") or ():
            synonyms.setdefault(synonym.casefold(), set()).add(term_id)
    by_synonym = {s: next(iter(ids)) for s, ids in synonyms.items() if len(ids) == 1}
    return _Cl(terms, parser.cxg_schema.supported_ontologies["CL"]["version"], by_label, by_synonym)


def cl_version() -> str:
    """The CL release the terms come from (e.g. v2026-03-26), for provenance next to the ids."""
    return _cl().version


def _normalise(label: str) -> list[str]:
    """Lab spellings rewritten toward CL's: signs to -positive/-negative, plural last word, expanded head word."""
    s = " ".join(label.split())
    s = _TREG.sub(r"Treg\1", s)
    s = _ADJACENT.sub(r"\1 ", s)
    s = _POSITIVE.sub(r"\1-positive", s)
    s = _NEGATIVE.sub(r"\1-negative", s)
    s = _BARE.sub(r"\1-positive", s)
    s = _JOIN.sub(r"\1, ", s)
    words = s.split(" ")
    last = words[-1]
    if len(last) > 2 and last.endswith("s") and not last.endswith("ss"):
        words[-1] = last[:-1]  # Monocytes -> Monocyte, cells -> cell, DCs -> DC
    forms = [" ".join(words)]
    head = ABBREVIATIONS.get(words[-1].casefold())
    if head is not None:
        forms.append(" ".join([*words[:-1], head]))
    return forms


def suggest_term(label: str) -> Suggestion | None:
    """The CL term a label most likely means: exact label, exact synonym, then lab spellings; None when unsure."""
    cl = _cl()
    key = " ".join(str(label).split()).casefold()
    if not key:
        return None
    if key in cl.by_label:
        return _suggestion(cl.by_label[key], "exact")
    if key in cl.by_synonym:
        return _suggestion(cl.by_synonym[key], "synonym")
    for form in _normalise(label):
        form = form.casefold()
        term_id = cl.by_label.get(form) or cl.by_synonym.get(form)
        if term_id is None and form in PHRASES:
            term_id = cl.by_label[PHRASES[form].casefold()]
        if term_id is not None:
            return _suggestion(term_id, "normalised")
    return None


def _suggestion(term_id: str, how: Literal["exact", "synonym", "normalised"]) -> Suggestion:
    return Suggestion(term_id, _cl().terms[term_id]["label"], how)


def suggest_terms(labels: Iterable[str]) -> dict[str, Suggestion | None]:
    """``suggest_term`` for each distinct label, in first-seen order."""
    return {label: suggest_term(label) for label in dict.fromkeys(labels)}


def _described(term_id: str) -> str:
    record = _cl().terms.get(term_id)
    return f"{term_id} '{record['label']}'" if record and record.get("label") else term_id


def _replacement(term_id: str) -> str | None:
    """The current term a deprecated one points to (following chains of replacements), if it is usable."""
    terms = _cl().terms
    seen = {term_id}
    target = terms[term_id].get("replaced_by")
    while target in terms and terms[target].get("deprecated") and target not in seen:
        seen.add(target)
        target = terms[target].get("replaced_by")
    if not target or target in FORBIDDEN_TERMS:
        return None
    return target


def check_term(term_id: str) -> str:
    """The label of a CL id a user chose for a label; ``OntologyError`` says in plain words why it cannot be used.

    Refused, as CELLxGENE's validator would: a malformed id, an id not in CL, a deprecated (obsolete) term, a term
    outside CL (cell types are CL:0000000 'cell' or below it) and the three terms the schema forbids.
    """
    cl = _cl()
    text = str(term_id).strip()
    if text.casefold() in ("unknown", "na", ""):
        raise OntologyError(f"{text!r} is not a term: leave the label unmapped and it is written as 'unknown'.")
    match = re.fullmatch(r"([A-Za-z][A-Za-z0-9]*)[:_](\S+)", text)
    if match is None:
        raise OntologyError(f"{text!r} is not an ontology id: a Cell Ontology id looks like CL:0000236.")
    prefix, local = match.groups()
    if prefix.upper() != "CL":
        raise OntologyError(f"{text} is a {prefix} term, not a Cell Ontology term: cell types must be CL ids, "
                            "such as CL:0000236 (B cell).")
    if not re.fullmatch(r"CL:\d{7}", text):
        hint = f"CL:{local}" if re.fullmatch(r"\d{7}", local) else "CL:0000236"
        raise OntologyError(f"{text!r} is not written as a Cell Ontology id: the form is {hint} "
                            "(CL, a colon, seven digits).")
    record = cl.terms.get(text)
    if record is None:
        raise OntologyError(f"{text} is not in the Cell Ontology (release {cl.version}): check the id.")
    if text in FORBIDDEN_TERMS:
        raise OntologyError(f"{text} '{FORBIDDEN_TERMS[text]}' is too general: the CELLxGENE schema forbids it "
                            "for a cell type. Choose a more specific term, or leave the label unmapped ('unknown').")
    if record.get("deprecated"):
        replacement = _replacement(text)
        advice = (f"use {_described(replacement)} instead" if replacement in cl.terms
                  else f"the ontology replaces it with {replacement}, which is not a Cell Ontology term"
                  if replacement else "the ontology names no replacement; choose another term")
        considered = [t for t in record.get("consider") or () if t in cl.terms and not cl.terms[t].get("deprecated")]
        if not replacement and considered:
            advice = "the ontology suggests considering " + ", ".join(_described(t) for t in considered)
        raise OntologyError(f"{_described(text)} is obsolete in the Cell Ontology (release {cl.version}): {advice}.")
    if text != ROOT and ROOT not in record.get("ancestors", {}):
        raise OntologyError(f"{_described(text)} is not a cell type (it is not under {ROOT} 'cell').")
    return str(record["label"])


@functools.cache
def cell_class(term_id: str) -> str | None:
    """The coarse class (a ``CELL_CLASSES`` label) of a valid CL term: its most specific listed ancestor, or None."""
    check_term(term_id)
    terms = _cl().terms
    lineage = {term_id, *terms[term_id].get("ancestors", {})}
    matches = [cid for cid, _ in CELL_CLASSES if cid in lineage]
    # drop classes that are ancestors of another match: "lymphocyte" gives way to "T cell"
    specific = [c for c in matches if not any(c in terms[d].get("ancestors", {}) for d in matches if d != c)]
    return str(terms[specific[0]]["label"]) if specific else None


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def label_columns(predicted_labels: np.ndarray, mapping: Mapping[str, str | None]) -> dict[str, np.ndarray]:
    """``predicted_cell_type_ontology_term_id`` and ``predicted_cell_class`` per cell; "" where a label is unmapped.

    ``mapping``: label -> confirmed CL id or None. Labels absent from it (unassigned, novel) stay unmapped; a
    mapped id that ``check_term`` refuses raises ``OntologyError`` naming the label.
    """
    codes, uniques = pd.factorize(pd.Series(np.asarray(predicted_labels, dtype=object)), use_na_sentinel=True)
    ids, classes = [], []
    for label in uniques:
        term_id = None if _missing(label) else mapping.get(label)
        if not term_id:
            ids.append("")
            classes.append("")
            continue
        try:
            ids.append(term_id)
            classes.append(cell_class(term_id) or "")
        except OntologyError as e:
            raise OntologyError(f"label {label!r}: {e}") from None
    ids.append("")  # for missing labels (code -1)
    classes.append("")
    return {"predicted_cell_type_ontology_term_id": np.array(ids, dtype=object)[codes],
            "predicted_cell_class": np.array(classes, dtype=object)[codes]}


TruthHow = Literal["given", "annotator", "exact", "synonym", "normalised", "no suggestion"]


def truth_terms(labels: Iterable[str], given: Mapping[str, str | None] | None = None,
                annotator: Mapping[str, str | None] | None = None) -> dict[str, dict[str, str | None]]:
    """The Cell Ontology term of each true label, for the class-level scores: the user's where given (checked),
    else the annotator's confirmed term for the same spelling, else ``suggest_term`` (the save-as-annotator
    dialog's rule), else unmapped. Each entry says where it came from (``how``), so a run records which mapping
    scored it. A given label the truth column lacks is refused: a typo would otherwise be silently ignored.

    Returns label -> {"term_id": id or None, "term_label": name or None, "how": ...}.
    """
    labels = [str(label) for label in dict.fromkeys(labels)]
    given = dict(given or {})
    unknown = sorted(set(given) - set(labels))
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5]) + (", …" if len(unknown) > 5 else "")
        raise OntologyError(f"truth_ontology names labels the truth column does not have: {shown}; its labels are "
                            + ", ".join(repr(label) for label in labels[:20]) + ("" if len(labels) <= 20 else ", …")
                            + ".")
    out: dict[str, dict[str, str | None]] = {}
    for label in labels:
        how: TruthHow
        if label in given:
            term_id, how = (str(given[label]).strip() or None) if given[label] is not None else None, "given"
        elif (annotator or {}).get(label):
            term_id, how = str(annotator[label]), "annotator"  # type: ignore[index]
        else:
            s = suggest_term(label)
            term_id, how = (s.term_id, s.how) if s else (None, "no suggestion")
        if term_id is None:
            out[label] = {"term_id": None, "term_label": None, "how": how}
            continue
        try:
            name = check_term(term_id)
        except OntologyError as e:
            raise OntologyError(f"true label {label!r}: {e}") from None
        out[label] = {"term_id": term_id, "term_label": name, "how": how}
    return out


def term_ids(terms: Mapping[str, Mapping[str, str | None]]) -> dict[str, str | None]:
    """label -> CL id (None: unmapped) of a ``truth_terms`` result, as ``label_columns`` takes a mapping."""
    return {label: entry.get("term_id") for label, entry in terms.items()}
