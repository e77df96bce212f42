"""Where the agent's time went, grouped into a few categories by source file.

Two sources. **py-spy** (preferred when installed: ``pip install py-spy``) samples the running
agent's stacks from outside, a few hundred times a second, without slowing it: each category's
share is its share of the samples. **cProfile** (the fallback, :mod:`otakey.bench.profiled`)
instruments every call: it also counts calls and cumulative times, but inflates code made of many
small calls — the per-byte COBS loop looked 2-3 times its real share under it (bench/README.md).
Idle time (the event loop waiting in ``epoll``) is listed apart: it is not work.
"""

from __future__ import annotations

import pstats
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

# (category, substrings of "file:function"); the first match wins.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("idle (epoll wait)", ("'poll' of 'select.epoll'", "select.epoll")),
    ("sqlite (statements, commit)", ("sqlite3.", "otakey/store/sqlite.py", "otakey/store/sql.py")),
    ("postgresql driver", ("psycopg", "otakey/store/postgres.py")),
    ("keys at rest (AES-GCM)", ("otakey/store/crypto.py", "aead.AESGCM")),
    ("protocol crypto (X25519, HKDF, AES-CBC, HMAC)", ("cryptography/", "x25519", "hkdf", "ciphers.",
                                                       "hmac", "otakey/protocol/envelope.py")),
    ("framing (COBS, CRC)", ("otakey/protocol/framing.py", "zlib.crc32")),
    ("message codec", ("otakey/protocol/messages.py",)),
    ("logging", ("logging/", "otakey/agent/agentlog.py")),
    ("cloud adapter", ("otakey/cloud/", "paho/", "boto", "json/")),
    ("request handlers and policy", ("otakey/agent/handlers.py", "otakey/agent/policy.py",
                                     "otakey/store/base.py", "dataclasses.py")),
    ("asyncio and sockets", ("asyncio/", "selectors.py", "socket", "'send' of", "'recv' of")),
    ("agent service (sessions)", ("otakey/agent/service.py",)),
)


def _key(func: tuple[str, int, str]) -> str:
    filename, _, name = func
    return f"{filename}:{name}"


def categorize(func: tuple[str, int, str]) -> str:
    k = _key(func)
    for category, needles in CATEGORIES:
        if any(n in k for n in needles):
            return category
    return "other Python"


def summary(path: Path, top: int = 12) -> dict[str, Any]:
    """``{"categories": {name: seconds}, "busy_s": ..., "idle_s": ..., "top": [...]}``."""
    stats = pstats.Stats(str(path))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    by_cat: dict[str, float] = {}
    rows = []
    for func, (_cc, _nc, tottime, cumtime, _callers) in raw.items():
        cat = categorize(func)
        by_cat[cat] = by_cat.get(cat, 0.0) + tottime
        rows.append((tottime, cumtime, func))
    idle = by_cat.pop("idle (epoll wait)", 0.0)
    busy = sum(by_cat.values())
    rows.sort(key=lambda r: r[0], reverse=True)
    top_rows = [{"function": f"{Path(f[0]).name}:{f[1]}({f[2]})", "tottime_s": round(t, 3),
                 "cumtime_s": round(c, 3)}
                for t, c, f in rows if categorize(f) != "idle (epoll wait)"][:top]
    return {"busy_s": round(busy, 3), "idle_s": round(idle, 3),
            "categories": {k: round(v, 3) for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1])},
            "top": top_rows}


def lines(s: dict[str, Any]) -> list[str]:
    busy = s["busy_s"] or 1e-9
    out = [f"agent profile (cProfile, main thread): {s['busy_s']:.2f} s busy, {s['idle_s']:.2f} s idle"]
    for name, sec in s["categories"].items():
        out.append(f"  {sec / busy * 100:5.1f} %  {sec:7.2f} s  {name}")
    out.append("  top functions by own time:")
    for r in s["top"]:
        out.append(f"    {r['tottime_s']:7.3f} s  {r['function']}")
    return out


# --------------------------------------------------------------------------------- py-spy


def py_spy() -> str | None:
    return shutil.which("py-spy")


class Sampler:
    """``py-spy record`` on a running process, from :meth:`start` until :meth:`stop`."""

    def __init__(self, pid: int, out: Path, rate: int = 200) -> None:
        self.out = out
        exe = py_spy()
        if exe is None:
            raise RuntimeError("py-spy is not installed")
        self._proc = subprocess.Popen([exe, "record", "--pid", str(pid), "--rate", str(rate),
                                       "--format", "raw", "--output", str(out), "--nonblocking"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


def _frame_category(frame: str) -> str | None:
    """The category of one py-spy frame ``function (file:line)``, or None if it says nothing."""
    if "selectors.py" in frame and frame.startswith("select "):
        return "idle (epoll wait)"
    for category, needles in CATEGORIES:
        if category.startswith("idle"):
            continue
        if any(n in frame for n in needles if "/" in n or n.endswith(".py")):
            return category
    return None


def sampled_summary(path: Path) -> dict[str, Any]:
    """Shares of py-spy samples (raw "collapsed" format: ``frame;frame;... count`` per line); a
    sample counts for the innermost frame that belongs to a known part."""
    by_cat: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        cat = next((c for c in map(_frame_category, reversed(frames)) if c is not None), "other Python")
        by_cat[cat] += int(count)
        if cat != "idle (epoll wait)":
            leaves[frames[-1]] += int(count)
    idle = by_cat.pop("idle (epoll wait)", 0)
    busy = sum(by_cat.values())
    return {"source": "py-spy", "busy_samples": busy, "idle_samples": idle,
            "categories": {k: round(v / max(1, busy), 4) for k, v in by_cat.most_common()},
            "top": [{"function": k, "samples": v} for k, v in leaves.most_common(12)]}


def sampled_lines(s: dict[str, Any]) -> list[str]:
    out = [f"agent profile (py-spy, sampled): {s['busy_samples']} busy samples, {s['idle_samples']} idle"]
    for name, share in s["categories"].items():
        out.append(f"  {share * 100:5.1f} %  {name}")
    out.append("  top innermost frames:")
    for r in s["top"]:
        out.append(f"    {r['samples']:6d}  {r['function']}")
    return out
