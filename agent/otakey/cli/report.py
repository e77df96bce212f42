"""``otakey report``: one self-contained HTML file of the fleet and of the last power-cut campaign.

It reads an output folder (``--from``, default ./otakey-out): ``demo.json`` from ``otakey demo`` —
key versions per device, the gray-release batches on a timeline, the power cut and the attacks —
and the newest campaign summary (``campaign*.json``, what ``otakey campaign power-cut --json``
prints), whose cut points are shown on the flow's flash operations with pass/fail. Figures are
matplotlib PNGs embedded in the page; nothing is fetched when it is opened.

Exit status: 0 when the report was written (whatever it shows), 1 when there was nothing to report.
"""

from __future__ import annotations

import argparse
import json
import sys

from otakey.cli.demo import DEFAULT_OUT


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "report",
        help="one HTML file of the fleet and the last power-cut campaign",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--from",
        dest="source",
        default=DEFAULT_OUT,
        metavar="DIR",
        help=f"output folder of `otakey demo` and campaigns (default ./{DEFAULT_OUT})",
    )
    p.add_argument("--out", metavar="FILE", help="the HTML file to write (default DIR/report.html)")
    p.add_argument(
        "--campaign", metavar="FILE", help="this campaign summary instead of the newest campaign*.json in DIR"
    )
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from otakey.report import build_report

    result = build_report(args.source, args.out, args.campaign)
    if args.json:
        json.dump(
            {
                "report": str(result.path),
                "bytes": result.size,
                "demo": result.has_demo,
                "campaign": result.has_campaign,
                "ok": result.ok,
            },
            sys.stdout,
        )
        sys.stdout.write("\n")
    else:
        parts = [
            p
            for p, present in (("the demo run", result.has_demo), ("the last campaign", result.has_campaign))
            if present
        ]
        print(
            f"{result.path} ({result.size // 1024} KB): {' and '.join(parts)}"
            f"{'' if result.ok else ' — with failures, see the page'}"
        )
    return 0
