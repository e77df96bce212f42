"""RNG of the STM32F429 model (RM0090 §24)."""

from __future__ import annotations

import pytest

from emu_programs.harness import Monitor, monitor_chip, program
from otakey.emu import DeviceError
from otakey.emu import rm0090 as rm

SR = rm.RNG_BASE + rm.RNG_SR
CR = rm.RNG_BASE + rm.RNG_CR
DR = rm.RNG_BASE + rm.RNG_DR


@pytest.fixture(scope="module")
def elf(tmp_path_factory: pytest.TempPathFactory):
    return program(tmp_path_factory, "monitor").elf


def clocked(elf, seed: int = 1) -> Monitor:
    mon = monitor_chip(elf, seed=seed)
    assert mon.value("C") == 0
    return mon


def words(mon: Monitor, n: int) -> list[tuple[int, int]]:
    """(SR, DR) pairs as the firmware saw them."""
    lines = mon.cmd(f"G {n:X}").splitlines()
    return [(int(a, 16), int(b, 16)) for a, b in (line.split() for line in lines)]


def test_rng_gives_fresh_words_with_drdy(elf):
    got = words(clocked(elf), 8)
    assert all(sr == rm.RNG_SR_DRDY for sr, _ in got)
    values = [dr for _, dr in got]
    assert len(set(values)) == 8


def test_rng_stream_is_reproducible_per_seed_and_differs_across_seeds_and_boots(elf):
    first = words(clocked(elf, seed=7), 4)
    again = words(clocked(elf, seed=7), 4)
    other = words(clocked(elf, seed=8), 4)
    assert first == again
    assert first != other
    mon = clocked(elf, seed=7)
    mon.chip.reset()
    assert mon.boot() == "boot\n"
    assert mon.value("C") == 0
    assert words(mon, 4) != first  # every boot draws a new stream


def test_rng_without_pll_reports_clock_error(elf):
    mon = monitor_chip(elf)
    (sr, _), = words(mon, 1)
    assert sr == rm.RNG_SR_CECS | rm.RNG_SR_CEIS


def test_rng_dr_read_without_drdy_repeats_previous_value(elf):
    mon = clocked(elf)
    (_, last), = words(mon, 1)
    assert mon.read32(DR) == last  # DRDY was clear: DR unchanged


def test_rng_seed_error_stops_generation_until_seis_cleared_and_restart(elf):
    mon = clocked(elf)
    words(mon, 1)
    mon.chip.rng.inject_seed_error()
    (sr, _), = words(mon, 1)
    assert sr == rm.RNG_SR_SECS | rm.RNG_SR_SEIS
    # Restarting without clearing SEIS first does not recover.
    mon.write(4, CR, 0)
    mon.write(4, CR, rm.RNG_CR_RNGEN)
    assert mon.read32(SR) & rm.RNG_SR_SECS
    # RM0090 §24.3.2: clear SEIS, then clear and set RNGEN.
    mon.write(4, SR, ~rm.RNG_SR_SEIS & 0xFF)
    mon.write(4, CR, 0)
    mon.write(4, CR, rm.RNG_CR_RNGEN)
    (sr, _), = words(mon, 1)
    assert sr == rm.RNG_SR_DRDY


def test_rng_clock_error_sets_cecs_while_it_lasts_and_ceis_until_written_zero(elf):
    mon = clocked(elf)
    words(mon, 1)
    mon.chip.rng.inject_clock_error()
    assert mon.read32(SR) & (rm.RNG_SR_CECS | rm.RNG_SR_CEIS) == rm.RNG_SR_CECS | rm.RNG_SR_CEIS
    mon.chip.rng.inject_clock_error(False)
    sr = mon.read32(SR)
    assert not sr & rm.RNG_SR_CECS and sr & rm.RNG_SR_CEIS
    mon.write(4, SR, ~rm.RNG_SR_CEIS & 0xFF)
    assert not mon.read32(SR) & rm.RNG_SR_CEIS


def test_rng_clocked_above_48mhz_is_a_spec_violation_in_strict_mode(elf):
    mon = monitor_chip(elf)
    rcc = rm.RCC_BASE
    # HSE 8 MHz / 8 * 360 = 360 MHz VCO; PLLQ = 7 gives PLL48CLK = 51.4 MHz (ST's example value).
    mon.write(4, rcc + rm.RCC_CR, rm.RCC_CR_HSION | rm.RCC_CR_HSEON)
    mon.write(4, rcc + rm.RCC_PLLCFGR, rm.RCC_PLLCFGR_PLLSRC_HSE | 8 | (360 << 6) | (7 << 24))
    mon.write(4, rcc + rm.RCC_CR, rm.RCC_CR_HSION | rm.RCC_CR_HSEON | rm.RCC_CR_PLLON)
    mon.uart.write(b"G 1\n")
    with pytest.raises(DeviceError, match="PLL48CLK 51428571 Hz"):
        mon.chip.run()
