"""``otakey firmware build|info``: the factory image of a product order, and what an image holds.

``build`` reads the product file ``otakey product create`` wrote, encodes the PO's factory keystore
record (PRODUCT + PK, generation 1) and builds ``otakey-fw.elf`` (+ .bin, .hex, .map) for the
STM32F429 with the cross toolchain. The image carries the PK: treat it as secret as the product
file. Builds are cached per product record and firmware sources (``$OTAKEY_CACHE_DIR``, default
``~/.cache/otakey``); ``--out DIR`` puts the artifacts there instead.

``info`` prints an image's layout from its ELF symbols: keystore areas, application range, entry,
and the keystore record it carries (PO and key kinds, never a key).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from otakey.firmware.build import build_firmware
from otakey.firmware.elf import FirmwareElf


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("firmware", help="build a product order's factory image; inspect an image",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fsub = p.add_subparsers(dest="firmware_command", metavar="ACTION")
    fsub.required = True

    b = fsub.add_parser("build", help="build the factory image for a product file", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("--product", required=True, metavar="FILE",
                   help="product file from `otakey product create`")
    b.add_argument("--out", metavar="DIR", help="folder for the artifacts (default: the build cache)")
    b.add_argument("--source", metavar="DIR", help="repository folder with the firmware sources "
                                                   "(default: the one this package comes from)")
    b.add_argument("--force", action="store_true", help="build even when a current image exists")
    b.add_argument("--json", action="store_true", help="print the result as JSON")
    b.set_defaults(func=build)

    i = fsub.add_parser("info", help="layout and keystore contents of an image (no keys shown)")
    i.add_argument("elf", metavar="ELF")
    i.add_argument("--json", action="store_true", help="print the result as JSON")
    i.set_defaults(func=info)


def build(args: argparse.Namespace) -> int:
    def progress(line: str) -> None:
        if not args.json:
            print(f"otakey firmware build: {line}", file=sys.stderr, flush=True)

    result = build_firmware(args.product, args.out, source=args.source, force=args.force, log=progress)
    if args.json:
        json.dump(result.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        how = "reused (unchanged)" if result.cached else f"built in {result.seconds:.1f} s"
        print(f"{result.elf}\nPO {result.po_name} (number {result.po_id}), {how}")
        if result.size_report:
            print(result.size_report)
    return 0


def image_info(elf: FirmwareElf) -> dict[str, Any]:
    boot = elf.keystore_boot()
    state = boot.state
    start, end = elf.app_range
    return {
        "elf": str(elf.path),
        "entry": f"0x{elf.entry:08X}",
        "vector_table": f"0x{elf.vector_table.address:08X}",
        "initial_sp": f"0x{elf.vector_table.initial_sp:08X}",
        "keystore": {name: {"address": f"0x{a.address:08X}", "size": a.size}
                     for name, a in elf.areas.items()},
        "app": {"start": f"0x{start:08X}", "end": f"0x{end:08X}", "size": end - start},
        "active_area": boot.active,
        "record": None if state is None else {
            "generation": state.generation, "po_id": state.po_id, "po_name": state.po_name,
            "pk": state.has_pk, "ak_version": state.ak_version,
            "cloud_version": None if state.cloud is None else state.cloud.version},
    }


def info(args: argparse.Namespace) -> int:
    d = image_info(FirmwareElf(args.elf))
    if args.json:
        json.dump(d, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"{d['elf']}\nentry {d['entry']}, vector table {d['vector_table']} (SP {d['initial_sp']})")
    for name, a in d["keystore"].items():
        print(f"keystore area {name}: {a['address']} ({a['size']} bytes)")
    app = d["app"]
    print(f"application {app['start']}..{app['end']} ({app['size']} bytes, hashed by the device)")
    rec = d["record"]
    if rec is None:
        print("keystore: no valid record (the device would boot with keys=none)")
    else:
        kinds = ", ".join(k for k, v in (("PK", rec["pk"]), (f"AK v{rec['ak_version']}", rec["ak_version"]),
                                          (f"cloud v{rec['cloud_version']}", rec["cloud_version"])) if v)
        print(f"keystore: area {d['active_area']}, generation {rec['generation']}, PO {rec['po_name']} "
              f"(number {rec['po_id']}), holds {kinds or 'no keys'}")
    return 0
