"""An annotator as one file to share: a zip holding ``manifest.json`` and ``head.npz``, each part's sha256 in the
manifest.

Reading one trusts nothing in it: the zip must hold exactly the parts its manifest names, each with the sha256 the
manifest gives; the manifest must be this format at a version this code knows; the arrays are read with
``allow_pickle=False`` (an object array, i.e. a pickle, is refused). Nothing is returned until all of that holds,
so a bad file stores nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inference.run_files import atomic_path

FORMAT = "helical-platform-annotator"
FORMAT_VERSION = 1
HEAD_PART = "head.npz"
MANIFEST = "manifest.json"
MAX_PART_BYTES = 2 << 30  # a head of a 2 GB is not an annotator: refuse before reading it into memory


class AnnotatorFileError(ValueError):
    """The file is not an annotator this platform can read; the message says why and what to do."""


@dataclass(frozen=True)
class AnnotatorFile:
    metadata: dict
    head_bytes: bytes

    @property
    def head_sha256(self) -> str:
        return hashlib.sha256(self.head_bytes).hexdigest()


def write_annotator_file(path: Path, metadata: dict, head_bytes: bytes) -> None:
    """Write ``path`` atomically: the manifest (format, version, metadata, every part's sha256) and the arrays."""
    manifest = {"format": FORMAT, "version": FORMAT_VERSION, "annotator": metadata,
                "parts": {HEAD_PART: {"sha256": hashlib.sha256(head_bytes).hexdigest(), "bytes": len(head_bytes)}}}
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True, default=str))
        z.writestr(HEAD_PART, head_bytes)


def read_annotator_file(source: Path | bytes) -> AnnotatorFile:
    """Everything checked (see the module's docstring); raises AnnotatorFileError with the reason."""
    try:
        z = zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise AnnotatorFileError(f"This is not an annotator file, or it is truncated ({exc}). Export it again "
                                 "from the platform that made it.") from None
    with z:
        names = set(z.namelist())
        if MANIFEST not in names:
            raise AnnotatorFileError("This zip has no manifest.json: it is not an annotator file.")
        try:
            manifest = json.loads(z.read(MANIFEST))
        except (ValueError, zipfile.BadZipFile, OSError, EOFError) as exc:
            raise AnnotatorFileError(f"The annotator's manifest cannot be read ({exc}): the file is damaged or "
                                     "truncated.") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise AnnotatorFileError(f"The manifest is not an annotator's (format {FORMAT!r} expected).")
        version = manifest.get("version")
        if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
            raise AnnotatorFileError(f"This annotator file is format version {version!r}; this platform reads "
                                     f"version {FORMAT_VERSION}. It was made by a newer platform: upgrade this one "
                                     "to import it.")
        parts = manifest.get("parts")
        if not isinstance(parts, dict) or set(parts) != {HEAD_PART} or names != {MANIFEST, HEAD_PART}:
            extra = sorted(names - {MANIFEST, HEAD_PART})
            raise AnnotatorFileError("The annotator file holds parts other than its manifest and head.npz"
                                     + (f" ({', '.join(extra[:5])})" if extra else "") + ": refused.")
        info = z.getinfo(HEAD_PART)
        if info.file_size > MAX_PART_BYTES:
            raise AnnotatorFileError(f"head.npz is {info.file_size:,} bytes: too large for an annotator.")
        try:
            head_bytes = z.read(HEAD_PART)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise AnnotatorFileError(f"head.npz cannot be read ({exc}): the file is damaged or truncated.") from None
    expected = str(parts[HEAD_PART].get("sha256", "")) if isinstance(parts[HEAD_PART], dict) else ""
    actual = hashlib.sha256(head_bytes).hexdigest()
    if actual != expected:
        raise AnnotatorFileError(f"head.npz does not match its checksum (sha256 {actual[:12]}…, the manifest says "
                                 f"{expected[:12] or 'nothing'}…): the file was altered or damaged.")
    check_arrays(head_bytes)
    metadata = manifest.get("annotator")
    if not isinstance(metadata, dict):
        raise AnnotatorFileError("The manifest says nothing about the annotator (no 'annotator' object).")
    return AnnotatorFile(metadata, head_bytes)


def check_arrays(head_bytes: bytes) -> None:
    """Every array loads without pickle (an object array is a pickle: refused)."""
    try:
        with np.load(io.BytesIO(head_bytes), allow_pickle=False) as z:
            for key in z.files:
                z[key]
            kind = str(z["kind"]) if "kind" in z.files else None
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise AnnotatorFileError("head.npz carries a pickle (an object array): refused, since loading a pickle "
                                     "runs code from the file.") from None
        raise AnnotatorFileError(f"head.npz cannot be read as arrays ({exc}).") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise AnnotatorFileError(f"head.npz cannot be read as arrays ({exc}).") from None
    if kind is None:
        raise AnnotatorFileError("head.npz names no head kind: it is not an annotator's head.")
