"""RCC: reset and clock control (RM0090 §6, F42x/43x register map §6.3).

Oscillators and PLLs lock at once: a ready bit follows its enable bit (``HSERDY`` follows
``HSEON``, ``PLLRDY`` follows ``PLLON`` once the PLL's source is ready, ...), and ``CFGR.SWS`` follows
``SW`` as soon as the selected source is ready, so the usual busy-wait loops finish on their first
read. Clock gates (``*ENR``) decide whether a peripheral's registers respond; ``*RSTR`` bits reset
the peripheral models. ``CSR`` keeps the reset flags across system resets (RM0090 §6.3.21).

The model also checks the clock tree against the limits of RM0090/DS9405 when the system clock is
switched (SYSCLK ≤ 180 MHz, flash wait states, over-drive above 168 MHz) and when the RNG clock is
used (PLL48CLK ≤ 48 MHz); a breach is reported as a "spec" report (fatal in strict mode).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from otakey.emu import rm0090 as rm
from otakey.emu.peripheral import Peripheral, ResetKind

if TYPE_CHECKING:
    from otakey.emu.bus import Bus

_HSICAL = 0x6B  # factory HSI trim: any value is plausible (RM0090 §6.3.1, HSICAL[7:0])

# offset -> (reset value, writable mask)
_LAYOUT: dict[int, tuple[int, int]] = {
    rm.RCC_CR: ((_HSICAL << 8) | rm.RCC_CR_HSITRIM_RESET | rm.RCC_CR_HSIRDY | rm.RCC_CR_HSION,
                0x150D_00F9),
    rm.RCC_PLLCFGR: (rm.RCC_PLLCFGR_RESET, 0x0F43_7FFF),
    rm.RCC_CFGR: (0, 0xFFFF_FCF3),
    rm.RCC_CIR: (0, 0x0000_3F00),
    rm.RCC_AHB1RSTR: (0, 0x2260_17FF),
    rm.RCC_AHB2RSTR: (0, 0x0000_00F1),
    rm.RCC_AHB3RSTR: (0, 0x0000_0001),
    rm.RCC_APB1RSTR: (0, 0xF6FE_C9FF),
    rm.RCC_APB2RSTR: (0, 0x0477_7933),
    rm.RCC_AHB1ENR: (rm.RCC_AHB1ENR_RESET, 0x7E77_17FF),
    rm.RCC_AHB2ENR: (0, 0x0000_00F1),
    rm.RCC_AHB3ENR: (0, 0x0000_0001),
    rm.RCC_APB1ENR: (0, 0xF6FE_C9FF),
    rm.RCC_APB2ENR: (0, 0x0477_7F33),
    # Low-power enables: stored only; reset values as in the ST SVD (not checked against RM0090).
    rm.RCC_AHB1LPENR: (0x7E67_91FF, 0x7EEF_97FF),
    rm.RCC_AHB2LPENR: (0x0000_00F1, 0x0000_00F1),
    rm.RCC_AHB3LPENR: (0x0000_0001, 0x0000_0001),
    rm.RCC_APB1LPENR: (0x36FE_C9FF, 0xF6FE_C9FF),
    rm.RCC_APB2LPENR: (0x0007_5F33, 0x0477_7F33),
    rm.RCC_BDCR: (0, 0x0001_8305),
    rm.RCC_CSR: (0, 0x0000_0001),  # the reset flags live in Rcc._rsr_flags
    rm.RCC_SSCGR: (0, 0xCFFF_FFFF),
    rm.RCC_PLLI2SCFGR: (0x2400_3000, 0x7F00_7FC0),
    rm.RCC_PLLSAICFGR: (0x2400_3000, 0x7F00_7FC0),
    rm.RCC_DCKCFGR: (0, 0x1133_1F1F),
}

# *RSTR register and bit -> the peripheral model it resets (only the ones modelled).
_RESET_LINES: dict[tuple[int, int], str] = {
    (rm.RCC_AHB2RSTR, 1 << 6): "RNG",
    (rm.RCC_APB1RSTR, 1 << 17): "USART2",
    (rm.RCC_APB1RSTR, 1 << 28): "PWR",
    (rm.RCC_APB2RSTR, 1 << 4): "USART1",
    (rm.RCC_APB2RSTR, 1 << 14): "SYSCFG",
    **{(rm.RCC_AHB1RSTR, 1 << i): f"GPIO{port}" for i, port in enumerate(rm.GPIO_PORTS)},
}

_AHB_DIV = {8: 2, 9: 4, 10: 8, 11: 16, 12: 64, 13: 128, 14: 256, 15: 512}
_APB_DIV = {4: 2, 5: 4, 6: 8, 7: 16}


@dataclass(frozen=True)
class Clocks:
    sysclk: int
    hclk: int
    pclk1: int
    pclk2: int
    pll48: int  # 0 while the main PLL is off


class Rcc(Peripheral):
    """RCC register block; also answers clock-tree questions for the other models."""

    def __init__(self, bus: Bus, base: int = rm.RCC_BASE, hse_hz: int = rm.HSE_HZ) -> None:
        super().__init__(bus, "RCC", base)
        self.hse_hz = hse_hz
        self.regs: dict[int, int] = {}
        self._rsr_flags = rm.RCC_CSR_POWER_ON

    def reset(self, kind: ResetKind) -> None:
        if kind is ResetKind.POWER_ON:
            self._rsr_flags = rm.RCC_CSR_POWER_ON
        self.regs = {offset: reset for offset, (reset, _) in _LAYOUT.items()}

    def note_reset(self, software: bool) -> None:
        """Set the CSR flags of a system reset: PINRSTF always (NRST is driven), SFTRSTF if software."""
        self._rsr_flags |= rm.RCC_CSR_PINRSTF | (rm.RCC_CSR_SFTRSTF if software else 0)

    def enabled(self, offset: int, bit: int) -> bool:
        return bool(self.regs[offset] & bit)

    # --- registers ------------------------------------------------------------------------------
    def read_register(self, offset: int) -> int | None:
        value = self.regs.get(offset)
        if value is None:
            return None
        if offset == rm.RCC_CR:
            return value | self._cr_ready(value)
        if offset == rm.RCC_BDCR:
            return value | (rm.RCC_BDCR_LSERDY if value & rm.RCC_BDCR_LSEON else 0)
        if offset == rm.RCC_CSR:
            return value | self._rsr_flags | (rm.RCC_CSR_LSIRDY if value & rm.RCC_CSR_LSION else 0)
        return value

    def write_register(self, offset: int, value: int) -> bool:
        spec = _LAYOUT.get(offset)
        if spec is None:
            return False
        _, writable = spec
        old = self.regs[offset]
        new = (old & ~writable) | (value & writable)
        before = self.clocks() if offset in (rm.RCC_CR, rm.RCC_CFGR) else None
        if offset == rm.RCC_CR:
            new = self._keep_system_clock_source(new)
        elif offset == rm.RCC_PLLCFGR and old != new and self.regs[rm.RCC_CR] & rm.RCC_CR_PLLON:
            self._spec("PLLCFGR written while PLLON=1 (RM0090 §6.3.2: configure the PLL while it is off)",
                       offset, value)
        elif offset == rm.RCC_CSR and value & rm.RCC_CSR_RMVF:
            self._rsr_flags = 0
        self.regs[offset] = new
        if before is not None:
            self._update_sws()
            after = self.clocks()
            if (after.sysclk, after.hclk) != (before.sysclk, before.hclk):
                self._check_clock_limits()
        if offset in (rm.RCC_AHB1RSTR, rm.RCC_AHB2RSTR, rm.RCC_APB1RSTR, rm.RCC_APB2RSTR):
            self._apply_resets(offset, new & ~old)
        return True

    def _cr_ready(self, cr: int) -> int:
        ready = 0
        if cr & rm.RCC_CR_HSION:
            ready |= rm.RCC_CR_HSIRDY
        if cr & rm.RCC_CR_HSEON:
            ready |= rm.RCC_CR_HSERDY
        if cr & rm.RCC_CR_PLLON and self._pll_source_ready(cr):
            ready |= rm.RCC_CR_PLLRDY
        if cr & rm.RCC_CR_PLLI2SON and self._pll_source_ready(cr):
            ready |= rm.RCC_CR_PLLI2SRDY
        if cr & rm.RCC_CR_PLLSAION and self._pll_source_ready(cr):
            ready |= rm.RCC_CR_PLLSAIRDY
        return ready

    def _pll_source_ready(self, cr: int) -> bool:
        hse = bool(self.regs[rm.RCC_PLLCFGR] & rm.RCC_PLLCFGR_PLLSRC_HSE)
        return bool(cr & (rm.RCC_CR_HSEON if hse else rm.RCC_CR_HSION))

    def _keep_system_clock_source(self, cr: int) -> int:
        # RM0090 §6.3.1: an oscillator used (directly or through the PLL) as SYSCLK cannot be stopped.
        sws = (self.regs[rm.RCC_CFGR] & rm.RCC_CFGR_SWS) >> rm.RCC_CFGR_SWS_POS
        if sws == rm.RCC_CFGR_SW_HSI:
            cr |= rm.RCC_CR_HSION
        elif sws == rm.RCC_CFGR_SW_HSE:
            cr |= rm.RCC_CR_HSEON
        elif sws == rm.RCC_CFGR_SW_PLL:
            cr |= rm.RCC_CR_PLLON
            hse = self.regs[rm.RCC_PLLCFGR] & rm.RCC_PLLCFGR_PLLSRC_HSE
            cr |= rm.RCC_CR_HSEON if hse else rm.RCC_CR_HSION
        return cr

    def _update_sws(self) -> None:
        cfgr = self.regs[rm.RCC_CFGR]
        sw = cfgr & rm.RCC_CFGR_SW
        ready = self._cr_ready(self.regs[rm.RCC_CR])
        needed = {rm.RCC_CFGR_SW_HSI: rm.RCC_CR_HSIRDY, rm.RCC_CFGR_SW_HSE: rm.RCC_CR_HSERDY,
                  rm.RCC_CFGR_SW_PLL: rm.RCC_CR_PLLRDY}.get(sw)
        if needed is not None and ready & needed:
            self.regs[rm.RCC_CFGR] = (cfgr & ~rm.RCC_CFGR_SWS) | (sw << rm.RCC_CFGR_SWS_POS)

    def _apply_resets(self, offset: int, newly_set: int) -> None:
        for (reg, bit), name in _RESET_LINES.items():
            if reg == offset and newly_set & bit:
                target = self.bus.peripheral(name)
                if target is not None:
                    target.reset(ResetKind.SYSTEM)

    # --- clock tree -----------------------------------------------------------------------------
    def clocks(self) -> Clocks:
        cfgr = self.regs[rm.RCC_CFGR]
        sws = (cfgr & rm.RCC_CFGR_SWS) >> rm.RCC_CFGR_SWS_POS
        pll_out, pll48 = self._pll()
        sysclk = {rm.RCC_CFGR_SW_HSI: rm.HSI_HZ, rm.RCC_CFGR_SW_HSE: self.hse_hz,
                  rm.RCC_CFGR_SW_PLL: pll_out}.get(sws, rm.HSI_HZ)
        hclk = sysclk // _AHB_DIV.get((cfgr & rm.RCC_CFGR_HPRE) >> rm.RCC_CFGR_HPRE_POS, 1)
        pclk1 = hclk // _APB_DIV.get((cfgr & rm.RCC_CFGR_PPRE1) >> rm.RCC_CFGR_PPRE1_POS, 1)
        pclk2 = hclk // _APB_DIV.get((cfgr & rm.RCC_CFGR_PPRE2) >> rm.RCC_CFGR_PPRE2_POS, 1)
        return Clocks(sysclk, hclk, pclk1, pclk2, pll48)

    def _pll(self) -> tuple[int, int]:
        """(PLL system output, PLL48CLK) in Hz; (0, 0) while the PLL is not locked."""
        cr = self.regs[rm.RCC_CR]
        if not (cr & rm.RCC_CR_PLLON and self._pll_source_ready(cr)):
            return 0, 0
        cfg = self.regs[rm.RCC_PLLCFGR]
        source = self.hse_hz if cfg & rm.RCC_PLLCFGR_PLLSRC_HSE else rm.HSI_HZ
        m = cfg & rm.RCC_PLLCFGR_PLLM
        n = (cfg & rm.RCC_PLLCFGR_PLLN) >> rm.RCC_PLLCFGR_PLLN_POS
        p = 2 * (((cfg & rm.RCC_PLLCFGR_PLLP) >> rm.RCC_PLLCFGR_PLLP_POS) + 1)
        q = (cfg & rm.RCC_PLLCFGR_PLLQ) >> rm.RCC_PLLCFGR_PLLQ_POS
        if m < 2 or n < 50 or q < 2:  # RM0090 §6.3.2: invalid divider settings give no clock
            return 0, 0
        vco = source * n // m
        return vco // p, vco // q

    def _check_clock_limits(self) -> None:
        clocks = self.clocks()
        if clocks.sysclk > rm.SYSCLK_MAX_HZ:
            self._spec(f"SYSCLK {clocks.sysclk} Hz above {rm.SYSCLK_MAX_HZ} Hz", rm.RCC_CFGR, None)
        flash = self.bus.peripheral("FLASH")
        if flash is not None:
            latency = flash.peek_register(rm.FLASH_ACR) & rm.FLASH_ACR_LATENCY  # type: ignore[operator]
            # RM0090 §3.5.1 table 11 (2.7-3.6 V): one wait state per started 30 MHz of HCLK.
            needed = max(0, (clocks.hclk - 1) // 30_000_000)
            if latency < needed:
                self._spec(f"HCLK {clocks.hclk} Hz needs FLASH_ACR.LATENCY >= {needed}, have {latency}",
                           rm.RCC_CFGR, None)
        pwr = self.bus.peripheral("PWR")
        if pwr is not None and clocks.hclk > 168_000_000:
            csr = pwr.peek_register(rm.PWR_CSR) or 0
            if not csr & rm.PWR_CSR_ODSWRDY:
                self._spec(f"HCLK {clocks.hclk} Hz needs over-drive (RM0090 §5.1.4)", rm.RCC_CFGR, None)

    def check_pll48_for_rng(self) -> None:
        pll48 = self.clocks().pll48
        if pll48 > rm.PLL48_MAX_HZ:
            self._spec(f"PLL48CLK {pll48} Hz above {rm.PLL48_MAX_HZ} Hz clocks the RNG out of spec "
                       "(RM0090 §6.3.2 PLLQ caution)", rm.RCC_PLLCFGR, None)

    def _spec(self, detail: str, offset: int, value: int | None) -> None:
        self.bus.report("spec", self.name, self.base + offset, 4, "w", value, detail)
