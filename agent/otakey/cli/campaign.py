"""``otakey campaign power-cut --flow FLOW``: cut a device's power at every flash operation of a key
flow and check that it always comes back with the old or the new key, in agreement with the agent and
the cloud (see :mod:`otakey.harness.campaign`).

The device is the real firmware on the built-in emulator; the agent, Mosquitto (and moto for
``migrate``) are started here on 127.0.0.1 and stopped at the end. Cut points are spread over
``--jobs`` processes. A failing cut prints the command that replays it alone.

Exit status: 0 when no cut bricked the device or left it inconsistent, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from otakey.agent.cliutil import ProgressBar
from otakey.harness.campaign import FLOWS, MODES, CampaignSpec, run_campaign

#: Campaign kinds -> "module:function" that adds the kind's subparser (an explicit registry, like
#: the CLI's COMMANDS): ``otakey campaign KIND ...``.
CAMPAIGNS: dict[str, str] = {
    "power-cut": "otakey.cli.campaign:add_power_cut_parser",
    "faults": "otakey.cli.campaign_faults:add_parsers",  # also adds agent-crash
}


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("campaign", help="power-cut (and other) campaigns against the firmware")
    csub = p.add_subparsers(dest="campaign_command", metavar="KIND")
    csub.required = True
    for target in CAMPAIGNS.values():
        module_name, _, function = target.partition(":")
        getattr(importlib.import_module(module_name), function)(csub)


def add_power_cut_parser(csub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    pc = csub.add_parser(
        "power-cut",
        help="cut power at every flash operation of a flow",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pc.add_argument(
        "--flow",
        required=True,
        choices=FLOWS,
        help="provision (stage 2 + first cloud credentials), ak-rotate, cloud-update, "
        "migrate (cloud update from Mosquitto to AWS IoT on moto)",
    )
    pc.add_argument(
        "--torn",
        nargs="?",
        const="sweep",
        default=None,
        metavar="MODE",
        help="alone: also cut in the middle of each operation (a partly erased sector, a "
        f"partly programmed word); with --cut-op: how that cut leaves it ({', '.join(MODES)})",
    )
    pc.add_argument(
        "--depth",
        type=int,
        choices=(1, 2),
        default=1,
        help="2: cut the recovery once more, at one of its own flash operations (from --seed)",
    )
    pc.add_argument(
        "--seed", type=int, default=0, help="device identity, torn patterns, sampling (default 0)"
    )
    pc.add_argument(
        "--quick",
        action="store_true",
        help="a deterministic subset of cut points (every erase and commit word, the first and "
        "last record word, one seeded word between): for CI",
    )
    pc.add_argument(
        "--jobs", type=int, default=2, metavar="N", help="processes to spread cuts over (default 2)"
    )
    pc.add_argument("--at-instruction", type=int, metavar="N", help="replay one cut, at instruction N")
    pc.add_argument(
        "--cut-op", type=int, metavar="K", help="replay one cut, at flash operation K (see --torn)"
    )
    pc.add_argument(
        "--second-op", type=int, metavar="J", help="with one cut: cut again at recovery operation J"
    )
    pc.add_argument(
        "--second-torn",
        default="none",
        choices=MODES,
        metavar="MODE",
        help=f"how the second cut leaves its operation ({', '.join(MODES)})",
    )
    pc.add_argument("--json", action="store_true", help="print the summary as JSON")
    pc.set_defaults(func=power_cut)


def power_cut(args: argparse.Namespace) -> int:
    torn = args.torn
    sweep_torn = torn == "sweep"
    cut_mode = "none"
    if torn is not None and not sweep_torn:
        if torn not in MODES:
            raise ValueError(f"--torn takes no value, or with --cut-op one of {', '.join(MODES)}")
        if args.cut_op is None:
            raise ValueError("--torn MODE goes with --cut-op K")
        cut_mode = torn
    spec = CampaignSpec(
        flow=args.flow,
        torn=sweep_torn,
        depth=args.depth,
        seed=args.seed,
        quick=args.quick,
        jobs=args.jobs,
        at_instruction=args.at_instruction,
        cut_op=args.cut_op,
        cut_mode=cut_mode,
        second_op=args.second_op,
        second_mode=args.second_torn,
    )
    bar = ProgressBar()
    summary = run_campaign(
        spec,
        progress=lambda done, total: bar(done, total, f"{args.flow} cuts"),
        log_line=lambda line: print(line, file=sys.stderr),
    )
    bar.finish()
    if args.json:
        json.dump(summary.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(summary.text())
    return 1 if summary.failed else 0
