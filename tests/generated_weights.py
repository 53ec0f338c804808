"""The untrained weights a server generates in a fresh data home (``app.weights.ensure_generated_weights``), made
once per test session and copied into each fresh home that would otherwise make them again: the same files, as
if that home had generated them (~5 s of every server or in-process platform start on the 2-core VM). A test of
what a server does itself (its own home, weights or generation setting) does not use it."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

_MADE: list[Path] = []
OWN_WEIGHTS = ("HELICAL_PLATFORM_HOME", "HELICAL_PLATFORM_WEIGHTS", "HELICAL_PLATFORM_GENERATE_WEIGHTS")


def seed(home: Path) -> Path:
    """``home`` with the session's generated weights in it (``home / 'weights-generated'``); returns ``home``. A
    home that has generated weights already (a server started again on it) keeps its own."""
    target = Path(home) / "weights-generated"
    if target.exists():
        return Path(home)
    if not _MADE:
        _MADE.append(_make())
    shutil.copytree(_MADE[0], target)
    return Path(home)


def _make() -> Path:
    from app.platform import Platform
    from app.settings import Settings
    from app.weights import ensure_generated_weights

    root = Path(tempfile.mkdtemp(prefix="helical-test-weights-"))
    atexit.register(shutil.rmtree, root, True)
    p = Platform(Settings.from_env({"HELICAL_PLATFORM_HOME": str(root / "home")}), start_cluster=False)
    try:
        written = ensure_generated_weights(p.settings, p.engine)
    finally:
        p.close()
    assert written, "no weights were generated: the catalog's models all have real weights?"
    return root / "home" / "weights-generated"
