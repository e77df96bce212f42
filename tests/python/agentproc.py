"""Test helpers for the agent: a real ``python -m otakey agent serve`` process, the store it uses,
the operator CLI, and protocol-level devices talking to it.

Each agent logs to a file (read by the tests, kept for failures); its port is read from the
``listening`` line. Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from otakey.agent.handlers import to_wire
from otakey.agent.operator import create_product, with_store
from otakey.agent.product_file import ProductFile
from otakey.cloud.mosquitto import try_connect
from otakey.harness.protocol_device import ProtocolDevice, SessionOpener, mqtt_opener
from otakey.protocol.framing import Channel, Frame, FrameDecoder, encode_frame
from otakey.protocol.messages import CloudCredential
from otakey.store import AuditEvent, CredentialState, DeviceState, Kek, Store, Transaction, open_store

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
AGENT_SRC = ROOT / "agent"
LISTENING = re.compile(r"event=listening .*?port=(\d+)")


def children(pid: int) -> set[int]:
    """The live children of a process (every thread's), from /proc."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found |= {int(c) for c in (task / "children").read_text().split()}
    return found


def alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(AGENT_SRC), env.get("PYTHONPATH", "")) if p)
    # moto accepts any credentials; boto3 needs some to sign requests.
    env.setdefault("AWS_ACCESS_KEY_ID", "testing")
    env.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    env.pop("OTAKEY_CRASH_AT", None)
    return env


@dataclass
class AgentProcess:
    """One agent process. ``start()`` waits until it listens; ``port`` is then known."""

    args: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    _log_offset: int = 0

    def start(self, crash_at: str | None = None, timeout: float = 20.0) -> AgentProcess:
        env = dict(self.env)
        if crash_at:
            env["OTAKEY_CRASH_AT"] = crash_at
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "otakey", "agent", "serve", *self.args],
                                     env=env, stdout=subprocess.DEVNULL, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = LISTENING.search(self.new_log())
            if m:
                self.port = int(m.group(1))
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"the agent exited with {self.proc.returncode}:\n{self.new_log()}")
            time.sleep(0.02)
        raise RuntimeError(f"the agent did not listen within {timeout} s:\n{self.new_log()}")

    def new_log(self) -> str:
        """The log written since the last start."""
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(self._log_offset)
            return f.read().decode(errors="replace")

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def kill9(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def wait_exit(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        return int(self.proc.wait(timeout))

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Stack:
    """A database (with a KEK), cloud URLs, a product order, and the agents serving them."""

    tmp: Path
    db_url: str
    kek_hex: str
    cloud_urls: list[str]
    mosquitto: Any = None
    product: ProductFile | None = None
    agents: list[AgentProcess] = field(default_factory=list)
    opener: SessionOpener = mqtt_opener
    sqlite_path: Path | None = None

    @property
    def env(self) -> dict[str, str]:
        env = base_env()
        env["OTAKEY_KEK"] = self.kek_hex
        return env

    @property
    def kek(self) -> Kek:
        return Kek(bytes.fromhex(self.kek_hex))

    # -- operator CLI ----------------------------------------------------------------------------

    def cli(self, *args: str, check: bool = True, json_out: bool = True) -> Any:
        cmd = [sys.executable, "-m", "otakey", *args, "--db", self.db_url]
        if json_out:
            cmd.append("--json")
        r = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr}")
        if not json_out or r.returncode != 0:
            return r
        return json.loads(r.stdout)

    def create_product(self, name: str = "PO-1", quantity: int = 1000,
                       allow_list: Iterable[bytes] | None = None, via_cli: bool = False) -> ProductFile:
        """A PO; through ``otakey product create`` (``via_cli``) or the same library call
        in-process (faster, for tests about something else)."""
        out = self.tmp / f"{name}.product.json"
        if via_cli:
            args = ["product", "create", "--po", name, "--quantity", str(quantity), "--out", str(out)]
            if allow_list is not None:
                path = self.tmp / f"{name}.allow"
                path.write_text("".join(d.hex() + "\n" for d in allow_list))
                args += ["--allow-list", str(path)]
            self.cli(*args)
        else:
            ids = None if allow_list is None else list(allow_list)
            made = run(with_store(self.db_url, self.kek, lambda s: create_product(s, name, quantity, ids)))
            made.write(out)
        pf = ProductFile.read(out)
        if self.product is None:
            self.product = pf
        return pf

    # -- agents ----------------------------------------------------------------------------------

    def agent(self, *extra: str, crash_at: str | None = None, name: str | None = None,
              clouds: list[str] | None = None) -> AgentProcess:
        args = ["--db", self.db_url, "--listen", "127.0.0.1:0", "--reconcile-interval", "0.3",
                "--shutdown-timeout", "2"]
        for url in self.cloud_urls if clouds is None else clouds:
            args += ["--cloud", url]
        log = self.tmp / f"{name or f'agent{len(self.agents)}'}.log"
        agent = AgentProcess(args + list(extra), self.env, log).start(crash_at=crash_at)
        self.agents.append(agent)
        return agent

    def stop_all(self) -> None:
        for a in self.agents:
            if a.alive:
                a.stop()

    # -- devices ---------------------------------------------------------------------------------

    def device(self, agent: AgentProcess, device_id: bytes | None = None, product: ProductFile | None = None,
               **kwargs: Any) -> ProtocolDevice:
        pf = product or self.product
        assert pf is not None
        kwargs.setdefault("opener", self.opener)
        kwargs.setdefault("timeout", 5.0)
        return ProtocolDevice.from_product(pf, device_id or os.urandom(12), port=agent.port, **kwargs)

    # -- the store, read from the test -----------------------------------------------------------

    async def aquery(self, work: Callable[[Transaction], Awaitable[T]]) -> T:
        store: Store = await open_store(self.db_url, self.kek)
        try:
            return await store.run(work)
        finally:
            await store.close()

    def query(self, work: Callable[[Transaction], Awaitable[T]]) -> T:
        return run(self.aquery(work))

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table, for "nothing changed" checks (SQLite only)."""
        assert self.sqlite_path is not None
        db = sqlite3.connect(self.sqlite_path)
        try:
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                               "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
            return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}
        finally:
            db.close()


def make_stack(tmp: Path, db: str, mosquitto: Any = None, postgres: Any = None,
               extra_clouds: Iterable[str] = ()) -> Stack:
    kek = os.urandom(32).hex()
    sqlite_path = None
    if db == "sqlite":
        sqlite_path = tmp / "agent.db"
        url = f"sqlite://{sqlite_path}"
    else:
        url = postgres.create_database("agent")
    clouds = []
    if mosquitto is not None:
        clouds.append(f"mosquitto://{mosquitto.admin_username}:{mosquitto.admin_password}"
                      f"@127.0.0.1:{mosquitto.port}")
    clouds += list(extra_clouds)
    return Stack(tmp=tmp, db_url=url, kek_hex=kek, cloud_urls=clouds, mosquitto=mosquitto,
                 sqlite_path=sqlite_path)


def mqtt_accepts(cred: CloudCredential) -> bool:
    """Whether the real broker accepts the credential (an MQTT CONNECT with it)."""
    host_port = cred.endpoint.split("://", 1)[1]
    host, port = host_port.rsplit(":", 1)
    reason = try_connect(host, int(port), cred.client_id, cred.username, cred.secret.decode(), 5.0)
    assert reason is not None, "the broker did not answer"
    return not reason.is_failure


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


async def adevice_state(stack: Stack, device_id: bytes) -> dict[str, Any]:
    """Everything the store holds about one device (for use inside a test's coroutine)."""
    async def work(tx: Transaction) -> dict[str, Any]:
        return {
            "device": await tx.get_device(device_id),
            "creds": await tx.get_credentials(device_id),
            "all_creds": await tx.list_credentials(device_id),
            "audit": await tx.list_audit(device_id=device_id),
        }

    return await stack.aquery(work)


def device_state(stack: Stack, device_id: bytes) -> dict[str, Any]:
    return run(adevice_state(stack, device_id))


def events(state: dict[str, Any], event: AuditEvent) -> int:
    return sum(1 for e in state["audit"] if e.event is event)


def assert_converged(stack: Stack, d: ProtocolDevice, ak_version: int,
                     cloud_version: int | None) -> dict[str, Any]:
    """Device and agent agree on one AK and (if any) one cloud credential; the cloud accepts only
    that credential of the device."""
    s = device_state(stack, d.device_id)
    dev = s["device"]
    assert dev.state is DeviceState.ACTIVE
    assert d.ak_version == dev.ak_version == ak_version
    assert dev.ak == d.keystore.ak, "device and agent hold different AKs"
    assert dev.ak_pending is None
    assert events(s, AuditEvent.CONFIRMED) == 1, "stage 2 completed more than once"
    if cloud_version is None:
        assert d.cloud is None and s["creds"].current is None
        return s
    assert d.cloud is not None and d.cloud.version == cloud_version
    current = s["creds"].current
    assert current is not None and current.version == cloud_version and s["creds"].pending is None
    assert current.credential.secret == d.cloud.secret
    assert mqtt_accepts(d.cloud)
    for old in s["all_creds"]:
        if old.version != cloud_version:
            assert old.state in (CredentialState.RETIRED, CredentialState.REVOKED)
            assert not mqtt_accepts(to_wire(old.credential)), f"old credential v{old.version} still accepted"
    return s




async def acli(stack: Stack, *args: str) -> tuple[int, Any, str]:
    """``otakey ARGS --db … --json`` without blocking the event loop (devices keep running):
    (exit status, parsed JSON output or None, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "otakey", *args, "--db", stack.db_url, "--json", env=stack.env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode()
    return int(proc.returncode or 0), (json.loads(text) if text.strip() else None), err.decode()


class Driver:
    """The devices' firmware idle loop in the background: each one steps (check-in, or what the
    agent asked for) every ``interval`` seconds. ``offline`` devices do nothing."""

    def __init__(self, devices: list[ProtocolDevice], interval: float = 0.05) -> None:
        self.devices = devices
        self.interval = interval
        self.offline: set[bytes] = set()
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def _one(self, d: ProtocolDevice) -> None:
        while not self._stop.is_set():
            if d.device_id not in self.offline:
                await d.step()
            try:
                await asyncio.wait_for(self._stop.wait(), self.interval)
            except TimeoutError:
                pass

    async def __aenter__(self) -> Driver:
        self._task = asyncio.ensure_future(asyncio.gather(*(self._one(d) for d in self.devices)))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task
        for d in self.devices:
            await d.close()


async def raw_roundtrip(port: int, message: bytes, timeout: float = 5.0) -> bytes:
    """One AGENT frame to an agent on its own connection, and the first AGENT answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(encode_frame(Channel.AGENT, message))
        await writer.drain()
        decoder = FrameDecoder()
        async with asyncio.timeout(timeout):
            while True:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("the agent closed the connection")
                for event in decoder.feed(data):
                    if isinstance(event, Frame) and event.channel == Channel.AGENT:
                        return event.payload
    finally:
        writer.close()
