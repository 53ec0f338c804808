"""An annotator as one file to share: a zip holding ``manifest.json`` and ``head.npz``, each part's sha256 in the
manifest.

Reading one trusts nothing in it, and every check runs before the thing it protects is allocated:

- the zip: at most a few entries in its directory; exactly ``manifest.json`` and ``head.npz``, each once (zipfile
  would use the last of two same-named members, other unzip tools the first), no path parts (``/``, ``..``,
  ``\\``), no encryption, stored or deflated only;
- sizes: the manifest at most 1 MB, head.npz at most ``MAX_HEAD_BYTES`` and at most ``MAX_RATIO`` times its
  compressed size (real arrays barely compress; a zip bomb compresses a thousandfold), the sum of both bounded;
  each member is read in chunks and refused past its limit, since the size a zip declares can lie;
- the manifest: this format at a version this code knows, every field of the type it must have (a sentence
  naming the field otherwise), no duplicate keys, no NaN, at most ``MAX_JSON_DEPTH`` levels deep;
- head.npz (itself a zip): the same member rules; every array's ``.npy`` header is read (not its data) and its
  dtype must be plain numbers or text (an object array is a pickle: refused), its shape must fill exactly the
  bytes its member declares and fit the other arrays and the manifest (classes, dimensions, reference cells)
  before numpy allocates anything; the arrays are then read with ``allow_pickle=False``.

Nothing is returned until all of that holds, so a bad file stores nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import struct
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inference.run_files import atomic_path

FORMAT = "helical-platform-annotator"
FORMAT_VERSION = 1
HEAD_PART = "head.npz"
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 1 << 20  # the shipped manifest is 1.4 KB; a label map of 100,000 classes still fits
MAX_HEAD_BYTES = 1 << 30  # a fine-tuned backbone's arrays are a few hundred MB; 1 GiB is not an annotator
MAX_RATIO = 20  # float arrays deflate to ~90 % of their size, a zip bomb to ~0.1 %
RATIO_FLOOR = 32 << 20  # below this, any ratio (small label and index arrays compress well)
MAX_ZIP_ENTRIES = 8  # the annotator zip: two members
MAX_ARRAYS = 4096  # head.npz: a fine-tuned backbone's tensors are a few hundred arrays
MAX_JSON_DEPTH = 32
MAX_CLASSES = 100_000
MAX_TEXT_CHARS = 1 << 20  # one text array element (e.g. the held-out check as JSON)
READ_CHUNK = 1 << 20
ARRAY_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}$")
AGAIN = "Export it again from the platform that made it."


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
    with _open_zip(source, "This annotator file", MAX_ZIP_ENTRIES) as (z, size):
        infos = _members(z, "The annotator file", lambda name: name in (MANIFEST, HEAD_PART))
        if MANIFEST not in infos:
            raise AnnotatorFileError("This zip has no manifest.json: it is not an annotator file.")
        if HEAD_PART not in infos:
            raise AnnotatorFileError(f"This annotator file has no head.npz (its arrays). {AGAIN}")
        manifest_info, head_info = infos[MANIFEST], infos[HEAD_PART]
        head_limit = unpacked_limit(min(head_info.compress_size, size))  # a directory can claim any size
        _declared(manifest_info, MAX_MANIFEST_BYTES, "manifest.json")
        _declared(head_info, head_limit, "head.npz")
        manifest = check_manifest(parse_json(_read_member(z, manifest_info, MAX_MANIFEST_BYTES, "manifest.json"),
                                             "The annotator's manifest"))
        part = manifest["parts"][HEAD_PART]
        if part["bytes"] is not None and part["bytes"] != head_info.file_size:
            raise AnnotatorFileError(f"head.npz holds {head_info.file_size:,} bytes by the zip's directory but "
                                     f"{part['bytes']:,} by the manifest: the file was altered or damaged. {AGAIN}")
        head_bytes = _read_member(z, head_info, head_limit, "head.npz")
    actual = hashlib.sha256(head_bytes).hexdigest()
    if actual != part["sha256"]:
        raise AnnotatorFileError(f"head.npz does not match its checksum (sha256 {actual[:12]}…, the manifest says "
                                 f"{part['sha256'][:12]}…): the file was altered or damaged.")
    check_arrays(head_bytes, manifest["annotator"])
    return AnnotatorFile(manifest["annotator"], head_bytes)


# ---- the zip ----------------------------------------------------------------------------------------------------
@contextmanager
def _open_zip(source: Path | bytes, what: str, max_entries: int) -> Iterator[tuple[zipfile.ZipFile, int]]:
    """The zip and its size in bytes, once its directory is known to be small: zipfile builds an object per entry
    when it opens one, so a directory of millions of entries would be a memory bomb of its own."""
    try:
        fh = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise AnnotatorFileError(f"{what} cannot be read ({exc}).") from None
    with fh:
        try:
            size = fh.seek(0, io.SEEK_END)
            end = zipfile._EndRecData(fh)  # the end-of-directory record zipfile itself reads (ZIP64 included)
            if end is None:
                raise zipfile.BadZipFile("no end of central directory")
            entries, directory = end[zipfile._ECD_ENTRIES_TOTAL], end[zipfile._ECD_SIZE]
            if entries > max_entries or directory > max_entries * 1024:
                raise AnnotatorFileError(f"{what} lists {entries:,} entries ({directory:,} bytes of directory); "
                                         f"an annotator has a few. Refused. {AGAIN}")
            z = zipfile.ZipFile(fh)
        except AnnotatorFileError:
            raise
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, OSError, struct.error) as exc:
            raise AnnotatorFileError(f"{what} is not an annotator file, or it is truncated ({exc}). "
                                     f"{AGAIN}") from None
        with z:
            yield z, size


def _members(z: zipfile.ZipFile, what: str, allowed) -> dict[str, zipfile.ZipInfo]:  # noqa: ANN001 - name -> bool
    """Each member by name, once: duplicates, path parts, unexpected names, encryption and unusual compression
    refused (the checks then read what every unzip tool would)."""
    out: dict[str, zipfile.ZipInfo] = {}
    for info in z.infolist():
        name = info.filename
        shown = repr(name[:80])
        if any(c in name for c in "/\\\x00") or re.match(r"^[A-Za-z]:", name) or name in (".", ".."):
            raise AnnotatorFileError(f"{what} holds a member named {shown}, a path: an annotator's members are "
                                     f"plain names. Refused. {AGAIN}")
        if name in out:
            raise AnnotatorFileError(f"{what} holds two members named {shown}: tools disagree on which one counts "
                                     f"(this one would read the last, others the first). Refused. {AGAIN}")
        if not allowed(name):
            raise AnnotatorFileError(f"{what} holds a part it should not ({shown}): refused. An annotator file "
                                     f"holds {MANIFEST} and {HEAD_PART}, and head.npz holds .npy arrays only.")
        if info.flag_bits & 0x1:
            raise AnnotatorFileError(f"{what}: member {shown} is encrypted. Refused. {AGAIN}")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise AnnotatorFileError(f"{what}: member {shown} uses compression method {info.compress_type}; "
                                     f"annotators are stored or deflated. {AGAIN}")
        out[name] = info
    return out


def unpacked_limit(packed: int) -> int:
    """How many bytes ``packed`` bytes of an annotator's zip may unpack to: ``MAX_RATIO`` times as many (at least
    ``RATIO_FLOOR``), never more than ``MAX_HEAD_BYTES``. An attacker's memory is then bounded by what they send."""
    return min(MAX_HEAD_BYTES, max(RATIO_FLOOR, MAX_RATIO * packed))


def _declared(info: zipfile.ZipInfo, limit: int, what: str) -> None:
    if info.file_size > limit:
        ratio = f" from {info.compress_size:,} compressed" if info.compress_size else ""
        raise AnnotatorFileError(f"{what} unpacks to {info.file_size:,} bytes{ratio}, more than an annotator's "
                                 f"{limit:,}: refused before unpacking (a zip bomb is built this way). {AGAIN}")


def _read_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, what: str) -> bytes:
    """At most ``limit`` bytes, in chunks: the declared size is checked too, but a zip can lie about it."""
    buf = bytearray()
    try:
        with z.open(info) as fh:
            while chunk := fh.read(min(READ_CHUNK, limit + 1 - len(buf))):
                buf += chunk
                if len(buf) > limit:
                    raise AnnotatorFileError(f"{what} unpacks to more than {limit:,} bytes (it declares "
                                             f"{info.file_size:,}): refused without unpacking the rest. {AGAIN}")
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as exc:
        raise AnnotatorFileError(f"{what} cannot be read ({exc}): the file is damaged, truncated or altered. "
                                 f"{AGAIN}") from None
    return bytes(buf)


# ---- the manifest -----------------------------------------------------------------------------------------------
def parse_json(raw: bytes | str, what: str, max_depth: int = MAX_JSON_DEPTH) -> object:
    """JSON from someone else: no duplicate keys (readers disagree on which counts), no NaN or Infinity, and at
    most ``max_depth`` levels (a deep enough nesting exhausts the parser's recursion). ``AnnotatorFileError``
    (a ValueError) says what is wrong."""
    def pairs(items: list[tuple[str, object]]) -> dict:
        out: dict = {}
        for key, value in items:
            if key in out:
                raise ValueError(f"the key {key[:80]!r} appears twice in one object")
            out[key] = value
        return out

    def constant(name: str) -> object:
        raise ValueError(f"{name} is not a number JSON allows")

    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        data = json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except RecursionError:
        raise AnnotatorFileError(f"{what} is nested too deeply to read (at most {max_depth} levels).") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise AnnotatorFileError(f"{what} is not valid JSON ({str(exc)[:200]}).") from None
    if json_depth(data, max_depth) > max_depth:
        raise AnnotatorFileError(f"{what} is nested more than {max_depth} levels deep; an annotator's manifest "
                                 f"needs a few. {AGAIN}")
    return data


def json_depth(data: object, stop: int) -> int:
    """How deep lists and objects nest (walked without recursion; stops counting past ``stop``)."""
    deepest, todo = 0, [(data, 1)]
    while todo:
        node, depth = todo.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth)
            if depth > stop:
                return depth
            todo.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


_TYPES = {str: "a string", int: "a whole number", bool: "true or false", dict: "an object", list: "a list"}


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


def _field(obj: dict, path: str, key: str, typ: type, example: str, required: bool = False,
           minimum: int | None = None) -> object:
    """``obj[key]`` when it has type ``typ`` (None when absent and optional); else a sentence naming the field."""
    value = obj.get(key)
    where = f"{path}.{key}" if path else key
    if value is None:
        if required:
            raise AnnotatorFileError(f"The manifest has no {where}: it must be {_TYPES[typ]} ({example}). {AGAIN}")
        return None
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise AnnotatorFileError(f"The manifest's {where} must be {_TYPES[typ]} ({example}); it is "
                                 f"{_kind(value)}. {AGAIN}")
    if minimum is not None and value < minimum:
        raise AnnotatorFileError(f"The manifest's {where} must be at least {minimum}; it is {value}. {AGAIN}")
    if typ is str and required and not value.strip():
        raise AnnotatorFileError(f"The manifest's {where} is empty: it must say {example}. {AGAIN}")
    return value


def check_manifest(manifest: object) -> dict:
    """The manifest with every field this platform reads of the type it must have; ``annotator`` keeps only
    those fields (others are dropped, so nothing unchecked is stored)."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise AnnotatorFileError(f"The manifest is not an annotator's (format {FORMAT!r} expected).")
    version = manifest.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise AnnotatorFileError(f"The manifest's version must be a whole number from 1 (this platform reads "
                                 f"version {FORMAT_VERSION}); it is {_kind(version)}. {AGAIN}")
    if version > FORMAT_VERSION:
        raise AnnotatorFileError(f"This annotator file is format version {version!r}; this platform reads "
                                 f"version {FORMAT_VERSION}. It was made by a newer platform: upgrade this one "
                                 "to import it.")
    parts = _field(manifest, "", "parts", dict, 'e.g. {"head.npz": {"sha256": …, "bytes": …}}', required=True)
    if set(parts) != {HEAD_PART}:
        extra = sorted(str(p)[:80] for p in set(parts) - {HEAD_PART})
        raise AnnotatorFileError("The manifest's parts must name head.npz and nothing else"
                                 + (f" (it names {', '.join(extra[:5])})" if extra else "") + f". {AGAIN}")
    head = _field(parts, "parts", HEAD_PART, dict, "its sha256 and bytes", required=True)
    sha = _field(head, f"parts.{HEAD_PART}", "sha256", str, "64 hexadecimal digits", required=True)
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise AnnotatorFileError(f"The manifest's parts.{HEAD_PART}.sha256 must be 64 lowercase hexadecimal "
                                 f"digits; it is {sha[:80]!r}. {AGAIN}")
    size = _field(head, f"parts.{HEAD_PART}", "bytes", int, "the size of head.npz", minimum=0)
    a = _field(manifest, "", "annotator", dict, "what the annotator is: name, model_id, model_checksum, …",
               required=True)
    p = "annotator"
    out: dict[str, object] = {
        "name": _field(a, p, "name", str, "e.g. 'PBMC baseline v1'"),
        "description": _field(a, p, "description", str, "a sentence"),
        "author": _field(a, p, "author", str, "a name"),
        "created_at": _field(a, p, "created_at", str, "an ISO date, e.g. '2026-01-31T12:00:00'"),
        "model_id": _field(a, p, "model_id", str, "the model it was trained on, e.g. 'baseline'", required=True),
        "backend": _field(a, p, "backend", str, "e.g. 'baseline' or 'geneformer'"),
        "variant": _field(a, p, "variant", str, "the model's variant, or ''"),
        "model_checksum": _field(a, p, "model_checksum", str, "the checksum of its weights", required=True),
        "trained": _field(a, p, "trained", bool, "whether its weights were trained"),
        "label_column": _field(a, p, "label_column", str, "the reference's label column"),
        "genes_used": _field(a, p, "genes_used", int, "how many genes it reads", minimum=0),
        "provenance": _field(a, p, "provenance", dict, "an object saying where it came from"),
        "builtin": _field(a, p, "builtin", bool, "whether it ships with the platform"),
    }
    reference = _field(a, p, "reference", dict, "an object: file_name, sha256, cells")
    if reference is not None:
        for key in ("file_name", "sha256", "source"):
            _field(reference, f"{p}.reference", key, str, "a string")
        for key in ("cells", "labelled_cells", "max_cells"):
            _field(reference, f"{p}.reference", key, int, "a number of cells", minimum=0)
    out["reference"] = reference
    ontology = _field(a, p, "ontology", dict, 'labels to Cell Ontology ids, e.g. {"B": "CL:0000236"}')
    for label, term in (ontology or {}).items():
        if term is not None and not isinstance(term, str):
            raise AnnotatorFileError(f"The manifest's annotator.ontology[{label[:80]!r}] must be a Cell Ontology "
                                     f"id (e.g. 'CL:0000236') or null; it is {_kind(term)}. {AGAIN}")
    out["ontology"] = ontology
    classes = _field(a, p, "classes", dict, 'each class and its reference cells, e.g. {"B": 42}')
    for label, n in (classes or {}).items():
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise AnnotatorFileError(f"The manifest's annotator.classes[{label[:80]!r}] must be a number of cells; "
                                     f"it is {_kind(n)}. {AGAIN}")
    if classes is not None and not 1 <= len(classes) <= MAX_CLASSES:
        raise AnnotatorFileError(f"The manifest's annotator.classes names {len(classes):,} classes; an annotator "
                                 f"has 1 to {MAX_CLASSES:,}. {AGAIN}")
    out["classes"] = classes
    return {"format": FORMAT, "version": version, "parts": {HEAD_PART: {"sha256": sha, "bytes": size}},
            "annotator": {k: v for k, v in out.items() if v is not None}}


# ---- the arrays -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Array:
    shape: tuple[int, ...]
    dtype: np.dtype


def _npy_header(z: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> _Array:
    """The declared shape and dtype of one ``.npy`` member, read from its header only (numpy's own reader
    allocates the whole array from these before reading a byte of data)."""
    fmt = np.lib.format
    try:
        with z.open(info) as fh:
            version = fmt.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(fh, max_header_size=10_000)
            elif version == (2, 0):
                shape, _, dtype = fmt.read_array_header_2_0(fh, max_header_size=10_000)
            else:
                raise ValueError(f".npy format version {version} (numpy writes 1.0 or 2.0 for plain arrays)")
            header = fh.tell()
    except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError, EOFError, OSError, zlib.error,
            zipfile.BadZipFile) as exc:
        raise AnnotatorFileError(f"head.npz's array {name!r} has no readable header ({str(exc)[:200]}). "
                                 f"{AGAIN}") from None
    if dtype.hasobject:
        raise AnnotatorFileError(f"head.npz carries a pickle (an object array, {name!r}): refused, since loading "
                                 "a pickle runs code from the file.")
    if dtype.names is not None or dtype.subdtype is not None or dtype.kind not in "biufU":
        raise AnnotatorFileError(f"head.npz's array {name!r} has dtype {dtype.str}; an annotator's arrays are "
                                 f"numbers or text. {AGAIN}")
    if dtype.kind == "U" and dtype.itemsize > 4 * MAX_TEXT_CHARS:
        raise AnnotatorFileError(f"head.npz's array {name!r} holds text of {dtype.itemsize // 4:,} characters "
                                 f"per item; at most {MAX_TEXT_CHARS:,}. {AGAIN}")
    if len(shape) > 4:
        raise AnnotatorFileError(f"head.npz's array {name!r} has {len(shape)} dimensions; at most 4. {AGAIN}")
    data = math.prod(shape) * dtype.itemsize
    if header + data != info.file_size:
        raise AnnotatorFileError(f"head.npz's array {name!r} declares shape {shape} of {dtype.str} "
                                 f"({data:,} bytes), but its member holds {info.file_size - header:,} bytes of "
                                 f"data: refused before allocating it. {AGAIN}")
    return _Array(tuple(shape), dtype)


def _refuse(message: str) -> AnnotatorFileError:
    return AnnotatorFileError(f"head.npz does not fit together: {message}. {AGAIN}")


def _expect(arrays: dict[str, _Array], name: str, shape: tuple[int | None, ...], kinds: str) -> _Array:
    """``name`` exists with ``shape`` (None: any length there) and a dtype kind in ``kinds``."""
    if name not in arrays:
        raise AnnotatorFileError(f"The annotator's head is incomplete: head.npz has no array {name!r}. {AGAIN}")
    a = arrays[name]
    if len(a.shape) != len(shape) or any(want is not None and got != want for got, want in zip(a.shape, shape,
                                                                                              strict=True)):
        wanted = "(" + ", ".join("any" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
        raise _refuse(f"{name!r} has shape {a.shape}, where {wanted} is expected")
    if a.dtype.kind not in kinds:
        names = {"f": "floats", "i": "integers", "u": "integers", "U": "text", "b": "booleans"}
        raise _refuse(f"{name!r} is {a.dtype.str}, where {' or '.join(sorted({names[k] for k in kinds}))} "
                      "are expected")
    return a


CLASSIFIER_ARRAYS = {"logistic_regression": {"classes", "coef", "intercept", "temperature", "calibration_cells"},
                     "knn": {"classes", "points", "label_index", "k"},
                     "fine_tuned_linear": {"classes", "weight", "bias", "temperature", "calibration_cells"}}
FIT_ARRAYS = {"classes", "means", "precisions", "distances", "offsets", "points"}  # points: optional (older files)


def _check_shapes(arrays: dict[str, _Array], kind: str, meta: dict) -> None:
    """Every array's declared shape against the others' and the manifest's (classes, reference cells)."""
    from inference.heads import SPACE_COMPONENTS

    if kind not in CLASSIFIER_ARRAYS:
        raise AnnotatorFileError(f"The annotator's head is of kind {kind[:80]!r}, which this platform does not "
                                 f"know (it knows {', '.join(CLASSIFIER_ARRAYS)}): upgrade the platform to use it.")
    allowed = ({"kind", "check_json", "space__components", "space__mean"} | {f"fit__{k}" for k in FIT_ARRAYS}
               | {f"clf__{k}" for k in CLASSIFIER_ARRAYS[kind]})
    unknown = sorted(n for n in arrays if n not in allowed and not n.startswith("extra__"))
    if unknown:
        raise _refuse(f"arrays this platform does not read ({', '.join(unknown[:5])})")
    c = _expect(arrays, "clf__classes", (None,), "U").shape[0]
    classes = meta.get("classes")
    if not 1 <= c <= MAX_CLASSES or (classes is not None and c != len(classes)):
        said = f" and the manifest names {len(classes):,}" if classes is not None else ""
        raise _refuse(f"head.npz has {c:,} classes{said} (an annotator has 1 to {MAX_CLASSES:,})")
    k, d = _expect(arrays, "space__components", (None, None), "f").shape
    if not 1 <= k <= SPACE_COMPONENTS or d < 1:
        raise _refuse(f"the reference's space has {k} components of {d} dimensions (1 to {SPACE_COMPONENTS} "
                      "components expected)")
    _expect(arrays, "space__mean", (d,), "f")
    _expect(arrays, "fit__classes", (c,), "U")
    f = _expect(arrays, "fit__means", (c, None), "f").shape[1]
    if not 1 <= f <= k:
        raise _refuse(f"the reference fit uses {f} components of the space's {k}")
    _expect(arrays, "fit__precisions", (c, f, f), "f")
    n = _expect(arrays, "fit__distances", (None,), "f").shape[0]
    _expect(arrays, "fit__offsets", (c + 1,), "iu")
    if "fit__points" in arrays:
        _expect(arrays, "fit__points", (n, f), "f")
    cells = (meta.get("reference") or {}).get("cells")
    if classes is not None and n != sum(classes.values()):
        raise _refuse(f"the reference fit holds {n:,} cells and the manifest's classes {sum(classes.values()):,}")
    if cells is not None and n > cells:
        raise _refuse(f"the reference fit holds {n:,} cells, more than the reference's {cells:,} (manifest)")
    if kind == "knn":
        points = _expect(arrays, "clf__points", (None, k), "f").shape[0]
        if points < 1 or (cells is not None and points > cells):
            raise _refuse(f"the kNN head holds {points:,} reference cells"
                          + (f", the reference {cells:,} (manifest)" if cells is not None else ""))
        _expect(arrays, "clf__label_index", (points,), "iu")
        _expect(arrays, "clf__k", (), "iu")
        return
    weight = "clf__coef" if kind == "logistic_regression" else "clf__weight"
    rows = _expect(arrays, weight, (None, d), "f").shape[0]
    if rows != c and not (kind == "logistic_regression" and c == 2 and rows == 1):
        raise _refuse(f"{weight!r} has {rows:,} rows for {c:,} classes")
    _expect(arrays, "clf__intercept" if kind == "logistic_regression" else "clf__bias", (rows,), "f")
    if "clf__temperature" in arrays:  # heads saved before calibration have neither
        _expect(arrays, "clf__temperature", (), "f")
    if "clf__calibration_cells" in arrays:
        _expect(arrays, "clf__calibration_cells", (), "iu")


def check_arrays(head_bytes: bytes, meta: dict | None = None) -> None:
    """head.npz (the module's docstring): member rules, every header and shape, then each array read without
    pickle and its values that index others (class offsets, kNN labels) checked. ``meta``: the manifest's
    ``annotator`` object, whose classes and reference cells the shapes must fit."""
    meta = meta or {}
    limit = unpacked_limit(len(head_bytes))
    with _open_zip(head_bytes, "head.npz", MAX_ARRAYS) as (z, _):
        infos = _members(z, "head.npz", lambda n: n.endswith(".npy") and bool(ARRAY_NAME.match(n[:-4])))
        total = sum(i.file_size for i in infos.values())
        if total > limit:
            raise AnnotatorFileError(f"head.npz's arrays unpack to {total:,} bytes from {len(head_bytes):,}, more "
                                     f"than an annotator's {limit:,}: refused before unpacking (a zip bomb is "
                                     f"built this way). {AGAIN}")
        arrays = {n[:-4]: _npy_header(z, i, n[:-4]) for n, i in infos.items()}
        _expect(arrays, "kind", (), "U")
        kind = str(_load(z, infos, "kind"))
        _check_shapes(arrays, kind, meta)
        for name in arrays:
            value = _load(z, infos, name)
            if name == "check_json":
                _expect(arrays, name, (), "U")
                if not isinstance(parse_json(str(value), "head.npz's check_json"), dict):
                    raise _refuse("'check_json' is not a JSON object")
            elif name == "fit__offsets":
                n = arrays["fit__distances"].shape[0]
                if value[0] != 0 or value[-1] != n or (np.diff(value) < 0).any():
                    raise _refuse(f"'fit__offsets' must rise from 0 to {n:,} (the reference fit's cells)")
                if (counts := meta.get("classes")) is not None:
                    labels = [str(x) for x in _load(z, infos, "fit__classes")]
                    if dict(zip(labels, np.diff(value).tolist(), strict=True)) != counts:
                        raise _refuse("its classes and their cells differ from the manifest's classes")
            elif name == "fit__points" and not np.isfinite(value).all():
                raise _refuse("'fit__points' holds values that are not finite numbers")
            elif name == "clf__label_index":
                c = arrays["clf__classes"].shape[0]
                if value.size and (int(value.min()) < 0 or int(value.max()) >= c):
                    raise _refuse(f"'clf__label_index' points outside the {c:,} classes")
            elif name == "clf__k":
                if not 1 <= int(value) <= arrays["clf__points"].shape[0]:
                    raise _refuse(f"k = {int(value)} is not between 1 and the kNN head's reference cells")
            elif name in ("clf__classes", "fit__classes") and len(set(value.tolist())) != len(value):
                raise _refuse(f"{name!r} names a class twice")
            del value


def _load(z: zipfile.ZipFile, infos: dict[str, zipfile.ZipInfo], name: str) -> np.ndarray:
    """One array whose header was checked (so its allocation is bounded), never unpickling."""
    try:
        with z.open(infos[name + ".npy"]) as fh:
            return np.lib.format.read_array(fh, allow_pickle=False, max_header_size=10_000)
    except (ValueError, EOFError, OSError, zlib.error, zipfile.BadZipFile) as exc:
        raise AnnotatorFileError(f"head.npz's array {name!r} cannot be read ({str(exc)[:200]}): the file is "
                                 f"damaged or altered. {AGAIN}") from None

