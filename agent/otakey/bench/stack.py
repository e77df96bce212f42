"""The servers a benchmark runs against, all on 127.0.0.1 and all real: the agent process(es)
(``otakey agent serve``), the database (SQLite file or a throwaway PostgreSQL 15 cluster),
Mosquitto brokers with dynamic security, a moto server. Started with the harness
(:mod:`otakey.harness.servers`) and stopped in reverse order by :class:`Stack`.

Devices the benchmark wants already provisioned are **seeded** straight into the store (AK v1
active, as stage 2 would have left them): a rotation benchmark then measures rotations only.
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from otakey.agent.operator import create_product, with_store
from otakey.harness import servers
from otakey.store import Device, DeviceState, Kek, Store

from .common import BenchError, say
from .loadgen import FleetKeys

SEED_BATCH = 500


@dataclass
class Stack:
    """Everything one benchmark started; ``close()`` stops it in reverse order."""

    work: Path
    kek: bytes = field(repr=False)
    db_url: str = ""
    keys: FleetKeys | None = None
    agents: list[servers.AgentServer] = field(default_factory=list)
    brokers: list[servers.MosquittoServer] = field(default_factory=list)
    postgres: servers.PostgresServer | None = None
    moto: servers.MotoServer | None = None
    _exit: ExitStack = field(default_factory=ExitStack)

    @classmethod
    def create(cls, keep: bool = False) -> Stack:
        work = Path(tempfile.mkdtemp(prefix="otakey-bench-"))
        st = cls(work, secrets.token_bytes(32))
        if not keep:
            import shutil

            st._exit.callback(shutil.rmtree, work, True)
        return st

    def close(self) -> None:
        self._exit.close()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- database -------------------------------------------------------------------------------

    def database(self, kind: str, sqlite_sync: str = "") -> str:
        """A fresh empty database: ``sqlite`` (a file in the work folder) or ``postgres``."""
        if kind == "sqlite":
            query = f"?synchronous={sqlite_sync}" if sqlite_sync else ""
            self.db_url = f"sqlite://{self.work / 'agent.db'}{query}"
        elif kind == "postgres":
            if self.postgres is None:
                try:
                    self.postgres = servers.start_postgres()
                except servers.ServerError as exc:
                    raise BenchError(str(exc)) from None
                self._exit.callback(self.postgres.stop)
            self.db_url = self.postgres.create_database("bench")
        else:
            raise ValueError("the database is sqlite or postgres")
        return self.db_url

    def run(self, work: Any) -> Any:
        """``work(store)`` on an opened store of the benchmark's database (operator access)."""
        return asyncio.run(with_store(self.db_url, Kek(self.kek), work))

    def product(self, name: str, quantity: int) -> FleetKeys:
        pf = self.run(lambda s: create_product(s, name, quantity))
        self.keys = FleetKeys(secrets.token_bytes(32), pf.po_id, pf.po_name, pf.pk)
        return self.keys

    def seed_devices(self, count: int) -> float:
        """Devices 0..count-1 as stage 2 leaves them (AK v1 active); returns the seconds taken."""
        keys = self.keys
        assert keys is not None
        t0 = time.perf_counter()

        async def seed(store: Store) -> None:
            at = time.time()
            for start in range(0, count, SEED_BATCH):
                async with store.transaction() as tx:
                    for i in range(start, min(count, start + SEED_BATCH)):
                        await tx.create_device(Device(device_id=keys.device_id(i), po_id=keys.po_id,
                                                      state=DeviceState.ACTIVE, ak=keys.ak(i), ak_version=1,
                                                      provisioned_at=at))

        self.run(seed)
        return time.perf_counter() - t0

    # --- clouds ---------------------------------------------------------------------------------

    def mosquitto(self, count: int = 1) -> list[servers.MosquittoServer]:
        for _ in range(count):
            try:
                broker = servers.start_mosquitto()
            except servers.ServerError as exc:
                raise BenchError(str(exc)) from None
            self._exit.callback(broker.stop)
            self.brokers.append(broker)
        return self.brokers

    def mosquitto_url(self) -> str:
        """The agent's ``--cloud`` URL for the brokers started (several: one shard each)."""
        b = self.brokers
        if not b:
            raise BenchError("no broker started")
        if len(b) == 1:
            return f"mosquitto://{b[0].admin_username}:{b[0].admin_password}@{b[0].host}:{b[0].port}"
        shards = ",".join(f"{x.admin_username}:{x.admin_password}@{x.host}:{x.port}" for x in b[1:])
        return f"mosquitto://{b[0].admin_username}:{b[0].admin_password}@{b[0].host}:{b[0].port}?shards={shards}"

    def start_moto(self) -> servers.MotoServer:
        if self.moto is None:
            try:
                self.moto = servers.start_moto()
            except servers.ServerError as exc:
                raise BenchError(str(exc)) from None
            self._exit.callback(self.moto.stop)
        return self.moto

    # --- agents ---------------------------------------------------------------------------------

    def agent(self, clouds: list[str], profile: Path | None = None, name: str = "agent",
              extra_args: list[str] | None = None) -> servers.AgentServer:
        """An agent process on a free port; with ``profile`` it runs under cProfile and writes its
        statistics there when it stops."""
        log = self.work / f"{name}.log"
        launcher = ("otakey",) if profile is None else ("otakey.bench.profiled", str(profile))
        try:
            agent = servers.start_agent(self.db_url, self.kek.hex(), clouds, log, extra_args,
                                        timeout=30.0 if profile is None else 60.0, launcher=launcher)
        except servers.ServerError as exc:
            raise BenchError(str(exc)) from None
        self._exit.callback(agent.stop, 30.0)
        self.agents.append(agent)
        return agent

    def broker_pids(self) -> list[int]:
        return [b.process.pid for b in self.brokers]


def agent_log_errors(agent: servers.AgentServer, limit: int = 5) -> list[str]:
    """Error lines of an agent's log (the benchmark reports them instead of hiding them)."""
    lines = [ln for ln in agent.log.splitlines() if "level=error" in ln]
    return lines[:limit]


def say_stack(st: Stack) -> None:
    say(f"work folder {st.work}; database {st.db_url.split('?')[0]}")
