"""``otakey emu run``: a fleet of emulated STM32F429 devices running the real firmware, end to end.

Without ``--agent``, everything is started here on 127.0.0.1 and stopped at the end (also on
Ctrl-C): a Mosquitto broker with dynamic security (unless ``--mosquitto`` names one), an agent
(``otakey agent serve``, SQLite in a temporary folder), a fresh product order for N devices and
its factory image (``otakey firmware build``, cached). Then N devices boot from that one image with
distinct UIDs; each provisions (stage 2), obtains cloud credentials, and proves them through its
gateway with its own test-before-confirm MQTT session (connect and publish). The devices are spread
over worker processes; a progress bar goes to stderr.

With ``--agent HOST:PORT`` the devices talk to that agent instead; ``--product FILE`` must then be
the product file of a PO that agent knows (nothing else is started).

Exit status: 0 when every device reached the goal, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from otakey.agent.cliutil import ProgressBar
from otakey.errors import Error

DEVICE_LIMIT = 10_000


class EmuRunError(Error):
    """``otakey emu run`` cannot start (bad arguments for the situation, a server that failed)."""


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, e.g. 127.0.0.1:7700, not {text!r}")
    return host.strip("[]"), int(port)


def _broker(text: str) -> tuple[str | None, str | None, str, int]:
    """``[USER:PASSWORD@]HOST:PORT`` -> (user, password, host, port)."""
    creds, sep, address = text.rpartition("@")
    host, port = _host_port(address)
    if not sep:
        return None, None, host, port
    user, colon, password = creds.partition(":")
    if not colon or not user:
        raise argparse.ArgumentTypeError("--mosquitto credentials are USER:PASSWORD@HOST:PORT")
    return user, password, host, port


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("emu", help="run the firmware on the built-in STM32F429 emulator",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    esub = p.add_subparsers(dest="emu_command", metavar="ACTION")
    esub.required = True
    r = esub.add_parser("run", help="boot N emulated devices and provision them end to end",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--devices", type=int, required=True, metavar="N", help="how many devices")
    r.add_argument("--json", action="store_true", help="print the results and summary as one JSON object")
    r.add_argument("--agent", type=_host_port, metavar="HOST:PORT",
                   help="use this running agent (needs --product) instead of starting one")
    r.add_argument("--product", metavar="FILE",
                   help="product file of the PO the devices belong to (default: a fresh PO)")
    r.add_argument("--mosquitto", type=_broker, metavar="[USER:PASSWORD@]HOST:PORT",
                   help="use this broker (USER:PASSWORD: its dynsec admin) for the agent started here")
    r.add_argument("--keep", action="store_true",
                   help="keep the work folder (agent database and log, product file) and print where")
    r.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), metavar="N",
                   help="worker processes (default: 2, or 1 on a single core)")
    r.add_argument("--concurrency", type=int, default=16, metavar="N",
                   help="devices in flight per worker (default 16)")
    r.add_argument("--goal", choices=("provisioned", "cloud"), default="cloud",
                   help="stop each device after stage 2, or after its first cloud session (default)")
    r.add_argument("--seed", type=int, default=None,
                   help="seed for UIDs and device randomness (default: random)")
    r.add_argument("--max-device-seconds", type=float, default=120.0, metavar="S",
                   help="device time each device may take, retries included (default 120)")
    r.set_defaults(func=run)


def _on_sigterm(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.devices <= DEVICE_LIMIT:
        raise ValueError(f"--devices is 1..{DEVICE_LIMIT}")
    if args.workers < 1 or args.concurrency < 1:
        raise ValueError("--workers and --concurrency are at least 1")
    if args.agent is not None and args.product is None:
        raise ValueError("with --agent, give --product FILE: the product file of a PO that agent knows")
    if args.product is not None and args.agent is None:
        raise ValueError("--product goes with --agent: the agent started here makes a fresh PO itself")
    if args.mosquitto is not None and args.agent is None and args.mosquitto[0] is None:
        raise ValueError("the agent started here needs the broker's dynsec admin: "
                         "--mosquitto USER:PASSWORD@HOST:PORT")
    # Ctrl-C and SIGTERM both end in the same ordered cleanup. SIGINT gets Python's default handler
    # back even where the shell started us with it ignored (a background job).
    previous = (signal.signal(signal.SIGTERM, _on_sigterm),
                signal.signal(signal.SIGINT, signal.default_int_handler))
    try:
        return _run(args)
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])


def _say(args: argparse.Namespace, text: str) -> None:
    print(f"otakey emu run: {text}", file=sys.stderr, flush=True)


def _run(args: argparse.Namespace) -> int:
    from otakey.firmware.build import build_firmware, load_product
    from otakey.harness.fleet import FleetSpec, run_fleet, summarize

    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="otakey-emu-run-"))
    summary: dict[str, Any] = {}
    with ExitStack() as stack:
        if not args.keep:
            stack.callback(shutil.rmtree, work, True)
        if args.agent is not None:
            agent_host, agent_port = args.agent
            product_path = Path(args.product)
            load_product(product_path)  # a clear error before anything runs
        else:
            agent_host, agent_port, product_path = _start_stack(args, work, stack)
        _say(args, f"building the factory image for {product_path.name}")
        build = build_firmware(product_path)
        how = "cached" if build.cached else f"built in {build.seconds:.1f} s"
        _say(args, f"firmware {build.elf} ({how})")
        seed = args.seed if args.seed is not None else secrets.randbelow(1 << 31)
        spec = FleetSpec(elf=str(build.elf), agent_host=agent_host, agent_port=agent_port,
                         devices=args.devices, workers=args.workers, concurrency=args.concurrency,
                         goal=args.goal, seed=seed, max_device_ms=args.max_device_seconds * 1000.0,
                         uid_salt=secrets.token_hex(8) if args.seed is None else "")
        bar = ProgressBar()
        t0 = time.monotonic()
        results = run_fleet(spec, bar)
        bar.finish()
        fleet_seconds = time.monotonic() - t0
        summary = summarize(spec, results, fleet_seconds)
        summary.update({"total_seconds": round(time.monotonic() - started, 3), "seed": seed,
                        "po_name": build.po_name, "po_id": build.po_id, "elf": str(build.elf),
                        "agent": f"{agent_host}:{agent_port}", "work_dir": str(work) if args.keep else None})
        if args.json:
            json.dump({**summary, "results": [r.to_dict() for r in results]}, sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            for r in results:
                state = "ok" if r.ok else "FAILED"
                line = (f"dev{r.index:<4} uid={r.uid} {state:6} keys={r.keys:11} ak=v{r.ak_version or '-'} "
                        f"cloud=v{r.cloud_version or '-'} sessions={r.sessions_ok} "
                        f"instr={r.instructions} device_ms={r.device_ms:.0f} wall={r.wall_s:.2f}s")
                print(line + (f"  {r.error}" if r.error else ""))
            print(json.dumps(summary))
        sys.stdout.flush()
    if args.keep:
        _say(args, f"work folder kept: {work}")
    return 0 if summary and summary["failed"] == 0 else 1


def _start_stack(args: argparse.Namespace, work: Path, stack: ExitStack) -> tuple[str, int, Path]:
    """Broker (unless given), product order, agent; each stopped by ``stack`` in reverse order."""
    from otakey.agent.operator import create_product, with_store
    from otakey.harness import servers
    from otakey.store import Kek

    if args.mosquitto is None:
        _say(args, "starting Mosquitto with dynamic security")
        try:
            broker = servers.start_mosquitto()
        except servers.ServerError as exc:
            raise EmuRunError(str(exc)) from None
        stack.callback(broker.stop)
        admin, password, host, port = broker.admin_username, broker.admin_password, broker.host, broker.port
    else:
        admin, password, host, port = args.mosquitto
    kek = secrets.token_bytes(32)
    db = f"sqlite://{work / 'agent.db'}"
    name = f"EMU-{secrets.token_hex(4).upper()}"
    pf = asyncio.run(with_store(db, Kek(kek), lambda store: create_product(store, name, args.devices)))
    product_path = work / f"{name}.product.json"
    pf.write(product_path)
    _say(args, f"created PO {name} (quantity {args.devices}); starting the agent")
    cloud = f"mosquitto://{admin}:{password}@{host}:{port}"
    try:
        agent = servers.start_agent(db, kek.hex(), [cloud], work / "agent.log")
    except servers.ServerError as exc:
        raise EmuRunError(str(exc)) from None
    stack.callback(agent.stop)
    return agent.host, agent.port, product_path
