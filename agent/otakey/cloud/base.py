"""The cloud adapter interface: how the agent registers, activates and drops device credentials.

The two-phase update of docs/protocol.md §3.3/§6.3 maps onto the calls like this::

    cred = await adapter.register_pending(device_id, version)   # old and new both accepted
    ... store cred as pending, send CLOUD_UPDATE, device tests it and confirms ...
    await adapter.activate(device_id, cred, previous)            # only the new one accepted
    # or, when the device reported failure (result 1/2):
    await adapter.revoke_pending(device_id, cred)                # only the old one accepted

Migration to another platform is the same update with a pending credential from the new
platform's adapter; after ``activate`` there, the agent calls ``remove`` on the old platform's
adapter with the old credential.
"""

from __future__ import annotations

import asyncio
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from otakey.errors import AdapterError

#: platform name → the `platform` byte of docs/protocol.md §3.4/§3.5.
PLATFORM_CODES: dict[str, int] = {"mosquitto": 1, "aws-iot": 2}

# docs/protocol.md §3.5 field limits.
MAX_FIELD = 128
MAX_SECRET = 3200
DEVICE_ID_MAX = 32


@dataclass(frozen=True)
class CloudCredential:
    """One credential of one device on one platform (docs/protocol.md §3.5), plus ``ref``.

    ``ref`` is the adapter's own handle for it (the AWS certificate id; empty for Mosquitto). It is
    stored by the agent, passed back to the adapter, and never sent to the device.
    """

    version: int
    platform: str
    endpoint: str
    client_id: str
    username: str
    secret: bytes = field(repr=False)
    ref: str = ""

    def __post_init__(self) -> None:
        if not 1 <= self.version <= 0xFFFFFFFF:
            raise ValueError("a credential version is 1..2**32-1")
        if self.platform not in PLATFORM_CODES:
            raise ValueError(f"unknown platform {self.platform!r}")
        for name in ("endpoint", "client_id", "username"):
            if len(getattr(self, name).encode()) > MAX_FIELD:
                raise ValueError(f"{name} is longer than {MAX_FIELD} bytes")
        if not isinstance(self.secret, bytes) or len(self.secret) > MAX_SECRET:
            raise ValueError(f"the secret is bytes of at most {MAX_SECRET}")

    @property
    def platform_code(self) -> int:
        return PLATFORM_CODES[self.platform]


def device_name(device_id: bytes) -> str:
    """The name a device has in every cloud: its ID in lowercase hex (24 digits for a 96-bit UID).

    Hex keeps the name a valid MQTT topic level, dynsec username and AWS thing name.
    """
    if not isinstance(device_id, bytes | bytearray):
        raise TypeError("device_id is bytes")
    if not 1 <= len(device_id) <= DEVICE_ID_MAX:
        raise ValueError(f"device_id is 1..{DEVICE_ID_MAX} bytes")
    return bytes(device_id).hex()


def device_topic_filter(device_id: bytes) -> str:
    """The one topic tree a device may use: ``devices/<hex id>/#``."""
    return f"devices/{device_name(device_id)}/#"


_MQTT_URL = re.compile(r"^(mqtts?)://([^:/]+):(\d+)/?$")


def parse_mqtt_url(url: str) -> tuple[str, str, int]:
    """``mqtt://host:port`` → (scheme, host, port). ValueError when it is not one."""
    m = _MQTT_URL.match(url)
    if not m:
        raise ValueError(f"not an mqtt://host:port URL: {url!r}")
    return m.group(1), m.group(2), int(m.group(3))


@dataclass(frozen=True)
class Activation:
    """One item of :meth:`CloudAdapter.activate_many`."""

    device_id: bytes
    credential: CloudCredential
    previous: CloudCredential | None = None


class CloudAdapter(ABC):
    """Registers device credentials with one cloud platform.

    Lifecycle: construct with the platform's options → ``await start()`` (connects, reads fixed
    facts such as the endpoint once) → any calls below, from any number of tasks at once →
    ``await close()``. ``async with adapter:`` does start/close.

    Required methods: :meth:`register_pending`, :meth:`activate`, :meth:`revoke_pending`,
    :meth:`disable`, :meth:`remove`.
    Optional methods (defaults given): :meth:`start`/:meth:`close` (no-op), :meth:`check`
    (raises NotImplementedError), :meth:`register_many`/:meth:`activate_many` (one call after
    the other; adapters whose per-command cost dominates override them to batch).

    Every call is **idempotent**: after a crash the agent simply calls it again. Failures of the
    cloud raise :class:`~otakey.errors.AdapterError` (``AdapterTimeout`` when it did not answer);
    bad arguments raise ValueError/TypeError. Batch calls return one result per item instead,
    an AdapterError standing in for an item that failed, so one bad device does not hide the
    others' outcome.
    """

    #: the ADAPTERS key, and CloudCredential.platform of what it issues.
    platform: ClassVar[str]

    async def start(self) -> None:
        """Connect. Optional; the default does nothing."""
        return None

    async def close(self) -> None:
        """Disconnect and release resources. Optional; the default does nothing."""
        return None

    async def __aenter__(self) -> CloudAdapter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @abstractmethod
    async def register_pending(self, device_id: bytes, version: int) -> CloudCredential:
        """Register a new credential of ``version`` for the device while the device's current one
        stays valid. Calling it again for the same version replaces the earlier registration of
        that version (so a retry after a crash leaves one pending credential, not two).

        Because of that, two agent replicas must not register the same device at once: hold the
        device's row lock (``tx.get_device(id, for_update=True)``) from before this call until the
        pending credential is stored (``tx.add_pending_credential``) in the same transaction."""
        raise NotImplementedError

    @abstractmethod
    async def activate(self, device_id: bytes, credential: CloudCredential,
                       previous: CloudCredential | None = None) -> None:
        """Make ``credential`` (a registered pending one) the device's only valid credential on
        this platform: ``previous`` (the device's current credential here, if any) stops
        working. AdapterError if ``credential`` is not registered (any more)."""
        raise NotImplementedError

    @abstractmethod
    async def revoke_pending(self, device_id: bytes, credential: CloudCredential) -> None:
        """Drop a pending credential the device could not use; the current one stays valid."""
        raise NotImplementedError

    @abstractmethod
    async def disable(self, device_id: bytes, credentials: Sequence[CloudCredential] = ()) -> None:
        """Revocation: no credential of the device works any more. Records stay for forensics.
        ``credentials`` are those the agent knows of (adapters that can list a device's
        credentials by themselves may ignore it)."""
        raise NotImplementedError

    @abstractmethod
    async def remove(self, device_id: bytes, credentials: Sequence[CloudCredential] = ()) -> None:
        """The device leaves this platform (after a migration elsewhere was activated): delete
        its credentials and its per-device objects (role, policy, thing)."""
        raise NotImplementedError

    async def check(self, credential: CloudCredential) -> bool:
        """Whether the platform currently accepts ``credential``. Optional."""
        raise NotImplementedError(f"{type(self).__name__} cannot check credentials")

    async def register_many(self, requests: Sequence[tuple[bytes, int]]
                            ) -> list[CloudCredential | AdapterError]:
        """:meth:`register_pending` for each (device_id, version); results in request order."""
        out: list[CloudCredential | AdapterError] = []
        for device_id, version in requests:
            try:
                out.append(await self.register_pending(device_id, version))
            except AdapterError as exc:
                out.append(exc)
        return out

    async def activate_many(self, items: Sequence[Activation]) -> list[AdapterError | None]:
        """:meth:`activate` for each item; None where it succeeded."""
        out: list[AdapterError | None] = []
        for item in items:
            try:
                await self.activate(item.device_id, item.credential, item.previous)
                out.append(None)
            except AdapterError as exc:
                out.append(exc)
        return out


async def gather_bounded(limit: int, coros: Sequence[object]) -> list[object]:
    """Run awaitables with at most ``limit`` at once, results in order, exceptions returned."""
    sem = asyncio.Semaphore(limit)

    async def one(c: object) -> object:
        async with sem:
            return await c  # type: ignore[misc]

    return await asyncio.gather(*(one(c) for c in coros), return_exceptions=True)
