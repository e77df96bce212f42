"""The agent: an asyncio TCP server speaking protocol §1 frames (channel AGENT) to gateways.

Lifetime (STYLE.md rule 9): :meth:`Agent.run` enters the store, then the cloud adapters, then the
listener in one ``AsyncExitStack``; the frozen :class:`~.config.Services` is built once in between.
On SIGTERM/SIGINT (or :meth:`Agent.stop`): stop accepting → every session finishes the message it
is handling (within ``shutdown_timeout``) → the rest is cancelled → the stack closes listener,
adapters and store in reverse order; each close error is logged and all are raised together.

Nothing that matters lives only in memory: every answer is committed to the store before it is
sent (``handlers.py``), so a restarted agent — or another replica on the same PostgreSQL —
carries on from the store alone. The only in-memory state is the per-source rate limiter.

Crash points (test-only fault injection, ``AgentConfig.crash_at``; the agent SIGKILLs itself):
``before_commit:<TYPE>`` (answer computed, transaction not committed), ``after_commit:<TYPE>``
(committed, not sent), ``after_cloud:CLOUD_REQUEST`` / ``after_cloud:activate`` /
``after_cloud:revoke`` (the cloud changed, the store not yet). ``<TYPE>`` is a request name such
as ``PROV_HELLO``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from enum import Enum
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

READ_CHUNK = 65536


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


class Session:
    """Reads frames from one connection and answers each AGENT message in order."""

    def __init__(self, agent: Agent, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._agent = agent
        self._reader = reader
        self._writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.source = peer[0] if isinstance(peer, tuple) else str(peer)
        self.state = SessionState.OPEN

    def transition(self, new: SessionState, reason: str = "") -> None:
        """The one place a session changes state."""
        if new is self.state:
            return
        if new not in _ALLOWED[self.state]:
            raise RuntimeError(f"session {self.peer}: {self.state.value} -> {new.value} is not a transition")
        self._agent.log.debug("session", peer=self.peer, old=self.state.value, new=new.value, reason=reason)
        self.state = new

    def request_stop(self) -> None:
        if self.state is SessionState.OPEN:
            self.transition(SessionState.DRAINING, "shutdown")
            # Wakes the pending read, which then sees the end of the stream.
            self._writer.close()
        elif self.state is SessionState.HANDLING:
            self.transition(SessionState.DRAINING, "shutdown")

    async def run(self) -> None:
        decoder = FrameDecoder()
        log = self._agent.log
        try:
            while self.state is SessionState.OPEN:
                try:
                    data = await self._reader.read(READ_CHUNK)
                except (ConnectionError, OSError):
                    break
                if not data:
                    break
                for event in decoder.feed(data):
                    if self.state is not SessionState.OPEN:
                        break  # draining: unanswered frames are the device's to retry
                    if isinstance(event, FrameError):
                        log.debug("frame_dropped", peer=self.peer, reason=event.code)
                        continue
                    if event.channel != Channel.AGENT:
                        log.debug("frame_ignored", peer=self.peer, channel=event.channel)
                        continue
                    self.transition(SessionState.HANDLING)
                    answer = await self._agent.answer(event.payload, self.source)
                    self._writer.write(encode_frame(Channel.AGENT, answer))
                    try:
                        await self._writer.drain()
                    except (ConnectionError, OSError):
                        self.transition(SessionState.CLOSED, "peer gone")
                        break
                    if self.state is SessionState.HANDLING:
                        self.transition(SessionState.OPEN)
        finally:
            if self.state is not SessionState.CLOSED:
                self.transition(SessionState.CLOSED, "end of stream")
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()


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
        self._sessions: dict[asyncio.Task[None], Session] = {}
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
            return await asyncio.wait_for(self._processor.handle(raw, source), self.config.handler_timeout)
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
                server = await asyncio.start_server(self._on_connection, cfg.listen_host, cfg.listen_port)
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

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session(self, reader, writer)
        task = asyncio.current_task()
        assert task is not None
        if self._stop is not None and self._stop.is_set():
            writer.close()
            return
        self._sessions[task] = session
        self.log.debug("connected", peer=session.peer)
        try:
            await session.run()
        finally:
            self._sessions.pop(task, None)
            self.log.debug("disconnected", peer=session.peer)

    async def _shutdown(self, server: asyncio.Server) -> None:
        self.log.info("stopping", sessions=len(self._sessions), timeout=self.config.shutdown_timeout)
        server.close()  # stop accepting
        for session in list(self._sessions.values()):
            session.request_stop()
        tasks = list(self._sessions)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.config.shutdown_timeout)
            if pending:
                self.log.warning("cancelling", sessions=len(pending))
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)


def _cancelled(task: asyncio.Task[None]) -> Callable[[], Awaitable[None]]:
    async def cancel() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return cancel
