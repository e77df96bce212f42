"""A fleet of emulated devices: N devices from one factory image, each with its own UID and its own
gateway to one agent, spread over worker processes (the emulator is CPU-bound: two processes use
both cores, DESIGN §4 "two processes give ~1.8x one").

Each device is booted, then driven (:class:`~.linked.LinkedDevice`) until its goal holds or its
device-time limit passes:

- ``provisioned`` — stage 2 done: the keystore holds an AK and no PK is left in flash;
- ``cloud`` (default) — also a cloud credential committed, and the device's own test-before-confirm
  session (opened by its gateway with the credential from its flash) connected and published.

Workers report each device as it finishes; the parent gathers the results and calls ``progress``.
A worker holds at most ``concurrency`` devices at once (each costs ~5 MB and a gateway connection).
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import os
import queue
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from otakey.protocol.cloudsession import SessionStatus

GOALS = ("provisioned", "cloud")


@dataclass(frozen=True)
class FleetSpec:
    elf: str
    agent_host: str
    agent_port: int
    devices: int
    workers: int = 2
    concurrency: int = 16
    goal: str = "cloud"
    seed: int = 0
    max_device_ms: float = 120_000.0  # device time each device may take (retries included)
    settle_timeout: float = 60.0  # wall seconds the agent/cloud may take to answer one round
    strict: bool = True
    uid_salt: str = ""  # UIDs are derived from (salt, seed, index): distinct per run when salted

    def __post_init__(self) -> None:
        if self.devices < 0:
            raise ValueError("devices must be >= 0")
        if self.workers < 1 or self.concurrency < 1:
            raise ValueError("workers and concurrency must be >= 1")
        if self.goal not in GOALS:
            raise ValueError(f"goal is one of {GOALS}")

    def uid(self, index: int) -> bytes:
        return hashlib.sha256(f"otakey-fleet:{self.uid_salt}:{self.seed}:{index}".encode()).digest()[:12]


@dataclass
class DeviceResult:
    index: int
    uid: str
    provisioned: bool = False
    cloud_connected: bool = False
    banner: str = ""
    keys: str = "none"
    ak_version: int | None = None
    cloud_version: int | None = None
    instructions: int = 0
    device_ms: float = 0.0
    wall_s: float = 0.0
    sessions_ok: int = 0
    frames_to_agent: int = 0
    error: str = ""
    reports: list[str] = field(default_factory=list)  # accesses the chip model did not cover
    goal_is_provisioned: bool = False  # the goal was "provisioned": no cloud session needed

    @property
    def ok(self) -> bool:
        return not self.error and self.provisioned and (self.cloud_connected or self.goal_is_provisioned)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("goal_is_provisioned")
        d["device_ms"] = round(self.device_ms, 1)
        d["wall_s"] = round(self.wall_s, 3)
        return d


# --------------------------------------------------------------------------------------------- one device


async def drive_device(spec: FleetSpec, index: int, firmware: Any) -> DeviceResult:
    """Boot device ``index`` and drive it to the goal; never raises (errors are in the result)."""
    from .emu_backend import EmuBackend
    from .linked import LinkedDevice

    uid = spec.uid(index)
    result = DeviceResult(index, uid.hex(), goal_is_provisioned=spec.goal == "provisioned")
    started = time.monotonic()
    device = None
    linked = None
    try:
        device = EmuBackend.create(firmware, uid=uid, seed=spec.seed * 1_000_003 + index,
                                   name=f"dev{index}", strict=spec.strict)
        linked = LinkedDevice(device, spec.agent_host, spec.agent_port, settle_timeout=spec.settle_timeout)
        await linked.start()
        device.power_on()
        dev, gw = device, linked.gateway

        def reached() -> bool:
            ks = dev.key_state()
            if not ks.provisioned:
                return False
            if spec.goal == "provisioned":
                return True
            return ks.cloud_version is not None and any(
                r.status is SessionStatus.CONNECTED for r in gw.session_records)

        await linked.run_until(reached, spec.max_device_ms)
        ks = device.key_state()
        result.provisioned = ks.provisioned
        result.sessions_ok = linked.sessions_with(SessionStatus.CONNECTED)
        result.cloud_connected = ks.cloud_version is not None and result.sessions_ok > 0
        result.keys, result.ak_version, result.cloud_version = ks.keys, ks.ak_version, ks.cloud_version
        result.banner = linked.console[0] if linked.console else ""
        result.frames_to_agent = gw.counters.frames_to_agent
        if not (result.provisioned and (result.cloud_connected or spec.goal == "provisioned")):
            last = linked.last
            result.error = (f"goal not reached in {spec.max_device_ms / 1000:.0f} s of device time "
                            f"(keys={ks.keys}, last run: {last.reason.value if last else '-'}"
                            f"{' ' + last.detail if last and last.detail else ''})")
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        if device is not None:
            result.instructions = device.instructions
            result.device_ms = device.device_ms
            result.reports = [str(r) for r in device.chip.reports[:5]]
        if linked is not None:
            try:
                await linked.close()
            except Exception as exc:  # closing must not hide the device's own result
                result.error = result.error or f"closing: {type(exc).__name__}: {exc}"
        elif device is not None:
            device.close()
        result.wall_s = time.monotonic() - started
    return result


async def drive_many(spec: FleetSpec, indices: list[int],
                     report: Callable[[DeviceResult], None]) -> None:
    """Drive the devices ``indices`` on this loop, ``spec.concurrency`` at a time."""
    from otakey.firmware.elf import FirmwareElf

    firmware = FirmwareElf(spec.elf)  # parsed once, shared by every device of this process
    gate = asyncio.Semaphore(spec.concurrency)

    async def one(index: int) -> None:
        async with gate:
            result = await drive_device(spec, index, firmware)
        report(result)

    await asyncio.gather(*(one(i) for i in indices))


# --------------------------------------------------------------------------------------------- processes


def _worker(spec: FleetSpec, indices: list[int], out: Any) -> None:
    # The parent owns Ctrl-C: it stops the workers itself, in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        asyncio.run(drive_many(spec, indices, lambda r: out.put(("result", r.to_dict()))))
        out.put(("end", None))
    except BaseException:
        out.put(("crash", traceback.format_exc()))
        raise


def _result_from(d: dict[str, Any], goal: str) -> DeviceResult:
    d = dict(d)
    return DeviceResult(goal_is_provisioned=goal == "provisioned", **d)


def run_fleet(spec: FleetSpec, progress: Callable[[int, int, str], None] | None = None) -> list[DeviceResult]:
    """Run the fleet; results in index order. With one worker everything runs in this process."""
    total = spec.devices
    results: dict[int, DeviceResult] = {}
    counts = {"ok": 0, "failed": 0}

    def note(r: DeviceResult) -> None:
        results[r.index] = r
        counts["ok" if r.ok else "failed"] += 1
        if progress is not None:
            progress(len(results), total, f"{counts['ok']} ok, {counts['failed']} failed")

    workers = min(spec.workers, max(1, total))
    if total == 0:
        return []
    if workers == 1:
        asyncio.run(drive_many(spec, list(range(total)), note))
        return [results[i] for i in sorted(results)]
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(spec, list(range(w, total, workers)), out),
                         name=f"otakey-fleet-{w}", daemon=True) for w in range(workers)]
    try:
        for p in procs:
            p.start()
        ended = 0
        while ended < workers:
            try:
                kind, payload = out.get(timeout=1.0)
            except queue.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    name, code = dead[0].name, dead[0].exitcode
                    raise RuntimeError(f"fleet worker {name} died (exit {code})") from None
                continue
            if kind == "result":
                note(_result_from(payload, spec.goal))
            elif kind == "end":
                ended += 1
            else:
                raise RuntimeError(f"a fleet worker crashed:\n{payload}")
        for p in procs:
            p.join(10)
    finally:
        # A Ctrl-C can land inside p.start(): that worker never became a Process to stop (its
        # half-made child exits by itself when it finds no start-up data), so skip it.
        started = [p for p in procs if p.pid is not None]
        for p in started:
            if p.is_alive():
                p.terminate()
        for p in started:
            p.join(5)
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)  # type: ignore[arg-type]
                p.join()
    for i in range(total):
        if i not in results:
            results[i] = DeviceResult(i, spec.uid(i).hex(), error="no result from its worker")
    return [results[i] for i in sorted(results)]


def summarize(spec: FleetSpec, results: list[DeviceResult], seconds: float) -> dict[str, Any]:
    provisioned = sum(r.provisioned for r in results)
    connected = sum(r.cloud_connected for r in results)
    return {
        "devices": spec.devices,
        "provisioned": provisioned,
        "cloud_connected": connected,
        "failed": sum(not r.ok for r in results),
        "seconds": round(seconds, 3),
        "devices_per_second": round(spec.devices / seconds, 2) if seconds > 0 else None,
        "instructions": sum(r.instructions for r in results),
        "workers": min(spec.workers, max(1, spec.devices)),
        "goal": spec.goal,
    }
