"""A protocol-level simulated device: the Python reference device side
(:class:`~otakey.protocol.handshake.DeviceSession`) over a real TCP connection to an agent.

No CPU, no flash timing: an exchange costs a few X25519/HMAC operations and one round trip, so a
process runs hundreds of these devices at once (asyncio). Tests use it to drive every flow against
a real agent process; benchmarks use it for fleets.

The device's "flash" is its keystore records — the active one and the fallback the test-before-
confirm rule keeps — held in memory or in a small file (``keystore_path``). :meth:`cut_power`
loses everything else (exchange state, nonces, the agent's last requested action) and boots again
from the stored records, like the real device.

Faults are planned per message type, one shot each::

    dev.faults.add("drop", "send:PROV_CONFIRM")   # the confirm never reaches the agent
    dev.faults.add("drop", "recv:CLOUD_UPDATE")   # the agent's answer is lost
    dev.faults.add("dup", "send:PROV_HELLO")      # the HELLO arrives twice
    dev.faults.add("cut", "send:PROV_CONFIRM")    # power cut after the commit, before the send
    dev.faults.add("cut", "recv:PROV_OFFER")      # power cut before the offer is processed
    dev.faults.add("cut", "session")              # cloud: committed, cut before the test session

A lost message costs the device its exchange timeout; the harness skips the wait (it knows the
message is lost) and reports ``timeout`` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from otakey.gateway.transports import close_stream
from otakey.protocol.cloudsession import SessionOpen, SessionResult, SessionStatus
from otakey.protocol.envelope import ErrorMessage, is_error_message
from otakey.protocol.framing import Channel, Frame, FrameDecoder, encode_frame
from otakey.protocol.handshake import DeviceSession, DeviceState
from otakey.protocol.keystore import KeystoreState, decode_record, encode_record
from otakey.protocol.messages import Action, CloudCredential, ErrorCode, MsgType

SessionOpener = Callable[[SessionOpen], Awaitable[SessionResult]]
FAULT_KINDS = ("drop", "dup", "cut")


@dataclass(frozen=True)
class Result:
    """How one exchange ended: ``done``, ``rejected``/``refused``/``retry`` (the agent's ERROR),
    ``timeout`` (nothing usable came back), ``cut`` (power cut), ``revoked`` (check-in said so)."""

    outcome: str
    action: Action | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == "done"


@dataclass
class Faults:
    """One-shot faults by (kind, point); see the module docstring for the points."""

    planned: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add(self, kind: str, point: str, times: int = 1) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault kind is one of {FAULT_KINDS}")
        if point != "session":
            direction, _, name = point.partition(":")
            if direction not in ("send", "recv") or name not in MsgType.__members__:
                raise ValueError(f"fault point is send:<TYPE>, recv:<TYPE> or session, not {point!r}")
        self.planned[(kind, point)] += times

    def take(self, point: str) -> str | None:
        for kind in FAULT_KINDS:
            if self.planned[(kind, point)] > 0:
                self.planned[(kind, point)] -= 1
                return kind
        return None

    def clear(self) -> None:
        self.planned.clear()


# --- cloud sessions (the gateway's job in the full system) -----------------------------------------


async def mqtt_opener(request: SessionOpen) -> SessionResult:
    """Open a real MQTT session with the credential (mqtt:// endpoints): the proof that the key
    the device committed is the one the broker accepts."""
    from otakey.cloud.base import parse_mqtt_url
    from otakey.cloud.mosquitto import try_connect

    cred = request.credential
    try:
        scheme, host, port = parse_mqtt_url(cred.endpoint)
    except ValueError:
        return SessionResult(request.request_id, SessionStatus.MALFORMED, "endpoint")
    if scheme != "mqtt":
        return SessionResult(request.request_id, SessionStatus.UNREACHABLE, "only mqtt:// is reachable here")
    try:
        reason = await asyncio.to_thread(try_connect, host, port, cred.client_id, cred.username,
                                         cred.secret.decode(errors="replace"), 5.0)
    except OSError as exc:
        return SessionResult(request.request_id, SessionStatus.UNREACHABLE, str(exc)[:100])
    if reason is None:
        return SessionResult(request.request_id, SessionStatus.UNREACHABLE, "no CONNACK")
    if reason.is_failure:
        return SessionResult(request.request_id, SessionStatus.REFUSED, str(reason)[:100])
    return SessionResult(request.request_id, SessionStatus.CONNECTED)


def aws_control_opener(endpoint_url: str, region: str = "us-east-1",
                       fallback: SessionOpener = mqtt_opener) -> SessionOpener:
    """An opener for AWS IoT credentials against a control plane without an MQTT data plane
    (moto): the session "connects" when the certificate the device holds is ACTIVE there.
    Other credentials go to ``fallback``."""

    def check(cred: CloudCredential) -> tuple[int, str]:
        import boto3

        iot = boto3.client("iot", region_name=region, endpoint_url=endpoint_url,
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        try:
            pem = cred.secret.decode()
            for page in iot.get_paginator("list_certificates").paginate():
                for c in page["certificates"]:
                    desc = iot.describe_certificate(
                        certificateId=c["certificateId"])["certificateDescription"]
                    if desc["certificatePem"].strip() in pem:
                        ok = desc["status"] == "ACTIVE"
                        return (SessionStatus.CONNECTED if ok else SessionStatus.REFUSED), desc["status"]
            return SessionStatus.REFUSED, "unknown certificate"
        finally:
            iot.close()

    async def opener(request: SessionOpen) -> SessionResult:
        if not request.credential.endpoint.startswith("mqtts://"):
            return await fallback(request)
        status, detail = await asyncio.to_thread(check, request.credential)
        return SessionResult(request.request_id, status, detail)

    return opener


# --- the device ---------------------------------------------------------------------------------


class ProtocolDevice:
    """One simulated device. ``await dev.provision()``, ``rotate_ak()``, ``request_cloud()``,
    ``checkin()``; ``step()`` does what the firmware does when idle, in the order of
    :meth:`DeviceSession.start_next` (provision while it holds PK, else the action the agent asked
    for, else its first cloud credential, else a check-in).

    A connection belongs to the event loop that opened it: ``close()`` before handing the device
    to another ``asyncio.run``. The link reconnects by itself on the next exchange."""

    def __init__(self, device_id: bytes, factory: KeystoreState | None = None, *,
                 host: str = "127.0.0.1", port: int = 0, keystore_path: str | os.PathLike[str] | None = None,
                 opener: SessionOpener = mqtt_opener, timeout: float = 5.0,
                 fw_version: int = 0x010000, app_hash: bytes = bytes(32)) -> None:
        if len(device_id) != 12:
            raise ValueError("device_id is 12 bytes")
        self.device_id = bytes(device_id)
        self.host, self.port = host, port
        self.opener = opener
        self.timeout = timeout
        self.fw_version, self.app_hash = fw_version, app_hash
        self.faults = Faults()
        self.sent: list[bytes] = []          # every message put on the wire, for replay tests
        self.dropped: list[str] = []         # why the device dropped answers (dups, stale)
        self.answers: list[bytes] = []       # every answer received
        self._path = Path(keystore_path) if keystore_path is not None else None
        self._flash: tuple[bytes, bytes | None] | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        # A link belongs to the event loop that opened it: a caller may drive this device from
        # several asyncio.run() calls, and a link left over from a closed loop is dead.
        self._link_loop: asyncio.AbstractEventLoop | None = None
        self._decoder = FrameDecoder()
        self._pending: list[bytes] = []  # answers read but not consumed yet
        if self._path is not None and self._path.exists():
            self._load_flash()
        elif factory is not None:
            self._store(factory, None)
        else:
            raise ValueError("a device needs a factory keystore state or an existing keystore file")
        self.session = self._boot()

    @classmethod
    def from_product(cls, product: Any, device_id: bytes, **kwargs: Any) -> ProtocolDevice:
        """A factory-fresh device of ``product`` (a ProductFile or anything with ``factory_state()``)."""
        return cls(device_id, product.factory_state(), **kwargs)

    # -- flash -----------------------------------------------------------------------------------

    def _store(self, active: KeystoreState, fallback: KeystoreState | None) -> None:
        self._flash = (encode_record(active), None if fallback is None else encode_record(fallback))
        if self._path is not None:
            spare = self._flash[1]
            data = {"active": self._flash[0].hex(), "fallback": None if spare is None else spare.hex()}
            tmp = self._path.with_name(self._path.name + ".tmp")
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self._path)

    def _load_flash(self) -> None:
        assert self._path is not None
        data = json.loads(self._path.read_text())
        fallback = bytes.fromhex(data["fallback"]) if data["fallback"] else None
        self._flash = (bytes.fromhex(data["active"]), fallback)

    def _boot(self) -> DeviceSession:
        assert self._flash is not None
        session = DeviceSession(self.device_id, decode_record(self._flash[0]), fw_version=self.fw_version,
                                app_hash=self.app_hash)
        if self._flash[1] is not None:
            session.fallback = decode_record(self._flash[1])
        return session

    def _persist_if_changed(self) -> None:
        s = self.session
        assert s.keystore is not None and self._flash is not None
        active = encode_record(s.keystore)
        fallback = None if s.fallback is None else encode_record(s.fallback)
        if (active, fallback) != self._flash:
            self._store(s.keystore, s.fallback)

    # -- state -----------------------------------------------------------------------------------

    @property
    def keystore(self) -> KeystoreState:
        assert self.session.keystore is not None
        return self.session.keystore

    @property
    def has_pk(self) -> bool:
        return self.keystore.has_pk

    @property
    def ak_version(self) -> int | None:
        return self.keystore.ak_version

    @property
    def cloud(self) -> CloudCredential | None:
        return self.keystore.cloud

    @property
    def revoked(self) -> bool:
        return self.session.state is DeviceState.REVOKED

    # -- link ------------------------------------------------------------------------------------

    async def connect(self, host: str | None = None, port: int | None = None) -> None:
        if host is not None:
            self.host = host
        if port is not None:
            self.port = port
        await self.close()
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), self.timeout)
        self._link_loop = asyncio.get_running_loop()
        self._decoder.reset()

    def _drop_foreign_link(self) -> None:
        """Forget a link opened under another (finished) event loop: shut its socket down so the
        agent sees the disconnect; the dead loop's transport keeps the descriptor until collected."""
        if self._writer is None:
            return
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if self._link_loop is running and running is not None:
            return
        if running is None and self._link_loop is not None and not self._link_loop.is_closed():
            return  # no loop running here; the link's own loop can still close it
        sock = self._writer.get_extra_info("socket")
        self._writer = self._reader = None
        self._link_loop = None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._decoder.reset()

    async def close(self) -> None:
        self._drop_foreign_link()
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            await close_stream(writer)

    def cut_power(self) -> None:
        """Lose RAM (exchange, nonces, the agent's requested action) and the link; keep flash."""
        self._drop_foreign_link()
        if self._writer is not None:
            self._writer.close()
        self._writer = self._reader = None
        self._decoder.reset()
        self.session = self._boot()

    async def _send(self, message: bytes) -> None:
        self._drop_foreign_link()
        if self._writer is None:
            await self.connect()
        assert self._writer is not None
        self.sent.append(message)
        self._writer.write(encode_frame(Channel.AGENT, message))
        await self._writer.drain()

    async def _receive(self) -> bytes | None:
        """The next AGENT message, or None when the link broke or nothing came in time."""
        assert self._reader is not None
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    data = await self._reader.read(65536)
                    if not data:
                        raise ConnectionError("closed")
                    for event in self._decoder.feed(data):
                        if isinstance(event, Frame) and event.channel == Channel.AGENT:
                            self._pending.append(event.payload)
                    if self._pending:
                        return self._pending.pop(0)
        except (TimeoutError, ConnectionError, OSError):
            await self.close()
            return None

    async def _roundtrip(self, message: bytes, copies: int) -> list[bytes] | None:
        """Send ``copies`` copies, return the answers (None if the link broke)."""
        self._pending = []
        try:
            for _ in range(copies):
                await self._send(message)
        except (ConnectionError, OSError, TimeoutError):
            await self.close()
            return None
        answers = []
        for _ in range(copies):
            answer = self._pending.pop(0) if self._pending else await self._receive()
            if answer is None:
                break
            answers.append(answer)
        self.answers.extend(answers)
        return answers or None

    async def send_raw(self, message: bytes) -> bytes | None:
        """Send any bytes as one AGENT message and return the answer (tests of bad input)."""
        answers = await self._roundtrip(message, 1)
        return answers[0] if answers else None

    # -- exchanges -------------------------------------------------------------------------------

    def _fail(self, outcome: str, detail: str = "") -> Result:
        self.session.timeout()
        self._persist_if_changed()
        return Result(outcome, detail=detail)

    async def _exchange(self, message: bytes | None, answers: list[bytes] | None = None) -> Result:
        """Carry an exchange from ``message`` (to send) or ``answers`` (already received) on until
        the device is idle again."""
        while True:
            if answers is None:
                assert message is not None
                name = MsgType(message[1]).name
                fault = self.faults.take(f"send:{name}")
                if fault == "cut":
                    self.cut_power()
                    return Result("cut", detail=f"before sending {name}")
                if fault == "drop":
                    self.sent.append(message)
                    return self._fail("timeout", f"{name} lost")
                answers = await self._roundtrip(message, 2 if fault == "dup" else 1)
                if answers is None:
                    return self._fail("timeout", f"no answer to {name}")
            step = await self._process(answers[0], answers[1:])
            answers = None
            if isinstance(step, Result):
                return step
            message = step

    async def _process(self, first: bytes, extra: list[bytes]) -> bytes | Result:
        """One answer (and any duplicates of it): the next message to send, or how it ended."""
        if is_error_message(first):
            out = self.session.receive(first)
            self._persist_if_changed()
            if out.dropped:
                return await self._keep_listening(f"ERROR dropped: {out.dropped}")
            return Result(ErrorCode(ErrorMessage.unpack(first).code).name.lower())
        rname = MsgType(first[1]).name if first[1] in MsgType._value2member_map_ else "?"
        fault = self.faults.take(f"recv:{rname}")
        if fault == "cut":
            self.cut_power()
            return Result("cut", detail=f"on receiving {rname}")
        if fault == "drop":
            return self._fail("timeout", f"{rname} lost")
        out = self.session.receive(first)
        self._persist_if_changed()
        for dup in extra:  # a duplicate answer reaches a device that moved on: dropped
            dup_out = self.session.receive(dup)
            if dup_out.dropped:
                self.dropped.append(dup_out.dropped)
        if out.dropped:
            self.dropped.append(out.dropped)
            return await self._keep_listening(f"{rname} dropped: {out.dropped}")
        if out.session is not None:
            if self.faults.take("session") == "cut":
                self.cut_power()
                return Result("cut", detail="before the cloud test session")
            result = await self.opener(out.session)
            out = self.session.session_result(result)
            self._persist_if_changed()
        if out.send is not None:
            return out.send
        if self.session.state is DeviceState.REVOKED:
            return Result("revoked", action=Action.REVOKED)
        return Result("done", action=self.session.pending_action)

    async def _keep_listening(self, why: str) -> bytes | Result:
        """An answer that is not for the exchange in progress (a late duplicate of an earlier one,
        a forgery) is dropped and the device waits on for its own, as the firmware does, until its
        time-out; the dropped one must not be taken as the answer to the next request."""
        answer = await self._receive() if self._reader is not None else None
        if answer is None:
            return self._fail("timeout", why)
        self.answers.append(answer)
        return await self._process(answer, [])

    async def resume(self, answer: bytes) -> Result:
        """Continue the exchange in progress with an answer obtained elsewhere (e.g. the same
        request sent to another agent replica by the test)."""
        return await self._exchange(None, [answer])

    async def provision(self) -> Result:
        return await self._exchange(self.session.start_provisioning())

    async def rotate_ak(self) -> Result:
        # Doing it by hand also answers an agent's request for it, as the firmware's loop would.
        if self.session.pending_action is Action.ROTATE_AK:
            self.session.pending_action = Action.NONE
        return await self._exchange(self.session.start_ak_rotation())

    async def request_cloud(self) -> Result:
        if self.session.pending_action is Action.UPDATE_CLOUD:
            self.session.pending_action = Action.NONE
        return await self._exchange(self.session.start_cloud_request())

    async def checkin(self) -> Result:
        return await self._exchange(self.session.start_checkin())

    async def step(self) -> Result | None:
        """One exchange of the firmware's idle loop; None when revoked (it stops asking)."""
        message = self.session.start_next() if self.session.state is DeviceState.IDLE else None
        if message is None:
            return None
        return await self._exchange(message)

    async def run_until_idle(self, max_steps: int = 8) -> list[Result]:
        """Step until a check-in asks for nothing (or an exchange fails, or max_steps)."""
        results: list[Result] = []
        for _ in range(max_steps):
            message = self.session.start_next() if self.session.state is DeviceState.IDLE else None
            if message is None:
                break
            r = await self._exchange(message)
            results.append(r)
            if not r.ok or (message[1] == MsgType.CHECKIN and r.action is Action.NONE):
                break
        return results
