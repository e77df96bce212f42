"""The SQLite store's group commit (store/sqlite.py) and the agent session's flow control
(agent/service.py): what the performance work changed must keep every transaction's meaning."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import pytest

from otakey.errors import StorageError
from otakey.store import ConflictError, Device, Kek, Product, make_store
from otakey.store.sqlite import SQLiteStore

PO = 7


async def _open(path: Path, **options: object) -> SQLiteStore:
    store = make_store(str(path), Kek(b"k" * 32), **options)
    assert isinstance(store, SQLiteStore)
    await store.open()
    async with store.transaction() as tx:
        await tx.add_product(Product(po_id=PO, name="PO-G", quantity=1000, pk=os.urandom(32)))
    return store


def _ids(path: Path) -> set[bytes]:
    db = sqlite3.connect(path)
    try:
        return {bytes(r[0]) for r in db.execute("SELECT device_id FROM devices")}
    finally:
        db.close()


def test_sqlite_concurrent_transactions_share_commits_and_all_persist(tmp_path: Path) -> None:
    async def main() -> tuple[int, int]:
        store = await _open(tmp_path / "a.db")
        before = store.batches_committed

        async def create(i: int) -> None:
            async with store.transaction() as tx:
                await tx.create_device(Device(bytes([i]) * 12, PO))
                await asyncio.sleep(0)  # let the others queue for the connection

        await asyncio.gather(*(create(i) for i in range(1, 61)))
        batches = store.batches_committed - before
        await store.close()
        return batches, store.transactions_committed

    batches, _ = asyncio.run(main())
    # Every transaction is on disk (read by another connection), in far fewer commits than 60.
    assert _ids(tmp_path / "a.db") == {bytes([i]) * 12 for i in range(1, 61)}
    assert 1 <= batches < 30


def test_sqlite_failed_transaction_in_a_batch_rolls_back_only_its_own_work(tmp_path: Path) -> None:
    async def main() -> list[str]:
        store = await _open(tmp_path / "b.db")
        async with store.transaction() as tx:
            await tx.create_device(Device(b"\x01" * 12, PO))

        async def ok(i: int) -> str:
            async with store.transaction() as tx:
                await tx.create_device(Device(bytes([0x10 + i]) * 12, PO))
                await asyncio.sleep(0)
            return "ok"

        async def clash() -> str:
            try:
                async with store.transaction() as tx:
                    await tx.create_device(Device(b"\x02" * 12, PO))   # its own work ...
                    await tx.create_device(Device(b"\x01" * 12, PO))   # ... then a conflict
            except ConflictError:
                return "conflict"
            return "committed"

        results = await asyncio.gather(ok(1), clash(), ok(2), ok(3))
        await store.close()
        return list(results)

    assert asyncio.run(main()) == ["ok", "conflict", "ok", "ok"]
    assert _ids(tmp_path / "b.db") == {b"\x01" * 12, b"\x11" * 12, b"\x12" * 12, b"\x13" * 12}


def test_sqlite_transaction_cancelled_while_its_batch_commits_is_still_committed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        store = await _open(tmp_path / "c.db")
        real = store._in_thread
        committing, go_on = asyncio.Event(), asyncio.Event()

        async def held_commit(fn: object) -> object:
            if _is_commit(fn):
                committing.set()
                await go_on.wait()   # the COMMIT is in flight for as long as the test wants
            return await real(fn)  # type: ignore[arg-type]

        monkeypatch.setattr(store, "_in_thread", held_commit)

        async def create() -> None:
            async with store.transaction() as tx:
                await tx.create_device(Device(b"\x05" * 12, PO))

        task = asyncio.create_task(create())
        await asyncio.wait_for(committing.wait(), 10)
        task.cancel()                # it gives up waiting for its batch ...
        with pytest.raises(asyncio.CancelledError):
            await task
        go_on.set()                  # ... which commits all the same
        monkeypatch.setattr(store, "_in_thread", real)
        async with store.transaction() as tx:
            assert await tx.get_device(b"\x05" * 12) is not None
        await store.close()

    asyncio.run(main())
    assert b"\x05" * 12 in _ids(tmp_path / "c.db")


def _is_commit(fn: object) -> bool:
    """Whether a worker-thread call of the store would run COMMIT (tried on a stand-in)."""
    try:
        fn(_Recorder())  # type: ignore[operator]
    except _IsCommit:
        return True
    return False


def test_sqlite_failed_commit_fails_every_transaction_of_the_batch(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> list[str]:
        store = await _open(tmp_path / "d.db")
        real = store._in_thread

        async def failing_commit(fn: object) -> object:
            if _is_commit(fn):
                raise StorageError("sqlite: disk I/O error (injected)")
            return await real(fn)  # type: ignore[arg-type]

        monkeypatch.setattr(store, "_in_thread", failing_commit)

        async def create(i: int) -> str:
            try:
                async with store.transaction() as tx:
                    await tx.create_device(Device(bytes([0x20 + i]) * 12, PO))
                    await asyncio.sleep(0)
            except StorageError:
                return "failed"
            return "ok"

        results = await asyncio.gather(*(create(i) for i in range(4)))
        monkeypatch.setattr(store, "_in_thread", real)
        async with store.transaction() as tx:   # the store works again afterwards
            await tx.create_device(Device(b"\x30" * 12, PO))
        await store.close()
        return list(results)

    assert asyncio.run(main()) == ["failed"] * 4
    assert not any(i[0] in range(0x20, 0x24) for i in _ids(tmp_path / "d.db"))
    assert b"\x30" * 12 in _ids(tmp_path / "d.db")


class _IsCommit(Exception):
    pass


class _Recorder:
    """Stands in for the connection to see which statement a worker-thread call would run."""

    def execute(self, sql: str, *args: object) -> object:
        if sql.strip().upper() == "COMMIT":
            raise _IsCommit
        return None


def test_sqlite_url_takes_the_synchronous_option_and_refuses_others(tmp_path: Path) -> None:
    store = make_store(f"sqlite://{tmp_path}/e.db?synchronous=normal", Kek(b"k" * 32))
    assert isinstance(store, SQLiteStore) and store.path == f"{tmp_path}/e.db"
    assert store._synchronous == "NORMAL"
    with pytest.raises(ValueError, match="unknown SQLite URL option"):
        make_store(f"sqlite://{tmp_path}/e.db?journal=off", Kek(b"k" * 32))


def test_agent_session_answers_a_flood_of_frames_in_order(tmp_path: Path) -> None:
    """A gateway that sends many frames without waiting gets every answer, in order (reading
    pauses while the agent answers, so the flood waits in TCP, not in the agent's memory)."""
    from otakey.agent import Agent, AgentConfig
    from otakey.protocol.envelope import ErrorMessage
    from otakey.protocol.framing import Channel, Frame, FrameDecoder, encode_frame

    async def main() -> list[bytes]:
        store = make_store(str(tmp_path / "f.db"), Kek(b"k" * 32))
        await store.open()
        await store.close()
        agent = Agent(AgentConfig(db_url=str(tmp_path / "f.db")), Kek(b"k" * 32))
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        run = asyncio.create_task(agent.run(lambda _h, port: ready.set_result(port)))
        port = await asyncio.wait_for(ready, 10)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # 300 malformed messages, each echoing its own nonce_d: answered ERROR(REJECTED), in order.
        msgs = [bytes([1, 0x30, 2, 0, 0, 0, 0, 0]) + bytes(12) + i.to_bytes(16, "big") + bytes(16) + bytes(70)
                for i in range(300)]
        writer.write(b"".join(encode_frame(Channel.AGENT, m) for m in msgs))
        await writer.drain()
        decoder, answers = FrameDecoder(), []
        while len(answers) < len(msgs):
            data = await asyncio.wait_for(reader.read(65536), 20)
            assert data, "the agent closed the connection"
            answers += [f.payload for f in decoder.feed(data) if isinstance(f, Frame)]
        writer.close()
        agent.stop()
        await run
        return answers

    answers = asyncio.run(main())
    nonces = [ErrorMessage.unpack(a).nonce_d for a in answers]
    assert nonces == [i.to_bytes(16, "big") for i in range(300)]
