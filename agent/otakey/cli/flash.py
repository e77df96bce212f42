"""``otakey flash --probe openocd|stlink ELF``: program and verify a real STM32F429I-DISC1.

OpenOCD programs the ELF itself (``program ELF verify reset exit``); st-flash writes the flash image
(``.bin``) at the ELF's lowest load address and the image is read back and compared. Either way the
board then runs the new image: a factory-fresh device (keystore area A erased, area B the PO's
factory record), which provisions on its first contact with the agent. ``--dry-run`` prints the
commands instead of running them.

Exit status: 0 flashed and verified; 1 an error (no probe, a verify mismatch, a tool missing).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from otakey.firmware.elf import FirmwareElf
from otakey.harness.board_backend import PROBES, Probe


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "flash",
        help="program and verify a real STM32F429I-DISC1 through its ST-LINK",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "elf", metavar="ELF", help="the factory image (otakey-fw.elf from `otakey firmware build`)"
    )
    p.add_argument(
        "--probe",
        choices=PROBES,
        default="openocd",
        help="openocd (default) or stlink (st-flash from stlink-tools)",
    )
    p.add_argument("--serial", metavar="SN", help="the ST-LINK's serial number, when several are plugged in")
    p.add_argument("--timeout", type=float, default=120.0, metavar="S", help="seconds each tool may take")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    elf = FirmwareElf(args.elf)
    probe = Probe(args.probe, serial=args.serial, timeout=args.timeout)
    if args.dry_run:
        commands = probe.flash_commands(elf)
        if args.json:
            print(json.dumps({"probe": args.probe, "commands": commands}, indent=2))
        else:
            print("\n".join(shlex.join(c) for c in commands))
        return 0
    result = probe.flash(elf)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(
            f"flashed {result.size} bytes at 0x{result.base:08X} with {args.probe} and verified "
            f"({result.seconds:.1f} s); the board runs the new image"
        )
    sys.stdout.flush()
    return 0
