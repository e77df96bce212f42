"""Cortex-M4 core peripherals: SysTick, NVIC, SCB, CoreDebug, FPU control and DWT (PM0214 §4).

The CPU engine maps none of these, and it delivers no exceptions or interrupts, so firmware for
this model polls: SysTick ``COUNTFLAG`` for timeouts, no handlers. Time is the instruction count
(one cycle per instruction): SysTick counts HCLK (``CLKSOURCE`` = 1) or HCLK/8 cycles and the DWT
cycle counter counts cycles while ``DEMCR.TRCENA`` and ``DWT_CTRL.CYCCNTENA`` are set.

* SysTick (PM0214 §4.5): ``CSR`` (``ENABLE``, ``TICKINT``, ``CLKSOURCE``, ``COUNTFLAG`` — set when the
  counter goes from 1 to 0, cleared by reading ``CSR`` or writing ``CVR``), ``RVR``, ``CVR`` (a write
  clears it and ``COUNTFLAG``), ``CALIB``.
* SCB (PM0214 §4.4): ``CPUID`` (Cortex-M4 r0p1), ``VTOR``, ``AIRCR`` (writes need ``VECTKEY`` 0x05FA;
  ``SYSRESETREQ`` resets the system), ``CPACR`` (CP10/CP11: until both allow access, any
  floating-point instruction is a NOCP UsageFault — the CPU adapter enforces it), fault status
  registers, ``CCR``, ``SHPR``/``SHCSR`` as storage. Setting an exception pending (``ICSR``, ``STIR``)
  is not modelled and is reported.
* NVIC (PM0214 §4.2): registers as plain storage (nothing is ever delivered).
* ``DEMCR`` survives a system reset (it is reset by power-on only).

**Time warp.** A polling firmware that waits for a timeout (a retry after 2 s, a check-in every
10 s) would otherwise have to execute every instruction of the wait: hundreds of millions for a few
seconds at 180 MHz. :meth:`SysTick.warp` lets whole SysTick periods pass at once instead: each of the
next CSR reads finds ``COUNTFLAG`` set, one per warped period, as if the core had slept through
them. Firmware that counts its time in COUNTFLAG wraps (ours does) sees exactly that many periods
go by, at the cost of one poll each. While periods are pending the core is not idle (the bus's idle
detector keeps it running), so a warp is used up before the core parks again. The chip counts
warped cycles apart from instructions; the DWT cycle counter does not see them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from otakey.emu import rm0090 as rm
from otakey.emu.peripheral import Peripheral, ResetKind

if TYPE_CHECKING:
    from otakey.emu.bus import Bus

_ICTR = 0x004
_ICSR_PENDING_SET = (1 << 31) | (1 << 28) | (1 << 26)  # NMIPENDSET, PENDSVSET, PENDSTSET

# offset -> (reset value, writable mask) for the plain-storage part of the SCS.
_STORAGE: dict[int, tuple[int, int]] = {
    rm.SCB_ACTLR: (0, 0x0000_0307),
    rm.SCB_VTOR: (0, rm.SCB_VTOR_TBLOFF),
    rm.SCB_SCR: (0, 0x0000_0016),
    rm.SCB_CCR: (rm.SCB_CCR_RESET, 0x0000_031B),
    rm.SCB_SHPR1: (0, 0x00FF_FFFF),
    rm.SCB_SHPR2: (0, 0xFF00_0000),
    rm.SCB_SHPR3: (0, 0xFFFF_0000),
    rm.SCB_SHCSR: (0, 0x0007_0000),
    rm.SCB_MMFAR: (0, 0xFFFF_FFFF),
    rm.SCB_BFAR: (0, 0xFFFF_FFFF),
    rm.SCB_AFSR: (0, 0xFFFF_FFFF),
    0xDF4: (0, 0x0001_007F),  # DCRSR
    0xDF8: (0, 0xFFFF_FFFF),  # DCRDR
    rm.FPU_FPCCR: (rm.FPU_FPCCR_RESET, 0xC000_0000),
    rm.FPU_FPCAR: (0, 0xFFFF_FFF8),
    rm.FPU_FPDSCR: (0, 0x07C0_0000),
    **{rm.NVIC_ISER0 + 4 * i: (0, 0xFFFF_FFFF) for i in range(8)},
    **{rm.NVIC_ICER0 + 4 * i: (0, 0xFFFF_FFFF) for i in range(8)},
    **{rm.NVIC_ISPR0 + 4 * i: (0, 0xFFFF_FFFF) for i in range(8)},
    **{rm.NVIC_ICPR0 + 4 * i: (0, 0xFFFF_FFFF) for i in range(8)},
    **{rm.NVIC_IABR0 + 4 * i: (0, 0) for i in range(8)},
    **{off: (0, 0xF0F0_F0F0) for off in range(rm.NVIC_IPR0, rm.NVIC_IPR_END, 4)},
}
_FAULT_STATUS = (rm.SCB_CFSR, rm.SCB_HFSR, rm.SCB_DFSR)  # write-1-to-clear, never set here


class SysTick:
    """The 24-bit down counter, evaluated lazily from the cycle count."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.csr = 0  # ENABLE, TICKINT, CLKSOURCE (PM0214: CLKSOURCE resets to 0 on STM32F4)
        self.rvr = 0
        self.value = 0  # CVR at time self.at
        self.at = 0
        self.flag = False
        self.warp_pending = 0  # periods warped but not yet seen through COUNTFLAG

    @property
    def period_cycles(self) -> int:
        """Core cycles of one SysTick period (RELOAD + 1 counts of its clock)."""
        scale = 1 if self.csr & rm.SYST_CSR_CLKSOURCE else 8
        return (self.rvr + 1) * scale

    def warp(self, periods: int) -> int:
        """Let ``periods`` whole periods pass at once (see the module docstring); returns the core
        cycles that represents. Nothing happens (0) while the counter is disabled or RELOAD is 0,
        because then no period would ever end."""
        if periods < 0:
            raise ValueError("periods must be >= 0")
        if not self.csr & rm.SYST_CSR_ENABLE or self.rvr == 0:
            return 0
        self.warp_pending += periods
        return periods * self.period_cycles

    def _ticks(self, now: int) -> int:
        if self.csr & rm.SYST_CSR_CLKSOURCE:
            return now - self.at
        return now // 8 - self.at // 8  # HCLK/8 on STM32F4 (ST HAL LL_SYSTICK_CLKSOURCE_HCLK_DIV8)

    def advance(self, now: int) -> None:
        if not self.csr & rm.SYST_CSR_ENABLE:
            self.at = now
            return
        n = self._ticks(now)
        self.at = now
        if n <= 0:
            return
        v0, reload = self.value, self.rvr
        if reload == 0:  # PM0214: RELOAD 0 stops the counter at the next wrap
            if 0 < v0 <= n:
                self.flag = True
            self.value = max(v0 - n, 0)
            return
        if v0 > 0 and n < v0:
            self.value = v0 - n
            return
        period = reload + 1
        m = n - v0  # ticks spent after the counter first stood at 0
        if v0 > 0 or m >= period:
            self.flag = True
        self.value = reload - ((m - 1) % period) if m else 0

    def read(self, offset: int, now: int) -> int | None:
        if offset == rm.SYST_CSR:
            self.advance(now)
            flag = self.flag
            if not flag and self.warp_pending:
                # One warped period per read: a firmware counting wraps sees each of them.
                self.warp_pending -= 1
                flag = True
            self.flag = False
            return self.csr | (rm.SYST_CSR_COUNTFLAG if flag else 0)
        if offset == rm.SYST_RVR:
            return self.rvr
        if offset == rm.SYST_CVR:
            self.advance(now)
            return self.value
        if offset == rm.SYST_CALIB:
            return rm.SYST_CALIB_RESET
        return None

    def peek(self, offset: int) -> int | None:
        flag = self.flag or self.warp_pending > 0
        return {rm.SYST_CSR: self.csr | (rm.SYST_CSR_COUNTFLAG if flag else 0),
                rm.SYST_RVR: self.rvr, rm.SYST_CVR: self.value,
                rm.SYST_CALIB: rm.SYST_CALIB_RESET}.get(offset)

    def write(self, offset: int, value: int, now: int) -> bool:
        self.advance(now)
        if offset == rm.SYST_CSR:
            self.csr = value & (rm.SYST_CSR_ENABLE | rm.SYST_CSR_TICKINT | rm.SYST_CSR_CLKSOURCE)
        elif offset == rm.SYST_RVR:
            self.rvr = value & 0x00FF_FFFF
        elif offset == rm.SYST_CVR:
            self.value = 0
            self.flag = False
            self.warp_pending = 0  # the counter restarts: periods not yet seen are gone
        elif offset != rm.SYST_CALIB:
            return False
        return True


class SystemControlSpace(Peripheral):
    """0xE000_E000-0xE000_EFFF: SysTick, NVIC, SCB, CoreDebug, FPU control."""

    idle_neutral = True  # timers are polled inside receive loops; that is still idle

    def __init__(self, bus: Bus, base: int = rm.SCS_BASE) -> None:
        super().__init__(bus, "SCS", base, 0x1000)
        self.systick = SysTick()
        self.demcr = 0
        self.dwt: Dwt | None = None
        self.reset(ResetKind.POWER_ON)
        bus.add_rx_source(self)

    def rx_pending(self) -> bool:
        """Warped SysTick periods not yet seen: the core has something coming, it is not idle."""
        return self.systick.warp_pending > 0

    def reset(self, kind: ResetKind) -> None:
        self.regs = {offset: reset for offset, (reset, _) in _STORAGE.items()}
        self.prigroup = 0
        self.cpacr = 0
        self.systick.reset()
        self.systick.at = self.bus.now()
        if kind is ResetKind.POWER_ON:
            self.demcr = 0

    @property
    def fpu_enabled(self) -> bool:
        cp10 = self.cpacr >> rm.SCB_CPACR_CP10_POS & 3
        cp11 = self.cpacr >> rm.SCB_CPACR_CP11_POS & 3
        # 01 privileged only, 11 full; the core always runs privileged here (no exceptions/RTOS).
        return cp10 in (1, 3) and cp11 in (1, 3)

    def read_register(self, offset: int) -> int | None:
        if offset < 0x100:
            if rm.SYST_CSR <= offset <= rm.SYST_CALIB:
                return self.systick.read(offset, self.bus.now())
            if offset == _ICTR:
                return 2  # 91 external interrupts: (2 + 1) * 32 lines
        return self.peek_register(offset)

    def peek_register(self, offset: int) -> int | None:
        if rm.SYST_CSR <= offset <= rm.SYST_CALIB:
            return self.systick.peek(offset)
        if offset == _ICTR:
            return 2
        if offset == rm.SCB_CPUID:
            return rm.SCB_CPUID_CORTEX_M4_R0P1
        if offset == rm.SCB_ICSR:
            return 0
        if offset == rm.SCB_AIRCR:
            return rm.SCB_AIRCR_VECTKEYSTAT | self.prigroup
        if offset == rm.SCB_CPACR:
            return self.cpacr
        if offset in _FAULT_STATUS:
            return 0
        if offset == rm.COREDEBUG_DHCSR:
            return 0  # no debugger attached
        if offset == rm.COREDEBUG_DEMCR:
            return self.demcr
        return self.regs.get(offset)

    def write_register(self, offset: int, value: int) -> bool:
        if rm.SYST_CSR <= offset <= rm.SYST_CALIB:
            return self.systick.write(offset, value, self.bus.now())
        if offset == rm.SCB_AIRCR:
            if value & 0xFFFF_0000 != rm.SCB_AIRCR_VECTKEY:
                return True  # PM0214 §4.4.5: ignored without the key
            self.prigroup = value & rm.SCB_AIRCR_PRIGROUP
            if value & rm.SCB_AIRCR_SYSRESETREQ:
                self.bus.request_system_reset("AIRCR.SYSRESETREQ")
            return True
        if offset == rm.SCB_CPACR:
            self.cpacr = value & 0x00F0_0000
            self.bus.set_fpu_enabled(self.fpu_enabled)
            return True
        if offset == rm.SCB_ICSR:
            return not value & _ICSR_PENDING_SET  # pending an exception: not modelled
        if offset in _FAULT_STATUS or offset == rm.COREDEBUG_DHCSR:
            return True
        if offset == rm.COREDEBUG_DEMCR:
            if self.dwt is not None:
                self.dwt.sync()  # TRCENA gates the cycle counter: account for time so far
            self.demcr = value & 0x010F_07F1
            return True
        spec = _STORAGE.get(offset)
        if spec is None:
            return False
        self.regs[offset] = (self.regs[offset] & ~spec[1]) | (value & spec[1])
        return True


class Dwt(Peripheral):
    """Data watchpoint and trace unit: only the cycle counter (PM0214 has no DWT detail; ARMv7-M ARM C1.8)."""

    idle_neutral = True

    def __init__(self, bus: Bus, scs: SystemControlSpace, base: int = rm.DWT_BASE) -> None:
        super().__init__(bus, "DWT", base, 0x1000)
        self.scs = scs
        scs.dwt = self
        self.reset(ResetKind.POWER_ON)

    def reset(self, kind: ResetKind) -> None:
        self.ctrl = rm.DWT_CTRL_RESET
        self.cyccnt = 0
        self.at = self.bus.now()

    def _counting(self) -> bool:
        return bool(self.ctrl & rm.DWT_CTRL_CYCCNTENA and self.scs.demcr & rm.COREDEBUG_DEMCR_TRCENA)

    def sync(self) -> None:
        now = self.bus.now()
        if self._counting():
            self.cyccnt = (self.cyccnt + now - self.at) & 0xFFFF_FFFF
        self.at = now

    def read_register(self, offset: int) -> int | None:
        if offset == rm.DWT_CTRL:
            return self.ctrl
        if offset == rm.DWT_CYCCNT:
            self.sync()
            return self.cyccnt
        return None

    def write_register(self, offset: int, value: int) -> bool:
        self.sync()
        if offset == rm.DWT_CTRL:
            self.ctrl = (self.ctrl & ~0x0000_0001) | (value & 0x0000_0001)
        elif offset == rm.DWT_CYCCNT:
            self.cyccnt = value & 0xFFFF_FFFF
        else:
            return False
        return True
