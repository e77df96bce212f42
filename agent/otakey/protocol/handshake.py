"""Both sides of every flow of protocol §3/§4 as pure state machines (no I/O, injectable RNG).

:class:`DeviceSession` is the device side (what the C state machine does, minus timing and
flash): it holds a :class:`~otakey.protocol.keystore.KeystoreState` and "commits" new states in
memory. :class:`ReferenceAgent` is a small in-memory agent: product orders with their PK,
per-device AK current/pending, cloud credential current/pending, and the exchange table keyed by
(device_id, nonce_d) whose stored answers make duplicates idempotent.

RNG draw order (the C device follows the same order, tests/vectors/flows.json records it):
device — at an exchange start ``nonce_d`` (16), then ``eph_priv`` (32, X25519 flows only), then
the IV (16) of the first message; every later device message draws its IV (16) just before
sealing. Agent — on the first answer of an exchange ``nonce_a`` (16), then ``eph_priv`` (32,
X25519 flows only), then any new cloud credential, then the IV (16); later answers draw their IV.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum, IntEnum

from otakey.errors import EnvelopeError
from otakey.protocol.cloudsession import SessionOpen, SessionResult, SessionStatus
from otakey.protocol.envelope import (
    ZERO_NONCE,
    ErrorMessage,
    Header,
    derive_ak,
    error_reply_for,
    fingerprint,
    is_error_message,
    open_message,
    seal,
    x25519_public,
    x25519_shared,
)
from otakey.protocol.keystore import KeystoreState
from otakey.protocol.messages import (
    Action,
    Checkin,
    CheckinReply,
    CloudConfirm,
    CloudCredential,
    CloudRequest,
    CloudResult,
    CloudUpdate,
    Empty,
    ErrorCode,
    Hello,
    KeyKind,
    MsgType,
    Offer,
    Platform,
    decode_body,
    reject,
)

Rng = Callable[[int], bytes]


def system_rng(n: int) -> bytes:
    return os.urandom(n)


class ScriptedRng:
    """Deterministic RNG for tests and vectors: hands out the given chunks in order and records
    every draw as (what, bytes). ``what`` names come from the caller's ``label`` calls."""

    def __init__(self, chunks: list[bytes] | None = None, fallback_seed: bytes = b"otakey") -> None:
        self._chunks = list(chunks or [])
        self._counter = 0
        self._seed = fallback_seed
        self.draws: list[bytes] = []

    def __call__(self, n: int) -> bytes:
        if self._chunks:
            chunk = self._chunks.pop(0)
            if len(chunk) != n:
                raise ValueError(f"scripted RNG chunk of {len(chunk)} bytes, {n} asked")
        else:
            # A counter-mode stream keeps unscripted draws deterministic too.
            import hashlib

            out = b""
            while len(out) < n:
                out += hashlib.sha256(self._seed + self._counter.to_bytes(8, "little")).digest()
                self._counter += 1
            chunk = out[:n]
        self.draws.append(chunk)
        return chunk


class DeviceState(Enum):
    NO_KEYS = "no_keys"
    IDLE = "idle"
    PROV_WAIT_OFFER = "prov_wait_offer"
    PROV_WAIT_ACK = "prov_wait_ack"
    AKROT_WAIT_OFFER = "akrot_wait_offer"
    AKROT_WAIT_ACK = "akrot_wait_ack"
    CLOUD_WAIT_UPDATE = "cloud_wait_update"
    CLOUD_WAIT_SESSION = "cloud_wait_session"
    CLOUD_WAIT_ACK = "cloud_wait_ack"
    CHECKIN_WAIT_REPLY = "checkin_wait_reply"
    REVOKED = "revoked"


class LastError(IntEnum):
    """Device error codes reported in the next check-in's ``last_error``."""

    NONE = 0
    AGENT_REJECTED = 1  # the agent answered ERROR(REJECTED)
    AGENT_REFUSED = 2
    AGENT_RETRY = 3
    TIMEOUT = 4
    CLOUD_REFUSED = 5  # the cloud refused a new credential (fell back)


@dataclass(frozen=True)
class DeviceOutput:
    """What the device does after an input: an agent message to send, a cloud session to ask
    the gateway for, or nothing (``dropped`` says the input was refused and why)."""

    send: bytes | None = None
    session: SessionOpen | None = None
    dropped: str | None = None
    done: bool = False


_WAITING = {
    DeviceState.PROV_WAIT_OFFER: MsgType.PROV_OFFER,
    DeviceState.PROV_WAIT_ACK: MsgType.ACK,
    DeviceState.AKROT_WAIT_OFFER: MsgType.AK_ROTATE_OFFER,
    DeviceState.AKROT_WAIT_ACK: MsgType.ACK,
    DeviceState.CLOUD_WAIT_UPDATE: MsgType.CLOUD_UPDATE,
    DeviceState.CLOUD_WAIT_ACK: MsgType.ACK,
    DeviceState.CHECKIN_WAIT_REPLY: MsgType.CHECKIN_REPLY,
}
# States after the nonce_a of the exchange is known (ACK must echo it).
_HAS_NONCE_A = {DeviceState.PROV_WAIT_ACK, DeviceState.AKROT_WAIT_ACK, DeviceState.CLOUD_WAIT_ACK,
                DeviceState.CLOUD_WAIT_SESSION}


class DeviceSession:
    """The device side. ``keystore`` is the active record; ``fallback`` the previous one still
    intact in the other area (None after a PK scrub or an invalidation)."""

    def __init__(self, device_id: bytes, keystore: KeystoreState | None, rng: Rng = system_rng,
                 fw_version: int = 0x010000, app_hash: bytes = bytes(32)) -> None:
        if len(device_id) != 12:
            raise ValueError("device_id is 12 bytes")
        self.device_id = bytes(device_id)
        self.keystore = keystore
        self.fallback: KeystoreState | None = None
        self.rng = rng
        self.fw_version = fw_version
        self.app_hash = app_hash
        self.state = DeviceState.IDLE if keystore is not None else DeviceState.NO_KEYS
        self.last_error = LastError.NONE
        self.pending_action = Action.NONE
        self.nonce_d = ZERO_NONCE
        self.nonce_a = ZERO_NONCE
        self._eph_priv: bytes | None = None
        self._session_request_id = 0
        self.commits: list[KeystoreState] = []

    # -- helpers ---------------------------------------------------------------------------

    def _ks(self) -> KeystoreState:
        if self.keystore is None:
            raise ValueError("device has no keys")
        return self.keystore

    def _commit(self, new: KeystoreState, keep_fallback: bool) -> None:
        old = self._ks()
        new = replace(new, generation=old.generation + 1)
        # The PK scrub (flash-layout §3 step 6) leaves no fallback record behind.
        self.fallback = old if keep_fallback and not old.has_pk else None
        self.keystore = new
        self.commits.append(new)

    def _seal(self, msg_type: int, key_kind: int, key_ref: int, root: bytes, body: bytes,
              nonce_a: bytes) -> bytes:
        iv = self.rng(16)
        header = Header(msg_type, key_kind, key_ref, self.device_id, self.nonce_d, nonce_a)
        return seal(header, root, iv, body)

    def _start(self, with_eph: bool) -> None:
        if self.state not in (DeviceState.IDLE,):
            raise ValueError(f"cannot start an exchange in state {self.state.value}")
        self.nonce_d = self.rng(16)
        self.nonce_a = ZERO_NONCE
        self._eph_priv = self.rng(32) if with_eph else None

    def _ak_key(self) -> tuple[int, bytes]:
        ks = self._ks()
        if ks.ak is None or ks.ak_version is None:
            raise ValueError("device has no AK")
        return ks.ak_version, ks.ak

    # -- starting exchanges ------------------------------------------------------------------

    def start_provisioning(self) -> bytes:
        ks = self._ks()
        if ks.pk is None:
            raise ValueError("device has no PK")
        self._start(with_eph=True)
        assert self._eph_priv is not None
        body = Hello(x25519_public(self._eph_priv)).encode()
        self.state = DeviceState.PROV_WAIT_OFFER
        return self._seal(MsgType.PROV_HELLO, KeyKind.PK, ks.po_id, ks.pk, body, ZERO_NONCE)

    def start_ak_rotation(self) -> bytes:
        version, ak = self._ak_key()
        self._start(with_eph=True)
        assert self._eph_priv is not None
        body = Hello(x25519_public(self._eph_priv)).encode()
        self.state = DeviceState.AKROT_WAIT_OFFER
        return self._seal(MsgType.AK_ROTATE_HELLO, KeyKind.AK, version, ak, body, ZERO_NONCE)

    def start_cloud_request(self) -> bytes:
        version, ak = self._ak_key()
        have = self._ks().cloud.version if self._ks().cloud is not None else 0  # type: ignore[union-attr]
        self._start(with_eph=False)
        self.state = DeviceState.CLOUD_WAIT_UPDATE
        return self._seal(MsgType.CLOUD_REQUEST, KeyKind.AK, version, ak, CloudRequest(have).encode(),
                          ZERO_NONCE)

    def checkin_body(self) -> Checkin:
        ks = self._ks()
        version, ak = self._ak_key()
        cloud = ks.cloud
        return Checkin(
            ak_version=version,
            cloud_version=cloud.version if cloud else 0,
            cloud_platform=cloud.platform if cloud else Platform.NONE,
            ak_fp=fingerprint(ak),
            cloud_fp=fingerprint(cloud.secret) if cloud else bytes(16),
            fw_version=self.fw_version,
            app_hash=self.app_hash,
            last_error=self.last_error,
        )

    def start_checkin(self) -> bytes:
        version, ak = self._ak_key()
        body = self.checkin_body().encode()
        self._start(with_eph=False)
        self.state = DeviceState.CHECKIN_WAIT_REPLY
        return self._seal(MsgType.CHECKIN, KeyKind.AK, version, ak, body, ZERO_NONCE)

    def start_next(self) -> bytes | None:
        """The exchange a device starts when idle, in the C device's order: provision while it
        holds PK, else the action the agent asked for, else its first cloud credential, else a
        check-in."""
        if self.state != DeviceState.IDLE:
            return None
        if self._ks().has_pk:
            return self.start_provisioning()
        if self.pending_action == Action.ROTATE_AK:
            self.pending_action = Action.NONE
            return self.start_ak_rotation()
        if self.pending_action == Action.UPDATE_CLOUD:
            self.pending_action = Action.NONE
            return self.start_cloud_request()
        if self._ks().cloud is None:
            return self.start_cloud_request()
        return self.start_checkin()

    def timeout(self) -> None:
        """The exchange timed out: give it up; a later exchange uses a fresh nonce_d."""
        if self.state in _WAITING or self.state == DeviceState.CLOUD_WAIT_SESSION:
            if self.state not in (DeviceState.PROV_WAIT_ACK, DeviceState.AKROT_WAIT_ACK,
                                  DeviceState.CLOUD_WAIT_ACK):
                self.last_error = LastError.TIMEOUT
            self.state = DeviceState.IDLE
            self._eph_priv = None

    # -- receiving -------------------------------------------------------------------------

    def _lookup(self, h: Header) -> bytes | None:
        ks = self.keystore
        if ks is None or h.device_id != self.device_id:
            return None
        if h.key_kind == KeyKind.PK and ks.pk is not None and h.key_ref == ks.po_id:
            return ks.pk
        if h.key_kind == KeyKind.AK and ks.ak is not None and h.key_ref == ks.ak_version:
            return ks.ak
        return None

    def receive(self, message: bytes) -> DeviceOutput:
        """Handle an agent message. Anything not for the current exchange is dropped and changes
        no state."""
        expected = _WAITING.get(self.state)
        if is_error_message(message):
            return self._receive_error(message)
        try:
            header, body = open_message(message, self._lookup)
        except EnvelopeError as exc:
            return DeviceOutput(dropped=getattr(exc, "reason", "rejected"))
        # Step 7: the exchange's nonces, and the message the state waits for.
        if expected is None or header.type != expected or header.nonce_d != self.nonce_d:
            return DeviceOutput(dropped="nonce_or_state")
        if self.state in _HAS_NONCE_A and header.nonce_a != self.nonce_a:
            return DeviceOutput(dropped="nonce_or_state")
        if self.state not in _HAS_NONCE_A and header.nonce_a == ZERO_NONCE:
            return DeviceOutput(dropped="nonce_or_state")
        try:
            parsed = decode_body(header.type, body)
            return self._dispatch(header, parsed)
        except EnvelopeError as exc:
            return DeviceOutput(dropped=getattr(exc, "reason", "rejected"))

    def _receive_error(self, message: bytes) -> DeviceOutput:
        try:
            err = ErrorMessage.unpack(message)
        except EnvelopeError:
            return DeviceOutput(dropped="error_message")
        if (self.state not in _WAITING or err.device_id != self.device_id
                or err.nonce_d != self.nonce_d):
            return DeviceOutput(dropped="nonce_or_state")
        if self.state in (DeviceState.PROV_WAIT_ACK, DeviceState.AKROT_WAIT_ACK,
                          DeviceState.CLOUD_WAIT_ACK):
            # Keys are already final; an ERROR for the confirm changes nothing stored.
            self.state = DeviceState.IDLE
            return DeviceOutput(done=True)
        self.last_error = {ErrorCode.REJECTED: LastError.AGENT_REJECTED,
                           ErrorCode.REFUSED: LastError.AGENT_REFUSED,
                           ErrorCode.RETRY: LastError.AGENT_RETRY}[ErrorCode(err.code)]
        self.state = DeviceState.IDLE
        self._eph_priv = None
        return DeviceOutput(done=True)

    def _dispatch(self, header: Header, parsed: object) -> DeviceOutput:
        ks = self._ks()
        if self.state in (DeviceState.PROV_WAIT_OFFER, DeviceState.AKROT_WAIT_OFFER):
            assert isinstance(parsed, Offer) and self._eph_priv is not None
            current = ks.ak_version or 0
            if self.state == DeviceState.AKROT_WAIT_OFFER and parsed.ak_version <= current:
                raise reject("ak_version")
            shared = x25519_shared(self._eph_priv, parsed.eph_pub)
            ak = derive_ak(shared, self.nonce_d, header.nonce_a, self.device_id, ks.po_name.encode())
            self.nonce_a = header.nonce_a
            self._eph_priv = None
            rotating = self.state == DeviceState.AKROT_WAIT_OFFER
            self._commit(replace(ks, pk=None, ak_version=parsed.ak_version, ak=ak), keep_fallback=True)
            confirm = MsgType.AK_ROTATE_CONFIRM if rotating else MsgType.PROV_CONFIRM
            self.state = DeviceState.AKROT_WAIT_ACK if rotating else DeviceState.PROV_WAIT_ACK
            return DeviceOutput(send=self._seal(confirm, KeyKind.AK, parsed.ak_version, ak, b"",
                                                self.nonce_a))
        if self.state == DeviceState.CLOUD_WAIT_UPDATE:
            assert isinstance(parsed, CloudUpdate)
            cred = parsed.credential
            if ks.cloud is not None and cred.version <= ks.cloud.version:
                raise reject("cloud_version")
            self.nonce_a = header.nonce_a
            self._commit(replace(ks, cloud=cred), keep_fallback=True)
            self.state = DeviceState.CLOUD_WAIT_SESSION
            self._session_request_id = (self._session_request_id + 1) & 0xFF
            topic = f"devices/{cred.client_id}/status"
            return DeviceOutput(session=SessionOpen(self._session_request_id, cred, topic, b"online"))
        if self.state in (DeviceState.PROV_WAIT_ACK, DeviceState.AKROT_WAIT_ACK,
                          DeviceState.CLOUD_WAIT_ACK):
            assert isinstance(parsed, Empty)
            self.state = DeviceState.IDLE
            return DeviceOutput(done=True)
        if self.state == DeviceState.CHECKIN_WAIT_REPLY:
            assert isinstance(parsed, CheckinReply)
            self.last_error = LastError.NONE
            if parsed.action == Action.REVOKED:
                self.state = DeviceState.REVOKED
            else:
                self.pending_action = Action(parsed.action)
                self.state = DeviceState.IDLE
            return DeviceOutput(done=True)
        raise reject("state")  # pragma: no cover - _WAITING covers every state

    def session_result(self, result: SessionResult) -> DeviceOutput:
        """The gateway's answer to the test session of a new credential (test before confirm)."""
        if self.state != DeviceState.CLOUD_WAIT_SESSION or result.request_id != self._session_request_id:
            return DeviceOutput(dropped="nonce_or_state")
        ks = self._ks()
        assert ks.cloud is not None
        version = ks.cloud.version
        if result.status == SessionStatus.CONNECTED:
            outcome = CloudResult.OK
        else:
            # Invalidate the new record: the previous one (other area) is active again, and the
            # boot rule then erases the invalidated area, so no fallback is left.
            if self.fallback is None:
                raise ValueError("no fallback record to return to")
            self.keystore, self.fallback = self.fallback, None
            self.last_error = LastError.CLOUD_REFUSED
            outcome = CloudResult.CLOUD_REFUSED
        ak_version, ak = self._ak_key()
        self.state = DeviceState.CLOUD_WAIT_ACK
        return DeviceOutput(send=self._seal(MsgType.CLOUD_CONFIRM, KeyKind.AK, ak_version, ak,
                                            CloudConfirm(version, outcome).encode(), self.nonce_a))


# === agent side ================================================================================


@dataclass
class ProductOrder:
    po_id: int
    name: str
    pk: bytes = field(repr=False)
    quantity: int | None = None
    frozen: bool = False


@dataclass
class PendingAk:
    version: int
    ak: bytes = field(repr=False)
    nonce_d: bytes


@dataclass
class AgentDevice:
    device_id: bytes
    po_id: int
    ak_version: int | None = None
    ak: bytes | None = field(default=None, repr=False)
    pending_ak: PendingAk | None = None
    completed: bool = False
    cloud: CloudCredential | None = None
    cloud_pending: CloudCredential | None = None
    revoked: bool = False
    action: Action = Action.NONE
    last_checkin: Checkin | None = None


@dataclass
class Exchange:
    device_id: bytes
    nonce_d: bytes
    kind: str  # "prov", "akrot", "cloud", "checkin"
    nonce_a: bytes
    version: int = 0  # AK version offered, or cloud version sent
    answers: dict[int, bytes] = field(default_factory=dict)


CredentialIssuer = Callable[[bytes, int, Rng], CloudCredential]


def default_issuer(device_id: bytes, version: int, rng: Rng) -> CloudCredential:
    """A Mosquitto dynsec credential with a random password (the real adapter replaces this)."""
    return CloudCredential(version, Platform.MOSQUITTO, "mqtt://127.0.0.1:1883", device_id.hex(),
                           device_id.hex(), rng(24).hex().encode())


class ReferenceAgent:
    """In-memory agent for tests and vectors. ``handle(message) -> answer`` never raises on bad
    input: it answers ERROR and changes no state. ``anomalies`` and ``events`` record what a real
    agent would raise to the operator or tell the cloud adapter."""

    def __init__(self, rng: Rng = system_rng, issuer: CredentialIssuer = default_issuer) -> None:
        self.rng = rng
        self.issuer = issuer
        self.orders: dict[int, ProductOrder] = {}
        self.devices: dict[bytes, AgentDevice] = {}
        self.exchanges: dict[tuple[bytes, bytes], Exchange] = {}
        self.anomalies: list[tuple[str, bytes]] = []
        self.events: list[tuple[str, bytes, int]] = []

    # -- operator side -----------------------------------------------------------------------

    def add_order(self, po_id: int, name: str, pk: bytes, quantity: int | None = None) -> None:
        if len(pk) != 32 or not 1 <= len(name.encode()) <= 32:
            raise ValueError("pk is 32 bytes, name 1..32")
        self.orders[po_id] = ProductOrder(po_id, name, bytes(pk), quantity)

    def set_action(self, device_id: bytes, action: Action) -> None:
        self.devices[device_id].action = action

    def revoke(self, device_id: bytes) -> None:
        self.devices[device_id].revoked = True

    # -- keys --------------------------------------------------------------------------------

    def _lookup(self, h: Header) -> bytes | None:
        if h.key_kind == KeyKind.PK:
            order = self.orders.get(h.key_ref)
            return order.pk if order is not None else None
        dev = self.devices.get(h.device_id)
        if dev is None:
            return None
        if dev.pending_ak is not None and h.key_ref == dev.pending_ak.version:
            return dev.pending_ak.ak
        if dev.ak is not None and h.key_ref == dev.ak_version:
            return dev.ak
        return None

    def _activate_pending_ak(self, dev: AgentDevice) -> None:
        assert dev.pending_ak is not None
        dev.ak_version, dev.ak = dev.pending_ak.version, dev.pending_ak.ak
        dev.pending_ak = None
        dev.completed = True
        self.events.append(("ak_active", dev.device_id, dev.ak_version))

    def _activate_pending_cloud(self, dev: AgentDevice) -> None:
        assert dev.cloud_pending is not None
        dev.cloud, dev.cloud_pending = dev.cloud_pending, None
        self.events.append(("cloud_active", dev.device_id, dev.cloud.version))

    # -- the one entry point -------------------------------------------------------------------

    def handle(self, message: bytes) -> bytes:
        try:
            header, body = open_message(message, self._lookup)
            parsed = decode_body(header.type, body)
            if header.type in (MsgType.PROV_OFFER, MsgType.AK_ROTATE_OFFER, MsgType.ACK,
                               MsgType.CLOUD_UPDATE, MsgType.CHECKIN_REPLY):
                raise reject("direction")
        except EnvelopeError:
            return error_reply_for(message, ErrorCode.REJECTED)
        try:
            return self._handle_valid(header, parsed)
        except EnvelopeError:
            return error_reply_for(message, ErrorCode.REJECTED)

    def _error(self, h: Header, code: ErrorCode) -> bytes:
        return ErrorMessage(code, h.device_id, h.nonce_d, h.nonce_a).pack()

    def _answer(self, ex: Exchange, request: Header, msg_type: int, root: bytes, key_ref: int,
                body: bytes, key_kind: int = KeyKind.AK) -> bytes:
        iv = self.rng(16)
        header = Header(msg_type, key_kind, key_ref, request.device_id, request.nonce_d, ex.nonce_a)
        answer = seal(header, root, iv, body)
        ex.answers[request.type] = answer  # persisted before it leaves (§4)
        return answer

    def _new_exchange(self, h: Header, kind: str) -> Exchange:
        # A new exchange of a kind replaces older ones of that kind for the device.
        for key in [k for k, e in self.exchanges.items() if e.device_id == h.device_id and e.kind == kind]:
            del self.exchanges[key]
        ex = Exchange(h.device_id, h.nonce_d, kind, self.rng(16))
        self.exchanges[(h.device_id, h.nonce_d)] = ex
        return ex

    def _handle_valid(self, h: Header, parsed: object) -> bytes:
        first = h.type in (MsgType.PROV_HELLO, MsgType.AK_ROTATE_HELLO, MsgType.CLOUD_REQUEST,
                           MsgType.CHECKIN)
        if first and h.nonce_a != ZERO_NONCE:
            raise reject("nonce")
        dev = self.devices.get(h.device_id)
        if h.type == MsgType.PROV_HELLO and dev is not None and dev.completed:
            self.anomalies.append(("duplicate_provisioning", h.device_id))
            return self._error(h, ErrorCode.REFUSED)
        ex = self.exchanges.get((h.device_id, h.nonce_d))
        if ex is not None and h.type in ex.answers:
            if not first and h.nonce_a != ex.nonce_a:
                raise reject("nonce")
            return ex.answers[h.type]  # a duplicate gets the stored answer, never a second key
        if h.type == MsgType.PROV_HELLO:
            assert isinstance(parsed, Hello)
            return self._prov_hello(h, parsed)
        assert dev is not None  # AK messages only verify for known devices
        is_confirm = h.type in (MsgType.PROV_CONFIRM, MsgType.AK_ROTATE_CONFIRM)
        if is_confirm:
            # Checked before anything changes: a confirm must belong to the offered exchange.
            kind = "prov" if h.type == MsgType.PROV_CONFIRM else "akrot"
            if ex is None or ex.kind != kind or h.nonce_a != ex.nonce_a or h.key_ref != ex.version:
                raise reject("nonce")
        # Any message that verifies under the pending AK proves the device committed it.
        if dev.pending_ak is not None and h.key_ref == dev.pending_ak.version:
            self._activate_pending_ak(dev)
        if dev.revoked and h.type != MsgType.CHECKIN:
            return self._error(h, ErrorCode.REFUSED)
        if is_confirm:
            assert ex is not None and dev.ak is not None
            return self._answer(ex, h, MsgType.ACK, dev.ak, h.key_ref, b"")
        if h.type == MsgType.AK_ROTATE_HELLO:
            assert isinstance(parsed, Hello)
            return self._akrot_hello(h, dev, parsed)
        if h.type == MsgType.CLOUD_REQUEST:
            return self._cloud_request(h, dev)
        if h.type == MsgType.CLOUD_CONFIRM:
            assert isinstance(parsed, CloudConfirm)
            return self._cloud_confirm(h, dev, ex, parsed)
        assert isinstance(parsed, Checkin)
        return self._checkin(h, dev, parsed)

    def _prov_hello(self, h: Header, hello: Hello) -> bytes:
        order = self.orders[h.key_ref]
        if order.frozen:
            return self._error(h, ErrorCode.REFUSED)
        dev = self.devices.get(h.device_id)
        if dev is None:
            active = sum(1 for d in self.devices.values() if d.po_id == order.po_id)
            if order.quantity is not None and active >= order.quantity:
                self.anomalies.append(("quantity_exceeded", h.device_id))
                return self._error(h, ErrorCode.REFUSED)
        elif dev.po_id != order.po_id:
            self.anomalies.append(("po_mismatch", h.device_id))
            return self._error(h, ErrorCode.REFUSED)
        ex = self._new_exchange(h, "prov")
        eph_priv = self.rng(32)
        shared = x25519_shared(eph_priv, hello.eph_pub)
        ak = derive_ak(shared, h.nonce_d, ex.nonce_a, h.device_id, order.name.encode())
        if dev is None:
            dev = AgentDevice(h.device_id, order.po_id)
            self.devices[h.device_id] = dev
        dev.pending_ak = PendingAk(1, ak, h.nonce_d)  # replaces a pending AK of an older HELLO
        ex.version = 1
        body = Offer(x25519_public(eph_priv), 1).encode()
        return self._answer(ex, h, MsgType.PROV_OFFER, order.pk, order.po_id, body, KeyKind.PK)

    def _akrot_hello(self, h: Header, dev: AgentDevice, hello: Hello) -> bytes:
        assert dev.ak is not None and dev.ak_version is not None
        if dev.action == Action.ROTATE_AK:
            dev.action = Action.NONE
        ex = self._new_exchange(h, "akrot")
        eph_priv = self.rng(32)
        shared = x25519_shared(eph_priv, hello.eph_pub)
        order = self.orders[dev.po_id]
        new_version = dev.ak_version + 1
        ak = derive_ak(shared, h.nonce_d, ex.nonce_a, h.device_id, order.name.encode())
        dev.pending_ak = PendingAk(new_version, ak, h.nonce_d)
        ex.version = new_version
        body = Offer(x25519_public(eph_priv), new_version).encode()
        return self._answer(ex, h, MsgType.AK_ROTATE_OFFER, dev.ak, dev.ak_version, body)

    def _cloud_request(self, h: Header, dev: AgentDevice) -> bytes:
        assert dev.ak is not None and dev.ak_version is not None
        if dev.action == Action.UPDATE_CLOUD:
            dev.action = Action.NONE
        ex = self._new_exchange(h, "cloud")
        if dev.cloud_pending is None:
            version = (dev.cloud.version if dev.cloud is not None else 0) + 1
            dev.cloud_pending = self.issuer(h.device_id, version, self.rng)
            self.events.append(("cloud_registered", h.device_id, version))
        # A repeated request while one is pending gets the same credential (§3.3 step 2).
        ex.version = dev.cloud_pending.version
        body = CloudUpdate(dev.cloud_pending).encode()
        return self._answer(ex, h, MsgType.CLOUD_UPDATE, dev.ak, dev.ak_version, body)

    def _cloud_confirm(self, h: Header, dev: AgentDevice, ex: Exchange | None, c: CloudConfirm) -> bytes:
        assert dev.ak is not None and dev.ak_version is not None
        if ex is None or ex.kind != "cloud" or h.nonce_a != ex.nonce_a or c.version != ex.version:
            raise reject("nonce")
        if dev.cloud_pending is not None and dev.cloud_pending.version == c.version:
            if c.result == CloudResult.OK:
                self._activate_pending_cloud(dev)
            else:
                dev.cloud_pending = None
                self.events.append(("cloud_revoked", h.device_id, c.version))
        return self._answer(ex, h, MsgType.ACK, dev.ak, dev.ak_version, b"")

    def _checkin(self, h: Header, dev: AgentDevice, c: Checkin) -> bytes:
        assert dev.ak is not None and dev.ak_version is not None
        dev.last_checkin = c
        pending = dev.cloud_pending
        if (pending is not None and c.cloud_version == pending.version
                and c.cloud_fp == fingerprint(pending.secret)):
            self._activate_pending_cloud(dev)
        ex = self._new_exchange(h, "checkin")
        action = Action.REVOKED if dev.revoked else dev.action
        return self._answer(ex, h, MsgType.CHECKIN_REPLY, dev.ak, dev.ak_version,
                            CheckinReply(action).encode())


# Kept for callers that prefer the symmetric name.
AgentSession = ReferenceAgent
