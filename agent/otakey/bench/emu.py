"""``otakey bench emu``: the real firmware on the emulated STM32F429 fleet, end to end.

Each of N devices boots the PO's factory image (one image, distinct UIDs), does stage 2, obtains
its first cloud credential and proves it with its own MQTT session through its gateway (as
``otakey emu run``, built on the same harness), then — when the operator marks it (the pending
action ROTATE_AK written to the store, as ``otakey fleet rotate`` does) — learns it at its next
check-in and rotates its AK. Devices are spread over worker processes (the emulator is
CPU-bound: one per core), ``--concurrency`` at a time in each.

Counted per device: emulated Cortex-M4 instructions from power-on until provisioned and connected
(boot, stage 2 with X25519, the cloud credential and its test session) and for the rotation;
device time; wall time split into creating the chip (model + flashing the ELF), provisioning, and
rotating. CPU seconds of the workers (emulator + gateways), the agent and the brokers show where
the fleet's time goes.
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import os
import queue
import secrets
import signal
import time
import traceback
from dataclasses import dataclass
from typing import Any

from otakey.store import Action, CredentialState, DeviceState, Kek, Store

from .common import (
    BenchError,
    CpuMeter,
    Report,
    Stopwatch,
    goal_mark,
    machine,
    peak_rss_mb,
    percentile,
    rounded,
    say,
)
from .stack import Stack, agent_log_errors

SECONDS_GOAL = 120.0          # 1,000 devices: provision + cloud key + rotation
INSTRUCTIONS_GOAL = 30_000_000  # per provisioning on the Cortex-M4


@dataclass(frozen=True)
class EmuSpec:
    devices: int = 1000
    workers: int = 2
    concurrency: int = 16
    shards: int = 4
    rotate: bool = True
    max_device_seconds: float = 120.0
    keep: bool = False

    def __post_init__(self) -> None:
        if self.devices < 1 or self.workers < 1 or self.concurrency < 1 or self.shards < 1:
            raise ValueError("--devices, --workers, --concurrency and --shards are at least 1")


@dataclass(frozen=True)
class _Work:
    elf: str
    host: str
    port: int
    db_url: str
    kek_hex: str
    indices: tuple[int, ...]
    salt: str
    concurrency: int
    rotate: bool
    max_device_ms: float


def uid_of(salt: str, index: int) -> bytes:
    return hashlib.sha256(f"otakey-bench-emu:{salt}:{index}".encode()).digest()[:12]


# --------------------------------------------------------------------------------- one device


async def drive(work: _Work, index: int, firmware: Any, store: Store) -> dict[str, Any]:
    """Boot, provision, connect, then rotate one device; never raises (errors are in the result)."""
    from otakey.harness.emu_backend import EmuBackend
    from otakey.harness.linked import LinkedDevice
    from otakey.protocol.cloudsession import SessionStatus

    uid = uid_of(work.salt, index)
    r: dict[str, Any] = {"index": index, "uid": uid.hex(), "ok": False, "error": ""}
    t0 = time.perf_counter()
    device = linked = None
    try:
        device = EmuBackend.create(firmware, uid=uid, seed=index + 1, name=f"dev{index}", strict=True)
        r["create_s"] = time.perf_counter() - t0
        linked = LinkedDevice(device, work.host, work.port, settle_timeout=120.0)
        await linked.start()
        dev, gw = device, linked.gateway
        t1 = time.perf_counter()
        device.power_on()

        def connected() -> bool:
            ks = dev.key_state()
            return ks.provisioned and ks.cloud_version is not None and any(
                s.status is SessionStatus.CONNECTED for s in gw.session_records)

        if not await linked.run_until(connected, work.max_device_ms):
            raise BenchError(f"not provisioned and connected (keys={dev.key_state().keys})")
        r["provision_s"] = time.perf_counter() - t1
        r["instr_provision"] = device.instructions
        r["device_ms_provision"] = round(device.device_ms, 1)
        r["frames_provision"] = gw.counters.frames_to_agent
        if work.rotate:
            t2 = time.perf_counter()
            i0, ms0 = device.instructions, device.device_ms

            async def mark(tx: Any) -> int:
                return await tx.set_pending_action([uid], Action.ROTATE_AK)

            if await store.run(mark) != 1:
                raise BenchError("the agent's store does not know the device")
            if not await linked.run_until(lambda: (dev.key_state().ak_version or 0) >= 2, work.max_device_ms):
                raise BenchError(f"AK not rotated (ak v{dev.key_state().ak_version})")
            r["rotate_s"] = time.perf_counter() - t2
            r["instr_rotate"] = device.instructions - i0
            r["device_ms_rotate"] = round(device.device_ms - ms0, 1)
        r["ok"] = True
    except Exception as exc:
        r["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if linked is not None:
            try:
                await linked.close()
            except Exception as exc:
                r["error"] = r["error"] or f"closing: {exc}"
        elif device is not None:
            device.close()
        r["wall_s"] = time.perf_counter() - t0
    return r


async def _drive_all(work: _Work, out: Any) -> None:
    from otakey.firmware.elf import FirmwareElf
    from otakey.store import open_store

    firmware = FirmwareElf(work.elf)
    store = await open_store(work.db_url, Kek(bytes.fromhex(work.kek_hex)))
    gate = asyncio.Semaphore(work.concurrency)
    try:
        async def one(index: int) -> None:
            async with gate:
                out.put(("result", await drive(work, index, firmware, store)))

        await asyncio.gather(*(one(i) for i in work.indices))
    finally:
        await store.close()


def _worker(work: _Work, out: Any) -> None:
    from .common import runqueue_wait_seconds, self_cpu_seconds

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        cpu0, wait0 = self_cpu_seconds(), runqueue_wait_seconds(os.getpid())
        asyncio.run(_drive_all(work, out))
        # Measured here: the parent cannot read /proc of a worker that has already exited.
        out.put(("end", {"cpu_s": self_cpu_seconds() - cpu0,
                         "wait_s": runqueue_wait_seconds(os.getpid()) - wait0}))
    except BaseException:
        out.put(("crash", traceback.format_exc()))
        raise


# --------------------------------------------------------------------------------- the fleet


def run(spec: EmuSpec) -> Report:
    from otakey.firmware.build import build_firmware

    data: dict[str, Any] = {"benchmark": "emu", "devices": spec.devices, "workers": spec.workers,
                            "concurrency": spec.concurrency, "shards": spec.shards, "rotate": spec.rotate,
                            "machine": machine()}
    with Stack.create(spec.keep) as st:
        st.database("sqlite")
        st.product("BENCH-EMU", spec.devices)
        keys = st.keys
        assert keys is not None
        from otakey.agent.product_file import ProductFile

        product_path = st.work / "bench.product.json"
        ProductFile(po_name=keys.po_name, po_id=keys.po_id, pk=keys.pk,
                    quantity=spec.devices).write(product_path)
        sw = Stopwatch()
        build = build_firmware(product_path)
        data["firmware_build_s"] = round(sw(), 2)
        data["firmware_cached"] = build.cached
        how = "cached" if build.cached else "built"
        say(f"firmware {build.elf} ({how}); starting {spec.shards} broker(s)")
        st.mosquitto(spec.shards)
        agent = st.agent([st.mosquitto_url()])
        salt = secrets.token_hex(6)
        ctx = multiprocessing.get_context("spawn")
        out = ctx.Queue()
        workers = min(spec.workers, spec.devices)
        works = [_Work(str(build.elf), "127.0.0.1", agent.port, st.db_url, st.kek.hex(),
                       tuple(range(w, spec.devices, workers)), salt, spec.concurrency, spec.rotate,
                       spec.max_device_seconds * 1000.0) for w in range(workers)]
        procs = [ctx.Process(target=_worker, args=(w, out), daemon=True, name=f"otakey-bench-emu-{i}")
                 for i, w in enumerate(works)]
        results: list[dict[str, Any]] = []
        say(f"{spec.devices} emulated devices over {workers} worker(s), {spec.concurrency} at a time each")
        sw = Stopwatch()
        for p in procs:
            p.start()
        meter = CpuMeter({"agent": [agent.process.pid], "brokers": st.broker_pids()}).start()
        worker_cpu = worker_wait = 0.0
        try:
            ended = 0
            last = 0.0
            while ended < workers:
                try:
                    kind, payload = out.get(timeout=1.0)
                except queue.Empty:
                    if any(p.exitcode not in (None, 0) for p in procs):
                        raise BenchError("an emulator worker died") from None
                    continue
                if kind == "result":
                    results.append(payload)
                    if sw() - last > 5:
                        last = sw()
                        say(f"{len(results)}/{spec.devices} devices done")
                elif kind == "end":
                    ended += 1
                    worker_cpu += payload["cpu_s"]
                    worker_wait += payload["wait_s"]
                else:
                    raise BenchError(f"an emulator worker crashed:\n{payload}")
            seconds = sw()
            cpu = {"devices (emulator + gateways)": round(worker_cpu, 3), **meter.stop()}
            data["cpu_wait_s"] = {"devices (emulator + gateways)": round(worker_wait, 3), **meter.waited}
        finally:
            for p in procs:
                p.join(10)
                if p.is_alive():
                    p.kill()
        data["agent_peak_rss_mb"] = round(peak_rss_mb(agent.process.pid), 1)
        data["verify"] = _verify(st, spec, [bytes.fromhex(r["uid"]) for r in results if r["ok"]])
        data["agent_errors"] = agent_log_errors(agent)
        agent.stop(30.0)
        if spec.keep:
            data["work_dir"] = str(st.work)
    return _report(spec, data, results, seconds, cpu)


def _verify(st: Stack, spec: EmuSpec, uids: list[bytes]) -> dict[str, Any]:
    want_ak = 2 if spec.rotate else 1

    async def check(store: Store) -> dict[str, Any]:
        bad = 0
        async with store.transaction() as tx:
            for uid in uids:
                dev = await tx.get_device(uid)
                creds = await tx.get_credentials(uid)
                if (dev is None or dev.state is not DeviceState.ACTIVE or dev.ak_version != want_ak
                        or dev.ak_pending is not None or creds.current is None or creds.pending is not None
                        or creds.current.state is not CredentialState.ACTIVE):
                    bad += 1
        return {"checked": len(uids), "not_converged": bad}

    result: dict[str, Any] = st.run(check)
    return result


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "p50": None, "max": None}
    return {"mean": rounded(sum(values) / len(values)), "p50": rounded(percentile(values, 50)),
            "max": rounded(max(values))}


def _report(spec: EmuSpec, data: dict[str, Any], results: list[dict[str, Any]], seconds: float,
            cpu: dict[str, float]) -> Report:
    ok = [r for r in results if r["ok"]]
    failed = [r for r in results if not r["ok"]]
    data.update({
        "ok": len(ok), "failed": len(failed),
        "errors": [f"dev{r['index']}: {r['error']}" for r in failed[:5]],
        "seconds": round(seconds, 2), "devices_per_s": rounded(len(ok) / seconds if seconds else None),
        "instr_per_provisioning": _stats([float(r["instr_provision"]) for r in ok]),
        "instr_per_rotation": _stats([float(r["instr_rotate"]) for r in ok if "instr_rotate" in r]),
        "device_ms_per_provisioning": _stats([r["device_ms_provision"] for r in ok]),
        "wall_s_per_device": {k: _stats([r[k] for r in ok if k in r])
                              for k in ("create_s", "provision_s", "rotate_s", "wall_s")},
        "cpu_s": cpu,
    })
    rep = Report("emu", data)
    rep.row("emulated devices", spec.devices, note=f"{spec.workers} workers x {spec.concurrency} at a time")
    rep.row("reached the goal", f"{len(ok)}/{spec.devices}",
            note="provisioned, connected" + (", AK rotated" if spec.rotate else ""))
    met = seconds <= SECONDS_GOAL * spec.devices / 1000 if spec.devices >= 1000 and not failed else None
    rep.row("seconds for the fleet", seconds, f"<= {SECONDS_GOAL:.0f} s for 1,000", goal_mark(met))
    rep.row("devices/s", data["devices_per_s"])
    ip = data["instr_per_provisioning"]
    met_i = ip["max"] is not None and ip["max"] <= INSTRUCTIONS_GOAL
    rep.row("instructions per provisioning (mean / max)",
            f"{_m(ip['mean'])} / {_m(ip['max'])}", f"<= {INSTRUCTIONS_GOAL / 1e6:.0f} M", goal_mark(met_i),)
    ir = data["instr_per_rotation"]
    if ir["mean"] is not None:
        rep.row("instructions per AK rotation (mean)", _m(ir["mean"]),
                note="incl. the check-in that asks for it")
    dm = data["device_ms_per_provisioning"]
    rep.row("device time per provisioning (ms, mean)", dm["mean"])
    w = data["wall_s_per_device"]
    rep.row("wall s per device: create / provision / rotate",
            " / ".join(f"{(w[k]['mean'] or 0):.2f}" for k in ("create_s", "provision_s", "rotate_s")),
            note=f"{spec.concurrency * spec.workers} devices overlap")
    rep.row("CPU s: " + ", ".join(cpu), " / ".join(f"{v:.1f}" for v in cpu.values()))
    rep.row("waited for a CPU (s)", " / ".join(f"{v:.1f}" for v in data["cpu_wait_s"].values()),
            note="runnable, but the cores were busy elsewhere")
    rep.row("agent peak RSS (MB)", data["agent_peak_rss_mb"])
    v = data["verify"]
    rep.row("store agrees", f"{v['checked'] - v['not_converged']}/{v['checked']}")
    if failed:
        rep.notes.append("failures: " + " | ".join(data["errors"]))
    return rep


def _m(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e6:.2f} M"
