"""``otakey anomalies [list|ack ID...]``: what the agent raised to the operator."""

from __future__ import annotations

import argparse

from otakey.agent.cliutil import add_store_args, emit, run_on_store, table
from otakey.agent.operator import acknowledge, anomalies


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("anomalies", help="anomalies (duplicate IDs, quantity, allow-list, activation rate)")
    asub = p.add_subparsers(dest="anomalies_command", metavar="ACTION")
    ls = asub.add_parser("list", help="list open anomalies (default)")
    for q in (p, ls):
        q.add_argument("--po", metavar="PO", help="only this PO")
        q.add_argument("--all", action="store_true", help="acknowledged ones too")
        add_store_args(q)
        q.set_defaults(func=list_)
    ack = asub.add_parser("ack", help="acknowledge anomalies")
    ack.add_argument("ids", type=int, nargs="+", metavar="ID")
    add_store_args(ack)
    ack.set_defaults(func=ack_)


def list_(args: argparse.Namespace) -> int:
    rows = run_on_store(args, lambda store: anomalies(store, args.po, args.all))
    emit(args, rows, lambda: table(rows, ["id", "at", "kind", "po_id", "device_id", "detail"]))
    return 0


def ack_(args: argparse.Namespace) -> int:
    n = run_on_store(args, lambda store: acknowledge(store, args.ids))
    emit(args, {"acknowledged": n}, f"{n} anomalies acknowledged")
    return 0
