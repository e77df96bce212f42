"""Speed of the built-in STM32F429 model (not a test): prints instructions/s and boot times.

    python3 bench/emu_speed.py

Builds the emulator's test programs (tests/python/emu_programs) into a temporary directory, then
measures: a pure compute loop, a status-polling loop (one MMIO access every 3 instructions), the
monitor answering commands, a power-on boot, and the boot of an ELF.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "agent"), str(ROOT / "tests" / "python")]

from emu_programs import build  # noqa: E402
from otakey.emu import Stm32f429, StopReason  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    out = Path(tempfile.mkdtemp(prefix="emu-speed-"))
    compute = build.build("compute", out).elf
    monitor = build.build("monitor", out).elf

    chip = Stm32f429("bench", seed=1, strict=True)
    chip.load_elf(compute)
    result, seconds = timed(chip.run)
    assert result.reason is StopReason.WFI
    print(f"compute loop      {result.executed / seconds / 1e6:8.1f} M instructions/s "
          f"({result.executed} instructions in {seconds:.3f} s)")

    chip = Stm32f429("bench", seed=1, strict=True)
    chip.load_elf(monitor)
    chip.run()
    chip.poke(0xE000_ED88, 0xF << 20)  # CPACR: FPU on, as real firmware does first (no FP scan)
    result, seconds = timed(lambda: chip.run(max_instructions=600_000, until_idle=False))
    print(f"status polling    {result.executed / seconds / 1e6:8.1f} M instructions/s "
          f"({result.executed // 3} USART_SR reads)")

    commands = 300
    def answer_commands() -> int:
        total = 0
        for _ in range(commands):
            chip.uart(1).write(b"X 20\n")
            total += chip.run().executed
            chip.uart(1).read()
        return total
    total, seconds = timed(answer_commands)
    print(f"monitor commands  {seconds / commands * 1e3:8.3f} ms per command "
          f"({total / seconds / 1e6:.1f} M instructions/s)")

    rounds = 50
    _, seconds = timed(lambda: [chip.power_on() for _ in range(rounds)])
    print(f"power-on boot     {seconds / rounds * 1e3:8.3f} ms")

    def boot_elf() -> None:
        fresh = Stm32f429("boot", seed=2, strict=True)
        fresh.load_elf(monitor)
        assert fresh.run().reason is StopReason.IDLE
    _, seconds = timed(lambda: [boot_elf() for _ in range(rounds)])
    print(f"new chip + ELF    {seconds / rounds * 1e3:8.3f} ms (construct, flash, boot to idle)")

    devices = [Stm32f429(f"dev{i}", seed=i, strict=True) for i in range(20)]
    for device in devices:
        device.load_elf(monitor)
    def round_robin() -> None:
        for _ in range(10):
            for device in devices:
                device.uart(1).write(b"X 20\n")
            for device in devices:
                assert device.run().reason is StopReason.IDLE
    _, seconds = timed(round_robin)
    print(f"20 devices        {seconds / 200 * 1e3:8.3f} ms per device command, time-sliced")


if __name__ == "__main__":
    main()
