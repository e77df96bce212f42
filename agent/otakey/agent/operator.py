"""What an operator does to the agent's store, as library calls; the CLI modules are thin shells.

The operator never talks to devices or clouds: every command changes the store (and writes an
audit entry saying so), and the running agent(s) act on it — a device learns a pending action at
its next check-in, a revoked device's cloud credentials are disabled by the agent's reconciler.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from otakey.cloud import ADAPTERS
from otakey.errors import Error, StorageError
from otakey.store import (
    Action,
    AuditEvent,
    ConflictError,
    Device,
    DeviceState,
    Kek,
    Product,
    Store,
    Transaction,
    open_store,
)

from .handlers import CLOUD_TARGET_PREFIX
from .product_file import ProductFile

T = TypeVar("T")
DB_ENV = "OTAKEY_DB"
PAGE = 1000


class OperatorError(Error):
    """An operator command cannot be carried out; the message says why in one sentence."""


# --------------------------------------------------------------------------------------- plumbing


def load_kek(kek_file: str | None) -> Kek:
    try:
        return Kek.load(kek_file)
    except FileNotFoundError:
        raise OperatorError(f"the KEK file {kek_file} does not exist") from None
    except OSError as exc:
        raise OperatorError(f"cannot read the KEK file {kek_file}: {exc.strerror}") from None
    except ValueError as exc:
        raise OperatorError(str(exc)) from None


def db_url(value: str | None) -> str:
    url = value or os.environ.get(DB_ENV)
    if not url:
        raise OperatorError(f"no database: pass --db URL or set {DB_ENV}")
    return url


async def with_store(url: str, kek: Kek, work: Callable[[Store], Awaitable[T]]) -> T:
    try:
        store = await open_store(url, kek)
    except StorageError as exc:
        # Driver messages span lines (libpq adds a hint): one sentence for the operator.
        raise OperatorError(f"cannot open the database: {' '.join(str(exc).split())}") from exc
    try:
        return await work(store)
    finally:
        await store.close()


def parse_device_id(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError:
        raw = b""
    if len(raw) != 12:
        raise OperatorError(f"{text!r} is not a device ID (24 hex digits, the chip's 96-bit UID)")
    return raw


def read_allow_list(path: str) -> list[bytes]:
    """One device ID (24 hex digits) per line; blank lines and ``#`` comments ignored."""
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError as exc:
        raise OperatorError(f"cannot read the allow-list {path}: {exc.strerror}") from None
    ids = []
    for n, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            ids.append(parse_device_id(text))
        except OperatorError:
            raise OperatorError(f"{path} line {n}: {text!r} is not a device ID (24 hex digits)") from None
    return ids


async def find_product(tx: Transaction, ref: str) -> Product:
    """A PO by name, or by number when ``ref`` is all digits and no PO has that name."""
    product = await tx.get_product_by_name(ref)
    if product is None and ref.isdigit():
        product = await tx.get_product(int(ref))
    if product is None:
        raise OperatorError(f"no product order {ref!r}")
    return product


async def get_device(tx: Transaction, device_id: bytes) -> Device:
    dev = await tx.get_device(device_id)
    if dev is None:
        raise OperatorError(f"no device {device_id.hex()}")
    return dev


async def all_devices(tx: Transaction, po_id: int | None = None,
                      state: DeviceState | None = None) -> list[Device]:
    out: list[Device] = []
    after: bytes | None = None
    while True:
        page = await tx.list_devices(po_id=po_id, state=state, after=after, limit=PAGE)
        out += page
        if len(page) < PAGE:
            return out
        after = page[-1].device_id


def _ts(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def product_dict(p: Product, devices: int | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {"po_name": p.name, "po_id": p.po_id, "quantity": p.quantity, "frozen": p.frozen,
                         "revoked": p.revoked, "allow_list": p.restricted, "created": _ts(p.created_at)}
    if devices is not None:
        d["devices"] = devices
    return d


def _fw(v: int | None) -> str | None:
    return None if v is None else f"{v >> 16}.{(v >> 8) & 0xFF}.{v & 0xFF}"


async def device_dict(tx: Transaction, dev: Device) -> dict[str, Any]:
    creds = await tx.get_credentials(dev.device_id)
    ci = dev.last_checkin
    return {
        "device_id": dev.device_id.hex(),
        "po_id": dev.po_id,
        "state": dev.state.value,
        "ak_version": dev.ak_version,
        "ak_pending_version": dev.ak_pending_version or None,
        "pending_action": dev.pending_action.name.lower(),
        "provisioned": _ts(dev.provisioned_at),
        "cloud": None if creds.current is None else {
            "version": creds.current.version, "platform": creds.current.credential.platform,
            "client_id": creds.current.credential.client_id},
        "cloud_pending": None if creds.pending is None else {
            "version": creds.pending.version, "platform": creds.pending.credential.platform},
        "last_checkin": None if ci is None else {
            "at": _ts(ci.at), "ak_version": ci.ak_version, "cloud_version": ci.cloud_version,
            "firmware": _fw(ci.fw_version), "app_hash": ci.app_hash.hex(), "last_error": ci.last_error},
    }


# --------------------------------------------------------------------------------------- products


async def create_product(store: Store, name: str, quantity: int, allow_list: list[bytes] | None = None,
                         po_id: int | None = None) -> ProductFile:
    if quantity < 1:
        raise OperatorError("--quantity must be at least 1")
    pk = os.urandom(32)

    async def work(tx: Transaction) -> ProductFile:
        if await tx.get_product_by_name(name) is not None:
            raise OperatorError(f"a product order named {name!r} exists already")
        number = po_id
        if number is None:
            number = 1 + max((p.po_id for p in await tx.list_products()), default=0)
        elif await tx.get_product(number) is not None:
            raise OperatorError(f"PO number {number} is taken")
        try:
            product = Product(po_id=number, name=name, quantity=quantity, pk=pk)
        except ValueError as exc:
            raise OperatorError(str(exc)) from None
        await tx.add_product(product, allow_list)
        await tx.audit(AuditEvent.OPERATOR, po_id=number,
                       detail=f"PO {name} created, quantity {quantity}"
                       + (f", allow-list of {len(allow_list)}" if allow_list is not None else ""))
        return ProductFile(po_name=name, po_id=number, pk=pk, quantity=quantity)

    try:
        return await store.run(work)
    except ConflictError:
        raise OperatorError(f"a product order named {name!r} or with that number exists already") from None


async def set_frozen(store: Store, ref: str, frozen: bool) -> Product:
    async def work(tx: Transaction) -> Product:
        p = await find_product(tx, ref)
        p = await tx.set_product_flags(p.po_id, frozen=frozen)
        await tx.audit(AuditEvent.OPERATOR, po_id=p.po_id,
                       detail=f"PO {p.name} {'frozen' if frozen else 'unfrozen'}")
        return p

    return await store.run(work)


async def revoke_product(store: Store, ref: str) -> tuple[Product, int]:
    """The PO's PK is refused from now on and every device of it is revoked."""
    async def work(tx: Transaction) -> tuple[Product, int]:
        p = await find_product(tx, ref)
        p = await tx.set_product_flags(p.po_id, frozen=True, revoked=True)
        n = 0
        for dev in await all_devices(tx, po_id=p.po_id):
            if dev.state is not DeviceState.REVOKED:
                await tx.update_device(replace(dev, state=DeviceState.REVOKED, pending_action=Action.NONE))
                await tx.audit(AuditEvent.REVOKED, device_id=dev.device_id, po_id=p.po_id,
                               detail=f"PO {p.name} revoked")
                n += 1
        await tx.audit(AuditEvent.REVOKED, po_id=p.po_id, detail=f"PO {p.name} revoked, {n} devices")
        return p, n

    return await store.run(work)


# --------------------------------------------------------------------------------------- devices


async def revoke_device(store: Store, device_id: bytes) -> Device:
    async def work(tx: Transaction) -> Device:
        dev = await get_device(tx, device_id)
        if dev.state is DeviceState.REVOKED:
            return dev
        dev = await tx.update_device(replace(dev, state=DeviceState.REVOKED, pending_action=Action.NONE))
        await tx.audit(AuditEvent.REVOKED, device_id=device_id, po_id=dev.po_id,
                       detail="device revoked by operator")
        return dev

    return await store.run(work)


async def reset_device(store: Store, device_id: bytes) -> Device:
    """Allow one more stage-2 provisioning of this ID (a re-flashed board): its AKs are dropped."""
    async def work(tx: Transaction) -> Device:
        dev = await get_device(tx, device_id)
        if dev.state is DeviceState.REVOKED:
            raise OperatorError(f"device {device_id.hex()} is revoked; a revoked ID is not reset")
        dev = await tx.update_device(replace(
            dev, state=DeviceState.PROVISIONING, ak=None, ak_version=0, ak_pending=None, ak_pending_version=0,
            ak_nonce_d=None, ak_nonce_a=None, provisioned_at=None, pending_action=Action.NONE))
        await tx.audit(AuditEvent.OPERATOR, device_id=device_id, po_id=dev.po_id,
                       detail="device reset: one more stage-2 provisioning allowed")
        return dev

    return await store.run(work)


# --------------------------------------------------------------------------------------- fleet


async def fleet_status(store: Store, po: str | None = None) -> dict[str, Any]:
    async def work(tx: Transaction) -> dict[str, Any]:
        po_id = (await find_product(tx, po)).po_id if po is not None else None
        devices = await all_devices(tx, po_id=po_id)
        states: Counter[str] = Counter()
        ak_versions: Counter[str] = Counter()
        clouds: Counter[str] = Counter()
        actions: Counter[str] = Counter()
        firmware: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        pending_ak = pending_cloud = never_checked_in = 0
        for dev in devices:
            states[dev.state.value] += 1
            ak_versions[str(dev.ak_version)] += 1
            if dev.pending_action is not Action.NONE:
                actions[dev.pending_action.name.lower()] += 1
            if dev.ak_pending is not None:
                pending_ak += 1
            creds = await tx.get_credentials(dev.device_id)
            clouds["none" if creds.current is None else
                   f"{creds.current.credential.platform} v{creds.current.version}"] += 1
            if creds.pending is not None:
                pending_cloud += 1
            ci = dev.last_checkin
            if ci is None:
                never_checked_in += 1
            else:
                firmware[_fw(ci.fw_version) or "?"] += 1
                if ci.last_error:
                    errors[str(ci.last_error)] += 1
        anomalies = await tx.list_anomalies(po_id=po_id, acknowledged=False)
        products = [product_dict(p, await tx.count_devices(p.po_id)) for p in await tx.list_products()
                    if po_id is None or p.po_id == po_id]
        return {
            "devices": len(devices),
            "states": dict(states),
            "ak_versions": dict(ak_versions),
            "cloud": dict(clouds),
            "pending_actions": dict(actions),
            "pending_ak": pending_ak,
            "pending_cloud": pending_cloud,
            "firmware": dict(firmware),
            "never_checked_in": never_checked_in,
            "last_errors": dict(errors),
            "open_anomalies": len(anomalies),
            "products": products,
        }

    return await store.run(work)


def parse_failures(text: str) -> tuple[float, bool]:
    """``5%`` → (0.05, True) a fraction; ``3`` → (3, False) a count."""
    t = text.strip()
    try:
        if t.endswith("%"):
            value = float(t[:-1]) / 100.0
            if not 0 <= value <= 1:
                raise ValueError
            return value, True
        n = int(t)
        if n < 0:
            raise ValueError
        return float(n), False
    except ValueError:
        raise OperatorError(f"--max-failures is a percentage like 5% or a count like 3, "
                            f"not {text!r}") from None


@dataclass
class _Baseline:
    ak_version: int
    cloud_version: int
    platform: str | None


@dataclass
class ReleaseSpec:
    kind: str                      # "ak" or "cloud"
    batch_size: int = 100
    max_failures: str = "5%"
    timeout: float = 600.0
    poll: float = 0.5
    target: str | None = None      # cloud platform (migration); None: keep each device's platform
    po: str | None = None


class Progress(Protocol):
    def __call__(self, done: int, total: int, text: str = "", final: bool = False) -> None: ...


async def gray_release(store: Store, spec: ReleaseSpec, progress: Progress | None = None) -> dict[str, Any]:
    """Mark the fleet batch by batch with the pending action, wait for each batch's devices to
    finish (or the timeout), check the batch's health, and go on or stop.

    A device *finishes* when the agent cleared its action: success if its AK version (``ak``) or
    its active cloud credential (``cloud``; on ``target`` for a migration) moved on, failure
    otherwise (it reported the new credential unusable, or was revoked). A device that has not
    finished by the timeout is a failure too (it stays marked and may still finish later).
    The release stops when the failures so far exceed ``max_failures`` or an anomaly was raised.
    """
    if spec.kind not in ("ak", "cloud"):
        raise OperatorError("--kind is ak or cloud")
    if spec.batch_size < 1:
        raise OperatorError("--batch-size must be at least 1")
    if spec.target is not None and spec.target not in ADAPTERS:
        raise OperatorError(f"unknown platform {spec.target!r}; known: {', '.join(ADAPTERS)}")
    limit, is_fraction = parse_failures(spec.max_failures)
    action = Action.ROTATE_AK if spec.kind == "ak" else Action.UPDATE_CLOUD
    started = time.monotonic()

    async def pick(tx: Transaction) -> tuple[list[bytes], int]:
        po_id = (await find_product(tx, spec.po)).po_id if spec.po is not None else None
        ids = []
        for dev in await all_devices(tx, po_id=po_id, state=DeviceState.ACTIVE):
            if spec.target is not None:
                current = (await tx.get_credentials(dev.device_id)).current
                if current is not None and current.credential.platform == spec.target:
                    continue  # already there
            ids.append(dev.device_id)
        anomalies = await tx.list_anomalies(acknowledged=False, limit=100000)
        return ids, max((a.id for a in anomalies), default=0)

    ids, anomaly_mark = await store.run(pick)
    total = len(ids)
    report: dict[str, Any] = {"kind": spec.kind, "target": spec.target, "devices": total,
                              "batch_size": spec.batch_size, "batches": [], "succeeded": 0, "failed": [],
                              "stopped": False, "reason": ""}
    done = 0
    for index, start in enumerate(range(0, total, spec.batch_size), 1):
        batch = ids[start:start + spec.batch_size]

        async def mark(tx: Transaction, batch: list[bytes] = batch) -> dict[bytes, _Baseline]:
            return await _mark(tx, batch, action, spec.target)

        baseline = await store.run(mark)
        t0 = time.monotonic()
        outcome = await _wait(store, baseline, spec, action, progress, done, total, index)
        done += len(batch)
        ok = [d for d, r in outcome.items() if r == "ok"]
        failed = {d: r for d, r in outcome.items() if r != "ok"}
        report["succeeded"] += len(ok)
        report["failed"] += [{"device_id": d.hex(), "reason": r} for d, r in failed.items()]
        report["batches"].append({"index": index, "devices": len(batch), "succeeded": len(ok),
                                  "failed": len(failed), "seconds": round(time.monotonic() - t0, 3)})
        if progress is not None:
            progress(done, total, f"batch {index}: {len(ok)} ok, {len(failed)} failed", final=True)
        n_failed = len(report["failed"])
        allowed = limit * done if is_fraction else limit
        new_anomalies = await store.run(
            lambda tx: tx.list_anomalies(acknowledged=False, limit=100000))
        fresh = [a for a in new_anomalies if a.id > anomaly_mark]
        if n_failed > allowed:
            report["stopped"] = True
            report["reason"] = (f"{n_failed} failures in {done} devices exceed "
                                f"--max-failures {spec.max_failures}")
        elif fresh:
            report["stopped"] = True
            report["reason"] = f"{len(fresh)} new anomalies ({', '.join(sorted({a.kind for a in fresh}))})"
        if report["stopped"]:
            break
    report["remaining"] = total - done
    report["seconds"] = round(time.monotonic() - started, 3)
    return report


async def _mark(tx: Transaction, batch: list[bytes], action: Action,
                target: str | None) -> dict[bytes, _Baseline]:
    baseline = {}
    for device_id in batch:
        dev = await get_device(tx, device_id)
        current = (await tx.get_credentials(device_id)).current
        baseline[device_id] = _Baseline(dev.ak_version, 0 if current is None else current.version,
                                        None if current is None else current.credential.platform)
        if target is not None:
            # The agent reads the newest of these when the device asks for credentials.
            await tx.audit(AuditEvent.OPERATOR, device_id=device_id, po_id=dev.po_id,
                           detail=f"{CLOUD_TARGET_PREFIX}{target}")
    await tx.set_pending_action(batch, action)
    await tx.audit(AuditEvent.OPERATOR, detail=f"gray release: {len(batch)} devices marked {action.name}")
    return baseline


async def _wait(store: Store, baseline: dict[bytes, _Baseline], spec: ReleaseSpec, action: Action,
                progress: Progress | None, done_before: int, total: int, index: int) -> dict[bytes, str]:
    deadline = time.monotonic() + spec.timeout
    outcome: dict[bytes, str] = {}
    while True:
        async def check(tx: Transaction) -> dict[bytes, str]:
            out = {}
            for device_id, base in baseline.items():
                if device_id in outcome:
                    continue
                dev = await tx.get_device(device_id)
                if dev is None or dev.state is DeviceState.REVOKED:
                    out[device_id] = "revoked"
                    continue
                if dev.pending_action is action:
                    continue
                if spec.kind == "ak":
                    out[device_id] = "ok" if dev.ak_version > base.ak_version else "not rotated"
                    continue
                current = (await tx.get_credentials(device_id)).current
                moved = current is not None and current.version > base.cloud_version
                on_target = spec.target is None or (current is not None
                                                    and current.credential.platform == spec.target)
                out[device_id] = "ok" if moved and on_target else "credential refused by the device or cloud"
            return out

        outcome.update(await store.run(check))
        if progress is not None:
            progress(done_before + len(outcome), total, f"batch {index}")
        if len(outcome) == len(baseline) or time.monotonic() >= deadline:
            break
        await asyncio.sleep(spec.poll)
    for device_id in baseline:
        outcome.setdefault(device_id, "timeout")
    return outcome


async def anomalies(store: Store, po: str | None, include_acknowledged: bool) -> list[dict[str, Any]]:
    async def work(tx: Transaction) -> list[dict[str, Any]]:
        po_id = (await find_product(tx, po)).po_id if po is not None else None
        rows = await tx.list_anomalies(po_id=po_id, acknowledged=None if include_acknowledged else False,
                                       limit=100000)
        return [{"id": a.id, "at": _ts(a.at), "kind": a.kind,
                 "device_id": a.device_id.hex() if a.device_id else None, "po_id": a.po_id,
                 "detail": a.detail, "acknowledged": a.acknowledged} for a in rows]

    return await store.run(work)


async def acknowledge(store: Store, ids: Iterable[int]) -> int:
    async def work(tx: Transaction) -> int:
        n = 0
        for i in ids:
            try:
                await tx.acknowledge_anomaly(i)
            except StorageError:
                raise OperatorError(f"no anomaly {i}") from None
            n += 1
        await tx.audit(AuditEvent.OPERATOR, detail=f"{n} anomalies acknowledged")
        return n

    return await store.run(work)
