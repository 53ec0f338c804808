"""The command line's ``main`` called in the test's process: the same parser and code as the installed command,
without a Python start and torch's import per call. Each CLI test still runs its first call through the installed
command (the entry point itself)."""

from __future__ import annotations


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
