"""``otakey fleet status|rotate|migrate``: the whole fleet, and gray releases.

A gray release marks one batch of devices with a pending action (rotate the AK, or update the
cloud credential), waits until the agent reports each device finished (or ``--timeout``), checks
the batch's health — failures so far within ``--max-failures``, no new anomaly — and goes on with
the next batch or stops and reports. Exit status: 0 done, 3 stopped by the health check.
"""

from __future__ import annotations

import argparse
from typing import Any

from otakey.agent.cliutil import ProgressBar, add_store_args, emit, run_on_store
from otakey.agent.operator import ReleaseSpec, fleet_status, gray_release
from otakey.cloud import ADAPTERS

STOPPED = 3


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("fleet", help="fleet status and gray releases", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    fsub = p.add_subparsers(dest="fleet_command", metavar="ACTION")
    fsub.required = True

    st = fsub.add_parser("status", help="devices by state, key versions, cloud, firmware")
    st.add_argument("--po", metavar="PO", help="only this PO")
    add_store_args(st)
    st.set_defaults(func=status)

    ro = fsub.add_parser("rotate", help="rotate AKs or cloud credentials batch by batch")
    ro.add_argument("--kind", choices=("ak", "cloud"), required=True)
    _release_args(ro)
    ro.set_defaults(func=rotate)

    mi = fsub.add_parser("migrate", help="move devices to another cloud platform batch by batch "
                                         "(the agent must serve both platforms' --cloud URLs)")
    mi.add_argument("--to", required=True, choices=tuple(ADAPTERS), dest="target")
    _release_args(mi)
    mi.set_defaults(func=migrate)


def _release_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=100, metavar="N", help="devices per batch (default 100)")
    p.add_argument("--max-failures", default="5%", metavar="P",
                   help="stop when failures exceed this share (5%%) or count (3) of the devices so far")
    p.add_argument("--timeout", type=float, default=600.0, metavar="S",
                   help="seconds a batch may take (default 600)")
    p.add_argument("--poll", type=float, default=0.5, metavar="S", help=argparse.SUPPRESS)
    p.add_argument("--po", metavar="PO", help="only this PO")
    add_store_args(p)


def status(args: argparse.Namespace) -> int:
    d = run_on_store(args, lambda store: fleet_status(store, args.po))

    def text() -> str:
        lines = [f"devices: {d['devices']}"]
        for key in ("states", "ak_versions", "cloud", "pending_actions", "firmware", "last_errors"):
            if d[key]:
                lines.append(f"{key}: " + ", ".join(f"{k}={v}" for k, v in sorted(d[key].items())))
        lines.append(f"pending AK: {d['pending_ak']}, pending cloud: {d['pending_cloud']}, "
                     f"never checked in: {d['never_checked_in']}, open anomalies: {d['open_anomalies']}")
        return "\n".join(lines)

    emit(args, d, text)
    return 0


def _release(args: argparse.Namespace, kind: str, target: str | None) -> int:
    spec = ReleaseSpec(kind=kind, batch_size=args.batch_size, max_failures=args.max_failures,
                       timeout=args.timeout, poll=args.poll, target=target, po=args.po)
    bar = ProgressBar()
    report: dict[str, Any] = run_on_store(args, lambda store: gray_release(store, spec, bar))
    bar.finish()

    def text() -> str:
        lines = [f"{report['succeeded']}/{report['devices']} devices done in "
                 f"{len(report['batches'])} batches ({report['seconds']} s)"]
        for f in report["failed"][:20]:
            lines.append(f"  failed {f['device_id']}: {f['reason']}")
        if len(report["failed"]) > 20:
            lines.append(f"  ... {len(report['failed']) - 20} more failures")
        if report["stopped"]:
            lines.append(f"STOPPED: {report['reason']}; {report['remaining']} devices not started")
        return "\n".join(lines)

    emit(args, report, text)
    return STOPPED if report["stopped"] else 0


def rotate(args: argparse.Namespace) -> int:
    return _release(args, args.kind, None)


def migrate(args: argparse.Namespace) -> int:
    return _release(args, "cloud", args.target)
