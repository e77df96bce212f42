"""RCC and PWR of the STM32F429 model (RM0090 §6, §5)."""

from __future__ import annotations

import pytest

from emu_programs.harness import Monitor, monitor_chip, program
from otakey.emu import DeviceError, StopReason
from otakey.emu import rm0090 as rm

RCC = rm.RCC_BASE
PWR = rm.PWR_BASE


@pytest.fixture(scope="module")
def elf(tmp_path_factory: pytest.TempPathFactory):
    return program(tmp_path_factory, "monitor").elf


@pytest.fixture
def mon(elf) -> Monitor:
    return monitor_chip(elf)


def test_rcc_reset_state_runs_from_hsi(mon: Monitor):
    cr = mon.read32(RCC + rm.RCC_CR)
    assert cr & (rm.RCC_CR_HSION | rm.RCC_CR_HSIRDY) == rm.RCC_CR_HSION | rm.RCC_CR_HSIRDY
    assert not cr & (rm.RCC_CR_HSERDY | rm.RCC_CR_PLLRDY)
    assert mon.read32(RCC + rm.RCC_PLLCFGR) == rm.RCC_PLLCFGR_RESET
    assert mon.read32(RCC + rm.RCC_CFGR) & rm.RCC_CFGR_SWS == 0
    assert mon.chip.rcc.clocks().hclk == rm.HSI_HZ


def test_rcc_ready_bits_follow_enables(mon: Monitor):
    mon.write(4, RCC + rm.RCC_CR, rm.RCC_CR_HSION | rm.RCC_CR_HSEON | rm.RCC_CR_PLLI2SON)
    cr = mon.read32(RCC + rm.RCC_CR)
    assert cr & rm.RCC_CR_HSERDY and cr & rm.RCC_CR_PLLI2SRDY
    mon.write(4, RCC + rm.RCC_CR, rm.RCC_CR_HSION)
    assert not mon.read32(RCC + rm.RCC_CR) & (rm.RCC_CR_HSERDY | rm.RCC_CR_PLLI2SRDY)


def test_rcc_pll_does_not_lock_without_its_source(mon: Monitor):
    mon.write(4, RCC + rm.RCC_PLLCFGR, rm.RCC_PLLCFGR_PLLSRC_HSE | 8 | (360 << 6) | (8 << 24))
    mon.write(4, RCC + rm.RCC_CR, rm.RCC_CR_HSION | rm.RCC_CR_PLLON)  # HSE still off
    assert not mon.read32(RCC + rm.RCC_CR) & rm.RCC_CR_PLLRDY
    mon.write(4, RCC + rm.RCC_CR, rm.RCC_CR_HSION | rm.RCC_CR_HSEON | rm.RCC_CR_PLLON)
    assert mon.read32(RCC + rm.RCC_CR) & rm.RCC_CR_PLLRDY


def test_rcc_sws_follows_sw_only_once_the_source_is_ready(mon: Monitor):
    mon.write(4, RCC + rm.RCC_CFGR, rm.RCC_CFGR_SW_HSE)
    assert mon.read32(RCC + rm.RCC_CFGR) & rm.RCC_CFGR_SWS == 0  # HSE off: still on HSI
    mon.write(4, RCC + rm.RCC_CR, rm.RCC_CR_HSION | rm.RCC_CR_HSEON)
    mon.write(4, RCC + rm.RCC_CFGR, rm.RCC_CFGR_SW_HSE)
    assert (mon.read32(RCC + rm.RCC_CFGR) & rm.RCC_CFGR_SWS) >> rm.RCC_CFGR_SWS_POS == rm.RCC_CFGR_SW_HSE
    assert mon.chip.rcc.clocks().sysclk == rm.HSE_HZ
    # The system clock's oscillator cannot be switched off (RM0090 §6.3.1).
    mon.write(4, RCC + rm.RCC_CR, rm.RCC_CR_HSION)
    assert mon.read32(RCC + rm.RCC_CR) & rm.RCC_CR_HSERDY


def test_rcc_full_180mhz_sequence_completes_with_pll48_at_45mhz(mon: Monitor):
    assert mon.value("C") == 0
    clocks = mon.chip.rcc.clocks()
    assert (clocks.sysclk, clocks.hclk, clocks.pclk1, clocks.pclk2, clocks.pll48) == (
        180_000_000, 180_000_000, 45_000_000, 90_000_000, 45_000_000)
    assert mon.read32(PWR + rm.PWR_CSR) & (rm.PWR_CSR_ODRDY | rm.PWR_CSR_ODSWRDY | rm.PWR_CSR_VOSRDY) == (
        rm.PWR_CSR_ODRDY | rm.PWR_CSR_ODSWRDY | rm.PWR_CSR_VOSRDY)
    assert mon.chip.reports == []
    assert mon.cmd("X 5").startswith("x=")  # the console still works at the new baud divisor


def test_pwr_overdrive_switch_needs_overdrive_first(mon: Monitor):
    mon.write(4, RCC + rm.RCC_APB1ENR, rm.RCC_APB1ENR_PWREN)
    mon.write(4, PWR + rm.PWR_CR, rm.PWR_CR_RESET | rm.PWR_CR_ODSWEN)
    assert mon.read32(PWR + rm.PWR_CSR) & (rm.PWR_CSR_ODRDY | rm.PWR_CSR_ODSWRDY) == 0
    mon.write(4, PWR + rm.PWR_CR, rm.PWR_CR_RESET | rm.PWR_CR_ODEN)
    assert mon.read32(PWR + rm.PWR_CSR) & (rm.PWR_CSR_ODRDY | rm.PWR_CSR_ODSWRDY) == rm.PWR_CSR_ODRDY
    mon.write(4, PWR + rm.PWR_CR, rm.PWR_CR_RESET | rm.PWR_CR_ODEN | rm.PWR_CR_ODSWEN)
    assert mon.read32(PWR + rm.PWR_CSR) & rm.PWR_CSR_ODSWRDY


def test_pwr_vosrdy_needs_the_pll(mon: Monitor):
    mon.write(4, RCC + rm.RCC_APB1ENR, rm.RCC_APB1ENR_PWREN)
    assert not mon.read32(PWR + rm.PWR_CSR) & rm.PWR_CSR_VOSRDY
    mon.write(4, RCC + rm.RCC_CR, rm.RCC_CR_HSION | rm.RCC_CR_PLLON)
    assert mon.read32(PWR + rm.PWR_CSR) & rm.PWR_CSR_VOSRDY


def test_pwr_access_without_pwren_is_clock_gated(mon: Monitor):
    mon.uart.write(b"r4 40007000\n")
    with pytest.raises(DeviceError, match="clock-gated"):
        mon.chip.run()


def test_rcc_switch_to_180mhz_without_wait_states_is_a_spec_violation(mon: Monitor):
    mon.write(4, RCC + rm.RCC_APB1ENR, rm.RCC_APB1ENR_PWREN)
    mon.write(4, PWR + rm.PWR_CR, rm.PWR_CR_RESET | rm.PWR_CR_ODEN | rm.PWR_CR_ODSWEN)
    mon.write(4, RCC + rm.RCC_CR, rm.RCC_CR_HSION | rm.RCC_CR_HSEON)
    mon.write(4, RCC + rm.RCC_PLLCFGR, rm.RCC_PLLCFGR_PLLSRC_HSE | 8 | (360 << 6) | (8 << 24))
    mon.write(4, RCC + rm.RCC_CR, rm.RCC_CR_HSION | rm.RCC_CR_HSEON | rm.RCC_CR_PLLON)
    mon.uart.write(b"w4 40023808 9402\n")  # APB1 /4, APB2 /2, SW = PLL with FLASH_ACR.LATENCY = 0
    with pytest.raises(DeviceError, match="LATENCY >= 5"):
        mon.chip.run()


def test_rcc_pllcfgr_write_while_pll_runs_is_a_spec_violation(mon: Monitor):
    mon.write(4, RCC + rm.RCC_CR, rm.RCC_CR_HSION | rm.RCC_CR_PLLON)
    mon.uart.write(b"w4 40023804 24003011\n")
    with pytest.raises(DeviceError, match="PLLCFGR written while PLLON=1"):
        mon.chip.run()


def test_rcc_reset_flags_power_on_then_software_reset_then_rmvf(mon: Monitor):
    csr = rm.RCC_BASE + rm.RCC_CSR
    assert mon.read32(csr) & rm.RCC_CSR_RESET_FLAGS == rm.RCC_CSR_POWER_ON
    mon.write(4, csr, rm.RCC_CSR_RMVF)
    assert mon.read32(csr) & rm.RCC_CSR_RESET_FLAGS == 0
    assert mon.send("R").reason is StopReason.RESET
    assert mon.boot() == "boot\n"
    assert mon.read32(csr) & rm.RCC_CSR_RESET_FLAGS == rm.RCC_CSR_SFTRSTF | rm.RCC_CSR_PINRSTF


def test_rcc_peripheral_reset_line_resets_the_usart(mon: Monitor):
    chip = mon.chip
    chip.poke(RCC + rm.RCC_APB1ENR, rm.RCC_APB1ENR_USART2EN)
    chip.poke(rm.USART2_BASE + rm.USART_CR1, rm.USART_CR1_UE)
    chip.poke(RCC + rm.RCC_APB1RSTR, 1 << 17)
    chip.poke(RCC + rm.RCC_APB1RSTR, 0)
    assert chip.peek(rm.USART2_BASE + rm.USART_CR1) == 0
