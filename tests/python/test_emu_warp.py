"""SysTick time warp: periods that pass without executing them, seen one COUNTFLAG per CSR read."""

from __future__ import annotations

import pytest

from emu_programs.harness import Monitor, monitor_chip, program
from otakey.emu import StopReason
from otakey.emu import rm0090 as rm
from otakey.emu.core_periph import SysTick

SCS = rm.SCS_BASE
CSR = SCS + rm.SYST_CSR
RUNNING = rm.SYST_CSR_ENABLE | rm.SYST_CSR_CLKSOURCE


@pytest.fixture(scope="module")
def elf(tmp_path_factory: pytest.TempPathFactory):
    return program(tmp_path_factory, "monitor").elf


@pytest.fixture
def mon(elf) -> Monitor:
    return monitor_chip(elf)


def test_systick_warp_gives_one_countflag_per_csr_read():
    tick = SysTick()
    tick.write(rm.SYST_RVR, 999, 0)
    tick.write(rm.SYST_CSR, RUNNING, 0)
    assert tick.warp(3) == 3 * 1000
    flags = [bool(tick.read(rm.SYST_CSR, 10) & rm.SYST_CSR_COUNTFLAG) for _ in range(5)]
    assert flags == [True, True, True, False, False]
    assert tick.warp_pending == 0


def test_systick_warp_counts_eight_times_the_cycles_at_hclk_div8():
    tick = SysTick()
    tick.write(rm.SYST_RVR, 99, 0)
    tick.write(rm.SYST_CSR, rm.SYST_CSR_ENABLE, 0)  # CLKSOURCE = 0: HCLK/8
    assert tick.warp(2) == 2 * 100 * 8


def test_systick_warp_while_stopped_does_nothing():
    tick = SysTick()
    tick.write(rm.SYST_RVR, 999, 0)
    assert tick.warp(5) == 0
    tick.write(rm.SYST_CSR, RUNNING, 0)
    assert not tick.read(rm.SYST_CSR, 1) & rm.SYST_CSR_COUNTFLAG


def test_systick_cvr_write_drops_the_periods_not_yet_seen():
    tick = SysTick()
    tick.write(rm.SYST_RVR, 999, 0)
    tick.write(rm.SYST_CSR, RUNNING, 0)
    tick.warp(4)
    assert tick.read(rm.SYST_CSR, 1) & rm.SYST_CSR_COUNTFLAG
    tick.write(rm.SYST_CVR, 0, 2)
    assert tick.warp_pending == 0
    assert not tick.read(rm.SYST_CSR, 3) & rm.SYST_CSR_COUNTFLAG


def test_chip_warp_keeps_the_core_awake_until_the_firmware_saw_every_period(mon: Monitor):
    chip = mon.chip
    # A long period, so that no real wrap happens during the test.
    chip.poke(SCS + rm.SYST_RVR, 0xFFFFFF)
    chip.poke(SCS + rm.SYST_CVR, 0)
    chip.poke(CSR, RUNNING)
    assert chip.run(max_instructions=1_000_000).reason is StopReason.IDLE  # parked on its UART
    before = chip.instructions
    assert chip.warp(3) == 3 * 0x1000000
    assert chip.warped_cycles == 3 * 0x1000000
    assert chip.device_cycles == chip.instructions + chip.warped_cycles
    # The monitor polls only its UART, never SysTick: the pending periods keep it from parking.
    assert chip.run(max_instructions=200_000).reason is StopReason.BUDGET
    assert chip.instructions - before == 200_000
    # Each CSR read (here the debugger's, with the read's side effect) sees one warped period.
    flags = [bool(chip.peek(CSR) & rm.SYST_CSR_COUNTFLAG) for _ in range(4)]
    assert flags == [True, True, True, False]
    assert chip.warp_pending == 0
    assert chip.run(max_instructions=1_000_000).reason is StopReason.IDLE  # parks again at once


def test_chip_cancel_warp_forgets_unseen_periods_and_their_cycles(mon: Monitor):
    chip = mon.chip
    chip.poke(SCS + rm.SYST_RVR, 999)
    chip.poke(CSR, RUNNING)
    chip.warp(10)
    assert chip.cancel_warp() == 10
    assert chip.warped_cycles == 0
    assert chip.run(max_instructions=1_000_000).reason is StopReason.IDLE
