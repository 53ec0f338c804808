"""The command line's ``main`` called in the test's process: the same parser and code as the installed command,
without a Python start and torch's import per call. Each CLI test still runs its first call through the installed
command (the entry point itself)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.conftest import REPO


def run_main(capsys, *argv: str) -> tuple[int, str, str]:  # noqa: ANN001 - pytest's capsys
    """``(exit code, stdout, stderr)`` of ``helical-platform ARGV...``; a usage error (argparse's exit) gives its
    code as the command would."""
    from app.cli import main

    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def runner(capsys, monkeypatch, home: Path) -> Callable[..., subprocess.CompletedProcess]:  # noqa: ANN001
    """``run(*args)`` for a CLI test on data home ``home``: its first call runs the installed ``helical-platform``,
    every later one ``main`` in this process; each answers as ``subprocess.run(..., text=True)`` would."""
    cli = shutil.which("helical-platform") or str(Path(sys.executable).parent / "helical-platform")
    calls: list[tuple[str, ...]] = []

    def run(*args: str) -> subprocess.CompletedProcess:
        if not calls:
            calls.append(args)
            return subprocess.run([cli, *args], env={**os.environ, "HELICAL_PLATFORM_HOME": str(home)},
                                  capture_output=True, text=True, cwd=REPO, timeout=900)
        monkeypatch.setenv("HELICAL_PLATFORM_HOME", str(home))
        code, out, err = run_main(capsys, *args)
        return subprocess.CompletedProcess([cli, *args], code, out, err)

    return run
