"""Run an ``otakey`` command under cProfile and write the statistics when it ends (also after
SIGTERM, which the agent turns into a graceful stop): ``python -m otakey.bench.profiled OUT ARGS``.

The rotation benchmark starts its agent this way with ``--profile`` and prints where the agent's
time went (:func:`otakey.bench.profile.summary`).
"""

from __future__ import annotations

import cProfile
import sys


def main() -> int:
    if len(sys.argv) < 3:
        print("usage: python -m otakey.bench.profiled OUT.prof OTAKEY-ARGS...", file=sys.stderr)
        return 2
    out, args = sys.argv[1], sys.argv[2:]
    from otakey.cli import main as otakey_main

    profiler = cProfile.Profile()
    try:
        return int(profiler.runcall(otakey_main, args) or 0)
    finally:
        profiler.dump_stats(out)


if __name__ == "__main__":
    sys.exit(main())
