"""Fault campaign: randomized sessions over every flow with lost, duplicated, reordered, late,
truncated and mangled frames, closed connections and device power cuts — then a clean link, and
device, agent and cloud must agree (``otakey campaign faults``).

The world is real: an ``otakey agent serve`` process on SQLite (or PostgreSQL), Mosquitto with
dynamic security, and with ``aws`` a moto server as a second cloud. Between the devices and the
agent sits the seeded :class:`~.faults.FaultProxy`.

**Protocol-level sessions.** ``sessions`` sessions run over ``devices`` protocol-level devices
(:class:`~.protocol_device.ProtocolDevice`), session *i* on device *i mod devices*, each device's
sessions in order, many devices at once. A device's first session provisions it (stage 2 and its
first cloud credential); later ones pick a flow from the seed: AK rotation, cloud update,
check-in, and with ``aws`` a migration to the other cloud (the operator's directive, then the
device's idle loop). During the flow the proxy hurts the device's frames (at most ``max_faults``
per session) and, one session in seven, the device loses power at a random point of the flow.
Then the faults stop and the device gets a clean link to converge: it retries and checks in like
the firmware until the agent asks for nothing more.

**Emulated sessions** (``emulated`` devices). The real firmware on the built-in emulator, through
its gateway and the same proxy: provisioning with first credentials, then an AK rotation and a
cloud update asked by the operator (pending action), each under faults and then on a clean link.

**Verdict after every session** (:class:`Checker`): the agent's store holds exactly the device's
AK (same version, nothing pending) and its cloud credential (nothing pending); the audit log has
one CONFIRMED, one ROTATED per AK version after the first and one CLOUD_ACTIVATED per credential
that was ever active; the cloud accepts the device's credential (a real MQTT session on Mosquitto;
the control plane on moto) and refuses every older one; and no AK or cloud secret ever shows up
for two (device, version) pairs. A session that does not converge, or breaks one of these, is
**inconsistent**; its failure names (seed, session) and the command that replays it alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from otakey.agent.product_file import ProductFile
from otakey.errors import Error
from otakey.protocol.messages import Action

from .fault_world import CampaignError, Checker, DeviceView, World, device_uid
from .faults import FaultProxy, FaultRates
from .protocol_device import ProtocolDevice

log = logging.getLogger("otakey.campaign.faults")

FLOW_WEIGHTS = (("ak-rotate", 3), ("cloud-update", 3), ("checkin", 2), ("migrate", 2))
# Where a protocol device may lose power in each flow (ProtocolDevice fault points).
CUT_POINTS = {
    "provision": ("recv:PROV_OFFER", "send:PROV_CONFIRM", "recv:CLOUD_UPDATE", "session",
                  "send:CLOUD_CONFIRM"),
    "ak-rotate": ("recv:AK_ROTATE_OFFER", "send:AK_ROTATE_CONFIRM"),
    "cloud-update": ("recv:CLOUD_UPDATE", "session", "send:CLOUD_CONFIRM"),
    "migrate": ("recv:CHECKIN_REPLY", "recv:CLOUD_UPDATE", "session", "send:CLOUD_CONFIRM"),
    "checkin": ("recv:CHECKIN_REPLY",),
}
CUT_CHANCE = 1 / 7
CONVERGE_ROUNDS = 12
QUICK = {"sessions": 300, "emulated": 1}


@dataclass(frozen=True)
class FaultCampaignSpec:
    sessions: int = 10_000
    seed: int = 0
    emulated: int = 0
    devices: int = 0          # 0: one device per 40 sessions, between 8 and 128
    concurrency: int = 32     # protocol devices in an exchange at once
    aws: bool = False
    db: str = "sqlite"
    fault_rate: float = 0.2
    max_faults: int = 3
    power_cuts: bool = True
    replay: int | None = None  # run only session N (and, clean, the device's sessions before it)
    device_timeout: float = 1.0
    keep: bool = False

    def __post_init__(self) -> None:
        if self.sessions < 0 or self.emulated < 0 or self.devices < 0:
            raise ValueError("sessions, emulated and devices are >= 0")
        if self.concurrency < 1:
            raise ValueError("concurrency is >= 1")
        if self.replay is not None and not 0 <= self.replay < self.sessions:
            raise ValueError("--replay names a session of the run (0 .. sessions-1)")

    @property
    def n_devices(self) -> int:
        if self.devices:
            return min(self.devices, max(1, self.sessions))
        return max(1, min(self.sessions, max(8, min(128, self.sessions // 40))))

    def replay_command(self, session: int) -> str:
        args = ["otakey", "campaign", "faults", "--sessions", str(self.sessions),
                "--devices", str(self.n_devices), "--seed", str(self.seed),
                "--fault-rate", str(self.fault_rate), "--max-faults", str(self.max_faults),
                "--emulated", "0", "--replay", str(session)]
        if self.aws:
            args.append("--aws")
        if self.db != "sqlite":
            args += ["--db", self.db]
        if not self.power_cuts:
            args.append("--no-power-cuts")
        return " ".join(args)


@dataclass
class Failure:
    session: str
    device: str
    flow: str
    problems: list[str]
    faults: list[str]
    replay: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"session": self.session, "device": self.device, "flow": self.flow, "problems": self.problems,
                "faults": self.faults, "replay": self.replay}


@dataclass
class Tally:
    sessions: int = 0
    faults_injected: int = 0
    power_cuts: int = 0
    converged: int = 0
    inconsistent: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    by_flow: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {"sessions": self.sessions, "faults_injected": self.faults_injected,
                "power_cuts": self.power_cuts, "converged": self.converged, "inconsistent": self.inconsistent,
                "faults_by_kind": dict(sorted(self.by_kind.items())),
                "flows": dict(sorted(self.by_flow.items()))}


@dataclass
class FaultSummary:
    seed: int
    protocol: Tally
    emulated: Tally
    seconds: float
    failures: list[Failure]
    aws: bool
    db: str
    devices: int
    frames: int = 0
    workdir: str = ""

    @property
    def sessions(self) -> int:
        return self.protocol.sessions + self.emulated.sessions

    @property
    def faults_injected(self) -> int:
        return self.protocol.faults_injected + self.emulated.faults_injected

    @property
    def converged(self) -> int:
        return self.protocol.converged + self.emulated.converged

    @property
    def inconsistent(self) -> int:
        return self.protocol.inconsistent + self.emulated.inconsistent

    def to_dict(self) -> dict[str, Any]:
        return {"sessions": self.sessions, "faults_injected": self.faults_injected,
                "converged": self.converged,
                "inconsistent": self.inconsistent, "seconds": round(self.seconds, 1), "seed": self.seed,
                "db": self.db, "aws": self.aws, "devices": self.devices, "frames": self.frames,
                "protocol": self.protocol.to_dict(), "emulated": self.emulated.to_dict(),
                "failures": [f.to_dict() for f in self.failures[:50]], "workdir": self.workdir}

    def text(self) -> str:
        lines = [f"fault campaign seed {self.seed}: {self.sessions} sessions, {self.faults_injected} faults "
                 f"injected, {self.converged} converged, {self.inconsistent} inconsistent, "
                 f"{self.seconds:.1f} s",
                 f"  protocol devices: {self.protocol.sessions} sessions on {self.devices} devices, "
                 f"{self.protocol.faults_injected} faults ({self.protocol.power_cuts} power cuts)",
                 f"  emulated devices: {self.emulated.sessions} sessions, "
                 f"{self.emulated.faults_injected} faults ({self.emulated.power_cuts} power cuts)",
                 "  faults: " + ", ".join(f"{k} {v}" for k, v in sorted((self.protocol.by_kind
                                                                        + self.emulated.by_kind).items()))]
        for f in self.failures[:20]:
            lines.append(f"  FAILED session {f.session} ({f.flow}, device {f.device}): "
                         f"{'; '.join(f.problems)}")
            if f.faults:
                lines.append(f"    faults: {', '.join(f.faults)}")
            if f.replay:
                lines.append(f"    replay: {f.replay}")
        if self.workdir:
            lines.append(f"  logs kept in {self.workdir}")
        return "\n".join(lines)


def campaign_products(seed: int) -> tuple[ProductFile, ProductFile]:
    """(PO of the protocol devices, PO of the emulated ones). The emulated PO's PK is fixed so its
    factory image is built once and then taken from the cache; it is a throwaway test PO."""
    proto = ProductFile("FAULTS", 0xFA000000 + seed % 0xFFFF, os.urandom(32), quantity=1_000_000)
    emu = ProductFile("FAULTS-EMU", 0xFA0E0001, hashlib.sha256(b"otakey fault campaign PK").digest(),
                      quantity=1_000_000)
    return proto, emu


class _Proto:
    """The protocol-level half of a campaign."""

    def __init__(self, spec: FaultCampaignSpec, world: World, proxy: FaultProxy, checker: Checker,
                 product: ProductFile, tally: Tally, failures: list[Failure],
                 progress: Callable[[int, int], None] | None) -> None:
        self.spec, self.world, self.proxy, self.checker = spec, world, proxy, checker
        self.product, self.tally, self.failures, self.progress = product, tally, failures, progress
        self.gate = asyncio.Semaphore(spec.concurrency)
        self.platform: dict[bytes, str] = {}

    def flow_of(self, session: int, rng: random.Random) -> str:
        if session < self.spec.n_devices:
            return "provision"
        flows = [(f, w) for f, w in FLOW_WEIGHTS if f != "migrate" or self.spec.aws]
        return rng.choices([f for f, _ in flows], [w for _, w in flows])[0]

    async def device_loop(self, index: int) -> None:
        spec = self.spec
        uid = device_uid(f"faults-{spec.seed}", spec.seed, index)
        dev = ProtocolDevice.from_product(self.product, uid, port=self.proxy.port,
                                          opener=self.world.sessions(), timeout=spec.device_timeout)
        self.platform[uid] = "mosquitto"
        sessions = range(index, spec.sessions, spec.n_devices)
        if spec.replay is not None:
            sessions = range(index, spec.replay + 1, spec.n_devices)
        try:
            for s in sessions:
                async with self.gate:
                    await self.session(dev, s, faults=spec.replay is None or s == spec.replay)
        finally:
            await dev.close()

    async def session(self, dev: ProtocolDevice, s: int, faults: bool) -> None:
        spec = self.spec
        rng = random.Random(f"{spec.seed}:flow:{s}")
        flow = self.flow_of(s, rng)
        uid = dev.device_id
        target: str | None = None
        first_record = len(self.proxy.records)
        self.proxy.begin_session(uid, str(s), faults=faults)
        cut = None
        if faults and spec.power_cuts and rng.random() < CUT_CHANCE:
            cut = rng.choice(CUT_POINTS[flow])
            dev.faults.add("cut", cut)
        try:
            # Updates are the operator's (a gray release marks the device): until one completes,
            # every check-in asks for it again, which is how a device that gave up converges.
            if flow == "migrate":
                target = "aws-iot" if self.platform[uid] == "mosquitto" else "mosquitto"
                await self.world.direct(uid, Action.UPDATE_CLOUD, target)
                self.platform[uid] = target
            elif flow == "ak-rotate":
                await self.world.direct(uid, Action.ROTATE_AK)
            elif flow == "cloud-update":
                await self.world.direct(uid, Action.UPDATE_CLOUD)
            await self.run_flow(dev, flow)
        finally:
            self.proxy.clean(uid)
            await dev.close()
            await self.proxy.settle(uid)  # the faulty phase's frames end here, none arrives later
        cut_happened = cut is not None and dev.faults.planned[("cut", cut)] == 0
        dev.faults.clear()
        problems: list[str] = []
        stuck = await converge(dev)
        if stuck is not None:
            problems.append(stuck)
        else:
            problems = await self.checker.check(DeviceView.of_keystore(uid, dev.session.keystore),
                                                want_platform=self.platform[uid])
        records = self.proxy.records[first_record:]
        mine = [r for r in records if r.session == str(s)]
        t = self.tally
        t.sessions += 1
        t.by_flow[flow] += 1
        t.faults_injected += len(mine) + (1 if cut_happened else 0)
        t.power_cuts += 1 if cut_happened else 0
        t.by_kind.update(r.kind for r in mine)
        if cut_happened:
            t.by_kind["power_cut"] += 1
        if problems:
            t.inconsistent += 1
            desc = [f"{r.direction}#{r.frame} {r.kind} {r.msg_type}" for r in mine]
            if cut_happened:
                desc.append(f"power cut at {cut}")
            self.failures.append(Failure(str(s), uid.hex(), flow, problems, desc, spec.replay_command(s)))
            log.warning("session %d (%s) inconsistent: %s", s, flow, "; ".join(problems))
        else:
            t.converged += 1
        dev.sent.clear()
        dev.answers.clear()
        dev.dropped.clear()
        self.proxy.forget(uid)
        if self.progress is not None:
            self.progress(t.sessions, spec.sessions if spec.replay is None else -1)

    @staticmethod
    async def run_flow(dev: ProtocolDevice, flow: str) -> None:
        """The flow's exchange(s), under faults; outcomes do not matter here, convergence does."""
        if flow == "provision":
            if (await dev.provision()).ok:
                await dev.run_until_idle()
        elif flow == "ak-rotate":
            await dev.rotate_ak()
        elif flow == "cloud-update":
            await dev.request_cloud()
        elif flow == "checkin":
            await dev.checkin()
        elif flow == "migrate":
            await dev.run_until_idle()
        else:  # pragma: no cover
            raise AssertionError(flow)


async def converge(dev: ProtocolDevice) -> str | None:
    """The firmware's idle loop on a clean link: provision while it holds PK, do what the agent
    asks, until a check-in asks for nothing and the device holds a cloud credential. None when
    it got there, else what the last exchanges ended with."""
    seen: list[str] = []
    for _ in range(CONVERGE_ROUNDS):
        if dev.has_pk:
            r = await dev.provision()
            seen.append(f"provision:{r.outcome}{'(' + r.detail + ')' if r.detail else ''}")
            continue
        results = await dev.run_until_idle(max_steps=8)
        seen += [f"{r.outcome}{'(' + r.detail + ')' if r.detail else ''}" for r in results]
        last = results[-1] if results else None
        if (last is not None and last.ok and last.action is Action.NONE and dev.cloud is not None
                and dev.session.pending_action is Action.NONE):
            await dev.close()
            return None
        # A late duplicate answer still on the connection would be read as the answer to the
        # next request (ProtocolDevice gives an exchange up at the first stale answer, where the
        # firmware keeps listening): start over on a fresh connection.
        await dev.close()
    await dev.close()
    return "the device did not converge on a clean link; last exchanges: " + ", ".join(seen[-6:])


class _Emulated:
    """The emulated half: the real firmware, its gateway, the same proxy and agent."""

    SESSIONS = (("provision", None), ("ak-rotate", Action.ROTATE_AK), ("cloud-update", Action.UPDATE_CLOUD))
    FAULTY_MS = 20_000.0     # device time a flow may take under faults
    CONVERGE_MS = 120_000.0  # device time to converge on the clean link
    PATIENCE = 2.0           # wall seconds to wait for the network before device time moves on

    def __init__(self, spec: FaultCampaignSpec, world: World, proxy: FaultProxy, checker: Checker,
                 product: ProductFile, tally: Tally, failures: list[Failure],
                 say: Callable[[str], None]) -> None:
        self.spec, self.world, self.proxy, self.checker = spec, world, proxy, checker
        self.product, self.tally, self.failures, self.say = product, tally, failures, say
        self.cuts = 0

    async def run(self) -> None:
        from otakey.firmware.build import build_firmware, cache_root
        from otakey.firmware.elf import FirmwareElf

        folder = cache_root() / "harness-products"
        folder.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(self.product.factory_record()).hexdigest()[:16]
        path = folder / f"{self.product.po_name}-{digest}.product.json"
        if not path.exists():
            self.product.write(path)
        try:
            elf = FirmwareElf(build_firmware(path, log=self.say).elf)
        except Error as exc:
            raise CampaignError(f"cannot build the emulated devices' firmware: {exc}") from exc
        for index in range(self.spec.emulated):
            await self.device(index, elf)

    async def device(self, index: int, elf: Any) -> None:
        from .emu_backend import EmuBackend
        from .linked import LinkedDevice

        uid = device_uid(f"faults-emu-{self.spec.seed}", self.spec.seed, index)
        dev = EmuBackend.create(elf, uid=uid, seed=self.spec.seed * 7919 + index, name=f"emu{index}")
        linked = LinkedDevice(dev, "127.0.0.1", self.proxy.port, sessions=self.world.sessions(),
                              settle_timeout=30.0)
        await linked.start()
        try:
            dev.power_on()
            for k, (flow, action) in enumerate(self.SESSIONS):
                if not await self.session(linked, f"e{index}.{k}", flow, action):
                    break  # the device is stuck: later flows would only repeat the failure
        finally:
            await linked.close()

    async def session(self, linked: Any, label: str, flow: str, action: Action | None) -> bool:
        dev = linked.device
        uid = dev.uid
        before = self.view(dev)
        first = len(self.proxy.records)
        self.proxy.begin_session(uid, label)
        self.cuts = 0
        rng = random.Random(f"{self.spec.seed}:flow:{label}")
        cut = ""
        if self.spec.power_cuts and rng.random() < 0.5:
            # A flow commits ~30 flash operations per record (stage 2: AK, scrub, credential), so
            # the cut lands inside the flow once it gets that far, else in its recovery.
            k = len(dev.flash_ops) + rng.randint(1, 80 if flow == "provision" else 55)
            torn = rng.choice((None, "done", "partial"))
            dev.cut_power_at_flash_op(k, torn)
            cut = f"power cut at flash op {k} ({torn or 'before'})"
        if action is not None:
            await self.world.direct(uid, action)

        async def moved() -> bool:
            now = self.view(dev)
            if flow == "provision":
                return now.ak is not None and now.cloud is not None
            if flow == "ak-rotate":
                return (now.ak_version or 0) > (before.ak_version or 0)
            old = before.cloud.version if before.cloud is not None else 0
            return now.cloud is not None and now.cloud.version > old

        problems: list[str] = []
        try:
            if not await self.drive(linked, moved, self.FAULTY_MS):
                if linked.last is not None and linked.last.reason.value == "fault":
                    problems.append(f"the firmware faulted: {linked.last.detail}")
        finally:
            self.proxy.clean(uid)
            await self.proxy.settle(uid)  # the clean link is a new connection; nothing old arrives late
        if not problems and not await self.drive(linked, lambda: self.agrees(dev), self.CONVERGE_MS):
            problems.append(f"did not converge within {self.CONVERGE_MS / 1000:.0f} s of device time "
                            f"(device {self.describe(self.view(dev))})")
        if not problems:
            problems = await self.checker.check(self.view(dev))
        mine = [r for r in self.proxy.records[first:] if r.session == label]
        t = self.tally
        t.sessions += 1
        t.by_flow[flow] += 1
        t.faults_injected += len(mine) + self.cuts
        t.power_cuts += self.cuts
        t.by_kind.update(r.kind for r in mine)
        if self.cuts:
            t.by_kind["power_cut"] += self.cuts
        self.proxy.forget(uid)
        if problems:
            t.inconsistent += 1
            desc = [f"{r.direction}#{r.frame} {r.kind} {r.msg_type}" for r in mine]
            if self.cuts:
                desc.append(cut)
            self.failures.append(Failure(label, uid.hex(), f"emulated {flow}", problems, desc,
                                         f"(emulated device {label}; seed {self.spec.seed}, --emulated "
                                         f"{self.spec.emulated})"))
            return False
        t.converged += 1
        self.say(f"emulated {label} {flow}: {len(mine) + self.cuts} faults, converged "
                 f"({self.describe(self.view(dev))})")
        return True

    @staticmethod
    def view(dev: Any) -> DeviceView:
        state = dev.decode_keystore().state
        view = DeviceView.of_keystore(dev.uid, state)
        view.has_pk = dev.key_state().pk_in_flash
        return view

    @staticmethod
    def describe(v: DeviceView) -> str:
        return (f"AK v{v.ak_version}, cloud v{v.cloud.version if v.cloud else None}"
                + (", PK still in flash" if v.has_pk else ""))

    async def agrees(self, dev: Any) -> bool:
        v = self.view(dev)
        if v.ak is None or v.cloud is None or v.has_pk:
            return False
        store = self.world.store
        assert store is not None

        async def work(tx: Any) -> tuple[Any, Any]:
            return await tx.get_device(v.uid), await tx.get_credentials(v.uid)

        row, creds = await store.run(work)
        return (row is not None and row.ak == v.ak and row.ak_pending is None and creds.pending is None
                and creds.current is not None and creds.current.version == v.cloud.version
                and row.pending_action == Action.NONE)

    async def drive(self, linked: Any, done: Callable[[], Any], max_device_ms: float) -> bool:
        """Run the device and carry its traffic until ``await done()`` holds when the device waits,
        or ``max_device_ms`` of device time passed. Unlike ``LinkedDevice.settle`` this never waits
        for an answer that a fault swallowed: after ``PATIENCE`` wall seconds without one, device
        time moves on and the firmware's own time-out and retry take over."""
        from .backend import RunReason
        from .linked import SLICE_INSTRUCTIONS

        dev, gw = linked.device, linked.gateway
        deadline = dev.device_ms + max_device_ms

        def forward() -> None:
            data = dev.read()
            if data:
                gw.feed_from_device(data)

        out = dev.run_until_idle(SLICE_INSTRUCTIONS)
        while True:
            linked.last = out
            forward()
            if out.reason is RunReason.FAULT:
                return False
            if out.reason is RunReason.POWER_CUT:
                self.cuts += 1  # SRAM lost, flash kept: the device boots again
                dev.power_on()
                out = dev.run_until_idle(SLICE_INSTRUCTIONS)
                continue
            with contextlib.suppress(TimeoutError):
                await gw.wait_for(lambda: dev.input_pending() or gw.is_settled(), self.PATIENCE)
            if dev.input_pending():
                out = dev.run_until_idle(SLICE_INSTRUCTIONS)
                continue
            if await done():
                return True
            if dev.device_ms >= deadline:
                return False
            out = dev.run_for(deadline - dev.device_ms, stop_on_output=True)


async def run_fault_campaign_async(spec: FaultCampaignSpec,
                                   progress: Callable[[int, int], None] | None = None,
                                   log_line: Callable[[str], None] | None = None) -> FaultSummary:
    say = log_line or (lambda _line: None)
    started = time.monotonic()
    world = World(aws=spec.aws, db=spec.db)
    proto_po, emu_po = campaign_products(spec.seed)
    protocol, emulated = Tally(), Tally()
    failures: list[Failure] = []
    proxy: FaultProxy | None = None
    ok = False
    try:
        await world.start()
        await world.add_product(proto_po)
        if spec.emulated:
            await world.add_product(emu_po)
        agent = world.start_agent()
        say(f"agent on 127.0.0.1:{agent.port} ({spec.db})"
            + (f", mosquitto :{world.mosquitto.port}" if world.mosquitto else "")
            + (f", moto :{world.moto.port}" if world.moto else ""))
        proxy = FaultProxy("127.0.0.1", agent.port, seed=spec.seed, rates=FaultRates(spec.fault_rate),
                           max_faults_per_session=spec.max_faults, long_delay=spec.device_timeout * 1.5)
        await proxy.start()
        checker = Checker(world)
        if spec.sessions:
            half = _Proto(spec, world, proxy, checker, proto_po, protocol, failures, progress)
            indices = range(spec.n_devices) if spec.replay is None else [spec.replay % spec.n_devices]
            await asyncio.gather(*(half.device_loop(i) for i in indices))
        if spec.emulated and spec.replay is None:
            say(f"emulated devices: {spec.emulated} (building or reusing the factory image)")
            await _Emulated(spec, world, proxy, checker, emu_po, emulated, failures, say).run()
        ok = not failures
    finally:
        frames = proxy.counters["frames"] if proxy is not None else 0
        if proxy is not None:
            await proxy.close()
        await world.close()
        keep = spec.keep or not ok
        if not keep:
            world.remove_workdir()
    return FaultSummary(spec.seed, protocol, emulated, time.monotonic() - started, failures, spec.aws,
                        spec.db, spec.n_devices if spec.sessions else 0, frames,
                        str(world.workdir) if keep else "")


def run_fault_campaign(spec: FaultCampaignSpec, progress: Callable[[int, int], None] | None = None,
                       log_line: Callable[[str], None] | None = None) -> FaultSummary:
    return asyncio.run(run_fault_campaign_async(spec, progress, log_line))
