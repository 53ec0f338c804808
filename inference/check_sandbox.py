"""A file's first check in a separate process with memory and time limits: whatever a parser does with a hostile
file (a crash in a C extension, an allocation of what the machine does not have, a loop) ends that process, never
the server that asked.

The child gets no secret: its environment is a fixed short list (no API token, no database URL, no cookie secret
in ``/proc/self/environ``) and its arguments name only the file. It limits itself before it opens the file
(``RLIMIT_AS`` for memory, ``RLIMIT_CPU`` for time, no core dump), runs ``inference.checks.check_file`` (the full
gate, then the usual check) and writes the JSON report to a file the parent reads. The parent also stops it on a
wall-clock limit. A child that dies is answered as a refused file with what happened, in words a user can act on.

Each check is a fresh child, forked from a **check server** (``python -m inference.check_sandbox --serve``): a
process started once per server with the same short environment, which imports the readers (numpy, h5py,
anndata, pandas) and the gene tables, and then only forks. A spawned interpreter paid those imports for every
upload (1.7 s, against about 0.2 s forked, for a small file). The check server holds no secret and reads no file:
it forks, reports each child's pid and exit code, and kills a child on request while it is still its unreaped
child (so never a reused pid). Each child first asks the kernel to kill it when the check server ends, closes
every descriptor it inherited (its standard streams go to a file of its own), starts its own session, limits
itself and runs the check. If the check server cannot start, cannot fork or ends under a check, that check runs
in a spawned interpreter, as every check did before; a good file is never refused for the check server's sake.

Run as ``python -m inference.check_sandbox FILE NAME VOCABULARIES.json REPORT.json MEMORY_MB CPU_S`` (one check)
or ``python -m inference.check_sandbox --serve`` (the check server; requests on stdin, one JSON line each).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import resource
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping
from pathlib import Path

from inference.checks import Vocabulary, check_file

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
USE_CHECK_SERVER = True  # False: a spawned interpreter per check (what happens when the check server cannot start)
FORK_ANSWER_S = 60  # a check server that has not forked a request by then is stopped (it starts in ~1.5 s)
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
        args = [str(Path(path).resolve()), name, str(vocab_file), str(out_file), str(memory_mb), str(timeout_s)]
        started = time.monotonic()
        outcome = _forked(args, Path(tmp), timeout_s)
        if outcome is None:  # no check server: one interpreter for this check
            outcome = _spawned(args, Path(tmp), timeout_s)
        returncode, last_line = outcome
        if returncode is None:
            return _report(name, "check_failed",
                           f"Checking {name} took longer than {timeout_s} s and was stopped. A file this slow to "
                           "read is malformed or far larger than it looks; write it again with anndata "
                           "(adata.write_h5ad), or ask the administrator to raise HELICAL_PLATFORM_CHECK_TIMEOUT_S.")
        if returncode == 0 and out_file.exists():
            if out_file.stat().st_size > MAX_REPORT_BYTES:  # what every user is later sent: bounded
                return _report(name, "check_failed", f"Checking {name} produced a report of "
                               f"{out_file.stat().st_size / 2**20:,.0f} MB (at most {MAX_REPORT_BYTES // 2**20} MB): "
                               "its label columns or names are far longer than any real file's. Shorten them.")
            return json.loads(out_file.read_text())
        return _report(name, "check_failed", _why(name, returncode, memory_mb, time.monotonic() - started,
                                                  last_line))


def _last_line(output: bytes) -> str:
    tail = output.decode("utf-8", "replace").strip().splitlines()[-1:] if output else []
    return tail[0] if tail else ""


def _spawned(args: list[str], tmp: Path, timeout_s: int) -> tuple[int | None, str]:
    """(exit code, or None past the time limit; the output's last line) of the check in a fresh interpreter."""
    proc = subprocess.Popen([sys.executable, "-m", "inference.check_sandbox", *args], cwd=tmp, env=_child_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None, ""
    return proc.returncode, _last_line(output)


def _forked(args: list[str], tmp: Path, timeout_s: int) -> tuple[int | None, str] | None:
    """The same, in a child forked from the check server; None when the check server cannot run it (none, or it
    failed to fork, or it ended with the check in flight: the caller runs the check spawned, so a good file is
    never refused for the check server's sake)."""
    server = CheckServer.shared()
    if server is None:
        return None
    output = tmp / "output.txt"
    check = server.start(args, tmp, output)
    if check is None:
        return None
    answers, request = check
    try:
        started = answers.get(timeout=FORK_ANSWER_S)
    except queue.Empty:  # a check server that does not fork in time is not trusted with the next check
        server.stop()
        return None
    if "pid" not in started:  # it could not fork, or ended first
        return None
    try:
        ended = answers.get(timeout=timeout_s)
    except queue.Empty:
        server.kill(request)  # the check server kills its child only while it is unreaped: never a reused pid
        try:
            answers.get(timeout=30)  # its exit, or the check server's end, which ended it too
        except queue.Empty:
            server.stop()  # its children die with it (each asked the kernel for SIGKILL when its parent ends)
        return None, ""
    if "code" not in ended:
        return None  # the check server ended under it; so did the check (see above)
    return ended["code"], _last_line(_tail(output))


def _tail(path: Path, size: int = 4096) -> bytes:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - size))
            return fh.read()
    except OSError:
        return b""


def _kill_group(pid: int) -> None:
    for kill, target in ((os.killpg, pid), (os.kill, pid)):  # the group once it has one; the child before that
        try:
            kill(target, signal.SIGKILL)
            return
        except (ProcessLookupError, PermissionError):
            continue


class CheckServer:
    """This process's check server (the parent side): one per process, started on the first check, started
    again after it dies (at most once a minute if it dies before answering anything). Requests go as JSON lines
    on its stdin; its answers (``{"id", "pid"}`` at the fork, ``{"id", "code"}`` at the exit, ``{"id",
    "error"}`` if it could not fork) are read by one thread and handed to each request's queue."""

    _shared: CheckServer | None = None
    _lock = threading.Lock()
    _failed_at = -1e9  # when a check server last failed to start or died before answering: spawn for a minute

    def __init__(self) -> None:
        self._write = threading.Lock()  # one request line at a time
        self._state = threading.Lock()  # the pending requests and ``alive``
        self._pending: dict[int, queue.Queue] = {}
        self._next = 0
        self._answered = False
        self._tmp = tempfile.TemporaryDirectory(prefix="helical-check-server-")
        self.proc = subprocess.Popen([sys.executable, "-m", "inference.check_sandbox", "--serve"], cwd=self._tmp.name,
                                     env=_child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        self.alive = True
        self._ended = False
        threading.Thread(target=self._read, name="check-server-answers", daemon=True).start()
        # its end is seen by its exit, not only by its answers' pipe: a child forked a moment before it died may
        # still hold that pipe open
        threading.Thread(target=self._watch, name="check-server-watch", daemon=True).start()

    @classmethod
    def shared(cls) -> CheckServer | None:
        if not (USE_CHECK_SERVER and hasattr(os, "fork") and sys.platform == "linux"):
            return None
        with cls._lock:
            if cls._shared is not None and cls._shared.alive:
                return cls._shared
            if time.monotonic() - cls._failed_at < 60:
                return None
            try:
                cls._shared = cls()
            except OSError as exc:
                log.warning("the check server did not start (%s): each check spawns an interpreter", exc)
                cls._failed_at = time.monotonic()
                return None
            return cls._shared

    def start(self, args: list[str], cwd: Path, output: Path) -> tuple[queue.Queue, int] | None:
        answers: queue.Queue = queue.Queue()
        with self._state:
            if not self.alive:
                return None
            self._next += 1
            request = self._next
            self._pending[request] = answers
        if not self._send({"id": request, "args": args, "cwd": str(cwd), "output": str(output)}):
            with self._state:
                self._pending.pop(request, None)
            return None
        return answers, request

    def kill(self, request: int) -> None:
        self._send({"kill": request})

    def _send(self, message: dict) -> bool:
        line = (json.dumps(message) + "\n").encode()
        with self._write:
            try:
                self.proc.stdin.write(line)
                self.proc.stdin.flush()
                return True
            except (BrokenPipeError, ValueError, OSError):
                self.stop()
                return False

    def _read(self) -> None:
        try:
            for line in self.proc.stdout:
                try:
                    answer = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(answer, dict):
                    continue
                self._answered = True
                with self._state:
                    answers = (self._pending.get(answer.get("id")) if "pid" in answer
                               else self._pending.pop(answer.get("id"), None))
                if answers is not None:
                    answers.put(answer)
        finally:
            self._gone()

    def _watch(self) -> None:
        self.proc.wait()
        time.sleep(0.2)  # the answers it wrote before it ended are read first
        self._gone()

    def _gone(self) -> None:
        """It has ended: whoever waits hears it at once (once)."""
        with self._state:
            if self._ended:
                return
            self._ended, self.alive = True, False
            pending, self._pending = self._pending, {}
        for answers in pending.values():
            answers.put({"gone": True})
        self._tmp.cleanup()  # its working folder (private, empty): gone with it
        if not self._answered:
            CheckServer._failed_at = time.monotonic()
        log.warning("the check server ended; the next check starts another")

    def stop(self) -> None:
        with self._state:
            self.alive = False
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


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


def _warm() -> None:
    """What every check would otherwise load again: the gene tables. (Not scanpy, which only 10x, loom and text
    files need: the memory limit counts address space, and a check of an .h5ad never had scanpy's in it.)"""
    from inference import genes

    genes.symbol_to_ensembl()
    genes.ensembl_to_symbol()


def _serve() -> None:
    """The check server: fork a child per request, report its pid and its exit code, kill a child on request
    while it is still unreaped. It reads no file itself. Its answers go to a descriptor of their own, so that
    nothing a library prints can reach the protocol."""
    answers = os.dup(1)
    os.dup2(2, 1)
    _warm()
    children: dict[int, int] = {}  # pid -> request id, until reaped
    pending = b""

    def answer(message: dict) -> None:
        os.write(answers, (json.dumps(message) + "\n").encode())

    while True:
        while children:  # reap whatever has ended
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            request = children.pop(pid, None)
            if request is not None:
                answer({"id": request, "code": os.waitstatus_to_exitcode(status)})
        ready, _, _ = select.select([0], [], [], 0.05 if children else 1.0)
        if not ready:
            continue
        data = os.read(0, 1 << 16)
        if not data:  # the server that asked is gone: so are its checks, and this one's empty working folder
            for pid in children:
                _kill_group(pid)
            try:
                os.rmdir(os.getcwd())
            except OSError:
                pass
            return
        pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            request = json.loads(line)
            if "kill" in request:
                for pid, rid in children.items():
                    if rid == request["kill"]:
                        _kill_group(pid)
                continue
            me = os.getpid()
            try:
                pid = os.fork()
            except OSError as exc:
                answer({"id": request["id"], "error": str(exc)})
                continue
            if pid == 0:
                _check_child(request, me)  # never returns
            children[pid] = request["id"]
            answer({"id": request["id"], "pid": pid})


def _die_with(parent: int) -> None:
    """Ask the kernel for SIGKILL when the check server ends (Linux's PR_SET_PDEATHSIG): no check outlives it."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(1, signal.SIGKILL, 0, 0, 0) != 0 or os.getppid() != parent:  # 1: PR_SET_PDEATHSIG
        os._exit(1)


def _check_child(request: dict, parent: int) -> None:
    """In the forked child: bound to the check server's life, off its pipes, in a session of its own, then the
    check."""
    code = 1
    try:
        _die_with(parent)
        os.setsid()
        out = os.open(request["output"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)  # the pipes to the check server are closed from here on
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.closerange(3, 1 << 16)  # the answers' descriptor among them
        os.chdir(request["cwd"])
        code = main(request["args"])
    except MemoryError:
        code = 3
    except BaseException:  # noqa: BLE001 - whatever it was, it is this check's failure, said in its last line
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        _serve()
    else:
        sys.exit(main(sys.argv[1:]))
