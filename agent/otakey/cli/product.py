"""``otakey product create|list|show|freeze|unfreeze|revoke``: product orders (POs)."""

from __future__ import annotations

import argparse
from typing import Any

from otakey.agent.cliutil import add_store_args, emit, run_on_store, table
from otakey.agent.operator import (
    OperatorError,
    create_product,
    find_product,
    product_dict,
    read_allow_list,
    revoke_product,
    set_frozen,
)
from otakey.agent.product_file import ProductFile
from otakey.store import Store, Transaction

CREATE_HELP = """\
Create a product order: a fresh random product key (PK) in the agent's database, and a product
file (JSON) for the firmware build. The PK goes into the product file because the factory image
of every device of the PO must carry it (stage 1 of the scheme): keep the file as secret as a
signing key. The file also holds the factory keystore record (hex) that the build places in
keystore area B. Written with mode 0600.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("product", help="product orders (POs) and their product keys")
    psub = p.add_subparsers(dest="product_command", metavar="ACTION")
    psub.required = True

    c = psub.add_parser("create", help="create a PO and write its product file", description=CREATE_HELP)
    c.add_argument("--po", required=True, metavar="NAME", help="PO name, 1..32 printable ASCII (e.g. PO-1)")
    c.add_argument("--quantity", type=int, required=True, help="how many devices may provision")
    c.add_argument("--po-id", type=int, metavar="N", help="PO number (default: the next free one)")
    c.add_argument("--allow-list", metavar="FILE",
                   help="only these device IDs may provision (one 24-hex-digit ID per line)")
    c.add_argument("--out", metavar="PRODUCT_FILE",
                   help="product file to write (default <NAME>.product.json); it holds the PK")
    add_store_args(c)
    c.set_defaults(func=create)

    v = psub.add_parser("verify", help="check a product file against the database before a factory run")
    v.add_argument("product_file", metavar="PRODUCT_FILE")
    add_store_args(v)
    v.set_defaults(func=verify)

    ls = psub.add_parser("list", help="list POs")
    add_store_args(ls)
    ls.set_defaults(func=list_)

    for name, helptext, func in (("show", "show one PO", show),
                                 ("freeze", "refuse further provisioning with the PO's PK", freeze),
                                 ("unfreeze", "allow provisioning again", unfreeze),
                                 ("revoke", "revoke the PO: its PK and every device of it", revoke)):
        sp = psub.add_parser(name, help=helptext)
        sp.add_argument("po", metavar="PO", help="PO name (or number)")
        add_store_args(sp)
        sp.set_defaults(func=func)


def create(args: argparse.Namespace) -> int:
    allow = read_allow_list(args.allow_list) if args.allow_list else None
    out = args.out or f"{args.po}.product.json"
    pf = run_on_store(args, lambda store: create_product(store, args.po, args.quantity, allow, args.po_id))
    try:
        pf.write(out)
    except OSError as exc:
        raise OperatorError(f"the PO was created but its product file {out} could not be written: "
                            f"{exc.strerror}") from None
    data = {"po_name": pf.po_name, "po_id": pf.po_id, "quantity": pf.quantity, "product_file": out,
            "allow_list": None if allow is None else len(allow)}
    emit(args, data, f"created PO {pf.po_name} (number {pf.po_id}, quantity {pf.quantity}); "
                     f"product file {out} holds its PK: keep it secret")
    return 0


def verify(args: argparse.Namespace) -> int:
    pf = ProductFile.read(args.product_file)

    async def work(store: Store) -> dict[str, Any]:
        async def tx_work(tx: Transaction) -> dict[str, Any]:
            p = await tx.get_product(pf.po_id)
            if p is None or p.name != pf.po_name:
                raise OperatorError(f"{args.product_file} names PO {pf.po_name} (number {pf.po_id}), "
                                    "which this database does not hold")
            if p.pk != pf.pk:
                raise OperatorError(f"{args.product_file} carries another PK than PO {p.name} "
                                    "in this database")
            return product_dict(p, await tx.count_devices(p.po_id))
        return await store.run(tx_work)

    d = run_on_store(args, work)
    state = "revoked" if d["revoked"] else "frozen" if d["frozen"] else "open"
    emit(args, d, f"{args.product_file}: PO {pf.po_name} matches the database ({state}, "
                  f"{d['devices']}/{d['quantity']} devices)")
    return 0


def list_(args: argparse.Namespace) -> int:
    async def work(store: Store) -> list[dict[str, Any]]:
        async def tx_work(tx: Transaction) -> list[dict[str, Any]]:
            return [product_dict(p, await tx.count_devices(p.po_id)) for p in await tx.list_products()]
        return await store.run(tx_work)

    rows = run_on_store(args, work)
    emit(args, rows, lambda: table(rows, ["po_name", "po_id", "quantity", "devices", "frozen", "revoked",
                                          "allow_list"]))
    return 0


def show(args: argparse.Namespace) -> int:
    async def work(store: Store) -> dict[str, Any]:
        async def tx_work(tx: Transaction) -> dict[str, Any]:
            p = await find_product(tx, args.po)
            d = product_dict(p, await tx.count_devices(p.po_id))
            d["anomalies"] = len(await tx.list_anomalies(po_id=p.po_id, acknowledged=False))
            return d
        return await store.run(tx_work)

    d = run_on_store(args, work)
    emit(args, d, lambda: "\n".join(f"{k}: {v}" for k, v in d.items()))
    return 0


def freeze(args: argparse.Namespace) -> int:
    p = run_on_store(args, lambda store: set_frozen(store, args.po, True))
    emit(args, product_dict(p), f"PO {p.name} frozen: its PK provisions no further device")
    return 0


def unfreeze(args: argparse.Namespace) -> int:
    p = run_on_store(args, lambda store: set_frozen(store, args.po, False))
    if p.revoked:
        raise OperatorError(f"PO {p.name} is revoked; it stays refused")
    emit(args, product_dict(p), f"PO {p.name} unfrozen")
    return 0


def revoke(args: argparse.Namespace) -> int:
    p, n = run_on_store(args, lambda store: revoke_product(store, args.po))
    d = product_dict(p)
    d["devices_revoked"] = n
    emit(args, d, f"PO {p.name} revoked: PK refused, {n} devices revoked "
                  "(the agent disables their cloud credentials)")
    return 0
