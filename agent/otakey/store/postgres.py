"""PostgreSQL store (``postgresql://…``): several agent replicas share one database.

Each transaction takes a connection from a small pool (psycopg 3, async). Replicas stay consistent
through row locks (``get_device(for_update=True)``), optimistic ``row_version`` checks and unique
keys (see ``base.py``); a lost race surfaces as ConflictError. Migrations run under an advisory
lock, so replicas starting together migrate once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from otakey.errors import StorageError

from .base import ConflictError, Store, Transaction
from .crypto import Kek
from .sql import Row, SqlTransaction, check_kek, migrate

# Any fixed number: the advisory lock that serialises migrations of replicas starting together.
_MIGRATION_LOCK = 0x07A4E1


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise StorageError("PostgreSQL needs psycopg 3: pip install 'psycopg[binary]'") from exc
    return psycopg


def _map_error(exc: Exception) -> StorageError:
    errors = _psycopg().errors
    if isinstance(exc, errors.UniqueViolation | errors.SerializationFailure | errors.DeadlockDetected
                  | errors.LockNotAvailable):
        return ConflictError(str(exc).strip())
    return StorageError(f"postgresql: {str(exc).strip()}")


class _PgConn:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    @staticmethod
    def _q(sql: str, params: Sequence[Any]) -> tuple[str, Sequence[Any] | None]:
        # The shared SQL uses `?`; psycopg wants `%s`. Without parameters psycopg leaves the text
        # alone (DDL with `$$` bodies).
        return (sql.replace("?", "%s"), tuple(params)) if params else (sql, None)

    async def _run(self, sql: str, params: Sequence[Any], fetch: str) -> Any:
        query, args = self._q(sql, params)
        try:
            async with self._conn.cursor() as cur:
                await cur.execute(query, args)
                if fetch == "one":
                    return await cur.fetchone()
                if fetch == "all":
                    return await cur.fetchall()
                return cur.rowcount
        except _psycopg().Error as exc:
            raise _map_error(exc) from exc

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return int(await self._run(sql, params, "count"))

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        try:
            async with self._conn.cursor() as cur:
                await cur.executemany(sql.replace("?", "%s"), [tuple(r) for r in rows])
        except _psycopg().Error as exc:
            raise _map_error(exc) from exc

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return list(await self._run(sql, params, "all"))

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        r = await self._run(sql, params, "one")
        return None if r is None else tuple(r)

    async def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        r = await self._run(sql + " RETURNING id", params, "one")
        assert r is not None
        return int(r[0])


class PostgresStore(Store):
    """A store in a PostgreSQL database; ``pool_size`` connections at most per store instance."""

    dialect = "postgresql"

    def __init__(self, url: str, kek: Kek, *, pool_size: int = 4, connect_timeout: float = 10.0) -> None:
        if not isinstance(kek, Kek):
            raise TypeError("kek is a Kek")
        if pool_size < 1:
            raise ValueError("pool_size >= 1")
        self.url = url
        self._kek = kek
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        # An idle slot is an open connection, or None: connect on first use.
        self._idle: asyncio.Queue[Any] | None = None
        self._open_conns: set[Any] = set()

    async def _connect(self) -> Any:
        psycopg = _psycopg()
        try:
            conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True,
                                                         connect_timeout=max(1, int(self._connect_timeout)))
        except psycopg.Error as exc:
            raise StorageError(f"cannot connect to PostgreSQL: {str(exc).strip()}") from exc
        self._open_conns.add(conn)
        return conn

    async def _discard(self, conn: Any) -> None:
        self._open_conns.discard(conn)
        with contextlib.suppress(Exception):
            await conn.close()

    async def open(self) -> None:
        if self._idle is not None:
            return
        idle: asyncio.Queue[Any] = asyncio.Queue()
        conn = await self._connect()
        try:
            async with conn.transaction():
                pg = _PgConn(conn)
                await pg.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
                await migrate(pg, self.dialect)
                await check_kek(pg, self._kek)
        except _psycopg().Error as exc:
            await self._discard(conn)
            raise _map_error(exc) from exc
        except BaseException:
            await self._discard(conn)
            raise
        idle.put_nowait(conn)
        for _ in range(self._pool_size - 1):
            idle.put_nowait(None)
        self._idle = idle

    async def close(self) -> None:
        self._idle = None
        conns, self._open_conns = list(self._open_conns), set()
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        idle = self._idle
        if idle is None:
            raise StorageError("the store is not open")
        conn = await idle.get()
        healthy = False
        try:
            if conn is None or conn.closed:
                conn = await self._connect()
            try:
                async with conn.transaction():
                    yield SqlTransaction(_PgConn(conn), self._kek, self.dialect)
            except _psycopg().Error as exc:
                raise _map_error(exc) from exc
            healthy = True
        finally:
            if conn is not None and not healthy:
                # After an error or a cancellation the connection's state is unknown: only keep
                # it if it is idle and sound.
                status = _psycopg().pq.TransactionStatus
                healthy = (not conn.closed and not conn.broken
                           and conn.info.transaction_status == status.IDLE)
            if conn is not None and healthy and self._idle is idle:
                idle.put_nowait(conn)
            else:
                if conn is not None:
                    await self._discard(conn)
                idle.put_nowait(None)
