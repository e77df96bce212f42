"""RNG: true random number generator (RM0090 §24; registers §24.4).

``CR.RNGEN`` starts the generator; a value is ready (``SR.DRDY``) one status read after enabling or
after the previous ``DR`` read, so the usual busy-wait stays cheap. Reading ``DR`` without ``DRDY``
returns the previous value again, as the hardware leaves ``DR`` unchanged. Values come from a
deterministic stream per device seed and boot, so runs are reproducible but every boot differs.

Errors (RM0090 §24.3.2): a clock error (``CECS``/``CEIS``) is raised while PLL48CLK is below
HCLK/16 — including when the main PLL is off — or while injected by a test; no new value is made
while it lasts. A seed error (``SECS``/``SEIS``) is only injected (:meth:`Rng.inject_seed_error`); it
stops generation until the firmware clears ``SEIS`` (write 0) and restarts the RNG by clearing and
setting ``RNGEN``. ``CEIS``/``SEIS`` clear by writing 0. A PLL48CLK above 48 MHz is reported as a
"spec" report (the RNG is clocked out of its specification; silicon does not flag it).
"""

from __future__ import annotations

import hashlib
import random
from typing import TYPE_CHECKING

from otakey.emu import rm0090 as rm
from otakey.emu.peripheral import Peripheral, ResetKind

if TYPE_CHECKING:
    from otakey.emu.bus import Bus

_SR_RC_W0 = rm.RNG_SR_CEIS | rm.RNG_SR_SEIS


class Rng(Peripheral):
    clock_gate = (rm.RCC_AHB2ENR, rm.RCC_AHB2ENR_RNGEN)

    def __init__(self, bus: Bus, seed: int, base: int = rm.RNG_BASE) -> None:
        super().__init__(bus, "RNG", base)
        self.seed = seed
        self.boots = 0
        self.reset(ResetKind.POWER_ON)

    def reset(self, kind: ResetKind) -> None:
        self.cr = 0
        self.sr = 0
        self.dr = 0
        self._countdown = -1  # status reads until the next value; -1: none under way
        self._seed_error = False
        self._clock_error_injected = False
        self._spec_checked = False
        digest = hashlib.sha256(f"rng:{self.seed}:{self.boots}".encode()).digest()
        self._stream = random.Random(int.from_bytes(digest[:8], "little"))
        self.boots += 1

    # --- test hooks -----------------------------------------------------------------------------
    def inject_seed_error(self) -> None:
        """A faulty noise sequence: SECS and SEIS set, DRDY cleared, generation stopped."""
        self._seed_error = True
        self.sr = (self.sr | rm.RNG_SR_SECS | rm.RNG_SR_SEIS) & ~rm.RNG_SR_DRDY
        self._countdown = -1

    def inject_clock_error(self, active: bool = True) -> None:
        """Hold (or release) a clock error as if PLL48CLK were too slow."""
        self._clock_error_injected = active

    # --- registers ------------------------------------------------------------------------------
    def _clock_error(self) -> bool:
        if self._clock_error_injected:
            return True
        rcc = self.bus.rcc
        if rcc is None:
            return False
        clocks = rcc.clocks()
        return clocks.pll48 * 16 < clocks.hclk  # RM0090 §24.4.2: fPLL48CLK < fHCLK/16

    def _update(self) -> None:
        if not self.cr & rm.RNG_CR_RNGEN:
            return
        if self._clock_error():
            if not self.sr & rm.RNG_SR_CECS:
                self.sr |= rm.RNG_SR_CECS | rm.RNG_SR_CEIS
            return
        self.sr &= ~rm.RNG_SR_CECS
        if not self._spec_checked and self.bus.rcc is not None:
            self._spec_checked = True
            self.bus.rcc.check_pll48_for_rng()
        if self._seed_error or self.sr & rm.RNG_SR_DRDY:
            return
        if self._countdown < 0:
            self._countdown = 1
        elif self._countdown > 0:
            self._countdown -= 1
        if self._countdown == 0:
            self._countdown = -1
            self.dr = self._stream.getrandbits(32)
            self.sr |= rm.RNG_SR_DRDY

    def read_register(self, offset: int) -> int | None:
        if offset == rm.RNG_SR:
            self._update()
            return self.sr
        if offset == rm.RNG_DR:
            value = self.dr
            self.sr &= ~rm.RNG_SR_DRDY
            return value
        return self.peek_register(offset)

    def peek_register(self, offset: int) -> int | None:
        return {rm.RNG_CR: self.cr, rm.RNG_SR: self.sr, rm.RNG_DR: self.dr}.get(offset)

    def write_register(self, offset: int, value: int) -> bool:
        if offset == rm.RNG_CR:
            was_on = self.cr & rm.RNG_CR_RNGEN
            self.cr = value & (rm.RNG_CR_RNGEN | rm.RNG_CR_IE)
            if not was_on and self.cr & rm.RNG_CR_RNGEN:
                # (Re)starting the RNG ends a seed error once SEIS was cleared (RM0090 §24.3.2).
                if self._seed_error and not self.sr & rm.RNG_SR_SEIS:
                    self._seed_error = False
                    self.sr &= ~rm.RNG_SR_SECS
                self._countdown = -1
            elif not self.cr & rm.RNG_CR_RNGEN:
                self._countdown = -1
        elif offset == rm.RNG_SR:
            self.sr &= ~(_SR_RC_W0 & ~value)
        elif offset == rm.RNG_DR:
            pass  # read-only; the write is ignored
        else:
            return False
        return True
