"""One handler per request type, and the pipeline around them (docs/protocol.md §2–§4, §6).

For every request, :meth:`Processor.handle` runs, in one store transaction:

1. the duplicate check — the exchange table keyed by (device_id, nonce_d, type): the same bytes
   get the stored answer, other bytes under a used nonce are rejected;
2. the key lookup (the PO's PK, or the device's current or pending AK of ``key_ref``) and
   :func:`~otakey.protocol.envelope.open_message` (steps 1–6), then the nonces (step 7);
3. the handler, which applies the policies first and only then changes state;
4. the answer stored with the new state, committed **before** it is sent.

Domain outcomes are exceptions mapped to the wire in one place (:meth:`Processor.handle`):
:class:`Rejected` → ``ERROR(REJECTED)`` with nothing stored; :class:`~.policy.Refusal` →
``ERROR(REFUSED)``, audited and stored like any answer; :class:`~.policy.RetryLater` (cloud down,
rate limit) and a store failure → ``ERROR(RETRY)`` with everything rolled back.

Cloud calls happen inside the transaction, after the device row is locked and before the store
records their effect. A crash between the two leaves the store *behind* the cloud, never ahead:
the next message that needs the step redoes it, and every adapter call is idempotent.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from otakey.cloud.base import CloudCredential as StoredCredential
from otakey.errors import AdapterError, EnvelopeError, StorageError
from otakey.protocol.envelope import (
    MAX_MESSAGE,
    MIN_MESSAGE,
    OVERHEAD,
    ZERO_NONCE,
    ErrorMessage,
    Header,
    check_header,
    derive_ak,
    error_reply_for,
    fingerprint,
    open_message,
    seal,
)
from otakey.protocol.messages import (
    Checkin,
    CheckinReply,
    CloudConfirm,
    CloudRequest,
    CloudResult,
    CloudUpdate,
    ErrorCode,
    Hello,
    KeyKind,
    MsgType,
    Offer,
    decode_body,
    reject,
)
from otakey.protocol.messages import CloudCredential as WireCredential
from otakey.store import (
    Action,
    AuditEvent,
    CheckIn,
    CredentialRecord,
    Device,
    DeviceCredentials,
    DeviceState,
    Exchange,
    Product,
    Transaction,
)
from otakey.store.base import now

from .agentlog import EventLog
from .config import Services
from .policy import Refusal, RetryLater

REQUEST_TYPES = frozenset({MsgType.PROV_HELLO, MsgType.PROV_CONFIRM, MsgType.AK_ROTATE_HELLO,
                           MsgType.AK_ROTATE_CONFIRM, MsgType.CLOUD_REQUEST, MsgType.CLOUD_CONFIRM,
                           MsgType.CHECKIN})
# The first message of an exchange carries nonce_a = 0 (§4).
FIRST_TYPES = frozenset({MsgType.PROV_HELLO, MsgType.AK_ROTATE_HELLO, MsgType.CLOUD_REQUEST, MsgType.CHECKIN})

#: The operator's per-device choice of cloud platform is an OPERATOR audit entry with this detail
#: prefix (written by ``otakey fleet migrate``); the newest one wins.
CLOUD_TARGET_PREFIX = "cloud_target="

Crash = Callable[[str], None]
PO_NAME_CACHE = 4096  # POs whose names a Processor remembers (a fleet has few)


_TYPE_NAMES = {int(t): t.name for t in MsgType}


def _type_name(msg_type: int) -> str:
    """``MsgType(msg_type).name`` from a table: named twice or more per request (logs, crash
    points), where building the enum member each time showed in the profile."""
    return _TYPE_NAMES[msg_type]


class Rejected(Exception):
    """The uniform error of §2.2: the request fails a check; nothing is stored."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _reason(exc: EnvelopeError) -> str:
    return str(getattr(exc, "reason", "envelope"))


def pre_check(raw: bytes) -> Header:
    """§2.2 steps 1–2 without any key: enough to find the exchange. Raises Rejected."""
    n = len(raw)
    if not MIN_MESSAGE <= n <= MAX_MESSAGE or (n - OVERHEAD) % 16:
        raise Rejected("length")
    try:
        header = Header.unpack(raw)
        check_header(header)
    except EnvelopeError as exc:
        raise Rejected(_reason(exc)) from None
    if header.type not in REQUEST_TYPES:
        raise Rejected("direction")
    return header


def ephemeral_exchange(priv: bytes, peer_pub: bytes) -> tuple[bytes, bytes]:
    """(our public key, shared secret) of the ephemeral X25519 key ``priv`` with the device's key.

    The same as ``x25519_public(priv)`` and ``x25519_shared(priv, peer_pub)`` of the envelope
    module, with one key object for both: building it derives the public key, the costliest step
    of a HELLO, and the two calls did it twice. An all-zero result (low-order point) is the
    uniform error, as there."""
    if len(priv) != 32 or len(peer_pub) != 32:
        raise ValueError("X25519 keys are 32 bytes")
    key = X25519PrivateKey.from_private_bytes(priv)
    try:
        shared = key.exchange(X25519PublicKey.from_public_bytes(peer_pub))
    except ValueError:
        raise reject("low_order_point") from None  # cryptography refuses the all-zero secret itself
    if not any(shared):
        raise reject("low_order_point")
    return key.public_key().public_bytes_raw(), shared


def to_wire(cred: StoredCredential) -> WireCredential:
    """The store's credential (with the adapter's ``ref``) as sent to the device (§3.5)."""
    return WireCredential(cred.version, cred.platform_code, cred.endpoint, cred.client_id, cred.username,
                          cred.secret)


@dataclass
class Context:
    """What one request works on, loaded once at the start of its transaction."""

    header: Header
    device: Device | None
    product: Product | None

    def lookup(self, h: Header) -> bytes | None:
        if h.key_kind == KeyKind.PK:
            p = self.product
            return p.pk if p is not None and p.po_id == h.key_ref else None
        d = self.device
        if d is None or h.key_kind != KeyKind.AK or h.key_ref == 0:
            return None
        if d.ak_pending is not None and h.key_ref == d.ak_pending_version:
            return d.ak_pending
        if d.ak is not None and h.key_ref == d.ak_version:
            return d.ak
        return None


@dataclass(frozen=True)
class Outcome:
    answer: bytes
    result: str  # "answered", "duplicate", "refused"


class Processor:
    """The request pipeline and the per-type handlers, over the frozen :class:`Services`."""

    def __init__(self, services: Services, log: EventLog, crash: Crash,
                 rng: Callable[[int], bytes] = os.urandom) -> None:
        self.s = services
        self.log = log
        self.crash = crash
        self.rng = rng
        self._po_names: dict[int, bytes] = {}
        self._handlers: dict[int, Callable[[Transaction, Context, object], Awaitable[bytes]]] = {
            MsgType.PROV_HELLO: self._prov_hello,
            MsgType.PROV_CONFIRM: self._ak_confirm,
            MsgType.AK_ROTATE_HELLO: self._akrot_hello,
            MsgType.AK_ROTATE_CONFIRM: self._ak_confirm,
            MsgType.CLOUD_REQUEST: self._cloud_request,
            MsgType.CLOUD_CONFIRM: self._cloud_confirm,
            MsgType.CHECKIN: self._checkin,
        }

    # ------------------------------------------------------------------ the one mapping to the wire

    async def handle(self, raw: bytes, source: str) -> bytes:
        """Answer one AGENT-channel message. Never raises for anything a peer can send."""
        if not self.s.policy.allow_source(source):
            self.log.warning("rate_limited", source=source)
            return error_reply_for(raw, ErrorCode.RETRY)
        try:
            header = pre_check(raw)
            outcome = await self.s.store.run(lambda tx: self._unit(tx, raw, header))
        except Rejected as exc:
            self.log.warning("rejected", source=source, reason=exc.reason, **_ids(raw))
            return error_reply_for(raw, ErrorCode.REJECTED)
        except RetryLater as exc:
            self.log.warning("retry", source=source, reason=str(exc), **_ids(raw))
            return error_reply_for(raw, ErrorCode.RETRY)
        except StorageError as exc:
            self.log.error("store_failed", exc, source=source, **_ids(raw))
            return error_reply_for(raw, ErrorCode.RETRY)
        except Exception as exc:
            # A bug must not take the gateway's session down with it; the transaction was rolled
            # back, the device retries, and the log says what broke.
            self.log.error("handler_failed", exc, source=source, **_ids(raw))
            return error_reply_for(raw, ErrorCode.RETRY)
        self.crash(f"after_commit:{_type_name(header.type)}")
        # Check-ins are the bulk of the traffic of a quiet fleet: only at debug level.
        emit = self.log.debug if header.type == MsgType.CHECKIN else self.log.info
        emit("answered", source=source, type=_type_name(header.type), result=outcome.result,
             device=header.device_id)
        return outcome.answer

    async def _unit(self, tx: Transaction, raw: bytes, header: Header) -> Outcome:
        digest = hashlib.sha256(raw).digest()
        # The device row is locked first: on PostgreSQL two replicas handling the same device
        # queue here, and the second then sees the first one's exchange and state.
        device, stored = await tx.get_device_and_exchange(header.device_id, header.nonce_d, header.type)
        product = await tx.get_product(header.key_ref) if header.key_kind == KeyKind.PK else None
        ctx = Context(header, device, product)
        if stored is not None:
            if hmac.compare_digest(stored.request_hash, digest):
                return Outcome(stored.answer, "duplicate")  # never a second key (§4)
            raise Rejected("nonce_reused")
        try:
            h, body = open_message(raw, ctx.lookup)
            parsed = decode_body(h.type, body)
        except EnvelopeError as exc:
            raise Rejected(_reason(exc)) from None
        if h.type in FIRST_TYPES and h.nonce_a != ZERO_NONCE:
            raise Rejected("nonce")
        result = "answered"
        try:
            answer = await self._handlers[h.type](tx, ctx, parsed)
        except Refusal as refusal:
            answer = await self._refuse(tx, ctx, refusal)
            result = "refused"
        except EnvelopeError as exc:  # e.g. a low-order X25519 point: the uniform error
            raise Rejected(_reason(exc)) from None
        except AdapterError as exc:
            raise RetryLater(f"cloud: {exc}") from exc
        answer_nonce_a = answer[36:52]
        await tx.put_exchange(Exchange(device_id=h.device_id, nonce_d=h.nonce_d, request_type=h.type,
                                       nonce_a=answer_nonce_a, answer=answer, request_hash=digest))
        self.crash(f"before_commit:{_type_name(h.type)}")
        return Outcome(answer, result)

    async def _refuse(self, tx: Transaction, ctx: Context, r: Refusal) -> bytes:
        h = ctx.header
        po = r.po_id if r.po_id is not None else (ctx.device.po_id if ctx.device else None)
        await tx.audit(AuditEvent.REFUSED, device_id=h.device_id, po_id=po,
                       detail=f"{_type_name(h.type)}: {r.reason}")
        if r.anomaly is not None:
            detail = r.reason
            if r.freeze and po is not None:
                product = await tx.get_product(po)
                if product is not None and not product.frozen:
                    await tx.set_product_flags(po, frozen=True)
                    detail += "; PO frozen"
            await tx.add_anomaly(r.anomaly, device_id=h.device_id, po_id=po, detail=detail)
            self.log.warning("anomaly", kind=r.anomaly, device=h.device_id, po=po, detail=detail)
        self.log.info("refused", type=_type_name(h.type), device=h.device_id, reason=r.reason)
        return ErrorMessage(ErrorCode.REFUSED, h.device_id, h.nonce_d, h.nonce_a).pack()

    # ------------------------------------------------------------------------------ answers

    def _seal(self, request: Header, msg_type: int, key_kind: int, key_ref: int, root: bytes,
              nonce_a: bytes, body: bytes) -> bytes:
        header = Header(msg_type, key_kind, key_ref, request.device_id, request.nonce_d, nonce_a)
        return seal(header, root, self.rng(16), body)

    # ------------------------------------------------------------------------------ AK state

    async def _activate_pending_ak(self, tx: Transaction, dev: Device) -> Device:
        """The device proved it holds its pending AK: it becomes current, the old one is refused."""
        assert dev.ak_pending is not None
        first = dev.ak_version == 0
        version = dev.ak_pending_version
        action = dev.pending_action
        if action is Action.ROTATE_AK and not first:
            action = Action.NONE
        new = replace(dev, ak=dev.ak_pending, ak_version=version, ak_pending=None, ak_pending_version=0,
                      state=DeviceState.ACTIVE if dev.state is not DeviceState.REVOKED else dev.state,
                      provisioned_at=dev.provisioned_at or now(), pending_action=action)
        new = await tx.update_device(new)
        if first:
            await tx.audit(AuditEvent.CONFIRMED, device_id=dev.device_id, po_id=dev.po_id,
                           detail=f"ak v{version}")
        else:
            await tx.audit(AuditEvent.ROTATED, device_id=dev.device_id, detail=f"ak v{version}")
        self.log.info("ak_active", device=dev.device_id, version=version)
        return new

    async def _settle_ak(self, tx: Transaction, ctx: Context) -> Device:
        """Common prologue of AK requests: known device, not revoked, pending AK activated if the
        message verified under it."""
        dev = ctx.device
        assert dev is not None  # an AK message only verifies for a known device
        self.s.policy.check_device(dev)
        if dev.ak_pending is not None and ctx.header.key_ref == dev.ak_pending_version:
            dev = await self._activate_pending_ak(tx, dev)
            ctx.device = dev
        assert dev.ak is not None
        return dev

    # ------------------------------------------------------------------------------ handlers

    async def _prov_hello(self, tx: Transaction, ctx: Context, parsed: object) -> bytes:
        assert isinstance(parsed, Hello)
        h, product, dev = ctx.header, ctx.product, ctx.device
        assert product is not None
        await self.s.policy.check_provisioning(tx, product, dev, h.device_id)
        nonce_a = self.rng(16)
        # Before any write: the exchange may be the uniform error (a low-order point).
        eph_pub, shared = ephemeral_exchange(self.rng(32), parsed.eph_pub)
        ak = derive_ak(shared, h.nonce_d, nonce_a, h.device_id, product.name.encode())
        if dev is None:
            await tx.create_device(Device(device_id=h.device_id, po_id=product.po_id, ak_pending=ak,
                                          ak_pending_version=1, ak_nonce_d=h.nonce_d, ak_nonce_a=nonce_a))
        else:
            # A new HELLO replaces the pending AK of an older, unconfirmed one (§6.1 step 2).
            await tx.update_device(replace(dev, state=DeviceState.PROVISIONING, ak_pending=ak,
                                           ak_pending_version=1, ak_nonce_d=h.nonce_d, ak_nonce_a=nonce_a))
        await tx.audit(AuditEvent.ISSUED, device_id=h.device_id, po_id=product.po_id,
                       detail="ak v1 (stage 2)")
        self.log.info("ak_offered", device=h.device_id, version=1, po=product.po_id)
        body = Offer(eph_pub, 1).encode()
        return self._seal(h, MsgType.PROV_OFFER, KeyKind.PK, product.po_id, product.pk, nonce_a, body)

    async def _po_name(self, tx: Transaction, dev: Device) -> bytes:
        """The name of the device's PO, which goes into its AK. Remembered: a PO's name never
        changes and a PO is never deleted (devices reference it), and reading the row cost a
        statement and a key opening per rotation."""
        name = self._po_names.get(dev.po_id)
        if name is None:
            product = await tx.get_product(dev.po_id)
            if product is None:
                raise StorageError(f"device {dev.device_id.hex()} names a missing PO {dev.po_id}")
            name = product.name.encode()
            if len(self._po_names) >= PO_NAME_CACHE:
                self._po_names.clear()
            self._po_names[dev.po_id] = name
        return name

    async def _akrot_hello(self, tx: Transaction, ctx: Context, parsed: object) -> bytes:
        assert isinstance(parsed, Hello)
        h = ctx.header
        dev = await self._settle_ak(tx, ctx)
        assert dev.ak is not None
        po_name = await self._po_name(tx, dev)
        nonce_a = self.rng(16)
        eph_pub, shared = ephemeral_exchange(self.rng(32), parsed.eph_pub)
        version = dev.ak_version + 1
        ak = derive_ak(shared, h.nonce_d, nonce_a, h.device_id, po_name)
        await tx.update_device(replace(dev, ak_pending=ak, ak_pending_version=version, ak_nonce_d=h.nonce_d,
                                       ak_nonce_a=nonce_a))
        # No PO on rotation entries: the PO's ISSUED count measures first activations (policy.py).
        await tx.audit(AuditEvent.ISSUED, device_id=h.device_id, detail=f"ak v{version} (rotation)")
        self.log.info("ak_offered", device=h.device_id, version=version)
        body = Offer(eph_pub, version).encode()
        return self._seal(h, MsgType.AK_ROTATE_OFFER, KeyKind.AK, dev.ak_version, dev.ak, nonce_a, body)

    async def _ak_confirm(self, tx: Transaction, ctx: Context, parsed: object) -> bytes:
        h, dev = ctx.header, ctx.device
        assert dev is not None
        # Checked before anything changes: the confirm belongs to the offered exchange (§4).
        if h.nonce_d != dev.ak_nonce_d or h.nonce_a != dev.ak_nonce_a:
            raise Rejected("nonce")
        is_prov = h.type == MsgType.PROV_CONFIRM
        if is_prov != (h.key_ref == 1):
            raise Rejected("confirm_kind")
        dev = await self._settle_ak(tx, ctx)
        if dev.ak_version != h.key_ref:
            raise Rejected("nonce")  # a confirm of an AK that is neither pending nor current
        assert dev.ak is not None
        return self._seal(h, MsgType.ACK, KeyKind.AK, dev.ak_version, dev.ak, h.nonce_a, b"")

    async def _cloud_request(self, tx: Transaction, ctx: Context, parsed: object) -> bytes:
        assert isinstance(parsed, CloudRequest)
        h = ctx.header
        dev = await self._settle_ak(tx, ctx)
        creds = await tx.get_credentials(dev.device_id)
        if creds.current is not None and 0 < parsed.have_version < creds.current.version:
            # The device holds the active version (it proved it to activate it), so a request
            # from below it is a late copy of one the device gave up, not a need (§3.3 step 1).
            raise Rejected("stale_cloud_request")
        if creds.pending is not None and parsed.have_version >= creds.pending.version:
            # The device reports it committed the pending one (its confirm was lost).
            dev = await self._activate_cloud(tx, dev, creds)
            creds = await tx.get_credentials(dev.device_id)
        target = await self._target_platform(tx, dev)
        pending = creds.pending
        if pending is not None and pending.credential.platform != target:
            # The operator moved the device to another platform meanwhile: drop the stale one.
            await self._revoke_pending(tx, dev, pending, "target platform changed")
            pending = None
        if pending is None:
            adapter = self.s.adapter(target)
            if adapter is None:
                raise RetryLater(f"no adapter for platform {target}")
            version = await tx.next_credential_version(dev.device_id)
            cred = await adapter.register_pending(dev.device_id, version)
            self.crash("after_cloud:CLOUD_REQUEST")
            pending = await tx.add_pending_credential(dev.device_id, cred)
            await tx.audit(AuditEvent.CLOUD_ISSUED, device_id=dev.device_id,
                           detail=f"v{version} {cred.platform}")
            self.log.info("cloud_issued", device=dev.device_id, version=version, platform=cred.platform)
        # A repeated request while one is pending gets the same credential (§3.3 step 2).
        assert dev.ak is not None
        body = CloudUpdate(to_wire(pending.credential)).encode()
        return self._seal(h, MsgType.CLOUD_UPDATE, KeyKind.AK, dev.ak_version, dev.ak, self.rng(16), body)

    async def _cloud_confirm(self, tx: Transaction, ctx: Context, parsed: object) -> bytes:
        assert isinstance(parsed, CloudConfirm)
        h = ctx.header
        sent = await tx.get_exchange(h.device_id, h.nonce_d, MsgType.CLOUD_REQUEST)
        if sent is None or not hmac.compare_digest(sent.nonce_a, h.nonce_a):
            raise Rejected("nonce")
        dev = await self._settle_ak(tx, ctx)
        creds = await tx.get_credentials(dev.device_id)
        if creds.pending is not None and creds.pending.version == parsed.version:
            if parsed.result == CloudResult.OK:
                dev = await self._activate_cloud(tx, dev, creds)
            else:
                why = ("cloud refused it" if parsed.result == CloudResult.CLOUD_REFUSED
                       else "device could not store it")
                await self._revoke_pending(tx, dev, creds.pending, why)
                if dev.pending_action is Action.UPDATE_CLOUD:
                    dev = await tx.update_device(replace(dev, pending_action=Action.NONE))
        elif not any(c.version == parsed.version for c in await tx.list_credentials(dev.device_id)):
            raise Rejected("cloud_version")
        # else: already settled (activated by a check-in, or revoked); the ACK changes nothing.
        assert dev.ak is not None
        return self._seal(h, MsgType.ACK, KeyKind.AK, dev.ak_version, dev.ak, h.nonce_a, b"")

    async def _checkin(self, tx: Transaction, ctx: Context, parsed: object) -> bytes:
        assert isinstance(parsed, Checkin)
        h, dev = ctx.header, ctx.device
        assert dev is not None
        if dev.state is not DeviceState.REVOKED:
            dev = await self._settle_ak(tx, ctx)
        await tx.record_checkin(dev.device_id, CheckIn(
            ak_version=parsed.ak_version, cloud_version=parsed.cloud_version,
            cloud_platform=parsed.cloud_platform, ak_fp=parsed.ak_fp, cloud_fp=parsed.cloud_fp,
            fw_version=parsed.fw_version, app_hash=parsed.app_hash, last_error=parsed.last_error))
        if dev.state is DeviceState.REVOKED:
            action = Action.REVOKED
        else:
            creds = await tx.get_credentials(dev.device_id)
            pending = creds.pending
            if (pending is not None and parsed.cloud_version == pending.version
                    and hmac.compare_digest(parsed.cloud_fp, fingerprint(pending.credential.secret))):
                # The check-in proves the device committed the new secret (its confirm was lost).
                dev = await self._activate_cloud(tx, dev, creds)
                creds = await tx.get_credentials(dev.device_id)
            action = dev.pending_action
            if action is Action.NONE and self.s.adapters:
                if creds.pending is not None:
                    action = Action.UPDATE_CLOUD  # its CLOUD_UPDATE was lost: ask again
                elif creds.current is None and not await tx.list_credentials(dev.device_id):
                    action = Action.UPDATE_CLOUD  # first credentials after stage 2
        # The key of the request: a message under the old AK before its rotation completed is
        # answered under that one (the device cannot open anything else).
        root = ctx.lookup(h)
        assert root is not None
        return self._seal(h, MsgType.CHECKIN_REPLY, KeyKind.AK, h.key_ref, root, self.rng(16),
                          CheckinReply(action).encode())

    # ------------------------------------------------------------------------------ cloud two-phase

    async def _target_platform(self, tx: Transaction, dev: Device) -> str:
        chosen: str | None = None
        after = 0
        while True:  # the newest directive wins; a device has few operator entries
            entries = await tx.list_audit(device_id=dev.device_id, event=AuditEvent.OPERATOR, after_id=after)
            for entry in entries:
                if entry.detail.startswith(CLOUD_TARGET_PREFIX):
                    chosen = entry.detail[len(CLOUD_TARGET_PREFIX):].split()[0]
            if len(entries) < 1000:
                break
            after = entries[-1].id
        if chosen is not None:
            return chosen
        if self.s.default_platform is None:
            raise RetryLater("no cloud configured")
        return self.s.default_platform

    async def _activate_cloud(self, tx: Transaction, dev: Device, creds: DeviceCredentials) -> Device:
        """§3.3 step 5: the pending credential becomes the only one; cloud first, then the store."""
        new = creds.pending
        assert new is not None
        prev = creds.current
        adapter = self.s.adapter(new.credential.platform)
        if adapter is None:
            raise RetryLater(f"no adapter for platform {new.credential.platform}")
        same = prev is not None and prev.credential.platform == new.credential.platform
        await adapter.activate(dev.device_id, new.credential, prev.credential if same and prev else None)
        # A crash from here on leaves the store behind the cloud: the next proof of the new
        # credential (a check-in's fingerprint, a repeated confirm) redoes both idempotent calls.
        self.crash("after_cloud:activate")
        if prev is not None and not same:
            await self._leave_platform(tx, dev, prev)
        await tx.activate_credential(dev.device_id, new.version)
        await tx.audit(AuditEvent.CLOUD_ACTIVATED, device_id=dev.device_id,
                       detail=f"v{new.version} {new.credential.platform}")
        self.log.info("cloud_active", device=dev.device_id, version=new.version,
                      platform=new.credential.platform)
        if dev.pending_action is Action.UPDATE_CLOUD:
            dev = await tx.update_device(replace(dev, pending_action=Action.NONE))
        return dev

    async def _leave_platform(self, tx: Transaction, dev: Device, prev: CredentialRecord) -> None:
        """After a migration: the old platform forgets the device (credentials, role/thing)."""
        platform = prev.credential.platform
        old = self.s.adapter(platform)
        if old is None:
            raise RetryLater(f"no adapter for platform {platform} to remove the old credential from")
        mine = [c.credential for c in await tx.list_credentials(dev.device_id)
                if c.credential.platform == platform]
        await old.remove(dev.device_id, mine)

    async def _revoke_pending(self, tx: Transaction, dev: Device, pending: CredentialRecord,
                              why: str) -> None:
        adapter = self.s.adapter(pending.credential.platform)
        if adapter is None:
            raise RetryLater(f"no adapter for platform {pending.credential.platform}")
        await adapter.revoke_pending(dev.device_id, pending.credential)
        self.crash("after_cloud:revoke")
        await tx.revoke_credential(dev.device_id, pending.version)
        await tx.audit(AuditEvent.CLOUD_REVOKED, device_id=dev.device_id, detail=f"v{pending.version}: {why}")
        self.log.info("cloud_revoked", device=dev.device_id, version=pending.version, reason=why)


def _ids(raw: bytes) -> dict[str, object]:
    """device and type of a request for logs, when its header parses (public fields only)."""
    if len(raw) < 52:
        return {}
    return {"device": bytes(raw[8:20]), "msg_type": raw[1]}
