"""The store's and the log's fast paths (store/sql.py, store/sqlite.py, agent/agentlog.py) keep
their meaning: one read for device and exchange, the UPDATE without po_id/state, audit ids without
RETURNING, BEGIN on the loop's thread only when it cannot wait, log lines written directly."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import sqlite3
import time
from pathlib import Path

import pytest

from otakey.agent.agentlog import EventLog, setup_logging
from otakey.store import (
    AuditEvent,
    ConflictError,
    Device,
    DeviceState,
    Exchange,
    Kek,
    Product,
    make_store,
)
from otakey.store.sqlite import SQLiteStore

PO = 9
DEV = b"\x01" * 12
ND = b"\x02" * 16


async def _open(path: Path) -> SQLiteStore:
    store = make_store(str(path), Kek(b"s" * 32))
    assert isinstance(store, SQLiteStore)
    await store.open()
    async with store.transaction() as tx:
        await tx.add_product(Product(po_id=PO, name="PO-S", quantity=100, pk=os.urandom(32)))
        await tx.create_device(Device(DEV, PO, state=DeviceState.ACTIVE, ak=b"a" * 32, ak_version=1))
    return store


def test_device_and_exchange_in_one_read_equal_the_separate_reads(tmp_path: Path) -> None:
    async def main() -> None:
        store = await _open(tmp_path / "a.db")
        try:
            async with store.transaction() as tx:
                await tx.put_exchange(Exchange(DEV, ND, 0x21, b"\x03" * 16, b"answer", b"h" * 32))
            async with store.transaction() as tx:
                for device_id, nonce_d, kind in ((DEV, ND, 0x21), (DEV, ND, 0x23), (DEV, b"\x09" * 16, 0x21),
                                                 (b"\x07" * 12, ND, 0x21)):
                    both = await tx.get_device_and_exchange(device_id, nonce_d, kind)
                    apart = (await tx.get_device(device_id), await tx.get_exchange(device_id, nonce_d, kind))
                    assert both == apart
                device, exchange = await tx.get_device_and_exchange(DEV, ND, 0x21)
                assert device is not None and device.ak == b"a" * 32
                assert exchange is not None and exchange.answer == b"answer"
                assert await tx.get_device_and_exchange(b"\x07" * 12, ND, 0x21) == (None, None)
        finally:
            await store.close()

    asyncio.run(main())


def _row(path: Path) -> tuple[object, ...]:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT po_id, state, ak_version, row_version FROM devices WHERE device_id = ?",
                          (DEV,)).fetchone()
    finally:
        db.close()


def test_update_device_writes_state_changes_and_keys_and_still_detects_a_lost_race(tmp_path: Path) -> None:
    async def main() -> None:
        store = await _open(tmp_path / "b.db")
        try:
            async with store.transaction() as tx:  # po_id/state unchanged: the short UPDATE
                dev = await tx.get_device(DEV)
                assert dev is not None
                dev = await tx.update_device(Device(DEV, PO, state=DeviceState.ACTIVE, ak=b"b" * 32,
                                                    ak_version=2, row_version=dev.row_version))
                # state changed in the same transaction: the full UPDATE
                dev = await tx.update_device(Device(DEV, PO, state=DeviceState.REVOKED, ak=b"b" * 32,
                                                    ak_version=2, row_version=dev.row_version))
            assert _row(tmp_path / "b.db") == (PO, "revoked", 2, 3)
            async with store.transaction() as tx:
                stale = await tx.get_device(DEV)
                assert stale is not None and stale.state is DeviceState.REVOKED and stale.ak == b"b" * 32
            async with store.transaction() as tx:
                fresh = await tx.get_device(DEV)
                assert fresh is not None
                await tx.update_device(Device(DEV, PO, state=DeviceState.REVOKED, ak=b"c" * 32,
                                              ak_version=3, row_version=fresh.row_version))
            # Another transaction read the row before that write: its short UPDATE must not apply.
            with pytest.raises(ConflictError):
                async with store.transaction() as tx:
                    await tx.get_device(DEV)
                    await tx.update_device(Device(DEV, PO, state=DeviceState.REVOKED, ak=b"d" * 32,
                                                  ak_version=4, row_version=stale.row_version))
            assert _row(tmp_path / "b.db") == (PO, "revoked", 3, 4)
        finally:
            await store.close()

    asyncio.run(main())


def test_audit_returns_the_new_rows_ids_in_order(tmp_path: Path) -> None:
    async def main() -> list[int]:
        store = await _open(tmp_path / "c.db")
        try:
            async with store.transaction() as tx:
                ids = [await tx.audit(AuditEvent.OPERATOR, po_id=PO, detail=f"n{i}") for i in range(3)]
                listed = await tx.list_audit(po_id=PO, event=AuditEvent.OPERATOR)
            assert [e.id for e in listed] == ids and [e.detail for e in listed] == ["n0", "n1", "n2"]
            return ids
        finally:
            await store.close()

    ids = asyncio.run(main())
    assert ids == sorted(set(ids))


def test_sqlite_begin_waits_off_the_loop_while_another_process_writes(tmp_path: Path) -> None:
    """Another connection holds the write lock for 0.5 s: a transaction waits for it (and then
    commits), and the event loop keeps running meanwhile (the wait is on the worker thread)."""
    path = tmp_path / "d.db"

    async def main() -> tuple[int, float]:
        store = await _open(path)
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        tick_task = asyncio.create_task(ticker())
        asyncio.get_running_loop().call_later(0.5, other.execute, "COMMIT")
        t0 = time.monotonic()
        try:
            async with store.transaction() as tx:
                await tx.audit(AuditEvent.OPERATOR, po_id=PO, detail="after the other writer")
            waited = time.monotonic() - t0
        finally:
            tick_task.cancel()
            other.close()
            await store.close()
        return ticks, waited

    ticks, waited = asyncio.run(main())
    assert waited >= 0.4
    assert ticks >= 20  # the loop was not blocked for the half second
    db = sqlite3.connect(path)
    try:
        row = db.execute("SELECT COUNT(*) FROM audit WHERE detail = 'after the other writer'").fetchone()
        assert row == (1,)
    finally:
        db.close()


def _strip_ts(text: str) -> list[str]:
    return [line.split(" ", 1)[1] for line in text.splitlines()]


@pytest.mark.parametrize("fmt", ["kv", "json"])
def test_log_lines_written_directly_equal_the_record_route(fmt: str) -> None:
    log = EventLog(logging.getLogger("otakey.agent"))
    direct = io.StringIO()
    setup_logging(fmt, logging.INFO, direct)

    def events() -> None:
        log.info("answered", source="127.0.0.1", type="AK_ROTATE_HELLO", result="answered", device=DEV)
        log.warning("odd", text="two words", n=-1, flag=True, none=None, ratio=0.5)
        log.error("store_failed", ValueError("disk full"), source="x")
        log.debug("hidden", n=1)

    events()
    # A second handler on the root (a test's capture, an operator's extra sink): the record route.
    recorded = io.StringIO()
    extra = logging.StreamHandler(io.StringIO())
    logging.getLogger().addHandler(extra)
    try:
        logging.getLogger().handlers[0].setStream(recorded)  # type: ignore[attr-defined]
        events()
    finally:
        logging.getLogger().removeHandler(extra)
    assert len(direct.getvalue().splitlines()) == 3
    if fmt == "kv":
        assert _strip_ts(direct.getvalue()) == _strip_ts(recorded.getvalue())
        assert "event=answered" in direct.getvalue() and 'error="ValueError: disk full"' in direct.getvalue()
    else:
        strip = [line.split(",", 1)[1] for line in direct.getvalue().splitlines()]
        assert strip == [line.split(",", 1)[1] for line in recorded.getvalue().splitlines()]
    seen = extra.stream.getvalue().splitlines()  # type: ignore[attr-defined]
    assert [line for line in seen if not line.startswith("ValueError")] == ["answered", "odd", "store_failed"]
    setup_logging("kv", logging.INFO, io.StringIO())


def test_log_refuses_key_fields_on_the_direct_route_too() -> None:
    setup_logging("kv", logging.INFO, io.StringIO())
    log = EventLog(logging.getLogger("otakey.agent"))
    with pytest.raises(ValueError):
        log.info("oops", ak=1)
    with pytest.raises(TypeError):
        log.info("oops", payload=b"\x00" * 32)
