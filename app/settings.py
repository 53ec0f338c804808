"""One settings object, read from the environment once per process (see the README's settings table)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from app.cross_site import Origin, parse_allowed_origins

ENV_PREFIX = "HELICAL_PLATFORM_"


class SettingsError(ValueError):
    """A setting has a value the platform cannot use; the message names the variable."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a whole number.") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} must be at least {minimum}.")
    return value


def _gigabytes(env: Mapping[str, str], name: str) -> float:
    """A size in GB (decimals allowed); unset or empty: 0, no limit."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number of gigabytes (e.g. 50 or 2.5).") from None
    if not value > 0 or value == float("inf"):
        raise SettingsError(f"{name}={raw!r} must be a positive number of gigabytes (unset it for no quota).")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={raw!r} must be true or false.")


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = (env.get(name) or "").strip().lower() or default
    if raw not in choices:
        raise SettingsError(f"{name}={raw!r} must be one of {', '.join(choices)}.")
    return raw


def _origins(env: Mapping[str, str], name: str) -> tuple[Origin, ...]:
    try:
        return parse_allowed_origins(env.get(name))
    except ValueError as exc:
        raise SettingsError(f"{name}: {exc}") from None


MAX_LINK_S = 7 * 24 * 3600


def _link_seconds(env: Mapping[str, str], name: str) -> int:
    """A signed download link's lifetime: at least a minute, at most a week (a link is a credential: one that
    never expires is a password that cannot be changed)."""
    value = _int(env, name, 3600, minimum=60)
    if value > MAX_LINK_S:
        raise SettingsError(f"{name}={value} is over a week ({MAX_LINK_S} s): give a shorter lifetime.")
    return value


@dataclass(frozen=True)
class Settings:
    home: Path
    db_url: str
    scheduler_address: str | None = None
    port: int = 5006
    address: str = "localhost"
    n_workers: int = 2
    threads_per_worker: int = 1
    worker_memory_limit: str = "auto"
    max_upload_mb: int = 2048
    files_root: Path | None = None
    weights_dir: Path = Path("var/weights")
    allow_download: bool = False
    generate_weights: str = "tiny"
    device: str = "auto"
    api_token: str | None = None
    allowed_origins: tuple[Origin, ...] = ()
    lease_s: int = 30
    retention_days: int = 0  # finished runs older than this are deleted by the server; 0 keeps them
    tokens_file: Path | None = None  # "user token" per line: REST tokens that say who calls (app/users.py)
    admins: tuple[str, ...] = ()  # users who may delete anything
    quota_gb: float = 0.0  # per user: datasets and runs they made; an upload over it is refused (0: no quota)
    download_link_s: int = 3600  # how long a signed download link works (app/downloads.py)
    check_memory_mb: int = 4096  # a file's first check runs in a child process limited to this address space
    check_timeout_s: int = 900  # ... and stopped after this long (inference/check_sandbox.py)
    max_queued_runs: int = 20  # per user: runs queued or running at once; more are refused (429; 0: no limit)
    upload_idle_s: int = 60  # an upload body that sends nothing for this long is answered 408 and dropped

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        home = Path(env.get(ENV_PREFIX + "HOME") or Path.cwd() / "var").expanduser().resolve()
        db_url = env.get(ENV_PREFIX + "DB_URL") or f"sqlite:///{home / 'platform.db'}"
        cpus = os.cpu_count() or 1
        files_root = env.get(ENV_PREFIX + "FILES_ROOT")
        weights = env.get(ENV_PREFIX + "WEIGHTS")
        return cls(
            home=home,
            db_url=db_url,
            scheduler_address=env.get("DASK_SCHEDULER_ADDRESS") or None,
            port=_int(env, ENV_PREFIX + "PORT", 5006, minimum=1),
            address=env.get(ENV_PREFIX + "ADDRESS") or "localhost",
            n_workers=_int(env, ENV_PREFIX + "WORKERS", max(1, min(2, cpus)), minimum=1),
            threads_per_worker=_int(env, ENV_PREFIX + "THREADS_PER_WORKER", 1, minimum=1),
            worker_memory_limit=env.get(ENV_PREFIX + "WORKER_MEMORY") or "auto",
            max_upload_mb=_int(env, ENV_PREFIX + "MAX_UPLOAD_MB", 2048, minimum=1),
            files_root=Path(files_root).expanduser().resolve() if files_root else None,
            weights_dir=Path(weights).expanduser().resolve() if weights else home / "weights",
            allow_download=_bool(env, ENV_PREFIX + "ALLOW_DOWNLOAD", False),
            generate_weights=_choice(env, ENV_PREFIX + "GENERATE_WEIGHTS", "tiny", ("tiny", "real", "none")),
            device=_choice(env, ENV_PREFIX + "DEVICE", "auto", ("auto", "cpu", "cuda")),
            api_token=env.get(ENV_PREFIX + "API_TOKEN") or None,
            allowed_origins=_origins(env, ENV_PREFIX + "ALLOWED_ORIGINS"),
            lease_s=_int(env, ENV_PREFIX + "LEASE_S", 30, minimum=3),
            retention_days=_int(env, ENV_PREFIX + "RETENTION_DAYS", 0, minimum=0),
            tokens_file=Path(env[ENV_PREFIX + "TOKENS"]).expanduser() if env.get(ENV_PREFIX + "TOKENS") else None,
            admins=tuple(a.strip() for a in (env.get(ENV_PREFIX + "ADMINS") or "").split(",") if a.strip()),
            quota_gb=_gigabytes(env, ENV_PREFIX + "QUOTA_GB"),
            download_link_s=_link_seconds(env, ENV_PREFIX + "DOWNLOAD_LINK_S"),
            check_memory_mb=_int(env, ENV_PREFIX + "CHECK_MEMORY_MB", 4096, minimum=1024),
            check_timeout_s=_int(env, ENV_PREFIX + "CHECK_TIMEOUT_S", 900, minimum=10),
            max_queued_runs=_int(env, ENV_PREFIX + "MAX_QUEUED_RUNS", 20, minimum=0),
            upload_idle_s=_int(env, ENV_PREFIX + "UPLOAD_IDLE_S", 60, minimum=1),
        )

    @property
    def generated_weights_dir(self) -> Path:
        """Untrained checkpoints the platform generates when no real weights can be had."""
        return self.home / "weights-generated"

    def public(self) -> dict[str, str]:
        """Every setting as text, a secret replaced by whether it is set: what a server logs at start ("settings in
        effect"), so that whoever set one can see that it took effect (a misspelt variable is silently a default)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "api_token":
                value = "set" if value else "unset"
            elif f.name == "db_url":
                value = _redact(value)
            elif isinstance(value, tuple):
                value = ", ".join(map(str, value))
            out[f.name] = "" if value is None else str(value)
        return out

    def describe(self) -> dict[str, str]:
        """What the settings are, for the page and the logs (never a secret)."""
        return {
            "data home": str(self.home),
            "database": _redact(self.db_url),
            "dask": self.scheduler_address or f"LocalCluster ({self.n_workers} worker processes)",
            "allowed origins": ", ".join(map(str, self.allowed_origins)) or "this server's own only",
            "retention": (f"finished runs deleted after {self.retention_days} days" if self.retention_days
                          else "runs kept until deleted"),
        }


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
