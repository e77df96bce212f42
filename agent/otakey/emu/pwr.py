"""PWR: power controller (RM0090 §5, registers §5.4).

Modelled for the 180 MHz start-up sequence (RM0090 §5.1.4; ST HAL ``HAL_PWREx_EnableOverDrive``):
``VOS`` selects the regulator scale and ``CSR.VOSRDY`` reports it once the main PLL runs (the scale
only applies with the PLL on); ``ODRDY`` follows ``ODEN``; ``ODSWRDY`` follows ``ODSWEN`` once
over-drive is ready. The registers answer only while RCC ``APB1ENR.PWREN`` is set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from otakey.emu import rm0090 as rm
from otakey.emu.peripheral import Peripheral, ResetKind

if TYPE_CHECKING:
    from otakey.emu.bus import Bus

_CR_WRITABLE = 0x000F_EFFF & ~0x0000_000C  # CSBF/CWUF (bits 3:2) are write-only clear commands
_CSR_WRITABLE = 0x0000_0300  # BRE, EWUP


class Pwr(Peripheral):
    clock_gate = (rm.RCC_APB1ENR, rm.RCC_APB1ENR_PWREN)

    def __init__(self, bus: Bus, base: int = rm.PWR_BASE) -> None:
        super().__init__(bus, "PWR", base)
        self.cr = rm.PWR_CR_RESET
        self.csr = 0

    def reset(self, kind: ResetKind) -> None:
        self.cr = rm.PWR_CR_RESET
        self.csr = 0

    def read_register(self, offset: int) -> int | None:
        if offset == rm.PWR_CR:
            return self.cr
        if offset == rm.PWR_CSR:
            return self.csr | self._ready_bits()
        return None

    def write_register(self, offset: int, value: int) -> bool:
        if offset == rm.PWR_CR:
            self.cr = value & _CR_WRITABLE
            if not self.cr & rm.PWR_CR_ODEN:
                self.cr &= ~rm.PWR_CR_ODSWEN  # RM0090 §5.4.1: ODSWEN needs ODEN
            return True
        if offset == rm.PWR_CSR:
            self.csr = value & _CSR_WRITABLE
            return True
        return False

    def _ready_bits(self) -> int:
        bits = 0
        rcc = self.bus.rcc
        if rcc is not None and (rcc.read_register(rm.RCC_CR) or 0) & rm.RCC_CR_PLLRDY:
            bits |= rm.PWR_CSR_VOSRDY
        if self.cr & rm.PWR_CR_ODEN:
            bits |= rm.PWR_CSR_ODRDY
            if self.cr & rm.PWR_CR_ODSWEN:
                bits |= rm.PWR_CSR_ODSWRDY
        return bits
