"""Base class of every memory-mapped model of the chip.

Lifecycle (called by :class:`otakey.emu.bus.Bus` and :class:`otakey.emu.chip.Stm32f429`):

1. ``__init__(bus, ...)`` once per chip. A peripheral keeps the bus to reach the shared services
   it may use (time, reports, reset requests, the RCC clock tree); it never sees the CPU engine.
2. ``reset(kind)`` at every power-on and system reset, before the first access.
3. ``read(offset, size)`` / ``write(offset, value, size)`` for each CPU or debugger access, with
   ``offset`` relative to ``base``. ``read`` returns None and ``write`` returns False for an address
   the model does not cover; the bus then reports the access as unmodelled.

Required: :meth:`reset`, :meth:`read_register`, :meth:`write_register`.
Optional: :meth:`peek_register` (a read without side effects, used to merge byte and half-word
writes), ``write_one_to_clear`` (registers where such a merge must write 0), ``clock_gate`` (RCC
enable bit that must be set for the registers to respond) and ``idle_neutral`` (accesses that do
not count as activity for the idle detector, e.g. timers).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from otakey.emu.bus import Bus

_MASKS = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFF_FFFF}


class ResetKind(enum.Enum):
    POWER_ON = "power-on"  # supply applied: everything, incl. reset flags and debug state
    SYSTEM = "system"  # NRST pin or AIRCR.SYSRESETREQ: keeps RCC_CSR reset flags, DEMCR, SRAM


class Peripheral:
    """A register block at ``base`` spanning ``size`` bytes on the bus."""

    clock_gate: tuple[int, int] | None = None  # (RCC register offset, enable bit mask)
    idle_neutral = False
    write_one_to_clear: frozenset[int] = frozenset()  # offsets whose unwritten lanes must read as 0

    def __init__(self, bus: Bus, name: str, base: int, size: int = 0x400) -> None:
        self.bus = bus
        self.name = name
        self.base = base
        self.size = size

    def reset(self, kind: ResetKind) -> None:
        raise NotImplementedError

    def read_register(self, offset: int) -> int | None:
        """Read the 32-bit register at word-aligned ``offset``, with its side effects."""
        raise NotImplementedError

    def write_register(self, offset: int, value: int) -> bool:
        """Write the 32-bit register at word-aligned ``offset``; False if not modelled."""
        raise NotImplementedError

    def peek_register(self, offset: int) -> int | None:
        """The register's value without side effects (override when reads have effects)."""
        return self.read_register(offset)

    def read(self, offset: int, size: int) -> int | None:
        value = self.read_register(offset & ~3)
        if value is None:
            return None
        return (value >> ((offset & 3) * 8)) & _MASKS[size]

    def write(self, offset: int, value: int, size: int) -> bool:
        aligned = offset & ~3
        if size == 4 and aligned == offset:
            return self.write_register(aligned, value & 0xFFFF_FFFF)
        # A narrower store updates its lanes only; the other lanes keep the register's value
        # (or write 0, for write-1-to-clear flags, so that they stay as they are).
        current = 0 if aligned in self.write_one_to_clear else self.peek_register(aligned)
        if current is None:
            return False
        shift = (offset & 3) * 8
        mask = _MASKS[size] << shift
        return self.write_register(aligned, (current & ~mask) | ((value << shift) & mask))


class StorageRegisters(Peripheral):
    """Registers that only hold what is written (within a writable mask) and reset to fixed values.

    ``layout`` maps offset -> (reset value, writable mask). Used for blocks whose contents the
    model never acts on (GPIO, SYSCFG, NVIC, most of RCC) but which normal startup code touches.
    """

    def __init__(self, bus: Bus, name: str, base: int, layout: dict[int, tuple[int, int]],
                 size: int = 0x400) -> None:
        super().__init__(bus, name, base, size)
        self.layout = dict(layout)
        self.regs: dict[int, int] = {}

    def reset(self, kind: ResetKind) -> None:
        self.regs = {offset: reset for offset, (reset, _) in self.layout.items()}

    def read_register(self, offset: int) -> int | None:
        return self.regs.get(offset)

    def write_register(self, offset: int, value: int) -> bool:
        spec = self.layout.get(offset)
        if spec is None:
            return False
        _, writable = spec
        self.regs[offset] = (self.regs[offset] & ~writable) | (value & writable)
        return True
