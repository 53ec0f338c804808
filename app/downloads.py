"""Download links for a finished run's files, for the dashboard and the REST API alike.

A link carries ``exp`` (a Unix time) and ``sig``, an HMAC-SHA256 of the run id, format and ``exp``, so the
dashboard can hand a browser a link that works without any credential leaving the server (the REST download route
accepts a valid, unexpired signature in place of a token or login) while no one can make a link for another run,
another format or a later time. Links expire after ``HELICAL_PLATFORM_DOWNLOAD_LINK_S`` seconds (one hour by
default): a link that leaked (a browser's history, a shared screen, a proxy's log) stops working; a signed-in user
whose page is older than that still downloads, by the login cookie.

The key is a random secret of this installation, never a setting that may be unset (a key that is the empty string
is a key anyone has): 32 random bytes in ``<data home>/download-links.key``, mode 0600, created on first use. It is
written in full under a temporary name (``O_EXCL``, 0600) and published with ``link``, which fails when the name
exists: replicas sharing a data home all end up with the one secret that was published first, and none ever reads a
half-written one. Deleting the file (and restarting the servers) invalidates every link handed out.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import stat
import threading
import time
from pathlib import Path
from urllib.parse import quote

log = logging.getLogger(__name__)
SECRET_FILE = "download-links.key"
SECRET_HEX_CHARS = 64
DEFAULT_LINK_S = 3600
_secrets: dict[Path, bytes] = {}
_lock = threading.Lock()


class SecretError(RuntimeError):
    """The secret file exists but is not one this platform wrote; the message says what to do."""


def link_secret(home: Path) -> bytes:
    """This installation's signing key, created in ``home`` the first time any process needs it."""
    path = Path(home) / SECRET_FILE
    with _lock:
        if path not in _secrets:
            _secrets[path] = _read_or_create(path)
        return _secrets[path]


def _read_or_create(path: Path) -> bytes:
    for _ in range(2):
        try:
            return _read(path)
        except FileNotFoundError:
            _create(path)
    return _read(path)


def _read(path: Path) -> bytes:
    st = path.stat()
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        os.chmod(path, 0o600)
        log.warning("%s was readable by other accounts; made it 0600 (links signed before may have leaked: "
                    "delete the file and restart to invalidate them)", path)
    text = path.read_text().strip()
    if len(text) != SECRET_HEX_CHARS or any(c not in "0123456789abcdef" for c in text):
        raise SecretError(f"{path} is not a download-link secret written by this platform (64 hexadecimal "
                          "characters expected). Delete it: the next start writes a new one (and every download "
                          "link handed out before stops working).")
    return bytes.fromhex(text)


def _create(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(SECRET_HEX_CHARS // 2) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # atomic, and refuses to replace: the first replica's secret wins
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)


def _message(run_id: str, fmt: str, expires: int) -> bytes:
    return f"helical-platform download\n{run_id}\n{fmt}\n{expires}".encode()


def download_signature(platform, run_id: str, fmt: str, expires: int) -> str:  # noqa: ANN001 - app.platform.Platform
    """What ``sig=`` must be for this run, format and expiry time."""
    key = link_secret(platform.settings.home)
    return hmac.new(key, _message(run_id, fmt, expires), "sha256").hexdigest()


def download_url(platform, run_id: str, fmt: str, now: float | None = None) -> str:  # noqa: ANN001
    """The server-relative link that streams the run's ``fmt`` file (``h5ad``, ``csv``, ``cellxgene``), signed and
    valid for ``settings.download_link_s`` seconds from ``now``."""
    expires = int(time.time() if now is None else now) + int(platform.settings.download_link_s)
    sig = download_signature(platform, run_id, fmt, expires)
    return f"/api/download/{quote(run_id, safe='')}?format={quote(fmt, safe='')}&exp={expires}&sig={sig}"


def link_refusal(platform, run_id: str, fmt: str, exp: str | None, sig: str,  # noqa: ANN001
                 now: float | None = None) -> str | None:
    """Why this signed link does not let its holder in (None: it does). A link for another run or format, with a
    changed ``exp``, or signed with another key fails the comparison; one past its ``exp`` has expired."""
    try:
        expires = int(exp) if exp is not None else None
    except ValueError:
        expires = None
    if expires is None:
        return "This download link has no valid exp= (expiry time): it was not made by this server."
    expected = download_signature(platform, run_id, fmt, expires)
    if not hmac.compare_digest(sig.encode(), expected.encode()):
        return ("This download link's signature is not valid for this run, format and expiry time: it was not "
                "made by this server, or was changed.")
    if (time.time() if now is None else now) > expires:
        return (f"This download link expired at {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(expires))} "
                "(links last HELICAL_PLATFORM_DOWNLOAD_LINK_S seconds): open the run in the dashboard again for a "
                "fresh one.")
    return None
