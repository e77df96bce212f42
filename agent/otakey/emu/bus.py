"""The chip's memory map and the services peripherals share.

The bus sits between the CPU adapter (``cpu.py``, the only module that knows the CPU engine) and
the peripheral models: the adapter forwards every MMIO access, every store into flash and every
access to an unmapped address here; the bus dispatches by address, applies RCC clock gating,
reports what the model does not cover, runs the idle detector, and keeps the log of flash
operations used to cut power at an exact point.

Memory map (RM0090 §2.3): flash 2 MB at 0x0800_0000, aliased at 0 (BOOT0 = 0); SRAM 192 KB at
0x2000_0000; CCM data RAM 64 KB at 0x1000_0000 (data only, no instruction fetch); system memory with
the UID and flash-size register at 0x1FFF_0000; option bytes at 0x1FFF_C000 / 0x1FFE_C000; the
peripherals; the Cortex-M4 system control space at 0xE000_E000 and the DWT at 0xE000_1000.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from otakey.emu import rm0090 as rm
from otakey.errors import DeviceError

if TYPE_CHECKING:
    from otakey.emu.peripheral import Peripheral
    from otakey.emu.rcc import Rcc

log = logging.getLogger("otakey.emu")

PAGE = 0x400  # the CPU engine maps memory in 1 KB pages on ARM

# Idle detector: this many reads of an empty receive register, each within IDLE_POLL_GAP
# instructions of the previous one and with no other (non-timer) access in between, park the core.
IDLE_POLLS = 8
IDLE_POLL_GAP = 64


class StopKind(enum.Enum):
    """Why the CPU adapter ended a slice of execution."""

    COUNT = "count"  # the instruction budget of the slice ran out
    IDLE = "idle"  # parked: spinning on an empty receive register
    WFI = "wfi"  # wait-for-interrupt (there are no interrupts to wake it)
    FAULT = "fault"  # bus error, undefined instruction, FPU access with CPACR off, ...
    RESET = "reset"  # AIRCR.SYSRESETREQ
    POWER_CUT = "power-cut"  # a scheduled cut at a flash operation
    STRICT = "strict"  # strict mode: an access the model does not cover
    RESTART = "restart"  # internal: stop, flush translated code, go on


class CpuPort(Protocol):
    """What the bus needs from the CPU adapter."""

    running: bool  # inside a slice of execution (callbacks may stop it)

    def pc(self) -> int: ...

    def now(self) -> int: ...

    def stop(self, kind: StopKind, detail: str = "", partial: bool = True) -> None: ...

    def invalidate_code(self, address: int, size: int) -> None: ...

    def set_fpu_enabled(self, enabled: bool) -> None: ...


@dataclass(frozen=True)
class BusReport:
    """One access the model refused or does not cover."""

    kind: str  # "unmodelled", "clock-gated", "bus-error", "spec"
    device: str
    pc: int
    address: int
    size: int
    access: str  # "r", "w" or "x"
    value: int | None = None
    detail: str = ""

    def __str__(self) -> str:
        what = f"{self.access} {self.size}B @0x{self.address:08X}"
        if self.value is not None:
            what += f" = 0x{self.value:X}"
        text = f"{self.device}: {self.kind} access {what} at pc=0x{self.pc:08X}"
        return f"{text} ({self.detail})" if self.detail else text


@dataclass(frozen=True)
class FlashOp:
    """One program or erase operation of the flash, as counted for power cuts.

    ``index`` is 1-based over the chip's life. ``instruction`` is the ordinal of the instruction
    that performed it (so a cut at instruction ``instruction - 1`` lands just before it and a
    cut at ``instruction`` just after it). For an erase, ``address``/``size`` span what is erased.
    """

    index: int
    kind: str  # "program" or "erase"
    address: int
    size: int
    value: int | None
    sector: int | None
    instruction: int


@dataclass
class Tear:
    """Handed to the flash model when the scheduled power cut hits its operation."""

    mode: str | None  # None: cut before the operation takes effect
    rng: random.Random


TORN_MODES = (None, "done", "erase-partial", "program-partial", "partial")


class Bus:
    """Address dispatch plus the services listed in the module docstring."""

    def __init__(self, name: str, seed: int, strict: bool) -> None:
        self.name = name
        self.seed = seed
        self.strict = strict
        self.cpu: CpuPort | None = None
        self.instructions = 0  # retired instructions while no CPU slice is running
        self.peripherals: list[Peripheral] = []
        self.flash_controller: _FlashStoreSink | None = None
        self.rcc: Rcc | None = None
        self.reports: list[BusReport] = []
        self.violation: BusReport | None = None
        self.flash_ops: list[FlashOp] = []
        self.cut_at_flash_op: int | None = None
        self.cut_torn: str | None = None
        self.cut_happened: tuple[FlashOp, str | None] | None = None
        self.reset_requested: str | None = None  # a reset asked for outside a CPU slice
        # Set when power is cut mid-instruction: the engine may finish an IT block before it
        # stops, and nothing it does after the cut may reach flash or a peripheral.
        self.dead = False
        self.idle_detection = True
        self.parked = False
        self.access_serial = 0
        self._poll_serial = -1
        self._poll_at = 0
        self._polls = 0
        self._rx_sources: list[_RxSource] = []

    # --- wiring -------------------------------------------------------------------------------
    def attach(self, peripheral: Peripheral) -> None:
        if peripheral.base % PAGE or peripheral.size % PAGE:
            raise ValueError(f"{peripheral.name}: window must be {PAGE}-byte aligned")
        for other in self.peripherals:
            if peripheral.base < other.base + other.size and other.base < peripheral.base + peripheral.size:
                raise ValueError(f"{peripheral.name} overlaps {other.name}")
        self.peripherals.append(peripheral)

    def add_rx_source(self, source: _RxSource) -> None:
        self._rx_sources.append(source)

    def peripheral(self, name: str) -> Peripheral | None:
        for p in self.peripherals:
            if p.name == name:
                return p
        return None

    def find(self, address: int) -> Peripheral | None:
        for p in self.peripherals:
            if p.base <= address < p.base + p.size:
                return p
        return None

    # --- time and CPU services for peripherals -----------------------------------------------
    def now(self) -> int:
        """Ordinal of the instruction being executed (cycles, at one cycle per instruction)."""
        return self.cpu.now() if self.cpu is not None else self.instructions

    def pc(self) -> int:
        return self.cpu.pc() if self.cpu is not None else 0

    @property
    def running(self) -> bool:
        return self.cpu is not None and self.cpu.running

    def request_system_reset(self, detail: str) -> None:
        if self.cpu is not None and self.cpu.running:
            self.cpu.stop(StopKind.RESET, detail, partial=False)
        else:
            self.reset_requested = detail

    def bus_error(self, device: str, address: int, size: int, access: str, value: int | None,
                  detail: str) -> None:
        """A modelled bus error: the access faults (BusFault, then HardFault: no handlers here)."""
        report = BusReport("bus-error", device, self.pc(), address, size, access, value, detail)
        self.reports.append(report)
        log.info("%s: %s", self.name, report)
        if self.cpu is not None and self.cpu.running:
            self.cpu.stop(StopKind.FAULT, str(report))
        else:
            raise DeviceError(f"{self.name}: {report}")

    def report(self, kind: str, device: str, address: int, size: int, access: str,
               value: int | None = None, detail: str = "") -> None:
        """Record an access the model does not cover; in strict mode it ends the run as an error."""
        report = BusReport(kind, device, self.pc(), address, size, access, value, detail)
        self.reports.append(report)
        log.warning("%s: %s", self.name, report)
        if self.strict and self.violation is None:
            self.violation = report
            if self.cpu is not None and self.cpu.running:
                self.cpu.stop(StopKind.STRICT, str(report))

    def set_fpu_enabled(self, enabled: bool) -> None:
        if self.cpu is not None:
            self.cpu.set_fpu_enabled(enabled)

    def flash_changed(self, address: int, size: int) -> None:
        """Flash contents under [address, address+size) changed: drop stale translated code."""
        if self.cpu is not None:
            self.cpu.invalidate_code(address, size)

    # --- accesses forwarded by the CPU adapter (and by debugger peek/poke) -------------------
    def mmio_read(self, peripheral: Peripheral, offset: int, size: int) -> int:
        # Hot path (every status poll goes through here): keep it flat.
        if self.dead:
            return 0
        if not peripheral.idle_neutral:
            self.access_serial += 1
        gate = peripheral.clock_gate
        if gate is not None and self.rcc is not None and not self.rcc.regs[gate[0]] & gate[1]:
            self.report("clock-gated", peripheral.name, peripheral.base + offset, size, "r")
            return 0
        if size == 4 and not offset & 3:
            value = peripheral.read_register(offset)
        else:
            value = peripheral.read(offset, size)
        if value is None:
            self.report("unmodelled", peripheral.name, peripheral.base + offset, size, "r")
            return 0
        return value

    def mmio_write(self, peripheral: Peripheral, offset: int, value: int, size: int) -> None:
        if self.dead:
            return
        if not peripheral.idle_neutral:
            self.access_serial += 1
        gate = peripheral.clock_gate
        if gate is not None and self.rcc is not None and not self.rcc.regs[gate[0]] & gate[1]:
            self.report("clock-gated", peripheral.name, peripheral.base + offset, size, "w", value)
            return
        if not peripheral.write(offset, value, size):
            self.report("unmodelled", peripheral.name, peripheral.base + offset, size, "w", value)

    def flash_store(self, address: int, size: int, value: int) -> None:
        """A CPU store into flash (or its boot alias): programming, or an error."""
        if self.dead:
            return
        self.access_serial += 1
        if address < rm.FLASH_BASE:
            address += rm.FLASH_BASE
        assert self.flash_controller is not None
        self.flash_controller.cpu_store(address, size, value)

    def unmapped(self, address: int, size: int, access: str, value: int | None) -> None:
        self.access_serial += 1
        self.report("unmodelled", "bus", address, size, access, value, "no memory or peripheral here")

    # --- idle detection -----------------------------------------------------------------------
    def rx_poll_empty(self) -> None:
        """A USART status read found RXNE clear with nothing on its way in."""
        now = self.now()
        if self.access_serial == self._poll_serial + 1 and now - self._poll_at <= IDLE_POLL_GAP:
            self._polls += 1
        else:
            self._polls = 1
        self._poll_serial = self.access_serial
        self._poll_at = now
        if self._polls >= IDLE_POLLS and self.idle_detection and self.running:
            if any(source.rx_pending() for source in self._rx_sources):
                return
            self.parked = True
            # The status read is executed again on resume, and then sees the new byte.
            assert self.cpu is not None
            self.cpu.stop(StopKind.IDLE, "waiting for receive data")

    def wake(self) -> None:
        """Host-side input arrived: a parked core may run again."""
        self.parked = False
        self._polls = 0

    # --- flash operations and power cuts --------------------------------------------------------
    def flash_op(self, kind: str, address: int, size: int, value: int | None,
                 sector: int | None) -> Tear | None:
        """Log one flash operation; returns a Tear when the scheduled power cut hits it."""
        op = FlashOp(len(self.flash_ops) + 1, kind, address, size, value, sector, self.now())
        self.flash_ops.append(op)
        if self.cut_at_flash_op is None or op.index != self.cut_at_flash_op:
            return None
        mode = self.cut_torn
        if mode in ("erase-partial", "program-partial") and not mode.startswith(kind):
            mode = None  # asked to tear an operation of the other kind: cut cleanly before it
        elif mode == "partial":
            mode = f"{kind}-partial"
        self.cut_at_flash_op = None
        self.cut_happened = (op, mode)
        digest = hashlib.sha256(f"tear:{self.seed}:{op.index}".encode()).digest()
        return Tear(mode, random.Random(int.from_bytes(digest[:8], "little")))

    def power_cut(self, detail: str) -> None:
        self.dead = True
        if self.cpu is not None and self.cpu.running:
            self.cpu.stop(StopKind.POWER_CUT, detail)


class _FlashStoreSink(Protocol):
    def cpu_store(self, address: int, size: int, value: int) -> None: ...


class _RxSource(Protocol):
    def rx_pending(self) -> bool: ...
