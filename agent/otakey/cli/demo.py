"""``otakey demo``: the scheme end to end on what exists so far.

Until the emulated STM32F429 fleet lands, the demo runs the protocol-level devices of the Python
reference against the in-memory reference agent: stage-2 provisioning (PK erased), first cloud
credentials, an AK rotation and a cloud-key rotation, a replayed HELLO and a duplicate-ID attempt
refused. Every step goes through the real codec (frames, envelopes, keystore records).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from otakey.protocol.envelope import is_error_message
from otakey.protocol.handshake import DeviceSession, DeviceState, ReferenceAgent
from otakey.protocol.keystore import KeystoreState, decode_record, encode_record
from otakey.protocol.messages import Action

PO_ID = 1
PO_NAME = "DEMO-PO"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="run the OTA-Key scheme end to end and print a fleet summary")
    p.add_argument("--devices", type=int, default=8, help="number of devices (default 8)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=run)


def _exchange(dev: DeviceSession, agent: ReferenceAgent, first: bytes | None) -> None:
    """Carry one exchange between a device and the agent until the device is idle again."""
    msg = first
    while msg is not None:
        out = dev.receive(agent.handle(msg))
        if out.session is not None:  # the reference gateway: the credential is the agent's own
            from otakey.protocol.cloudsession import SessionResult, SessionStatus

            out = dev.session_result(SessionResult(out.session.request_id, SessionStatus.CONNECTED, ""))
        msg = out.send


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, flush=True)


def run(args: argparse.Namespace) -> int:
    if args.devices < 1:
        raise ValueError("--devices must be at least 1")
    quiet = bool(args.json)
    started = time.monotonic()
    pk = os.urandom(32)
    agent = ReferenceAgent()
    agent.add_order(PO_ID, PO_NAME, pk, quantity=args.devices)
    factory = encode_record(KeystoreState(generation=1, po_id=PO_ID, po_name=PO_NAME, pk=pk))
    devices = [DeviceSession(os.urandom(12), decode_record(factory)) for _ in range(args.devices)]
    _say(quiet, f"product order {PO_NAME}: one factory image for {args.devices} devices")

    for d in devices:
        _exchange(d, agent, d.start_next())
    provisioned = sum(1 for d in devices if d.keystore and d.keystore.ak and d.keystore.pk is None)
    _say(quiet, f"stage-2 provisioning: {provisioned}/{args.devices} hold a unique AK, PK erased")

    for d in devices:
        _exchange(d, agent, d.start_next())
    with_cloud = sum(1 for d in devices if d.keystore and d.keystore.cloud)
    _say(quiet, f"cloud credentials: {with_cloud}/{args.devices} committed and confirmed")

    for action in (Action.ROTATE_AK, Action.UPDATE_CLOUD):
        for d in devices:
            agent.set_action(d.device_id, action)
            _exchange(d, agent, d.start_checkin())
            _exchange(d, agent, d.start_next())
    rotated = sum(1 for d in devices if d.keystore and d.keystore.ak_version == 2
                  and d.keystore.cloud and d.keystore.cloud.version == 2)
    _say(quiet, f"rotation: {rotated}/{args.devices} moved to AK v2 and cloud key v2")

    # Attacks: a replayed provisioning HELLO, and a second provisioning of a completed ID.
    refused = 0
    victim = devices[0]
    replay = DeviceSession(victim.device_id, decode_record(factory))
    hello = replay.start_provisioning()
    if is_error_message(agent.handle(hello)):
        refused += 1
    if is_error_message(agent.handle(hello)):
        refused += 1
    _say(quiet, f"attacks: {refused}/2 refused (replayed HELLO, duplicate ID)")

    summary: dict[str, Any] = {
        "devices": args.devices,
        "provisioned": provisioned,
        "cloud_connected": with_cloud,
        "rotated": rotated,
        "refused_attacks": refused,
        "idle": sum(1 for d in devices if d.state == DeviceState.IDLE),
        "seconds": round(time.monotonic() - started, 3),
    }
    if args.json:
        json.dump(summary, sys.stdout)
        print()
    else:
        print(" ".join(f"{k}={v}" for k, v in summary.items()))
    ok = provisioned == with_cloud == rotated == args.devices and refused == 2
    return 0 if ok else 1
