"""The data home's folder layout, id validation and atomic writers.

Layout under the data home::

    datasets/<sha256[:2]>/<sha256><suffix>   uploaded files, content-addressed
    runs/<run_id>/                           one folder per run (result files)
    heads/<cache_key>.npz                    cached classifier heads (plain arrays)
    weights/                                 staged model weights (see inference.weights)
    tmp/                                     uploads in progress

Every write goes to a temporary file in the destination folder and is renamed into place, so a reader never
sees a half-written file; a crash leaves only ``.partial-*`` files, removed by ``remove_partials``. The writers
for results live with the run folder's layout in ``inference/run_files.py``; the store only ingests uploads.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import BinaryIO

PARTIAL_PREFIX = ".partial-"
_HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_WRITER = re.compile(r"^\.partial-[a-z]+-w(\d+)h([0-9a-f]{8})-")


def partial_prefix(kind: str) -> str:
    """The name start of a temporary file this process writes (``.partial-<kind>-w<pid>h<host>-``): the writer in
    the name lets a start on this host remove what a dead process left at once, and leave a live one's alone."""
    return f"{PARTIAL_PREFIX}{kind}-w{os.getpid()}h{_HOST_TAG}-"


def _writer_gone(name: str) -> bool:
    """Whether the process named in a partial file's name is known to be gone (same host, no such pid)."""
    m = _WRITER.match(name)
    if m is None or m.group(2) != _HOST_TAG:
        return False
    try:
        os.kill(int(m.group(1)), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another account's
        return False
    return False
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CACHE_KEY = re.compile(r"^[0-9a-f]{16,64}$")
_SUFFIX = re.compile(r"^(\.[A-Za-z0-9]{1,8}){1,2}$")
_FORBIDDEN_NAME_CHARS = re.compile(r"[/\\\x00-\x1f\x7f]")


class InvalidIdError(ValueError):
    """An id or file name from a user that could reach outside the data home, or is malformed."""


def new_id() -> str:
    return str(uuid.uuid4())


def validate_uuid4(value: str, what: str = "id") -> str:
    """Return ``value`` if it is a canonical uuid4 string; refuse anything else (no path can hide in it)."""
    try:
        parsed = uuid.UUID(str(value))
    except (ValueError, AttributeError, TypeError):
        raise InvalidIdError(f"{what} {value!r} is not a valid id (expected a UUID like "
                             f"'3f2b6c1e-8d4a-4e7b-9c1d-2a5e6f7a8b9c').") from None
    if str(parsed) != str(value) or parsed.version != 4:
        raise InvalidIdError(f"{what} {value!r} is not a valid id (expected a lowercase uuid4).")
    return str(value)


def validate_sha256(value: str) -> str:
    if not isinstance(value, str) or not _SHA256.match(value):
        raise InvalidIdError(f"{value!r} is not a sha256 hex digest.")
    return value


def validate_file_name(name: str) -> str:
    """A display name for an uploaded file: any unicode, but no folders, control characters or dot-names."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidIdError("The file name is empty; give the file a name such as 'pbmc.h5ad'.")
    if _FORBIDDEN_NAME_CHARS.search(name) or name in {".", ".."} or name.startswith(".."):
        raise InvalidIdError(
            f"The file name {name!r} contains a path separator or control character; "
            "send the bare file name (e.g. 'pbmc.h5ad'), not a path."
        )
    if len(name.encode("utf-8")) > 255:
        raise InvalidIdError("The file name is longer than 255 bytes; shorten it.")
    return name


def file_suffix(name: str) -> str:
    """The file's suffix as stored (``.h5ad``, ``.h5``, ``.csv.gz`` …), lower-cased; empty if unusual."""
    lower = name.lower()
    for double in (".csv.gz", ".tsv.gz", ".mtx.gz", ".tar.gz"):
        if lower.endswith(double):
            return double
    suffix = Path(lower).suffix
    return suffix if _SUFFIX.match(suffix or "") else ""


class ArtifactStore:
    """Paths and atomic writes under one data home; every path it returns is checked to lie inside it."""

    def __init__(self, home: str | os.PathLike[str]) -> None:
        self.home = Path(home).resolve()
        for sub in ("datasets", "runs", "heads", "annotators", "weights", "embeddings", "tmp"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)

    def inside(self, *parts: str) -> Path:
        """Join ``parts`` under the home and refuse the result if it resolves outside (symlinks included)."""
        path = self.home.joinpath(*parts).resolve()
        if path != self.home and self.home not in path.parents:
            raise InvalidIdError(f"{'/'.join(parts)!r} points outside the data home.")
        return path

    def dataset_path(self, sha256: str, suffix: str = "") -> Path:
        validate_sha256(sha256)
        if suffix and not _SUFFIX.match(suffix):
            raise InvalidIdError(f"Unusual file suffix {suffix!r}.")
        return self.inside("datasets", sha256[:2], sha256 + suffix)

    def run_dir(self, run_id: str, create: bool = False) -> Path:
        path = self.inside("runs", validate_uuid4(run_id, "run id"))
        if create:
            path.mkdir(parents=True, exist_ok=True)
        return path

    def staging_dir(self, run_id: str) -> Path:
        """Where a run's worker writes before the results are published into ``run_dir`` (same filesystem)."""
        return self.inside("tmp", f"{validate_uuid4(run_id, 'run id')}-prediction")

    def head_path(self, cache_key: str) -> Path:
        if not _CACHE_KEY.match(cache_key or ""):
            raise InvalidIdError(f"{cache_key!r} is not a classifier-head cache key.")
        return self.inside("heads", cache_key + ".npz")  # the name inference/run_files.py head_file() gives

    def annotator_path(self, sha256: str) -> Path:
        """An annotator's arrays, addressed by their content."""
        return self.inside("annotators", f"{validate_sha256(sha256)}.npz")

    def ingest(self, source: BinaryIO, file_name: str, chunk_size: int = 1 << 20,
               max_bytes: int | None = None) -> tuple[str, Path, int]:
        """Stream ``source`` into the content-addressed store; return (sha256, path, size).

        The bytes go to a temporary file while hashed, so a file of any size never sits whole in memory, and
        an upload over ``max_bytes`` is refused before it is written whole.
        """
        validate_file_name(file_name)
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(prefix=partial_prefix("ingest"), dir=self.home / "tmp")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := source.read(chunk_size):
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise UploadTooLargeError(max_bytes)
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            sha = digest.hexdigest()
            dest = self.dataset_path(sha, file_suffix(file_name))
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists():
                tmp.unlink()
                os.utime(dest)  # in use again: the sweep of unrecorded files (app/lifecycle.py) counts from now
            else:
                os.replace(tmp, dest)
            return sha, dest, size
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def remove_partials(self, older_than_s: float = 0.0) -> list[Path]:
        """Delete what interrupted writes left behind (``.partial-*`` anywhere under the home): at once when the
        name says its writer was a process of this host that is gone, else once not modified for ``older_than_s``
        seconds (another live process's upload or result being written keeps changing; an upload body idle past
        ``HELICAL_PLATFORM_UPLOAD_IDLE_S`` is dropped)."""
        removed = []
        cutoff = time.time() - older_than_s
        for path in self.home.rglob(PARTIAL_PREFIX + "*"):
            try:
                if path.is_file() and (_writer_gone(path.name) or path.stat().st_mtime <= cutoff):
                    path.unlink(missing_ok=True)
                    removed.append(path)
            except FileNotFoundError:  # finished (renamed into place) meanwhile
                continue
        return removed


class UploadTooLargeError(ValueError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            f"The file is larger than the upload limit of {limit / 2**20:.0f} MiB; raise "
            "HELICAL_PLATFORM_MAX_UPLOAD_MB, or place the file under the server's allowed folder "
            "(HELICAL_PLATFORM_FILES_ROOT) and pick it there."
        )
        self.limit = limit
