"""Test-side helpers for driving the emulator's test programs."""

from __future__ import annotations

from pathlib import Path

import pytest

from emu_programs import build
from otakey.emu import RunResult, Stm32f429, StopReason


def program(tmp_path_factory: pytest.TempPathFactory, name: str) -> build.Program:
    """Build (once per session) the named program into the session's temporary directory."""
    return build.build(name, Path(tmp_path_factory.getbasetemp()) / "emu_programs")


class Monitor:
    """Talks to ``monitor.c`` over USART1: one command line in, its answer out."""

    def __init__(self, chip: Stm32f429) -> None:
        self.chip = chip
        self.uart = chip.uart(1)
        self.last: RunResult | None = None

    def boot(self) -> str:
        result = self.chip.run(max_instructions=1_000_000)
        assert result.reason is StopReason.IDLE, result
        return self.uart.read().decode()

    def send(self, line: str) -> RunResult:
        self.uart.write(line.encode() + b"\n")
        self.last = self.chip.run(max_instructions=50_000_000)
        return self.last

    def cmd(self, line: str) -> str:
        """Send a command that must complete; returns its answer without the trailing newline."""
        result = self.send(line)
        assert result.reason is StopReason.IDLE, f"{line!r}: {result}"
        return self.uart.read().decode().rstrip("\n")

    def value(self, line: str) -> int:
        """The hex number after the '=' of an answer such as '= 0000ABCD' or 'sr=00000080'."""
        return int(self.cmd(line).split("=")[1].strip(), 16)

    def read32(self, address: int) -> int:
        return self.value(f"r4 {address:08X}")

    def write(self, width: int, address: int, value: int) -> None:
        assert self.cmd(f"w{width} {address:08X} {value:X}") == "ok"


def monitor_chip(elf: Path, name: str = "dut", seed: int = 1, uid: bytes | None = None) -> Monitor:
    """A strict chip running the monitor, booted and waiting for its first command."""
    chip = Stm32f429(name, uid=uid, seed=seed, strict=True)
    chip.load_elf(elf)
    monitor = Monitor(chip)
    assert monitor.boot() == "boot\n"
    return monitor
