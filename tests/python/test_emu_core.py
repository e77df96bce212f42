"""Cortex-M4 core peripherals of the model: SysTick, SCB (CPACR, AIRCR, VTOR), DWT, NVIC."""

from __future__ import annotations

import pytest

from emu_programs.harness import Monitor, monitor_chip, program
from otakey.emu import DeviceError, StopReason
from otakey.emu import rm0090 as rm
from otakey.emu.core_periph import SysTick

SCS = rm.SCS_BASE
CSR = SCS + rm.SYST_CSR
CPACR = SCS + rm.SCB_CPACR
FPU_ON = 0xF << rm.SCB_CPACR_CP10_POS


@pytest.fixture(scope="module")
def elf(tmp_path_factory: pytest.TempPathFactory):
    return program(tmp_path_factory, "monitor").elf


@pytest.fixture
def mon(elf) -> Monitor:
    return monitor_chip(elf)


def systick_loops(mon: Monitor, reload: int) -> int:
    return int(mon.cmd(f"T {reload:X}").split("=")[1], 16)


def test_systick_countflag_comes_after_reload_plus_one_cycles(mon: Monitor):
    short = systick_loops(mon, 999)
    long = systick_loops(mon, 1999)
    assert short > 50
    assert abs(long - 2 * short) <= 1  # twice the period, twice the polls
    assert systick_loops(mon, 999) == short  # reproducible to the iteration


def test_systick_countflag_clears_on_read_and_on_cvr_write(mon: Monitor):
    chip = mon.chip
    chip.poke(SCS + rm.SYST_RVR, 99)
    chip.poke(SCS + rm.SYST_CVR, 0)
    chip.poke(CSR, rm.SYST_CSR_ENABLE | rm.SYST_CSR_CLKSOURCE)
    chip.run(max_instructions=101, until_idle=False)
    assert chip.peek(CSR) & rm.SYST_CSR_COUNTFLAG
    assert not chip.peek(CSR) & rm.SYST_CSR_COUNTFLAG
    chip.run(max_instructions=100, until_idle=False)
    chip.poke(SCS + rm.SYST_CVR, 5)
    assert chip.peek(SCS + rm.SYST_CVR) == 0
    assert not chip.peek(CSR) & rm.SYST_CSR_COUNTFLAG


def test_systick_hclk_div8_counts_eight_times_slower(mon: Monitor):
    chip = mon.chip
    chip.poke(SCS + rm.SYST_RVR, 99)
    chip.poke(SCS + rm.SYST_CVR, 0)
    chip.poke(CSR, rm.SYST_CSR_ENABLE)  # CLKSOURCE = 0: HCLK/8 on STM32F4
    chip.run(max_instructions=400, until_idle=False)
    assert not chip.peek(CSR) & rm.SYST_CSR_COUNTFLAG
    chip.run(max_instructions=500, until_idle=False)
    assert chip.peek(CSR) & rm.SYST_CSR_COUNTFLAG


def test_systick_model_counts_down_and_wraps_to_reload():
    tick = SysTick()
    tick.rvr = 9
    tick.csr = rm.SYST_CSR_ENABLE | rm.SYST_CSR_CLKSOURCE
    tick.value, tick.at = 5, 100
    assert tick.read(rm.SYST_CVR, 103) == 2 and not tick.flag
    assert tick.read(rm.SYST_CVR, 105) == 0 and tick.flag  # 1 -> 0 sets COUNTFLAG
    assert tick.read(rm.SYST_CSR, 106) & rm.SYST_CSR_COUNTFLAG
    assert tick.read(rm.SYST_CVR, 106) == 9  # reloaded on the tick after 0
    assert tick.read(rm.SYST_CVR, 106 + 10 * 3) == 9
    assert tick.read(rm.SYST_CSR, 106 + 10 * 3) & rm.SYST_CSR_COUNTFLAG


def test_cpacr_off_makes_a_float_instruction_fault(mon: Monitor):
    result = mon.send("F")
    assert result.reason is StopReason.FAULT
    assert "NOCP" in result.detail and "0x0800" in result.detail
    assert mon.uart.read() == b""
    assert mon.chip.run().reason is StopReason.FAULT  # stays faulted until reset
    mon.chip.reset()
    assert mon.boot() == "boot\n"


def test_cpacr_full_access_lets_float_instructions_run(mon: Monitor):
    mon.write(4, CPACR, FPU_ON)
    assert mon.read32(CPACR) == FPU_ON
    assert mon.cmd("F") == "f=40400000"  # 1.5 + 1.5
    mon.write(4, CPACR, 0)
    assert mon.send("F").reason is StopReason.FAULT


def test_cpacr_with_only_cp10_enabled_still_faults(mon: Monitor):
    mon.write(4, CPACR, 0x3 << rm.SCB_CPACR_CP10_POS)
    assert mon.send("F").reason is StopReason.FAULT


def test_scb_cpuid_is_cortex_m4_r0p1(mon: Monitor):
    assert mon.read32(SCS + rm.SCB_CPUID) == 0x410F_C241


def test_scb_vtor_keeps_table_offset_bits(mon: Monitor):
    mon.write(4, SCS + rm.SCB_VTOR, 0x0800_4010)
    assert mon.read32(SCS + rm.SCB_VTOR) == 0x0800_4000


def test_aircr_without_vectkey_is_ignored_and_with_it_resets(mon: Monitor):
    aircr = SCS + rm.SCB_AIRCR
    assert mon.read32(aircr) >> 16 == 0xFA05
    mon.write(4, aircr, rm.SCB_AIRCR_SYSRESETREQ)
    assert mon.cmd("X 1").startswith("x=")  # still running the same boot
    result = mon.send("R")
    assert result.reason is StopReason.RESET
    assert mon.boot() == "boot\n"


def test_dwt_cyccnt_counts_cycles_only_with_trcena(mon: Monitor):
    cyccnt = rm.DWT_BASE + rm.DWT_CYCCNT
    mon.write(4, rm.DWT_BASE + rm.DWT_CTRL, rm.DWT_CTRL_RESET | rm.DWT_CTRL_CYCCNTENA)
    assert mon.read32(cyccnt) == mon.read32(cyccnt) == 0  # TRCENA clear: stopped
    mon.write(4, SCS + rm.COREDEBUG_DEMCR, rm.COREDEBUG_DEMCR_TRCENA)
    first = mon.read32(cyccnt)
    second = mon.read32(cyccnt)
    assert mon.last is not None
    # The two reads sit at the same point of two identical commands: one command apart.
    assert second - first == mon.last.executed


def test_nvic_registers_are_storage(mon: Monitor):
    mon.write(4, SCS + rm.NVIC_ISER0, 1 << 5)
    assert mon.read32(SCS + rm.NVIC_ISER0) == 1 << 5
    mon.write(4, SCS + rm.NVIC_IPR0, 0xF0E0_D0C0)
    assert mon.read32(SCS + rm.NVIC_IPR0) == 0xF0E0_D0C0


def test_pending_an_exception_is_reported_as_unmodelled(mon: Monitor):
    mon.uart.write(b"w4 E000ED04 10000000\n")  # ICSR.PENDSVSET
    with pytest.raises(DeviceError, match="unmodelled"):
        mon.chip.run()
    report = mon.chip.reports[-1]
    assert (report.device, report.address, report.access) == ("SCS", 0xE000_ED04, "w")
