"""Speed of power-cut campaigns and of a fleet's key lifecycle (not a test): prints cuts/s per flow
and the wall time of provisioning N devices and then updating every one's cloud credential.

    python3 bench/campaign_speed.py                       # every flow's full sweep (migrate: long)
    python3 bench/campaign_speed.py --flows ak-rotate --devices 0
    python3 bench/campaign_speed.py --quick --devices 100

The campaigns are ``otakey campaign power-cut --torn`` (before, torn in and after every flash
operation) on ``--jobs`` processes. The fleet: an agent (in this process), Mosquitto, and N emulated
devices from one factory image spread over ``--jobs`` worker processes; phase 1 provisions every
device (stage 2 + first cloud credential, tested through its gateway), phase 2 marks every device
for a cloud update, as ``otakey fleet rotate --kind cloud`` would, and lets each check in and update.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "agent"))

from otakey.harness.campaign import FLOWS, CampaignSpec, campaign_firmware, campaign_product, run_campaign  # noqa: E402
from otakey.harness.stack import Stack  # noqa: E402
from otakey.store import Action  # noqa: E402


def bench_campaigns(flows: list[str], quick: bool, jobs: int) -> None:
    for flow in flows:
        s = run_campaign(CampaignSpec(flow=flow, torn=True, quick=quick, jobs=jobs))
        d = s.to_dict()
        print(
            f"campaign {flow:13s} {d['cut_points']:5d} cuts over {d['flash_ops']:4d} flash ops "
            f"in {d['seconds']:7.1f} s = {d['cuts_per_second']:6.2f} cuts/s on {jobs} processes; "
            f"{d['bricked']} bricked, {d['inconsistent']} inconsistent",
            flush=True,
        )


# --------------------------------------------------------------------------------------------- fleet


def _uid(i: int) -> bytes:
    return hashlib.sha256(f"bench-fleet:{i}".encode()).digest()[:12]


def _worker(elf: str, port: int, indices: list[int], inbox: Any, outbox: Any) -> None:
    from otakey.gateway.mqtt_session import CloudSessions
    from otakey.harness.emu_backend import EmuBackend
    from otakey.harness.linked import LinkedDevice

    async def phase(links: list[Any], goal: Any) -> int:
        done = 0
        for ld in links:
            if await ld.run_until(lambda ld=ld: goal(ld.device.key_state()), 120_000):
                done += 1
        return done

    async def go() -> None:
        links = []
        for i in indices:
            dev = EmuBackend.create(elf, uid=_uid(i), seed=i, name=f"bench-{i}")
            ld = LinkedDevice(dev, "127.0.0.1", port, sessions=CloudSessions())
            await ld.start()
            dev.power_on()
            links.append(ld)
        outbox.put(("provisioned", await phase(links, lambda k: k.keys == "cloud" and k.cloud_version == 1)))
        inbox.get()  # the parent marked every device for a cloud update
        outbox.put(("updated", await phase(links, lambda k: (k.cloud_version or 0) >= 2)))
        for ld in links:
            await ld.close()

    asyncio.run(go())


async def bench_fleet(devices: int, jobs: int) -> None:
    elf = campaign_firmware()
    stack = Stack(campaign_product(), name="bench")
    await stack.start()
    ctx = multiprocessing.get_context("spawn")
    inbox, outbox = ctx.Queue(), ctx.Queue()
    shares = [list(range(w, devices, jobs)) for w in range(jobs)]
    procs = [
        ctx.Process(target=_worker, args=(str(elf), stack.agent_port, share, inbox, outbox), daemon=True)
        for share in shares
        if share
    ]
    try:
        started = time.monotonic()
        for p in procs:
            p.start()
        provisioned = 0
        for _ in procs:
            _, n = await asyncio.to_thread(outbox.get)
            provisioned += n
        t_prov = time.monotonic() - started
        for i in range(devices):
            await stack.request(_uid(i), Action.UPDATE_CLOUD)
        t1 = time.monotonic()
        for _ in procs:
            inbox.put("go")
        updated = 0
        for _ in procs:
            _, n = await asyncio.to_thread(outbox.get)
            updated += n
        t_update = time.monotonic() - t1
        agree = 0
        for i in range(devices):
            _row, creds = await stack.agent_view(_uid(i))
            if creds.current is not None and creds.current.version == 2 and creds.pending is None:
                agree += 1
        print(
            f"fleet of {devices}: provisioning {provisioned}/{devices} in {t_prov:.1f} s "
            f"(incl. worker start-up), cloud update {updated}/{devices} in {t_update:.1f} s, "
            f"total {t_prov + t_update:.1f} s; agent shows v2 active for {agree}",
            flush=True,
        )
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
        await stack.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flows", nargs="*", default=list(FLOWS), choices=FLOWS)
    ap.add_argument("--quick", action="store_true", help="the CI subset of cut points")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--devices", type=int, default=100, help="fleet size (0: no fleet run)")
    args = ap.parse_args()
    bench_campaigns(args.flows, args.quick, args.jobs)
    if args.devices:
        asyncio.run(bench_fleet(args.devices, args.jobs))


if __name__ == "__main__":
    main()
