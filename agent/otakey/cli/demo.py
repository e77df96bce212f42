"""``otakey demo``: the OTA-Key scheme end to end on emulated STM32F429 devices, narrated.

Everything runs on 127.0.0.1, is started here and is stopped at the end (also on Ctrl-C):

1. a fresh product order (PO) in a throwaway agent database (SQLite) and its factory image
   (``otakey firmware build``): one image, carrying the PO's product key (PK), for every device;
2. Mosquitto with dynamic security, a moto server (the AWS IoT stand-in) and the agent
   (``otakey agent serve``) serving both clouds;
3. N devices (default 8) on the chosen backend (``emu``: the built-in STM32F429 emulator) booted
   from that one image, each with its own UID and its own gateway;
4. stage-2 provisioning: each device gets its own agent key (AK); the PK is then gone from its
   flash (both keystore areas are searched for it);
5. cloud credentials: each device commits its own Mosquitto login and publishes with it through its
   gateway; a subscriber sees every device's message;
6. a gray release of a cloud-key rotation in two batches; one device of the second batch loses power
   while it programs a word of its new key record (torn), boots with its old key, and finishes the
   rotation after its next power-on; the old keys are refused by the broker afterwards;
7. a gray release of an AK rotation;
8. one device migrated to AWS IoT through the same atomic update;
9. two attacks: a recorded PROV_HELLO replayed to the agent (it only gets the stored OFFER back — no
   second AK), and a clone with an existing device's UID booted from the factory image (refused,
   ``duplicate_provisioning`` anomaly raised).

It ends with the fleet table and a summary (``--json``: the summary as one JSON object on stdout,
the narration on stderr). The fleet state and the timeline are saved to ``--out``/demo.json for
``otakey report``. Exit status: 0 when every step succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import secrets
import shutil
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from .demo_parts import DemoError, Narrator, Setup, Timeline
from .demo_story import Demo

DEFAULT_DEVICES = 8
MAX_DEVICES = 64  # every device runs in this one process; larger fleets: `otakey emu run`
DEFAULT_OUT = "otakey-out"
RESULT_FILE = "demo.json"
RESULT_FORMAT = "otakey-demo/1"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "demo",
        help="the scheme end to end on emulated devices, narrated",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--devices",
        type=int,
        default=DEFAULT_DEVICES,
        metavar="N",
        help=f"number of devices (default {DEFAULT_DEVICES}, at most {MAX_DEVICES})",
    )
    p.add_argument(
        "--backend",
        default="emu",
        choices=("emu", "renode"),
        help="device backend (default emu, the built-in emulator)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument(
        "--out",
        default=DEFAULT_OUT,
        metavar="DIR",
        help=f"folder for the run's fleet state and timeline (default ./{DEFAULT_OUT})",
    )
    p.add_argument(
        "--product",
        metavar="FILE",
        help="use this product file's PO (from `otakey product create`) instead of a fresh one",
    )
    p.add_argument(
        "--seed", type=int, default=None, help="seed for UIDs and device randomness (default random)"
    )
    p.set_defaults(func=run)


def _on_sigterm(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    if args.devices < 1:
        raise ValueError("--devices must be at least 1")
    if args.devices > MAX_DEVICES:
        raise ValueError(
            f"--devices is at most {MAX_DEVICES} here; for larger fleets use `otakey emu run --devices N`"
        )
    # Ctrl-C and SIGTERM end in the same ordered cleanup; SIGINT gets Python's default handler back
    # even where a shell started us with it ignored (a background job).
    previous = (
        signal.signal(signal.SIGTERM, _on_sigterm),
        signal.signal(signal.SIGINT, signal.default_int_handler),
    )
    try:
        return _run(args, Narrator(sys.stderr if args.json else sys.stdout))
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])


def _preflight() -> None:
    """What the demo needs, with the exact fix (the same checks as `otakey doctor`)."""
    from otakey.cli.doctor import check_cmake, check_mosquitto, check_moto, check_toolchain, first_missing

    missing = first_missing((check_toolchain, check_cmake, check_mosquitto, check_moto))
    if missing is not None:
        raise DemoError(
            f"{missing.name}: {missing.detail}; install it with `{missing.fix}` "
            "(or run scripts/setup.sh; `otakey doctor` checks everything)"
        )


def _device_class(kind: str) -> Any:
    from otakey.harness.backend import backend

    try:
        return backend(kind)
    except ValueError as exc:
        raise DemoError(f"the {kind} backend is not available: {exc}") from None


def _server_error(what: str, exc: Exception) -> DemoError:
    text = " ".join(str(exc).split())
    if "in use" in text.lower():
        return DemoError(
            f"{what} could not listen on 127.0.0.1 (a port is in use: {text}); run the demo "
            "again — it picks free ports — or stop what holds the port"
        )
    return DemoError(f"{what} could not start: {text[:300]}")


def _product(args: argparse.Namespace, db_url: str, kek: bytes, work: Path) -> tuple[Any, Path]:
    """The PO in the agent's fresh store, and its product file."""
    from otakey.agent.operator import OperatorError, create_product, with_store
    from otakey.firmware.build import load_product
    from otakey.store import Kek, Product

    if args.product is None:
        name = f"DEMO-{secrets.token_hex(3).upper()}"
        pf = asyncio.run(
            with_store(db_url, Kek(kek), lambda store: create_product(store, name, args.devices))
        )
        path = work / f"{name}.product.json"
        pf.write(path)
        return pf, path
    path = Path(args.product)
    pf = load_product(path)  # one clear sentence for a missing or malformed file
    if pf.quantity < args.devices:
        raise DemoError(
            f"the product file {path} is for {pf.quantity} devices, fewer than --devices "
            f"{args.devices}: pass --devices {pf.quantity} or a larger PO"
        )

    async def add(store: Any) -> None:
        async def work_tx(tx: Any) -> None:
            await tx.add_product(Product(po_id=pf.po_id, name=pf.po_name, quantity=pf.quantity, pk=pf.pk))

        await store.run(work_tx)

    try:
        asyncio.run(with_store(db_url, Kek(kek), add))
    except OperatorError as exc:
        raise DemoError(str(exc)) from None
    return pf, path


def _run(args: argparse.Namespace, narr: Narrator) -> int:
    from otakey.firmware.build import build_firmware
    from otakey.firmware.elf import FirmwareElf
    from otakey.harness import servers

    timeline = Timeline()
    out_dir = Path(args.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DemoError(
            f"cannot create the output folder {out_dir}: {exc.strerror}; pass --out DIR"
        ) from None
    _preflight()
    device_cls = _device_class(args.backend)
    seed = args.seed if args.seed is not None else secrets.randbelow(1 << 31)
    salt = "" if args.seed is not None else secrets.token_hex(8)
    work = Path(tempfile.mkdtemp(prefix="otakey-demo-"))
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, work, True)
        kek = secrets.token_bytes(32)
        db_url = f"sqlite://{work / 'agent.db'}"
        narr.step(f"Stage 1: one factory image for {args.devices} device{'' if args.devices == 1 else 's'}")
        pf, product_path = _product(args, db_url, kek, work)
        build = build_firmware(product_path)
        how = "reused from the cache" if build.cached else f"built in {build.seconds:.1f} s"
        narr.say(f"product order {pf.po_name} (number {pf.po_id}, quantity {pf.quantity}); firmware {how}")
        narr.say(f"{build.elf}")

        uids = [
            hashlib.sha256(f"otakey-demo:{salt}:{seed}:{i}".encode()).digest()[:12]
            for i in range(args.devices)
        ]
        devices: list[Any] = []
        # Devices first: a backend that cannot run (Renode missing) says so before any server starts.
        for i, uid in enumerate(uids):
            dev = device_cls.create(build.elf, uid=uid, seed=seed * 1_000_003 + i, name=f"dev{i + 1}")
            stack.callback(dev.close)
            devices.append(dev)
        narr.say(
            f"{args.devices} {args.backend} devices flashed with that image "
            f"(UIDs {uids[0].hex()} ... {uids[-1].hex()})"
        )

        narr.step("Servers on 127.0.0.1")
        try:
            broker = servers.start_mosquitto()
        except servers.ServerError as exc:
            raise _server_error("Mosquitto", exc) from None
        stack.callback(broker.stop)
        try:
            moto = servers.start_moto()
        except servers.ServerError as exc:
            raise _server_error("the moto server", exc) from None
        stack.callback(moto.stop)
        aws_url = moto.cloud_url()
        mosq_url = broker.cloud_url
        agent_log = work / "agent.log"
        try:
            agent = servers.start_agent(db_url, kek.hex(), [mosq_url, aws_url], agent_log)
        except servers.ServerError as exc:
            raise _server_error("the agent", exc) from None
        stack.callback(_keep_log, agent_log, out_dir / "agent.log")
        stack.callback(agent.stop)
        narr.say(
            f"Mosquitto (dynamic security) :{broker.port}, moto (AWS IoT) :{moto.port}, "
            f"agent (SQLite) :{agent.port}"
        )

        setup = Setup(
            product=pf,
            elf=build.elf,
            firmware=FirmwareElf(build.elf),
            device_cls=device_cls,
            devices=devices,
            uids=uids,
            seed=seed,
            db_url=db_url,
            kek=kek,
            agent_host=agent.host,
            agent_port=agent.port,
            broker=broker,
            aws_url=aws_url,
        )
        demo = Demo(setup, narr, timeline, args.backend)
        result = asyncio.run(demo.main())

    result["summary"]["seconds"] = timeline.now()
    _save(out_dir, result, timeline, narr)
    _finish(args, narr, result)
    return 0 if narr.ok else 1


def _keep_log(src: Path, dst: Path) -> None:
    with contextlib.suppress(OSError):
        shutil.copyfile(src, dst)


def _save(out_dir: Path, result: dict[str, Any], timeline: Timeline, narr: Narrator) -> None:
    data = {
        "format": RESULT_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **result,
        "checks": narr.checks,
        "phases": timeline.phases,
        "events": timeline.events,
    }
    path = out_dir / RESULT_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    result["summary"]["out"] = str(path)


def _finish(args: argparse.Namespace, narr: Narrator, result: dict[str, Any]) -> None:
    from otakey.agent.cliutil import table

    summary = result["summary"]
    if args.json:
        json.dump(summary, sys.stdout)
        sys.stdout.write("\n")
        sys.stdout.flush()
        return
    narr.step("Fleet")
    print(
        table(
            result["fleet"],
            ["device", "device_id", "ak_version", "cloud", "cloud_key_version", "state", "notes"],
        )
    )
    failed = [c for c in narr.checks if not c["ok"]]
    print()
    print(
        f"{summary['devices']} devices: {summary['provisioned']} provisioned (PK erased on "
        f"{summary['pk_erased']}), {summary['cloud_connected']} connected to the cloud, {summary['rotated']} "
        f"rotated (cloud key and AK), {summary['power_cuts_recovered']}/{summary['power_cuts']} power cut "
        f"recovered, {summary['migrated']} migrated to AWS IoT, {summary['refused_attacks']}/2 attacks "
        f"refused; {summary['seconds']:.1f} s"
    )
    print(
        f"fleet state and timeline: {summary['out']} (`otakey report --from {Path(summary['out']).parent}`)"
    )
    print(
        "RESULT: "
        + (
            "every step succeeded"
            if not failed
            else f"{len(failed)} step(s) failed: " + "; ".join(c["detail"] for c in failed)
        )
    )
    sys.stdout.flush()
