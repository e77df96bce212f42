"""``otakey bench …``: benchmarks that print numbers — a table, or JSON with ``--json``.

Everything runs on 127.0.0.1 and is started and stopped by the benchmark itself: the agent
process(es), SQLite or a throwaway PostgreSQL, Mosquitto brokers, a moto server, and the devices
(protocol-level, many per process over several processes; or the emulated STM32F429 fleet).
``--save FILE`` also writes the JSON to FILE (``otakey bench paper`` reads such files).
Progress goes to stderr. bench/README.md has the commands and the numbers measured.
"""

from __future__ import annotations

import argparse
import os

# The benchmark modules are imported when a benchmark runs, not when the parser is built: every
# ``otakey`` command (the agent too) builds the whole parser, and they pull in the harness.
_CORES = os.cpu_count() or 2


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--save", metavar="FILE", help="also write the JSON result to FILE")
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs, database)")


def _sub(bsub: argparse._SubParsersAction, name: str, help_: str, description: str  # type: ignore[type-arg]
         ) -> argparse.ArgumentParser:
    return bsub.add_parser(name, help=help_, description=description,
                           formatter_class=argparse.RawDescriptionHelpFormatter)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("bench", help="benchmarks: throughput, latency, memory, against the paper",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bsub = p.add_subparsers(dest="bench_command", metavar="BENCHMARK")
    bsub.required = True

    r = _sub(bsub, "rotate", "key updates through a real agent, measured from the devices",
             "Every device rotates its AK (--kind ak), does stage 2 (prov), or gets its first cloud\n"
             "credential and rotates it (cloud), against a real agent process; devices are protocol-level,\n"
             "many per process over --workers processes. Reports updates/s, latency, bytes on the wire,\n"
             "CPU of agent/cloud/devices, the agent's peak RSS, and checks that the fleet converged.")
    r.add_argument("--kind", choices=("ak", "prov", "cloud"), default="ak")
    r.add_argument("--devices", type=int, default=1000, metavar="N")
    r.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    r.add_argument("--sqlite-sync", choices=("full", "normal"), default=None,
                   help="SQLite synchronous setting of the agent's database (default: the agent's, FULL)")
    r.add_argument("--cloud", choices=("mosquitto", "aws-iot"), default="mosquitto", help="for --kind cloud")
    r.add_argument("--shards", type=int, default=1, metavar="K",
                   help="Mosquitto brokers the devices are spread over (--kind cloud; default 1)")
    r.add_argument("--workers", type=int, default=_CORES, metavar="N",
                   help="load-generator processes (default: one per core)")
    r.add_argument("--inflight", type=int, default=256, metavar="N",
                   help="devices updating at the same moment, over all workers (default 256)")
    r.add_argument("--no-checkin", action="store_true", help="skip the check-in round before the update")
    r.add_argument("--profile", action="store_true",
                   help="run the agent under cProfile and show where its time went")
    _common(r)
    r.set_defaults(func=_rotate)

    c = _sub(bsub, "connections", "agent memory with many idle device connections",
             "N devices connect to one agent, check in once and stay connected and idle; the agent's\n"
             "RSS before, with all idle, and its peak (VmHWM).")
    c.add_argument("--devices", type=int, default=10_000, metavar="N")
    c.add_argument("--workers", type=int, default=_CORES, metavar="N")
    c.add_argument("--hold", type=float, default=2.0, metavar="S",
                   help="seconds to hold them idle (default 2)")
    _common(c)
    c.set_defaults(func=_connections)

    e = _sub(bsub, "emu", "the emulated STM32F429 fleet: provision, cloud key, AK rotation",
             "N devices run the real firmware on the built-in STM32F429 emulator (one factory image,\n"
             "distinct UIDs) against a real agent and Mosquitto: stage 2, first cloud credential with its\n"
             "MQTT test session, then an AK rotation the operator asks for. Reports the fleet's time and\n"
             "the Cortex-M4 instructions per provisioning and per rotation.")
    e.add_argument("--devices", type=int, default=1000, metavar="N")
    e.add_argument("--workers", type=int, default=_CORES, metavar="N",
                   help="emulator processes (default: one per core)")
    e.add_argument("--concurrency", type=int, default=16, metavar="N", help="devices at a time per worker")
    e.add_argument("--shards", type=int, default=4, metavar="K", help="Mosquitto brokers (default 4)")
    e.add_argument("--no-rotate", action="store_true", help="stop after provisioning and the cloud key")
    _common(e)
    e.set_defaults(func=_emu)

    rp = _sub(bsub, "replicas", "agent replicas on one PostgreSQL, one killed mid-run",
              "A fleet rotates through one agent, then another fleet through --agents agents on the same\n"
              "PostgreSQL, one of them SIGKILLed after a third of the rotations; its devices fail over.\n"
              "Checks that every device converged and no key was issued or activated twice.")
    rp.add_argument("--devices", type=int, default=10_000, metavar="N", help="devices per fleet")
    rp.add_argument("--agents", type=int, default=3, metavar="A")
    rp.add_argument("--workers", type=int, default=_CORES, metavar="N")
    rp.add_argument("--inflight", type=int, default=256, metavar="N")
    rp.add_argument("--no-baseline", action="store_true", help="skip the one-agent reference run")
    _common(rp)
    rp.set_defaults(func=_replicas)

    pa = _sub(bsub, "paper", "the paper's baselines BL1-BL4 and OTA-Key beside our measurements, with a plot",
              "Recomputes the paper's Fig. 7-9 model (f2 = 32.1 MB, 6.5 MB/s, 5 % failures, deltas\n"
              "20 %) and sets our measured times and bytes beside it, as ratios and a PNG plot. Reads\n"
              "the JSON of `otakey bench rotate ... --save FILE` (--ak, --cloud) and of `otakey bench\n"
              "connections` (--connections); without --ak it measures a small AK rotation run itself.")
    pa.add_argument("--ak", metavar="FILE", help="JSON of `otakey bench rotate --kind ak`")
    pa.add_argument("--cloud", metavar="FILE", help="JSON of `otakey bench rotate --kind cloud`")
    pa.add_argument("--connections", metavar="FILE", help="JSON of `otakey bench connections`")
    pa.add_argument("--devices", type=int, default=500, metavar="N", help="size of the run made without --ak")
    pa.add_argument("--plot", default="bench-paper.png", metavar="PNG", help="where the plot goes")
    _common(pa)
    pa.set_defaults(func=_paper)

    dy = _sub(bsub, "dynsec", "Mosquitto dynamic security: commands/s as the broker fills up",
              "createClient commands/s (one per message, batched) and devices/s through the Mosquitto\n"
              "adapter, on brokers seeded offline with N devices; dynsec rewrites its JSON file per\n"
              "changing command.")
    dy.add_argument("--sizes", default="0,1000,5000", help="devices already registered, comma-separated")
    dy.add_argument("--count", type=int, default=0, metavar="N", help="operations per measurement")
    dy.add_argument("--json", action="store_true", help="print the result as JSON")
    dy.add_argument("--save", metavar="FILE", help="also write the JSON result to FILE")
    dy.set_defaults(func=_dynsec)


def _rotate(args: argparse.Namespace) -> int:
    from otakey.bench import rotate

    spec = rotate.RotateSpec(kind=args.kind, devices=args.devices, db=args.db,
                             sqlite_sync=args.sqlite_sync or "", cloud=args.cloud, shards=args.shards,
                             workers=args.workers, inflight=args.inflight, profile=args.profile,
                             keep=args.keep, checkin=not args.no_checkin)
    rotate.run(spec).emit(args.json, args.save)
    return 0


def _connections(args: argparse.Namespace) -> int:
    from otakey.bench import connections

    spec = connections.ConnectionsSpec(devices=args.devices, workers=args.workers, hold=args.hold,
                                       keep=args.keep)
    connections.run(spec).emit(args.json, args.save)
    return 0


def _emu(args: argparse.Namespace) -> int:
    from otakey.bench import emu

    spec = emu.EmuSpec(devices=args.devices, workers=args.workers, concurrency=args.concurrency,
                       shards=args.shards, rotate=not args.no_rotate, keep=args.keep)
    rep = emu.run(spec)
    rep.emit(args.json, args.save)
    return 0 if rep.data["failed"] == 0 else 1


def _replicas(args: argparse.Namespace) -> int:
    from otakey.bench import replicas

    spec = replicas.ReplicasSpec(devices=args.devices, agents=args.agents, workers=args.workers,
                                 inflight=args.inflight, baseline=not args.no_baseline, keep=args.keep)
    replicas.run(spec).emit(args.json, args.save)
    return 0


def _paper(args: argparse.Namespace) -> int:
    from otakey.bench import paper

    spec = paper.PaperSpec(ak=args.ak, cloud=args.cloud, connections=args.connections, devices=args.devices,
                           plot=args.plot, keep=args.keep)
    paper.run(spec).emit(args.json, args.save)
    return 0


def _dynsec(args: argparse.Namespace) -> int:
    from otakey.bench import dynsec

    try:
        sizes = tuple(int(s) for s in args.sizes.split(",") if s.strip())
    except ValueError:
        raise ValueError("--sizes is a comma-separated list of numbers") from None
    dynsec.run(dynsec.DynsecSpec(sizes=sizes, count=args.count)).emit(args.json, args.save)
    return 0
