"""``otakey bench rotate``: key updates through a real agent process, measured from the devices.

``--kind ak``     every device rotates its AK once (AK_ROTATE_HELLO/OFFER, AK_ROTATE_CONFIRM/ACK);
``--kind prov``   every device does stage 2 (PROV_HELLO/OFFER, PROV_CONFIRM/ACK);
``--kind cloud``  every device obtains its first cloud credential and then rotates it once, each
                  tested by a real session with the cloud before the confirm (Mosquitto dynsec, one
                  broker or several shards; or the AWS IoT adapter against moto).

Devices of ``ak`` and ``cloud`` are seeded into the store as stage 2 leaves them (AK v1 active), so
the timed phase holds the update alone. Before it, every device connects (timed apart) and checks
in once (the check-in rate is reported too). After it, the store must show every device converged
— one new key each, nothing pending — or the benchmark fails.

Where the time goes: CPU seconds of the agent, the cloud (brokers or moto) and the devices during
the phase, and with ``--profile`` the agent's cProfile grouped by category.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otakey.store import AuditEvent, CredentialState, DeviceState, Store

from . import profile as profiling
from .common import (
    BenchError,
    CpuMeter,
    Report,
    Stopwatch,
    goal_mark,
    machine,
    peak_rss_mb,
    raise_nofile,
    rounded,
    say,
    self_cpu_seconds,
    summarize_latencies,
)
from .loadgen import Pool
from .stack import Stack, agent_log_errors

AK_GOAL_PER_S = 1000.0
CLOUD_GOAL_S = 20.0


@dataclass(frozen=True)
class RotateSpec:
    kind: str = "ak"                 # ak, prov, cloud
    devices: int = 1000
    db: str = "sqlite"               # sqlite, postgres
    sqlite_sync: str = ""            # "" (the agent's default), full, normal
    cloud: str = "mosquitto"         # mosquitto, aws-iot (kind cloud)
    shards: int = 1                  # Mosquitto brokers (kind cloud)
    workers: int = 2
    inflight: int = 256
    profile: bool = False
    keep: bool = False
    checkin: bool = True             # the check-in round before the update

    def __post_init__(self) -> None:
        if self.kind not in ("ak", "prov", "cloud"):
            raise ValueError("--kind is ak, prov or cloud")
        if self.db not in ("sqlite", "postgres"):
            raise ValueError("--db is sqlite or postgres")
        if self.cloud not in ("mosquitto", "aws-iot"):
            raise ValueError("--cloud is mosquitto or aws-iot")
        if self.devices < 1 or self.workers < 1 or self.inflight < 1 or self.shards < 1:
            raise ValueError("--devices, --workers, --inflight and --shards are at least 1")
        if self.sqlite_sync not in ("", "full", "normal"):
            raise ValueError("--sqlite-sync is full or normal")


def phase_figures(r: dict[str, Any], seconds: float, updates: int) -> dict[str, Any]:
    n = max(1, updates)
    lat = summarize_latencies(r["latencies_ms"])
    return {
        "devices": r["devices"], "ok": r["ok"], "failed": len(r["failed"]),
        "seconds": round(seconds, 3), "updates_per_s": rounded(updates / seconds if seconds > 0 else None, 1),
        **lat,
        "bytes_up_per_update": rounded(r["bytes_up"] / n, 1),
        "bytes_down_per_update": rounded(r["bytes_down"] / n, 1),
        "messages_up_per_update": rounded(r["messages_up"] / n, 2),
        "messages_down_per_update": rounded(r["messages_down"] / n, 2),
        "device_cpu_ms_per_update": rounded(r["cpu_s"] * 1000 / n, 3),
        "session_ms_per_update": rounded(r["session_s"] * 1000 / n, 2),
        "outcomes": r["outcomes"], "attempts": r["attempts"],
    }


def run(spec: RotateSpec) -> Report:
    nofile = raise_nofile(spec.devices + 2048)
    if nofile < spec.devices + 256:
        raise BenchError(f"the open-files limit is {nofile}; {spec.devices} connections need more "
                         "(raise the hard limit: ulimit -Hn)")
    data: dict[str, Any] = {"benchmark": "rotate", "kind": spec.kind, "devices": spec.devices, "db": spec.db,
                            "sqlite_sync": spec.sqlite_sync or "default", "workers": spec.workers,
                            "inflight": spec.inflight, "machine": machine()}
    if spec.kind == "cloud":
        data.update(cloud=spec.cloud, shards=spec.shards if spec.cloud == "mosquitto" else None)
    with Stack.create(spec.keep) as st:
        st.database(spec.db, spec.sqlite_sync)
        keys = st.product("BENCH-ROT", spec.devices)
        seeded = spec.kind != "prov"
        if seeded:
            data["seed_seconds"] = round(st.seed_devices(spec.devices), 2)
        clouds: list[str] = []
        if spec.kind == "cloud":
            if spec.cloud == "mosquitto":
                say(f"starting {spec.shards} Mosquitto broker(s)")
                st.mosquitto(spec.shards)
                clouds = [st.mosquitto_url()]
            else:
                moto = st.start_moto()
                # moto accepts any key; boto3 needs one to sign with.
                clouds = [f"aws-iot://testing:testing@{moto.host}:{moto.port}?region=us-east-1"]
        # --profile: py-spy samples the agent during the update phase when it is installed (no
        # distortion); otherwise the agent runs under cProfile for its whole life.
        sampling = spec.profile and profiling.py_spy() is not None
        prof_path = st.work / "agent.prof" if spec.profile and not sampling else None
        agent = st.agent(clouds, profile=prof_path)
        say(f"agent pid {agent.process.pid} on port {agent.port}; {spec.devices} devices over "
            f"{spec.workers} worker(s)")
        moto_url = st.moto.url if st.moto is not None else ""
        with Pool(keys, spec.devices, spec.workers, "127.0.0.1", [agent.port], seeded=seeded,
                  cloud=spec.cloud if spec.kind == "cloud" else "none", aws_endpoint=moto_url,
                  nofile=spec.devices + 2048) as pool:
            c = pool.connect()
            data["connect_seconds"] = round(c["seconds"], 2)
            if c["failed"]:
                raise BenchError(f"{c['failed']} devices could not connect to the agent")
            if spec.checkin and seeded:
                say("check-in round")
                sw = Stopwatch()
                r = pool.op("checkin", spec.inflight)
                data["checkin"] = phase_figures(r, sw(), r["ok"])
            phases = ["cloud", "cloud"] if spec.kind == "cloud" else [spec.kind]
            names = ["issue", "rotate"] if spec.kind == "cloud" else [spec.kind]
            for op, name in zip(phases, names, strict=True):
                say(f"phase {name}: {spec.devices} devices, {spec.inflight} in flight")
                groups = {"agent": [agent.process.pid], "devices": pool.pids}
                if st.brokers:
                    groups["brokers"] = st.broker_pids()
                meter = CpuMeter(groups).start()
                bench_cpu0 = self_cpu_seconds()
                sampler = (profiling.Sampler(agent.process.pid, st.work / f"agent-{name}.spy")
                           if sampling and name == names[-1] else None)
                sw = Stopwatch()
                r = pool.op(op, spec.inflight)
                seconds = sw()
                cpu = meter.stop()
                if sampler is not None:
                    sampler.stop()
                    if sampler.out.exists():
                        data["profile"] = profiling.sampled_summary(sampler.out)
                if spec.kind == "cloud" and spec.cloud == "aws-iot":
                    cpu["cloud (moto, in the benchmark process)"] = round(self_cpu_seconds() - bench_cpu0, 3)
                fig = phase_figures(r, seconds, r["ok"])
                fig["cpu_s"] = cpu
                fig["cpu_wait_s"] = meter.waited  # ready to run, but another program had the CPU
                fig["agent_cpu_ms_per_update"] = rounded(cpu["agent"] * 1000 / max(1, r["ok"]), 3)
                fig["agent_cores_busy"] = rounded(cpu["agent"] / seconds if seconds else None, 2)
                data[name] = fig
                if r["failed"]:
                    data["failed_devices"] = len(r["failed"])
            states = pool.states()
        data["agent_peak_rss_mb"] = round(peak_rss_mb(agent.process.pid), 1)
        data["verify"] = verify(st, spec, states)
        data["agent_errors"] = agent_log_errors(agent)
        code = agent.stop(60.0)
        if code not in (0, None):
            data["agent_exit"] = code
        if prof_path is not None and prof_path.exists():
            data["profile"] = profiling.summary(prof_path)
        if spec.keep:
            data["work_dir"] = str(st.work)
    main = data["rotate"] if spec.kind == "cloud" else data[spec.kind]
    # The headline keys (the same for every kind): the update phase.
    for k in ("updates_per_s", "p50_ms", "p99_ms", "bytes_up_per_update", "bytes_down_per_update", "seconds"):
        data[k] = main[k]
    return report(spec, data)


def verify(st: Stack, spec: RotateSpec, states: dict[str, Any]) -> dict[str, Any]:
    """The store after the run: every device converged, one key issued per device and update."""
    keys = st.keys
    assert keys is not None
    want_ak = 2 if spec.kind == "ak" else 1
    want_cloud = 2 if spec.kind == "cloud" else None

    async def check(store: Store) -> dict[str, Any]:
        bad: list[str] = []
        async with store.transaction() as tx:
            after = None
            seen = 0
            while True:
                page = await tx.list_devices(po_id=keys.po_id, after=after, limit=1000)
                for dev in page:
                    seen += 1
                    held = states.get(dev.device_id.hex())
                    ok = (dev.state is DeviceState.ACTIVE and dev.ak_version == want_ak
                          and dev.ak_pending is None and held is not None and held[0] == want_ak)
                    if ok and want_cloud is not None:
                        creds = await tx.get_credentials(dev.device_id)
                        ok = (creds.pending is None and creds.current is not None
                              and creds.current.version == want_cloud and held[1] == want_cloud)
                    if not ok:
                        bad.append(dev.device_id.hex())
                if len(page) < 1000:
                    break
                after = page[-1].device_id
            rotated = await tx.count_audit(AuditEvent.ROTATED)
            confirmed = await tx.count_audit(AuditEvent.CONFIRMED)
            issued = await tx.count_audit(AuditEvent.ISSUED)
            cloud_activated = await tx.count_audit(AuditEvent.CLOUD_ACTIVATED)
            cloud_issued = await tx.count_audit(AuditEvent.CLOUD_ISSUED)
            active = 0
            if want_cloud is not None:
                for d in await tx.list_devices(po_id=keys.po_id, limit=spec.devices):
                    active += sum(1 for c in await tx.list_credentials(d.device_id)
                                  if c.state is CredentialState.ACTIVE)
        return {"devices_in_store": seen, "not_converged": len(bad), "examples": bad[:3],
                "ak_issued": issued, "ak_rotated": rotated, "ak_confirmed": confirmed,
                "cloud_issued": cloud_issued, "cloud_activated": cloud_activated,
                "active_cloud_credentials": active if want_cloud is not None else None}

    result: dict[str, Any] = st.run(check)
    n = spec.devices
    expect = {"ak": ("ak_rotated", n), "prov": ("ak_confirmed", n),
              "cloud": ("cloud_activated", 2 * n)}[spec.kind]
    result["ok"] = (result["devices_in_store"] == n and result["not_converged"] == 0
                    and result[expect[0]] == expect[1])
    if spec.kind == "cloud" and spec.cloud == "mosquitto":
        result["broker_clients"] = sum(_dynsec_clients(b.folder / "dynamic-security.json")
                                       for b in st.brokers)
        result["ok"] = result["ok"] and result["broker_clients"] == n
    if not result["ok"]:
        raise BenchError(f"the fleet did not converge: {result}")
    return result


def _dynsec_clients(path: Path) -> int:
    import json

    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return -1
    return sum(1 for c in config.get("clients", []) if c.get("username") != "admin")


def report(spec: RotateSpec, data: dict[str, Any]) -> Report:
    rep = Report("rotate", data)
    rep.row("devices", spec.devices)
    rep.row("database", f"{spec.db}" + (f" (synchronous={spec.sqlite_sync})" if spec.sqlite_sync else ""))
    if spec.kind == "cloud":
        shards = f", {spec.shards} broker shard(s)" if spec.cloud == "mosquitto" else ""
        rep.row("cloud", spec.cloud + shards)
    rep.row("connect all devices (s)", data.get("connect_seconds"))
    if "checkin" in data:
        rep.row("check-ins/s", data["checkin"]["updates_per_s"], note=f"p50 {data['checkin']['p50_ms']} ms")
    phases = ["issue", "rotate"] if spec.kind == "cloud" else [spec.kind]
    for name in phases:
        f = data[name]
        label = {"ak": "AK rotations", "prov": "stage-2 provisionings", "issue": "first cloud credentials",
                 "rotate": "cloud-key rotations"}[name]
        goal, met = "", None
        if name == "ak" and spec.db == "sqlite":
            goal, met = f">= {AK_GOAL_PER_S:,.0f}/s", f["updates_per_s"] >= AK_GOAL_PER_S
        rep.row(f"{label}/s", f["updates_per_s"], goal, goal_mark(met) if goal else "")
        goal, met = "", None
        if name == "rotate" and spec.cloud == "mosquitto" and spec.devices >= 1000:
            goal = f"<= {CLOUD_GOAL_S:.0f} s for 1,000"
            met = f["seconds"] <= CLOUD_GOAL_S * spec.devices / 1000
        rep.row(f"  seconds for {f['devices']:,}", f["seconds"], goal, goal_mark(met) if goal else "")
        rep.row("  latency p50 / p99 (ms)", f"{f['p50_ms']} / {f['p99_ms']}",
                note=f"{spec.inflight} devices in flight")
        rep.row("  bytes per update up / down", f"{f['bytes_up_per_update']} / {f['bytes_down_per_update']}",
                note=f"{f['messages_up_per_update']} / {f['messages_down_per_update']} frames")
        cpu = f["cpu_s"]
        rep.row("  CPU s: " + ", ".join(cpu), " / ".join(f"{v:.1f}" for v in cpu.values()),
                note=f"agent {f['agent_cpu_ms_per_update']} ms/update")
        rep.row("  waited for a CPU (s)", " / ".join(f"{v:.1f}" for v in f["cpu_wait_s"].values()),
                note="runnable, but the cores were busy elsewhere")
        if f.get("session_ms_per_update"):
            rep.row("  device test session (ms/update)", f["session_ms_per_update"])
    rep.row("agent peak RSS (MB)", data["agent_peak_rss_mb"])
    v = data["verify"]
    rep.row("converged", f"{v['devices_in_store'] - v['not_converged']}/{spec.devices}",
            note="store and devices agree")
    if data.get("agent_errors"):
        rep.notes.append("agent errors: " + " | ".join(data["agent_errors"]))
    if "profile" in data:
        prof = data["profile"]
        sampled = prof.get("source") == "py-spy"
        rep.notes += profiling.sampled_lines(prof) if sampled else profiling.lines(prof)
    return rep
