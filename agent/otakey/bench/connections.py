"""``otakey bench connections``: the agent's memory with many devices connected and idle.

N devices (seeded as provisioned) connect to one agent process, each over its own TCP connection
on 127.0.0.1, check in once (so each is a real, authenticated session the agent has answered), and
stay connected and idle. The agent's resident set is read before the first connection, with all
of them open and idle, and its high-water mark at the end (``VmHWM``: the kernel's own peak, so no
sample can miss it). The benchmark and the agent raise their soft limit of open files first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .common import (
    BenchError,
    Report,
    Stopwatch,
    fd_count,
    goal_mark,
    machine,
    peak_rss_mb,
    raise_nofile,
    rss_mb,
    say,
    summarize_latencies,
)
from .loadgen import Pool
from .stack import Stack, agent_log_errors

RSS_GOAL_MB = 64.0


@dataclass(frozen=True)
class ConnectionsSpec:
    devices: int = 10_000
    workers: int = 2
    hold: float = 2.0          # seconds the idle connections are held before the final reading
    keep: bool = False

    def __post_init__(self) -> None:
        if self.devices < 1 or self.workers < 1 or self.hold < 0:
            raise ValueError("--devices and --workers are at least 1, --hold at least 0")


def run(spec: ConnectionsSpec) -> Report:
    nofile = raise_nofile(spec.devices + 2048)
    if nofile < spec.devices + 256:
        raise BenchError(f"the open-files limit is {nofile}; {spec.devices} connections need more")
    data: dict[str, Any] = {"benchmark": "connections", "devices": spec.devices, "workers": spec.workers,
                            "machine": machine(), "nofile_limit": nofile}
    with Stack.create(spec.keep) as st:
        st.database("sqlite")
        keys = st.product("BENCH-CONN", spec.devices)
        st.seed_devices(spec.devices)
        agent = st.agent([])
        pid = agent.process.pid
        time.sleep(0.5)
        data["agent_rss_before_mb"] = round(rss_mb(pid), 1)
        fds_before = fd_count(pid)
        say(f"agent pid {pid}: {data['agent_rss_before_mb']} MB before any connection")
        with Pool(keys, spec.devices, spec.workers, "127.0.0.1", [agent.port], seeded=True,
                  nofile=spec.devices + 2048) as pool:
            sw = Stopwatch()
            c = pool.connect(concurrency=200)
            data["connect_seconds"] = round(sw(), 2)
            if c["failed"]:
                raise BenchError(f"{c['failed']} of {spec.devices} devices could not connect")
            r = pool.op("checkin", inflight=256)
            if r["failed"]:
                raise BenchError(f"{len(r['failed'])} devices failed their check-in")
            data["checkin"] = {"seconds": round(sw() - data["connect_seconds"], 2),
                               **summarize_latencies(r["latencies_ms"])}
            time.sleep(spec.hold)
            data["agent_open_fds"] = fd_count(pid)
            # Every descriptor the agent opened since is a device's socket (its database and
            # listener were open before).
            data["connections"] = data["agent_open_fds"] - fds_before
            data["agent_rss_idle_mb"] = round(rss_mb(pid), 1)
            data["agent_peak_rss_mb"] = round(peak_rss_mb(pid), 1)
        extra = data["agent_rss_idle_mb"] - data["agent_rss_before_mb"]
        data["kb_per_connection"] = round(extra * 1024 / spec.devices, 2)
        data["agent_errors"] = agent_log_errors(agent)
        agent.stop(30.0)
    rep = Report("connections", data)
    rep.row("idle device connections", data["connections"], note=f"agent holds {data['agent_open_fds']} fds")
    rep.row("agent RSS before (MB)", data["agent_rss_before_mb"])
    rep.row("agent RSS, all idle (MB)", data["agent_rss_idle_mb"],
            note=f"{data['kb_per_connection']} KB per connection")
    met = data["agent_peak_rss_mb"] <= RSS_GOAL_MB if spec.devices >= 10_000 else None
    rep.row("agent peak RSS (MB)", data["agent_peak_rss_mb"], f"<= {RSS_GOAL_MB:.0f} MB at 10,000",
            goal_mark(met))
    rep.row("connect + first check-in (s)", f"{data['connect_seconds']} + {data['checkin']['seconds']}")
    return rep
