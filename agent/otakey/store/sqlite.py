"""SQLite store: the default, one file, one agent process.

How it stays fast without giving up the persist-then-answer rule (measured in bench/README.md):

- **Statements run on the event loop's thread.** Inside an open write transaction a statement
  never waits for a lock (WAL readers do not block, and this connection already holds the write
  lock), and it takes microseconds; a hop to a worker thread per statement cost more than the
  statement. Only what can block — ``COMMIT`` (fsync), ``ROLLBACK`` and a ``BEGIN IMMEDIATE``
  that has to wait for another process holding the write lock (up to ``busy_timeout``) — runs on
  the store's one worker thread. ``BEGIN IMMEDIATE`` is first tried on the loop's thread with no
  busy wait at all; only when the lock is taken (or a ROLLBACK is still queued on the worker) does
  it go to the thread. Under load batches are small enough that a thread hop per BEGIN showed in
  the profile (bench/README.md, goal 1).
- **Group commit.** Logical transactions (:meth:`SQLiteStore.transaction`) run one after the
  other on the connection, each inside a ``SAVEPOINT`` of one shared SQLite transaction (a
  *batch*). A logical transaction that ends well releases its savepoint and waits until its batch
  is committed; one that fails rolls back to its savepoint, leaving the others' work alone. The
  batch commits as soon as nobody queued for the connection before the commit: under load one
  fsync covers every transaction that arrived meanwhile, and with a single client it is one commit
  per transaction as before. Nothing is answered before its batch's COMMIT returned, so
  ``synchronous`` keeps its full meaning. If a batch's COMMIT fails, every transaction of the batch
  fails (their answers are not sent; devices retry).
- A second process opening the file (the operator CLI) waits for the write lock between batches.

``synchronous`` (``…?synchronous=normal`` on the URL): ``FULL`` (default) fsyncs the WAL at every
commit, so an answer leaves only after its state is on disk — across a power loss of the agent's
machine. ``NORMAL`` fsyncs only at checkpoints: a commit survives the agent process being killed
(the WAL is written before COMMIT returns), but a power loss or kernel crash may lose the last
commits, i.e. answers already sent (a device could then hold a key the restarted agent no longer
knows). Use NORMAL only where the machine's storage is itself protected (battery-backed cache).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, TypeVar

from otakey.errors import StorageError

from .base import ConflictError, Store, Transaction
from .crypto import Kek
from .sql import Row, SqlTransaction, check_kek, migrate

T = TypeVar("T")
_SAVEPOINT = "otakey_tx"


def _map_error(exc: sqlite3.Error) -> StorageError:
    if isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc):
        return ConflictError(str(exc))
    return StorageError(f"sqlite: {exc}")


class _SqliteConn:
    """Statements of one logical transaction, run on the caller's (the event loop's) thread."""

    __slots__ = ("_db",)

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    # Direct calls, no helper or closure per statement: these run ~12 times per request.
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        try:
            return self._db.execute(sql, params).rowcount
        except sqlite3.Error as exc:
            raise _map_error(exc) from exc

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        try:
            self._db.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise _map_error(exc) from exc

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise _map_error(exc) from exc

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        try:
            return self._db.execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            raise _map_error(exc) from exc

    async def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        try:
            rowid = self._db.execute(sql, params).lastrowid
        except sqlite3.Error as exc:
            raise _map_error(exc) from exc
        assert rowid is not None
        return rowid


class _Batch:
    """One SQLite transaction shared by the logical transactions that ran while it was open."""

    __slots__ = ("committer", "members", "waiters")

    def __init__(self) -> None:
        self.committer: asyncio.Task[None] | None = None
        self.members = 0
        # One future per member that released its savepoint: a member cancelled while it waits
        # cancels only its own (no shield needed around a shared one).
        self.waiters: list[asyncio.Future[None]] = []

    def wait(self) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        return fut

    def settle(self, error: BaseException | None) -> None:
        waiters, self.waiters = self.waiters, []
        for fut in waiters:
            if fut.done():
                continue
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(error)


class _Logical:
    """``async with store.transaction()``: a savepoint in the open batch; a normal exit returns
    once the batch is committed. A hand-written context manager: this runs for every request."""

    __slots__ = ("_batch", "_store", "_wrap")

    def __init__(self, store: SQLiteStore, wrap: bool) -> None:
        self._store = store
        self._wrap = wrap
        self._batch: _Batch | None = None

    async def __aenter__(self) -> Any:
        store = self._store
        await store._lock.acquire()
        try:
            batch = await store._open_batch()
            db = store._db
            assert db is not None
            try:
                db.execute(f"SAVEPOINT {_SAVEPOINT}")
            except sqlite3.Error as exc:
                store._fail_batch(batch, str(exc))
                store._rollback_later()
                raise _map_error(exc) from exc
        except BaseException:
            store._lock.release()
            raise
        self._batch = batch
        conn = _SqliteConn(db)
        return SqlTransaction(conn, store._kek, store.dialect) if self._wrap else conn

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: object) -> bool:
        store, batch = self._store, self._batch
        db = store._db
        assert batch is not None and db is not None
        try:
            if exc_type is not None:
                store._undo(db, batch, exc)
                return False
            try:
                db.execute(f"RELEASE {_SAVEPOINT}")
            except sqlite3.Error as release_error:
                store._undo(db, batch, release_error)
                raise _map_error(release_error) from release_error
            batch.members += 1
            committed = batch.wait()
            store._commit_soon(batch)
        finally:
            store._lock.release()
        await committed
        return False


class SQLiteStore(Store):
    """A store in one SQLite file (created with mode 0600), or ``:memory:``.

    ``synchronous``: "FULL" (default) makes every commit durable before the answer leaves, which
    the persist-then-answer rule needs across a power loss of the agent's machine; "NORMAL" keeps
    it across a crash of the agent process only (module docstring).
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
        # The last job given to the worker thread without waiting for it (a ROLLBACK): the loop's
        # thread must not begin a transaction on the connection before it ran.
        self._unawaited: Future[None] | None = None
        self._db: sqlite3.Connection | None = None
        # Held by the logical transaction using the connection, or by a batch's commit. FIFO: a
        # commit waits behind the transactions queued before it, which join its batch.
        self._lock = asyncio.Lock()
        self._batch: _Batch | None = None
        #: batches committed and logical transactions they carried (for benchmarks and tests).
        self.batches_committed = 0
        self.transactions_committed = 0

    # --- the worker thread (only what may block) -------------------------------------------------

    async def _in_thread(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._executor is None or self._db is None:
            raise StorageError("the store is not open")
        db = self._db

        def run() -> T:
            try:
                return fn(db)
            except sqlite3.Error as exc:
                raise _map_error(exc) from exc

        return await asyncio.get_running_loop().run_in_executor(self._executor, run)

    def _rollback_later(self) -> None:
        """Queue a ROLLBACK on the worker thread, behind anything already queued there (e.g. a
        BEGIN whose caller was cancelled), without waiting for it."""
        if self._executor is not None and self._db is not None:
            db = self._db

            def rollback() -> None:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")

            self._unawaited = self._executor.submit(rollback)

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
            self._set_wal(db)
            db.execute(f"PRAGMA synchronous = {self._synchronous}")
            db.execute(f"PRAGMA busy_timeout = {int(self._timeout * 1000)}")
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open {self.path}: {exc}") from exc
        return db

    def _set_wal(self, db: sqlite3.Connection) -> None:
        """``journal_mode = WAL``, waiting for another opener of the same file. That pragma can
        fail with "database is locked" at once, without SQLite's busy handler, while another
        connection converts the file or migrates it (two replicas opening a new database together
        failed ~1 time in 5). Runs on the worker thread: the sleep blocks no one else."""
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(0.01)

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="otakey-sqlite")
        try:
            self._db = await asyncio.get_running_loop().run_in_executor(self._executor, self._connect)
            async with _Logical(self, wrap=False) as conn:
                await migrate(conn, self.dialect)
                await check_kek(conn, self._kek)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        batch = self._batch
        if batch is not None and self._db is not None:
            # Work already released to its batch is committed, not dropped.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._commit_soon(batch))
        executor, db = self._executor, self._db
        self._executor, self._db = None, None
        if executor is None:
            return
        if db is not None:
            await asyncio.get_running_loop().run_in_executor(executor, db.close)
        executor.shutdown(wait=True)

    # --- batches ----------------------------------------------------------------------------------

    async def _open_batch(self) -> _Batch:
        """The open batch, or a new one (``BEGIN IMMEDIATE`` on the worker thread). Lock held."""
        if self._batch is not None:
            return self._batch
        if self._begin_here():
            self._batch = _Batch()
            return self._batch
        begin = asyncio.ensure_future(self._in_thread(lambda c: c.execute("BEGIN IMMEDIATE")))
        try:
            await asyncio.shield(begin)
        except asyncio.CancelledError:
            # The BEGIN may still succeed on the thread: end it again before anyone else runs.
            self._rollback_later()
            raise
        self._batch = _Batch()
        return self._batch

    def _begin_here(self) -> bool:
        """``BEGIN IMMEDIATE`` on the loop's thread if it cannot wait: nothing is queued on the
        worker thread (a ROLLBACK there must run first), and with ``busy_timeout`` 0 for the attempt
        a write lock held by another process fails at once instead of blocking the loop. True when
        the transaction is open; False: do it on the worker thread."""
        job, db = self._unawaited, self._db
        if db is None or (job is not None and not job.done()):
            return False
        begun = False
        try:
            db.execute("PRAGMA busy_timeout = 0")
            db.execute("BEGIN IMMEDIATE")
            begun = True
            db.execute(f"PRAGMA busy_timeout = {int(self._timeout * 1000)}")
        except sqlite3.Error:
            with contextlib.suppress(sqlite3.Error):
                if begun:
                    db.execute("ROLLBACK")  # nothing written yet: no fsync, does not block
                db.execute(f"PRAGMA busy_timeout = {int(self._timeout * 1000)}")
            return False
        return True

    def _commit_soon(self, batch: _Batch) -> asyncio.Task[None]:
        if batch.committer is None:
            batch.committer = asyncio.get_running_loop().create_task(self._commit(batch))
        return batch.committer

    async def _commit(self, batch: _Batch) -> None:
        async with self._lock:  # behind every transaction already queued: they join this batch
            if self._batch is not batch:
                return  # failed and settled meanwhile
            self._batch = None
            try:
                await self._in_thread(lambda c: c.execute("COMMIT"))
            except BaseException as exc:
                # A failed COMMIT (e.g. disk full) leaves the transaction open: end it.
                self._rollback_later()
                batch.settle(exc if isinstance(exc, StorageError) else StorageError(f"sqlite commit: {exc}"))
                if not isinstance(exc, Exception):
                    raise
                return
            self.batches_committed += 1
            self.transactions_committed += batch.members
            batch.settle(None)

    def _fail_batch(self, batch: _Batch, why: str) -> None:
        """SQLite ended the whole transaction by itself: every member's work is gone."""
        if self._batch is batch:
            self._batch = None
        batch.settle(StorageError(f"sqlite rolled the batch back: {why}"))

    def _undo(self, db: sqlite3.Connection, batch: _Batch, exc: BaseException) -> None:
        if not db.in_transaction:
            self._fail_batch(batch, str(exc))
            return
        try:
            db.execute(f"ROLLBACK TO {_SAVEPOINT}")
            db.execute(f"RELEASE {_SAVEPOINT}")
        except sqlite3.Error as undo_error:
            self._fail_batch(batch, str(undo_error))
            self._rollback_later()
            return
        if batch.members == 0 and batch.committer is None:
            # Nothing of anyone else's is in it: end the SQLite transaction instead of
            # holding the write lock for a batch that has no work.
            self._batch = None
            self._rollback_later()
            batch.settle(None)

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        return _Logical(self, wrap=True)
