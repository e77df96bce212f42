"""Background work of the agent that no device message triggers.

- **Revocations.** ``otakey device revoke`` / ``otakey product revoke`` only change the store (the
  CLI holds no cloud login); the agent then disables the revoked devices' credentials in their
  clouds and marks them revoked in the store. Cloud first, store second: a crash in between
  repeats an idempotent ``disable``.
- **Pruning.** Stored answers older than ``exchange_ttl`` are deleted; a duplicate that late is a
  replay, and a replayed HELLO of a completed ID is refused anyway.

Runs at start-up (so work left by a crash is redone at once) and every ``reconcile_interval``.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from otakey.errors import AdapterError, StorageError
from otakey.store import AuditEvent, CredentialRecord, DeviceState, Transaction
from otakey.store.base import now

from .agentlog import EventLog
from .config import Services

PAGE = 500
_Page = list[tuple[bytes, list[CredentialRecord]]]


async def disable_revoked(services: Services, log: EventLog) -> int:
    """Disable every still-usable credential of revoked devices; returns how many devices."""
    store = services.store
    done = 0
    after: bytes | None = None
    while True:
        async def page(tx: Transaction, after: bytes | None = after) -> _Page:
            out = []
            for dev in await tx.list_devices(state=DeviceState.REVOKED, after=after, limit=PAGE):
                creds = await tx.get_credentials(dev.device_id)
                live = [c for c in (creds.current, creds.pending) if c is not None]
                out.append((dev.device_id, live))
            return out

        batch = await store.run(page)
        if not batch:
            return done
        after = batch[-1][0]
        for device_id, live in batch:
            if not live:
                continue
            by_platform: dict[str, list[CredentialRecord]] = defaultdict(list)
            for c in live:
                by_platform[c.credential.platform].append(c)
            try:
                for platform, records in by_platform.items():
                    adapter = services.adapter(platform)
                    if adapter is None:
                        log.warning("revocation_pending", device=device_id, platform=platform,
                                    reason="no adapter for the platform")
                        raise AdapterError(f"no adapter for {platform}")
                    await adapter.disable(device_id, [c.credential for c in records])
            except AdapterError as exc:
                log.warning("revocation_retry", device=device_id, reason=str(exc))
                continue

            async def mark(tx: Transaction, device_id: bytes = device_id,
                           live: list[CredentialRecord] = live) -> None:
                for c in live:
                    await tx.revoke_credential(device_id, c.version)
                    await tx.audit(AuditEvent.CLOUD_REVOKED, device_id=device_id,
                                   detail=f"v{c.version}: device revoked")

            await store.run(mark)
            log.info("device_disabled", device=device_id, credentials=len(live))
            done += 1


async def prune(services: Services, log: EventLog) -> int:
    cutoff = now() - services.config.exchange_ttl

    async def work(tx: Transaction) -> int:
        return await tx.prune_exchanges(cutoff)

    n = await services.store.run(work)
    if n:
        log.info("exchanges_pruned", count=n)
    return n


async def reconcile_once(services: Services, log: EventLog) -> None:
    try:
        await disable_revoked(services, log)
        await prune(services, log)
    except StorageError as exc:
        log.error("reconcile_failed", exc)


async def reconcile_forever(services: Services, log: EventLog) -> None:
    while True:
        await reconcile_once(services, log)
        await asyncio.sleep(services.config.reconcile_interval)
