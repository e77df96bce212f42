"""Policies of the agent: who may get keys, and what counts as an anomaly.

- **One ID → one AK** (paper: "one ID requesting multiple tokens"): a PK ``PROV_HELLO`` for an ID
  whose provisioning completed is refused and raised as the anomaly ``duplicate_provisioning``,
  unless an operator reset that ID (``otakey device reset``).
- **Leaked-PK signs**: a first activation beyond the PO's quantity (``quantity_exceeded``), an ID
  outside the PO's allow-list (``not_allowed``), or more first activations per window than the
  configured threshold (``activation_rate``) are anomalies; with ``freeze_on_anomaly`` the PO is
  frozen too, so no further device of it can provision until an operator looks.
- A frozen or revoked PO, and a revoked device, are refused.
- **Rate limit per source address** (token bucket): over the limit, the agent answers RETRY.

Refusals are domain errors (:class:`Refusal`); the service maps them to ``ERROR(REFUSED)`` in one
place, records them in the audit log and stores the answer, so a duplicate gets the same one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from otakey.store import AuditEvent, Device, DeviceState, Product, Transaction

from .config import PolicyConfig


class Refusal(Exception):
    """An authenticated request that a policy refuses: wire ``ERROR(REFUSED)``.

    ``reason`` goes to the audit log; ``anomaly`` (a kind) is raised to the operator when set;
    ``freeze`` freezes the request's PO.
    """

    def __init__(self, reason: str, *, anomaly: str | None = None, freeze: bool = False,
                 po_id: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.anomaly = anomaly
        self.freeze = freeze
        self.po_id = po_id


class RetryLater(Exception):
    """Try again later (rate limit, cloud unavailable): wire ``ERROR(RETRY)``; nothing stored."""


class _Bucket:
    __slots__ = ("last", "tokens")

    def __init__(self, tokens: float, last: float) -> None:
        self.tokens = tokens
        self.last = last


class SourceLimiter:
    """Token bucket per source address. In memory on purpose: losing it on a restart only
    forgives a burst, nothing that matters for keys."""

    MAX_SOURCES = 50_000

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def allow(self, source: str) -> bool:
        if self._rate <= 0:
            return True
        t = self._clock()
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= self.MAX_SOURCES:
                self._evict(t)
            bucket = self._buckets[source] = _Bucket(self._burst, t)
        bucket.tokens = min(self._burst, bucket.tokens + (t - bucket.last) * self._rate)
        bucket.last = t
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def _evict(self, t: float) -> None:
        # Drop buckets that have refilled completely: they hold no information any more.
        full = self._burst / self._rate
        for key in [k for k, b in self._buckets.items() if t - b.last >= full]:
            del self._buckets[key]
        if len(self._buckets) >= self.MAX_SOURCES:
            self._buckets.clear()


class Policy:
    """The checks, given a transaction. Stateless apart from the source limiter."""

    def __init__(self, config: PolicyConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock = clock
        self.sources = SourceLimiter(config.source_rate, config.source_burst)

    def allow_source(self, source: str) -> bool:
        return self.sources.allow(source)

    async def check_provisioning(self, tx: Transaction, product: Product, device: Device | None,
                                 device_id: bytes) -> None:
        """Stage 2 for ``device_id`` under ``product``'s PK; raises :class:`Refusal`."""
        po = product.po_id
        if product.revoked:
            raise Refusal("PO revoked", po_id=po)
        if product.frozen:
            raise Refusal("PO frozen", po_id=po)
        if device is not None:
            if device.state is DeviceState.REVOKED:
                raise Refusal("device revoked", po_id=po)
            if device.po_id != po:
                raise Refusal(f"device belongs to PO {device.po_id}", anomaly="po_mismatch", po_id=po)
            if device.provisioned_at is not None or device.state is DeviceState.ACTIVE:
                raise Refusal("ID already provisioned", anomaly="duplicate_provisioning", po_id=po)
        if not await tx.is_allowed(po, device_id):
            raise Refusal("ID not in the PO's allow-list", anomaly="not_allowed", po_id=po,
                          freeze=self.config.freeze_on_anomaly)
        if device is None and await tx.count_devices(po) >= product.quantity:
            raise Refusal(f"PO quantity {product.quantity} reached", anomaly="quantity_exceeded", po_id=po,
                          freeze=self.config.freeze_on_anomaly)
        await self._check_rate(tx, product)

    async def _check_rate(self, tx: Transaction, product: Product) -> None:
        cfg = self.config
        if cfg.max_activations <= 0:
            return
        since = self._clock() - cfg.activation_window
        # Stage-2 offers are audited as ISSUED with the PO; rotations carry no PO (service.py).
        issued = await tx.count_audit(AuditEvent.ISSUED, po_id=product.po_id, since=since)
        if issued < cfg.max_activations:
            return
        detail = f"{issued} first activations in {cfg.activation_window:.0f} s (limit {cfg.max_activations})"
        if cfg.freeze_on_anomaly:
            raise Refusal("activation rate above the limit", anomaly="activation_rate", po_id=product.po_id,
                          freeze=True)
        # Without freezing the request goes on; raise the anomaly once per window, not per device.
        recent = await tx.list_anomalies(po_id=product.po_id, acknowledged=False)
        if not any(a.kind == "activation_rate" and a.at >= since for a in recent):
            await tx.add_anomaly("activation_rate", po_id=product.po_id, detail=detail)

    @staticmethod
    def check_device(device: Device) -> None:
        """Any AK request: a revoked device is refused."""
        if device.state is DeviceState.REVOKED:
            raise Refusal("device revoked", po_id=device.po_id)
