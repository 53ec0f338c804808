"""A throwaway PostgreSQL cluster for the tests: ``initdb`` + ``pg_ctl`` in a temporary folder, unix socket only.

The cluster listens on no TCP port (``listen_addresses = ''``); its socket and data directory live in one
temporary folder, removed when it stops. ``initdb`` refuses to run as root, so under root every server command runs
as the ``postgres`` OS user (``runuser -u postgres --``; the user is created when missing) and the folder is
chowned to it. The database role is ``postgres`` with trust authentication on the socket: nothing listens
beyond this machine's file system. Settings that only make sense for a cluster thrown away afterwards (``fsync``
off) keep it fast.

Binaries: ``initdb`` on PATH, else Debian's ``/usr/lib/postgresql/<version>/bin`` (``apt-get install postgresql``;
``.ci/run`` installs it). Missing binaries raise ``PostgresUnavailable`` with that advice: the tests fail, they do
not skip.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

OS_USER = "postgres"
ROLE = "postgres"
INSTALL_HINT = ("PostgreSQL's server binaries (initdb, pg_ctl) were not found on PATH nor under "
                "/usr/lib/postgresql/*/bin: install Debian's postgresql (`apt-get install postgresql`; .ci/run "
                "does) to run the PostgreSQL tests.")
SETTINGS = {
    "listen_addresses": "''",  # no TCP at all: the unix socket in the temporary folder only
    "fsync": "off",  # a throwaway cluster: durability across an OS crash is not wanted
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",  # a test's engines keep pooled connections until its database is dropped
    "shared_buffers": "32MB",
    "logging_collector": "off",
}


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries are not installed, or the cluster did not start."""


def find_bindir() -> Path:
    """The folder holding ``initdb`` and ``pg_ctl``: PATH first, then the newest Debian version."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    candidates = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")
                  if os.access(Path(p).parent / "initdb", os.X_OK)]

    def version(bindir: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", bindir.parent.name)) or (0,)

    if not candidates:
        raise PostgresUnavailable(INSTALL_HINT)
    return max(candidates, key=version)


def _ensure_os_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(OS_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OS_USER],
                       check=True, capture_output=True)
        return pwd.getpwnam(OS_USER)


class PostgresCluster:
    """One cluster: ``start()``, then ``create_database()`` per test or module, ``stop()`` at the end."""

    def __init__(self, bindir: Path | None = None) -> None:
        self.bindir = bindir or find_bindir()
        # Short and under /tmp: a unix socket's path must fit in 107 bytes (pytest's tmp_path may not).
        self.root = Path(tempfile.mkdtemp(prefix="helical-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.log = self.root / "server.log"
        self.as_root = os.geteuid() == 0
        self._started = False
        self._databases = 0

    # -- commands ---------------------------------------------------------------------------------------------
    def _run(self, tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / tool), *args]
        if self.as_root:  # initdb and postgres refuse root
            cmd = ["runuser", "-u", OS_USER, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.root,
                              stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise PostgresUnavailable(f"{tool} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}"
                                      f"{proc.stderr}{self._log_tail()}")
        return proc

    def _log_tail(self) -> str:
        try:
            return "\n--- server log ---\n" + "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])
        except OSError:
            return ""

    # -- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> PostgresCluster:
        """initdb, then ``pg_ctl start`` (waits until it accepts connections); on failure, cleans up and raises."""
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> PostgresCluster:
        self.socket_dir.mkdir()
        if self.as_root:
            user = _ensure_os_user()
            for path in (self.root, self.socket_dir):
                os.chown(path, user.pw_uid, user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", ROLE, "--auth=trust", "--encoding=UTF8", "--no-locale",
                  "--no-instructions")
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n# tests/postgres.py: a throwaway cluster on a unix socket\n")
            conf.write(f"unix_socket_directories = '{self.socket_dir}'\n")
            for key, value in SETTINGS.items():
                conf.write(f"{key} = {value}\n")
        self._started = True  # from here on, stop() has something to stop (pg_ctl start may half-succeed)
        self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60")
        return self

    def stop(self) -> None:
        """Stop the server at once (``-m immediate``) and remove its folder; safe to call twice."""
        try:
            if self._started and (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w", "-t", "60")
        finally:
            self._started = False
            shutil.rmtree(self.root, ignore_errors=True)

    # -- databases --------------------------------------------------------------------------------------------
    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL for ``database`` through psycopg (v3) on the cluster's socket."""
        return f"postgresql+psycopg://{ROLE}@/{database}?host={self.socket_dir}"

    def _admin(self):  # noqa: ANN202 - a psycopg connection
        import psycopg

        return psycopg.connect(dbname="postgres", user=ROLE, host=str(self.socket_dir), autocommit=True)

    def create_database(self, hint: str = "test") -> str:
        """A new empty database (its name made from ``hint``); returns its SQLAlchemy URL."""
        self._databases += 1
        name = f"{re.sub(r'[^a-z0-9_]+', '_', hint.lower()).strip('_')[:40] or 'test'}_{self._databases}"
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a database made by ``create_database``, closing whatever connections still use it."""
        from sqlalchemy.engine import make_url

        name = make_url(url).database
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

