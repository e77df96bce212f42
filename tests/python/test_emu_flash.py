"""FLASH interface of the STM32F429 model (RM0090 §3), driven by the CPU through the monitor."""

from __future__ import annotations

import itertools

import pytest

from emu_programs.harness import Monitor, monitor_chip, program
from otakey.emu import DeviceError, StopReason
from otakey.emu import rm0090 as rm

CR = rm.FLASH_R_BASE + rm.FLASH_CR
SR = rm.FLASH_R_BASE + rm.FLASH_SR
KEYR = rm.FLASH_R_BASE + rm.FLASH_KEYR
SECTOR1 = 0x0800_4000
PG_X8 = rm.FLASH_CR_PG | (rm.FLASH_PSIZE_X8 << rm.FLASH_CR_PSIZE_POS)
PG_X32 = rm.FLASH_CR_PG | (rm.FLASH_PSIZE_X32 << rm.FLASH_CR_PSIZE_POS)
PG_X64 = rm.FLASH_CR_PG | (rm.FLASH_PSIZE_X64 << rm.FLASH_CR_PSIZE_POS)


@pytest.fixture(scope="module")
def elf(tmp_path_factory: pytest.TempPathFactory):
    return program(tmp_path_factory, "monitor").elf


@pytest.fixture
def mon(elf) -> Monitor:
    return monitor_chip(elf)


@pytest.fixture
def unlocked(mon: Monitor) -> Monitor:
    assert mon.value("U") == 0
    return mon


def wait_sr(mon: Monitor) -> int:
    """Poll FLASH_SR from the CPU until BSY clears, as a driver does; returns the final SR."""
    while (sr := mon.read32(SR)) & rm.FLASH_SR_BSY:
        pass
    return sr


def fill_flash(mon: Monitor, byte: int) -> None:
    """Make every sector except sector 0 (the program) hold ``byte``, from the host."""
    mon.chip.write_flash(rm.FLASH_BASE + 0x4000, bytes([byte]) * (rm.FLASH_SIZE - 0x4000))


def test_flash_sector_table_covers_both_banks_contiguously():
    sectors = rm.FLASH_SECTORS
    assert len(sectors) == 24
    assert sectors[0].address == rm.FLASH_BASE and sectors[-1].end == rm.FLASH_BASE + rm.FLASH_SIZE
    assert all(a.end == b.address for a, b in itertools.pairwise(sectors))
    sizes_kb = [s.size // 1024 for s in sectors]
    assert sizes_kb == ([16] * 4 + [64] + [128] * 7) * 2
    assert sectors[12].address == rm.FLASH_BANK2_BASE and sectors[12].snb == 16
    assert [s.snb for s in sectors] == list(range(12)) + list(range(16, 28))


def test_flash_cr_is_locked_after_reset_and_unlocks_with_key_sequence(mon: Monitor):
    assert mon.read32(CR) == rm.FLASH_CR_LOCK
    assert mon.value("U") == 0
    mon.write(4, CR, rm.FLASH_CR_LOCK)
    assert mon.read32(CR) & rm.FLASH_CR_LOCK


def test_flash_cr_ignores_writes_while_locked(mon: Monitor):
    mon.write(4, CR, PG_X32)
    assert mon.read32(CR) == rm.FLASH_CR_LOCK


def test_flash_wrong_key_is_bus_error_and_locks_until_reset(mon: Monitor):
    mon.uart.write(b"K 11111111\n")
    result = mon.chip.run()
    assert result.reason is StopReason.FAULT
    assert "FLASH_KEYR" in result.detail
    assert any(r.kind == "bus-error" and r.address == KEYR for r in mon.chip.reports)
    # The right sequence no longer unlocks: every key write is refused until a reset.
    with pytest.raises(DeviceError, match="FLASH_KEYR"):
        mon.chip.poke(KEYR, rm.FLASH_KEY1)
    assert mon.chip.peek(CR) & rm.FLASH_CR_LOCK
    mon.chip.reset()
    assert mon.boot() == "boot\n"
    assert mon.value("U") == 0


def test_flash_keys_in_wrong_order_fault(mon: Monitor):
    mon.uart.write(b"K CDEF89AB\n")
    assert mon.chip.run().reason is StopReason.FAULT
    assert mon.chip.peek(CR) & rm.FLASH_CR_LOCK


def test_flash_key_written_while_unlocked_is_bus_error(unlocked: Monitor):
    unlocked.uart.write(b"K 45670123\n")
    assert unlocked.chip.run().reason is StopReason.FAULT
    assert unlocked.chip.peek(CR) & rm.FLASH_CR_LOCK


def test_flash_program_clears_bits_only_and_sets_no_error(unlocked: Monitor):
    assert unlocked.value("E 1") == 0
    assert unlocked.value(f"P {SECTOR1:08X} 12345678") == 0
    assert unlocked.read32(SECTOR1) == 0x1234_5678
    # 0->1 transitions are impossible without an erase: the cell becomes old AND new.
    assert unlocked.value(f"P {SECTOR1:08X} FFFF00FF") == 0
    assert unlocked.read32(SECTOR1) == 0x1234_0078
    assert unlocked.read32(SR) == 0


def test_flash_store_with_pg_clear_sets_pgserr_and_changes_nothing(unlocked: Monitor):
    before = unlocked.chip.read_flash(SECTOR1, 4)
    unlocked.write(4, SECTOR1, 0)
    assert unlocked.read32(SR) == rm.FLASH_SR_PGSERR
    assert unlocked.chip.read_flash(SECTOR1, 4) == before
    assert unlocked.chip.flash_ops == []


def test_flash_store_while_locked_sets_pgserr(mon: Monitor):
    mon.write(4, SECTOR1, 0)
    assert mon.read32(SR) == rm.FLASH_SR_PGSERR
    assert mon.chip.read_flash(SECTOR1, 4) == b"\xff" * 4


def test_flash_store_size_other_than_psize_sets_pgperr(unlocked: Monitor):
    unlocked.write(4, CR, PG_X32)
    unlocked.write(1, SECTOR1, 0x00)
    assert unlocked.read32(SR) == rm.FLASH_SR_PGPERR
    unlocked.write(4, SR, rm.FLASH_SR_PGPERR)
    unlocked.write(2, SECTOR1, 0x0000)
    assert unlocked.read32(SR) == rm.FLASH_SR_PGPERR
    assert unlocked.chip.read_flash(SECTOR1, 4) == b"\xff" * 4


def test_flash_misaligned_word_store_sets_pgaerr(unlocked: Monitor):
    unlocked.write(4, CR, PG_X32)
    unlocked.write(4, SECTOR1 + 2, 0)
    assert unlocked.read32(SR) == rm.FLASH_SR_PGAERR
    assert unlocked.chip.read_flash(SECTOR1, 8) == b"\xff" * 8
    # The store that followed (replayed by the CPU engine as bytes) did not program anything.
    assert unlocked.chip.flash_ops == []


def test_flash_byte_program_with_x8(unlocked: Monitor):
    unlocked.write(4, CR, PG_X8)
    unlocked.write(1, SECTOR1 + 3, 0x5A)
    assert wait_sr(unlocked) == 0
    assert unlocked.chip.read_flash(SECTOR1, 4) == b"\xff\xff\xff\x5a"


def test_flash_x64_programs_a_double_word_as_one_operation(unlocked: Monitor):
    unlocked.write(4, CR, PG_X64)
    unlocked.write(4, SECTOR1 + 8, 0x1111_1111)
    assert unlocked.chip.flash_ops == []  # waits for the second word
    unlocked.write(4, SECTOR1 + 12, 0x2222_2222)
    assert wait_sr(unlocked) == 0
    assert unlocked.chip.read_flash(SECTOR1 + 8, 8) == bytes.fromhex("1111111122222222")
    ops = unlocked.chip.flash_ops
    assert [(op.kind, op.address, op.size) for op in ops] == [("program", SECTOR1 + 8, 8)]


def test_flash_x64_first_word_off_8_byte_boundary_sets_pgaerr(unlocked: Monitor):
    unlocked.write(4, CR, PG_X64)
    unlocked.write(4, SECTOR1 + 4, 0)
    assert unlocked.read32(SR) == rm.FLASH_SR_PGAERR


def test_flash_sr_error_flags_clear_by_writing_one(unlocked: Monitor):
    unlocked.write(4, SECTOR1, 0)  # PG clear: PGSERR
    unlocked.write(4, CR, PG_X32)
    unlocked.write(1, SECTOR1, 0)  # PGPERR
    assert unlocked.read32(SR) == rm.FLASH_SR_PGSERR | rm.FLASH_SR_PGPERR
    unlocked.write(4, SR, 0)  # writing 0 keeps them
    assert unlocked.read32(SR) == rm.FLASH_SR_PGSERR | rm.FLASH_SR_PGPERR
    unlocked.write(4, SR, rm.FLASH_SR_PGSERR | rm.FLASH_SR_BSY)
    assert unlocked.read32(SR) == rm.FLASH_SR_PGPERR


def test_flash_errie_adds_operr(unlocked: Monitor):
    unlocked.write(4, CR, PG_X32 | rm.FLASH_CR_ERRIE)
    unlocked.write(1, SECTOR1, 0)
    assert unlocked.read32(SR) == rm.FLASH_SR_PGPERR | rm.FLASH_SR_OPERR


def test_flash_bsy_lasts_some_status_reads_and_eop_needs_eopie(unlocked: Monitor):
    chip = unlocked.chip
    chip.poke(CR, PG_X32)
    chip.poke(SECTOR1, 0xAAAA_5555)
    assert chip.peek(SR) & rm.FLASH_SR_BSY
    while chip.peek(SR) & rm.FLASH_SR_BSY:
        pass
    assert chip.peek(SR) == 0  # no EOP without EOPIE
    chip.poke(CR, PG_X32 | rm.FLASH_CR_EOPIE)
    chip.poke(SECTOR1 + 4, 0x1234_5678)
    while chip.peek(SR) & rm.FLASH_SR_BSY:
        pass
    assert chip.peek(SR) == rm.FLASH_SR_EOP
    assert chip.read_flash(SECTOR1, 8) == bytes.fromhex("5555AAAA78563412")


@pytest.mark.parametrize("sector", rm.FLASH_SECTORS[1:], ids=lambda s: f"sector{s.number}")
def test_flash_sector_erase_by_snb_erases_exactly_that_sector(unlocked: Monitor, sector: rm.FlashSector):
    fill_flash(unlocked, 0x00)
    assert unlocked.value(f"E {sector.snb:X}") == 0
    image = unlocked.chip.flash_image()
    start, end = sector.address - rm.FLASH_BASE, sector.end - rm.FLASH_BASE
    assert image[start:end] == b"\xff" * sector.size
    assert image[0x4000:start].count(0) == start - 0x4000
    assert image[end:].count(0) == len(image) - end
    op = unlocked.chip.flash_ops[-1]
    assert (op.kind, op.address, op.size, op.sector) == ("erase", sector.address, sector.size, sector.number)


def test_flash_snb_16_erases_bank2_sector12_not_sector0(unlocked: Monitor):
    fill_flash(unlocked, 0x00)
    program_before = unlocked.chip.read_flash(rm.FLASH_BASE, 0x4000)
    assert unlocked.value("E 10") == 0
    assert unlocked.chip.read_flash(rm.FLASH_BANK2_BASE, 0x4000) == b"\xff" * 0x4000
    assert unlocked.chip.read_flash(rm.FLASH_BASE, 0x4000) == program_before


@pytest.mark.parametrize("snb", [12, 13, 14, 15, 28, 31])
def test_flash_erase_with_invalid_snb_sets_pgserr_and_erases_nothing(unlocked: Monitor, snb: int):
    fill_flash(unlocked, 0x00)
    assert unlocked.value(f"E {snb:X}") == rm.FLASH_SR_PGSERR
    assert unlocked.chip.flash_image()[0x4000:].count(0) == rm.FLASH_SIZE - 0x4000
    assert unlocked.chip.flash_ops == []


def test_flash_ser_with_mass_erase_bit_erases_nothing(unlocked: Monitor):
    fill_flash(unlocked, 0x00)
    unlocked.write(4, CR, rm.FLASH_CR_SER | rm.FLASH_CR_MER1 | (17 << rm.FLASH_CR_SNB_POS))
    unlocked.write(4, CR, rm.FLASH_CR_SER | rm.FLASH_CR_MER1 | (17 << rm.FLASH_CR_SNB_POS) | rm.FLASH_CR_STRT)
    assert unlocked.read32(SR) == rm.FLASH_SR_PGSERR
    assert unlocked.chip.flash_image()[0x4000:].count(0) == rm.FLASH_SIZE - 0x4000


def test_flash_mer1_erases_bank2_only(unlocked: Monitor):
    fill_flash(unlocked, 0x00)
    unlocked.write(4, CR, rm.FLASH_CR_MER1)
    unlocked.write(4, CR, rm.FLASH_CR_MER1 | rm.FLASH_CR_STRT)
    assert wait_sr(unlocked) == 0
    image = unlocked.chip.flash_image()
    assert image[rm.FLASH_BANK2_BASE - rm.FLASH_BASE:] == b"\xff" * (rm.FLASH_SIZE // 2)
    assert image[0x4000:rm.FLASH_SIZE // 2].count(0) == rm.FLASH_SIZE // 2 - 0x4000
    op = unlocked.chip.flash_ops[-1]
    assert (op.address, op.size, op.sector) == (rm.FLASH_BANK2_BASE, rm.FLASH_SIZE // 2, None)


def test_flash_write_protected_sector_refuses_erase_with_wrperr(unlocked: Monitor):
    chip = unlocked.chip
    optcr = rm.FLASH_R_BASE + rm.FLASH_OPTCR
    unlocked.write(4, rm.FLASH_R_BASE + rm.FLASH_OPTKEYR, rm.FLASH_OPT_KEY1)
    unlocked.write(4, rm.FLASH_R_BASE + rm.FLASH_OPTKEYR, rm.FLASH_OPT_KEY2)
    current = unlocked.read32(optcr)
    assert not current & rm.FLASH_OPTCR_OPTLOCK
    protect_sector1 = current & ~(1 << (rm.FLASH_OPTCR_NWRP_POS + 1))
    unlocked.write(4, optcr, protect_sector1 | rm.FLASH_OPTCR_OPTSTRT)
    fill_flash(unlocked, 0x00)
    assert unlocked.value("E 1") == rm.FLASH_SR_WRPERR
    assert chip.read_flash(SECTOR1, 16) == bytes(16)
    assert unlocked.value("E 2") == 0  # only sector 1 is protected
    # Option bytes are non-volatile: still protected after a power cycle.
    chip.cut_power()
    chip.power_on()
    assert unlocked.boot() == "boot\n"
    assert unlocked.value("U") == 0
    assert unlocked.value("E 1") == rm.FLASH_SR_WRPERR
    assert chip.peek(rm.OPTION_BYTES_BANK1 + 8, 2) & 0xFFF == 0xFFD
