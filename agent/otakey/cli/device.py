"""``otakey device show|revoke|reset``: one device."""

from __future__ import annotations

import argparse
from typing import Any

from otakey.agent.cliutil import add_store_args, emit, run_on_store
from otakey.agent.operator import device_dict, get_device, parse_device_id, reset_device, revoke_device
from otakey.store import Store, Transaction


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("device", help="one device: its keys' state, revocation, reset")
    dsub = p.add_subparsers(dest="device_command", metavar="ACTION")
    dsub.required = True
    for name, helptext, func in (
            ("show", "what the agent knows of a device (never its keys)", show),
            ("revoke", "refuse the device from now on; the agent disables its cloud credentials", revoke),
            ("reset", "allow one more stage-2 provisioning of this ID (a re-flashed board)", reset)):
        sp = dsub.add_parser(name, help=helptext)
        sp.add_argument("device_id", metavar="DEVICE_ID", help="24 hex digits")
        add_store_args(sp)
        sp.set_defaults(func=func)


def _show(args: argparse.Namespace, device_id: bytes) -> dict[str, Any]:
    async def work(store: Store) -> dict[str, Any]:
        async def tx_work(tx: Transaction) -> dict[str, Any]:
            return await device_dict(tx, await get_device(tx, device_id))
        return await store.run(tx_work)

    return run_on_store(args, work)


def _text(d: dict[str, Any]) -> str:
    lines = []
    for k, v in d.items():
        if isinstance(v, dict):
            v = ", ".join(f"{a}={b}" for a, b in v.items())
        lines.append(f"{k}: {v}")
    return "\n".join(lines)


def show(args: argparse.Namespace) -> int:
    d = _show(args, parse_device_id(args.device_id))
    emit(args, d, lambda: _text(d))
    return 0


def revoke(args: argparse.Namespace) -> int:
    device_id = parse_device_id(args.device_id)
    run_on_store(args, lambda store: revoke_device(store, device_id))
    d = _show(args, device_id)
    emit(args, d, f"device {device_id.hex()} revoked")
    return 0


def reset(args: argparse.Namespace) -> int:
    device_id = parse_device_id(args.device_id)
    run_on_store(args, lambda store: reset_device(store, device_id))
    d = _show(args, device_id)
    emit(args, d, f"device {device_id.hex()} reset: it may provision once more with its PO's PK")
    return 0
