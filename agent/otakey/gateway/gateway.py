"""The gateway: the device's modem (DESIGN §3). One :class:`Gateway` per device link.

What it does with each frame the device sends (protocol §1 channels):

- ``AGENT`` — forwarded, unchanged, over one TCP connection to the agent (the same framing); the
  agent's frames come back to the device in the order the agent sent them. The connection is
  made at start and again after any loss, with a growing delay between attempts. Frames already
  written to a connection that dies are lost (counted in ``agent_frames_lost``): the device
  retries by protocol (§6) with a fresh ``nonce_d``. Frames that arrive while no connection is up
  wait, at most ``hold_frames`` of them and for at most ``hold_for`` seconds, and go out in order
  once connected — enough to bridge the start-up race without replaying stale exchanges.
- ``CLOUD`` — ``SESSION_OPEN`` is served here: a cloud session with exactly the credential
  presented (:mod:`.mqtt_session`), answered with ``SESSION_RESULT`` (0 connected and published,
  1 refused, 2 unreachable, 3 malformed). Sessions run concurrently with the AGENT traffic.
- ``CONSOLE`` — collected as text lines (``console_lines`` and the ``on_console`` callback):
  boot banner and device events.

Frames that fail the framing checks are counted by reason and logged; decoding goes on with the
next byte, so garbage on the line never stops the gateway. Everything the device or the agent
sends is input to check, never a reason to raise.

Lifecycle: ``await gw.start()`` (opens the device transport, starts the agent link) → traffic →
``await gw.close()``; or ``await gw.run()``, which returns when the device link ends or
:meth:`stop` is called; or ``async with Gateway(...)``. :meth:`feed_from_device` lets an
in-process device (the built-in emulator) hand its bytes over directly; call it on the gateway's
event loop. :meth:`wait_for` and :meth:`settled` let tests and harnesses wait for what the
counters say, without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from otakey.errors import FrameError, ProtocolError
from otakey.protocol.cloudsession import (
    SessionOpen,
    SessionResult,
    SessionStatus,
    SessionType,
    decode_session_message,
)
from otakey.protocol.framing import Channel, FrameDecoder, encode_frame

from .mqtt_session import DEFAULT_TIMEOUT, CloudSessions, SessionOpener
from .transports import DeviceTransport, close_stream

log = logging.getLogger("otakey.gateway")

READ_CHUNK = 65536
CONSOLE_LINE_MAX = 4096


class AgentLinkState(Enum):
    """The gateway's connection to the agent (paho's explicit connection-state habit)."""

    IDLE = "idle"                  # not started, or no agent configured
    CONNECTING = "connecting"
    CONNECTED = "connected"
    WAITING = "waiting"            # lost or refused; the next attempt is scheduled
    CLOSED = "closed"


_ALLOWED = {
    AgentLinkState.IDLE: {AgentLinkState.CONNECTING, AgentLinkState.CLOSED},
    AgentLinkState.CONNECTING: {AgentLinkState.CONNECTED, AgentLinkState.WAITING, AgentLinkState.CLOSED},
    AgentLinkState.CONNECTED: {AgentLinkState.WAITING, AgentLinkState.CLOSED},
    AgentLinkState.WAITING: {AgentLinkState.CONNECTING, AgentLinkState.CLOSED},
    AgentLinkState.CLOSED: set(),
}


@dataclass
class GatewayCounters:
    """What went through the gateway. Frames are whole protocol §1 frames."""

    frames_from_device: int = 0        # good frames of any channel
    frames_to_device: int = 0
    frames_to_agent: int = 0
    frames_from_agent: int = 0
    bad_frames: int = 0                # dropped frames from the device
    bad_frames_from_agent: int = 0     # bad framing, or a channel other than AGENT
    bad_frame_reasons: Counter[str] = field(default_factory=Counter)
    agent_connects: int = 0
    agent_connect_failures: int = 0
    agent_frames_lost: int = 0         # in flight on a lost connection, or held too long/too many
    sessions_ok: int = 0
    sessions_refused: int = 0
    sessions_unreachable: int = 0
    sessions_malformed: int = 0
    cloud_unexpected: int = 0          # well-formed CLOUD messages a device must not send
    console_lines: int = 0
    device_write_errors: int = 0

    @property
    def sessions(self) -> int:
        return self.sessions_ok + self.sessions_refused + self.sessions_unreachable + self.sessions_malformed


@dataclass(frozen=True)
class SessionRecord:
    """One served SESSION_OPEN, without its secret."""

    request_id: int
    platform: int | None
    endpoint: str
    client_id: str
    topic: str
    status: SessionStatus
    detail: str


EventCallback = Callable[[str, dict[str, Any]], None]


class Gateway:
    """Carries one device link. ``agent_port=None``: no agent (AGENT frames are dropped and
    counted as lost) — a console-only monitor."""

    def __init__(self, transport: DeviceTransport, agent_host: str = "127.0.0.1",
                 agent_port: int | None = None, *, sessions: SessionOpener | None = None,
                 session_timeout: float = DEFAULT_TIMEOUT,
                 on_console: Callable[[str], None] | None = None, on_event: EventCallback | None = None,
                 connect_timeout: float = 5.0, reconnect_min: float = 0.05, reconnect_max: float = 2.0,
                 hold_frames: int = 32, hold_for: float = 2.0, name: str = "gateway") -> None:
        if agent_port is not None and not 0 < agent_port <= 65535:
            raise ValueError("agent_port is 1..65535")
        if (min(session_timeout, connect_timeout, reconnect_min, hold_for) <= 0
                or reconnect_max < reconnect_min):
            raise ValueError("timeouts and delays must be > 0, reconnect_max >= reconnect_min")
        if hold_frames < 0:
            raise ValueError("hold_frames >= 0")
        self.transport = transport
        self.agent_host, self.agent_port = agent_host, agent_port
        self.sessions: SessionOpener = sessions if sessions is not None else CloudSessions(session_timeout)
        self.session_timeout = session_timeout
        self.on_console = on_console
        self.on_event = on_event
        self.connect_timeout = connect_timeout
        self.reconnect_min, self.reconnect_max = reconnect_min, reconnect_max
        self.hold_frames, self.hold_for = hold_frames, hold_for
        self.name = name

        self.counters = GatewayCounters()
        self.console_lines: list[str] = []
        self.session_records: list[SessionRecord] = []
        self.agent_state = AgentLinkState.IDLE
        self.device_link_ended = False

        self._decoder = FrameDecoder()
        self._console_buf = bytearray()
        self._agent_writer: asyncio.StreamWriter | None = None
        self._in_flight = 0
        self._held: deque[tuple[float, bytes]] = deque()
        self._to_device: asyncio.Queue[bytes] = asyncio.Queue()
        self._writing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._session_tasks: set[asyncio.Task[None]] = set()
        self._wake_agent = asyncio.Event()
        self._stopped = asyncio.Event()
        self._changed = asyncio.Event()
        self._started = False
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("a gateway starts once")
        self._started = True
        await self.transport.open()
        self._tasks.append(asyncio.create_task(self._device_reader(), name=f"{self.name}-device-reader"))
        self._tasks.append(asyncio.create_task(self._device_writer(), name=f"{self.name}-device-writer"))
        if self.agent_port is not None:
            self._tasks.append(asyncio.create_task(self._agent_link(), name=f"{self.name}-agent-link"))
        log.info("%s: started on %s, agent %s", self.name, self.transport.name,
                 f"{self.agent_host}:{self.agent_port}" if self.agent_port is not None else "none")

    async def run(self) -> None:
        """Start, serve until the device link ends or :meth:`stop`, then close."""
        await self.start()
        try:
            await self._stopped.wait()
        finally:
            await self.close()

    def stop(self) -> None:
        """Ask :meth:`run` to return."""
        self._stopped.set()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stopped.set()
        self._set_agent_state(AgentLinkState.CLOSED, "closing")
        tasks = [*self._tasks, *self._session_tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        writer, self._agent_writer = self._agent_writer, None
        if writer is not None:
            await close_stream(writer)
        await self.transport.close()
        self._notify()
        log.info("%s: closed (%s)", self.name, self.counters)

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- waiting (tests, harnesses) ----------------------------------------------------------------

    def _notify(self, event: str | None = None, **data: Any) -> None:
        if event is not None and self.on_event is not None:
            try:
                self.on_event(event, data)
            except Exception:
                log.exception("%s: on_event callback failed for %s", self.name, event)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Return once ``predicate()`` holds (checked after every change); TimeoutError after
        ``timeout`` seconds."""

        async def until() -> None:
            while not predicate():
                await self._changed.wait()

        await asyncio.wait_for(until(), timeout)

    @property
    def in_flight(self) -> int:
        """AGENT frames sent to the agent and not answered yet (the agent answers each one)."""
        return self._in_flight

    def is_settled(self) -> bool:
        return (self._in_flight == 0 and not self._held and not self._session_tasks
                and self._to_device.empty() and not self._writing)

    async def settled(self, timeout: float = 10.0) -> None:
        """Wait until every forwarded AGENT frame is answered, every session served and every
        answer written to the device."""
        await self.wait_for(self.is_settled, timeout)

    # -- device side -------------------------------------------------------------------------------

    async def _device_reader(self) -> None:
        try:
            while True:
                data = await self.transport.read()
                if not data:
                    break
                self.feed_from_device(data)
        finally:
            self.device_link_ended = True
            log.info("%s: the device link %s ended", self.name, self.transport.name)
            self._notify("device_link_ended")
            self._stopped.set()

    def feed_from_device(self, data: bytes) -> None:
        """Handle bytes the device transmitted (any split, garbage included)."""
        for event in self._decoder.feed(data):
            if isinstance(event, FrameError):
                self.counters.bad_frames += 1
                self.counters.bad_frame_reasons[event.code] += 1
                log.warning("%s: dropped a frame from the device: %s", self.name, event.code)
                self._notify("bad_frame", reason=event.code)
                continue
            self.counters.frames_from_device += 1
            if event.channel == Channel.AGENT:
                self._to_agent(encode_frame(Channel.AGENT, event.payload))
            elif event.channel == Channel.CLOUD:
                self._on_cloud(event.payload)
            else:
                self._on_console(event.payload)
        self._notify()

    def _send_to_device(self, channel: Channel, payload: bytes) -> None:
        self._to_device.put_nowait(encode_frame(channel, payload))

    async def _device_writer(self) -> None:
        while True:
            frame = await self._to_device.get()
            self._writing = True
            try:
                await self.transport.write(frame)
                self.counters.frames_to_device += 1
            except (ConnectionError, OSError) as exc:
                self.counters.device_write_errors += 1
                log.warning("%s: cannot write to the device: %s", self.name, exc)
            finally:
                self._writing = False
                self._notify()

    # -- console -----------------------------------------------------------------------------------

    def _on_console(self, payload: bytes) -> None:
        self._console_buf += payload
        while True:
            nl = self._console_buf.find(b"\n")
            if nl < 0:
                if len(self._console_buf) > CONSOLE_LINE_MAX:  # a line that never ends
                    nl = CONSOLE_LINE_MAX
                else:
                    return
            raw, self._console_buf = bytes(self._console_buf[:nl]), self._console_buf[nl + 1:]
            line = raw.decode("utf-8", errors="replace").rstrip("\r")
            self.console_lines.append(line)
            self.counters.console_lines += 1
            log.info("%s: console: %s", self.name, line)
            if self.on_console is not None:
                try:
                    self.on_console(line)
                except Exception:
                    log.exception("%s: on_console callback failed", self.name)
            self._notify("console_line", line=line)

    # -- cloud sessions ----------------------------------------------------------------------------

    def _on_cloud(self, payload: bytes) -> None:
        try:
            msg = decode_session_message(payload)
        except ProtocolError:
            # Answer with the request id the device used, when there is one to echo.
            request_id = payload[1] if len(payload) >= 2 and payload[0] == SessionType.SESSION_OPEN else 0
            result = SessionResult(request_id, SessionStatus.MALFORMED, "malformed SESSION_OPEN")
            self._finish_session(None, request_id, result)
            return
        if not isinstance(msg, SessionOpen):
            self.counters.cloud_unexpected += 1
            log.warning("%s: the device sent a %s; ignored", self.name, type(msg).__name__)
            self._notify("cloud_unexpected")
            return
        task = asyncio.create_task(self._serve_session(msg), name=f"{self.name}-session-{msg.request_id}")
        self._session_tasks.add(task)
        task.add_done_callback(self._session_done)

    def _session_done(self, task: asyncio.Task[None]) -> None:
        self._session_tasks.discard(task)
        self._notify()

    async def _serve_session(self, msg: SessionOpen) -> None:
        cred = msg.credential
        log.info("%s: session %d: platform %d, %s as %s, topic %s", self.name, msg.request_id, cred.platform,
                 cred.endpoint, cred.client_id, msg.topic)
        try:
            # The opener bounds itself; this is the backstop for one that does not.
            result = await asyncio.wait_for(self.sessions(msg), self.session_timeout + 5.0)
            status = SessionStatus(result.status)
            detail = result.detail
        except TimeoutError:
            status, detail = SessionStatus.UNREACHABLE, "session timed out"
        except Exception as exc:
            log.exception("%s: session %d failed", self.name, msg.request_id)
            status, detail = SessionStatus.UNREACHABLE, f"gateway error: {type(exc).__name__}"
        # The request id is the device's, whatever the opener put there.
        self._finish_session(msg, msg.request_id, SessionResult(msg.request_id, status, detail))

    def _finish_session(self, msg: SessionOpen | None, request_id: int, result: SessionResult) -> None:
        status = SessionStatus(result.status)
        attr = {SessionStatus.CONNECTED: "sessions_ok", SessionStatus.REFUSED: "sessions_refused",
                SessionStatus.UNREACHABLE: "sessions_unreachable",
                SessionStatus.MALFORMED: "sessions_malformed"}[status]
        setattr(self.counters, attr, getattr(self.counters, attr) + 1)
        cred = msg.credential if msg is not None else None
        record = SessionRecord(request_id, cred.platform if cred else None,
                               cred.endpoint if cred else "", cred.client_id if cred else "",
                               msg.topic if msg else "", status, result.detail)
        self.session_records.append(record)
        log.info("%s: session %d: %s %s", self.name, request_id, status.name, result.detail)
        self._send_to_device(Channel.CLOUD, result.encode())
        self._notify("session_result", record=record)

    # -- agent side --------------------------------------------------------------------------------

    def _set_agent_state(self, new: AgentLinkState, reason: str = "") -> None:
        """The one place the agent link changes state."""
        old = self.agent_state
        if new is old:
            return
        if new not in _ALLOWED[old]:
            raise RuntimeError(f"agent link {old.value} -> {new.value} is not a transition")
        self.agent_state = new
        log.debug("%s: agent link %s -> %s %s", self.name, old.value, new.value, reason)
        self._notify(f"agent_{new.value}", reason=reason)

    def _to_agent(self, frame: bytes) -> None:
        writer = self._agent_writer
        if writer is not None and not writer.is_closing():
            writer.write(frame)
            self._in_flight += 1
            self.counters.frames_to_agent += 1
            return
        if self.agent_port is None or self.hold_frames == 0:
            self.counters.agent_frames_lost += 1
            log.warning("%s: no agent link; an AGENT frame is lost", self.name)
            return
        self._held.append((time.monotonic(), frame))
        while len(self._held) > self.hold_frames:
            self._held.popleft()
            self.counters.agent_frames_lost += 1
        self._wake_agent.set()

    def _flush_held(self, writer: asyncio.StreamWriter) -> None:
        now = time.monotonic()
        while self._held:
            at, frame = self._held.popleft()
            if now - at > self.hold_for:
                # The device has given this exchange up by now (its retry timeout).
                self.counters.agent_frames_lost += 1
                continue
            writer.write(frame)
            self._in_flight += 1
            self.counters.frames_to_agent += 1

    async def _agent_link(self) -> None:
        assert self.agent_port is not None
        delay = self.reconnect_min
        while True:
            self._set_agent_state(AgentLinkState.CONNECTING)
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.agent_host, self.agent_port), self.connect_timeout)
            except (OSError, TimeoutError) as exc:
                self.counters.agent_connect_failures += 1
                self._set_agent_state(AgentLinkState.WAITING, f"connect failed: {exc}")
                await self._pause(delay)
                delay = min(delay * 2, self.reconnect_max)
                continue
            delay = self.reconnect_min
            self.counters.agent_connects += 1
            self._agent_writer = writer
            self._set_agent_state(AgentLinkState.CONNECTED)
            self._flush_held(writer)
            reason = "end of stream"
            try:
                await self._agent_reader(reader)
            except (ConnectionError, OSError) as exc:
                reason = str(exc)
            finally:
                self._agent_writer = None
                lost, self._in_flight = self._in_flight, 0
                self.counters.agent_frames_lost += lost
                await close_stream(writer)
            if lost:
                log.warning("%s: agent link lost with %d frame(s) in flight", self.name, lost)
            self._set_agent_state(AgentLinkState.WAITING, reason)
            await self._pause(delay)

    async def _pause(self, delay: float) -> None:
        """Sleep before the next attempt; a frame waiting for the agent cuts it short."""
        self._wake_agent.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake_agent.wait(), delay)

    async def _agent_reader(self, reader: asyncio.StreamReader) -> None:
        decoder = FrameDecoder()
        while True:
            data = await reader.read(READ_CHUNK)
            if not data:
                return
            for event in decoder.feed(data):
                if isinstance(event, FrameError):
                    self.counters.bad_frames_from_agent += 1
                    log.warning("%s: dropped a frame from the agent: %s", self.name, event.code)
                    continue
                if event.channel != Channel.AGENT:
                    self.counters.bad_frames_from_agent += 1
                    log.warning("%s: the agent sent channel %d; dropped", self.name, event.channel)
                    continue
                self.counters.frames_from_agent += 1
                self._in_flight = max(0, self._in_flight - 1)
                self._send_to_device(Channel.AGENT, event.payload)
            self._notify()
