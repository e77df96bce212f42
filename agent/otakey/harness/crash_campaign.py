"""Agent-crash campaign: ``kill -9`` of the agent at random moments while a whole fleet rotates its
keys, restart, and every device must converge with no key lost or issued twice and an audit log
that accounts for every key (``otakey campaign agent-crash``).

1. **Setup** (no kills): ``devices`` protocol-level devices provision (stage 2 and first cloud
   credentials) against ``agents`` agent processes (one on SQLite; one or three replicas on one
   PostgreSQL), Mosquitto with dynamic security as the cloud.
2. **Rotation under kills.** The operator marks every device for an AK rotation (``rotate`` ``ak``
   or ``both``); each device runs the firmware's idle loop (check in, rotate when asked, then with
   ``cloud`` or ``both`` ask for a new cloud credential) and goes to another replica (or waits for
   the restarted one) whenever an exchange fails. Meanwhile ``kills`` times, after a seeded random
   pause, one agent (chosen from the seed) dies: either by ``SIGKILL`` from outside, wherever it is,
   or — when it was restarted *armed* — by itself at a named crash point inside its transaction
   (``OTAKEY_CRASH_AT``: before the commit, after the commit before the answer, between a cloud
   call and the store write), whichever comes first. It is restarted at once on the same port,
   armed or not from the seed. After the last kill the agents run clean.
3. **Verdict** per device (the fault campaign's :class:`~.fault_world.Checker`): the device and
   the store hold the same AK and cloud credential with nothing pending; the audit log has one
   CONFIRMED, one ROTATED per AK version after the first, at least one ISSUED per version, one
   CLOUD_ISSUED per credential and one CLOUD_ACTIVATED per credential ever active; the broker
   accepts the device's credential and refuses the older ones; no AK or secret belongs to two
   (device, version) pairs. Devices that did not reach the rotated keys are failures too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from otakey.agent.product_file import ProductFile
from otakey.protocol.messages import Action

from .fault_world import CampaignError, Checker, DeviceView, World, device_uid
from .protocol_device import ProtocolDevice
from .servers import AgentServer, free_port

log = logging.getLogger("otakey.campaign.crash")

ROTATIONS = ("ak", "cloud", "both")
AK_POINTS = ("before_commit:AK_ROTATE_HELLO", "after_commit:AK_ROTATE_HELLO",
             "before_commit:AK_ROTATE_CONFIRM", "after_commit:AK_ROTATE_CONFIRM",
             "before_commit:CHECKIN", "after_commit:CHECKIN")
CLOUD_POINTS = ("after_cloud:CLOUD_REQUEST", "before_commit:CLOUD_REQUEST", "after_commit:CLOUD_REQUEST",
                "after_cloud:activate", "before_commit:CLOUD_CONFIRM", "after_commit:CLOUD_CONFIRM")
QUICK = {"devices": 150, "kills": 4, "pause": (0.02, 0.15)}
IDLE_STEPS = 8


@dataclass(frozen=True)
class CrashCampaignSpec:
    devices: int = 2000
    db: str = "sqlite"
    agents: int = 1
    kills: int = 10
    seed: int = 0
    rotate: str = "both"
    concurrency: int = 64
    pause: tuple[float, float] = (0.3, 1.5)   # seconds between two kills (seeded)
    armed: float = 0.5                        # chance that a restarted agent carries a crash point
    device_timeout: float = 3.0
    deadline: float = 900.0                   # wall seconds the rotation may take after the last kill
    keep: bool = False

    def __post_init__(self) -> None:
        if self.devices < 1 or self.kills < 0 or self.concurrency < 1:
            raise ValueError("devices >= 1, kills >= 0, concurrency >= 1")
        if self.db not in ("sqlite", "postgres"):
            raise ValueError("--db is sqlite or postgres")
        if self.agents not in (1, 3):
            raise ValueError("--agents is 1 or 3")
        if self.agents > 1 and self.db != "postgres":
            raise ValueError("agent replicas share one PostgreSQL database: "
                             "use --db postgres with --agents 3")
        if self.rotate not in ROTATIONS:
            raise ValueError(f"--rotate is one of {', '.join(ROTATIONS)}")
        if not 0 < self.pause[0] <= self.pause[1]:
            raise ValueError("pause is (low, high) seconds with 0 < low <= high")
        if not 0.0 <= self.armed <= 1.0:
            raise ValueError("armed is a probability")

    @property
    def crash_points(self) -> tuple[str, ...]:
        """The named points the traffic of the rotation reaches."""
        points = AK_POINTS if self.rotate in ("ak", "both") else AK_POINTS[-2:]
        return points + (CLOUD_POINTS if self.rotate in ("cloud", "both") else ())


@dataclass
class CrashFailure:
    device: str
    problems: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "problems": self.problems}


@dataclass
class CrashSummary:
    spec: CrashCampaignSpec
    kills: int = 0
    kills_by: Counter[str] = field(default_factory=Counter)
    restarts: int = 0
    kills_during_rotation: int = 0
    converged: int = 0
    inconsistent: int = 0
    setup_seconds: float = 0.0
    rotation_seconds: float = 0.0
    seconds: float = 0.0
    failures: list[CrashFailure] = field(default_factory=list)
    workdir: str = ""

    def to_dict(self) -> dict[str, Any]:
        s = self.spec
        return {"devices": s.devices, "db": s.db, "agents": s.agents, "rotate": s.rotate, "seed": s.seed,
                "kills": self.kills, "kills_by": dict(sorted(self.kills_by.items())),
                "kills_during_rotation": self.kills_during_rotation, "restarts": self.restarts,
                "converged": self.converged, "inconsistent": self.inconsistent,
                "setup_seconds": round(self.setup_seconds, 1),
                "rotation_seconds": round(self.rotation_seconds, 1),
                "seconds": round(self.seconds, 1), "failures": [f.to_dict() for f in self.failures[:50]],
                "workdir": self.workdir}

    def text(self) -> str:
        s = self.spec
        by = ", ".join(f"{k} {v}" for k, v in sorted(self.kills_by.items()))
        lines = [f"agent-crash campaign seed {s.seed}: {s.devices} devices, {s.agents} agent(s) on {s.db}, "
                 f"rotate {s.rotate}: {self.kills} kills ({by}; {self.kills_during_rotation} during the "
                 f"rotation), {self.converged} converged, {self.inconsistent} inconsistent, "
                 f"{self.seconds:.1f} s "
                 f"(setup {self.setup_seconds:.1f} s, rotation {self.rotation_seconds:.1f} s)"]
        for f in self.failures[:20]:
            lines.append(f"  FAILED device {f.device}: {'; '.join(f.problems)}")
        if self.workdir:
            lines.append(f"  logs kept in {self.workdir}")
        return "\n".join(lines)


class _Replicas:
    """The agent processes, each on a fixed port so a restart takes its place."""

    def __init__(self, world: World, n: int) -> None:
        self.world = world
        self.ports = [free_port() for _ in range(n)]
        self.procs: list[AgentServer | None] = [None] * n
        self.armed: list[str | None] = [None] * n
        self.starts = 0

    def start(self, i: int, crash_at: str | None = None) -> None:
        self.procs[i] = self.world.start_agent(f"agent{i}", self.ports[i], crash_at=crash_at)
        self.armed[i] = crash_at
        self.starts += 1

    def alive(self, i: int) -> bool:
        p = self.procs[i]
        return p is not None and p.process.poll() is None

    def kill9(self, i: int) -> None:
        p = self.procs[i]
        if p is not None and p.process.poll() is None:
            p.process.kill()
            p.process.wait(10)

    def died_at_point(self, i: int) -> bool:
        p = self.procs[i]
        return p is not None and "event=crash_injected" in p.log


class _Fleet:
    def __init__(self, spec: CrashCampaignSpec, world: World, replicas: _Replicas,
                 product: ProductFile) -> None:
        self.spec, self.world, self.replicas = spec, world, replicas
        opener = world.sessions()
        ports = replicas.ports
        self.devices = [ProtocolDevice.from_product(product, device_uid(f"crash-{spec.seed}", spec.seed, i),
                                                    port=ports[i % len(ports)], opener=opener,
                                                    timeout=spec.device_timeout)
                        for i in range(spec.devices)]
        self.remaining = 0  # devices still short of their goal in the current phase
        self.gate = asyncio.Semaphore(spec.concurrency)
        self.stuck: dict[bytes, str] = {}

    async def drive(self, index: int, done: Callable[[ProtocolDevice], bool], deadline: float,
                    after_ak: bool = False) -> bool:
        """The device's idle loop until ``done`` holds after a quiet check-in; on any failed
        exchange it goes to the next replica (a killed agent may still be restarting)."""
        d = self.devices[index]
        ports = self.replicas.ports
        tries = 0
        # The firmware asks for a new credential only while it holds the old one: once the new
        # one is committed, a lost confirm is settled by the next check-in's fingerprint.
        old_cloud = d.cloud.version if d.cloud is not None else 0
        seen: list[str] = []
        while time.monotonic() < deadline:
            async with self.gate:
                d.port = ports[(index + tries) % len(ports)]
                has_old = (d.cloud.version if d.cloud is not None else 0) == old_cloud
                if after_ak and has_old and d.ak_version is not None and d.ak_version >= 2:
                    r = await d.request_cloud()
                    seen.append(f"cloud:{r.outcome}")
                    results = [r] if not r.ok else await d.run_until_idle(IDLE_STEPS)
                else:
                    results = await d.run_until_idle(IDLE_STEPS)
                await d.close()
            seen += [r.outcome for r in results]
            last = results[-1] if results else None
            if (last is not None and last.ok and last.action is Action.NONE
                    and d.session.pending_action is Action.NONE and done(d)):
                self.stuck.pop(d.device_id, None)
                self.remaining -= 1
                return True
            if last is None or not last.ok:
                tries += 1
                await asyncio.sleep(0.05 + 0.05 * min(tries, 10))
            else:
                await asyncio.sleep(0.2)  # the next check-in (the firmware waits its interval)
        self.stuck[d.device_id] = ", ".join(seen[-8:])
        self.remaining -= 1
        return False


async def _killer(spec: CrashCampaignSpec, replicas: _Replicas, summary: CrashSummary, fleet: _Fleet,
                  rng: random.Random) -> None:
    """``spec.kills`` kills, each after a seeded pause; restarts at once (armed or not)."""
    n = len(replicas.ports)

    def count(how: str) -> None:
        summary.kills += 1
        summary.kills_by[how] += 1
        if fleet.remaining > 0:
            summary.kills_during_rotation += 1

    for _ in range(spec.kills):
        i = rng.randrange(n)
        pause = rng.uniform(*spec.pause)
        end = time.monotonic() + pause
        while time.monotonic() < end and replicas.alive(i):
            await asyncio.sleep(0.02)
        if replicas.alive(i):
            replicas.kill9(i)
            how = "sigkill"
        else:
            how = f"point:{replicas.armed[i]}" if replicas.died_at_point(i) else "died"
        count("sigkill" if how == "sigkill" else "crash_point")
        log.info("kill %d: agent %d (%s)", summary.kills, i, how)
        armed = rng.choice(spec.crash_points) if rng.random() < spec.armed else None
        await asyncio.to_thread(replicas.start, i, armed)
        summary.restarts += 1
    # The last restarts may be armed: make every agent clean for the convergence.
    for i in range(n):
        if replicas.armed[i] is not None:
            if replicas.alive(i):
                replicas.kill9(i)
                count("sigkill")
            elif replicas.died_at_point(i):
                count("crash_point")
            await asyncio.to_thread(replicas.start, i, None)
            summary.restarts += 1
    for i in range(n):
        if not replicas.alive(i):  # died at an armed point between the checks above
            await asyncio.to_thread(replicas.start, i, None)
            summary.restarts += 1


def _rearm(replicas: _Replicas, i: int, point: str) -> None:
    p = replicas.procs[i]
    if p is not None:
        p.stop()  # graceful: nothing in flight at this moment
    replicas.start(i, point)


async def run_crash_campaign_async(spec: CrashCampaignSpec,
                                   log_line: Callable[[str], None] | None = None) -> CrashSummary:
    say = log_line or (lambda _line: None)
    started = time.monotonic()
    summary = CrashSummary(spec)
    world = World(db=spec.db)
    product = ProductFile("CRASH", 0xC0000000 + spec.seed % 0xFFFF, os.urandom(32), quantity=spec.devices)
    ok = False
    try:
        await world.start()
        await world.add_product(product)
        replicas = _Replicas(world, spec.agents)
        for i in range(spec.agents):
            replicas.start(i)
        fleet = _Fleet(spec, world, replicas, product)
        say(f"{spec.agents} agent(s) on {spec.db}, ports {replicas.ports}; "
            f"provisioning {spec.devices} devices")

        # 1. setup, no kills
        t0 = time.monotonic()
        deadline = t0 + spec.deadline
        fleet.remaining = spec.devices
        ready = await asyncio.gather(*(fleet.drive(i, lambda d: d.cloud is not None, deadline)
                                       for i in range(spec.devices)))
        if not all(ready):
            raise CampaignError(f"{ready.count(False)} devices did not provision before any kill: "
                                + "; ".join(f"{k.hex()}: {v}" for k, v in list(fleet.stuck.items())[:3]))
        summary.setup_seconds = time.monotonic() - t0
        say(f"setup done in {summary.setup_seconds:.1f} s; rotating ({spec.rotate}) under {spec.kills} kills")

        # 2. rotation under kills
        t1 = time.monotonic()
        uids = [d.device_id for d in fleet.devices]
        want_ak = 2 if spec.rotate in ("ak", "both") else 1
        want_cloud = 2 if spec.rotate in ("cloud", "both") else 1
        assert world.store is not None
        if want_ak == 2:
            for start in range(0, len(uids), 500):
                chunk = uids[start:start + 500]
                await world.store.run(lambda tx, chunk=chunk: tx.set_pending_action(chunk, Action.ROTATE_AK))

        def done(d: ProtocolDevice) -> bool:
            return (d.ak_version == want_ak and d.cloud is not None and d.cloud.version == want_cloud)

        # Agents restarted armed (from the seed) die by themselves at a named point of their work.
        rng = random.Random(f"{spec.seed}:kills")
        if spec.kills:
            for i in range(spec.agents):
                if rng.random() < spec.armed:
                    await asyncio.to_thread(_rearm, replicas, i, rng.choice(spec.crash_points))
                    summary.restarts += 1
        fleet.remaining = spec.devices
        killer = asyncio.create_task(_killer(spec, replicas, summary, fleet, rng))
        drivers = asyncio.gather(*(fleet.drive(i, done, time.monotonic() + spec.deadline,
                                               after_ak=want_cloud == 2) for i in range(spec.devices)))
        try:
            await killer
            finished = await asyncio.wait_for(drivers, spec.deadline + 60)
        finally:
            if not killer.done():
                killer.cancel()
            with contextlib.suppress(BaseException):
                await killer
        summary.rotation_seconds = time.monotonic() - t1
        say(f"rotation done in {summary.rotation_seconds:.1f} s, {summary.kills} kills; checking")

        # 3. verdict
        checker = Checker(world)
        for d, reached in zip(fleet.devices, finished, strict=True):
            have_cloud = d.cloud.version if d.cloud else None
            problems = [] if reached else [f"did not reach AK v{want_ak}/cloud v{want_cloud} "
                                           f"(device AK v{d.ak_version}, cloud v{have_cloud};"
                                           f" last: {fleet.stuck.get(d.device_id, '')})"]
            view = DeviceView.of_keystore(d.device_id, d.session.keystore)
            problems += await checker.check(view, final=True)
            if problems:
                summary.inconsistent += 1
                summary.failures.append(CrashFailure(d.device_id.hex(), problems))
            else:
                summary.converged += 1
        ok = summary.inconsistent == 0
    finally:
        await world.close()
        keep = spec.keep or not ok
        if keep:
            summary.workdir = str(world.workdir)
        else:
            world.remove_workdir()
    summary.seconds = time.monotonic() - started
    return summary


def run_crash_campaign(spec: CrashCampaignSpec,
                       log_line: Callable[[str], None] | None = None) -> CrashSummary:
    return asyncio.run(run_crash_campaign_async(spec, log_line))
