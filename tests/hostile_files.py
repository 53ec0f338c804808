"""Hostile HDF5 files, made with h5py the way an attacker would: each starts from a valid h5ad and changes one thing.

Every maker takes a folder and returns the file's path; ``secret`` (where given) is a file outside the data home
whose bytes must never come back.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from tests.conftest import PBMC


def valid(d: Path, n: int = 120) -> Path:
    """Real PBMCs (raw counts, sparse X, a categorical label column): what the attacks start from."""
    path = d / "valid.h5ad"
    if not path.exists():
        cells = ad.read_h5ad(PBMC)[:n].copy()
        cells.write_h5ad(path)
    return path


def _copy(d: Path, name: str) -> Path:
    src, dst = valid(d), d / name
    dst.write_bytes(src.read_bytes())
    return dst


def _replace_categories(f: h5py.File, **create: object) -> None:
    del f["obs/celltype/categories"]
    f.create_dataset("obs/celltype/categories", **create)


def external_storage(d: Path, secret: Path) -> Path:
    """The label column's category names stored in ``secret`` (HDF5 external raw storage)."""
    path = _copy(d, "external-storage.h5ad")
    n = max(8, min(secret.stat().st_size, 64) // 8 * 8) if secret.exists() else 64
    with h5py.File(path, "r+") as f:
        _replace_categories(f, shape=(8,), dtype=f"S{n // 8}", external=[(str(secret), 0, n)])
    return path


def external_storage_on_x(d: Path, secret: Path) -> Path:
    """X's stored values read from ``secret``."""
    path = _copy(d, "external-x.h5ad")
    with h5py.File(path, "r+") as f:
        nnz = f["X/data"].shape[0]
        del f["X/data"]
        f.create_dataset("X/data", shape=(nnz,), dtype="u1", external=[(str(secret), 0, nnz)])
    return path


def external_link(d: Path, secret_h5: Path) -> Path:
    """An obs column that is an external link to a dataset of another HDF5 file on the server."""
    path = _copy(d, "external-link.h5ad")
    with h5py.File(path, "r+") as f:
        del f["obs/celltype/categories"]
        f["obs/celltype/categories"] = h5py.ExternalLink(str(secret_h5), "/secret")
    return path


def virtual_dataset(d: Path, secret_h5: Path) -> Path:
    """The categories as a virtual dataset mapping another HDF5 file's dataset in."""
    path = _copy(d, "virtual.h5ad")
    with h5py.File(secret_h5, "r") as src:
        shape, dtype = src["secret"].shape, src["secret"].dtype
    layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
    layout[:] = h5py.VirtualSource(str(secret_h5), "secret", shape=shape)
    with h5py.File(path, "r+") as f:
        del f["obs/celltype/categories"]
        f.create_virtual_dataset("obs/celltype/categories", layout)
    return path


def soft_link(d: Path) -> Path:
    path = _copy(d, "soft-link.h5ad")
    with h5py.File(path, "r+") as f:
        f["obs/celltype_again"] = h5py.SoftLink("/obs/celltype")
    return path


def _set(path: Path, key: str, values: np.ndarray) -> None:
    with h5py.File(path, "r+") as f:
        del f[key]
        f.create_dataset(key, data=values)


def indices_outside(d: Path, value: int = 2**30) -> Path:
    """CSR column indices far past the matrix: scipy's kernels read and write out of bounds on them."""
    path = _copy(d, f"indices-{value}.h5ad")
    with h5py.File(path, "r+") as f:
        idx = f["X/indices"][()].astype(np.int64)
    idx[::7] = value
    _set(path, "X/indices", idx)
    return path


def indices_negative(d: Path) -> Path:
    path = _copy(d, "indices-negative.h5ad")
    with h5py.File(path, "r+") as f:
        idx = f["X/indices"][()].astype(np.int64)
    idx[5] = -3
    _set(path, "X/indices", idx)
    return path


def indptr_backwards(d: Path) -> Path:
    path = _copy(d, "indptr-backwards.h5ad")
    with h5py.File(path, "r+") as f:
        ptr = f["X/indptr"][()].astype(np.int64)
    ptr[10] = ptr[9] - 5_000 if ptr[9] > 5_000 else -1_000_000_000
    _set(path, "X/indptr", ptr)
    return path


def indptr_past_data(d: Path) -> Path:
    path = _copy(d, "indptr-past.h5ad")
    with h5py.File(path, "r+") as f:
        ptr = f["X/indptr"][()].astype(np.int64)
    ptr[-1] = 3_000_000_000
    _set(path, "X/indptr", ptr)
    return path


def indptr_not_from_zero(d: Path) -> Path:
    path = _copy(d, "indptr-start.h5ad")
    with h5py.File(path, "r+") as f:
        ptr = f["X/indptr"][()].astype(np.int64)
    ptr[0] = 17
    _set(path, "X/indptr", ptr)
    return path


def data_shorter_than_indices(d: Path) -> Path:
    path = _copy(d, "data-short.h5ad")
    with h5py.File(path, "r+") as f:
        data = f["X/data"][()]
    _set(path, "X/data", data[: len(data) // 2])
    return path


def shape_beyond(d: Path) -> Path:
    """X declares 2^40 genes (the file holds 32,738)."""
    path = _copy(d, "shape-beyond.h5ad")
    with h5py.File(path, "r+") as f:
        f["X"].attrs["shape"] = np.array([f["X"].attrs["shape"][0], 2**40])
    return path


def codes_outside(d: Path) -> Path:
    path = _copy(d, "codes-outside.h5ad")
    with h5py.File(path, "r+") as f:
        codes = f["obs/celltype/codes"][()].astype(np.int64)
    codes[3] = 120
    _set(path, "obs/celltype/codes", codes)
    return path


def obs_column_too_short(d: Path) -> Path:
    path = _copy(d, "obs-short.h5ad")
    with h5py.File(path, "r+") as f:
        f["obs/batch"] = np.arange(7)
        order = list(f["obs"].attrs["column-order"]) + ["batch"]
        f["obs"].attrs["column-order"] = np.array(order, dtype=object)
    return path


def dense_x_wrong_shape(d: Path) -> Path:
    path = d / "dense-wrong.h5ad"
    cells = ad.read_h5ad(valid(d))
    cells.X = cells.X.toarray()
    cells.write_h5ad(path)
    with h5py.File(path, "r+") as f:
        x = f["X"][()]
        del f["X"]
        f.create_dataset("X", data=x[:, :1000])
        f["X"].attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
    return path


def unwritten_matrix(d: Path) -> Path:
    """A dense X of 20,000 x 32,738 float32 (2.4 GB) that stores nothing: HDF5 would fill it with ones."""
    path = _copy(d, "unwritten.h5ad")
    with h5py.File(path, "r+") as f:
        del f["X"]
        ds = f.create_dataset("X", shape=(120, 32_738 * 150), dtype="f4", fillvalue=1.0, chunks=(1, 32_738))
        ds.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
    return path


def scale_offset(d: Path) -> Path:
    """A filter no single-cell writer uses, which stores a constant in zero bits."""
    path = _copy(d, "scaleoffset.h5ad")
    with h5py.File(path, "r+") as f:
        f.create_dataset("uns/constant", data=np.zeros(1000, "i4"), scaleoffset=0)
    return path


def unknown_filter(d: Path) -> Path:
    """A dataset compressed with a filter id no built-in codec has (it would load a plugin)."""
    path = _copy(d, "unknown-filter.h5ad")
    with h5py.File(path, "r+") as f:
        plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        plist.set_chunk((16,))
        plist.set_filter(32_123, h5py.h5z.FLAG_OPTIONAL, ())
        space = h5py.h5s.create_simple((120,))
        h5py.h5d.create(f.id, b"uns/plugin_data", h5py.h5t.NATIVE_INT32, space, dcpl=plist)
    return path


def huge_chunk(d: Path) -> Path:
    """One chunk of 1 GiB (HDF5 decompresses whole chunks), its storage a few kilobytes."""
    path = _copy(d, "huge-chunk.h5ad")
    with h5py.File(path, "r+") as f:
        f.create_dataset("uns/blob", shape=(2**28,), chunks=(2**28,), dtype="f4", compression="gzip")
        f["uns/blob"][:1] = 1.0
    return path


def memory_bomb(d: Path, gib: int = 3) -> Path:
    """``gib`` GiB of zeros in obsm, every chunk written and gzip-compressed (~1000x, within what deflate can do, so
    the structure is honest): a few MB on disk, and anndata loads obsm whole."""
    path = _copy(d, f"bomb-{gib}.h5ad")
    n = 120
    cols = gib * 2**30 // (n * 4)
    row = np.zeros(cols, dtype="f4")
    with h5py.File(path, "r+") as f:
        ds = f.create_dataset("obsm/X_bomb", shape=(n, cols), dtype="f4", chunks=(1, 2**22), compression="gzip",
                              compression_opts=1)
        ds.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        for i in range(n):
            ds[i] = row
    return path


def legacy_sparse_outside(d: Path) -> Path:
    """X as a legacy sparse group (h5sparse_format, which anndata still reads, without encoding-type), an index
    far outside the matrix in row 1 (a row the check's sample never reads)."""
    path = _copy(d, "legacy-sparse.h5ad")
    with h5py.File(path, "r+") as f:
        x = f["X"]
        shape = x.attrs["shape"]
        for key in ("encoding-type", "encoding-version", "shape"):
            del x.attrs[key]
        x.attrs["h5sparse_format"], x.attrs["h5sparse_shape"] = "csr", shape
        ptr, idx = f["X/indptr"][()], f["X/indices"][()].astype(np.int64)
    idx[ptr[1]] = 2**30
    _set(path, "X/indices", idx)
    return path


def legacy_and_modern_disagree(d: Path) -> Path:
    """A group that says csr (h5sparse_format, which anndata prefers) and csc_matrix (encoding-type) at once."""
    path = _copy(d, "legacy-disagree.h5ad")
    with h5py.File(path, "r+") as f:
        f["X"].attrs["h5sparse_format"] = "csc"
    return path


def tenx_second_indices(d: Path) -> Path:
    """A valid Cell Ranger matrix group holding a second 'indices' further down: scanpy flattens the group by
    dataset name and may read that one."""
    path = tenx_h5(d, name="tenx-nested.h5", bad=False)
    with h5py.File(path, "r+") as f:
        f["matrix/zzz/indices"] = np.full(f["matrix/indices"].shape, 2**30, dtype=np.int64)
    return path


def long_class_names(d: Path) -> Path:
    """A label column of 100 classes of 20,000 characters each: a few kB gzip-compressed, 2 MB in a report."""
    path = d / "long-names.h5ad"
    cells = ad.read_h5ad(valid(d))
    names = [f"{i:03d}" + "x" * 20_000 for i in range(100)]
    cells.obs["blob"] = pd.Categorical([names[i % 100] for i in range(cells.n_obs)])
    cells.write_h5ad(path, compression="gzip")
    return path


def tenx_indices_outside(d: Path) -> Path:
    """A Cell Ranger v3 .h5 whose gene indices run past the genes."""
    return tenx_h5(d, name="tenx-bad.h5", bad=True)


def tenx_h5(d: Path, name: str, bad: bool) -> Path:
    """A Cell Ranger v3 .h5 of the valid cells (``bad``: every fifth gene index past the genes)."""
    path = d / name
    cells = ad.read_h5ad(valid(d))
    m = sp.csc_matrix(cells.X.T)  # genes x cells, stored by cell
    indices = m.indices.astype(np.int64)
    if bad:
        indices[::5] = 2**31 - 2
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["data"], g["indices"], g["indptr"] = m.data, indices, m.indptr
        g["shape"] = np.array(m.shape)
        g["barcodes"] = np.array(cells.obs_names, dtype="S")
        feat = g.create_group("features")
        feat["id"] = np.array(cells.var["gene_ids"], dtype="S")
        feat["name"] = np.array(cells.var_names, dtype="S")
        feat["feature_type"] = np.array(["Gene Expression"] * cells.n_vars, dtype="S")
        feat["genome"] = np.array(["GRCh38"] * cells.n_vars, dtype="S")
    return path


def loom_mismatch(d: Path) -> Path:
    """A loom file whose gene names are fewer than its matrix's rows."""
    path = d / "mismatch.loom"
    with h5py.File(path, "w") as f:
        f["matrix"] = np.ones((50, 20), dtype="f4")
        f.create_group("layers")
        f["row_attrs/Gene"] = np.array([f"G{i}" for i in range(10)], dtype="S")
        f["col_attrs/CellID"] = np.array([f"C{i}" for i in range(20)], dtype="S")
    return path


def secret_h5(d: Path, text: str) -> Path:
    """Another HDF5 file on the server (a stand-in for another user's data or a config) holding ``text``."""
    path = d / "elsewhere" / "secret.h5"
    path.parent.mkdir(exist_ok=True)
    with h5py.File(path, "w") as f:
        f["secret"] = np.array([text.encode()] * 8)
    return path


STRUCTURE_CASES: dict[str, Callable[[Path], Path]] = {
    "soft link": soft_link,
    "CSR indices at 2^30": indices_outside,
    "CSR indices at 2^31-1": lambda d: indices_outside(d, 2**31 - 1),
    "CSR negative index": indices_negative,
    "indptr goes backwards": indptr_backwards,
    "indptr past the data": indptr_past_data,
    "indptr not from 0": indptr_not_from_zero,
    "data shorter than indices": data_shorter_than_indices,
    "shape of 2^40 genes": shape_beyond,
    "categorical codes outside": codes_outside,
    "obs column too short": obs_column_too_short,
    "dense X of the wrong shape": dense_x_wrong_shape,
    "unknown HDF5 filter": unknown_filter,
    "scale-offset filter": scale_offset,
    "a matrix of unwritten space (2.4 GB declared)": unwritten_matrix,
    "a 1 GiB chunk": huge_chunk,
    "10x .h5 indices outside": tenx_indices_outside,
    "10x .h5 with a second 'indices' nested": tenx_second_indices,
    "legacy sparse X (h5sparse_format), index outside": legacy_sparse_outside,
    "legacy and modern sparse attributes disagree": legacy_and_modern_disagree,
    "loom attributes that do not fit": loom_mismatch,
}
__all__ = ["STRUCTURE_CASES"]
