"""The SQL both backends share: one Transaction implementation over a minimal connection protocol,
the migration runner and the KEK check. Statements use ``?`` placeholders; the PostgreSQL
connection rewrites them. Booleans are INTEGER 0/1 and times epoch seconds in both dialects."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any, Protocol

from otakey.cloud.base import CloudCredential
from otakey.errors import StorageError

from . import schema
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
    Transaction,
    check_detail,
    now,
)
from .crypto import KEK_CHECK_PLAINTEXT, Kek, aad

Row = tuple[Any, ...]


class Conn(Protocol):
    """What a backend provides inside one open database transaction."""

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; returns the number of rows it changed."""

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...

    async def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run an INSERT into a table with an ``id`` key; returns the new row's id (SQLite: the
        rowid, without the cost of a RETURNING clause; PostgreSQL: ``RETURNING id``)."""


# ------------------------------------------------------------------------------------ migrations

async def migrate(conn: Conn, dialect: str) -> list[int]:
    """Apply the missing migrations inside the caller's transaction; returns the versions applied.

    The caller holds a lock that keeps two openers from migrating at once (SQLite: the write lock
    of BEGIN IMMEDIATE; PostgreSQL: an advisory transaction lock)."""
    await conn.execute(schema.SCHEMA_VERSION_DDL[dialect])
    applied = {int(r[0]) for r in await conn.fetchall("SELECT version FROM schema_version")}
    if applied and max(applied) > schema.LATEST_VERSION:
        raise StorageError(f"the database schema is version {max(applied)}, newer than this agent's "
                           f"{schema.LATEST_VERSION}: upgrade the agent")
    done = []
    for m in schema.MIGRATIONS:
        if m.version in applied:
            continue
        for statement in m.for_dialect(dialect):
            await conn.execute(statement)
        await conn.execute("INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)",
                           (m.version, m.description, now()))
        done.append(m.version)
    return done


async def check_kek(conn: Conn, kek: Kek) -> None:
    """Seal a check value into a new database, or prove the KEK opens an existing one's."""
    label = aad("meta", "kek_check")
    row = await conn.fetchone("SELECT value FROM meta WHERE key = ?", ("kek_check",))
    if row is None:
        await conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)",
                           ("kek_check", kek.seal(KEK_CHECK_PLAINTEXT, label)))
        return
    try:
        ok = kek.open(row[0], label) == KEK_CHECK_PLAINTEXT
    except StorageError:
        ok = False
    if not ok:
        raise StorageError("the KEK does not match this database")


# ------------------------------------------------------------------------------------ rows

_DEVICE_COLS = ("device_id, po_id, state, ak_version, ak_sealed, ak_pending_version, ak_pending_sealed, "
                "ak_nonce_d, ak_nonce_a, pending_action, provisioned_at, ci_at, ci_ak_version, "
                "ci_cloud_version, ci_cloud_platform, ci_ak_fp, ci_cloud_fp, ci_fw_version, ci_app_hash, "
                "ci_last_error, created_at, updated_at, row_version")
_PRODUCT_COLS = "po_id, name, quantity, pk_sealed, frozen, revoked, restricted, created_at"
_EXCHANGE_COLS = "nonce_a, answer_sealed, request_hash, created_at"
# A request's device and stored exchange in one statement (SQLite). The one-row ``k`` keeps a
# row even when neither exists; both joins are primary-key lookups.
_DEVICE_AND_EXCHANGE = (
    "SELECT " + ", ".join("d." + c.strip() for c in _DEVICE_COLS.split(",")) + ", "
    + ", ".join("e." + c.strip() for c in _EXCHANGE_COLS.split(","))
    + " FROM (SELECT ? AS device_id) k LEFT JOIN devices d ON d.device_id = k.device_id "
    "LEFT JOIN exchanges e ON e.device_id = k.device_id AND e.nonce_d = ? AND e.request_type = ?")
_N_DEVICE_COLS = len(_DEVICE_COLS.split(","))
_STAMPS = frozenset({"created_at", "updated_at", "row_version", "last_checkin"})
_UPDATE_KEYS = ("UPDATE devices SET ak_version = ?, ak_sealed = ?, ak_pending_version = ?, "
                "ak_pending_sealed = ?, ak_nonce_d = ?, ak_nonce_a = ?, pending_action = ?, "
                "provisioned_at = ?, updated_at = ?, row_version = row_version + 1 "
                "WHERE device_id = ? AND row_version = ?")
_UPDATE_DEVICE = ("UPDATE devices SET po_id = ?, state = ?, ak_version = ?, ak_sealed = ?, "
                  "ak_pending_version = ?, ak_pending_sealed = ?, ak_nonce_d = ?, ak_nonce_a = ?, "
                  "pending_action = ?, provisioned_at = ?, updated_at = ?, row_version = row_version + 1 "
                  "WHERE device_id = ? AND row_version = ?")
_CRED_COLS = ("device_id, version, platform, endpoint, client_id, username, secret_sealed, ref, state, "
              "created_at, changed_at")


def _b(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


def _ak_aad(device_id: bytes, version: int) -> bytes:
    return aad("ak", device_id, version)


class SqlTransaction(Transaction):
    """:class:`Transaction` over a :class:`Conn`. Seals secrets on the way in, opens them out."""

    def __init__(self, conn: Conn, kek: Kek, dialect: str) -> None:
        self._c = conn
        self._kek = kek
        self._dialect = dialect
        # device_id -> (row_version, po_id, state) of the row as this transaction last read or
        # wrote it: lets update_device leave po_id and state (an indexed pair) out of the UPDATE
        # when they did not change (see there).
        self._seen: dict[bytes, tuple[int, int, str]] = {}

    # --- products -----------------------------------------------------------------------------
    def _product(self, r: Row) -> Product:
        po_id = int(r[0])
        return Product(po_id=po_id, name=r[1], quantity=int(r[2]),
                       pk=self._kek.open(r[3], aad("pk", po_id)), frozen=bool(r[4]), revoked=bool(r[5]),
                       restricted=bool(r[6]), created_at=float(r[7]))

    async def add_product(self, product: Product, allow_list: Iterable[bytes] | None = None) -> Product:
        at = product.created_at or now()
        restricted = allow_list is not None
        await self._c.execute(
            f"INSERT INTO products ({_PRODUCT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (product.po_id, product.name, product.quantity,
             self._kek.seal(product.pk, aad("pk", product.po_id)),
             int(product.frozen), int(product.revoked), int(restricted), at))
        if allow_list is not None:
            await self._insert_allow(product.po_id, allow_list)
        stored = await self.get_product(product.po_id)
        assert stored is not None
        return stored

    async def _insert_allow(self, po_id: int, ids: Iterable[bytes]) -> None:
        rows = [(po_id, bytes(d)) for d in dict.fromkeys(bytes(d) for d in ids)]
        if rows:
            await self._c.executemany("INSERT INTO product_allow (po_id, device_id) VALUES (?, ?)", rows)

    async def get_product(self, po_id: int) -> Product | None:
        r = await self._c.fetchone(f"SELECT {_PRODUCT_COLS} FROM products WHERE po_id = ?", (po_id,))
        return None if r is None else self._product(r)

    async def get_product_by_name(self, name: str) -> Product | None:
        r = await self._c.fetchone(f"SELECT {_PRODUCT_COLS} FROM products WHERE name = ?", (name,))
        return None if r is None else self._product(r)

    async def list_products(self) -> list[Product]:
        return [self._product(r) for r in
                await self._c.fetchall(f"SELECT {_PRODUCT_COLS} FROM products ORDER BY po_id")]

    async def set_product_flags(self, po_id: int, *, frozen: bool | None = None,
                                revoked: bool | None = None, quantity: int | None = None) -> Product:
        if quantity is not None and quantity < 0:
            raise ValueError("quantity is >= 0")
        sets, params = [], []
        for col, value in (("frozen", frozen), ("revoked", revoked), ("quantity", quantity)):
            if value is not None:
                sets.append(f"{col} = ?")
                params.append(int(value))
        if sets:
            n = await self._c.execute(f"UPDATE products SET {', '.join(sets)} WHERE po_id = ?",
                                      (*params, po_id))
            if n == 0:
                raise StorageError(f"no PO {po_id}")
        product = await self.get_product(po_id)
        if product is None:
            raise StorageError(f"no PO {po_id}")
        return product

    async def set_allow_list(self, po_id: int, device_ids: Iterable[bytes] | None) -> None:
        n = await self._c.execute("UPDATE products SET restricted = ? WHERE po_id = ?",
                                  (int(device_ids is not None), po_id))
        if n == 0:
            raise StorageError(f"no PO {po_id}")
        await self._c.execute("DELETE FROM product_allow WHERE po_id = ?", (po_id,))
        if device_ids is not None:
            await self._insert_allow(po_id, device_ids)

    async def is_allowed(self, po_id: int, device_id: bytes) -> bool:
        r = await self._c.fetchone(
            "SELECT p.restricted, a.device_id FROM products p LEFT JOIN product_allow a "
            "ON a.po_id = p.po_id AND a.device_id = ? WHERE p.po_id = ?", (bytes(device_id), po_id))
        if r is None:
            return False
        return not r[0] or r[1] is not None

    async def count_devices(self, po_id: int, states: Iterable[DeviceState] | None = None) -> int:
        sql, params = "SELECT COUNT(*) FROM devices WHERE po_id = ?", [po_id]
        if states is not None:
            wanted = [DeviceState(s).value for s in states]
            if not wanted:
                return 0
            sql += f" AND state IN ({', '.join('?' * len(wanted))})"
            params += wanted
        r = await self._c.fetchone(sql, params)
        return int(r[0]) if r else 0

    # --- devices ------------------------------------------------------------------------------
    def _device(self, r: Row) -> Device:
        device_id = bytes(r[0])
        ak_version, pending_version = int(r[3]), int(r[5])
        ak = self._kek.open(r[4], _ak_aad(device_id, ak_version)) if r[4] is not None else None
        pending = self._kek.open(r[6], _ak_aad(device_id, pending_version)) if r[6] is not None else None
        checkin = None
        if r[11] is not None:
            checkin = CheckIn(ak_version=int(r[12]), cloud_version=int(r[13]), cloud_platform=int(r[14]),
                              ak_fp=bytes(r[15]), cloud_fp=bytes(r[16]), fw_version=int(r[17]),
                              app_hash=bytes(r[18]), last_error=int(r[19]), at=float(r[11]))
        device = Device(device_id=device_id, po_id=int(r[1]), state=DeviceState(r[2]), ak=ak,
                        ak_version=ak_version, ak_pending=pending, ak_pending_version=pending_version,
                        ak_nonce_d=_b(r[7]), ak_nonce_a=_b(r[8]), pending_action=Action(int(r[9])),
                        provisioned_at=None if r[10] is None else float(r[10]), last_checkin=checkin,
                        created_at=float(r[20]), updated_at=float(r[21]), row_version=int(r[22]))
        self._seen[device_id] = (device.row_version, device.po_id, device.state.value)
        return device

    def _key_columns(self, d: Device) -> tuple[Any, ...]:
        ak = None if d.ak is None else self._kek.seal(d.ak, _ak_aad(d.device_id, d.ak_version))
        pending = (None if d.ak_pending is None
                   else self._kek.seal(d.ak_pending, _ak_aad(d.device_id, d.ak_pending_version)))
        return (d.po_id, DeviceState(d.state).value, d.ak_version, ak, d.ak_pending_version, pending,
                _b(d.ak_nonce_d), _b(d.ak_nonce_a), int(d.pending_action), d.provisioned_at)

    async def get_device(self, device_id: bytes, *, for_update: bool = False) -> Device | None:
        sql = f"SELECT {_DEVICE_COLS} FROM devices WHERE device_id = ?"
        if for_update and self._dialect == "postgresql":
            sql += " FOR UPDATE"
        r = await self._c.fetchone(sql, (bytes(device_id),))
        return None if r is None else self._device(r)

    @staticmethod
    def _as_stored(device: Device, **changes: Any) -> Device:
        """What reading the row just written would give, without reading it back: the columns are
        exactly the fields written (normalised as a read would), so the copy equals the row. A
        second read per write cost a statement and two key openings (bench/README.md)."""
        d = device
        # Only what a read would give differently is replaced (callers pass these types already;
        # each replaced field costs a dataclass rebuild's worth of checks).
        if type(d.device_id) is not bytes:
            changes["device_id"] = bytes(d.device_id)
        for name in ("ak_nonce_d", "ak_nonce_a"):
            value = getattr(d, name)
            if value is not None and type(value) is not bytes:
                changes[name] = bytes(value)
        if type(d.state) is not DeviceState:
            changes["state"] = DeviceState(d.state)
        if type(d.pending_action) is not Action:
            changes["pending_action"] = Action(int(d.pending_action))
        if d.provisioned_at is not None and type(d.provisioned_at) is not float:
            changes["provisioned_at"] = float(d.provisioned_at)
        if changes.keys() <= _STAMPS:
            # Only the stamps the write set (update_device: two numbers): a copy of the already
            # validated record with those replaced, without replace()'s rebuild and checks, which
            # cost more than the rest of this method (bench/README.md, goal 1). The frozen class
            # forbids setattr, not writing the new instance's own __dict__.
            copy = object.__new__(Device)
            copy.__dict__.update(d.__dict__)
            copy.__dict__.update(changes)
            return copy
        return replace(d, **changes)

    async def create_device(self, device: Device) -> Device:
        at = now()
        created = device.created_at or at
        await self._c.execute(
            "INSERT INTO devices (device_id, po_id, state, ak_version, ak_sealed, ak_pending_version, "
            "ak_pending_sealed, ak_nonce_d, ak_nonce_a, pending_action, provisioned_at, created_at, "
            "updated_at, row_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
            (bytes(device.device_id), *self._key_columns(device), created, at))
        self._seen[bytes(device.device_id)] = (1, device.po_id, DeviceState(device.state).value)
        return self._as_stored(device, created_at=float(created), updated_at=at, row_version=1,
                               last_checkin=None)

    async def update_device(self, device: Device) -> Device:
        """Writes the key state; the returned copy carries ``last_checkin`` as given (check-ins
        are written by :meth:`record_checkin`, which never conflicts with this)."""
        at = now()
        device_id = bytes(device.device_id)
        columns = self._key_columns(device)
        state = columns[1]
        if self._seen.get(device_id) == (device.row_version, device.po_id, state):
            # po_id and state as read, and the row is still that version (the WHERE below; every
            # writer of either column bumps row_version): leaving them out spares SQLite the
            # devices_po_state index update, ~40 % of this statement (bench/README.md, goal 1).
            n = await self._c.execute(_UPDATE_KEYS, (*columns[2:], at, device_id, device.row_version))
        else:
            n = await self._c.execute(_UPDATE_DEVICE, (*columns, at, device_id, device.row_version))
        if n == 0:
            exists = await self._c.fetchone("SELECT 1 FROM devices WHERE device_id = ?",
                                            (bytes(device.device_id),))
            if exists is None:
                raise StorageError("no such device")
            raise ConflictError("the device was changed by someone else")
        self._seen[device_id] = (device.row_version + 1, device.po_id, state)
        return self._as_stored(device, updated_at=at, row_version=device.row_version + 1)

    async def record_checkin(self, device_id: bytes, checkin: CheckIn) -> None:
        n = await self._c.execute(
            "UPDATE devices SET ci_at = ?, ci_ak_version = ?, ci_cloud_version = ?, ci_cloud_platform = ?, "
            "ci_ak_fp = ?, ci_cloud_fp = ?, ci_fw_version = ?, ci_app_hash = ?, ci_last_error = ? "
            "WHERE device_id = ?",
            (checkin.at or now(), checkin.ak_version, checkin.cloud_version, checkin.cloud_platform,
             bytes(checkin.ak_fp), bytes(checkin.cloud_fp), checkin.fw_version, bytes(checkin.app_hash),
             checkin.last_error, bytes(device_id)))
        if n == 0:
            raise StorageError("no such device")

    async def set_pending_action(self, device_ids: Iterable[bytes], action: Action) -> int:
        count = 0
        at = now()
        for device_id in device_ids:
            count += await self._c.execute(
                "UPDATE devices SET pending_action = ?, updated_at = ?, row_version = row_version + 1 "
                "WHERE device_id = ?", (int(Action(action)), at, bytes(device_id)))
        return count

    async def list_devices(self, *, po_id: int | None = None, state: DeviceState | None = None,
                           after: bytes | None = None, limit: int = 1000) -> list[Device]:
        where, params = [], []
        if po_id is not None:
            where.append("po_id = ?")
            params.append(po_id)
        if state is not None:
            where.append("state = ?")
            params.append(DeviceState(state).value)
        if after is not None:
            where.append("device_id > ?")
            params.append(bytes(after))
        sql = f"SELECT {_DEVICE_COLS} FROM devices"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY device_id LIMIT ?"
        params.append(int(limit))
        return [self._device(r) for r in await self._c.fetchall(sql, params)]

    # --- cloud credentials --------------------------------------------------------------------
    def _credential(self, r: Row) -> CredentialRecord:
        device_id, version = bytes(r[0]), int(r[1])
        secret = self._kek.open(r[6], aad("cloud", device_id, version))
        cred = CloudCredential(version=version, platform=r[2], endpoint=r[3], client_id=r[4], username=r[5],
                               secret=secret, ref=r[7])
        return CredentialRecord(device_id=device_id, credential=cred, state=CredentialState(r[8]),
                                created_at=float(r[9]), changed_at=float(r[10]))

    async def list_credentials(self, device_id: bytes) -> list[CredentialRecord]:
        rows = await self._c.fetchall(
            f"SELECT {_CRED_COLS} FROM credentials WHERE device_id = ? ORDER BY version", (bytes(device_id),))
        return [self._credential(r) for r in rows]

    async def get_credentials(self, device_id: bytes) -> DeviceCredentials:
        rows = await self._c.fetchall(
            f"SELECT {_CRED_COLS} FROM credentials WHERE device_id = ? AND state IN ('active', 'pending')",
            (bytes(device_id),))
        records = [self._credential(r) for r in rows]
        current = next((c for c in records if c.state is CredentialState.ACTIVE), None)
        pending = next((c for c in records if c.state is CredentialState.PENDING), None)
        return DeviceCredentials(current=current, pending=pending)

    async def next_credential_version(self, device_id: bytes) -> int:
        r = await self._c.fetchone("SELECT MAX(version) FROM credentials WHERE device_id = ?",
                                   (bytes(device_id),))
        return 1 if r is None or r[0] is None else int(r[0]) + 1

    async def add_pending_credential(self, device_id: bytes, credential: CloudCredential) -> CredentialRecord:
        at = now()
        device_id = bytes(device_id)
        sealed = self._kek.seal(credential.secret, aad("cloud", device_id, credential.version))
        await self._c.execute(
            f"INSERT INTO credentials ({_CRED_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
            (device_id, credential.version, credential.platform, credential.endpoint, credential.client_id,
             credential.username, sealed,
             credential.ref, at, at))
        return CredentialRecord(device_id=device_id, credential=credential, state=CredentialState.PENDING,
                                created_at=at, changed_at=at)

    async def _credential_state(self, device_id: bytes, version: int) -> CredentialState | None:
        r = await self._c.fetchone("SELECT state FROM credentials WHERE device_id = ? AND version = ?",
                                   (device_id, version))
        return None if r is None else CredentialState(r[0])

    async def activate_credential(self, device_id: bytes, version: int) -> CredentialRecord:
        device_id = bytes(device_id)
        state = await self._credential_state(device_id, version)
        if state is None or state not in (CredentialState.PENDING, CredentialState.ACTIVE):
            raise StorageError(f"credential version {version} is not pending ({state})")
        if state is CredentialState.PENDING:
            at = now()
            # Retire first: the unique index allows one active row per device at any moment.
            await self._c.execute("UPDATE credentials SET state = 'retired', changed_at = ? "
                                  "WHERE device_id = ? AND state = 'active'", (at, device_id))
            n = await self._c.execute("UPDATE credentials SET state = 'active', changed_at = ? "
                                      "WHERE device_id = ? AND version = ? AND state = 'pending'",
                                      (at, device_id, version))
            if n == 0:
                raise ConflictError("the pending credential changed meanwhile")
        r = await self._c.fetchone(
            f"SELECT {_CRED_COLS} FROM credentials WHERE device_id = ? AND version = ?", (device_id, version))
        assert r is not None
        return self._credential(r)

    async def revoke_credential(self, device_id: bytes, version: int) -> None:
        device_id = bytes(device_id)
        state = await self._credential_state(device_id, version)
        if state is None:
            raise StorageError(f"no credential version {version}")
        if state in (CredentialState.PENDING, CredentialState.ACTIVE):
            await self._c.execute("UPDATE credentials SET state = 'revoked', changed_at = ? "
                                  "WHERE device_id = ? AND version = ?", (now(), device_id, version))

    # --- exchanges ----------------------------------------------------------------------------
    def _exchange(self, device_id: bytes, nonce_d: bytes, request_type: int, r: Row) -> Exchange:
        answer = self._kek.open(r[1], aad("exchange", device_id, nonce_d, request_type))
        return Exchange(device_id=device_id, nonce_d=nonce_d, request_type=request_type, nonce_a=bytes(r[0]),
                        answer=answer, request_hash=bytes(r[2]), created_at=float(r[3]))

    async def get_exchange(self, device_id: bytes, nonce_d: bytes, request_type: int) -> Exchange | None:
        device_id, nonce_d = bytes(device_id), bytes(nonce_d)
        r = await self._c.fetchone(
            f"SELECT {_EXCHANGE_COLS} FROM exchanges "
            "WHERE device_id = ? AND nonce_d = ? AND request_type = ?", (device_id, nonce_d, request_type))
        return None if r is None else self._exchange(device_id, nonce_d, request_type, r)

    async def get_device_and_exchange(self, device_id: bytes, nonce_d: bytes,
                                      request_type: int) -> tuple[Device | None, Exchange | None]:
        if self._dialect != "sqlite":
            # PostgreSQL: the exchange is read only once the device's row lock is held, so a
            # replica that waited for it sees the winner's exchange (a join would read it from
            # the statement's snapshot, taken before the wait).
            return await super().get_device_and_exchange(device_id, nonce_d, request_type)
        # SQLite: the transaction holds the database's write lock already; one statement.
        device_id, nonce_d = bytes(device_id), bytes(nonce_d)
        r = await self._c.fetchone(_DEVICE_AND_EXCHANGE, (device_id, nonce_d, request_type))
        assert r is not None
        n = _N_DEVICE_COLS
        device = None if r[0] is None else self._device(r[:n])
        exchange = (None if r[n + 1] is None
                    else self._exchange(device_id, nonce_d, request_type, r[n:]))
        return device, exchange

    async def put_exchange(self, exchange: Exchange) -> None:
        e = exchange
        device_id, nonce_d = bytes(e.device_id), bytes(e.nonce_d)
        # Answers are sealed too: a CLOUD_UPDATE answer carries a cloud secret (under the AK, itself
        # sealed), and sealing costs little next to a round trip.
        await self._c.execute(
            "INSERT INTO exchanges (device_id, nonce_d, request_type, nonce_a, answer_sealed, request_hash, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (device_id, nonce_d, e.request_type, bytes(e.nonce_a),
             self._kek.seal(e.answer, aad("exchange", device_id, nonce_d, e.request_type)),
             bytes(e.request_hash), e.created_at or now()))

    async def prune_exchanges(self, older_than: float) -> int:
        return await self._c.execute("DELETE FROM exchanges WHERE created_at < ?", (older_than,))

    # --- audit log and anomalies --------------------------------------------------------------
    async def audit(self, event: AuditEvent | str, *, device_id: bytes | None = None,
                    po_id: int | None = None, detail: str = "") -> int:
        ev = AuditEvent(event)
        return await self._c.insert(
            "INSERT INTO audit (at, event, device_id, po_id, detail) VALUES (?, ?, ?, ?, ?)",
            (now(), ev.value, _b(device_id), po_id, check_detail(detail)))

    async def list_audit(self, *, device_id: bytes | None = None, po_id: int | None = None,
                         event: AuditEvent | str | None = None, since: float | None = None,
                         after_id: int = 0, limit: int = 1000) -> list[AuditEntry]:
        where, params = ["id > ?"], [after_id]
        if device_id is not None:
            where.append("device_id = ?")
            params.append(bytes(device_id))
        if po_id is not None:
            where.append("po_id = ?")
            params.append(po_id)
        if event is not None:
            where.append("event = ?")
            params.append(AuditEvent(event).value)
        if since is not None:
            where.append("at >= ?")
            params.append(since)
        rows = await self._c.fetchall(
            f"SELECT id, at, event, device_id, po_id, detail FROM audit WHERE {' AND '.join(where)} "
            "ORDER BY id LIMIT ?", (*params, int(limit)))
        return [AuditEntry(id=int(r[0]), at=float(r[1]), event=AuditEvent(r[2]), device_id=_b(r[3]),
                           po_id=None if r[4] is None else int(r[4]), detail=r[5]) for r in rows]

    async def count_audit(self, event: AuditEvent | str, *, po_id: int | None = None,
                          since: float | None = None) -> int:
        sql, params = "SELECT COUNT(*) FROM audit WHERE event = ?", [AuditEvent(event).value]
        if po_id is not None:
            sql += " AND po_id = ?"
            params.append(po_id)
        if since is not None:
            sql += " AND at >= ?"
            params.append(since)
        r = await self._c.fetchone(sql, params)
        return int(r[0]) if r else 0

    async def add_anomaly(self, kind: str, *, device_id: bytes | None = None, po_id: int | None = None,
                          detail: str = "") -> int:
        if not kind or len(kind) > 64:
            raise ValueError("an anomaly kind is 1..64 characters")
        check_detail(detail)
        r = await self._c.fetchone(
            "INSERT INTO anomalies (at, kind, device_id, po_id, detail) VALUES (?, ?, ?, ?, ?) RETURNING id",
            (now(), kind, _b(device_id), po_id, detail))
        assert r is not None
        await self.audit(AuditEvent.ANOMALY, device_id=device_id, po_id=po_id,
                         detail=f"{kind}: {detail}"[:2048])
        return int(r[0])

    async def list_anomalies(self, *, po_id: int | None = None, acknowledged: bool | None = None,
                             limit: int = 1000) -> list[Anomaly]:
        where, params = ["1 = 1"], []
        if po_id is not None:
            where.append("po_id = ?")
            params.append(po_id)
        if acknowledged is not None:
            where.append("acknowledged = ?")
            params.append(int(acknowledged))
        rows = await self._c.fetchall(
            f"SELECT id, at, kind, device_id, po_id, detail, acknowledged FROM anomalies "
            f"WHERE {' AND '.join(where)} ORDER BY id LIMIT ?", (*params, int(limit)))
        return [Anomaly(id=int(r[0]), at=float(r[1]), kind=r[2], device_id=_b(r[3]),
                        po_id=None if r[4] is None else int(r[4]), detail=r[5], acknowledged=bool(r[6]))
                for r in rows]

    async def acknowledge_anomaly(self, anomaly_id: int) -> None:
        n = await self._c.execute("UPDATE anomalies SET acknowledged = 1 WHERE id = ?", (anomaly_id,))
        if n == 0:
            raise StorageError(f"no anomaly {anomaly_id}")
