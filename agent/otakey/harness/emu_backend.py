"""The ``emu`` device backend: the firmware ELF on the built-in STM32F429 model (:mod:`otakey.emu`).

Device time is the chip's clock: instructions executed (one cycle each) plus SysTick periods
warped. Waiting is cheap: when the firmware parks on its empty UART and the caller wants time to
pass (:meth:`EmuBackend.run_for`), the remaining time is handed to SysTick as whole periods
(:meth:`otakey.emu.Stm32f429.warp`); the firmware, which counts milliseconds as COUNTFLAG wraps
(firmware_c/port/stm32f429/device_port.c), sees them go by at one poll each, so a 10 s check-in
interval costs some ten thousand loop iterations instead of 1.8 billion instructions.

Strict mode is on by default: any access to something the model does not cover ends the run with
a :class:`~otakey.errors.DeviceError`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from otakey.emu import PowerCut, Stm32f429, StopReason
from otakey.emu.bus import FlashOp
from otakey.errors import DeviceError
from otakey.firmware.elf import FirmwareElf

from .backend import DeviceBackend, RunOutcome, RunReason

_REASONS = {StopReason.IDLE: RunReason.IDLE, StopReason.BUDGET: RunReason.BUDGET,
            StopReason.FAULT: RunReason.FAULT, StopReason.RESET: RunReason.RESET}


class EmuBackend(DeviceBackend):
    kind = "emu"

    def __init__(self, chip: Stm32f429, firmware: FirmwareElf) -> None:
        self.chip = chip
        self.firmware = firmware
        self.name = chip.name
        self.uid = chip.uid
        self._uart = chip.uart(1)
        self._uart.on_transmit = self._on_transmit
        self._transmitted = 0
        self._stop_warp_on_output = False
        self._closed = False

    @classmethod
    def create(cls, elf: str | Path | FirmwareElf, uid: bytes, seed: int = 0, name: str | None = None,
               **options: Any) -> EmuBackend:
        """``options``: ``strict`` (default True), ``hse_hz``."""
        unknown = set(options) - {"strict", "hse_hz"}
        if unknown:
            raise ValueError(f"unknown emu backend options: {', '.join(sorted(unknown))}")
        firmware = elf if isinstance(elf, FirmwareElf) else FirmwareElf(elf)
        chip_options = {k: v for k, v in options.items() if k == "hse_hz"}
        chip = Stm32f429(name or f"emu-{bytes(uid).hex()}", uid=bytes(uid), seed=seed,
                         strict=options.get("strict", True), **chip_options)
        chip.load_elf(firmware.path)  # flashes the image (and powers on, as a programmer would) ...
        chip.cut_power()  # ... the lifecycle starts powered off
        return cls(chip, firmware)

    # --- life ------------------------------------------------------------------------------------
    def power_on(self) -> None:
        self._check_open()
        self.chip.power_on()

    @property
    def powered(self) -> bool:
        return self.chip.powered

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._uart.on_transmit = None
            if self.chip.powered:
                self.chip.cut_power()  # frees the CPU engine now, not at garbage collection

    def _check_open(self) -> None:
        if self._closed:
            raise DeviceError(f"{self.name}: closed")

    # --- time ------------------------------------------------------------------------------------
    def _cycles_per_ms(self) -> float:
        return self.chip.rcc.clocks().hclk / 1000.0

    @property
    def device_ms(self) -> float:
        return self.chip.device_cycles / self._cycles_per_ms()

    @property
    def instructions(self) -> int:
        return self.chip.instructions

    def _run(self, max_instructions: int | None) -> tuple[RunReason, str]:
        try:
            result = self.chip.run(max_instructions=max_instructions, until_idle=True)
        except PowerCut as exc:
            return RunReason.POWER_CUT, str(exc)
        return _REASONS[result.reason], result.detail

    def _outcome(self, reason: RunReason, start_instr: int, start_cycles: int,
                 detail: str = "") -> RunOutcome:
        return RunOutcome(reason, self.chip.instructions - start_instr,
                          (self.chip.device_cycles - start_cycles) / self._cycles_per_ms(), detail)

    def run_until_idle(self, max_instructions: int | None = None) -> RunOutcome:
        self._check_open()
        start_instr, start_cycles = self.chip.instructions, self.chip.device_cycles
        reason, detail = self._run(max_instructions)
        return self._outcome(reason, start_instr, start_cycles, detail)

    def run_for(self, ms: float, stop_on_output: bool = False) -> RunOutcome:
        if ms < 0:
            raise ValueError("ms must be >= 0")
        self._check_open()
        chip = self.chip
        start_instr, start_cycles = chip.instructions, chip.device_cycles
        target = start_cycles + math.ceil(ms * self._cycles_per_ms())
        sent_before = self._transmitted
        self._stop_warp_on_output = stop_on_output
        budget = 0  # instructions the current warp may take to be seen (its real-time length)
        try:
            while True:
                if not chip.warp_pending:
                    budget = target - chip.device_cycles
                    if budget <= 0:
                        return self._outcome(RunReason.BUDGET, start_instr, start_cycles)
                reason, detail = self._run(budget)
                if reason is RunReason.BUDGET and chip.warp_pending:
                    chip.cancel_warp()  # the firmware stopped polling SysTick: the rest never happened
                if reason is not RunReason.IDLE:
                    return self._outcome(reason, start_instr, start_cycles, detail)
                if stop_on_output and self._transmitted != sent_before:
                    return self._outcome(RunReason.OUTPUT, start_instr, start_cycles)
                left = target - chip.device_cycles
                period = chip.systick_period_cycles()
                if left > 0 and period == 0:
                    # No timer runs: nothing can happen by time alone until input arrives.
                    return self._outcome(RunReason.IDLE, start_instr, start_cycles, "SysTick stopped")
                if left <= 0:
                    return self._outcome(RunReason.BUDGET, start_instr, start_cycles)
                # The firmware waits: let the rest of the time pass as whole SysTick periods
                # (rounded up: a parked core can let time pass in no smaller unit). The next run
                # executes the polls that see them, in at most `left` instructions (never more
                # than real time would cost; at least enough for a few polls).
                periods = -(-left // period)
                chip.warp(periods)
                budget = max(left, 10_000)
        finally:
            self._stop_warp_on_output = False

    def _on_transmit(self, _byte: int) -> None:
        self._transmitted += 1
        if self._stop_warp_on_output and self.chip.warp_pending:
            # The device has something to say: time stops here so that the answer can reach it
            # before its own timeout.
            self.chip.cancel_warp()

    # --- link ------------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        self._check_open()
        self._uart.write(bytes(data))

    def read(self) -> bytes:
        return self._uart.read()

    def input_pending(self) -> bool:
        return self._uart.pending > 0

    # --- power cuts ------------------------------------------------------------------------------
    def cut_power(self) -> None:
        self.chip.cut_power()

    def cut_power_at_instruction(self, n: int) -> None:
        self.chip.cut_power_at_instruction(n)

    def cut_power_at_flash_op(self, k: int, torn: str | None = None) -> None:
        self.chip.cut_power_at_flash_op(k, torn)

    @property
    def flash_ops(self) -> list[FlashOp]:
        return self.chip.flash_ops

    # --- flash -----------------------------------------------------------------------------------
    def read_flash(self, area: str) -> bytes:
        a = self.firmware.area(area)
        return self.chip.read_flash(a.address, a.size)

    def write_flash(self, area: str, data: bytes, offset: int = 0) -> None:
        """Overwrite bytes of a keystore area from the host, as a programmer would (tests)."""
        a = self.firmware.area(area)
        if offset < 0 or offset + len(data) > a.size:
            raise ValueError(f"{len(data)} bytes at offset {offset} do not fit area {area}")
        self.chip.write_flash(a.address + offset, bytes(data))

    def peek_symbol(self, name: str, size: int = 4) -> int:
        """A word of RAM or flash at a symbol of the image, as a debugger reads it."""
        return self.chip.peek(self.firmware.symbol(name), size)

    def __repr__(self) -> str:
        return f"<EmuBackend {self.name} {'on' if self.powered else 'off'} ms={self.device_ms:.1f}>"
