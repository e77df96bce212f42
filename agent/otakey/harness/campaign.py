"""Power-cut campaigns: cut the device's power at every flash operation of a key flow and prove that
it always comes back holding the old or the new key — never neither — and that agent, cloud and
device agree afterwards (STYLE.md rules 5-6; MCUboot's cut-at-every-flash-op simulator and
brickproof are the anchors).

A campaign for one flow (``provision``, ``ak-rotate``, ``cloud-update``, ``migrate`` — a cloud update
from Mosquitto to AWS IoT on moto) runs the real firmware on the ``emu`` backend against a real agent
(in-process, SQLite), a real Mosquitto with dynamic security and, for ``migrate``, a moto server:

1. **Snapshot.** The state right before the flow: the device's two keystore areas, the agent's
   database (SQLite backup), and the device's credentials in the cloud. For ``provision`` that is
   the factory image; for the others a device provisioned once, with the operator's request
   (rotate, update, migrate) marked in the store.
2. **Golden run.** From the snapshot, the flow runs without a cut; every flash operation (each
   erase, each program store) is recorded with the instruction count at which it happened.
3. **Replays.** For every operation *k*: a cut just before it, torn in the middle of it (``--torn``:
   an erase leaves some rows erased, a program leaves some bits cleared), and just after it. Each
   replay restores the snapshot (a fresh chip with the snapshot's flash, the database copied back,
   the cloud put back), runs to the cut, and powers the device on again — SRAM lost, flash kept.
   With ``--depth 2`` the recovery is cut once more, at one of its own flash operations chosen
   from the seed.
4. **Verdict** after each cut: the flash must boot into one of the flow's committed states (the old
   key, the new one, or for provisioning the step between); the device must then finish the flow;
   the agent must hold exactly the keys the device holds, with nothing pending; the credential in
   the device's flash must connect through the gateway's session opener, and a credential the flow
   replaced must be refused. A device without a valid key, one that faults, or one that cannot
   finish is **bricked**; every other violation is **inconsistent**.

Cut points are spread over worker processes (each with its own servers, agent and snapshot: two
processes use both cores). Every failure comes with the command that replays that cut alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import multiprocessing
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from queue import Empty
from typing import Any

from otakey.agent.product_file import ProductFile
from otakey.emu.bus import FlashOp
from otakey.errors import DeviceError, Error
from otakey.firmware.elf import FirmwareElf
from otakey.protocol.cloudsession import SessionStatus
from otakey.protocol.keystore import AREA_A, AREA_B
from otakey.protocol.messages import CloudCredential, Platform
from otakey.store import Action

from .backend import KeyState, RunReason
from .emu_backend import EmuBackend
from .linked import LinkedDevice
from .stack import MAX_DEVICE_MS, Stack, converge, disagreement, product_firmware

FLOWS = ("provision", "ak-rotate", "cloud-update", "migrate")
MODES = ("none", "partial", "done")  # cut cleanly before the operation, torn in it, just after it
CAMPAIGN_PO = ("CAMPAIGN", 7)
QUICK_PROGRAMS = 1  # record words sampled from the middle of each run of them in --quick
RETARGET_TRIES = 12  # runs of one cut point until its operation is the golden run's

log = logging.getLogger("otakey.campaign")


class CampaignError(Error):
    """A campaign could not run (a server, the firmware build, a golden run that fails)."""


# --------------------------------------------------------------------------------------------- what to cut


@dataclass(frozen=True)
class CutPoint:
    """One replay: a cut at flash op ``op`` (1-based from the flow's start) left as ``mode``, or at
    instruction ``instruction``; optionally a second cut at op ``second_op`` (1-based from the power-on
    after the first cut) left as ``second_mode``."""

    op: int | None = None
    mode: str = "none"
    instruction: int | None = None
    second_op: int | None = None
    second_mode: str = "none"
    what: str | None = field(default=None, compare=False)  # the golden run's name of op ``op``

    def label(self) -> str:
        first = (
            f"instruction {self.instruction}" if self.instruction is not None else f"op {self.op} {self.mode}"
        )
        return first + (f" + recovery op {self.second_op} {self.second_mode}" if self.second_op else "")

    def replay_args(self) -> list[str]:
        args = (
            ["--at-instruction", str(self.instruction)]
            if self.instruction is not None
            else ["--cut-op", str(self.op), "--torn", self.mode]
        )
        if self.second_op is not None:
            args += ["--second-op", str(self.second_op), "--second-torn", self.second_mode]
        return args


def chip_torn(mode: str) -> str | None:
    return {"none": None, "partial": "partial", "done": "done"}[mode]


@dataclass(frozen=True)
class OpInfo:
    """A flash operation of the golden run, described for people."""

    index: int
    kind: str
    area: str
    offset: int
    instruction: int
    what: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def describe_ops(ops: Sequence[FlashOp], firmware: FirmwareElf) -> list[OpInfo]:
    """Name every operation: the erase of the target area, record words, the commit word, the PK
    scrub (an erase after a commit), an invalidation (commit word programmed to 0)."""
    out = []
    committed = False
    for op in ops:
        area = "?"
        offset = 0
        for name in (AREA_A, AREA_B):
            a = firmware.area(name)
            if a.address <= op.address < a.end:
                area, offset = name, op.address - a.address
        if op.kind == "erase":
            what = f"{'PK scrub erase' if committed else 'erase'} of area {area}"
            committed = False
        elif offset == 0 and op.value == 0x3CC3A55A:
            what = f"commit word of area {area}"
            committed = True
        elif offset == 0 and op.value == 0:
            what = f"invalidation of area {area}"
        else:
            what = f"record word at +0x{offset:X} of area {area}"
        out.append(OpInfo(op.index, op.kind, area, offset, op.instruction, what))
    return out


def plan(ops: Sequence[OpInfo], torn: bool, quick: bool, seed: int) -> list[CutPoint]:
    """The cut points of a sweep: before and after every operation, and torn in it with ``torn``.
    ``quick`` keeps every erase and commit word, the first and last record word of each run of
    record words, and one seeded word between them (the same subset for the same seed)."""
    chosen = list(ops)
    if quick:
        rng = random.Random(f"quick:{seed}")
        keep: set[int] = set()
        run: list[OpInfo] = []
        for op in [*ops, None]:
            if op is not None and op.what.startswith("record word"):
                run.append(op)
                continue
            if run:
                keep.update({run[0].index, run[-1].index})
                middle = run[1:-1]
                keep.update(o.index for o in rng.sample(middle, min(QUICK_PROGRAMS, len(middle))))
                run = []
            if op is not None:
                keep.add(op.index)
        chosen = [op for op in ops if op.index in keep]
    modes = MODES if torn else ("none", "done")
    return [CutPoint(op=op.index, mode=m, what=op.what) for op in chosen for m in modes]


# --------------------------------------------------------------------------------------------- the flows


@dataclass(frozen=True)
class Stage:
    """A committed keystore state of the device, as the boot rule sees it."""

    keys: str
    ak_version: int | None
    cloud_version: int | None
    cloud_platform: int | None

    @classmethod
    def of(cls, k: KeyState) -> Stage:
        return cls(k.keys, k.ak_version, k.cloud_version, k.cloud_platform)

    def __str__(self) -> str:
        return f"{self.keys}(ak={self.ak_version}, cloud={self.cloud_version}@{self.cloud_platform})"


# Old state, the steps between (if any) and the new state of each flow.
STAGES: dict[str, tuple[Stage, ...]] = {
    "provision": (
        Stage("factory", None, None, None),
        Stage("provisioned", 1, None, None),
        Stage("cloud", 1, 1, int(Platform.MOSQUITTO)),
    ),
    "ak-rotate": (
        Stage("cloud", 1, 1, int(Platform.MOSQUITTO)),
        Stage("cloud", 2, 1, int(Platform.MOSQUITTO)),
    ),
    "cloud-update": (
        Stage("cloud", 1, 1, int(Platform.MOSQUITTO)),
        Stage("cloud", 1, 2, int(Platform.MOSQUITTO)),
    ),
    "migrate": (Stage("cloud", 1, 1, int(Platform.MOSQUITTO)), Stage("cloud", 1, 2, int(Platform.AWS_IOT))),
}


def campaign_product() -> ProductFile:
    """The PO of campaign devices. Its PK is fixed (a throwaway test PO, never a real one), so the
    factory image is built once and reused from the cache."""
    return ProductFile(
        CAMPAIGN_PO[0],
        CAMPAIGN_PO[1],
        hashlib.sha256(b"otakey power-cut campaign PK").digest(),
        quantity=1_000_000,
    )


def campaign_firmware(log_line: Callable[[str], None] | None = None) -> Path:
    """The campaign PO's factory image."""
    return product_firmware(campaign_product(), log_line)


# --------------------------------------------------------------------------------------------- replays


@dataclass
class CutResult:
    point: CutPoint
    reached: bool = False
    outcome: str = "ok"  # ok | bricked | inconsistent | not-reached
    detail: str = ""
    boot: str = ""  # the stage the flash booted into after the (last) cut
    recovery_ops: int = 0
    second_reached: bool = False
    attempts: int = 1  # runs needed until op ``op`` was the golden run's operation
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["point"] = self.point.label()
        return d


class Verdict(Exception):
    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.detail = detail


@dataclass
class Snapshot:
    areas: dict[str, bytes]
    db: Path
    clients: dict[str, CloudCredential]
    replaced: CloudCredential | None  # the credential the flow replaces (must be refused after)


class Runner:
    """One process's world for a flow: a stack, one device identity, its snapshot, and replays."""

    def __init__(self, flow: str, elf: Path, seed: int, index: int = 0) -> None:
        if flow not in FLOWS:
            raise ValueError(f"the flow is one of {', '.join(FLOWS)}")
        self.flow = flow
        self.firmware = FirmwareElf(elf)
        self.seed = seed
        self.uid = hashlib.sha256(f"otakey-campaign:{flow}:{seed}".encode()).digest()[:12]
        self.stack = Stack(campaign_product(), aws=flow == "migrate", name=f"campaign{index}")
        self.stages = STAGES[flow]
        self.snapshot: Snapshot | None = None
        self.device_seed = seed

    async def start(self) -> None:
        await self.stack.start()
        self.snapshot = await self._take_snapshot()

    async def close(self) -> None:
        await self.stack.close()

    def _device(self) -> EmuBackend:
        dev = EmuBackend.create(
            self.firmware, uid=self.uid, seed=self.device_seed, name=f"campaign-{self.flow}"
        )
        if self.snapshot is not None:
            for area, data in self.snapshot.areas.items():
                dev.write_flash(area, data)
        return dev

    def _flash_credential(self, dev: EmuBackend) -> CloudCredential | None:
        result = dev.decode_keystore()
        return None if result.state is None else result.state.cloud

    async def _take_snapshot(self) -> Snapshot:
        stack = self.stack
        areas = {AREA_A: self.firmware.area_image(AREA_A), AREA_B: self.firmware.area_image(AREA_B)}
        replaced = None
        clients: dict[str, CloudCredential] = {}
        if self.flow != "provision":
            dev = self._device()
            try:
                ld = stack.link(dev)
                await ld.start()
                try:
                    dev.power_on()
                    await self._finish(ld, self.stages[0])
                finally:
                    await ld.close()
                dev.cut_power()
                areas = {a: dev.read_flash(a) for a in (AREA_A, AREA_B)}
                replaced = self._flash_credential(dev)
            finally:
                dev.close()
            assert replaced is not None
            clients = {replaced.username: replaced}
            action = Action.ROTATE_AK if self.flow == "ak-rotate" else Action.UPDATE_CLOUD
            await stack.request(self.uid, action, "aws-iot" if self.flow == "migrate" else None)
        db = stack.workdir / "snapshot.db"
        stack.save_db(db)
        return Snapshot(areas, db, clients, replaced)

    async def _restore(self) -> None:
        assert self.snapshot is not None
        self.stack.restore_db(self.snapshot.db)
        await self.stack.restore_cloud(self.uid, self.snapshot.clients)

    # --- driving ---------------------------------------------------------------------------------
    async def _finish(self, ld: LinkedDevice, goal: Stage, max_device_ms: float = MAX_DEVICE_MS) -> bool:
        dev = ld.device
        return await converge(
            self.stack, ld, self.uid, lambda: Stage.of(dev.key_state()) == goal, max_device_ms
        )

    async def _disagreement(self, dev: EmuBackend) -> str:
        return await disagreement(self.stack, self.uid, dev)

    def _boot_check(self, dev: EmuBackend) -> str:
        """The stage the flash boots into; Verdict when it is none of the flow's stages."""
        k = dev.key_state()
        stage = Stage.of(k)
        if k.keys == "none":
            raise Verdict("bricked", "no valid keystore area after the cut")
        if stage not in self.stages:
            raise Verdict("inconsistent", f"boots into {stage}, neither the old nor the new state")
        return str(stage)

    async def _cut_once(self, ld: LinkedDevice, limit: float) -> bool:
        """Run the device (which has a cut scheduled) until the flow ends or the cut; True if cut."""
        dev = ld.device
        await ld.run_until(
            lambda: Stage.of(dev.key_state()) == self.stages[-1] and not dev.input_pending(), limit
        )
        cut = ld.last is not None and ld.last.reason is RunReason.POWER_CUT
        with contextlib.suppress(TimeoutError):
            await ld.gateway.settled(ld.settle_timeout)  # what the device sent before the cut is answered
        if not cut:
            dev.cut_power()  # the flow ended first: the scheduled cut is dropped with the power
        return cut

    async def _first_cut(self, point: CutPoint) -> tuple[EmuBackend, LinkedDevice, bool]:
        """Restore the snapshot, arm the cut, run the flow into it; the device is then off."""
        await self._restore()
        dev = self._device()
        ld = self.stack.link(dev)
        await ld.start()
        try:
            if point.instruction is not None:
                dev.cut_power_at_instruction(point.instruction)
            else:
                assert point.op is not None
                dev.cut_power_at_flash_op(point.op, chip_torn(point.mode))
            dev.power_on()
            return dev, ld, await self._cut_once(ld, MAX_DEVICE_MS)
        except BaseException:
            await ld.close()
            raise

    def _missed(self, point: CutPoint, dev: EmuBackend) -> bool:
        """Whether op ``point.op`` of this run is not the operation the golden run had there: a
        record's length can differ between runs (an AWS certificate's PEM does), which moves the
        operations after it."""
        if point.what is None or point.op is None:
            return False
        seen = describe_ops(dev.flash_ops, self.firmware)
        return len(seen) < point.op or seen[point.op - 1].what != point.what

    async def replay(self, point: CutPoint) -> CutResult:
        started = time.monotonic()
        result = CutResult(point)
        for attempt in range(1, RETARGET_TRIES + 1):
            dev, ld, reached = await self._first_cut(point)
            result.attempts = attempt
            if attempt == RETARGET_TRIES or not self._missed(point, dev):
                break
            await ld.close()  # the agent gave this run a record of another length: run it again
        try:
            result.reached = reached
            if not reached:
                result.outcome = "not-reached"
                result.detail = "the flow ended before the cut point"
                return result
            result.boot = self._boot_check(dev)
            ops_before = len(dev.flash_ops)
            if point.second_op is not None:
                dev.power_on()
                dev.cut_power_at_flash_op(ops_before + point.second_op, chip_torn(point.second_mode))
                result.second_reached = await self._cut_once(ld, MAX_DEVICE_MS)
                result.boot = self._boot_check(dev)
                ops_before = len(dev.flash_ops)
            dev.power_on()
            if not await self._finish(ld, self.stages[-1]):
                stage = Stage.of(dev.key_state())
                why = await self._disagreement(dev)
                if stage != self.stages[-1]:
                    raise Verdict(
                        "bricked",
                        f"did not finish the flow: holds {stage} after "
                        f"{MAX_DEVICE_MS / 1000:.0f} s of device time ({ld.last})",
                    )
                raise Verdict("inconsistent", why)
            result.recovery_ops = len(dev.flash_ops) - ops_before
            await self._check_cloud(dev)
        except Verdict as v:
            result.outcome, result.detail = v.outcome, v.detail
        except DeviceError as exc:
            result.outcome, result.detail = "bricked", f"device error: {exc}"
        finally:
            await ld.close()
            result.seconds = time.monotonic() - started
        if result.outcome == "ok" and ld.last is not None and ld.last.reason is RunReason.FAULT:
            result.outcome, result.detail = "bricked", f"fault: {ld.last.detail}"
        return result

    async def _check_cloud(self, dev: EmuBackend) -> None:
        cred = self._flash_credential(dev)
        if cred is not None:
            status = await self.stack.check_credential(cred)
            if status is not SessionStatus.CONNECTED:
                raise Verdict(
                    "inconsistent",
                    f"the cloud does not accept the device's credential v{cred.version} ({status.name})",
                )
        old = self.snapshot.replaced if self.snapshot is not None else None
        if old is not None and cred is not None and old.secret != cred.secret:
            status = await self.stack.check_credential(old)
            if status is SessionStatus.CONNECTED:
                raise Verdict("inconsistent", f"the replaced credential v{old.version} is still accepted")

    async def golden(self) -> tuple[list[OpInfo], int]:
        """The flow without a cut: its flash operations and the instructions it took."""
        await self._restore()
        dev = self._device()
        ld = self.stack.link(dev)
        await ld.start()
        try:
            dev.power_on()
            if not await self._finish(ld, self.stages[-1]):
                raise CampaignError(
                    f"the {self.flow} flow does not complete without a cut "
                    f"(device holds {Stage.of(dev.key_state())}: {await self._disagreement(dev)})"
                )
            return describe_ops(dev.flash_ops, self.firmware), dev.instructions
        finally:
            await ld.close()
            dev.close()


# --------------------------------------------------------------------------------------------- campaign


@dataclass
class CampaignSpec:
    flow: str
    torn: bool = False
    depth: int = 1
    seed: int = 0
    quick: bool = False
    jobs: int = 2
    at_instruction: int | None = None
    cut_op: int | None = None
    cut_mode: str = "none"
    second_op: int | None = None
    second_mode: str = "none"

    def __post_init__(self) -> None:
        if self.flow not in FLOWS:
            raise ValueError(f"--flow is one of {', '.join(FLOWS)}")
        if self.depth not in (1, 2):
            raise ValueError("--depth is 1 or 2")
        if self.jobs < 1:
            raise ValueError("--jobs is at least 1")
        if self.at_instruction is not None and self.cut_op is not None:
            raise ValueError("--at-instruction and --cut-op name different cuts: give one")
        for mode in (self.cut_mode, self.second_mode):
            if mode not in MODES:
                raise ValueError(f"a cut mode is one of {', '.join(MODES)}")
        if self.second_op is not None and self.at_instruction is None and self.cut_op is None:
            raise ValueError("--second-op needs the first cut (--cut-op or --at-instruction)")

    @property
    def single(self) -> CutPoint | None:
        if self.at_instruction is None and self.cut_op is None:
            return None
        return CutPoint(
            op=self.cut_op,
            mode=self.cut_mode,
            instruction=self.at_instruction,
            second_op=self.second_op,
            second_mode=self.second_mode,
        )

    def replay_command(self, point: CutPoint) -> str:
        return " ".join(
            ["otakey campaign power-cut --flow", self.flow, "--seed", str(self.seed), *point.replay_args()]
        )


def second_cuts(results: Sequence[CutResult], torn: bool, seed: int) -> list[CutPoint]:
    """Depth 2: for every first cut whose recovery wrote flash, one more cut at a recovery
    operation and mode chosen from the seed (MCUboot's seeded multi-cut runs)."""
    out = []
    modes = MODES if torn else ("none", "done")
    for r in results:
        if r.outcome != "ok" or r.recovery_ops <= 0:
            continue
        rng = random.Random(f"second:{seed}:{r.point.label()}")
        out.append(replace(r.point, second_op=rng.randint(1, r.recovery_ops), second_mode=rng.choice(modes)))
    return out


async def _replay_all(
    runner: Runner, points: Sequence[CutPoint], report: Callable[[CutResult], None] | None = None
) -> list[CutResult]:
    out = []
    for p in points:
        r = await runner.replay(p)
        out.append(r)
        if report is not None:
            report(r)
    return out


def _worker(flow: str, elf: str, seed: int, index: int, points: list[CutPoint], results: Any) -> None:
    async def go() -> list[CutResult]:
        runner = Runner(flow, Path(elf), seed, index)
        await runner.start()
        try:
            return await _replay_all(runner, points, lambda r: results.put(("one", r)))
        finally:
            await runner.close()

    try:
        asyncio.run(go())
        results.put(("done", index))
    except BaseException as exc:
        results.put(("error", f"worker {index}: {type(exc).__name__}: {exc}"))


async def _spread(
    runner: Runner,
    spec: CampaignSpec,
    elf: Path,
    points: list[CutPoint],
    progress: Callable[[int, int], None] | None,
) -> list[CutResult]:
    """Replay ``points`` here and in ``spec.jobs - 1`` worker processes (round robin)."""
    total = len(points)
    shares = [points[i :: spec.jobs] for i in range(spec.jobs)] if total > 1 else [points]
    done: list[CutResult] = []

    def one(r: CutResult) -> None:
        done.append(r)
        if progress is not None:
            progress(len(done), total)

    if len(shares) == 1 or not any(shares[1:]):
        await _replay_all(runner, points, one)
        return done
    ctx = multiprocessing.get_context("spawn")  # the loop, the agent and its threads must not fork
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(spec.flow, str(elf), spec.seed, i, shares[i], queue), daemon=True)
        for i in range(1, len(shares))
        if shares[i]
    ]
    for p in procs:
        p.start()
    try:
        await _replay_all(runner, shares[0], one)
        finished = 0
        while finished < len(procs):
            try:
                kind, payload = await asyncio.to_thread(queue.get, True, 1.0)
            except Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise CampaignError(f"a campaign worker died (exit {dead[0].exitcode})") from None
                continue
            if kind == "one":
                one(payload)
            elif kind == "done":
                finished += 1
            else:
                raise CampaignError(str(payload))
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
    order = {p: i for i, p in enumerate(points)}
    return sorted(done, key=lambda r: order.get(r.point, 0))


@dataclass
class Summary:
    flow: str
    seed: int
    cut_points: int = 0
    torn_states: int = 0
    second_cuts: int = 0
    bricked: int = 0
    inconsistent: int = 0
    not_reached: int = 0
    flash_ops: int = 0
    golden_instructions: int = 0
    seconds: float = 0.0
    jobs: int = 1
    quick: bool = False
    failures: list[dict[str, Any]] = field(default_factory=list)
    replayed: list[dict[str, Any]] = field(default_factory=list)  # the one cut of a single replay
    ops: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return self.bricked + self.inconsistent

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cuts_per_second"] = (
            round((self.cut_points + self.second_cuts) / self.seconds, 2) if self.seconds else 0.0
        )
        d["seconds"] = round(self.seconds, 3)
        return d

    def text(self) -> str:
        n = self.cut_points + self.second_cuts
        pct = 100.0 * self.failed / n if n else 0.0
        lines = [
            f"power-cut {self.flow} (seed {self.seed}{', quick' if self.quick else ''}): "
            f"{self.failed}/{n} failed ({pct:.1f}%) — {self.cut_points} cut points over "
            f"{self.flash_ops} flash operations, {self.torn_states} torn, {self.second_cuts} second cuts; "
            f"{self.bricked} bricked, {self.inconsistent} inconsistent; {self.seconds:.1f} s "
            f"on {self.jobs} process(es) ({self.to_dict()['cuts_per_second']} cuts/s)"
        ]
        if self.not_reached:
            lines.append(f"  {self.not_reached} cut points were never reached (the flow ended first)")
        for f in self.failures:
            lines.append(f"  FAILED {f['cut']} ({f['op']}): {f['outcome']}: {f['detail']}")
            lines.append(f"    replay: {f['replay']}")
        return "\n".join(lines)


def run_campaign(
    spec: CampaignSpec,
    progress: Callable[[int, int], None] | None = None,
    log_line: Callable[[str], None] | None = None,
) -> Summary:
    """Run a campaign (or the one cut ``spec.single``) and summarise it."""
    return asyncio.run(_run(spec, progress, log_line))


async def _run(
    spec: CampaignSpec, progress: Callable[[int, int], None] | None, log_line: Callable[[str], None] | None
) -> Summary:
    started = time.monotonic()
    elf = await asyncio.to_thread(campaign_firmware, log_line)
    runner = Runner(spec.flow, elf, spec.seed)
    summary = Summary(spec.flow, spec.seed, jobs=spec.jobs, quick=spec.quick)
    await runner.start()
    try:
        ops, instructions = await runner.golden()
        summary.flash_ops, summary.golden_instructions = len(ops), instructions
        summary.ops = [o.to_dict() for o in ops]
        by_index = {o.index: o for o in ops}
        single = spec.single
        if single is not None:
            if single.op is not None and single.op in by_index:
                single = replace(single, what=by_index[single.op].what)
            results = [await runner.replay(single)]
            summary.replayed = [r.to_dict() for r in results]
            firsts, seconds = (results, []) if single.second_op is None else ([], results)
        else:
            points = plan(ops, spec.torn, spec.quick, spec.seed)
            firsts = await _spread(runner, spec, elf, points, progress)
            seconds = []
            if spec.depth == 2:
                again = second_cuts(firsts, spec.torn, spec.seed)
                seconds = await _spread(runner, spec, elf, again, progress)
    finally:
        await runner.close()
    for r in [*firsts, *seconds]:
        if r.outcome in ("bricked", "inconsistent"):
            setattr(summary, r.outcome, getattr(summary, r.outcome) + 1)
            op = by_index.get(r.point.op or -1)
            summary.failures.append(
                {
                    "cut": r.point.label(),
                    "op": op.what if op else "-",
                    "outcome": r.outcome,
                    "detail": r.detail,
                    "boot": r.boot,
                    "replay": spec.replay_command(r.point),
                }
            )
        if r.outcome == "not-reached" or (r.point.second_op is not None and not r.second_reached):
            summary.not_reached += 1
            continue
        if r.point.second_op is not None:
            summary.second_cuts += 1
        else:
            summary.cut_points += 1
        if r.point.mode == "partial" or r.point.second_mode == "partial":
            summary.torn_states += 1
    summary.seconds = time.monotonic() - started
    return summary
