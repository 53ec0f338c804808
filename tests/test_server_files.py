"""Picking a file on the server: only under the allowed folder, symlinks included."""

from __future__ import annotations

import shutil

import pytest

from app.platform import Platform
from app.settings import Settings
from store.artifacts import InvalidIdError
from tests.conftest import PBMC
from tests.reliability import record


def test_server_files_are_confined_to_the_allowed_folder(tmp_path, request):
    root, outside = tmp_path / "shared-files", tmp_path / "private"
    root.mkdir()
    outside.mkdir()
    shutil.copyfile(PBMC, root / "cells.h5ad")
    shutil.copyfile(PBMC, outside / "secret.h5ad")
    (root / "link.h5ad").symlink_to(outside / "secret.h5ad")
    (root / "linked-dir").symlink_to(outside)
    platform = Platform(Settings.from_env({"HELICAL_PLATFORM_HOME": str(tmp_path / "home"),
                                           "HELICAL_PLATFORM_FILES_ROOT": str(root)}), start_cluster=False)
    try:
        ds = platform.datasets.ingest_server_file("cells.h5ad")
        assert ds.n_cells == 599
        for sneaky in ("../private/secret.h5ad", "link.h5ad", "linked-dir/secret.h5ad", "/etc/passwd"):
            with pytest.raises(InvalidIdError, match="outside the allowed folder"):
                platform.datasets.ingest_server_file(sneaky)
        assert len(platform.datasets.list()) == 1
    finally:
        platform.close()
    record("security", "Server-side file picking confined to HELICAL_PLATFORM_FILES_ROOT",
           "../private/secret.h5ad, a symlinked file, a symlinked folder, /etc/passwd",
           "each refused 'outside the allowed folder'", "only the file under the root stored", request.node.nodeid)


def test_server_files_are_off_unless_a_folder_is_set(tmp_path):
    platform = Platform(Settings.from_env({"HELICAL_PLATFORM_HOME": str(tmp_path / "home")}), start_cluster=False)
    try:
        with pytest.raises(InvalidIdError, match="HELICAL_PLATFORM_FILES_ROOT"):
            platform.datasets.ingest_server_file("cells.h5ad")
    finally:
        platform.close()
