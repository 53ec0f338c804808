"""Staging weights into the platform's folder without any network, and checking them later: a copy of helical's
cache (a folder or a .tar/.zip of it) is copied file by file with its sha256 in ``manifest.json``, which
``verify`` reads back. Archives are unpacked refusing members that would land outside or are links."""

from __future__ import annotations

import shutil
import tarfile
import tempfile
import zipfile
from datetime import UTC, datetime
from pathlib import Path

from inference.run_files import atomic_path
from inference.weights import (
    DEFAULT_GENEFORMER,
    WeightsError,
    model_key,
    optional_files,
    read_manifest,
    required_files,
    sha256_file,
    weights_variants,
    write_manifest,
)


def _copy_into(src_root: Path, rels: list[str], dest_root: Path) -> dict[str, dict]:
    entries = {}
    for rel in rels:
        dest = dest_root / rel
        with atomic_path(dest) as tmp:
            shutil.copyfile(src_root / rel, tmp)
        entries[rel] = {"sha256": sha256_file(dest), "size": dest.stat().st_size}
    return entries


def _find_layout_root(folder: Path) -> Path:
    """The folder holding a model's folder (``geneformer/``, ``scgpt/``, …): the given one, or a cache path below
    it."""
    for candidate in (folder, folder / ".cache" / "helical" / "models", folder / "models"):
        if any((candidate / backend).is_dir() for backend in weights_variants()):
            return candidate
    raise WeightsError(f"{folder} has no {'/, '.join(weights_variants())}/ folder: give a copy of helical's cache "
                       "(~/.cache/helical/models) or an archive of it.")


def _safe_extract(archive: Path, dest: Path) -> None:
    """Unpack an archive, refusing members that would land outside ``dest`` or are links."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                target = (dest / name).resolve()
                if dest.resolve() not in target.parents and target != dest.resolve():
                    raise WeightsError(f"{archive}: member {name!r} points outside the archive; refused.")
            zf.extractall(dest)
        return
    with tarfile.open(archive) as tf:
        tf.extractall(dest, filter="data")  # refuses absolute paths, '..' and links outside


def stage(src: Path, weights_root: Path, trained: bool = True, note: str = "") -> dict[str, list[str]]:
    """Copy helical-layout weights from a folder or archive into the weights folder and record checksums."""
    src = Path(src)
    if not src.exists():
        raise WeightsError(f"{src} does not exist.")
    with tempfile.TemporaryDirectory(prefix="helical-stage-") as tmp:
        if src.is_file():
            try:
                _safe_extract(src, Path(tmp))
            except (tarfile.TarError, zipfile.BadZipFile, OSError) as exc:
                raise WeightsError(f"{src} is not a readable .tar, .tar.gz or .zip archive: {exc}") from None
            layout = _find_layout_root(Path(tmp))
        else:
            layout = _find_layout_root(src)
        staged: dict[str, list[str]] = {}
        manifest = read_manifest(weights_root)
        for backend, variants in weights_variants().items():
            for variant in variants:
                rels = required_files(backend, variant)
                if not all((layout / rel).is_file() for rel in rels):
                    continue
                rels += [o for o in optional_files(backend, variant) if (layout / o).is_file()]
                manifest["files"].update(_copy_into(layout, rels, weights_root))
                src_info = read_manifest(layout)["models"].get(model_key(backend, variant), {})
                manifest["models"][model_key(backend, variant)] = {
                    **src_info,
                    "trained": bool(src_info.get("trained", trained)),
                    "staged_at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "staged_from": str(src),
                    **({"note": note} if note else {}),
                }
                staged.setdefault(backend, []).append(variant)
        if not staged:
            raise WeightsError(f"{src} holds no complete model in helical's layout (e.g. "
                               f"{required_files('geneformer', DEFAULT_GENEFORMER)[-1]} with its dictionaries).")
        write_manifest(weights_root, manifest)
    return staged


def verify(root: Path) -> list[tuple[str, str]]:
    """(relative path, ok | missing | corrupt) for every file recorded in the folder's manifest."""
    manifest = read_manifest(root)
    results = []
    for rel, entry in sorted(manifest["files"].items()):
        path = root / rel
        if not path.is_file():
            results.append((rel, "missing"))
        elif sha256_file(path) != entry["sha256"]:
            results.append((rel, "corrupt"))
        else:
            results.append((rel, "ok"))
    return results
