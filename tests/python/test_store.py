"""The agent's store, on SQLite and on a real PostgreSQL 15: the same tests for both."""

from __future__ import annotations

import asyncio
import base64
import os
import sqlite3
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import pytest

from otakey.cloud.base import CloudCredential
from otakey.errors import StorageError
from otakey.store import (
    Action,
    AuditEvent,
    CheckIn,
    ConflictError,
    CredentialState,
    Device,
    DeviceState,
    Exchange,
    Kek,
    Product,
    Store,
    Transaction,
    make_store,
    open_store,
    schema,
)
from otakey.store.crypto import aad
from otakey.store.postgres import PostgresStore
from otakey.store.sqlite import SQLiteStore

T = TypeVar("T")
PO = 4242
DEV = bytes.fromhex("0123456789abcdef00112233")


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


@dataclass
class Backend:
    """Where a test's database lives, and raw access to it from outside the store."""

    kind: str
    url: str
    folder: Path | None = None
    pg: Any = None

    def raw(self, sql: str) -> None:
        """Run SQL directly on the database, bypassing the store (as a careless operator would)."""
        if self.kind == "sqlite":
            db = sqlite3.connect(self.url)
            try:
                db.execute(sql)
                db.commit()
            finally:
                db.close()
        else:
            self.pg.psql(self.url.rsplit("/", 1)[1], sql)

    def image(self) -> bytes:
        """Everything the database holds on disk (SQLite: all its files) or in a pg_dump."""
        if self.kind == "sqlite":
            assert self.folder is not None
            return b"".join(p.read_bytes() for p in sorted(self.folder.iterdir()) if p.is_file())
        return self.pg.dump(self.url.rsplit("/", 1)[1])


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        folder = tmp_path / "db"
        folder.mkdir()
        yield Backend("sqlite", str(folder / "agent.db"), folder=folder)
    else:
        pg = request.getfixturevalue("postgres")
        yield Backend("postgresql", pg.create_database(), pg=pg)


@pytest.fixture
def kek() -> Kek:
    return Kek(os.urandom(32))


def with_store(backend: Backend, kek: Kek, body: Callable[[Store], Awaitable[T]]) -> T:
    async def main() -> T:
        store = await open_store(backend.url, kek)
        try:
            return await body(store)
        finally:
            await store.close()

    return run(main())


def product(po_id: int = PO, name: str = "po-4242", quantity: int = 100) -> Product:
    return Product(po_id=po_id, name=name, quantity=quantity, pk=os.urandom(32))


async def seed_product(store: Store, p: Product | None = None) -> Product:
    async with store.transaction() as tx:
        return await tx.add_product(p or product())


# ---------------------------------------------------------------------------------- products

def test_store_product_round_trip_keeps_pk_and_flags(backend: Backend, kek: Kek) -> None:
    p = product()

    async def body(store: Store) -> None:
        await seed_product(store, p)
        async with store.transaction() as tx:
            got = await tx.get_product(PO)
            assert got is not None and got.pk == p.pk and got.name == p.name and got.quantity == 100
            assert (await tx.get_product_by_name("po-4242")) == got
            assert not got.frozen and not got.revoked and not got.restricted
            changed = await tx.set_product_flags(PO, frozen=True, quantity=5)
            assert changed.frozen and changed.quantity == 5 and not changed.revoked
            assert [x.po_id for x in await tx.list_products()] == [PO]
            assert await tx.get_product(1) is None
        with pytest.raises(ConflictError):
            async with store.transaction() as tx:
                await tx.add_product(product(name="other"))       # same po_id
        with pytest.raises(ConflictError):
            async with store.transaction() as tx:
                await tx.add_product(product(po_id=7))            # same name
        with pytest.raises(StorageError):
            async with store.transaction() as tx:
                await tx.set_product_flags(999, frozen=True)

    with_store(backend, kek, body)


def test_store_allow_list_admits_only_listed_ids(backend: Backend, kek: Kek) -> None:
    listed, other = b"\x01" * 12, b"\x02" * 12

    async def body(store: Store) -> None:
        async with store.transaction() as tx:
            await tx.add_product(product(), allow_list=[listed])
            assert (await tx.get_product(PO)).restricted  # type: ignore[union-attr]
            assert await tx.is_allowed(PO, listed)
            assert not await tx.is_allowed(PO, other)
            assert not await tx.is_allowed(999, listed)           # unknown PO admits nobody
            await tx.set_allow_list(PO, None)
            assert await tx.is_allowed(PO, other)
            await tx.set_allow_list(PO, [other])
            assert await tx.is_allowed(PO, other) and not await tx.is_allowed(PO, listed)

    with_store(backend, kek, body)


# ---------------------------------------------------------------------------------- devices

def test_store_device_keys_and_checkin_round_trip(backend: Backend, kek: Kek) -> None:
    ak1, ak2 = os.urandom(32), os.urandom(32)
    nd, na = os.urandom(16), os.urandom(16)

    async def body(store: Store) -> None:
        await seed_product(store)
        async with store.transaction() as tx:
            dev = await tx.create_device(Device(DEV, PO, ak_pending=ak1, ak_pending_version=1,
                                                ak_nonce_d=nd, ak_nonce_a=na))
            assert dev.row_version == 1 and dev.state is DeviceState.PROVISIONING
        async with store.transaction() as tx:
            dev = await tx.get_device(DEV, for_update=True)
            assert dev is not None and dev.ak_pending == ak1 and dev.ak_nonce_d == nd and dev.ak_nonce_a == na
            dev = await tx.update_device(replace(dev, state=DeviceState.ACTIVE, ak=ak1, ak_version=1,
                                                 ak_pending=ak2, ak_pending_version=2,
                                                 pending_action=Action.ROTATE_AK, provisioned_at=123.0))
            assert dev.row_version == 2
            ci = CheckIn(ak_version=1, cloud_version=0, cloud_platform=0, ak_fp=b"f" * 16, cloud_fp=bytes(16),
                         fw_version=0x010203, app_hash=b"h" * 32, last_error=0)
            await tx.record_checkin(DEV, ci)
        async with store.transaction() as tx:
            got = await tx.get_device(DEV)
            assert got is not None
            assert (got.ak, got.ak_version, got.ak_pending, got.ak_pending_version) == (ak1, 1, ak2, 2)
            assert got.state is DeviceState.ACTIVE and got.pending_action is Action.ROTATE_AK
            assert got.provisioned_at == 123.0 and got.row_version == 2   # a check-in leaves row_version
            assert got.last_checkin is not None and got.last_checkin.fw_version == 0x010203
            assert got.last_checkin.app_hash == b"h" * 32 and got.last_checkin.at > 0
            assert await tx.count_devices(PO) == 1
            assert await tx.count_devices(PO, [DeviceState.PROVISIONING]) == 0
            assert [d.device_id for d in await tx.list_devices(po_id=PO, state=DeviceState.ACTIVE)] == [DEV]
            assert await tx.set_pending_action([DEV, b"\x09" * 12], Action.UPDATE_CLOUD) == 1
            assert "ak=" not in repr(got) and ak1.hex() not in repr(got)

    with_store(backend, kek, body)


def test_store_update_with_stale_row_version_conflicts(backend: Backend, kek: Kek) -> None:
    async def body(store: Store) -> None:
        await seed_product(store)
        async with store.transaction() as tx:
            first = await tx.create_device(Device(DEV, PO))
        async with store.transaction() as tx:
            await tx.update_device(replace(first, pending_action=Action.ROTATE_AK))
        with pytest.raises(ConflictError):
            async with store.transaction() as tx:
                await tx.update_device(replace(first, state=DeviceState.REVOKED))   # read before the change
        with pytest.raises(ConflictError):
            async with store.transaction() as tx:
                await tx.create_device(Device(DEV, PO))
        async with store.transaction() as tx:
            got = await tx.get_device(DEV)
            assert got is not None and got.state is DeviceState.PROVISIONING and got.row_version == 2

    with_store(backend, kek, body)


def test_store_failed_transaction_leaves_nothing_behind(backend: Backend, kek: Kek) -> None:
    async def body(store: Store) -> None:
        await seed_product(store)
        with pytest.raises(RuntimeError):
            async with store.transaction() as tx:
                await tx.create_device(Device(DEV, PO))
                await tx.audit(AuditEvent.ISSUED, device_id=DEV, po_id=PO)
                raise RuntimeError("the answer could not be built")
        async with store.transaction() as tx:
            assert await tx.get_device(DEV) is None
            assert await tx.list_audit() == []

    with_store(backend, kek, body)


# ---------------------------------------------------------------------------------- exchanges

def test_store_duplicate_request_gets_the_stored_answer(backend: Backend, kek: Kek) -> None:
    nd, na = os.urandom(16), os.urandom(16)
    answer = os.urandom(150)

    async def body(store: Store) -> None:
        async with store.transaction() as tx:
            assert await tx.get_exchange(DEV, nd, 0x01) is None
            await tx.put_exchange(Exchange(DEV, nd, 0x01, na, answer, request_hash=b"r" * 32))
        for _ in range(2):                                   # a duplicate, then another one
            async with store.transaction() as tx:
                got = await tx.get_exchange(DEV, nd, 0x01)
                assert got is not None and got.answer == answer and got.nonce_a == na
                assert got.request_hash == b"r" * 32
        with pytest.raises(ConflictError):                   # a second answer to the same request
            async with store.transaction() as tx:
                await tx.put_exchange(Exchange(DEV, nd, 0x01, os.urandom(16), b"other"))
        async with store.transaction() as tx:
            assert (await tx.get_exchange(DEV, nd, 0x01)).answer == answer  # type: ignore[union-attr]
            assert await tx.get_exchange(DEV, nd, 0x03) is None           # the confirm is another request
            await tx.put_exchange(Exchange(DEV, nd, 0x03, na, b"ack"))
            assert await tx.prune_exchanges(older_than=0) == 0
            assert await tx.prune_exchanges(older_than=9e12) == 2
            assert await tx.get_exchange(DEV, nd, 0x01) is None

    with_store(backend, kek, body)


# ---------------------------------------------------------------------------------- credentials

def cred(version: int, platform: str = "mosquitto") -> CloudCredential:
    return CloudCredential(version=version, platform=platform, endpoint="mqtt://127.0.0.1:1883",
                           client_id=DEV.hex(), username=f"{DEV.hex()}.v{version}",
                           secret=os.urandom(12).hex().encode(), ref=f"ref{version}")


def test_store_credentials_keep_one_active_and_one_pending(backend: Backend, kek: Kek) -> None:
    async def body(store: Store) -> None:
        await seed_product(store)
        async with store.transaction() as tx:
            await tx.create_device(Device(DEV, PO))
            assert await tx.next_credential_version(DEV) == 1
            c1 = cred(1)
            await tx.add_pending_credential(DEV, c1)
        with pytest.raises(ConflictError):                   # a second pending one
            async with store.transaction() as tx:
                await tx.add_pending_credential(DEV, cred(2))
        async with store.transaction() as tx:
            await tx.activate_credential(DEV, 1)
            await tx.activate_credential(DEV, 1)              # idempotent
            c2 = cred(2, "aws-iot")
            await tx.add_pending_credential(DEV, c2)
            both = await tx.get_credentials(DEV)
            assert both.current is not None and both.current.credential == c1
            assert both.pending is not None and both.pending.credential == c2
            await tx.revoke_credential(DEV, 2)                # the device could not use it
            assert await tx.next_credential_version(DEV) == 3  # versions are never reused
            c3 = cred(3, "aws-iot")
            await tx.add_pending_credential(DEV, c3)
            active = await tx.activate_credential(DEV, 3)
            assert active.state is CredentialState.ACTIVE and active.credential.secret == c3.secret
            states = {r.version: r.state for r in await tx.list_credentials(DEV)}
            assert states == {1: CredentialState.RETIRED, 2: CredentialState.REVOKED,
                              3: CredentialState.ACTIVE}
            assert (await tx.get_credentials(DEV)).pending is None
        with pytest.raises(StorageError):
            async with store.transaction() as tx:
                await tx.activate_credential(DEV, 2)          # revoked: cannot come back

    with_store(backend, kek, body)


# ---------------------------------------------------------------------------------- audit, anomalies

def test_store_audit_log_is_append_only(backend: Backend, kek: Kek) -> None:
    async def body(store: Store) -> None:
        async with store.transaction() as tx:
            first = await tx.audit(AuditEvent.ISSUED, device_id=DEV, po_id=PO, detail="ak_version=1")
            await tx.audit("confirmed", device_id=DEV, po_id=PO)
            await tx.audit(AuditEvent.REFUSED, device_id=b"\x05" * 12, po_id=PO, detail="duplicate id")
            entries = await tx.list_audit(device_id=DEV)
            assert [e.event for e in entries] == [AuditEvent.ISSUED, AuditEvent.CONFIRMED]
            assert entries[0].id == first and entries[0].detail == "ak_version=1" and entries[0].at > 0
            assert await tx.count_audit(AuditEvent.REFUSED, po_id=PO) == 1
            assert [e.event for e in await tx.list_audit(after_id=first)] == [AuditEvent.CONFIRMED,
                                                                               AuditEvent.REFUSED]
            with pytest.raises(ValueError):
                await tx.audit("no-such-event")

    with_store(backend, kek, body)
    for sql in ("UPDATE audit SET detail = 'forged'", "DELETE FROM audit"):
        with pytest.raises((sqlite3.DatabaseError, subprocess.CalledProcessError)):
            backend.raw(sql)

    async def after(store: Store) -> None:
        async with store.transaction() as tx:
            assert [e.detail for e in await tx.list_audit()] == ["ak_version=1", "", "duplicate id"]

    with_store(backend, kek, after)


def test_store_anomaly_is_listed_and_audited(backend: Backend, kek: Kek) -> None:
    async def body(store: Store) -> None:
        async with store.transaction() as tx:
            aid = await tx.add_anomaly("duplicate_id", device_id=DEV, po_id=PO, detail="second PROV_HELLO")
            listed = await tx.list_anomalies(po_id=PO, acknowledged=False)
            assert [(a.id, a.kind, a.device_id) for a in listed] == [(aid, "duplicate_id", DEV)]
            await tx.acknowledge_anomaly(aid)
            assert await tx.list_anomalies(acknowledged=False) == []
            audit = await tx.list_audit(event=AuditEvent.ANOMALY)
            assert len(audit) == 1 and audit[0].detail.startswith("duplicate_id")

    with_store(backend, kek, body)


# ---------------------------------------------------------------------------------- concurrency

async def issue_ak(store: Store, device_id: bytes, *, attempts: int) -> str:
    """What an agent replica does on PROV_HELLO: issue a pending AK unless the device has one."""

    async def work(tx: Transaction) -> str:
        dev = await tx.get_device(device_id, for_update=True)
        if dev is not None and (dev.ak_pending is not None or dev.ak is not None):
            return "refused"
        await asyncio.sleep(0.1)                     # both replicas are now between read and write
        ak = os.urandom(32)
        if dev is None:
            await tx.create_device(Device(device_id, PO, ak_pending=ak, ak_pending_version=1))
        else:
            await tx.update_device(replace(dev, ak_pending=ak, ak_pending_version=1))
        await tx.audit(AuditEvent.ISSUED, device_id=device_id, po_id=PO)
        return "issued"

    try:
        return await store.run(work, attempts=attempts)
    except ConflictError:
        return "conflict"


@pytest.mark.parametrize("existing_row", [False, True], ids=["new-device", "known-device"])
@pytest.mark.parametrize("attempts", [1, 3], ids=["no-retry", "retry"])
def test_store_two_replicas_racing_issue_exactly_one_key(backend: Backend, kek: Kek, existing_row: bool,
                                                         attempts: int) -> None:
    async def main() -> None:
        a, b = make_store(backend.url, kek), make_store(backend.url, kek)   # two agent replicas
        await a.open()
        await b.open()
        try:
            await seed_product(a)
            if existing_row:
                async with a.transaction() as tx:
                    await tx.create_device(Device(DEV, PO))
            results = await asyncio.gather(issue_ak(a, DEV, attempts=attempts),
                                           issue_ak(b, DEV, attempts=attempts))
            # SQLite serialises writers from BEGIN IMMEDIATE on and PostgreSQL's row lock holds the
            # loser back: both then see the winner's key. Only a row that does not exist yet cannot
            # be locked; there the unique key makes the loser conflict (and a retry sees the key).
            raced = backend.kind == "postgresql" and not existing_row and attempts == 1
            assert sorted(results) == (["conflict", "issued"] if raced else ["issued", "refused"])
            async with b.transaction() as tx:
                assert await tx.count_audit(AuditEvent.ISSUED) == 1
                dev = await tx.get_device(DEV)
                assert dev is not None and dev.ak_pending is not None
        finally:
            await a.close()
            await b.close()

    run(main())


def test_store_optimistic_update_from_two_replicas_lets_one_win(backend: Backend, kek: Kek) -> None:
    async def main() -> None:
        a, b = make_store(backend.url, kek), make_store(backend.url, kek)
        await a.open()
        await b.open()
        try:
            await seed_product(a)
            async with a.transaction() as tx:
                base = await tx.create_device(Device(DEV, PO))

            async def write(store: Store, version: int) -> str:
                try:
                    async with store.transaction() as tx:
                        await tx.update_device(replace(base, ak_pending=os.urandom(32),
                                                       ak_pending_version=version))
                    return "won"
                except ConflictError:
                    return "lost"

            assert sorted(await asyncio.gather(write(a, 1), write(b, 2))) == ["lost", "won"]
        finally:
            await a.close()
            await b.close()

    run(main())


def test_store_many_concurrent_transactions_all_commit_and_survive_a_cancelled_one(
        backend: Backend, kek: Kek) -> None:
    ids = [bytes([i]) * 12 for i in range(1, 21)]

    async def body(store: Store) -> None:
        await seed_product(store)

        async def create(device_id: bytes) -> None:
            async with store.transaction() as tx:
                await tx.create_device(Device(device_id, PO))
                await asyncio.sleep(0.01)                 # hold the connection a little

        async def abandoned() -> None:
            async with store.transaction() as tx:
                await tx.create_device(Device(b"\xee" * 12, PO))
                await asyncio.sleep(10)

        victim = asyncio.create_task(abandoned())
        await asyncio.sleep(0.05)                          # it is inside its transaction now
        creators = [asyncio.create_task(create(d)) for d in ids]   # more than the PostgreSQL pool holds
        await asyncio.sleep(0.05)
        victim.cancel()
        with pytest.raises(asyncio.CancelledError):
            await victim
        await asyncio.gather(*creators)
        async with store.transaction() as tx:
            assert await tx.count_devices(PO) == 20
            assert await tx.get_device(b"\xee" * 12) is None  # the cancelled one rolled back

    with_store(backend, kek, body)


def test_store_two_replicas_opening_an_empty_database_migrate_once(backend: Backend, kek: Kek) -> None:
    async def main() -> None:
        stores = [make_store(backend.url, kek) for _ in range(2)]
        await asyncio.gather(*(s.open() for s in stores))
        try:
            await seed_product(stores[0])
            async with stores[1].transaction() as tx:
                assert await tx.get_product(PO) is not None
        finally:
            for s in stores:
                await s.close()

    run(main())
    assert _schema_versions(backend) == list(range(1, schema.LATEST_VERSION + 1))


# ---------------------------------------------------------------------------------- schema, KEK

def test_store_migrations_apply_once_and_reopen_keeps_data(backend: Backend, kek: Kek) -> None:
    async def first(store: Store) -> None:
        await seed_product(store)

    with_store(backend, kek, first)

    async def again(store: Store) -> None:
        async with store.transaction() as tx:
            assert (await tx.get_product(PO)) is not None

    with_store(backend, kek, again)
    versions = _schema_versions(backend)
    assert versions == list(range(1, schema.LATEST_VERSION + 1))


def _schema_versions(backend: Backend) -> list[int]:
    if backend.kind == "sqlite":
        db = sqlite3.connect(backend.url)
        try:
            return [r[0] for r in db.execute("SELECT version FROM schema_version ORDER BY version")]
        finally:
            db.close()
    out = backend.pg.psql(backend.url.rsplit("/", 1)[1],
                          "SELECT version FROM schema_version ORDER BY version")
    return [int(x) for x in out.split()]


def test_store_schema_newer_than_the_code_is_refused(backend: Backend, kek: Kek) -> None:
    with_store(backend, kek, lambda store: asyncio.sleep(0))
    backend.raw("INSERT INTO schema_version (version, description, applied_at) VALUES (999, 'future', 0)")
    with pytest.raises(StorageError, match="newer"):
        with_store(backend, kek, lambda store: asyncio.sleep(0))


def test_store_opened_with_another_kek_is_refused(backend: Backend, kek: Kek) -> None:
    with_store(backend, kek, seed_product)
    with pytest.raises(StorageError, match="KEK"):
        with_store(backend, Kek(os.urandom(32)), lambda store: asyncio.sleep(0))


def _encodings(secret: bytes) -> list[bytes]:
    return [secret, secret.hex().encode(), secret.hex().upper().encode(), base64.b64encode(secret),
            base64.urlsafe_b64encode(secret), base64.b64encode(secret).rstrip(b"=")]


def test_store_database_reveals_no_key_in_clear(backend: Backend, kek: Kek) -> None:
    p = product()
    ak, ak_next = os.urandom(32), os.urandom(32)
    password = os.urandom(18).hex().encode()
    answer = os.urandom(64)

    async def body(store: Store) -> None:
        async with store.transaction() as tx:
            await tx.add_product(p)
            dev = await tx.create_device(Device(DEV, PO, ak_pending=ak, ak_pending_version=1))
            await tx.update_device(replace(dev, ak=ak, ak_version=1, ak_pending=ak_next, ak_pending_version=2,
                                           state=DeviceState.ACTIVE))
            await tx.add_pending_credential(DEV, replace(cred(1), secret=password))
            await tx.put_exchange(Exchange(DEV, os.urandom(16), 0x21, os.urandom(16), answer))
        async with store.transaction() as tx:     # all of it is there, and opens with the KEK
            got = await tx.get_device(DEV)
            assert got is not None and (got.ak, got.ak_pending) == (ak, ak_next)

    with_store(backend, kek, body)
    image = backend.image()
    assert DEV in image or DEV.hex().encode() in image       # the search does see the rows
    for secret in (p.pk, ak, ak_next, password, answer):
        for form in _encodings(secret):
            assert form not in image


def test_store_sealed_value_copied_to_another_row_does_not_open(kek: Kek) -> None:
    sealed = kek.seal(b"k" * 32, aad("ak", DEV, 1))
    assert kek.open(sealed, aad("ak", DEV, 1)) == b"k" * 32
    for wrong in (aad("ak", DEV, 2), aad("ak", b"\x00" * 12, 1), aad("pk", DEV, 1)):
        with pytest.raises(StorageError):
            kek.open(sealed, wrong)
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(StorageError):
        kek.open(tampered, aad("ak", DEV, 1))


def test_kek_loads_from_hex_base64_file_and_environment(tmp_path: Path) -> None:
    raw = os.urandom(32)
    probe = Kek(raw).seal(b"x", b"id")
    forms = [raw.hex(), raw.hex().upper() + "\n", base64.b64encode(raw).decode(), raw]
    for form in forms:
        assert Kek.parse(form).open(probe, b"id") == b"x"
    f = tmp_path / "kek"
    f.write_text(raw.hex() + "\n")
    assert Kek.load(kek_file=f).open(probe, b"id") == b"x"
    assert Kek.load(environ={"OTAKEY_KEK": base64.b64encode(raw).decode()}).open(probe, b"id") == b"x"
    for bad in ("", "00" * 31, "zz" * 32, base64.b64encode(raw[:16]).decode()):
        with pytest.raises(ValueError):
            Kek.parse(bad)
    with pytest.raises(ValueError, match="OTAKEY_KEK"):
        Kek.load(environ={})
    assert raw.hex() not in repr(Kek(raw))


def test_store_sqlite_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    run(_open_close(str(path)))
    assert path.stat().st_mode & 0o777 == 0o600


async def _open_close(url: str) -> None:
    store = await open_store(url, Kek(os.urandom(32)))
    await store.close()


def test_missing_postgresql_names_the_setup_script(monkeypatch: pytest.MonkeyPatch) -> None:
    import servers

    monkeypatch.setattr(servers.shutil, "which", lambda name: None)
    monkeypatch.setattr(servers.os.path, "exists", lambda path: False)
    with pytest.raises(servers.ServerMissing, match=r"scripts/setup\.sh"):
        servers.start_postgres()


def test_open_store_reads_url_forms(tmp_path: Path) -> None:
    kek = Kek(os.urandom(32))
    s = make_store(f"sqlite://{tmp_path}/a.db", kek)
    assert isinstance(s, SQLiteStore) and s.path == f"{tmp_path}/a.db"
    assert isinstance(make_store(str(tmp_path / "b.db"), kek), SQLiteStore)
    assert isinstance(make_store("postgresql://u@127.0.0.1:5/db", kek), PostgresStore)
    assert make_store("sqlite:///:memory:", kek).path == ":memory:"   # type: ignore[attr-defined]
    for bad in ("mysql://x/y", "sqlite://relative.db", ""):
        with pytest.raises(ValueError):
            make_store(bad, kek)
