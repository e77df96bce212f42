"""What every benchmark shares: process accounting from /proc, percentiles, the machine's state,
the file-descriptor limit, and the report (a table on stdout, or JSON with ``--json``).

Numbers come from the kernel, not from the processes measured: peak RSS is ``VmHWM`` of
``/proc/PID/status`` (the high-water mark the kernel keeps, so no sample can miss a peak) and CPU
is ``utime + stime`` of ``/proc/PID/stat``.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from otakey.errors import Error

_TICK = os.sysconf("SC_CLK_TCK")


class BenchError(Error):
    """A benchmark cannot run or its outcome is wrong (devices not converged, keys issued twice)."""


# --------------------------------------------------------------------------------- processes


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (0.0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    # Fields after the command name: state is index 0, utime 11, stime 12 (proc(5) fields 14, 15).
    return (int(fields[11]) + int(fields[12])) / _TICK


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmRSS") / 1024


def peak_rss_mb(pid: int) -> float:
    """The kernel's high-water mark of the process's resident set."""
    return _status_kb(pid, "VmHWM") / 1024


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def runqueue_wait_seconds(pid: int) -> float:
    """Seconds the process's threads spent runnable but waiting for a CPU (``/proc/PID/task/*/
    schedstat``, field 2): on a shared machine, the time other programs took from the benchmark."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tasks:
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


@dataclass
class CpuMeter:
    """CPU seconds a set of processes spent between ``start()`` and ``stop()`` (``spent``), and
    seconds they were ready to run but waited for a CPU (``waited``)."""

    pids: dict[str, list[int]]
    _start: dict[str, float] = field(default_factory=dict)
    _wait0: dict[str, float] = field(default_factory=dict)
    spent: dict[str, float] = field(default_factory=dict)
    waited: dict[str, float] = field(default_factory=dict)

    def _read(self) -> dict[str, float]:
        return {name: sum(cpu_seconds(p) for p in pids) for name, pids in self.pids.items()}

    def _read_wait(self) -> dict[str, float]:
        return {name: sum(runqueue_wait_seconds(p) for p in pids) for name, pids in self.pids.items()}

    def start(self) -> CpuMeter:
        self._start = self._read()
        self._wait0 = self._read_wait()
        return self

    def stop(self) -> dict[str, float]:
        end, wait = self._read(), self._read_wait()
        self.spent = {k: round(max(0.0, end[k] - self._start.get(k, 0.0)), 3) for k in end}
        self.waited = {k: round(max(0.0, wait[k] - self._wait0.get(k, 0.0)), 3) for k in wait}
        return self.spent


def self_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# --------------------------------------------------------------------------------- limits, machine


def raise_nofile(wanted: int) -> int:
    """Raise this process's soft limit of open files towards ``wanted`` (children inherit it);
    returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, wanted), hard) if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if target != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def machine() -> dict[str, Any]:
    """What the numbers depend on: cores, load average, Python, CPU model."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "load_avg": [round(x, 2) for x in load_average()],
            "python": platform.python_version(), "cpu": model}


# --------------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation; None for no values."""
    if not values:
        return None
    s = sorted(values)
    if len(s) == 1:
        return float(s[0])
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return float(s[lo] + (s[hi] - s[lo]) * (pos - lo))


def rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


# --------------------------------------------------------------------------------- reports


@dataclass
class Report:
    """One benchmark's outcome: ``data`` is the JSON; ``rows`` the table (label, value, goal, note)."""

    name: str
    data: dict[str, Any]
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def row(self, label: str, value: Any, goal: str = "", note: str = "") -> None:
        self.rows.append((label, _fmt(value), goal, note))

    def text(self) -> str:
        out = [f"otakey bench {self.name}"]
        m = self.data.get("machine") or {}
        if m:
            out.append(f"machine: {m.get('cores')} cores, load average {m.get('load_avg')} at start, "
                       f"Python {m.get('python')}")
        widths = [max([len(r[i]) for r in self.rows] + [len(h)])
                  for i, h in enumerate(("MEASURE", "VALUE", "GOAL", "NOTE"))]
        header = ("MEASURE", "VALUE", "GOAL", "NOTE")
        out.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
        for r in self.rows:
            out.append("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
        out += self.notes
        return "\n".join(out)

    def emit(self, as_json: bool, save: str | None = None) -> None:
        if save:
            Path(save).parent.mkdir(parents=True, exist_ok=True)
            Path(save).write_text(json.dumps(self.data, indent=2) + "\n")
        if as_json:
            json.dump(self.data, sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            sys.stdout.write(self.text() + "\n")
        sys.stdout.flush()


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def goal_mark(met: bool | None) -> str:
    return "-" if met is None else ("met" if met else "NOT met")


def say(text: str) -> None:
    """Progress for the person running the benchmark: stderr, so ``--json`` stays clean."""
    print(f"bench: {text}", file=sys.stderr, flush=True)


class Stopwatch:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.t0


def summarize_latencies(ms: Iterable[float]) -> dict[str, float | None]:
    values = list(ms)
    return {"p50_ms": rounded(percentile(values, 50)), "p90_ms": rounded(percentile(values, 90)),
            "p99_ms": rounded(percentile(values, 99)), "max_ms": rounded(max(values) if values else None)}
