"""A file's first check in a separate process with memory and time limits: whatever a parser does with a hostile
file (a crash in a C extension, an allocation of what the machine does not have, a loop) ends that process, never
the server that asked.

The child gets no secret: its environment is a fixed short list (no API token, no database URL, no cookie secret
in ``/proc/self/environ``) and its arguments name only the file. It limits itself before it opens the file
(``RLIMIT_AS`` for memory, ``RLIMIT_CPU`` for time, no core dump), runs ``inference.checks.check_file`` (the full
gate, then the usual check) and writes the JSON report to a file the parent reads. The parent also stops it on a
wall-clock limit. A child that dies is answered as a refused file with what happened, in words a user can act on.

Run as ``python -m inference.check_sandbox FILE NAME VOCABULARIES.json REPORT.json MEMORY_MB CPU_S``.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from inference.checks import Vocabulary, check_file

REPO = Path(__file__).resolve().parents[1]
MAX_REPORT_BYTES = 4 * 2**20  # a real report is a few kB to a few hundred kB (500 classes per label column)
# Variables the child keeps (locale and paths a Python needs); everything else, secrets included, is dropped.
KEEP_ENV = ("PATH", "LANG", "LC_ALL", "TMPDIR", "HOME", "VIRTUAL_ENV", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                     "NUMEXPR_NUM_THREADS", "NUMBA_NUM_THREADS")}


def _report(name: str, code: str, message: str) -> dict[str, object]:
    return {"file": name, "ok": False, "format": None, "errors": [{"code": code, "message": message}],
            "warnings": []}


def _child_env() -> dict[str, str]:
    env = {k: os.environ[k] for k in KEEP_ENV if k in os.environ}
    return {**env, **ONE_THREAD, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1",
            "HDF5_USE_FILE_LOCKING": "FALSE", "HDF5_PLUGIN_PATH": os.devnull}


def check_isolated(path: Path, name: str, vocabularies: Mapping[str, object], memory_mb: int,
                   timeout_s: int) -> dict[str, object]:
    """The check report of ``path`` computed in a child process limited to ``memory_mb`` of address space and
    ``timeout_s`` seconds; a report of why, if the child could not finish."""
    with tempfile.TemporaryDirectory(prefix="helical-check-") as tmp:
        vocab_file, out_file = Path(tmp) / "vocabularies.json", Path(tmp) / "report.json"
        vocab_file.write_text(json.dumps({m: {"kind": v.kind, "genes": sorted(v.genes)} for m, v in
                                          vocabularies.items() if isinstance(v, Vocabulary)}))
        cmd = [sys.executable, "-m", "inference.check_sandbox", str(Path(path).resolve()), name, str(vocab_file),
               str(out_file), str(memory_mb), str(timeout_s)]
        started = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=tmp, env=_child_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return _report(name, "check_failed",
                           f"Checking {name} took longer than {timeout_s} s and was stopped. A file this slow to "
                           "read is malformed or far larger than it looks; write it again with anndata "
                           "(adata.write_h5ad), or ask the administrator to raise HELICAL_PLATFORM_CHECK_TIMEOUT_S.")
        if proc.returncode == 0 and out_file.exists():
            if out_file.stat().st_size > MAX_REPORT_BYTES:  # what every user is later sent: bounded
                return _report(name, "check_failed", f"Checking {name} produced a report of "
                               f"{out_file.stat().st_size / 2**20:,.0f} MB (at most {MAX_REPORT_BYTES // 2**20} MB): "
                               "its label columns or names are far longer than any real file's. Shorten them.")
            return json.loads(out_file.read_text())
        tail = output.decode("utf-8", "replace").strip().splitlines()[-1:] if output else []
        return _report(name, "check_failed", _why(name, proc.returncode, memory_mb, time.monotonic() - started,
                                                  tail[0] if tail else ""))


def _why(name: str, returncode: int, memory_mb: int, seconds: float, last_line: str) -> str:
    if returncode == 3 or "MemoryError" in last_line:
        return (f"Checking {name} needed more than the {memory_mb:,} MB allowed, so the file was refused. Its "
                "structure declares more data than it holds, or it is larger than this server checks: write it "
                "again with anndata (adata.write_h5ad), or ask the administrator to raise "
                "HELICAL_PLATFORM_CHECK_MEMORY_MB.")
    if returncode < 0:
        sig = signal.Signals(-returncode).name if -returncode in signal.Signals._value2member_map_ else -returncode
        return (f"The reader crashed on {name} ({sig}) after {seconds:.0f} s, so the file was refused; the server "
                "is unaffected. The file is malformed (e.g. a sparse matrix whose indices point outside it): write "
                "it again with anndata (adata.write_h5ad) from the original data.")
    return (f"Checking {name} failed (exit {returncode}{': ' + last_line[:200] if last_line else ''}); the file "
            "was refused. Write it again with anndata (adata.write_h5ad) from the original data.")


def _limit_self(memory_mb: int, cpu_s: int) -> None:
    memory = memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 5))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_REPORT_BYTES * 4, MAX_REPORT_BYTES * 4))  # it writes one report
    try:  # if memory runs short on the machine, the kernel ends this process before the server
        Path("/proc/self/oom_score_adj").write_text("1000")
    except OSError:
        pass


def main(argv: list[str]) -> int:
    path, name, vocab_file, out_file, memory_mb, cpu_s = argv
    _limit_self(int(memory_mb), int(cpu_s))
    try:
        vocab = {m: Vocabulary(v["kind"], frozenset(v["genes"]))
                 for m, v in json.loads(Path(vocab_file).read_text()).items()}
        report = check_file(Path(path), name, vocab)
    except MemoryError:
        return 3
    Path(out_file).write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
