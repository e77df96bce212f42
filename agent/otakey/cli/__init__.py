"""The operator CLI: ``otakey <command> ...``.

Each command lives in its own module and registers itself in :data:`COMMANDS` (an explicit
registry, not import magic). A command module exposes ``add_parser(subparsers)`` which adds its
parser and sets ``func`` to a callable taking the parsed namespace and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from otakey import __version__
from otakey.errors import Error

# name -> module path; the order is the order of `otakey --help`.
COMMANDS: dict[str, str] = {
    "demo": "otakey.cli.demo",
    "report": "otakey.cli.report",
    "agent": "otakey.cli.agent",
    "product": "otakey.cli.product",
    "device": "otakey.cli.device",
    "fleet": "otakey.cli.fleet",
    "anomalies": "otakey.cli.anomalies",
    "firmware": "otakey.cli.firmware",
    "emu": "otakey.cli.emu",
    "campaign": "otakey.cli.campaign",
    "gateway": "otakey.cli.gateway",
    "flash": "otakey.cli.flash",
    "doctor": "otakey.cli.doctor",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otakey",
        description="OTA-Key: per-device key provisioning and atomic key updates for IoT fleets.",
    )
    parser.add_argument("--version", action="version", version=f"otakey {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module_path in COMMANDS.values():
        importlib.import_module(module_path).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as exc:
        parser.error(str(exc))
    except Error as exc:
        # Runtime conditions a user can hit get one clear sentence, not a traceback.
        print(f"otakey: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("otakey: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
