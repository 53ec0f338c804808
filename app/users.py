"""Who is calling, and what they may delete.

Identity comes from what the deployment already has: a REST token from the tokens file
(``HELICAL_PLATFORM_TOKENS``: one ``user token`` per line), the single shared token
(``HELICAL_PLATFORM_API_TOKEN``: the user ``api``), or the dashboard's login (Panel's basic auth or OAuth/OIDC
provider, its ``user`` cookie). Datasets, runs and annotators record it (``created_by``); a user deletes their own,
an admin (``HELICAL_PLATFORM_ADMINS``) anything. With no tokens file and no admins the product behaves as before
users existed: one user, who may delete anything.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from pathlib import Path

from app.settings import Settings, SettingsError

ANONYMOUS = "anonymous"
SHARED_TOKEN_USER = "api"
MIN_TOKEN_CHARS = 16
_NAME = re.compile(r"^[A-Za-z0-9_.@+-]{1,64}$")
_cache: dict[Path, tuple[tuple[int, int], dict[str, str]]] = {}


class Forbidden(PermissionError):
    """Another user's dataset, run or annotator, for a user who is not an admin (403)."""


@dataclass(frozen=True)
class User:
    name: str
    admin: bool = False

    def may_delete(self, created_by: str | None) -> bool:
        return self.admin or (created_by is not None and created_by == self.name)


def multi_user(settings: Settings) -> bool:
    """Whether users are told apart: a tokens file or admins are configured."""
    return settings.tokens_file is not None or bool(settings.admins)


def user(settings: Settings, name: str) -> User:
    """``name`` as a user: an admin when listed, or when the deployment does not tell users apart."""
    return User(name, admin=(not multi_user(settings)) or name in settings.admins)


def read_tokens(path: Path) -> dict[str, str]:
    """token -> user from the tokens file, re-read when it changes; a clear error for anything malformed."""
    try:
        st = path.stat()
    except OSError as exc:
        raise SettingsError(f"HELICAL_PLATFORM_TOKENS={path}: cannot read it ({exc.strerror}).") from None
    stamp = (st.st_mtime_ns, st.st_size)
    cached = _cache.get(path)
    if cached and cached[0] == stamp:
        return cached[1]
    tokens: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        where = f"HELICAL_PLATFORM_TOKENS={path}, line {number}"
        if len(parts) != 2:
            raise SettingsError(f"{where}: write 'user token' (two words), not {len(parts)}.")
        name, token = parts
        if not _NAME.match(name):
            raise SettingsError(f"{where}: the user name may hold letters, digits and _.@+- (1 to 64 of them).")
        if len(token) < MIN_TOKEN_CHARS:
            raise SettingsError(f"{where}: the token is shorter than {MIN_TOKEN_CHARS} characters.")
        if token in tokens:
            raise SettingsError(f"{where}: this token is already {tokens[token]}'s; each user needs their own.")
        tokens[token] = name
    _cache[path] = (stamp, tokens)
    return tokens


def token_user(settings: Settings, token: str) -> User | None:
    """The user a bearer token belongs to (compared in constant time), or None."""
    found = None
    if settings.tokens_file is not None:
        for known, name in read_tokens(settings.tokens_file).items():
            if hmac.compare_digest(known, token):
                found = name
    if found is None and settings.api_token and hmac.compare_digest(settings.api_token, token):
        found = SHARED_TOKEN_USER
    return None if found is None else user(settings, found)


def check_delete(who: User | None, created_by: str | None, what: str) -> None:
    """Refuse (``Forbidden``) when ``who`` may not delete what ``created_by`` made; ``None``: the local command
    line or the server itself, which may."""
    if who is None or who.may_delete(created_by):
        return
    owner = created_by or "no recorded user (made before users were recorded)"
    raise Forbidden(f"{what} belongs to {owner}: only they or an admin (HELICAL_PLATFORM_ADMINS) may delete it.")
