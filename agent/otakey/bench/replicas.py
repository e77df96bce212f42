"""``otakey bench replicas``: several agent processes on one PostgreSQL, one killed mid-run.

Two fleets of N devices each, seeded as provisioned (AK v1) into one database:

1. **one agent** — the first fleet rotates its AKs through a single agent (the reference);
2. **replicas** — the second fleet is spread over ``--agents`` agent processes (device i on agent
   i mod A) and rotates; when a third of the rotations are done (counted in the database), one agent
   is killed with SIGKILL. Its devices see their connection drop, go to the next agent and carry on:
   a device that had committed its new key and lost the ACK checks in (the agent activates what the
   device proves it holds); one that had not starts the rotation again.

Then every device checks in once more, and the database must show: every device on AK v2 with
nothing pending, its last check-in proving v2 with the fingerprint of the key the store holds,
exactly one ``rotated`` entry per device (no key activated twice), and every ``issued`` entry
answering its own AK_ROTATE_HELLO (one key per request: an offer lost with the killed agent is
replaced by the device's next HELLO, never handed out twice). Throughput of both phases is reported
side by side.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otakey.protocol.envelope import fingerprint
from otakey.protocol.messages import MsgType
from otakey.store import AuditEvent, DeviceState, Store

from .common import BenchError, CpuMeter, Report, Stopwatch, machine, peak_rss_mb, raise_nofile, say
from .loadgen import Pool
from .rotate import phase_figures
from .stack import Stack, agent_log_errors


@dataclass(frozen=True)
class ReplicasSpec:
    devices: int = 10_000
    agents: int = 3
    workers: int = 2
    inflight: int = 256
    kill_at: float = 1 / 3      # share of the rotations done when one agent is killed
    baseline: bool = True
    keep: bool = False

    def __post_init__(self) -> None:
        if self.devices < 1 or self.workers < 1 or self.inflight < 1:
            raise ValueError("--devices, --workers and --inflight are at least 1")
        if self.agents < 2:
            raise ValueError("--agents is at least 2 (one is killed)")
        if not 0 < self.kill_at < 1:
            raise ValueError("--kill-at is a share between 0 and 1")


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (PostgreSQL's backends are children of its postmaster)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(stat[1]) == pid:
                out.append(int(entry))
    return out


def _postmaster_pid(st: Stack) -> int:
    assert st.postgres is not None
    try:
        return int((st.postgres.folder / "data" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _count_rotated(st: Stack, dbname: str, start_id: int) -> int:
    assert st.postgres is not None
    out = st.postgres.psql(dbname, f"SELECT count(*) FROM audit WHERE event = 'rotated' AND id > {start_id}")
    return int(out.strip() or 0)


def _phase(st: Stack, pool: Pool, agents: list[Any], spec: ReplicasSpec, kill: bool) -> dict[str, Any]:
    """One rotation of the pool's fleet; with ``kill``, SIGKILL the second agent part way."""
    assert st.postgres is not None and st.keys is not None
    dbname = st.db_url.rsplit("/", 1)[1]
    start_id = int(st.postgres.psql(dbname, "SELECT coalesce(max(id), 0) FROM audit").strip() or 0)
    postmaster = _postmaster_pid(st)
    meter = CpuMeter({"agents": [a.process.pid for a in agents], "devices": pool.pids,
                      "postgresql": [postmaster, *child_pids(postmaster)]}).start()
    killed: dict[str, Any] = {}
    done = threading.Event()

    def killer() -> None:
        victim = agents[1]
        target = int(spec.devices * spec.kill_at)
        t0 = time.perf_counter()
        while not done.wait(0.05):
            n = _count_rotated(st, dbname, start_id)
            if n >= target:
                os.kill(victim.process.pid, signal.SIGKILL)
                killed.update(after_rotations=n, at_s=round(time.perf_counter() - t0, 2),
                              pid=victim.process.pid)
                return

    thread = threading.Thread(target=killer, daemon=True) if kill else None
    sw = Stopwatch()
    if thread is not None:
        thread.start()
    r = pool.op("ak", spec.inflight, max_attempts=12)
    seconds = sw()
    done.set()
    if thread is not None:
        thread.join(5)
    cpu = meter.stop()
    fig = phase_figures(r, seconds, r["ok"])
    fig["cpu_s"] = cpu
    fig["cpu_wait_s"] = meter.waited
    if kill:
        if not killed:
            raise BenchError("the run ended before an agent could be killed (too few devices?)")
        fig["killed"] = killed
    return fig


def run(spec: ReplicasSpec) -> Report:
    raise_nofile(spec.devices + 2048)
    data: dict[str, Any] = {"benchmark": "replicas", "devices": spec.devices, "agents": spec.agents,
                            "workers": spec.workers, "inflight": spec.inflight, "db": "postgresql",
                            "machine": machine()}
    n = spec.devices
    with Stack.create(spec.keep) as st:
        st.database("postgres")
        keys = st.product("BENCH-REP", 2 * n)
        say(f"seeding {2 * n} devices into PostgreSQL")
        data["seed_seconds"] = round(st.seed_devices(2 * n), 2)
        if spec.baseline:
            say(f"one agent: {n} devices rotate")
            one = st.agent([], name="single")
            with Pool(keys, n, spec.workers, "127.0.0.1", [one.port], seeded=True,
                      nofile=n + 2048, first=0) as pool:
                pool.connect()
                data["one_agent"] = _phase(st, pool, [one], spec, kill=False)
            data["one_agent"]["agent_peak_rss_mb"] = round(peak_rss_mb(one.process.pid), 1)
            one.stop(30.0)
        agents = [st.agent([], name=f"replica-{i}") for i in range(spec.agents)]
        say(f"{spec.agents} agents: {n} devices rotate; agent 2 (pid {agents[1].process.pid}) is killed "
            f"after {spec.kill_at:.0%} of the rotations")
        with Pool(keys, n, spec.workers, "127.0.0.1", [a.port for a in agents], seeded=True,
                  nofile=n + 2048, first=n) as pool:
            c = pool.connect()
            if c["failed"]:
                raise BenchError(f"{c['failed']} devices could not connect")
            data["replicas"] = _phase(st, pool, agents, spec, kill=True)
            say("every device checks in once more (through the live agents)")
            r = pool.op("checkin", spec.inflight, max_attempts=12)
            data["final_checkin_failed"] = len(r["failed"])
            states = pool.states()
        data["replicas"]["agent_peak_rss_mb"] = [round(peak_rss_mb(a.process.pid), 1) for a in agents
                                                 if a.process.poll() is None]
        data["verify"] = verify(st, n, states)
        data["agent_errors"] = [e for a in agents if a.process.poll() is None for e in agent_log_errors(a)]
        for a in agents:
            if a.process.poll() is None:
                a.stop(30.0)
        if spec.keep:
            data["work_dir"] = str(st.work)
    data["updates_per_s"] = data["replicas"]["updates_per_s"]
    return _report(spec, data)


def verify(st: Stack, n: int, states: dict[str, Any]) -> dict[str, Any]:
    """The second fleet (devices n..2n-1) after the run with the kill."""
    assert st.postgres is not None and st.keys is not None
    keys = st.keys
    dbname = st.db_url.rsplit("/", 1)[1]
    ids = [keys.device_id(i) for i in range(n, 2 * n)]
    wanted = {d.hex() for d in ids}

    def rows(sql: str) -> list[list[str]]:
        assert st.postgres is not None
        return [line.split("|") for line in st.postgres.psql(dbname, sql).splitlines() if line]

    rotated = {r[0]: int(r[1]) for r in rows(
        "SELECT encode(device_id, 'hex'), count(*) FROM audit WHERE event = 'rotated' GROUP BY device_id")}
    issued = {r[0]: int(r[1]) for r in rows(
        "SELECT encode(device_id, 'hex'), count(*) FROM audit WHERE event = 'issued' "
        "AND detail LIKE '%rotation%' GROUP BY device_id")}
    hellos = {r[0]: int(r[1]) for r in rows(
        "SELECT encode(device_id, 'hex'), count(*) FROM exchanges WHERE request_type = "
        f"{int(MsgType.AK_ROTATE_HELLO)} GROUP BY device_id")}

    async def check(store: Store) -> dict[str, Any]:
        bad: list[str] = []
        async with store.transaction() as tx:
            for device_id in ids:
                dev = await tx.get_device(device_id)
                held = states.get(device_id.hex())
                ok = (dev is not None and dev.state is DeviceState.ACTIVE and dev.ak_version == 2
                      and dev.ak_pending is None and dev.ak is not None and held is not None and held[0] == 2
                      and dev.last_checkin is not None and dev.last_checkin.ak_version == 2
                      and dev.last_checkin.ak_fp == fingerprint(dev.ak))
                if not ok:
                    bad.append(device_id.hex())
            total_rotated = await tx.count_audit(AuditEvent.ROTATED)
        return {"not_converged": bad, "rotated_total": total_rotated}

    result = st.run(check)
    twice = sorted(d for d in wanted if rotated.get(d, 0) != 1)
    mismatched = sorted(d for d in wanted if issued.get(d, 0) != hellos.get(d, 0))
    reissued = sum(1 for d in wanted if issued.get(d, 0) > 1)
    out = {"devices": n, "not_converged": len(result["not_converged"]),
           "examples": result["not_converged"][:3], "rotated_not_once": len(twice),
           "issued_without_own_hello": len(mismatched), "reissued_after_kill": reissued,
           "ok": not result["not_converged"] and not twice and not mismatched}
    if not out["ok"]:
        raise BenchError(f"the replicas run left the fleet inconsistent: {out}")
    return out


def _report(spec: ReplicasSpec, data: dict[str, Any]) -> Report:
    rep = Report("replicas", data)
    rep.row("devices per fleet", spec.devices, note="PostgreSQL 15, protocol-level devices")
    one = data.get("one_agent")
    rp = data["replicas"]
    if one:
        rep.row("one agent: AK rotations/s", one["updates_per_s"],
                note=f"p50 {one['p50_ms']} ms, p99 {one['p99_ms']} ms")
    rep.row(f"{spec.agents} agents, one SIGKILLed: rotations/s", rp["updates_per_s"],
            note=f"p50 {rp['p50_ms']} ms, p99 {rp['p99_ms']} ms")
    if one and one["updates_per_s"]:
        rep.row("  ratio to one agent", round(rp["updates_per_s"] / one["updates_per_s"], 2))
    k = rp["killed"]
    rep.row("  agent killed", f"after {k['after_rotations']:,} rotations ({k['at_s']} s)")
    rep.row("  CPU s: " + ", ".join(rp["cpu_s"]), " / ".join(f"{v:.1f}" for v in rp["cpu_s"].values()))
    rep.row("  waited for a CPU (s)", " / ".join(f"{v:.1f}" for v in rp["cpu_wait_s"].values()))
    rep.row("  device attempts (attempts: devices)", ", ".join(f"{a}: {c}" for a, c in
                                                               sorted(rp["attempts"].items())))
    v = data["verify"]
    rep.row("devices unconverged", v["not_converged"], "0", "met" if v["not_converged"] == 0 else "NOT met")
    rep.row("devices whose AK was activated != once", v["rotated_not_once"], "0",
            "met" if v["rotated_not_once"] == 0 else "NOT met")
    rep.row("keys issued without their own HELLO", v["issued_without_own_hello"], "0",
            "met" if v["issued_without_own_hello"] == 0 else "NOT met")
    rep.row("offers lost with the killed agent, re-issued", v["reissued_after_kill"],
            note="a new HELLO, a new key; the lost one never became current")
    return rep
