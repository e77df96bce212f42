"""The agent: an asyncio TCP server speaking protocol §1 frames (channel AGENT) to gateways.

Lifetime (STYLE.md rule 9): :meth:`Agent.run` enters the store, then the cloud adapters, then the
listener in one ``AsyncExitStack``; the frozen :class:`~.config.Services` is built once in between.
On SIGTERM/SIGINT (or :meth:`Agent.stop`): stop accepting → every session finishes the message it
is handling (within ``shutdown_timeout``) → the rest is cancelled → the stack closes listener,
adapters and store in reverse order; each close error is logged and all are raised together.

Nothing that matters lives only in memory: every answer is committed to the store before it is
sent (``handlers.py``), so a restarted agent — or another replica on the same PostgreSQL —
carries on from the store alone. The only in-memory state is the per-source rate limiter, and
bounded caches of what cannot change: PO names (``Processor``) and the subkeys derived from a root
key (``protocol/envelope.py``).

Crash points (test-only fault injection, ``AgentConfig.crash_at``; the agent SIGKILLs itself):
``before_commit:<TYPE>`` (answer computed, transaction not committed), ``after_commit:<TYPE>``
(committed, not sent), ``after_cloud:CLOUD_REQUEST`` / ``after_cloud:activate`` /
``after_cloud:revoke`` (the cloud changed, the store not yet). ``<TYPE>`` is a request name such
as ``PROV_HELLO``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from enum import Enum
from typing import cast
from urllib.parse import urlsplit, urlunsplit

from otakey.errors import AdapterError, Error, FrameError, StorageError
from otakey.protocol.envelope import error_reply_for
from otakey.protocol.framing import Channel, FrameDecoder, encode_frame
from otakey.protocol.messages import ErrorCode
from otakey.store import Kek, make_store

from .agentlog import EventLog
from .cloudurl import CloudSpec, parse_cloud_url
from .config import AgentConfig, Services
from .handlers import Processor
from .policy import Policy
from .reconcile import reconcile_forever

# Devices of a large fleet connect at once after an outage; the default backlog of 100 makes the
# kernel drop their SYNs and each retries a second later.
LISTEN_BACKLOG = 4096


class AgentError(Error):
    """The agent cannot start or run (configuration, port, database, cloud); one clear sentence."""


class SessionState(Enum):
    """One gateway connection (paho's explicit connection-state habit)."""

    OPEN = "open"            # waiting for a frame
    HANDLING = "handling"    # a message is being answered
    DRAINING = "draining"    # shutdown asked: finish the message in hand, then close
    CLOSED = "closed"


_ALLOWED = {
    SessionState.OPEN: {SessionState.HANDLING, SessionState.DRAINING, SessionState.CLOSED},
    SessionState.HANDLING: {SessionState.OPEN, SessionState.DRAINING, SessionState.CLOSED},
    SessionState.DRAINING: {SessionState.CLOSED},
    SessionState.CLOSED: set(),
}


def redact_db_url(url: str) -> str:
    """A database URL for logs: the password is never shown."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class Session(asyncio.Protocol):
    """One gateway connection, as an asyncio protocol: frames are decoded as bytes arrive, and
    AGENT messages are answered one at a time, in order, by a task that exists only while there is
    something to answer. An idle connection holds no task, no stream objects, no queue and no frame
    decoder (made when bytes arrive, dropped when no partial frame is left) — what lets one agent
    hold 10,000 idle devices in a few tens of MB (``otakey bench connections``)."""

    __slots__ = ("_agent", "_decoder", "_paused", "_queue", "_task", "_transport", "_writable", "state")

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self._decoder: FrameDecoder | None = None
        self._queue: list[bytes] | None = None
        self._task: asyncio.Task[None] | None = None
        self._transport: asyncio.Transport | None = None
        self._writable: asyncio.Future[None] | None = None
        self._paused = False
        self.state = SessionState.OPEN

    @property
    def peer(self) -> str:
        """``host:port`` of the gateway (for logs)."""
        peer = self._transport.get_extra_info("peername") if self._transport is not None else None
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    @property
    def source(self) -> str:
        """The gateway's address: what the per-source rate limit counts."""
        peer = self._transport.get_extra_info("peername") if self._transport is not None else None
        return str(peer[0]) if isinstance(peer, tuple) else str(peer)

    def transition(self, new: SessionState, reason: str = "") -> None:
        """The one place a session changes state."""
        if new is self.state:
            return
        if new not in _ALLOWED[self.state]:
            raise RuntimeError(f"session {self.peer}: {self.state.value} -> {new.value} is not a transition")
        log = self._agent.log
        if log.enabled(logging.DEBUG):
            log.debug("session", peer=self.peer, old=self.state.value, new=new.value, reason=reason)
        self.state = new

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's does not derive from asyncio.Transport, hence no isinstance).
        self._transport = cast(asyncio.Transport, transport)
        if not self._agent._admit(self):
            self.transition(SessionState.CLOSED, "shutting down")
            transport.close()

    def data_received(self, data: bytes) -> None:
        if self.state not in (SessionState.OPEN, SessionState.HANDLING):
            return  # draining: unanswered frames are the device's to retry
        log = self._agent.log
        decoder = self._decoder
        if decoder is None:
            decoder = self._decoder = FrameDecoder()
        for event in decoder.feed(data):
            if isinstance(event, FrameError):
                log.debug("frame_dropped", peer=self.peer, reason=event.code)
            elif event.channel != Channel.AGENT:
                log.debug("frame_ignored", peer=self.peer, channel=event.channel)
            elif self._queue is None:
                self._queue = [event.payload]
            else:
                self._queue.append(event.payload)
        if data[-1:] == b"\x00" and not decoder.pending:
            # Ended on a delimiter with nothing held: the decoder is in its initial state (not
            # even dropping an oversized frame), so an idle session need not keep it.
            self._decoder = None
        if not self._queue:
            return
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._serve())
            self._agent._handling.add(self._task)
        elif not self._paused:
            # More frames while answering: no more reading until the queue is answered (TCP
            # pushes back on the gateway), so a peer that sends without waiting for answers cannot
            # grow the queue beyond what two reads delivered. A peer that waits for each answer
            # never gets here, and costs no pause/resume per message.
            assert self._transport is not None
            self._paused = True
            self._transport.pause_reading()

    def eof_received(self) -> bool:
        return False  # close our side too; a message in hand is still answered into the void

    def connection_lost(self, exc: Exception | None) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._queue = None
        if self.state is not SessionState.CLOSED:
            self.transition(SessionState.CLOSED, "end of stream" if exc is None else "peer gone")
        self._agent._forget(self)

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    # -- answering ---------------------------------------------------------------------------

    async def _serve(self) -> None:
        try:
            while self._queue and self.state is SessionState.OPEN:
                raw = self._queue.pop(0)
                if not self._queue:
                    self._queue = None
                self.transition(SessionState.HANDLING)
                answer = await self._agent.answer(raw, self.source)
                transport = self._transport
                if transport is None or transport.is_closing():
                    break
                transport.write(encode_frame(Channel.AGENT, answer))
                if self._writable is not None and not self._writable.done():
                    await self._writable  # the peer reads slowly: wait like drain() would
                if self.state is SessionState.HANDLING:
                    self.transition(SessionState.OPEN)
        finally:
            task, self._task = self._task, None
            if task is not None:
                self._agent._handling.discard(task)
            if self.state is SessionState.DRAINING:
                self.close("drained")
            elif self._paused and self._transport is not None and not self._transport.is_closing():
                self._paused = False
                self._transport.resume_reading()

    def request_stop(self) -> None:
        if self.state is SessionState.OPEN and self._task is None:
            self.close("shutdown")
        elif self.state in (SessionState.OPEN, SessionState.HANDLING):
            self.transition(SessionState.DRAINING, "shutdown")

    def close(self, reason: str) -> None:
        if self.state is not SessionState.CLOSED:
            self.transition(SessionState.CLOSED, reason)
        if self._transport is not None:
            self._transport.close()


class Agent:
    """``await Agent(config, kek).run()`` serves until :meth:`stop` or SIGTERM."""

    def __init__(self, config: AgentConfig, kek: Kek, log: EventLog | None = None) -> None:
        self.config = config
        self._kek = kek
        self.log = log or EventLog()
        self.port: int | None = None
        self.services: Services | None = None
        self._processor: Processor | None = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sessions: set[Session] = set()
        self._handling: set[asyncio.Task[None]] = set()
        self._crash_points = frozenset(p for p in (config.crash_at or "").split(",") if p)

    # -- control -------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask for a graceful shutdown; safe from any thread and before ``run`` started serving."""
        loop, event = self._loop, self._stop
        if loop is None or event is None:
            return
        loop.call_soon_threadsafe(event.set)

    def _crash(self, point: str) -> None:
        if point in self._crash_points:
            self.log.warning("crash_injected", point=point)
            os.kill(os.getpid(), signal.SIGKILL)

    async def answer(self, raw: bytes, source: str) -> bytes:
        assert self._processor is not None
        try:
            # asyncio.timeout, not wait_for: no extra task per message.
            async with asyncio.timeout(self.config.handler_timeout):
                return await self._processor.handle(raw, source)
        except TimeoutError:
            self.log.warning("handler_timeout", source=source, seconds=self.config.handler_timeout)
            return error_reply_for(raw, ErrorCode.RETRY)

    # -- lifetime ------------------------------------------------------------------------------

    async def run(self, ready: Callable[[str, int], None] | None = None) -> None:
        cfg = self.config
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        specs = self._cloud_specs()
        close_errors: list[BaseException] = []
        async with AsyncExitStack() as stack:
            store = make_store(cfg.db_url, self._kek)
            try:
                await store.open()
            except StorageError as exc:
                raise AgentError(f"cannot open the database {redact_db_url(cfg.db_url)}: "
                                 f"{' '.join(str(exc).split())}") from exc
            stack.push_async_callback(self._closer("store", store.close, close_errors))
            adapters = {}
            for spec in specs:
                adapter = spec.build()
                try:
                    await adapter.start()
                except AdapterError as exc:
                    reason = " ".join(str(exc).split())
                    raise AgentError(f"cannot reach the cloud {spec.display}: {reason}") from exc
                stack.push_async_callback(self._closer(f"cloud {spec.platform}", adapter.close, close_errors))
                adapters[spec.platform] = adapter
            self.services = Services(config=cfg, store=store, adapters=adapters,
                                     default_platform=specs[0].platform if specs else None,
                                     policy=Policy(cfg.policy))
            self._processor = Processor(self.services, self.log, self._crash)
            try:
                server = await self._loop.create_server(lambda: Session(self), cfg.listen_host,
                                                        cfg.listen_port, backlog=LISTEN_BACKLOG)
            except OSError as exc:
                raise AgentError(f"cannot listen on {cfg.listen_host}:{cfg.listen_port}: "
                                 f"{exc.strerror or exc}") from exc
            stack.push_async_callback(self._closer("listener", server.wait_closed, close_errors))
            self.port = int(server.sockets[0].getsockname()[1])
            self._install_signals(stack)
            reconciler = asyncio.create_task(reconcile_forever(self.services, self.log))
            stack.push_async_callback(self._closer("reconciler", _cancelled(reconciler), close_errors))
            self.log.info("listening", host=cfg.listen_host, port=self.port, db=redact_db_url(cfg.db_url),
                          clouds=",".join(s.display for s in specs) or "none", pid=os.getpid())
            if ready is not None:
                ready(cfg.listen_host, self.port)
            await self._stop.wait()
            await self._shutdown(server)
        if close_errors:
            raise BaseExceptionGroup("errors while closing the agent", close_errors)
        self.log.info("stopped")

    def _cloud_specs(self) -> list[CloudSpec]:
        specs = []
        for url in self.config.cloud_urls:
            try:
                specs.append(parse_cloud_url(url))
            except ValueError as exc:
                raise AgentError(f"bad --cloud URL: {exc}") from None
        platforms = [s.platform for s in specs]
        if len(set(platforms)) != len(platforms):
            raise AgentError("one --cloud URL per platform")
        return specs

    def _install_signals(self, stack: AsyncExitStack) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
            except (NotImplementedError, RuntimeError):  # not the main thread
                continue
            stack.callback(loop.remove_signal_handler, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        self.log.info("signal", name=signal.Signals(sig).name)
        assert self._stop is not None
        self._stop.set()

    def _closer(self, what: str, close: Callable[[], Awaitable[object]],
                errors: list[BaseException]) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            try:
                await close()
            except Exception as exc:
                # Logged and collected: one failing close must not keep the others from running.
                self.log.error("close_failed", exc, what=what)
                errors.append(exc)

        return run

    def _admit(self, session: Session) -> bool:
        if self._stop is not None and self._stop.is_set():
            return False
        self._sessions.add(session)
        if self.log.enabled(logging.DEBUG):
            self.log.debug("connected", peer=session.peer)
        return True

    def _forget(self, session: Session) -> None:
        if session in self._sessions:
            self._sessions.discard(session)
            if self.log.enabled(logging.DEBUG):
                self.log.debug("disconnected", peer=session.peer)

    async def _shutdown(self, server: asyncio.Server) -> None:
        self.log.info("stopping", sessions=len(self._sessions), timeout=self.config.shutdown_timeout)
        server.close()  # stop accepting
        for session in list(self._sessions):
            session.request_stop()
        tasks = list(self._handling)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.config.shutdown_timeout)
            if pending:
                self.log.warning("cancelling", sessions=len(pending))
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        for session in list(self._sessions):
            session.close("stopped")


def _cancelled(task: asyncio.Task[None]) -> Callable[[], Awaitable[None]]:
    async def cancel() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return cancel
