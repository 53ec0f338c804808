"""One gate per format we read, before its reader sees the file: HDF5 containers (``inference/hdf5_gate.py``), an
MTX folder's header, a CSV/TSV's first line.

The text formats cannot point outside themselves; what they can do is declare sizes their bytes do not hold (an MTX
header of a billion entries makes a reader allocate for them before reading one) or a first line without end. The
declared sizes are bounded by what the file's bytes can hold, compressed at deflate's best (about 1:1032).
"""

from __future__ import annotations

import gzip
from pathlib import Path

from inference import hdf5_gate
from inference.file_errors import UnsafeFileError
from inference.hdf5_gate import MAX_DIM

DEFLATE_MAX_RATIO = 1032
MAX_HEADER_LINE = 1 << 20  # bytes: a CSV header of 1 MB is ~50,000 gene names
MAX_COLUMNS = 200_000


def _open_text(path: Path):  # noqa: ANN202 - a binary file object
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _capacity(path: Path) -> int:
    """The most bytes the file can hold once decompressed."""
    size = path.stat().st_size
    return size * DEFLATE_MAX_RATIO if path.name.endswith(".gz") else size


def _mtx(folder: Path) -> None:
    path = next((folder / f for f in ("matrix.mtx.gz", "matrix.mtx") if (folder / f).exists()), None)
    if path is None:
        return
    with _open_text(path) as fh:
        banner = fh.readline(1024).decode("ascii", "replace").lower().split()
        if len(banner) < 4 or banner[0] != "%%matrixmarket" or banner[1] != "matrix":
            raise UnsafeFileError(f"{path.name} does not start with a MatrixMarket banner ('%%MatrixMarket matrix "
                                  "coordinate integer general'). Give the matrix.mtx Cell Ranger wrote.")
        line = fh.readline(1024)
        for _ in range(10_000):
            if not line.startswith(b"%"):
                break
            line = fh.readline(1024)
        try:
            sizes = [int(v) for v in line.split()]
        except ValueError:
            sizes = []
    layout = banner[2]
    capacity = _capacity(path)
    if layout == "coordinate" and len(sizes) == 3:
        rows, cols, entries = sizes
        per_entry = 4  # "1 1\n": the shortest an entry's line can be
    elif layout == "array" and len(sizes) == 2:
        rows, cols = sizes
        entries, per_entry = rows * cols, 2
    else:
        raise UnsafeFileError(f"{path.name}: the size line after the banner is not 'rows columns entries'. Give the "
                              "matrix.mtx Cell Ranger wrote.")
    if not (0 <= rows <= MAX_DIM and 0 <= cols <= MAX_DIM and 0 <= entries <= rows * cols):
        raise UnsafeFileError(f"{path.name} declares {rows:,} x {cols:,} with {entries:,} entries: not a matrix "
                              f"this platform reads (each side at most {MAX_DIM:,}).")
    if entries * per_entry > capacity:
        raise UnsafeFileError(f"{path.name} declares {entries:,} entries, more than its {path.stat().st_size:,} "
                              "bytes can hold: the header is wrong or the file is cut short.")


def _delimited(path: Path) -> None:
    with _open_text(path) as fh:
        try:
            head = fh.readline(MAX_HEADER_LINE + 1)
        except (OSError, EOFError) as exc:
            raise UnsafeFileError(f"The file could not be decompressed ({exc}): gzip it again or give it "
                                  "uncompressed.") from None
    if len(head) > MAX_HEADER_LINE:
        raise UnsafeFileError(f"The file's first line is longer than {MAX_HEADER_LINE // 2**20} MB. A CSV/TSV "
                              "of cells x genes has one header line of gene names, then one line per cell.")
    if max(head.count(b","), head.count(b"\t")) + 1 > MAX_COLUMNS:
        raise UnsafeFileError(f"The file has more than {MAX_COLUMNS:,} columns: a CSV/TSV of cells x genes has "
                              "one column per gene.")


def check_structure(path: Path, fmt: str, full: bool = False) -> None:
    """Refuse (``UnsafeFileError``, a kind of ``UnreadableFileError``) what the format's reader must not be given.

    ``full`` also validates sparse structures and categorical codes block by block (the first check of a file);
    without it only metadata is read (each later open)."""
    path = Path(path)
    if fmt in ("h5ad", "10x-h5", "loom"):
        (hdf5_gate.validate if full else hdf5_gate.inspect)(path, fmt)
    elif fmt == "10x-mtx":
        _mtx(path)
    elif fmt in ("csv", "tsv"):
        _delimited(path)
