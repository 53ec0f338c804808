"""The data home: atomic writes, content-addressed datasets, ids that cannot escape."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

import pytest

from inference import run_files
from inference.run_files import atomic_folder, atomic_path, write_text
from store.artifacts import (
    PARTIAL_PREFIX,
    ArtifactStore,
    InvalidIdError,
    UploadTooLargeError,
    new_id,
    validate_file_name,
    validate_uuid4,
)


def _partials(root):
    return [p for p in root.rglob(PARTIAL_PREFIX + "*")]


def test_an_exception_mid_write_leaves_neither_the_file_nor_a_partial(tmp_path):
    dest = tmp_path / "runs" / "metrics.json"
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_bytes(b"{\"macro_f1\": ")
            raise RuntimeError("disk full")
    assert not dest.exists()
    assert _partials(tmp_path) == []
    folder = tmp_path / "runs" / "r1"
    write_text(folder / "old.json", "{}")
    with pytest.raises(RuntimeError), atomic_folder(folder) as staging:
        (staging / "half.parquet").write_bytes(b"PAR1")
        raise RuntimeError("killed")
    assert [p.name for p in folder.iterdir()] == ["old.json"] and _partials(tmp_path) == []


def test_store_and_run_files_agree_on_what_a_partial_is():
    assert run_files.PARTIAL_PREFIX == PARTIAL_PREFIX


def test_a_rewrite_replaces_the_old_content_whole(tmp_path):
    dest = tmp_path / "a.txt"
    write_text(dest, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_bytes(b"new but interrupted")
            raise RuntimeError
    assert dest.read_bytes() == b"old"
    write_text(dest, "new")
    assert dest.read_bytes() == b"new"


@pytest.mark.faults
def test_a_process_killed_mid_write_leaves_no_file_and_its_partial_is_removed(tmp_path):
    dest = tmp_path / "home" / "runs" / "big.bin"
    ready = tmp_path / "ready"
    code = f"""
import time
from pathlib import Path
from inference.run_files import atomic_path
with atomic_path({str(dest)!r}) as tmp, open(tmp, "wb") as fh:
    fh.write(b"x" * 1_000_000)
    fh.flush()
    Path({str(ready)!r}).touch()
    time.sleep(60)
"""
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not dest.exists()
    assert len(_partials(tmp_path)) == 1
    store = ArtifactStore(tmp_path / "home")
    assert len(store.remove_partials()) == 1
    assert _partials(tmp_path) == []


def test_datasets_are_stored_once_per_content(tmp_path):
    store = ArtifactStore(tmp_path)
    sha1, path1, size1 = store.ingest(io.BytesIO(b"cells" * 1000), "a.h5ad", chunk_size=7)
    sha2, path2, _ = store.ingest(io.BytesIO(b"cells" * 1000), "another name.h5ad")
    assert sha1 == sha2 and path1 == path2 and size1 == 5000
    assert path1 == tmp_path.resolve() / "datasets" / sha1[:2] / f"{sha1}.h5ad"
    assert path1.read_bytes() == b"cells" * 1000
    assert _partials(tmp_path) == []


def test_an_upload_over_the_limit_is_refused_before_it_is_written_whole(tmp_path):
    store = ArtifactStore(tmp_path)
    with pytest.raises(UploadTooLargeError, match="upload limit"):
        store.ingest(io.BytesIO(b"x" * 10_000), "big.h5ad", chunk_size=1000, max_bytes=4000)
    assert list((tmp_path / "datasets").rglob("*")) == []
    assert _partials(tmp_path) == []


@pytest.mark.parametrize("bad", ["../../etc/passwd", "..", "", "not-a-uuid", "3F2B6C1E-8D4A-4E7B-9C1D-2A5E6F7A8B9C",
                                 "00000000-0000-1000-8000-000000000000", "runs/../../x"])
def test_run_ids_that_are_not_uuid4_are_refused(tmp_path, bad):
    store = ArtifactStore(tmp_path)
    with pytest.raises(InvalidIdError):
        store.run_dir(bad)
    with pytest.raises(InvalidIdError):
        validate_uuid4(bad)


def test_a_valid_run_id_gets_its_folder_inside_the_home(tmp_path):
    store = ArtifactStore(tmp_path)
    run_id = new_id()
    assert store.run_dir(run_id, create=True) == tmp_path.resolve() / "runs" / run_id


@pytest.mark.parametrize("bad", ["../x.h5ad", "a/b.h5ad", "a\\b.h5ad", "..", "", "  ", "x\x00.h5ad", "..h5ad"])
def test_file_names_with_paths_or_control_characters_are_refused(bad):
    with pytest.raises(InvalidIdError):
        validate_file_name(bad)


def test_unicode_file_names_are_kept():
    assert validate_file_name("Zellen_übersicht μ.h5ad") == "Zellen_übersicht μ.h5ad"


def test_paths_and_symlinks_that_leave_the_home_are_refused(tmp_path):
    store = ArtifactStore(tmp_path / "home")
    outside = tmp_path / "outside"
    outside.mkdir()
    (store.home / "runs" / "escape").symlink_to(outside)
    with pytest.raises(InvalidIdError):
        store.inside("..", "outside")
    with pytest.raises(InvalidIdError):
        store.inside("runs", "escape", "file")
    with pytest.raises(InvalidIdError):
        store.dataset_path("../" + "a" * 61)
    with pytest.raises(InvalidIdError):
        store.head_path("../../etc/passwd")
