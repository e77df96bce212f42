"""``Stm32f429``: the public face of the chip model.

A chip is a name, a 96-bit UID, a seed and a strictness flag, plus non-volatile flash. Firmware is
loaded from an ELF; :meth:`Stm32f429.run` executes it until something worth telling the caller
happens (idle, budget, wfi, fault, reset). Power can be cut at an exact instruction or at the k-th
flash operation, optionally leaving the interrupted operation torn; :meth:`power_on` then boots
again with the flash as it was left and everything else lost. The same ELF, seed and cut point
always give the same run, instruction for instruction.

Counting: ``instructions`` counts every instruction retired over the chip's life (across resets
and power cycles); ``cycles`` equals it (one cycle per instruction; the model has no pipeline).
Budgets and cuts at an instruction are exact, except that the core cannot stop inside an IT block:
a stop due there lands at the end of the block (at most 4 instructions later).
Flash operations are numbered from 1 over the chip's life too, in ``flash_ops``.

Time warp: :meth:`Stm32f429.warp` lets SysTick periods pass without executing them (see
:mod:`otakey.emu.core_periph`); ``warped_cycles`` counts them, and ``device_cycles`` is the device's
own clock: instructions plus warped cycles.
"""

from __future__ import annotations

import enum
import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elftools.elf.elffile import ELFFile

from otakey.emu import rm0090 as rm
from otakey.emu.bus import TORN_MODES, Bus, BusReport, FlashOp, StopKind
from otakey.emu.core_periph import Dwt, SystemControlSpace
from otakey.emu.cpu import Cpu
from otakey.emu.flash import FlashInterface, FlashMemory, OptionBytes
from otakey.emu.gpio import Gpio, Syscfg
from otakey.emu.peripheral import Peripheral, ResetKind
from otakey.emu.pwr import Pwr
from otakey.emu.rcc import Rcc
from otakey.emu.rng import Rng
from otakey.emu.sysmem import SystemMemory
from otakey.emu.usart import UartHost, Usart
from otakey.errors import DeviceError, PowerCut

_SLICE = 1 << 30  # instructions per engine call when nothing closer is due

class StopReason(enum.Enum):
    IDLE = "idle"  # spinning on an empty receive register with nothing queued
    BUDGET = "budget"  # max_instructions reached
    WFI = "wfi"  # executed wfi/wfe; the next run continues after it
    FAULT = "fault"  # the core faulted (no handlers are run); stays faulted until reset
    RESET = "reset"  # the firmware requested a system reset; the chip has reset and will boot


@dataclass(frozen=True)
class RunResult:
    reason: StopReason
    executed: int  # instructions retired by this call
    pc: int
    detail: str = ""


@dataclass(frozen=True)
class ElfImage:
    path: str
    entry: int
    vector_table: int
    initial_sp: int
    segments: tuple[tuple[int, int], ...]  # (load address, size) of every flashed segment


@dataclass(frozen=True)
class CutInfo:
    """Where the last power cut happened."""

    instruction: int  # instructions retired when the power went
    flash_op: FlashOp | None  # the interrupted flash operation, for a cut at a flash op
    torn: str | None  # how that operation was left


class Stm32f429:
    """One STM32F429ZI (2 MB flash) with its peripherals, on a unicorn Cortex-M4."""

    def __init__(self, name: str = "stm32f429", uid: bytes | None = None, seed: int = 0,
                 strict: bool = False, hse_hz: int = rm.HSE_HZ) -> None:
        if uid is None:
            uid = hashlib.sha256(f"uid:{name}:{seed}".encode()).digest()[:12]
        if len(uid) != 12:
            raise ValueError("uid must be 12 bytes (96 bits)")
        self.name = name
        self.uid = bytes(uid)
        self.seed = seed
        self.bus = Bus(name, seed, strict)
        self.flash_memory = FlashMemory()
        bus = self.bus
        self.rcc = Rcc(bus, hse_hz=hse_hz)
        self.pwr = Pwr(bus)
        self.flash = FlashInterface(bus, self.flash_memory)
        self.usart1 = Usart(bus, "USART1", rm.USART1_BASE, (rm.RCC_APB2ENR, rm.RCC_APB2ENR_USART1EN),
                            "pclk2")
        self.usart2 = Usart(bus, "USART2", rm.USART2_BASE, (rm.RCC_APB1ENR, rm.RCC_APB1ENR_USART2EN),
                            "pclk1")
        self.rng = Rng(bus, seed)
        self.scs = SystemControlSpace(bus)
        parts: list[Peripheral] = [
            self.rcc, self.pwr, self.flash, OptionBytes(bus, self.flash, 1), OptionBytes(bus, self.flash, 2),
            self.usart1, self.usart2, self.rng, Syscfg(bus), SystemMemory(bus, self.uid),
            self.scs, Dwt(bus, self.scs), *(Gpio(bus, port) for port in rm.GPIO_PORTS)]
        for part in parts:
            bus.attach(part)
        bus.rcc = self.rcc
        bus.flash_controller = self.flash
        self._cpu: Cpu | None = None
        self.powered = False
        self.fault: str | None = None
        self.last_cut: CutInfo | None = None
        self.elf: ElfImage | None = None
        self._power_cycles = 0
        self._cut_at_instruction: int | None = None
        self._warped_cycles = 0

    # --- facts ----------------------------------------------------------------------------------
    @property
    def strict(self) -> bool:
        return self.bus.strict

    @property
    def instructions(self) -> int:
        return self.bus.instructions

    @property
    def cycles(self) -> int:
        return self.bus.instructions

    @property
    def warped_cycles(self) -> int:
        """Cycles let pass by :meth:`warp` over the chip's life."""
        return self._warped_cycles

    @property
    def device_cycles(self) -> int:
        """The device's clock in core cycles: instructions executed plus cycles warped."""
        return self.bus.instructions + self._warped_cycles

    @property
    def flash_ops(self) -> list[FlashOp]:
        return list(self.bus.flash_ops)

    @property
    def reports(self) -> list[BusReport]:
        return list(self.bus.reports)

    @property
    def peripherals(self) -> dict[str, Peripheral]:
        return {p.name: p for p in self.bus.peripherals}

    def uart(self, n: int) -> UartHost:
        """Host side of USART1 (the DISC1's ST-LINK virtual COM port) or USART2."""
        if n == 1:
            return self.usart1.host
        if n == 2:
            return self.usart2.host
        raise ValueError("the model has USART1 and USART2")

    # --- firmware and flash ---------------------------------------------------------------------
    def load_elf(self, path: str | Path) -> ElfImage:
        """Flash every loadable segment of ``path`` (erasing the sectors it touches), then power on.

        The vector table and entry point come from the ELF; the core boots as the silicon does,
        from the vector table at the boot alias (address 0 = flash start, BOOT0 = 0).
        """
        with open(path, "rb") as f:
            elf = ELFFile(f)
            if elf["e_machine"] != "EM_ARM" or elf.elfclass != 32 or not elf.little_endian:
                raise ValueError(f"{path}: not a 32-bit little-endian ARM ELF")
            segments = [(seg["p_paddr"], seg.data()[:seg["p_filesz"]]) for seg in elf.iter_segments()
                        if seg["p_type"] == "PT_LOAD" and seg["p_filesz"] > 0]
            entry = elf["e_entry"]
            vectors = next((s["sh_addr"] for s in elf.iter_sections()
                            if s.name in (".isr_vector", ".vectors", ".vector_table")), None)
        if not segments:
            raise ValueError(f"{path}: no loadable segments")
        for address, data in segments:
            if not (rm.FLASH_BASE <= address and address + len(data) <= rm.FLASH_BASE + rm.FLASH_SIZE):
                raise ValueError(f"{path}: segment 0x{address:08X}+{len(data)} does not load into flash")
        if vectors is None:
            vectors = min(address for address, _ in segments)
        touched = {s for address, data in segments for s in rm.FLASH_SECTORS
                   if address < s.end and s.address < address + len(data)}
        for sector in touched:
            self.flash_memory.erase(sector.address, sector.size)
        for address, data in segments:
            self.flash_memory.write_raw(address, data)
        sp, reset = (int.from_bytes(self.flash_memory.read(vectors + i, 4), "little") for i in (0, 4))
        if vectors != rm.FLASH_BASE:
            raise ValueError(f"{path}: vector table at 0x{vectors:08X}; the core boots from the one "
                             f"at 0x{rm.FLASH_BASE:08X} (RM0090 §2.4, BOOT0 = 0)")
        if entry and (entry & ~1) != (reset & ~1):
            raise ValueError(f"{path}: ELF entry 0x{entry:08X} is not the reset vector 0x{reset:08X}")
        self.elf = ElfImage(str(path), entry, vectors, sp,
                            tuple((address, len(data)) for address, data in segments))
        self.power_on()
        return self.elf

    def read_flash(self, address: int, n: int) -> bytes:
        return self.flash_memory.read(self._flash_address(address), n)

    def write_flash(self, address: int, data: bytes) -> None:
        """Overwrite flash bytes from the host, as a programmer does after erasing."""
        address = self._flash_address(address)
        self.flash_memory.write_raw(address, data)
        if self._cpu is not None:
            self._cpu.invalidate_code(address, len(data))

    def erase_flash(self) -> None:
        self.flash_memory.erase(rm.FLASH_BASE, rm.FLASH_SIZE)
        if self._cpu is not None:
            self._cpu.invalidate_code(rm.FLASH_BASE, rm.FLASH_SIZE)

    def flash_image(self) -> bytes:
        return self.flash_memory.read(rm.FLASH_BASE, rm.FLASH_SIZE)

    @staticmethod
    def _flash_address(address: int) -> int:
        return address + rm.FLASH_BASE if address < rm.FLASH_SIZE else address

    # --- power and reset ------------------------------------------------------------------------
    def power_on(self) -> None:
        """Apply power: flash and option bytes as they are; RAM random; peripherals at reset."""
        self._power_cycles += 1
        stream = random.Random(int.from_bytes(
            hashlib.sha256(f"ram:{self.seed}:{self._power_cycles}".encode()).digest()[:8], "little"))
        sram = stream.randbytes(rm.SRAM_SIZE)
        ccm = stream.randbytes(rm.CCMDATARAM_SIZE)
        self.bus.reset_requested = None
        for part in self.bus.peripherals:
            part.reset(ResetKind.POWER_ON)
        self._start_core(sram, ccm)

    def reset(self) -> None:
        """System reset through NRST: RAM kept, peripherals and core reset."""
        self._system_reset(software=False)

    def cut_power(self) -> None:
        """Remove power now (between runs)."""
        self._power_off()

    def cut_power_at_instruction(self, n: int) -> None:
        """Cut power once ``instructions`` reaches ``n`` (immediately at the next run if it has)."""
        self._cut_at_instruction = n

    def cut_power_at_flash_op(self, k: int, torn: str | None = None) -> None:
        """Cut power at flash operation number ``k`` (1-based over the chip's life, as in
        ``flash_ops``). ``torn``: None cuts just before the operation takes effect; "done" just
        after it; "erase-partial" leaves part of an erase done (whole 128-bit rows, chosen from the
        seed and k); "program-partial" leaves only some of the bits cleared; "partial" tears
        whichever kind it is. A kind that does not match the operation cuts cleanly before it.
        """
        if torn not in TORN_MODES:
            raise ValueError(f"torn must be one of {TORN_MODES}")
        if k <= len(self.bus.flash_ops):
            raise ValueError(f"flash operation {k} has already happened")
        self.bus.cut_at_flash_op = k
        self.bus.cut_torn = torn

    def _start_core(self, sram: bytes, ccm: bytes) -> None:
        if self._cpu is not None:
            self._cpu.close()
        cpu = Cpu(self.bus, self.flash_memory, sram, ccm)
        cpu.base = self.bus.instructions
        self._cpu = cpu
        self.bus.cpu = cpu
        self.bus.parked = False
        self.bus.violation = None
        self.bus.dead = False
        self.powered = True
        self.fault = cpu.boot()

    def _system_reset(self, software: bool) -> None:
        if self._cpu is None:
            raise DeviceError(f"{self.name}: powered off")
        sram, ccm = self._cpu.ram_contents()
        self.bus.reset_requested = None
        for part in self.bus.peripherals:
            part.reset(ResetKind.SYSTEM)
        self.rcc.note_reset(software)
        self._start_core(sram, ccm)

    def _power_off(self) -> None:
        self.powered = False
        if self._cpu is not None:
            self._cpu.close()
        self._cpu = None
        self.bus.cpu = None
        self._cut_at_instruction = None
        self.bus.cut_at_flash_op = None

    def _raise_power_cut(self, detail: str) -> None:
        happened = self.bus.cut_happened
        self.bus.cut_happened = None
        op, torn = happened if happened is not None else (None, None)
        self.last_cut = CutInfo(self.instructions, op, torn)
        self._power_off()
        raise PowerCut(f"{self.name}: {detail} (after {self.instructions} instructions)")

    # --- running --------------------------------------------------------------------------------
    def run(self, max_instructions: int | None = None, until_idle: bool = True) -> RunResult:
        """Run until idle (if ``until_idle``), the budget, wfi, a fault or a reset request.

        Raises PowerCut when a scheduled cut happens, DeviceError in strict mode when the firmware
        touches something the model does not cover.
        """
        cpu = self._cpu
        if cpu is None:
            raise DeviceError(f"{self.name}: powered off")
        if max_instructions is not None and max_instructions < 0:
            raise ValueError("max_instructions must be >= 0")
        if self.fault is not None:
            return RunResult(StopReason.FAULT, 0, cpu.pc(), self.fault)
        bus = self.bus
        bus.idle_detection = until_idle
        if until_idle and bus.parked:
            return RunResult(StopReason.IDLE, 0, cpu.pc(), "waiting for receive data")
        bus.parked = False
        start = bus.instructions
        while True:
            limit = _SLICE
            if max_instructions is not None:
                limit = min(limit, max_instructions - (bus.instructions - start))
            if self._cut_at_instruction is not None:
                left = self._cut_at_instruction - bus.instructions
                if left <= 0:
                    self._raise_power_cut(f"power cut at instruction {self._cut_at_instruction}")
                limit = min(limit, left)
            if limit <= 0:
                return RunResult(StopReason.BUDGET, bus.instructions - start, cpu.pc())
            cpu.base = bus.instructions
            end = cpu.run(limit)
            bus.instructions += end.executed
            cpu.base = bus.instructions
            executed = bus.instructions - start
            if end.kind in (StopKind.COUNT, StopKind.RESTART):
                continue
            if end.kind is StopKind.IDLE:
                return RunResult(StopReason.IDLE, executed, cpu.pc(), end.detail)
            if end.kind is StopKind.WFI:
                return RunResult(StopReason.WFI, executed, cpu.pc(), end.detail)
            if end.kind is StopKind.RESET:
                self._system_reset(software=True)
                assert self._cpu is not None
                return RunResult(StopReason.RESET, executed, self._cpu.pc(), end.detail)
            if end.kind is StopKind.POWER_CUT:
                self._raise_power_cut(end.detail)
            self.fault = end.detail
            if end.kind is StopKind.STRICT:
                raise DeviceError(f"{self.name}: strict mode: {bus.violation or end.detail}")
            return RunResult(StopReason.FAULT, executed, cpu.pc(), end.detail)

    def warp(self, periods: int) -> int:
        """Let ``periods`` SysTick periods pass at once: each of the firmware's next reads of
        SYST_CSR sees one more COUNTFLAG, and the core is not idle until it has seen them all.
        Returns the cycles that represents (0 while SysTick is stopped: no period would end).
        A parked core wakes, so the next :meth:`run` executes the polls."""
        if self._cpu is None:
            raise DeviceError(f"{self.name}: powered off")
        cycles = self.scs.systick.warp(periods)
        if cycles:
            self._warped_cycles += cycles
            self.bus.wake()
        return cycles

    def cancel_warp(self) -> int:
        """Drop the warped periods the firmware has not seen yet (they never happened); returns how
        many. For a harness that stops a warp once the device has something to say."""
        tick = self.scs.systick
        dropped, tick.warp_pending = tick.warp_pending, 0
        self._warped_cycles -= dropped * tick.period_cycles
        return dropped

    def systick_period_cycles(self) -> int:
        """Core cycles of one SysTick period as the firmware set it up (0 while stopped)."""
        tick = self.scs.systick
        return tick.period_cycles if tick.csr & rm.SYST_CSR_ENABLE and tick.rvr else 0

    @property
    def warp_pending(self) -> int:
        """Warped SysTick periods the firmware has not seen yet."""
        return self.scs.systick.warp_pending

    # --- debugger view --------------------------------------------------------------------------
    def peek(self, address: int, size: int = 4) -> int:
        """Read memory or a register as a debugger would (register reads have their side effects)."""
        return self._debug_access(address, size, None)

    def poke(self, address: int, value: int, size: int = 4) -> None:
        """Write memory or a register as a debugger would (flash stores follow the FLASH rules)."""
        self._debug_access(address, size, value)

    def _debug_access(self, address: int, size: int, value: int | None) -> int:
        if size not in (1, 2, 4):
            raise ValueError("size must be 1, 2 or 4")
        cpu = self._cpu
        if cpu is None:
            raise DeviceError(f"{self.name}: powered off")
        bus = self.bus
        result = 0
        in_flash = (rm.FLASH_BASE <= address <= rm.FLASH_END) or address < rm.FLASH_SIZE
        in_ram = (rm.SRAM_BASE <= address < rm.SRAM_BASE + rm.SRAM_SIZE
                  or rm.CCMDATARAM_BASE <= address < rm.CCMDATARAM_BASE + rm.CCMDATARAM_SIZE)
        peripheral = bus.find(address)
        if in_flash and value is None:
            result = int.from_bytes(self.read_flash(address, size), "little")
        elif in_flash:
            bus.flash_store(address, size, value & ((1 << 8 * size) - 1))  # type: ignore[operator]
        elif in_ram and value is None:
            result = int.from_bytes(cpu.mem_read(address, size), "little")
        elif in_ram:
            cpu.mem_write(address, (value & ((1 << 8 * size) - 1)).to_bytes(size, "little"))  # type: ignore[operator]
        elif peripheral is not None and value is None:
            result = bus.mmio_read(peripheral, address - peripheral.base, size)
        elif peripheral is not None:
            bus.mmio_write(peripheral, address - peripheral.base, value, size)  # type: ignore[arg-type]
        else:
            bus.unmapped(address, size, "r" if value is None else "w", value)
        if bus.cut_happened is not None:
            self._raise_power_cut("power cut at a flash operation by the debugger")
        if bus.violation is not None:
            violation, bus.violation = bus.violation, None
            raise DeviceError(f"{self.name}: strict mode: {violation}")
        if bus.reset_requested is not None:
            self._system_reset(software=True)
        return result

    def __repr__(self) -> str:
        state = "on" if self.powered else "off"
        return f"<Stm32f429 {self.name} {state} instructions={self.instructions}>"

    def describe(self) -> dict[str, Any]:
        """A summary for logs and failure artifacts."""
        return {"name": self.name, "uid": self.uid.hex(), "seed": self.seed, "powered": self.powered,
                "instructions": self.instructions, "warped_cycles": self._warped_cycles,
                "flash_ops": len(self.bus.flash_ops),
                "fault": self.fault, "reports": [str(r) for r in self.bus.reports]}
