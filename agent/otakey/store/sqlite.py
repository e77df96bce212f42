"""SQLite store: the default, one file, one agent process.

sqlite3 blocks, so one dedicated thread owns the connection and every call hops to it; the
thread's queue also keeps a transaction's statements in order. Transactions of one store are
serialised by an asyncio lock and start with ``BEGIN IMMEDIATE`` (the database's write lock), so a
second process opening the same file waits (``busy_timeout``) instead of interleaving.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from otakey.errors import StorageError

from .base import ConflictError, Store, Transaction
from .crypto import Kek
from .sql import Row, SqlTransaction, check_kek, migrate

T = TypeVar("T")


def _map_error(exc: sqlite3.Error) -> StorageError:
    if isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc):
        return ConflictError(str(exc))
    return StorageError(f"sqlite: {exc}")


class _SqliteConn:
    def __init__(self, store: SQLiteStore) -> None:
        self._store = store

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return await self._store._call(lambda c: c.execute(sql, tuple(params)).rowcount)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._store._call(lambda c: c.executemany(sql, [tuple(r) for r in rows]))

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return await self._store._call(lambda c: c.execute(sql, tuple(params)).fetchall())

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        return await self._store._call(lambda c: c.execute(sql, tuple(params)).fetchone())


class SQLiteStore(Store):
    """A store in one SQLite file (created with mode 0600), or ``:memory:``.

    ``synchronous``: "FULL" (default) makes every commit durable before the answer leaves, which
    the persist-then-answer rule needs across a power loss of the agent's machine.
    """

    dialect = "sqlite"

    def __init__(self, path: str | os.PathLike[str], kek: Kek, *, timeout: float = 30.0,
                 synchronous: str = "FULL") -> None:
        if not isinstance(kek, Kek):
            raise TypeError("kek is a Kek")
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError("synchronous is OFF, NORMAL, FULL or EXTRA")
        self.path = str(path)
        self._kek = kek
        self._timeout = timeout
        self._synchronous = synchronous.upper()
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._executor is None or self._db is None:
            raise StorageError("the store is not open")
        db = self._db

        def run() -> T:
            try:
                return fn(db)
            except sqlite3.Error as exc:
                raise _map_error(exc) from exc

        return await asyncio.get_running_loop().run_in_executor(self._executor, run)

    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            parent = Path(self.path).parent
            if not parent.is_dir():
                raise StorageError(f"no folder {parent} for the database")
            # Created private before SQLite touches it; its -wal/-shm files inherit the mode.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
        try:
            db = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None,
                                 check_same_thread=False)
            db.execute("PRAGMA foreign_keys = ON")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(f"PRAGMA synchronous = {self._synchronous}")
            db.execute(f"PRAGMA busy_timeout = {int(self._timeout * 1000)}")
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open {self.path}: {exc}") from exc
        return db

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="otakey-sqlite")
        try:
            self._db = await asyncio.get_running_loop().run_in_executor(self._executor, self._connect)
            async with self._raw_transaction() as conn:
                await migrate(conn, self.dialect)
                await check_kek(conn, self._kek)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        executor, db = self._executor, self._db
        self._executor, self._db = None, None
        if executor is None:
            return
        if db is not None:
            await asyncio.get_running_loop().run_in_executor(executor, db.close)
        executor.shutdown(wait=True)

    @asynccontextmanager
    async def _raw_transaction(self) -> AsyncIterator[_SqliteConn]:
        async with self._lock:
            await self._call(lambda c: c.execute("BEGIN IMMEDIATE"))
            try:
                yield _SqliteConn(self)
            except BaseException:
                await self._rollback()
                raise
            try:
                await self._call(lambda c: c.execute("COMMIT"))
            except BaseException:
                # A failed COMMIT (e.g. busy) leaves the transaction open: end it.
                await self._rollback()
                raise

    async def _rollback(self) -> None:
        # Some errors end the transaction inside SQLite already; then ROLLBACK itself fails, and
        # that failure must not hide the first one.
        with contextlib.suppress(StorageError):
            await asyncio.shield(self._call(lambda c: c.execute("ROLLBACK")))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with self._raw_transaction() as conn:
            yield SqlTransaction(conn, self._kek, self.dialect)
