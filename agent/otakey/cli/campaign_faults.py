"""``otakey campaign faults`` and ``otakey campaign agent-crash``: the reliability campaigns of the
network and of the agent (see :mod:`otakey.harness.fault_campaign` and
:mod:`otakey.harness.crash_campaign`).

The ``campaign`` command group lives in :mod:`otakey.cli.campaign` (its ``CAMPAIGNS`` registry); it
adds these two subcommands with :func:`add_parsers`.

Exit status: 0 when every session (device) converged and agreed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any

from otakey.agent.cliutil import ProgressBar

FAULTS_HELP = """Randomized sessions over every flow (provision, AK rotation, cloud update, check-in, and with
--aws a migration between Mosquitto and AWS IoT on moto) with protocol-level devices, through a seeded
fault proxy (drop, duplicate, reorder, delay, truncate, flip, close; plus device power cuts) against a
real agent process; then --emulated devices (the firmware on the built-in emulator, through its
gateway). After the faults stop every device gets a clean link and must converge: device, agent store
and cloud agree, no key issued twice. A failure prints the command that replays its session."""

CRASH_HELP = """kill -9 of the agent at random moments (and at named crash points inside its transactions)
while a fleet rotates its AK and cloud credential; restart; every device must converge with no key lost
or issued twice and an audit log accounting for every key."""


def _terminate_as_interrupt(_signum: int, _frame: Any) -> None:
    # SIGTERM unwinds like Ctrl-C, so the servers and agents the campaign started are stopped.
    raise KeyboardInterrupt


def add_parsers(csub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``faults`` and ``agent-crash`` to the ``campaign`` group's subparsers."""
    f = csub.add_parser("faults", help="randomized sessions through a fault proxy; all must agree after",
                        description=FAULTS_HELP)
    f.add_argument("--sessions", type=int, default=10_000, help="protocol-level sessions (default 10000)")
    f.add_argument("--seed", type=int, default=0, help="seed of faults, flows and devices (default 0)")
    f.add_argument("--emulated", type=int, default=2, metavar="N",
                   help="emulated devices through the gateway, 3 sessions each (default 2)")
    f.add_argument("--devices", type=int, default=0, metavar="N",
                   help="protocol-level devices sharing the sessions (default: one per 40, 8..128)")
    f.add_argument("--concurrency", type=int, default=32, metavar="N", help="devices in an exchange at once")
    f.add_argument("--aws", action="store_true", help="add a moto server as a second cloud: migrations too")
    f.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    f.add_argument("--fault-rate", type=float, default=0.2, metavar="P", help="chance that a frame is hurt")
    f.add_argument("--max-faults", type=int, default=3, metavar="N", help="faults per session at most")
    f.add_argument("--no-power-cuts", dest="power_cuts", action="store_false",
                   help="no device power cuts, network faults only")
    f.add_argument("--replay", type=int, metavar="N",
                   help="run only session N (the device's earlier sessions run clean): a failure's replay")
    f.add_argument("--quick", action="store_true", help="a CI size: 300 sessions, 1 emulated device")
    f.add_argument("--keep", action="store_true", help="keep the agent logs and database (always on failure)")
    f.add_argument("--json", action="store_true", help="print the summary as JSON")
    f.set_defaults(func=faults)

    c = csub.add_parser("agent-crash", help="kill -9 the agent during a fleet rotation; all converge",
                        description=CRASH_HELP)
    c.add_argument("--devices", type=int, default=2000, help="fleet size (default 2000)")
    c.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    c.add_argument("--agents", type=int, choices=(1, 3), default=1,
                   help="agent replicas (3 needs --db postgres)")
    c.add_argument("--kills", type=int, default=10, help="kills during the rotation (default 10)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--rotate", choices=("ak", "cloud", "both"), default="both",
                   help="what the fleet rotates (default both: AK, then cloud credential)")
    c.add_argument("--concurrency", type=int, default=64, metavar="N", help="devices in an exchange at once")
    c.add_argument("--quick", action="store_true", help="a CI size: 150 devices, 4 kills, short pauses")
    c.add_argument("--keep", action="store_true", help="keep the agent logs and database (always on failure)")
    c.add_argument("--json", action="store_true", help="print the summary as JSON")
    c.set_defaults(func=agent_crash)


def _emit(summary: Any, as_json: bool) -> None:
    if as_json:
        json.dump(summary.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(summary.text())


def faults(args: argparse.Namespace) -> int:
    from otakey.harness.fault_campaign import QUICK, FaultCampaignSpec, run_fault_campaign

    sessions, emulated = args.sessions, args.emulated
    if args.quick:
        sessions, emulated = QUICK["sessions"], QUICK["emulated"]
    spec = FaultCampaignSpec(sessions=sessions, seed=args.seed, emulated=emulated, devices=args.devices,
                             concurrency=args.concurrency, aws=args.aws, db=args.db,
                             fault_rate=args.fault_rate, max_faults=args.max_faults,
                             power_cuts=args.power_cuts, replay=args.replay, keep=args.keep)
    bar = ProgressBar()
    previous = signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    try:
        summary = run_fault_campaign(spec, progress=lambda n, total: bar(n, max(total, n), "sessions"),
                                     log_line=lambda line: print(line, file=sys.stderr))
    finally:
        signal.signal(signal.SIGTERM, previous)
        bar.finish()
    _emit(summary, args.json)
    return 1 if summary.inconsistent else 0


def agent_crash(args: argparse.Namespace) -> int:
    from otakey.harness.crash_campaign import QUICK, CrashCampaignSpec, run_crash_campaign

    options: dict[str, Any] = {"devices": args.devices, "kills": args.kills}
    if args.quick:
        options = dict(QUICK)
    spec = CrashCampaignSpec(db=args.db, agents=args.agents, seed=args.seed, rotate=args.rotate,
                             concurrency=args.concurrency, keep=args.keep, **options)
    previous = signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    try:
        summary = run_crash_campaign(spec, log_line=lambda line: print(line, file=sys.stderr))
    finally:
        signal.signal(signal.SIGTERM, previous)
    _emit(summary, args.json)
    return 1 if summary.inconsistent else 0
