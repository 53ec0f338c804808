"""The annotated ``.h5ad``: the user's own file with the run's predictions added.

For an ``.h5ad`` input the file is copied as it is (streamed) and only obs, the new obsm entries and uns are
written into the copy, so the input's matrices never pass through memory (at a million cells they would be the
largest thing a run holds). Other formats, or an ``.h5ad`` in an encoding the copy cannot edit, are read whole by
anndata and written anew.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from inference.readers import detect_format, open_anndata

log = logging.getLogger(__name__)


def write_annotated(source: Path, name: str, path: Path, obs: dict[str, object], obsm: dict[str, np.ndarray],
                    uns: dict[str, object]) -> str:
    """Write ``path``; returns how ("copy" or "rewrite"). An existing ``obsm['X_umap']`` is kept as
    ``X_umap_input``."""
    if detect_format(source, name) == "h5ad":
        try:
            _edit_copy(source, path, obs, obsm, uns)
            return "copy"
        except OSError:
            raise  # a full disk or a lost file: the run fails with it
        except Exception as exc:  # noqa: BLE001 - an encoding h5py edits cannot handle: write it anew
            log.warning("annotating a copy of %s failed (%s); writing the file anew", name, exc)
            path.unlink(missing_ok=True)
    adata, _ = open_anndata(source, name, backed=False)
    for key, values in obs.items():
        adata.obs[key] = values
    if "X_umap" in adata.obsm and "X_umap" in obsm:
        adata.obsm["X_umap_input"] = adata.obsm["X_umap"]
    for key, values in obsm.items():  # a plain view of a memory map: no copy; a DataFrame stays one
        adata.obsm[key] = values if isinstance(values, pd.DataFrame) else np.asarray(values)
    adata.uns.update(uns)
    adata.write_h5ad(path)
    return "rewrite"


def _edit_copy(source: Path, path: Path, obs: dict[str, object], obsm: dict[str, np.ndarray],
               uns: dict[str, object]) -> None:
    import h5py
    from anndata.io import read_elem, write_elem

    shutil.copyfile(source, path)
    with h5py.File(path, "r+") as f:
        table: pd.DataFrame = read_elem(f["obs"])
        for key, values in obs.items():
            table[key] = values
        del f["obs"]
        write_elem(f, "obs", table)
        for group in ("obsm", "uns"):
            if group not in f:
                write_elem(f, group, {})
        if "X_umap" in f["obsm"] and "X_umap" in obsm:
            if "X_umap_input" in f["obsm"]:
                del f["obsm"]["X_umap_input"]
            f["obsm"].move("X_umap", "X_umap_input")
        for key, values in obsm.items():
            if key in f["obsm"]:
                del f["obsm"][key]
            write_elem(f["obsm"], key, values if isinstance(values, pd.DataFrame) else np.asarray(values))
        for key, value in uns.items():
            if key in f["uns"]:
                del f["uns"][key]
            write_elem(f["uns"], key, value)
