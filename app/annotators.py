"""Annotators: trained heads a lab keeps, shares and reuses instead of bringing a reference to every run.

An annotator is immutable once saved: its arrays are stored by their sha256 under ``annotators/`` and its row
says what it needs (model, weights checksum) and what it is (reference, classes, held-out check, Cell Ontology
map, author). Saving from a run copies that run's cached head; importing a shared file checks every part first
(``inference/annotator_file.py``), so a bad file stores nothing.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from app.datasets import NotFound
from app.users import User, check_delete
from inference.annotator_file import (
    FORMAT_VERSION,
    AnnotatorFileError,
    read_annotator_file,
    write_annotator_file,
)
from inference.applications.base import AnnotatorInfo
from inference.heads import HEAD_KINDS, Head
from inference.run_files import atomic_path
from store.artifacts import InvalidIdError, new_id, validate_uuid4
from store.engine import read_session, write_session
from store.tables import AnnotatorEntry, ModelEntry, Run, RunStatus

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._()+-]{0,79}$")
__all__ = ["AnnotatorFileError", "AnnotatorInUse", "AnnotatorsService", "Conflict", "check_ontology"]


class Conflict(ValueError):
    """The name is taken (HTTP 409)."""


class AnnotatorInUse(ValueError):
    """What cannot be removed (a built-in annotator)."""


def check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME.match(name.strip()):
        raise ValueError("An annotator's name is 1-80 letters, digits, spaces and . _ ( ) + - (starting with a letter "
                         "or digit), e.g. 'PBMC baseline v1'.")
    return name.strip()


def annotator_json(a: AnnotatorEntry) -> dict:
    return {"annotator_id": a.id, "name": a.name, "description": a.description, "author": a.author,
            "created_at": a.created_at, "model": a.model_id, "backend": a.backend, "variant": a.variant,
            "model_checksum": a.model_checksum, "trained": a.trained, "head": a.head_kind,
            "head_sha256": a.head_sha256, "label_column": a.label_column, "reference": a.reference,
            "classes": a.classes, "genes_used": a.genes_used, "check": a.check, "ontology": a.ontology,
            "builtin": a.builtin, "format_version": a.format_version, "created_by": a.created_by}


class AnnotatorsService:
    def __init__(self, platform) -> None:  # noqa: ANN001 - app.platform.Platform (import cycle)
        self.platform = platform

    # ---- reading ----------------------------------------------------------------------------------------------
    def list(self) -> list[AnnotatorEntry]:
        with read_session(self.platform.engine) as s:
            return list(s.exec(select(AnnotatorEntry).order_by(AnnotatorEntry.created_at.desc())))

    def get(self, id_or_name: str) -> AnnotatorEntry:
        """By id, or by name (the command line's way)."""
        with read_session(self.platform.engine) as s:
            found = None
            try:
                found = s.get(AnnotatorEntry, validate_uuid4(id_or_name, "annotator id"))
            except InvalidIdError:
                found = s.exec(select(AnnotatorEntry).where(AnnotatorEntry.name == id_or_name)).first()
        if found is None:
            raise NotFound(f"No annotator {id_or_name!r}.")
        return found

    def use(self, id_or_name: str) -> AnnotatorInfo:
        """What a run needs of an annotator (its head's file, weights checksum, label column, ontology map)."""
        a = self.get(id_or_name)
        path = self.platform.artifacts.annotator_path(a.head_sha256)
        if not path.is_file():
            raise NotFound(f"The arrays of annotator {a.name!r} are missing from the data home ({path.name}).")
        return AnnotatorInfo(a.id, a.name, a.model_id, str(path), a.model_checksum, a.label_column,
                             dict(a.classes), dict(a.ontology))

    def suggest_ontology(self, labels: list[str]) -> dict[str, dict | None]:
        """A Cell Ontology term to propose for each label (exact name, synonym, common lab spelling; else None)
        for the user to confirm or change."""
        from inference.ontology import suggest_terms

        return {label: (None if s is None else {"term_id": s.term_id, "term_label": s.term_label, "how": s.how})
                for label, s in suggest_terms(labels).items()}

    # ---- making -----------------------------------------------------------------------------------------------
    def save_from_run(self, run_id: str, name: str, description: str = "", author: str = "",
                      ontology: dict[str, str | None] | None = None, user: User | None = None) -> AnnotatorEntry:
        """The head a finished run trained on its reference, under a name (``user`` as its maker)."""
        name = check_name(name)
        with read_session(self.platform.engine) as s:
            run = s.get(Run, validate_uuid4(run_id, "run id"))
            if run is None:
                raise NotFound(f"No run {run_id!r}.")
            model = s.get(ModelEntry, run.model_id)
        if run.status != RunStatus.DONE:
            raise ValueError(f"Run {run_id} is {run.status}: only a finished run's head can be saved.")
        head_info = run.provenance.get("head", {})
        if run.reference_dataset_id is None or head_info.get("annotator"):
            raise ValueError("This run did not learn from a reference (it " + (
                "used an annotator" if head_info.get("annotator") else "trained on a split of its query") +
                "): save an annotator from a run with a reference, or train one with "
                "`helical-platform annotators train`.")
        path = self.platform.artifacts.head_path(head_info.get("cache_key", ""))
        if not path.is_file():
            raise NotFound("The run's head is no longer in the data home's head cache; run it again to save it.")
        inputs = run.provenance.get("inputs", {})
        reference = inputs.get("reference") or {}
        model_info = run.provenance.get("model", {})
        return self._store(path.read_bytes(), {
            "name": name, "description": description, "author": author,
            "model_id": run.model_id, "backend": model.backend if model else model_info.get("backend", ""),
            "variant": run.parameters.get("variant") or "", "model_checksum": model_info.get("checksum", ""),
            "trained": bool(model_info.get("trained", True)), "label_column": run.label_column or "",
            "reference": {"file_name": reference.get("name"), "sha256": reference.get("sha256"),
                          "cells": head_info.get("reference_cells")},
            "genes_used": run.provenance.get("genes_used"), "ontology": ontology,
            "provenance": {"from_run": run.id, "versions": run.provenance.get("versions", {}),
                           "head": {k: v for k, v in head_info.items() if k != "reference_check"}}}, user)

    def save_head(self, head_bytes: bytes, metadata: dict) -> AnnotatorEntry:
        """A head trained elsewhere in this process (the command line's ``annotators train``)."""
        return self._store(head_bytes, {**metadata, "name": check_name(metadata.get("name"))})

    def import_file(self, source: Path | bytes, name: str | None = None, builtin: bool = False,
                    user: User | None = None) -> AnnotatorEntry:
        """A shared annotator file: every part checked (nothing stored unless all holds); author and provenance
        kept. ``name`` renames it (e.g. when the original name is taken here); ``builtin``: one the platform
        ships (app/builtin_annotators.py), which cannot be deleted."""
        f = read_annotator_file(source)
        meta = dict(f.metadata)
        meta["name"] = check_name(name or meta.get("name"))
        meta["provenance"] = {**(meta.get("provenance") or {}), "imported": not builtin}
        meta["builtin"] = builtin
        return self._store(f.head_bytes, meta, user)

    def _store(self, head_bytes: bytes, meta: dict, user: User | None = None) -> AnnotatorEntry:
        head = _read_head(head_bytes)
        classes = {str(c): int(n) for c, n in zip(head.fit.classes, np.diff(head.fit.offsets), strict=True)}
        ontology = check_ontology(meta.get("ontology"), classes)
        import hashlib

        sha = hashlib.sha256(head_bytes).hexdigest()
        path = self.platform.artifacts.annotator_path(sha)
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                tmp.write_bytes(head_bytes)
        entry = AnnotatorEntry(
            id=new_id(), name=meta["name"], description=str(meta.get("description") or "")[:2000],
            author=str(meta.get("author") or "")[:200], format_version=FORMAT_VERSION,
            model_id=str(meta.get("model_id") or ""), backend=str(meta.get("backend") or ""),
            variant=str(meta.get("variant") or ""), model_checksum=str(meta.get("model_checksum") or ""),
            trained=bool(meta.get("trained", True)), head_kind=head.classifier.kind, head_sha256=sha,
            label_column=str(meta.get("label_column") or ""), reference=dict(meta.get("reference") or {}),
            classes=classes, genes_used=meta.get("genes_used"), check=head.check, ontology=ontology,
            provenance=dict(meta.get("provenance") or {}), builtin=bool(meta.get("builtin", False)),
            created_by=user.name if user else None)
        if not entry.model_id or not entry.model_checksum:
            raise AnnotatorFileError("The annotator does not say which model and weights it was trained on.")
        if meta.get("created_at"):
            entry.created_at = _when(meta["created_at"]) or entry.created_at
        try:
            with write_session(self.platform.engine) as s:
                if s.exec(select(AnnotatorEntry).where(AnnotatorEntry.name == entry.name)).first():
                    raise Conflict(f"An annotator named {entry.name!r} exists: choose another name.")
                s.add(entry)
        except IntegrityError:
            raise Conflict(f"An annotator named {entry.name!r} exists: choose another name.") from None
        return entry

    # ---- sharing and removing ---------------------------------------------------------------------------------
    def export(self, id_or_name: str) -> Path:
        """One file to share (written once per annotator, atomically)."""
        a = self.get(id_or_name)
        out = self.platform.artifacts.inside("annotators", "exports", f"{a.id}.zip")
        if not out.is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            meta = annotator_json(a)
            meta["model_id"] = meta.pop("model")
            for key in ("annotator_id", "head", "head_sha256", "check", "format_version", "created_by"):
                meta.pop(key)  # the classes stay: an import checks the arrays' shapes against them
            write_annotator_file(out, meta, self.platform.artifacts.annotator_path(a.head_sha256).read_bytes())
        return out

    def delete(self, id_or_name: str, user: User | None = None) -> AnnotatorEntry:
        a = self.get(id_or_name)
        if a.builtin:
            raise AnnotatorInUse(f"{a.name!r} is built in: it cannot be deleted.")
        check_delete(user, a.created_by, f"Annotator {a.name!r}")
        with write_session(self.platform.engine) as s:
            row = s.get(AnnotatorEntry, a.id)
            if row is not None:
                s.delete(row)
            shared = s.exec(select(AnnotatorEntry).where(AnnotatorEntry.head_sha256 == a.head_sha256)).first()
        if shared is None:  # arrays are content-addressed: another annotator may hold the same ones
            self.platform.artifacts.annotator_path(a.head_sha256).unlink(missing_ok=True)
        self.platform.artifacts.inside("annotators", "exports", f"{a.id}.zip").unlink(missing_ok=True)
        return a


def _read_head(head_bytes: bytes) -> Head:
    import tempfile

    with np.load(io.BytesIO(head_bytes), allow_pickle=False) as z:
        kind = str(z["kind"]) if "kind" in z.files else ""
    if kind not in HEAD_KINDS:
        raise AnnotatorFileError(f"The annotator's head is of kind {kind!r}, which this platform does not know "
                                 f"(it knows {', '.join(HEAD_KINDS)}): upgrade the platform to use it.")
    with tempfile.NamedTemporaryFile(suffix=".npz") as tmp:
        tmp.write(head_bytes)
        tmp.flush()
        try:
            return Head.load(Path(tmp.name))
        except (KeyError, ValueError) as exc:
            raise AnnotatorFileError(f"The annotator's head is incomplete ({exc}).") from None


def check_ontology(given: object, classes: dict[str, int]) -> dict[str, str | None]:
    """Label -> Cell Ontology term id as confirmed by the user: every id checked; labels not given stay unmapped."""
    from inference.ontology import check_term

    if given is None:
        return {}
    if not isinstance(given, dict):
        raise ValueError("ontology must map labels to Cell Ontology ids, e.g. {\"CD14 Monocytes\": \"CL:0001054\"}.")
    out: dict[str, str | None] = {}
    for label, term in given.items():
        if label not in classes:
            raise ValueError(f"ontology names {str(label)[:80]!r}, which is not one of the annotator's classes "
                             f"({', '.join(list(classes)[:10])}).")
        if term in (None, ""):
            out[label] = None
            continue
        check_term(str(term))  # a plain-words ValueError for an id that does not exist
        out[label] = str(term)
    return out


def _when(value: object):  # noqa: ANN202 - a datetime or None
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None
