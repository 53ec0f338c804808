"""The gate for untrusted HDF5 files (``.h5ad``, 10x ``.h5``, ``.loom``): their structure is judged before anndata,
scanpy or h5py read a single array from them.

HDF5 can point outside itself, and a reader follows: a dataset's values may live in *another file* (external raw
storage: ``/etc/passwd`` read as label values), a link may name another HDF5 file (external link), a virtual dataset
may map another file's datasets in. Its sparse matrices can lie (indices outside the matrix crash scipy's kernels;
an ``indptr`` that goes backwards or past the data makes them allocate what the machine does not have). None of
that is visible to anndata before it reads, so this module walks every object with h5py's low-level API first:

- :func:`inspect` — structure only, from metadata (cheap: no array is read but a sparse matrix's ``shape``): only
  hard links; no external storage, virtual layout, filter other than HDF5's own and LZF, object references or
  oversized chunks; every matrix, table column and embedding of the shape the file declares. Every open of a file
  goes through it (the first check and each later read on a worker).
- :func:`validate` — :func:`inspect`, then every sparse matrix block by block (``indptr`` starts at 0, never
  decreases, ends at the number of stored values; every index within the matrix) and every categorical's codes
  within its categories. Memory stays bounded by :data:`BLOCK` elements whatever the file declares. The first check
  of an uploaded file runs it, in a separate process (``inference/check_sandbox.py``).

Anything refused raises :class:`UnsafeFileError` naming the object and what a user can do.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
from h5py import h5d, h5l, h5o, h5z

from inference.file_errors import UnreadableFileError, UnsafeFileError

# HDF5's built-in filters and LZF (h5py's own): what anndata, Cell Ranger and loompy write. Any other filter would
# load a plugin from the HDF5 plugin path, code that is not ours to run on a stranger's bytes.
# (szip, n-bit and scale-offset are left out: no single-cell writer uses them, and scale-offset can store a
# constant in zero bits, which would defeat the expansion bound below.)
ALLOWED_FILTERS = {h5z.FILTER_DEFLATE: "gzip", h5z.FILTER_SHUFFLE: "shuffle", h5z.FILTER_FLETCHER32: "fletcher32",
                   h5z.FILTER_LZF: "lzf"}
# Deflate expands at most ~1032x (LZF far less): a dataset declaring more bytes than that of what it stores is made
# of unwritten space HDF5 would fill with its fill value, a matrix that is not in the file.
MAX_EXPANSION = 1100
EXPANSION_FLOOR = 2**20  # bytes: small datasets (and empty ones) are never judged by it
MAX_OBJECTS = 200_000  # groups and datasets: a real h5ad has hundreds; walking millions is itself an attack
MAX_CHUNK_BYTES = 256 * 2**20  # HDF5 decompresses whole chunks: one of 4 GiB is 4 GiB of memory for one value
MAX_DIM = 2**31 - 1  # cells or genes: scipy's and anndata's 32-bit index space
BLOCK = 4_000_000  # elements read at a time when validating (32 MB as int64)
REWRITE = "Write the file again with anndata (adata.write_h5ad) from the original data"


def _refuse(where: str, what: str, todo: str = REWRITE) -> UnsafeFileError:
    return UnsafeFileError(f"Refused before reading: '{where}' {what}. {todo}.")


def _attr_text(obj: h5py.HLObject, name: str) -> str | None:
    value = obj.attrs.get(name)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _has_reference(dtype: np.dtype) -> bool:
    if h5py.check_dtype(ref=dtype) is not None:
        return True
    if dtype.fields:
        return any(_has_reference(f[0]) for f in dtype.fields.values())
    if dtype.subdtype is not None:
        return _has_reference(dtype.subdtype[0])
    vlen = h5py.check_dtype(vlen=dtype)
    return vlen is not None and not isinstance(vlen, type) and _has_reference(np.dtype(vlen))


def _check_dataset(ds: h5py.Dataset, where: str) -> None:
    plist = ds.id.get_create_plist()
    if plist.get_layout() == h5d.VIRTUAL:
        raise _refuse(where, "is a virtual dataset (its values are mapped in from other datasets, possibly in other "
                             "files)")
    if plist.get_external_count() > 0:
        name = plist.get_external(0)[0]
        shown = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
        raise _refuse(where, f"keeps its values in another file ({shown[:80]!r}: HDF5 external storage); a file "
                             "must hold its own data")
    for i in range(plist.get_nfilters()):
        code = plist.get_filter(i)[0]
        if code not in ALLOWED_FILTERS:
            raise _refuse(where, f"is compressed with HDF5 filter {code}, which is not one of "
                                 f"{', '.join(sorted(set(ALLOWED_FILTERS.values())))}",
                          "Write the file again with gzip or lzf compression (anndata's default is fine)")
    declared = int(np.prod(ds.shape, dtype=np.float64)) * ds.dtype.itemsize if ds.shape else ds.dtype.itemsize
    stored = ds.id.get_storage_size()
    if declared > EXPANSION_FLOOR and declared > stored * MAX_EXPANSION:
        raise _refuse(where, f"declares {declared / 2**20:,.0f} MB of values but stores {stored:,} bytes (the rest "
                             "would be HDF5's fill value, not data)")
    if _has_reference(ds.dtype):
        raise _refuse(where, "holds HDF5 object references, which anndata never writes")
    if ds.chunks is not None:
        chunk_bytes = int(np.prod(ds.chunks, dtype=np.float64)) * max(ds.dtype.itemsize, 1)
        if chunk_bytes > MAX_CHUNK_BYTES:
            raise _refuse(where, f"is stored in chunks of {chunk_bytes / 2**20:,.0f} MB (at most "
                                 f"{MAX_CHUNK_BYTES // 2**20} MB: each read decompresses a whole chunk)",
                          "Write it again with smaller chunks (anndata's and h5py's defaults are small)")


def _walk(f: h5py.File) -> Iterator[tuple[str, h5py.Group | h5py.Dataset]]:
    """Every object reached by hard links, each once; any other kind of link is refused before it is followed."""
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[str, h5py.Group]] = [("", f)]
    count = 0
    while stack:
        prefix, group = stack.pop()
        for raw in group.id.__iter__():
            name = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
            where = f"{prefix}/{name}".lstrip("/")
            kind = group.id.links.get_info(raw).type
            if kind == h5l.TYPE_EXTERNAL:
                raise _refuse(where, "is a link to another file (HDF5 external link)")
            if kind == h5l.TYPE_SOFT:
                raise _refuse(where, "is a soft link (anndata, Cell Ranger and loompy write none)")
            if kind != h5l.TYPE_HARD:
                raise _refuse(where, "is a user-defined HDF5 link")
            obj = group[name]
            info = h5o.get_info(obj.id)
            key = (info.fileno, info.addr)
            if key in seen:
                continue
            seen.add(key)
            count += 1
            if count > MAX_OBJECTS:
                raise _refuse("/", f"holds more than {MAX_OBJECTS:,} groups and datasets")
            yield where, obj
            if isinstance(obj, h5py.Group):
                stack.append((where, obj))


def _length(obj: h5py.HLObject | None) -> int | None:
    """Rows of a dataset, a dataframe (its index) or a sparse/encoded group; None when not knowable."""
    if obj is None:
        return None
    if isinstance(obj, h5py.Dataset):
        return obj.shape[0] if obj.shape else None
    enc = _attr_text(obj, "encoding-type")
    if enc == "dataframe":
        index = _attr_text(obj, "_index")
        return _length(obj.get(index)) if index and isinstance(obj.get(index, getlink=True), h5py.HardLink) else None
    if _sparse_kind(obj, obj.name.lstrip("/")):
        return _sparse_shape(obj, obj.name.lstrip("/"))[0]
    if enc in ("categorical", "nullable-integer", "nullable-boolean", "nullable-string-array"):
        part = obj.get("codes") if enc == "categorical" else obj.get("values")
        return _length(part) if isinstance(part, h5py.Dataset) else None
    return None


def _sparse_kind(g: h5py.Group, where: str) -> str | None:
    """'csr' or 'csc' for a group anndata reads as a sparse matrix, None for any other group. anndata still reads
    the legacy ``h5sparse_format`` attribute, and prefers it to ``encoding-type`` when both are there: a group must
    be judged by what the reader will do, and the two must agree."""
    enc = _attr_text(g, "encoding-type")
    modern = {"csr_matrix": "csr", "csc_matrix": "csc"}.get(enc or "")
    if "h5sparse_format" not in g.attrs and "h5sparse_shape" not in g.attrs:
        return modern
    legacy = _attr_text(g, "h5sparse_format")
    if legacy not in ("csr", "csc"):
        raise _refuse(where, f"carries a legacy sparse format attribute ({legacy!r}) that is neither csr nor csc")
    if modern and modern != legacy:
        raise _refuse(where, f"says it is {legacy} (h5sparse_format) and {enc} (encoding-type) at once")
    return legacy


def _sparse_shape(g: h5py.Group, where: str) -> tuple[int, int]:
    """The shape anndata will use: ``h5sparse_shape`` when present (as anndata prefers), else ``shape``."""
    shape = g.attrs.get("h5sparse_shape", g.attrs.get("shape"))
    if "h5sparse_shape" in g.attrs and "shape" in g.attrs and \
            not np.array_equal(np.asarray(g.attrs["shape"]), np.asarray(g.attrs["h5sparse_shape"])):
        raise _refuse(where, "declares two different shapes (shape and h5sparse_shape)")
    arr = np.asarray(shape) if shape is not None else np.empty(0)
    if arr.shape != (2,) or not np.issubdtype(arr.dtype, np.integer):
        raise _refuse(where, f"is a sparse matrix without a valid shape (got {shape!r})")
    rows, cols = int(arr[0]), int(arr[1])
    if not (0 <= rows <= MAX_DIM and 0 <= cols <= MAX_DIM):
        raise _refuse(where, f"declares a shape of {rows:,} x {cols:,} (each side at most {MAX_DIM:,})")
    for part in ("data", "indices", "indptr"):
        if not isinstance(g.get(part), h5py.Dataset):
            raise _refuse(where, f"is a sparse matrix without its '{part}' dataset")
    return rows, cols


def _expect(obj: h5py.HLObject | None, where: str, rows: int | None, what: str,
            cols: int | None = None) -> None:
    """``obj`` (if present) has ``rows`` rows (and ``cols`` columns), as its place in the file demands."""
    if obj is None or rows is None:
        return
    if isinstance(obj, h5py.Dataset) and obj.shape == () and rows >= 0:
        raise _refuse(where, f"is a single value where {what} needs {rows:,} rows")
    if isinstance(obj, h5py.Group) and _sparse_kind(obj, where):
        shape = _sparse_shape(obj, where)
    elif isinstance(obj, h5py.Dataset):
        shape = obj.shape
    else:
        n = _length(obj)
        shape = (n,) if n is not None else None
    if shape is None:
        return
    if shape[0] != rows or (cols is not None and (len(shape) < 2 or shape[1] != cols)):
        declared = " x ".join(f"{s:,}" for s in shape)
        needed = f"{rows:,}" + (f" x {cols:,}" if cols is not None else " rows")
        raise _refuse(where, f"has shape {declared} where {what} needs {needed}")


def _h5ad_shapes(f: h5py.File) -> None:
    obs, var = f.get("obs"), f.get("var")
    n_obs, n_vars = _length(obs), _length(var)
    if obs is not None and n_obs is None:
        raise _refuse("obs", "has no readable index of cell names")
    if var is not None and n_vars is None:
        raise _refuse("var", "has no readable index of gene names")
    for table, n in (("obs", n_obs), ("var", n_vars), ("raw/var", _length(f.get("raw/var")))):
        g = f.get(table)
        if isinstance(g, h5py.Group):
            for col in g:
                _expect(g[col], f"{table}/{col}", n, f"a column of {table}")
    _expect(f.get("X"), "X", n_obs, "the matrix (cells x genes)", n_vars)
    for group, rows, cols, what in (("layers", n_obs, n_vars, "a layer (cells x genes)"),
                                    ("obsm", n_obs, None, "a per-cell embedding"),
                                    ("varm", n_vars, None, "a per-gene array"),
                                    ("obsp", n_obs, n_obs, "a cell x cell graph"),
                                    ("varp", n_vars, n_vars, "a gene x gene array")):
        g = f.get(group)
        if isinstance(g, h5py.Group):
            for key in g:
                _expect(g[key], f"{group}/{key}", rows, what, cols)
    if "raw" in f:
        _expect(f.get("raw/X"), "raw/X", n_obs, "raw.X (cells x raw genes)", _length(f.get("raw/var")))


TENX_GROUPS = {"features", "_all_tag_keys"}  # the only groups Cell Ranger nests in a matrix group


def _tenx_layout(g: h5py.Group, where: str) -> None:
    """scanpy reads a 10x matrix group by flattening every dataset under it by its last name (the last one read
    wins): a second 'indices' further down would be read instead of the one judged here."""
    names: dict[str, str] = {}
    for key in g:
        if isinstance(g[key], h5py.Group) and key not in TENX_GROUPS:
            raise _refuse(f"{where}/{key}", "is a group Cell Ranger never writes in a matrix group")

    def visit(name: str, obj: h5py.HLObject) -> None:
        if isinstance(obj, h5py.Dataset):
            base = name.rsplit("/", 1)[-1]
            if base in names:
                raise _refuse(f"{where}/{name}", f"has the same name as '{where}/{names[base]}' (a reader takes "
                                                 "either)")
            names[base] = name

    g.visititems(visit)


def _tenx_shapes(f: h5py.File) -> None:
    for where, obj in _walk(f):
        if isinstance(obj, h5py.Group) and "indptr" in obj:
            _tenx_layout(obj, where)
            shape = obj.get("shape")
            if not isinstance(shape, h5py.Dataset) or shape.shape != (2,) or shape.dtype.kind not in "iu":
                raise _refuse(where, "is a 10x matrix without a valid 'shape' (genes, cells)")
            genes, cells = (int(v) for v in shape[()])
            if not (0 <= genes <= MAX_DIM and 0 <= cells <= MAX_DIM):
                raise _refuse(where, f"declares {genes:,} genes x {cells:,} cells (each at most {MAX_DIM:,})")
            _expect(obj.get("barcodes"), f"{where}/barcodes", cells, "the cell barcodes")


def _loom_shapes(f: h5py.File) -> None:
    matrix = f.get("matrix")
    if not isinstance(matrix, h5py.Dataset) or len(matrix.shape) != 2:
        raise _refuse("matrix", "is missing or not a 2-D dataset (a loom file's genes x cells)")
    genes, cells = matrix.shape
    for group, n in (("row_attrs", genes), ("col_attrs", cells)):
        g = f.get(group)
        if isinstance(g, h5py.Group):
            for key in g:
                _expect(g[key], f"{group}/{key}", n, f"a loom {group[:3]} attribute")
    layers = f.get("layers")
    if isinstance(layers, h5py.Group):
        for key in layers:
            _expect(layers[key], f"layers/{key}", genes, "a loom layer (genes x cells)", cells)


def _open(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")  # HDF5's default locking: a file open twice in a process must agree on it
    except OSError as exc:
        raise _corrupt(exc) from None


def _corrupt(exc: Exception) -> UnreadableFileError:
    return UnreadableFileError(f"The file could not be read as HDF5 ({type(exc).__name__}: {exc}). It may be "
                               "truncated or corrupted (compare its size with the original): export it again.")


def inspect(path: Path, fmt: str) -> None:
    """Refuse (``UnsafeFileError``) a file that points outside itself or whose declared shapes do not fit; reads
    metadata only."""
    try:
        _inspect(path, fmt)
    except UnreadableFileError:
        raise
    except Exception as exc:  # h5py's errors on a damaged file: heaps, B-trees, headers
        raise _corrupt(exc) from None


def _inspect(path: Path, fmt: str) -> None:
    with _open(path) as f:
        for where, obj in _walk(f):
            if isinstance(obj, h5py.Dataset):
                _check_dataset(obj, where)
        {"h5ad": _h5ad_shapes, "10x-h5": _tenx_shapes, "loom": _loom_shapes}[fmt](f)


def _check_sparse(ds_indptr: h5py.Dataset, ds_indices: h5py.Dataset, ds_data: h5py.Dataset, where: str,
                  major: int, minor: int) -> None:
    """CSR/CSC structure, read ``BLOCK`` elements at a time."""
    for name, ds in (("indptr", ds_indptr), ("indices", ds_indices)):
        if ds.ndim != 1 or ds.dtype.kind not in "iu":
            raise _refuse(f"{where}/{name}", f"must be a 1-D integer array (got {ds.dtype} of shape {ds.shape})")
    if ds_data.ndim != 1 or ds_data.dtype.kind not in "iufb":
        raise _refuse(f"{where}/data", f"must be a 1-D numeric array (got {ds_data.dtype} of shape {ds_data.shape})")
    nnz = ds_indices.shape[0]
    if ds_data.shape[0] != nnz:
        raise _refuse(where, f"has {ds_data.shape[0]:,} values but {nnz:,} indices (they must match)")
    if ds_indptr.shape[0] != major + 1:
        raise _refuse(f"{where}/indptr", f"has {ds_indptr.shape[0]:,} entries where the shape needs {major + 1:,}")
    if nnz > major * minor:
        raise _refuse(where, f"stores {nnz:,} values in a {major:,} x {minor:,} matrix")
    previous = 0
    for start in range(0, major + 1, BLOCK):
        block = ds_indptr[start:start + BLOCK].astype(np.int64)
        if start == 0 and block[0] != 0:
            raise _refuse(f"{where}/indptr", f"starts at {block[0]:,} instead of 0")
        steps = np.diff(np.concatenate(([previous], block)))
        if (steps < 0).any():
            at = start + int(np.argmax(steps < 0)) - 1
            raise _refuse(f"{where}/indptr", f"goes backwards after entry {max(at, 0):,}")
        previous = int(block[-1])
        if previous > nnz:
            raise _refuse(f"{where}/indptr", f"points past the {nnz:,} stored values (to {previous:,})")
    if previous != nnz:
        raise _refuse(f"{where}/indptr", f"ends at {previous:,} but {nnz:,} values are stored")
    for start in range(0, nnz, BLOCK):
        block = ds_indices[start:start + BLOCK]
        low, high = int(block.min()), int(block.max())
        if low < 0 or high >= minor:
            bad = low if low < 0 else high
            raise _refuse(f"{where}/indices", f"holds index {bad:,}, outside the matrix (0 to {minor - 1:,})")


def _check_codes(g: h5py.Group, where: str) -> None:
    codes, categories = g.get("codes"), g.get("categories")
    if not isinstance(codes, h5py.Dataset) or not isinstance(categories, h5py.Dataset):
        raise _refuse(where, "is a categorical column without its 'codes' and 'categories' datasets")
    if codes.ndim != 1 or codes.dtype.kind not in "iu" or categories.ndim != 1:
        raise _refuse(where, "is a categorical column whose codes are not 1-D integers")
    n = categories.shape[0]
    for start in range(0, codes.shape[0], BLOCK):
        block = codes[start:start + BLOCK]
        if block.size and (int(block.min()) < -1 or int(block.max()) >= n):
            raise _refuse(f"{where}/codes", f"holds codes outside the {n:,} categories")


def validate(path: Path, fmt: str) -> None:
    """:func:`inspect`, then every sparse matrix's structure and every categorical's codes, in bounded memory."""
    inspect(path, fmt)
    try:
        _validate(path, fmt)
    except UnreadableFileError:
        raise
    except Exception as exc:
        raise _corrupt(exc) from None


def _validate(path: Path, fmt: str) -> None:
    with _open(path) as f:
        for where, obj in _walk(f):
            if not isinstance(obj, h5py.Group):
                continue
            enc = _attr_text(obj, "encoding-type")
            kind = _sparse_kind(obj, where)
            if fmt == "h5ad" and kind:
                rows, cols = _sparse_shape(obj, where)
                major, minor = (rows, cols) if kind == "csr" else (cols, rows)
                _check_sparse(obj["indptr"], obj["indices"], obj["data"], where, major, minor)
            elif fmt == "h5ad" and enc == "categorical":
                _check_codes(obj, where)
            elif fmt == "10x-h5" and "indptr" in obj:
                genes, cells = (int(v) for v in obj["shape"][()])
                for part in ("data", "indices"):
                    if not isinstance(obj.get(part), h5py.Dataset):
                        raise _refuse(where, f"is a 10x matrix without its '{part}' dataset")
                _check_sparse(obj["indptr"], obj["indices"], obj["data"], where, cells, genes)
