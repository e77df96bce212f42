"""A test stack in this process's event loop: Mosquitto with dynamic security, optionally a moto
server for AWS IoT, and an agent on SQLite, serving product orders whose factory images are built
(and cached) with ``otakey firmware build``. The power-cut campaigns (:mod:`.campaign`) and the Robot
keyword library (:mod:`.robot_keywords`) drive emulated devices against it, and check what the
agent's store and the clouds hold against what a device's flash holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from otakey.agent import Agent, AgentConfig
from otakey.agent.agentlog import EventLog
from otakey.agent.handlers import CLOUD_TARGET_PREFIX
from otakey.agent.product_file import ProductFile
from otakey.cloud.base import device_name
from otakey.cloud.mosquitto import MosquittoAdapter, device_acls, role_name
from otakey.errors import Error
from otakey.firmware.build import build_firmware, cache_root
from otakey.gateway.mqtt_session import CloudSessions
from otakey.protocol.cloudsession import SessionOpen, SessionStatus
from otakey.protocol.messages import CloudCredential
from otakey.store import Action, AuditEvent, DeviceState, Kek, Product, make_store

from .emu_backend import EmuBackend
from .linked import LinkedDevice
from .servers import MosquittoServer, MotoServer, start_mosquitto, start_moto

MAX_DEVICE_MS = 120_000.0  # device time a device may take to finish a flow (retries included)
AGREE_TRIES = 4  # check-in intervals to wait for the agent to catch up with the device


AGENT_START_TIMEOUT = 60.0  # store, cloud adapters and the listener; seconds even on a loaded machine

class StackError(Error):
    """The stack could not start (a server, the agent)."""


class _AgentLogFormat(logging.Formatter):
    """``time level event key=value ...``: the agent's structured fields (already checked by
    :class:`~otakey.agent.agentlog.EventLog` to hold no key material)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = dict(getattr(record, "otakey_fields", None) or {"event": record.getMessage()})
        head = f"{self.formatTime(record)} {record.levelname.lower()} {fields.pop('event', '')}"
        text = " ".join([head, *(f"{k}={v}" for k, v in fields.items())])
        if record.exc_info and record.exc_info[1] is not None:
            text += f" error={type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        return text


def product_firmware(pf: ProductFile, log_line: Callable[[str], None] | None = None) -> Path:
    """The factory image of ``pf`` (``otakey firmware build``, cached by its record)."""
    folder = cache_root() / "harness-products"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{pf.po_name}-{hashlib.sha256(pf.factory_record()).hexdigest()[:16]}.product.json"
    if not path.exists():
        pf.write(path)
    return build_firmware(path, log=log_line).elf


# --------------------------------------------------------------------------------------------- the world


def _scratch_dir() -> str:
    """A folder for databases: RAM-backed when possible, since the agent fsyncs every answer."""
    shm = Path("/dev/shm")
    return tempfile.mkdtemp(
        prefix="otakey-stack-", dir=str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    )


class Stack:
    """Mosquitto (dynsec), optionally a moto server, and an agent in this process's event loop,
    serving one PO. For campaigns and the Robot keyword library.

    Lifecycle: ``await start()`` → devices talk to ``127.0.0.1:agent_port`` → ``await close()``.
    """

    def __init__(
        self,
        product: ProductFile,
        *,
        aws: bool = False,
        workdir: str | Path | None = None,
        name: str = "stack",
    ) -> None:
        self.product = product
        self.aws = aws
        self.name = name
        self._workdir = Path(workdir) if workdir is not None else None
        self._own_workdir = workdir is None
        self.kek = Kek(os.urandom(32))
        self.mosquitto: MosquittoServer | None = None
        self.moto: MotoServer | None = None
        self.agent: Agent | None = None
        self.admin: MosquittoAdapter | None = None
        self._agent_task: asyncio.Task[None] | None = None
        self._store: Any = None
        self._log_handler: logging.Handler | None = None

    # --- life ------------------------------------------------------------------------------------
    @property
    def workdir(self) -> Path:
        """The stack's folder (database, agent log); made at the first use, removed by close()."""
        if self._workdir is None:
            self._workdir = Path(_scratch_dir())
        self._workdir.mkdir(parents=True, exist_ok=True)
        return self._workdir

    @property
    def db_path(self) -> Path:
        return self.workdir / "agent.db"

    @property
    def db_url(self) -> str:
        return f"sqlite://{self.db_path}"

    @property
    def agent_log(self) -> Path:
        return self.workdir / "agent.log"

    @property
    def mosquitto_url(self) -> str:
        assert self.mosquitto is not None
        return self.mosquitto.cloud_url

    @property
    def aws_url(self) -> str:
        assert self.moto is not None
        return self.moto.cloud_url()

    @property
    def cloud_urls(self) -> tuple[str, ...]:
        return (self.mosquitto_url, self.aws_url) if self.moto is not None else (self.mosquitto_url,)

    @property
    def store(self) -> Any:
        """The campaign's own connection to the agent's database (the agent has another)."""
        if self._store is None:
            raise StackError("the stack is not started")
        return self._store

    @property
    def agent_port(self) -> int:
        assert self.agent is not None and self.agent.port is not None
        return self.agent.port

    async def start(self) -> None:
        self.mosquitto = start_mosquitto()
        if self.aws:
            self.moto = start_moto()
        store = make_store(self.db_url, self.kek)
        await store.open()
        try:
            pf = self.product

            async def add(tx: Any) -> None:
                await tx.add_product(
                    Product(po_id=pf.po_id, name=pf.po_name, quantity=max(1, pf.quantity), pk=pf.pk)
                )

            await store.run(add)
        finally:
            await store.close()
        # The agent logs to its own file (kept as an artifact), not to the campaign's output.
        logger = logging.getLogger(f"otakey.agent.{self.name}.{id(self)}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        handler = logging.FileHandler(self.agent_log)
        handler.setFormatter(_AgentLogFormat())
        logger.addHandler(handler)
        self._log_handler = handler
        config = AgentConfig(
            db_url=self.db_url, cloud_urls=self.cloud_urls, reconcile_interval=3600.0, shutdown_timeout=1.0
        )
        self.agent = Agent(config, self.kek, EventLog(logger))
        ready = asyncio.Event()
        self._agent_task = asyncio.create_task(self.agent.run(lambda _h, _p: ready.set()))
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait({waiter, self._agent_task}, timeout=AGENT_START_TIMEOUT,
                           return_when=asyncio.FIRST_COMPLETED)
        if not ready.is_set():
            waiter.cancel()
            if not self._agent_task.done():
                self._agent_task.cancel()
                with contextlib.suppress(BaseException):
                    await self._agent_task
                raise StackError(f"the agent did not listen within {AGENT_START_TIMEOUT:.0f} s "
                                 f"(log: {self.agent_log})")
            await self._agent_task  # raises the agent's start-up error
            raise StackError("the agent stopped before listening")
        m = self.mosquitto
        self.admin = MosquittoAdapter(f"mqtt://127.0.0.1:{m.port}", m.admin_username, m.admin_password)
        await self.admin.start()
        self._store = make_store(self.db_url, self.kek)
        await self._store.open()

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()
            self._store = None
        if self.admin is not None:
            await self.admin.close()
            self.admin = None
        if self.agent is not None and self._agent_task is not None:
            self.agent.stop()
            with contextlib.suppress(Exception):
                await self._agent_task
            self._agent_task = None
        if self._log_handler is not None:
            self._log_handler.close()
        for server in (self.moto, self.mosquitto):
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop()
        self.moto = self.mosquitto = None
        if self._own_workdir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    # --- devices ---------------------------------------------------------------------------------
    def sessions(self) -> CloudSessions:
        """The gateway's session opener for this stack's clouds (moto answers for AWS)."""
        return CloudSessions(aws_control=self.aws_url if self.moto is not None else None)

    def link(self, device: EmuBackend | Any, **options: Any) -> LinkedDevice:
        options.setdefault("settle_timeout", 30.0)
        return LinkedDevice(device, "127.0.0.1", self.agent_port, sessions=self.sessions(), **options)

    async def agent_view(self, uid: bytes) -> tuple[Any, Any]:
        """(Device or None, DeviceCredentials) as the agent's store holds them."""

        async def work(tx: Any) -> tuple[Any, Any]:
            return await tx.get_device(uid), await tx.get_credentials(uid)

        return await self._store.run(work)

    async def request(self, uid: bytes, action: Action, target: str | None = None) -> None:
        """What an operator's gray release does for one device: mark it (and, for a migration,
        name the target platform)."""

        async def work(tx: Any) -> None:
            if target is not None:
                await tx.audit(AuditEvent.OPERATOR, device_id=uid, detail=f"{CLOUD_TARGET_PREFIX}{target}")
            await tx.set_pending_action([uid], action)

        await self._store.run(work)

    async def add_product(self, pf: ProductFile) -> None:
        """Another PO in the agent's store (its devices run ``product_firmware(pf)``)."""

        async def work(tx: Any) -> None:
            await tx.add_product(
                Product(po_id=pf.po_id, name=pf.po_name, quantity=max(1, pf.quantity), pk=pf.pk)
            )

        await self._store.run(work)

    async def anomalies(self) -> list[Any]:
        async def work(tx: Any) -> list[Any]:
            return list(await tx.list_anomalies(limit=100_000))

        return await self._store.run(work)

    async def check_credential(self, cred: CloudCredential) -> SessionStatus:
        """Open a session with ``cred`` exactly as the gateway does for the device (protocol §5)."""
        topic = f"devices/{cred.client_id}/campaign"
        result = await self.sessions()(SessionOpen(1, cred, topic, b"check"))
        return result.status

    # --- snapshot and restore ------------------------------------------------------------------
    def save_db(self, path: Path) -> None:
        with (
            contextlib.closing(sqlite3.connect(self.db_path)) as src,
            contextlib.closing(sqlite3.connect(path)) as dst,
        ):
            src.backup(dst)

    def restore_db(self, path: Path) -> None:
        # Through SQLite's backup API into the live file: the agent's own connection sees the
        # restored pages at its next transaction (it is idle: the previous replay has settled).
        with (
            contextlib.closing(sqlite3.connect(path)) as src,
            contextlib.closing(sqlite3.connect(self.db_path, timeout=30)) as dst,
        ):
            src.backup(dst)

    async def device_clients(self, uid: bytes) -> set[str]:
        assert self.admin is not None
        answer = (await self.admin.control([{"command": "listClients", "verbose": False}]))[0]
        prefix = device_name(uid) + "."
        return {
            u
            for u in answer.get("data", {}).get("clients", [])
            if isinstance(u, str) and u.startswith(prefix)
        }

    async def restore_cloud(self, uid: bytes, keep: dict[str, CloudCredential]) -> None:
        """Put the device's dynsec clients back to ``keep`` (username -> credential), and forget
        every AWS resource (a migration's snapshot has none: the moto server is this stack's own)."""
        assert self.admin is not None
        present = await self.device_clients(uid)
        commands: list[dict[str, Any]] = [
            {"command": "deleteClient", "username": u} for u in present - set(keep)
        ]
        for username, cred in keep.items():
            if username not in present:
                commands.append(
                    {"command": "createRole", "rolename": role_name(uid), "acls": device_acls(uid)}
                )
                commands.append(
                    {
                        "command": "createClient",
                        "username": username,
                        "password": cred.secret.decode(),
                        "clientid": cred.client_id,
                        "roles": [{"rolename": role_name(uid)}],
                    }
                )
        if commands:
            await self.admin.control(commands)
        if self.moto is not None:
            await asyncio.to_thread(self.moto.reset)


async def disagreement(stack: Stack, uid: bytes, dev: Any) -> str:
    """Why the device's flash and the agent's store disagree, or "" when they hold the same AK and
    cloud credential with nothing pending (an exchange the agent still waits on counts as pending)."""
    state = dev.decode_keystore().state
    row, creds = await stack.agent_view(uid)
    if state is None:
        return "the device holds no valid keystore record"
    if state.ak is None:
        return (
            ""
            if row is None or row.state is DeviceState.PROVISIONING
            else "agent knows an AK the device lacks"
        )
    if row is None:
        return "the agent does not know the device"
    if row.ak_version != state.ak_version or row.ak != state.ak:
        return f"AK differs: device v{state.ak_version}, agent v{row.ak_version}"
    if row.ak_pending is not None:
        return f"the agent still has AK v{row.ak_pending_version} pending"
    if row.pending_action is not Action.NONE:
        return f"the agent still asks for {row.pending_action.name}"
    current = creds.current
    if state.cloud is None:
        return "" if current is None else f"agent has cloud v{current.version}, device none"
    if (
        current is None
        or current.version != state.cloud.version
        or current.credential.secret != state.cloud.secret
    ):
        return f"cloud credential differs: device v{state.cloud.version}, agent {current and current.version}"
    if creds.pending is not None:
        return f"cloud v{creds.pending.version} still pending at the agent"
    return ""


async def converge(
    stack: Stack, ld: LinkedDevice, uid: bytes, goal: Callable[[], bool], max_device_ms: float = MAX_DEVICE_MS
) -> bool:
    """Run until ``goal()`` holds on the device and the agent agrees with its flash (the confirm may
    have been lost to a cut: the next check-ins prove the key, so device time is let pass for them)."""
    reached = await ld.run_until(goal, max_device_ms)
    if not reached or not ld.device.powered:  # a scheduled cut ends the run: the caller decides
        return False
    for _ in range(AGREE_TRIES):
        if not await disagreement(stack, uid, ld.device):
            return True
        await ld.advance(11_000)
        if not ld.device.powered:
            return False
    return goal() and not await disagreement(stack, uid, ld.device)
