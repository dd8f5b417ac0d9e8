"""Salted hashing of identifiers: patient and encounter numbers are PHI, so stores and logs keep only HMACs.

A keyed HMAC, not a bare hash: the identifiers are small integers, so an unkeyed SHA-256 would be reversed by
enumerating them. The key (salt) comes from the caller, else ``$READMIT_ID_SALT`` (set it in every deployed
environment), else a random per-installation salt kept in ``settings.home() / "id_salt"`` so hashes stay
stable across restarts. ``kind`` separates namespaces: patient 123 and encounter 123 hash differently.
"""

from __future__ import annotations

import contextlib
import hmac
import numbers
import os
import secrets
import tempfile
import threading
from pathlib import Path
from typing import Any

from chalicelib.core import settings
from chalicelib.core.aws_clients import secret_string

HASH_CHARS = 32  # 128 bits: collisions are out of reach for any hospital's lifetime of encounters
SALT_FILE = "id_salt"

_salt_lock = threading.Lock()
_salt_cache: dict[Path, str] = {}  # persisted salts by file, so hashing a batch reads the file once


class IdentifierError(ValueError):
    """Base class for identifier hashing failures."""


class InvalidIdentifier(IdentifierError):
    """The value is empty or not an integer/string, so its hash would link unrelated records."""


class InvalidKind(IdentifierError):
    """The kind is empty or contains ':', which would let two namespaces collide."""


class EmptySalt(IdentifierError):
    """An explicit salt was given but is empty, which would make the HMAC guessable."""


class CorruptSaltFile(IdentifierError):
    """The persisted salt file is empty; regenerating it would silently unlink every stored hash."""


def normalise(value: int | str) -> str:
    """Canonical text of an identifier: 123, "123", " 123 " and "0123" are the same identifier."""
    if isinstance(value, bool):
        raise InvalidIdentifier("a boolean is not an identifier")
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise InvalidIdentifier("empty identifier")
        if text.isascii() and text.isdigit():
            return str(int(text))
        return text
    raise InvalidIdentifier(f"identifiers are integers or strings, not {type(value).__name__}")


def installation_salt(path: Path | None = None) -> str:
    """The per-installation salt at ``path`` (default ``home()/id_salt``), created 0600 on first use."""
    if path is None:  # the hot path (every hashed id): skip building home() while $READMIT_HOME is unchanged
        home = (settings.raw(settings.ENV_HOME), os.getcwd())  # the default home is relative to the cwd
        if (cached := _home_salt.get(home)) is not None:
            return cached
        _home_salt[home] = salt = installation_salt(settings.home() / SALT_FILE)
        return salt
    path = Path(path)
    with _salt_lock:
        cached = _salt_cache.get(path)
        if cached is None:
            cached = _salt_cache[path] = _read_or_create(path)
        return cached


_home_salt: dict[tuple[str | None, str], str] = {}  # ($READMIT_HOME, cwd) → its installation salt


def _read_or_create(path: Path) -> str:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-id_salt-")  # mkstemp creates it 0600
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o600)
            # link() fails if another process won the race, so every process ends up with the same salt.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    salt = path.read_text().strip()
    if not salt:
        raise CorruptSaltFile(f"{path} is empty; restore it or set ${settings.ENV_SALT}")
    return salt


ENV_SALT_SECRET = settings.ENV_SALT_SECRET  # on AWS: a Secrets Manager secret id holding the salt


def secret_salt(secret_id: str, client: Any = None) -> str:
    """The salt from Secrets Manager, fetched once per container (aws_clients.secret_string): every container must
    hash alike."""
    value = secret_string(secret_id, client)
    if not value:
        raise EmptySalt(f"secret {secret_id} holds an empty salt")
    return value


def current_salt() -> str:
    """The salt hash_id uses when none is given; callers hashing many ids resolve it once."""
    return _resolve_salt(None)


def _resolve_salt(salt: str | None) -> str:
    if salt is not None:
        if not salt:
            raise EmptySalt("the salt must not be empty")
        return salt
    # per request: settings.raw reads the two declared variables, without building Settings each time
    if secret_id := settings.raw(ENV_SALT_SECRET):
        return secret_salt(secret_id)
    return settings.raw(settings.ENV_SALT) or installation_salt()


def hash_id(value: int | str, salt: str | None = None, *, kind: str) -> str:
    """Hex HMAC-SHA256 of ``f"{kind}:{value}"`` keyed by the salt, truncated to 32 hex characters."""
    if not kind or ":" in kind:
        raise InvalidKind(f"invalid kind {kind!r}")
    message = f"{kind}:{normalise(value)}".encode()
    key = _resolve_salt(salt).encode()
    return hmac.digest(key, message, "sha256").hex()[:HASH_CHARS]  # OpenSSL's one-shot HMAC
