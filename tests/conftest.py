"""Shared fixtures: every test gets its own data home and SQLite file under pytest's tmp_path."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from app.settings import Settings

REPO = Path(__file__).resolve().parents[1]
TEST_OUTPUT = Path(os.environ.get("HELICAL_PLATFORM_TEST_OUTPUT", REPO / "test-output"))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env({"HELICAL_PLATFORM_HOME": str(tmp_path / "home")})


@pytest.fixture
def platform(settings: Settings):
    from app.platform import Platform

    p = Platform(settings, start_cluster=False)
    yield p
    p.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
