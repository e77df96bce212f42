#!/usr/bin/env python3
"""The real firmware on the built-in emulator, one device at a time (not a test).

Prints:

1. emulated instructions/s on pure compute (the emulator's compute test program), and on the
   firmware's own stage 2 against the in-process Python reference agent (X25519, SHA-256, HMAC,
   flash programming; no network);
2. boot-to-banner: instructions and wall time from power-on to the banner on the console channel
   (and the cost of creating a device: chip model + flashing the ELF);
3. one device's full provisioning through its gateway against a real agent and Mosquitto: stage 2,
   cloud credentials, the test-before-confirm MQTT session — wall time, emulated instructions,
   device time;
The fleet (N devices provisioned, connected and rotated over both cores) is ``otakey bench emu
--devices N`` (agent/otakey/bench/emu.py); bench/README.md has both.

Usage: python3 bench/emu_fleet.py
Needs the cross toolchain and mosquitto with the dynsec plugin (scripts/setup.sh).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "agent"), str(ROOT / "tests" / "python")]

from emu_programs import build as programs  # noqa: E402
from otakey.agent.operator import create_product, with_store  # noqa: E402
from otakey.agent.product_file import ProductFile  # noqa: E402
from otakey.emu import Stm32f429, StopReason  # noqa: E402
from otakey.firmware import FirmwareElf, build_firmware  # noqa: E402
from otakey.harness import servers  # noqa: E402
from otakey.harness.emu_backend import EmuBackend  # noqa: E402
from otakey.harness.linked import LinkedDevice  # noqa: E402
from otakey.protocol.cloudsession import SessionStatus  # noqa: E402
from otakey.protocol.framing import Channel, FrameDecoder, encode_frame  # noqa: E402
from otakey.protocol.handshake import ReferenceAgent  # noqa: E402
from otakey.store import Kek  # noqa: E402


def line(label: str, text: str) -> None:
    print(f"{label:<34} {text}", flush=True)


def compute_speed(work: Path) -> None:
    elf = programs.build("compute", work / "programs").elf
    chip = Stm32f429("bench", seed=1, strict=True)
    chip.load_elf(elf)
    t = time.perf_counter()
    result = chip.run()
    seconds = time.perf_counter() - t
    assert result.reason is StopReason.WFI, result
    line("compute loop", f"{result.executed / seconds / 1e6:8.1f} M instructions/s "
                         f"({result.executed} in {seconds:.3f} s)")


def firmware_stage2_speed(elf: FirmwareElf, product: ProductFile) -> None:
    """Stage 2 + first cloud credential against the in-process reference agent (no network); the
    cloud session is answered "connected" at once."""
    agent = ReferenceAgent()
    agent.add_order(product.po_id, product.po_name, product.pk)
    dev = EmuBackend.create(elf, uid=os.urandom(12), seed=7)
    dev.power_on()
    decoder = FrameDecoder()
    t = time.perf_counter()
    for _ in range(100):
        dev.run_until_idle(200_000_000)
        answered = False
        for frame in decoder.feed(dev.read()):
            channel = getattr(frame, "channel", None)
            if channel == Channel.AGENT:
                dev.write(encode_frame(Channel.AGENT, agent.handle(frame.payload)))
                answered = True
            elif channel == Channel.CLOUD:
                # SESSION_RESULT(request_id, CONNECTED, no detail)
                dev.write(encode_frame(Channel.CLOUD, bytes([0x02, frame.payload[1], 0, 0, 0])))
                answered = True
        if not answered:
            break
    seconds = time.perf_counter() - t
    ks = dev.key_state()
    assert ks.keys == "cloud" and not ks.pk_in_flash, ks
    line("firmware stage 2 + cloud (no I/O)", f"{dev.instructions / seconds / 1e6:8.1f} M instructions/s "
                                              f"({dev.instructions} in {seconds * 1e3:.0f} ms, "
                                              f"{len(dev.flash_ops)} flash operations)")
    dev.close()


def boot_to_banner(elf: FirmwareElf) -> None:
    t = time.perf_counter()
    n = 20
    for i in range(n):
        EmuBackend.create(elf, uid=os.urandom(12), seed=i).close()
    create_ms = (time.perf_counter() - t) / n * 1e3
    dev = EmuBackend.create(elf, uid=os.urandom(12), seed=1)
    decoder = FrameDecoder()
    t = time.perf_counter()
    dev.power_on()
    banner = None
    while banner is None:
        out = dev.run_until_idle(5_000)  # fine steps: the banner comes within a few of them
        for frame in decoder.feed(dev.read()):
            if getattr(frame, "channel", None) == Channel.CONSOLE:
                banner = frame.payload.decode().strip()
        assert banner is not None or out.reason.value == "budget", out
    seconds = time.perf_counter() - t
    line("device create (model + flash ELF)", f"{create_ms:8.2f} ms")
    line("boot to banner", f"{seconds * 1e3:8.2f} ms, {dev.instructions} instructions "
                           f"(~{dev.device_ms:.2f} ms device time): {banner}")
    dev.close()


async def one_device(elf: FirmwareElf, agent_port: int) -> tuple[float, int, float]:
    dev = EmuBackend.create(elf, uid=os.urandom(12), seed=3)
    async with LinkedDevice(dev, "127.0.0.1", agent_port) as ld:
        t = time.perf_counter()
        dev.power_on()

        def ready() -> bool:
            return dev.key_state().cloud_version is not None and ld.sessions_with(SessionStatus.CONNECTED) > 0

        assert await ld.run_until(ready, 60_000), ld.console
        return time.perf_counter() - t, dev.instructions, dev.device_ms


def full_provisioning(elf_for: dict[str, FirmwareElf], work: Path) -> None:
    broker = servers.start_mosquitto()
    agent = None
    try:
        kek = os.urandom(32)
        db = f"sqlite://{work / 'agent.db'}"
        pf = asyncio.run(with_store(db, Kek(kek), lambda s: create_product(s, "BENCH-1", 10)))
        pf.write(work / "bench.product.json")
        elf = FirmwareElf(build_firmware(work / "bench.product.json").elf)
        elf_for["bench"] = elf
        agent = servers.start_agent(db, kek.hex(), [f"mosquitto://admin:{broker.admin_password}@127.0.0.1:"
                                                    f"{broker.port}"], work / "agent.log")
        asyncio.run(one_device(elf, agent.port))  # warm-up: agent caches, broker connection
        wall, instructions, device_ms = asyncio.run(one_device(elf, agent.port))
        line("one device, full provisioning", f"{wall * 1e3:8.0f} ms wall, {instructions} instructions, "
                                              f"{device_ms:.0f} ms device time (real agent + Mosquitto)")
    finally:
        if agent is not None:
            agent.stop()
        broker.stop()


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    work = Path(tempfile.mkdtemp(prefix="emu-fleet-bench-"))
    compute_speed(work)
    elf_for: dict[str, FirmwareElf] = {}
    full_provisioning(elf_for, work)
    elf = elf_for["bench"]
    firmware_stage2_speed(elf, ProductFile.read(work / "bench.product.json"))
    boot_to_banner(elf)


if __name__ == "__main__":
    main()
