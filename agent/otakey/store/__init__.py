"""The agent's store. ``store = await open_store(url, kek)``; see ``base.py`` for the API.

URLs: ``sqlite:///absolute/path.db`` (read like a file:// URI), a plain (relative or absolute)
path, ``:memory:``, or ``postgresql://user@host:port/db`` (``postgres://`` too). A SQLite URL may
end in ``?synchronous=normal`` (or ``full``, the default; see ``sqlite.py`` for what each keeps).
"""

from __future__ import annotations

from typing import Any

from .base import (
    Action,
    Anomaly,
    AuditEntry,
    AuditEvent,
    CheckIn,
    ConflictError,
    CredentialRecord,
    CredentialState,
    Device,
    DeviceCredentials,
    DeviceState,
    Exchange,
    Product,
    Store,
    Transaction,
)
from .crypto import KEK_ENV, Kek

__all__ = [
    "KEK_ENV",
    "Action",
    "Anomaly",
    "AuditEntry",
    "AuditEvent",
    "CheckIn",
    "ConflictError",
    "CredentialRecord",
    "CredentialState",
    "Device",
    "DeviceCredentials",
    "DeviceState",
    "Exchange",
    "Kek",
    "Product",
    "Store",
    "Transaction",
    "make_store",
    "open_store",
]


def _as_kek(kek: Kek | bytes) -> Kek:
    return kek if isinstance(kek, Kek) else Kek(bytes(kek))


def make_store(url: str, kek: Kek | bytes, **options: Any) -> Store:
    """A store for ``url``, not yet opened (``await store.open()`` or ``async with store``).
    ``options`` go to the backend (SQLite: timeout, synchronous; PostgreSQL: pool_size,
    connect_timeout)."""
    if not isinstance(url, str) or not url:
        raise ValueError("a store URL is a non-empty string")
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore

        return PostgresStore(url, _as_kek(kek), **options)
    from .sqlite import SQLiteStore

    url, options = _sqlite_query(url, options)
    if url.startswith("sqlite://"):
        path = url[len("sqlite://"):]
        if not path.startswith("/"):
            raise ValueError("a SQLite URL is sqlite:///absolute/path (use a plain path for a relative one)")
        # Read like a file:// URI: sqlite:///var/lib/a.db is /var/lib/a.db. SQLAlchemy's spelling
        # sqlite:////var/lib/a.db gives //var/lib/a.db, the same file on POSIX.
        if path == "/:memory:":
            path = ":memory:"
        return SQLiteStore(path, _as_kek(kek), **options)
    if "://" in url:
        raise ValueError(f"unsupported store URL scheme: {url.split('://', 1)[0]}")
    return SQLiteStore(url, _as_kek(kek), **options)


def _sqlite_query(url: str, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``…?synchronous=normal``: SQLite options may ride on the URL (``otakey agent serve --db``)."""
    path, sep, query = url.partition("?")
    if not sep:
        return url, options
    from urllib.parse import parse_qsl

    options = dict(options)
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key != "synchronous":
            raise ValueError(f"unknown SQLite URL option {key!r} (known: synchronous)")
        options["synchronous"] = value
    return path, options


async def open_store(url: str, kek: Kek | bytes, **options: Any) -> Store:
    """An opened store for ``url``: connected, schema migrated, KEK checked against it."""
    store = make_store(url, kek, **options)
    await store.open()
    return store
