"""A seeded, frame-aware fault proxy between a device link (a gateway or a protocol-level device)
and the agent: asyncio TCP on 127.0.0.1.

Every byte stream is cut into protocol §1 frames (COBS up to 0x00). For each frame the proxy asks
the plan of the frame's *session* whether to hurt it, and how:

========== =====================================================================================
``drop``      the frame never arrives
``duplicate`` the frame arrives twice
``reorder``   the frame is held and sent after the next frame in the same direction (or after
              ``reorder_hold`` seconds when no frame follows: then it is only late)
``delay``     the frame (and, TCP being ordered, what follows it) waits ``delay`` seconds
``truncate``  the frame loses its tail; the receiver's framing drops it (bad COBS/CRC)
``flip``      1–3 bits of the payload flip and the frame is re-framed with a *valid* CRC, so the
              mangled message reaches the envelope checks (MAC, header) instead of the framing's
``close``     both TCP connections close at this frame; the frame is lost
========== =====================================================================================

Sessions. A frame on the AGENT channel names its device in clear (header bytes 8..20, protocol
§2.1), and so does the agent's answer. The caller opens a session for a device with
:meth:`FaultProxy.begin_session` (a label such as the campaign's session number) and ends its
faults with :meth:`FaultProxy.clean`. The decisions of a session come from
``random.Random(f"{seed}:{label}")`` drawn frame by frame in arrival order, so the same session
under the same seed meets the same faults at the same frames, whatever other devices do meanwhile
(that is what makes a failure replayable from (seed, session)). Frames of devices without an open
session pass untouched, unless ``connection_faults`` is set: then each connection is its own
session (label ``c<n>``).

Every fault is kept as a :class:`FaultRecord` (session, seed, direction, frame number, kind, the
message type) and logged on the ``otakey.faults`` logger. Nothing here looks inside an envelope:
the proxy sees what an attacker on the path sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from otakey.errors import FrameError
from otakey.protocol.framing import Channel, decode_frame_body, encode_frame
from otakey.protocol.messages import MsgType

log = logging.getLogger("otakey.faults")

FAULT_KINDS = ("drop", "duplicate", "reorder", "delay", "truncate", "flip", "close")
UP = "up"      # device (or gateway) → agent
DOWN = "down"  # agent → device
READ_CHUNK = 65536
_ID = slice(8, 20)


@dataclass(frozen=True)
class FaultRates:
    """Per-frame fault probabilities while a session's faults are on; each kind's weight is its
    share. ``per_frame`` is the chance that a frame is hurt at all."""

    per_frame: float = 0.2
    weights: tuple[tuple[str, float], ...] = (
        ("drop", 3.0), ("duplicate", 2.0), ("reorder", 1.0), ("delay", 2.0),
        ("truncate", 1.0), ("flip", 2.0), ("close", 1.0))

    def __post_init__(self) -> None:
        if not 0.0 <= self.per_frame <= 1.0:
            raise ValueError("per_frame is a probability")
        for kind, weight in self.weights:
            if kind not in FAULT_KINDS:
                raise ValueError(f"unknown fault kind {kind!r}; one of {FAULT_KINDS}")
            if weight < 0:
                raise ValueError("weights are >= 0")
        if not any(w > 0 for _, w in self.weights):
            raise ValueError("at least one fault kind needs a weight > 0")

    @classmethod
    def only(cls, kind: str, per_frame: float = 1.0) -> FaultRates:
        """Every fault is ``kind`` (tests of one kind)."""
        return cls(per_frame, ((kind, 1.0),))


@dataclass(frozen=True)
class FaultRecord:
    """One injected fault, enough to find it again: (seed, session) replays the session."""

    seq: int
    seed: int
    session: str
    connection: int
    direction: str
    frame: int          # the session's frame number in that direction (0-based)
    kind: str
    msg_type: str       # of the hurt frame, before any mangling ("?" if it was no message)
    device: str         # hex device id ("" when the frame named none)
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Plan:
    label: str
    rng: random.Random
    faults_on: bool = True
    max_faults: int = 3
    injected: int = 0
    frames: Counter[str] = field(default_factory=Counter)


@dataclass
class _Held:
    data: bytes
    timer: asyncio.TimerHandle | None = None


def _msg_name(payload: bytes) -> str:
    if len(payload) < 2:
        return "?"
    member = MsgType._value2member_map_.get(payload[1])
    return member.name if isinstance(member, MsgType) else "?"


class FaultProxy:
    """``await FaultProxy(agent_host, agent_port, seed=S).start()``; clients connect to ``.port``.

    Lifecycle: ``start()`` → ``begin_session``/``clean`` any number of times while traffic flows
    → ``close()``. ``set_upstream`` points new connections at another agent (a restarted one).
    """

    def __init__(self, upstream_host: str, upstream_port: int, *, seed: int,
                 rates: FaultRates | None = None, max_faults_per_session: int = 3,
                 delay_range: tuple[float, float] = (0.01, 0.4), long_delay: float = 0.0,
                 reorder_hold: float = 0.3, connection_faults: bool = False,
                 listen_host: str = "127.0.0.1") -> None:
        if max_faults_per_session < 0:
            raise ValueError("max_faults_per_session is >= 0")
        if not 0 <= delay_range[0] <= delay_range[1]:
            raise ValueError("delay_range is (low, high) with 0 <= low <= high")
        self.upstream_host, self.upstream_port = upstream_host, upstream_port
        self.seed = seed
        self.rates = rates or FaultRates()
        self.max_faults = max_faults_per_session
        self.delay_range = delay_range
        self.long_delay = long_delay  # > 0: one delay in ten waits this long (past a device's timeout)
        self.reorder_hold = reorder_hold
        self.drain_timeout = 10.0  # how long the agent may take to finish after end-of-stream
        self.connection_faults = connection_faults
        self.listen_host = listen_host
        self.port = 0
        self.records: list[FaultRecord] = []
        self.counters: Counter[str] = Counter()
        self._plans: dict[bytes, _Plan] = {}
        self._conn_plans: dict[int, _Plan] = {}
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._links: set[_Link] = set()
        self._next_conn = 0
        self._kinds = [k for k, _ in self.rates.weights]
        self._weights = [w for _, w in self.rates.weights]

    # -- control -----------------------------------------------------------------------------------

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._on_client, self.listen_host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        # Closing the links ends their pumps, and each handler returns by itself: a handler task
        # that is cancelled instead makes asyncio 3.11's stream callback log a spurious error.
        for link in list(self._links):
            link.close()
        tasks = list(self._conns)
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=5.0)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def set_upstream(self, host: str, port: int) -> None:
        """New connections go to ``host:port``; open ones keep their agent until they close."""
        self.upstream_host, self.upstream_port = host, port

    def begin_session(self, device_id: bytes, label: str, *, faults: bool = True,
                      max_faults: int | None = None) -> None:
        """From now on the device's frames follow the plan of session ``label``."""
        if len(device_id) != 12:
            raise ValueError("device_id is 12 bytes")
        self._plans[bytes(device_id)] = _Plan(str(label), random.Random(f"{self.seed}:{label}"), faults,
                                              self.max_faults if max_faults is None else max_faults)

    def clean(self, device_id: bytes) -> None:
        """The device's faults stop: a clean link from now on (frames already held still go out)."""
        plan = self._plans.get(bytes(device_id))
        if plan is not None:
            plan.faults_on = False

    def session_faults(self, device_id: bytes) -> int:
        plan = self._plans.get(bytes(device_id))
        return 0 if plan is None else plan.injected

    def forget(self, device_id: bytes) -> None:
        self._plans.pop(bytes(device_id), None)

    async def settle(self, device_id: bytes, timeout: float = 15.0) -> None:
        """End the device's links as a clean boundary between a faulty phase and what follows:
        frames the proxy still holds or delays for them are dropped, the device side is closed,
        the agent gets end-of-stream and finishes what it already received; returns once every
        such link is gone (or after ``timeout``). Without this a frame delayed past the device's
        time-out could reach the agent after the device had moved on."""
        device = bytes(device_id)
        links = [link for link in self._links if device in link.devices]
        for link in links:
            link.drain()
        deadline = asyncio.get_running_loop().time() + timeout
        while any(link in self._links for link in links):
            if asyncio.get_running_loop().time() > deadline:
                for link in links:
                    link.close()
                return
            await asyncio.sleep(0.01)

    def disconnect(self, device_id: bytes) -> int:
        """Close every connection that carried the device's frames (its link then starts over,
        with nothing of the faulty one in flight); returns how many."""
        links = [link for link in self._links if bytes(device_id) in link.devices]
        for link in links:
            link.close()
        return len(links)

    @property
    def injected(self) -> int:
        return len(self.records)

    # -- one connection ----------------------------------------------------------------------------

    async def _on_client(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        conn = self._next_conn
        self._next_conn += 1
        try:
            try:
                u_reader, u_writer = await asyncio.wait_for(
                    asyncio.open_connection(self.upstream_host, self.upstream_port), 5.0)
            except (OSError, TimeoutError):
                self.counters["upstream_refused"] += 1
                return
            link = _Link(self, conn, c_writer, u_writer)
            self._links.add(link)
            up = asyncio.create_task(link.pump(c_reader, UP))
            down = asyncio.create_task(link.pump(u_reader, DOWN))
            pumps = [up, down]
            try:
                done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
                if up in done and not down.done() and not link.closed:
                    # The device side ended: pass the end of stream on (TCP half-close), so the
                    # agent finishes what it received, and close once it has closed its side.
                    link.half_close_upstream()
                    await asyncio.wait([down], timeout=self.drain_timeout)
            finally:
                for p in pumps:
                    p.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
                link.close()
                self._links.discard(link)
                with contextlib.suppress(Exception):
                    await u_writer.wait_closed()
        finally:
            c_writer.close()
            with contextlib.suppress(Exception):
                await c_writer.wait_closed()
            self._conn_plans.pop(conn, None)
            self._conns.discard(task)

    def _plan_for(self, conn: int, device: bytes | None) -> _Plan | None:
        if device is not None and device in self._plans:
            return self._plans[device]
        if self.connection_faults:
            plan = self._conn_plans.get(conn)
            if plan is None:
                plan = self._conn_plans[conn] = _Plan(f"c{conn}", random.Random(f"{self.seed}:c{conn}"),
                                                      True, self.max_faults)
            return plan
        return None

    def decide(self, conn: int, direction: str, raw: bytes) -> tuple[str | None, _Plan | None, bytes | None]:
        """(fault kind or None, the session's plan, the frame's payload when it decodes)."""
        try:
            frame = decode_frame_body(raw[:-1])
        except FrameError:
            frame = None
        payload = frame.payload if frame is not None and frame.channel == Channel.AGENT else None
        device = bytes(payload[_ID]) if payload is not None and len(payload) >= 20 else None
        plan = self._plan_for(conn, device)
        if plan is None:
            return None, None, payload
        plan.frames[direction] += 1
        # Drawn for every frame of the session, hurt or not, so that the sequence of decisions
        # depends only on the session's own frames.
        hit = plan.rng.random() < self.rates.per_frame
        kind = plan.rng.choices(self._kinds, self._weights)[0]
        if not (plan.faults_on and hit and plan.injected < plan.max_faults):
            return None, plan, payload
        plan.injected += 1
        return kind, plan, payload

    def record(self, plan: _Plan, conn: int, direction: str, kind: str, payload: bytes | None,
               detail: str = "") -> None:
        device = payload[_ID].hex() if payload is not None and len(payload) >= 20 else ""
        rec = FaultRecord(len(self.records), self.seed, plan.label, conn, direction,
                          plan.frames[direction] - 1, kind, _msg_name(payload or b""), device, detail)
        self.records.append(rec)
        self.counters[kind] += 1
        log.info("fault seed=%d session=%s conn=%d dir=%s frame=%d kind=%s msg=%s %s", rec.seed, rec.session,
                 conn, direction, rec.frame, kind, rec.msg_type, detail)


class _Link:
    """The two directions of one proxied connection."""

    def __init__(self, proxy: FaultProxy, conn: int, c_writer: asyncio.StreamWriter,
                 u_writer: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.conn = conn
        self.writers = {UP: u_writer, DOWN: c_writer}
        self.held: dict[str, _Held | None] = {UP: None, DOWN: None}
        self.devices: set[bytes] = set()
        self.closed = False
        self.draining = False

    def close(self) -> None:
        self.closed = True
        self._drop_held()
        for w in self.writers.values():
            w.close()

    def _drop_held(self) -> None:
        for direction, held in self.held.items():
            if held is not None and held.timer is not None:
                held.timer.cancel()
            self.held[direction] = None

    def drain(self) -> None:
        """Nothing more goes to the agent (held and delayed frames die here); the device side is
        closed, which ends the UP pump and half-closes the agent's side."""
        self.draining = True
        self._drop_held()
        self.writers[DOWN].close()

    def half_close_upstream(self) -> None:
        if not self.draining:
            self._flush_held(UP)  # a reordered frame the device did send still goes out
        w = self.writers[UP]
        with contextlib.suppress(OSError, RuntimeError):
            if not w.is_closing() and w.can_write_eof():
                w.write_eof()

    def _write(self, direction: str, data: bytes) -> None:
        w = self.writers[direction]
        if self.closed or w.is_closing() or (self.draining and direction == UP):
            return
        w.write(data)

    def _flush_held(self, direction: str) -> None:
        held = self.held[direction]
        if held is None:
            return
        self.held[direction] = None
        if held.timer is not None:
            held.timer.cancel()
        self._write(direction, held.data)

    async def pump(self, reader: asyncio.StreamReader, direction: str) -> None:
        buf = bytearray()
        while not self.closed:
            try:
                data = await reader.read(READ_CHUNK)
            except (ConnectionError, OSError):
                return
            if not data:
                return
            start = 0
            while True:
                end = data.find(0, start)
                if end < 0:
                    buf += data[start:]
                    break
                buf += data[start:end + 1]
                start = end + 1
                raw = bytes(buf)
                buf.clear()
                if raw == b"\x00":
                    self._write(direction, raw)
                    continue
                await self._one(direction, raw)
                if self.closed:
                    return
            w = self.writers[direction]
            with contextlib.suppress(ConnectionError, OSError):
                await w.drain()

    async def _one(self, direction: str, raw: bytes) -> None:
        proxy = self.proxy
        kind, plan, payload = proxy.decide(self.conn, direction, raw)
        proxy.counters["frames"] += 1
        if payload is not None and len(payload) >= 20:
            self.devices.add(bytes(payload[_ID]))
        if kind is None or plan is None:
            self._write(direction, raw)
            self._flush_held(direction)
            return
        rng = plan.rng
        if kind == "drop":
            proxy.record(plan, self.conn, direction, kind, payload)
            self._flush_held(direction)
        elif kind == "duplicate":
            proxy.record(plan, self.conn, direction, kind, payload)
            self._write(direction, raw)
            self._write(direction, raw)
            self._flush_held(direction)
        elif kind == "reorder":
            proxy.record(plan, self.conn, direction, kind, payload)
            self._flush_held(direction)  # one frame held at a time
            held = _Held(raw)
            loop = asyncio.get_running_loop()
            held.timer = loop.call_later(proxy.reorder_hold, self._flush_held, direction)
            self.held[direction] = held
        elif kind == "delay":
            low, high = proxy.delay_range
            seconds = rng.uniform(low, high)
            if proxy.long_delay > 0 and rng.random() < 0.1:
                seconds = proxy.long_delay
            proxy.record(plan, self.conn, direction, kind, payload, f"{seconds:.3f}s")
            with contextlib.suppress(ConnectionError, OSError):
                await self.writers[direction].drain()
            await asyncio.sleep(seconds)
            self._write(direction, raw)
            self._flush_held(direction)
        elif kind == "truncate":
            keep = rng.randrange(1, max(2, len(raw) - 1))
            proxy.record(plan, self.conn, direction, kind, payload, f"{keep}/{len(raw) - 1} bytes")
            self._write(direction, raw[:keep] + b"\x00")
            self._flush_held(direction)
        elif kind == "flip":
            if payload is not None and payload:
                mangled = bytearray(payload)
                bits = []
                for _ in range(rng.randint(1, 3)):
                    bit = rng.randrange(len(mangled) * 8)
                    mangled[bit // 8] ^= 1 << (bit % 8)
                    bits.append(bit)
                proxy.record(plan, self.conn, direction, kind, payload, "bits " + ",".join(map(str, bits)))
                self._write(direction, encode_frame(Channel.AGENT, bytes(mangled)))
            else:
                pos = rng.randrange(max(1, len(raw) - 1))
                mangled = bytearray(raw)
                mangled[pos] ^= 1 << rng.randrange(8)
                proxy.record(plan, self.conn, direction, kind, payload, f"raw byte {pos}")
                self._write(direction, bytes(mangled))
            self._flush_held(direction)
        elif kind == "close":
            proxy.record(plan, self.conn, direction, kind, payload)
            self.close()
        else:  # pragma: no cover - FaultRates validates the kinds
            raise AssertionError(kind)
