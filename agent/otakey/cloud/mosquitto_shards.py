"""Mosquitto dynamic security over several brokers (shards): each device lives on one broker,
chosen by a hash of its ID, and its credentials name that broker as their endpoint.

Why: dynsec rewrites its whole JSON file after every command that changes something, so a
command costs time in proportion to the clients and roles the broker holds (~12 µs per device
here: ~12 ms per command at 1,000 devices, ~19 ms at 2,000; ``otakey bench dynsec``). A fleet of
N devices on K brokers pays N/K per command, and the K brokers write in parallel: updating a whole
fleet goes from O(N²) to O(N²/K) broker time. Batching commands into one control message does not
help — the file is still rewritten per command. (Measured trade-offs: bench/README.md.)

The shard of a device is fixed by its ID (SHA-256 of the ID, modulo the number of shards), so
every agent replica given the same broker list agrees. Credentials are always handled on the
broker their ``endpoint`` names (they may predate a change of the shard list): activating a new
credential on another broker than the previous one removes the device from the old broker
(``remove``), the same as a migration. Every call stays idempotent, as the single-broker adapter's.

Platform name, wire platform code and the per-broker layout (one role per device, one client per
credential version) are those of :class:`~.mosquitto.MosquittoAdapter`: devices cannot tell a
sharded deployment from a single broker.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from otakey.errors import AdapterError

from .base import Activation, CloudAdapter, CloudCredential
from .mosquitto import MosquittoAdapter


class ShardedMosquittoAdapter(CloudAdapter):
    """``shards``: one keyword-option dict per broker, as :class:`MosquittoAdapter` takes them
    (``url``, ``admin_username``, ``admin_password``, optional ``device_endpoint``, ``timeout``).
    The order matters: it defines which device lives where."""

    platform = "mosquitto"

    def __init__(self, shards: Sequence[dict[str, Any]]) -> None:
        if not shards:
            raise ValueError("at least one shard")
        self.shards = [MosquittoAdapter(**options) for options in shards]
        self._by_endpoint: dict[str, MosquittoAdapter] = {}
        for adapter in self.shards:
            if adapter.device_endpoint in self._by_endpoint:
                raise ValueError(f"two shards give devices the same endpoint {adapter.device_endpoint}")
            self._by_endpoint[adapter.device_endpoint] = adapter

    def shard_of(self, device_id: bytes) -> MosquittoAdapter:
        digest = hashlib.sha256(bytes(device_id)).digest()
        return self.shards[int.from_bytes(digest[:8], "big") % len(self.shards)]

    def holder(self, credential: CloudCredential) -> MosquittoAdapter:
        """The broker a credential was registered on (its endpoint)."""
        adapter = self._by_endpoint.get(credential.endpoint)
        if adapter is None:
            raise AdapterError(f"no configured Mosquitto shard serves {credential.endpoint}")
        return adapter

    async def start(self) -> None:
        results = await asyncio.gather(*(a.start() for a in self.shards), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            await self.close()
            raise failed[0]

    async def close(self) -> None:
        await asyncio.gather(*(a.close() for a in self.shards), return_exceptions=True)

    async def control(self, commands: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        """The same raw dynsec commands on every shard (for tools and tests)."""
        return list(await asyncio.gather(*(a.control(commands) for a in self.shards)))

    # --- registration -------------------------------------------------------------------------
    async def register_pending(self, device_id: bytes, version: int) -> CloudCredential:
        return await self.shard_of(device_id).register_pending(device_id, version)

    async def register_many(self, requests: Sequence[tuple[bytes, int]]
                            ) -> list[CloudCredential | AdapterError]:
        groups: dict[int, list[int]] = defaultdict(list)
        for i, (device_id, _) in enumerate(requests):
            groups[self.shards.index(self.shard_of(device_id))].append(i)
        out: list[CloudCredential | AdapterError] = [AdapterError("not attempted")] * len(requests)

        async def one(shard: int, idx: list[int]) -> None:
            results = await self.shards[shard].register_many([requests[i] for i in idx])
            for i, r in zip(idx, results, strict=True):
                out[i] = r

        await asyncio.gather(*(one(s, idx) for s, idx in groups.items()))
        return out

    # --- activation ---------------------------------------------------------------------------
    async def activate(self, device_id: bytes, credential: CloudCredential,
                       previous: CloudCredential | None = None) -> None:
        new = self.holder(credential)
        old = self.holder(previous) if previous is not None and previous.platform == self.platform else None
        if old is None or old is new:
            await new.activate(device_id, credential, previous)
            return
        # The device moved broker: the new credential becomes its only one, then it leaves the old.
        await new.activate(device_id, credential, None)
        assert previous is not None
        await old.remove(device_id, [previous])

    async def activate_many(self, items: Sequence[Activation]) -> list[AdapterError | None]:
        out: list[AdapterError | None] = [None] * len(items)
        groups: dict[int, list[int]] = defaultdict(list)
        moved: list[int] = []
        for i, item in enumerate(items):
            try:
                new = self.holder(item.credential)
                prev = item.previous
                old = self.holder(prev) if prev is not None and prev.platform == self.platform else None
            except AdapterError as exc:
                out[i] = exc
                continue
            if old is None or old is new:
                groups[self.shards.index(new)].append(i)
            else:
                moved.append(i)

        async def group(shard: int, idx: list[int]) -> None:
            results = await self.shards[shard].activate_many([items[i] for i in idx])
            for i, r in zip(idx, results, strict=True):
                out[i] = r

        async def one(i: int) -> None:
            item = items[i]
            try:
                await self.activate(item.device_id, item.credential, item.previous)
            except AdapterError as exc:
                out[i] = exc

        await asyncio.gather(*(group(s, idx) for s, idx in groups.items()), *(one(i) for i in moved))
        return out

    async def revoke_pending(self, device_id: bytes, credential: CloudCredential) -> None:
        await self.holder(credential).revoke_pending(device_id, credential)

    def _by_holder(self, device_id: bytes, credentials: Sequence[CloudCredential]
                   ) -> dict[int, list[CloudCredential]]:
        """The device's credentials of this platform by the shard holding each; the device's
        home shard is always listed (its role lives there)."""
        groups: dict[int, list[CloudCredential]] = {self.shards.index(self.shard_of(device_id)): []}
        for c in credentials:
            if c.platform == self.platform:
                groups.setdefault(self.shards.index(self.holder(c)), []).append(c)
        return groups

    async def disable(self, device_id: bytes, credentials: Sequence[CloudCredential] = ()) -> None:
        for shard, creds in self._by_holder(device_id, credentials).items():
            await self.shards[shard].disable(device_id, creds)

    async def remove(self, device_id: bytes, credentials: Sequence[CloudCredential] = ()) -> None:
        for shard, creds in self._by_holder(device_id, credentials).items():
            await self.shards[shard].remove(device_id, creds)

    async def check(self, credential: CloudCredential) -> bool:
        return await self.holder(credential).check(credential)
