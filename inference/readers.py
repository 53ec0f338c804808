"""Open single-cell files of the formats users have, reading as little as the task needs."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
from anndata import AnnData

from inference.file_errors import UnreadableFileError
from inference.file_gate import check_structure

__all__ = ["UnreadableFileError", "detect_format", "open_anndata"]
FORMATS = {".h5ad": "h5ad", ".h5": "10x-h5", ".loom": "loom", ".csv": "csv", ".csv.gz": "csv", ".tsv": "tsv",
           ".tsv.gz": "tsv", ".txt": "tsv"}
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def detect_format(path: Path, name: str | None = None) -> str:
    """The format from the name (as uploaded) and, for HDF5 containers, the first bytes."""
    path = Path(path)
    if path.is_dir():
        if any((path / f).exists() for f in ("matrix.mtx", "matrix.mtx.gz")):
            return "10x-mtx"
        raise UnreadableFileError(f"The folder {path.name} has no matrix.mtx(.gz): an MTX folder needs "
                                  "matrix.mtx, barcodes.tsv and genes.tsv/features.tsv (as Cell Ranger writes).")
    lower = (name or path.name).lower()
    fmt = next((f for s, f in sorted(FORMATS.items(), key=lambda kv: -len(kv[0])) if lower.endswith(s)), None)
    if fmt is None:
        raise UnreadableFileError(
            f"{name or path.name}: unknown file type. Give an AnnData .h5ad, a 10x .h5, an MTX folder, a .loom "
            "or a CSV/TSV of cells x genes.")
    size = path.stat().st_size
    if size == 0:
        raise UnreadableFileError(f"{name or path.name} is empty (0 bytes): the upload or export did not complete.")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if fmt in ("h5ad", "10x-h5", "loom") and not head.startswith(HDF5_MAGIC):
        looks = _looks_like(head)
        raise UnreadableFileError(
            f"{name or path.name} is not an HDF5 file, so it cannot be an {fmt} file{looks}. Export it again "
            "with anndata (adata.write_h5ad) or give the original file.")
    return fmt


def _looks_like(head: bytes) -> str:
    if head.startswith(b"\x89PNG"):
        return " (it is a PNG image)"
    if head.startswith(b"PK"):
        return " (it is a ZIP archive: unpack it first)"
    if head.startswith(b"\x1f\x8b"):
        return " (it is gzip-compressed: gunzip it first)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return ""
    return " (it looks like text, e.g. a CSV)" if ("," in text or "\t" in text) else " (it looks like text)"


def open_anndata(path: Path, name: str | None = None, backed: bool = True) -> tuple[AnnData, str]:
    """(AnnData, format). ``.h5ad`` opens backed (matrix left on disk) unless ``backed`` is False. The format's
    gate (``inference/file_gate.py``) judges the structure first, from metadata only."""
    fmt = detect_format(Path(path), name)
    check_structure(Path(path), fmt)
    try:
        if fmt == "h5ad":
            return ad.read_h5ad(path, backed="r" if backed else None), fmt
        import scanpy as sc

        if fmt == "10x-h5":
            return sc.read_10x_h5(path), fmt
        if fmt == "10x-mtx":
            return sc.read_10x_mtx(path), fmt
        if fmt == "loom":
            return sc.read_loom(path, sparse=True), fmt
        return ad.io.read_csv(path, delimiter="," if fmt == "csv" else "\t"), fmt
    except UnreadableFileError:
        raise
    except Exception as exc:  # every reader has its own errors; the user needs one sentence
        raise UnreadableFileError(
            f"{name or Path(path).name} could not be read as {fmt}: {type(exc).__name__}: {exc}. The file may "
            "be truncated or corrupted (compare its size with the original) or written by another tool.") from None
