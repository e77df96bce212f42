"""The agent's store: products (POs), devices and their keys, cloud credentials, exchanges, the
audit log and anomalies.

Keys (PK, AK, cloud secrets) and stored answers are sealed with the KEK (``crypto.py``) before they
reach the database; the records below carry them in clear, so never log a record's secret fields
(their ``repr`` hides them).

Concurrency model. Every read and write happens inside a :class:`Transaction`; it commits as a
whole or not at all, so "persist the new state and the answer, then send the answer" is one
``async with store.transaction() as tx:`` block followed by the send. Two guards keep several agent
replicas on one PostgreSQL from issuing two keys for one device:

- ``tx.get_device(id, for_update=True)`` locks the row until the transaction ends (PostgreSQL
  ``SELECT … FOR UPDATE``; SQLite transactions hold the database's write lock from their start);
- ``update_device`` is optimistic: it writes only if ``row_version`` is still the one read, and
  creating, inserting an exchange or a second pending credential conflicts on the unique keys.

A lost race raises :class:`ConflictError`; the transaction is then rolled back as a whole, and the
caller re-runs its unit of work (``Store.run`` does this), which now sees the winner's state.

Keep transactions short: on SQLite one transaction holds the database's write lock (all other
transactions of the agent wait), on PostgreSQL ``for_update`` holds the device's row lock. A cloud
call inside one is fine when it must be atomic with the row (registering a pending credential,
see ``CloudAdapter.register_pending``), not as a habit.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

from otakey.cloud.base import CloudCredential
from otakey.errors import StorageError
from otakey.protocol.messages import Action  # CHECKIN_REPLY.action, docs/protocol.md §3.4

T = TypeVar("T")

PO_NAME_MAX = 32
DETAIL_MAX = 2048


class ConflictError(StorageError):
    """Another transaction changed or created the same row first. Re-run the unit of work."""


class DeviceState(StrEnum):
    PROVISIONING = "provisioning"   # stage 2 started: a pending AK v1, not yet confirmed
    ACTIVE = "active"               # holds a confirmed AK
    REVOKED = "revoked"             # refused from now on (keys kept for forensics)


class CredentialState(StrEnum):
    PENDING = "pending"     # registered with the cloud, sent, not yet confirmed
    ACTIVE = "active"       # the device's current credential
    RETIRED = "retired"     # replaced by a newer active one
    REVOKED = "revoked"     # a pending one the device could not use, or dropped by revocation


class AuditEvent(StrEnum):
    ISSUED = "issued"                   # an AK offered (stage 2 or rotation)
    CONFIRMED = "confirmed"             # a device confirmed its first AK
    ROTATED = "rotated"                 # a rotated AK became current
    CLOUD_ISSUED = "cloud_issued"       # a cloud credential registered and sent
    CLOUD_ACTIVATED = "cloud_activated"
    CLOUD_REVOKED = "cloud_revoked"     # a pending cloud credential dropped
    REVOKED = "revoked"                 # a device or PO revoked
    REFUSED = "refused"                 # an authenticated request refused by policy
    ANOMALY = "anomaly"
    OPERATOR = "operator"               # an operator changed a PO (freeze, allow-list, …)


@dataclass(frozen=True)
class Product:
    """A product order: every device of it carries the same PK from the factory."""

    po_id: int
    name: str
    quantity: int
    pk: bytes = field(repr=False)
    frozen: bool = False
    revoked: bool = False
    #: True when only the IDs of the PO's allow-list may provision (``Transaction.is_allowed``).
    restricted: bool = False
    created_at: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.po_id <= 0xFFFFFFFF:
            raise ValueError("po_id is a u32")
        if not (1 <= len(self.name) <= PO_NAME_MAX and self.name.isascii() and self.name.isprintable()):
            raise ValueError(f"a PO name is 1..{PO_NAME_MAX} printable ASCII characters")
        if self.quantity < 0:
            raise ValueError("quantity is >= 0")
        if len(self.pk) != 32:
            raise ValueError("a PK is 32 bytes")


@dataclass(frozen=True)
class CheckIn:
    """What a device's last check-in told (docs/protocol.md §3.4)."""

    ak_version: int
    cloud_version: int
    cloud_platform: int
    ak_fp: bytes
    cloud_fp: bytes
    fw_version: int
    app_hash: bytes
    last_error: int
    at: float = 0.0


@dataclass(frozen=True)
class Device:
    """A device and its AK state. Derive a changed copy with ``dataclasses.replace`` and write it
    with ``Transaction.update_device``; ``row_version`` is the optimistic-concurrency token."""

    device_id: bytes
    po_id: int
    state: DeviceState = DeviceState.PROVISIONING
    ak: bytes | None = field(default=None, repr=False)
    ak_version: int = 0                  # 0: no current AK yet
    ak_pending: bytes | None = field(default=None, repr=False)
    ak_pending_version: int = 0          # 0: nothing pending
    ak_nonce_d: bytes | None = None      # the exchange that produced the pending AK
    ak_nonce_a: bytes | None = None
    pending_action: Action = Action.NONE
    provisioned_at: float | None = None  # when stage 2 completed
    last_checkin: CheckIn | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    row_version: int = 0

    def __post_init__(self) -> None:
        if not 1 <= len(self.device_id) <= 32:
            raise ValueError("device_id is 1..32 bytes")
        for name in ("ak", "ak_pending"):
            value = getattr(self, name)
            if value is not None and len(value) != 32:
                raise ValueError(f"{name} is 32 bytes")
        if (self.ak_pending is None) != (self.ak_pending_version == 0):
            raise ValueError("ak_pending and ak_pending_version are set together")
        if (self.ak is None) != (self.ak_version == 0):
            raise ValueError("ak and ak_version are set together")


@dataclass(frozen=True)
class CredentialRecord:
    """A cloud credential the store keeps, with its state."""

    device_id: bytes
    credential: CloudCredential
    state: CredentialState
    created_at: float = 0.0
    changed_at: float = 0.0

    @property
    def version(self) -> int:
        return self.credential.version


@dataclass(frozen=True)
class DeviceCredentials:
    """A device's active and pending cloud credentials (either may be on any platform)."""

    current: CredentialRecord | None
    pending: CredentialRecord | None


@dataclass(frozen=True)
class Exchange:
    """The stored answer to one request, keyed by (device_id, nonce_d, request_type), so a
    duplicate request gets the same bytes back instead of a second key."""

    device_id: bytes
    nonce_d: bytes
    request_type: int
    nonce_a: bytes
    answer: bytes = field(repr=False)
    request_hash: bytes = b""       # e.g. SHA-256 of the request, to tell a duplicate from a clash
    created_at: float = 0.0

    def __post_init__(self) -> None:
        if len(self.nonce_d) != 16 or len(self.nonce_a) != 16:
            raise ValueError("nonces are 16 bytes")
        if not 0 <= self.request_type <= 0xFF:
            raise ValueError("request_type is a byte")


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: float
    event: AuditEvent
    device_id: bytes | None
    po_id: int | None
    detail: str


@dataclass(frozen=True)
class Anomaly:
    id: int
    at: float
    kind: str
    device_id: bytes | None
    po_id: int | None
    detail: str
    acknowledged: bool = False


def now() -> float:
    return time.time()


def check_detail(detail: str) -> str:
    """Audit/anomaly details are short text. They must never carry key material (the store cannot
    tell a key from other hex, so this is the caller's duty); here only the size is enforced."""
    if not isinstance(detail, str):
        raise TypeError("detail is str")
    if len(detail) > DETAIL_MAX:
        raise ValueError(f"detail is at most {DETAIL_MAX} characters")
    return detail


class Transaction(ABC):
    """One atomic unit of work on the store; obtained from :meth:`Store.transaction`.

    All methods are required. A :class:`ConflictError` (or any other error) leaves the transaction
    unusable: the ``async with`` block rolls it back on exit.
    """

    # --- products -----------------------------------------------------------------------------
    @abstractmethod
    async def add_product(self, product: Product, allow_list: Iterable[bytes] | None = None) -> Product:
        """Insert a PO; ConflictError if its po_id or name exists. A non-None ``allow_list``
        makes it restricted to those IDs."""

    @abstractmethod
    async def get_product(self, po_id: int) -> Product | None: ...

    @abstractmethod
    async def get_product_by_name(self, name: str) -> Product | None: ...

    @abstractmethod
    async def list_products(self) -> list[Product]: ...

    @abstractmethod
    async def set_product_flags(self, po_id: int, *, frozen: bool | None = None,
                                revoked: bool | None = None, quantity: int | None = None) -> Product:
        """Change a PO's flags; StorageError if it does not exist."""

    @abstractmethod
    async def set_allow_list(self, po_id: int, device_ids: Iterable[bytes] | None) -> None:
        """Replace the PO's allow-list; None lifts the restriction."""

    @abstractmethod
    async def is_allowed(self, po_id: int, device_id: bytes) -> bool:
        """True if the PO is unrestricted or lists ``device_id``."""

    @abstractmethod
    async def count_devices(self, po_id: int, states: Iterable[DeviceState] | None = None) -> int: ...

    # --- devices ------------------------------------------------------------------------------
    @abstractmethod
    async def get_device(self, device_id: bytes, *, for_update: bool = False) -> Device | None:
        """The device, or None. ``for_update`` locks its row until the transaction ends."""

    @abstractmethod
    async def create_device(self, device: Device) -> Device:
        """Insert a device (row_version 1); ConflictError if it exists."""

    @abstractmethod
    async def update_device(self, device: Device) -> Device:
        """Write every field of ``device`` if its row still has ``device.row_version``; returns
        the stored copy (row_version + 1, ``updated_at`` the write's time; ``last_checkin`` as
        given — check-ins are written by :meth:`record_checkin`). ConflictError if someone else
        wrote it first."""

    @abstractmethod
    async def record_checkin(self, device_id: bytes, checkin: CheckIn) -> None:
        """Store the last check-in fields. Leaves key state and row_version alone, so check-ins
        never conflict with key updates."""

    @abstractmethod
    async def set_pending_action(self, device_ids: Iterable[bytes], action: Action) -> int:
        """Set the action for many devices (a gray-release batch); returns how many exist.
        Bumps their row_version."""

    @abstractmethod
    async def list_devices(self, *, po_id: int | None = None, state: DeviceState | None = None,
                           after: bytes | None = None, limit: int = 1000) -> list[Device]:
        """Devices ordered by device_id, those after ``after`` (for paging)."""

    # --- cloud credentials --------------------------------------------------------------------
    @abstractmethod
    async def get_credentials(self, device_id: bytes) -> DeviceCredentials: ...

    @abstractmethod
    async def list_credentials(self, device_id: bytes) -> list[CredentialRecord]:
        """Every credential of the device, any state, by version."""

    @abstractmethod
    async def next_credential_version(self, device_id: bytes) -> int:
        """1 + the highest version the device ever had (versions are never reused)."""

    @abstractmethod
    async def add_pending_credential(self, device_id: bytes, credential: CloudCredential) -> CredentialRecord:
        """Store a pending credential; ConflictError if the device has one pending already or the
        version exists."""

    @abstractmethod
    async def activate_credential(self, device_id: bytes, version: int) -> CredentialRecord:
        """The pending credential ``version`` becomes active, the active one retired. StorageError
        if ``version`` is not pending. Activating the already-active version is a no-op."""

    @abstractmethod
    async def revoke_credential(self, device_id: bytes, version: int) -> None:
        """A pending (or active, on device revocation) credential becomes revoked."""

    # --- exchanges ----------------------------------------------------------------------------
    @abstractmethod
    async def get_exchange(self, device_id: bytes, nonce_d: bytes, request_type: int) -> Exchange | None: ...

    async def get_device_and_exchange(self, device_id: bytes, nonce_d: bytes,
                                      request_type: int) -> tuple[Device | None, Exchange | None]:
        """What every request reads first: its device, locked as ``get_device(for_update=True)``,
        then the exchange stored for it. A backend may read both in one statement."""
        device = await self.get_device(device_id, for_update=True)
        return device, await self.get_exchange(device_id, nonce_d, request_type)

    @abstractmethod
    async def put_exchange(self, exchange: Exchange) -> None:
        """Store an answer; ConflictError if that (device_id, nonce_d, request_type) has one."""

    @abstractmethod
    async def prune_exchanges(self, older_than: float) -> int:
        """Delete answers stored before ``older_than`` (epoch seconds); returns how many."""

    # --- audit log and anomalies --------------------------------------------------------------
    @abstractmethod
    async def audit(self, event: AuditEvent | str, *, device_id: bytes | None = None,
                    po_id: int | None = None, detail: str = "") -> int:
        """Append an entry (its time is the store's clock); returns its id. Never put key
        material in ``detail``. The log is append-only: the schema refuses updates and deletes."""

    @abstractmethod
    async def list_audit(self, *, device_id: bytes | None = None, po_id: int | None = None,
                         event: AuditEvent | str | None = None, since: float | None = None,
                         after_id: int = 0, limit: int = 1000) -> list[AuditEntry]: ...

    @abstractmethod
    async def count_audit(self, event: AuditEvent | str, *, po_id: int | None = None,
                          since: float | None = None) -> int:
        """How many entries (for rate checks, e.g. activations of a PO in the last hour)."""

    @abstractmethod
    async def add_anomaly(self, kind: str, *, device_id: bytes | None = None, po_id: int | None = None,
                          detail: str = "") -> int:
        """Record an anomaly (and its ANOMALY audit entry); returns its id."""

    @abstractmethod
    async def list_anomalies(self, *, po_id: int | None = None, acknowledged: bool | None = None,
                             limit: int = 1000) -> list[Anomaly]: ...

    @abstractmethod
    async def acknowledge_anomaly(self, anomaly_id: int) -> None: ...


class Store(ABC):
    """A database holding the agent's state.

    Lifecycle: ``make_store``/the backend's constructor → ``await open()`` (connects, applies the
    schema migrations, checks the KEK against the database) → ``transaction()`` any number of
    times, from many tasks at once → ``await close()``. ``async with store:`` does open/close;
    ``open_store()`` returns an opened one.

    Required: :meth:`open`, :meth:`close`, :meth:`transaction`. :meth:`run` (transaction +
    retry on conflict) is provided.
    """

    #: "sqlite" or "postgresql".
    dialect: str

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """``async with store.transaction() as tx:`` — commit on normal exit, roll back on an
        exception (which propagates)."""

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def run(self, work: Callable[[Transaction], Awaitable[T]], *, attempts: int = 5) -> T:
        """Run ``work(tx)`` in a transaction, again on ConflictError (up to ``attempts`` times).
        ``work`` must be safe to re-run: no side effects outside the transaction."""
        if attempts < 1:
            raise ValueError("attempts >= 1")
        for attempt in range(attempts):
            try:
                async with self.transaction() as tx:
                    return await work(tx)
            except ConflictError:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

