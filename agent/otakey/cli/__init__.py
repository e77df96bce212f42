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
    "bench": "otakey.cli.bench",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole CLI, or with ``only`` just that command's parser: a long-running ``otakey agent
    serve`` then never imports the emulator, the ELF reader or the benchmarks (memory per process)."""
    parser = argparse.ArgumentParser(
        prog="otakey",
        description="OTA-Key: per-device key provisioning and atomic key updates for IoT fleets.",
    )
    parser.add_argument("--version", action="version", version=f"otakey {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module_path in COMMANDS.items():
        if only is None or name == only:
            importlib.import_module(module_path).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = args_list[0] if args_list and args_list[0] in COMMANDS else None
    parser = build_parser(only=command)
    args = parser.parse_args(args_list)
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
