"""API keys and tenants.

The keys file is JSON: ``{"version": 1, "tenants": {"acme": [{"sha256": "<hex>", "created_at": 1700000000.0}]}}``.
Only the sha256 of each key is ever written; the key itself is printed once by :func:`add_key` and never stored.
A request's key is hashed and compared with every stored hash in constant time (no early exit), so the time taken
says nothing about which tenant or how many keys exist.

Tenant names are safe identifiers (``[a-z][a-z0-9_]{0,31}``): they name a directory under the data directory and,
for a PostgreSQL store, part of a schema name.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personalens.errors import ConfigError

TENANT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
KEY_PREFIX = "plk_"


def check_tenant(name: str) -> str:
    """``name`` if it is a valid tenant name, else :class:`ConfigError`."""
    if not isinstance(name, str) or not TENANT_NAME.match(name):
        raise ConfigError(
            f"tenant name must be 1-32 characters of a-z, 0-9 and _, starting with a letter; got {name!r}"
        )
    return name


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _read(path: Path) -> dict[str, list[dict[str, Any]]]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the API keys file: {exc}") from exc
    tenants = data.get("tenants") if isinstance(data, dict) else None
    if not isinstance(tenants, dict):
        raise ConfigError(f"{path}: expected an object with a 'tenants' mapping")
    out: dict[str, list[dict[str, Any]]] = {}
    for tenant, entries in tenants.items():
        check_tenant(tenant)
        if not isinstance(entries, list):
            raise ConfigError(f"{path}: tenants.{tenant} must be a list")
        for i, entry in enumerate(entries):
            digest = entry.get("sha256") if isinstance(entry, dict) else None
            if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ConfigError(f"{path}: tenants.{tenant}[{i}].sha256 must be 64 lower-case hex digits")
        out[tenant] = list(entries)
    return out


def _write(path: Path, tenants: dict[str, list[dict[str, Any]]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".keys-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"version": 1, "tenants": tenants}, f, indent=2, sort_keys=True)
            f.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add_key(path: str | Path, tenant: str) -> str:
    """Create a new random key for ``tenant`` (creating the tenant and the file if needed), store its hash, and
    return the key: the only time it is ever available."""
    check_tenant(tenant)
    path = Path(path)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    tenants = _read(path)
    tenants.setdefault(tenant, []).append({"sha256": hash_key(key), "created_at": round(time.time(), 3)})
    _write(path, tenants)
    return key


def revoke_tenant(path: str | Path, tenant: str) -> int:
    """Remove every key of ``tenant``; returns how many were removed (the tenant's data stays on disk)."""
    path = Path(path)
    tenants = _read(path)
    removed = len(tenants.pop(tenant, []))
    _write(path, tenants)
    return removed


@dataclass(frozen=True)
class _Snapshot:
    mtime_ns: int | None
    hashes: tuple[tuple[bytes, str], ...]  # (digest bytes, tenant)


class KeyRing:
    """The keys file, re-read when it changes on disk (so a key added while the service runs works at once)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._snapshot = _Snapshot(None, ())
        self._error: str | None = None
        self._reload()

    def _mtime(self) -> int | None:
        try:
            return self.path.stat().st_mtime_ns
        except OSError:
            return None

    def _reload(self) -> _Snapshot:
        mtime = self._mtime()
        with self._lock:
            if self._snapshot.mtime_ns == mtime and mtime is not None:
                return self._snapshot
            try:
                tenants = _read(self.path)
            except ConfigError as exc:
                self._error = str(exc)  # keep serving the last good keys; readiness reports the error
                return self._snapshot
            self._error = None
            hashes = tuple(
                (bytes.fromhex(e["sha256"]), tenant) for tenant, entries in sorted(tenants.items()) for e in entries
            )
            self._snapshot = _Snapshot(mtime, hashes)
            return self._snapshot

    @property
    def error(self) -> str | None:
        """Why the keys file could not be read on the last attempt (``None`` when it could)."""
        self._reload()
        return self._error

    def tenants(self) -> list[str]:
        return sorted({tenant for _, tenant in self._reload().hashes})

    def authenticate(self, key: str | None) -> str | None:
        """The tenant owning ``key``, or ``None``. Every stored hash is compared, in constant time."""
        snapshot = self._reload()
        if not key:
            return None
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
        found: str | None = None
        for stored, tenant in snapshot.hashes:
            if hmac.compare_digest(stored, digest):
                found = tenant
        return found
