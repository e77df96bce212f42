#!/usr/bin/env python3
"""Write the development factory keystore record that a default firmware build puts in area B.

PRODUCT po_id=1 po_name "DEV-PO", PK = bytes 0x00..0x1f, generation 1: a key everyone knows, for
emulator and bench runs only. Real product images take their record from
`otakey firmware build --product FILE` through the OTAKEY_FACTORY_RECORD cache variable.

The record is made by the Python keystore encoder (otakey.protocol.keystore) when it can be imported
from the source tree; otherwise, and always as a cross-check, by the few lines below that follow
docs/flash-layout.md §1. When both exist they must agree byte for byte, or the build stops.
"""

from __future__ import annotations

import argparse
import hashlib
import struct
import sys
from pathlib import Path

COMMIT_MAGIC = 0x3CC3A55A
RECORD_MAGIC = b"OKKS"
FORMAT = 1
TAG_PRODUCT = 0x01
TAG_PK = 0x02
ERASED = 0xFF

DEV_PO_ID = 1
DEV_PO_NAME = b"DEV-PO"
DEV_PK = bytes(range(32))
DEV_GENERATION = 1


def _tlv(tag: int, value: bytes) -> bytes:
    return struct.pack("<BH", tag, len(value)) + value


def encode_standalone(po_id: int, po_name: bytes, pk: bytes, generation: int) -> bytes:
    """flash-layout §1: commit ‖ magic ‖ generation ‖ format ‖ payload_len ‖ payload ‖ pad ‖ SHA-256."""
    payload = _tlv(TAG_PRODUCT, struct.pack("<I", po_id) + po_name) + _tlv(TAG_PK, pk)
    body = RECORD_MAGIC + struct.pack("<IHH", generation, FORMAT, len(payload)) + payload
    pad = bytes([ERASED]) * (-len(payload) % 4)
    return struct.pack("<I", COMMIT_MAGIC) + body + pad + hashlib.sha256(body).digest()


def encode_with_package(agent_dir: Path) -> tuple[bytes | None, str]:
    """The record from otakey.protocol.keystore, or None and the reason it could not be used."""
    sys.path.insert(0, str(agent_dir))
    try:
        from otakey.protocol.keystore import KeystoreState, encode_record
    except ImportError as exc:
        return None, f"otakey.protocol.keystore not importable ({exc})"
    state = KeystoreState(generation=DEV_GENERATION, po_id=DEV_PO_ID, po_name=DEV_PO_NAME.decode(), pk=DEV_PK)
    return encode_record(state), "otakey.protocol.keystore.encode_record"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--agent-dir", type=Path, required=True, help="the repository's agent/ folder")
    args = parser.parse_args()

    standalone = encode_standalone(DEV_PO_ID, DEV_PO_NAME, DEV_PK, DEV_GENERATION)
    record, source = encode_with_package(args.agent_dir)
    if record is None:
        print(f"dev factory record: standalone encoder ({source})")
        record = standalone
    elif record != standalone:
        print(
            f"dev factory record: {source} and flash-layout §1 disagree:\n"
            f"  package:    {record.hex()}\n  standalone: {standalone.hex()}",
            file=sys.stderr,
        )
        return 1
    else:
        print(f"dev factory record: {source} (matches the standalone encoder)")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(record)
    print(f"dev factory record: {len(record)} bytes -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
