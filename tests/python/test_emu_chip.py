"""Chip-level behaviour of the STM32F429 model: loading, memory map, faults, idle, power cuts,
determinism."""

from __future__ import annotations

import struct

import pytest

from emu_programs.harness import Monitor, monitor_chip, program
from otakey.emu import DeviceError, PowerCut, Stm32f429, StopReason
from otakey.emu import rm0090 as rm
from otakey.emu.bus import IDLE_POLLS, Bus, StopKind
from otakey.emu.cpu import find_fp_instruction

SECTOR1 = 0x0800_4000
SECTOR13 = 0x0810_4000
WORDS = 16  # flashcycle.c PATTERN_WORDS


@pytest.fixture(scope="module")
def monitor_elf(tmp_path_factory: pytest.TempPathFactory):
    return program(tmp_path_factory, "monitor").elf


@pytest.fixture(scope="module")
def cycle(tmp_path_factory: pytest.TempPathFactory):
    return program(tmp_path_factory, "flashcycle")


@pytest.fixture(scope="module")
def compute_elf(tmp_path_factory: pytest.TempPathFactory):
    return program(tmp_path_factory, "compute_short").elf


def pattern(i: int) -> int:
    return ((i * 0x0101_0101) ^ 0xA5A5_A5A5) & 0xFFFF_FFFF


def new_chip(seed: int = 1, name: str = "dut") -> Stm32f429:
    return Stm32f429(name, seed=seed, strict=True)


def run_cycle(chip: Stm32f429) -> bytes:
    result = chip.run(max_instructions=5_000_000)
    assert result.reason is StopReason.IDLE, result
    return chip.uart(1).read()


def raw_image(chip: Stm32f429, code: list[int]) -> None:
    """Vector table (SP = 0x2000_1000, reset -> 0x0800_4000) plus Thumb half-words in sector 1."""
    chip.write_flash(rm.FLASH_BASE, struct.pack("<II", 0x2000_1000, SECTOR1 | 1))
    chip.write_flash(SECTOR1, struct.pack(f"<{len(code)}H", *code))
    chip.power_on()


# --- loading and the memory map ------------------------------------------------------------------
def test_load_elf_takes_entry_and_vectors_from_the_elf(cycle):
    chip = new_chip()
    image = chip.load_elf(cycle.elf)
    assert image.vector_table == rm.FLASH_BASE
    assert image.entry & ~1 == cycle.symbol("Reset_Handler") & ~1
    assert image.initial_sp == rm.SRAM_BASE + rm.SRAM_SIZE
    assert chip.powered and chip.fault is None


def test_load_elf_rejects_a_non_arm_elf(tmp_path):
    with pytest.raises(ValueError, match="not a 32-bit little-endian ARM ELF"):
        new_chip().load_elf("/bin/true")


def test_uid_is_per_device_and_read_by_firmware(monitor_elf):
    uid = bytes(range(0xA0, 0xAC))
    mon = monitor_chip(monitor_elf, uid=uid)
    words = [mon.read32(rm.UID_BASE + 4 * i) for i in range(3)]
    assert struct.pack("<3I", *words) == uid
    assert mon.value(f"r2 {rm.FLASHSIZE_BASE:08X}") == 2048
    other = monitor_chip(monitor_elf, name="other", uid=bytes(12))
    assert other.read32(rm.UID_BASE) == 0


def test_unmodelled_peripheral_access_is_reported_with_pc_and_fatal_in_strict_mode(monitor_elf):
    mon = monitor_chip(monitor_elf)
    mon.uart.write(b"r4 40013000\n")  # SPI1: not modelled
    with pytest.raises(DeviceError, match=r"unmodelled access r 4B @0x40013000"):
        mon.chip.run()
    report = mon.chip.reports[-1]
    assert (report.kind, report.address, report.size, report.access) == ("unmodelled", 0x4001_3000, 4, "r")
    assert rm.FLASH_BASE <= report.pc < rm.FLASH_BASE + 0x4000
    assert mon.chip.run().reason is StopReason.FAULT


def test_unmapped_address_is_reported_and_fatal_in_strict_mode(monitor_elf):
    mon = monitor_chip(monitor_elf)
    mon.uart.write(b"w2 30000000 1\n")
    with pytest.raises(DeviceError, match="no memory or peripheral here"):
        mon.chip.run()
    report = mon.chip.reports[-1]
    assert (report.address, report.size, report.access, report.value) == (0x3000_0000, 2, "w", 1)


def test_unmodelled_register_inside_a_modelled_peripheral_is_reported(monitor_elf):
    mon = monitor_chip(monitor_elf)
    with pytest.raises(DeviceError, match="FLASH: unmodelled"):
        mon.chip.peek(rm.FLASH_R_BASE + 0x40)


def test_ccm_ram_is_data_only(tmp_path):
    chip = new_chip()
    # movs r0,#0x10; lsls r0,r0,#24; adds r0,#1; bx r0  -> jump into CCM RAM
    raw_image(chip, [0x2010, 0x0600, 0x3001, 0x4700])
    result = chip.run(max_instructions=100)
    assert result.reason is StopReason.FAULT
    assert "data-only" in result.detail


def test_breakpoint_instruction_is_a_fault(tmp_path):
    chip = new_chip()
    raw_image(chip, [0xBF00, 0xBE01])  # nop; bkpt #1
    result = chip.run(max_instructions=100)
    assert result.reason is StopReason.FAULT and "BKPT" in result.detail


def test_reset_vector_without_thumb_bit_faults_at_boot():
    chip = new_chip()
    chip.write_flash(rm.FLASH_BASE, struct.pack("<II", 0x2000_1000, SECTOR1))
    chip.power_on()
    assert chip.run().reason is StopReason.FAULT
    assert "Thumb bit" in (chip.fault or "")


def test_host_change_to_flash_code_is_seen_by_the_running_core():
    chip = new_chip()
    # movs r1,#0x20; lsls r1,r1,#24; loop: movs r0,#0x11; str r0,[r1]; b loop
    raw_image(chip, [0x2120, 0x0609, 0x2011, 0x6008, 0xE7FC])
    chip.run(max_instructions=50, until_idle=False)
    assert chip.peek(rm.SRAM_BASE) == 0x11
    chip.write_flash(SECTOR1 + 4, struct.pack("<H", 0x2022))  # movs r0,#0x22
    chip.run(max_instructions=50, until_idle=False)
    assert chip.peek(rm.SRAM_BASE) == 0x22


def test_flash_store_inside_it_block_does_not_disturb_following_code():
    chip = new_chip()
    raw_image(chip, [
        0x2120, 0x0609,  # movs r1,#0x20; lsls r1,r1,#24      r1 = SRAM
        0x2208, 0x0612, 0x2340, 0x021B, 0x431A,  # r2 = 0x0800_4000 (flash, locked)
        0x4280, 0xBF04,  # cmp r0,r0; itt eq
        0x6010, 0x6008,  # streq r0,[r2] (-> PGSERR); streq r0,[r1]
        0x2601, 0xE7FF,  # movs r6,#1 (Z=0); b next: a new translated block starts here
        0x2555, 0x604D,  # movs r5,#0x55; str r5,[r1,#4]   (unconditional: must run)
        0xE7FE,  # b .
    ])
    chip.run(max_instructions=30, until_idle=False)
    assert chip.peek(rm.SRAM_BASE + 4) == 0x55
    assert chip.peek(rm.FLASH_R_BASE + rm.FLASH_SR) == rm.FLASH_SR_PGSERR


def test_fp_instruction_finder_knows_thumb2_vfp_encodings():
    code = bytes.fromhex("00bf" "4ff00000" "00ee101a" "30ee000a")  # nop; mov.w; vmov; vadd
    assert find_fp_instruction(code, 0x100) == 0x106
    assert find_fp_instruction(bytes.fromhex("00bf4ff00000"), 0) is None
    assert find_fp_instruction(bytes.fromhex("9fed000a"), 0) == 0  # vldr s0, [pc]


# --- running, budget, idle, wfi ------------------------------------------------------------------
def test_run_stops_exactly_at_the_instruction_budget(compute_elf):
    chip = new_chip()
    chip.load_elf(compute_elf)
    result = chip.run(max_instructions=12_345)
    assert (result.reason, result.executed, chip.instructions) == (StopReason.BUDGET, 12_345, 12_345)
    result = chip.run(max_instructions=1)
    assert (result.executed, chip.instructions, chip.cycles) == (1, 12_346, 12_346)


def test_budget_inside_an_it_block_ends_after_the_block_and_counts_stay_true():
    # loop: cmp r0,r0; itttt eq; addeq r1,#1 (x4); str r1,[r2]; b loop   (r2 = SRAM)
    code = [0x2220, 0x0612, 0x4280, 0xBF01, 0x3101, 0x3101, 0x3101, 0x3101, 0x6011, 0xE7F7]
    stepped = new_chip()
    raw_image(stepped, code)
    for _ in range(40):
        result = stepped.run(max_instructions=1, until_idle=False)
        assert 1 <= result.executed <= 5  # an IT block (up to 4 instructions) runs to its end
    whole = new_chip()
    raw_image(whole, code)
    result = whole.run(max_instructions=stepped.instructions, until_idle=False)
    assert result.executed == stepped.instructions
    assert whole.peek(rm.SRAM_BASE) == stepped.peek(rm.SRAM_BASE)  # same point of the same loop
    iterations, rest = divmod(stepped.instructions - 2, 8)
    assert whole.peek(rm.SRAM_BASE) == 4 * iterations + (4 if rest >= 7 else 0)


def test_run_returns_wfi_when_the_program_ends(compute_elf):
    chip = new_chip()
    chip.load_elf(compute_elf)
    result = chip.run()
    assert result.reason is StopReason.WFI
    assert chip.uart(1).read().startswith(b"result ")
    assert chip.run().reason is StopReason.WFI


def test_idle_device_is_parked_until_input_arrives(monitor_elf):
    mon = monitor_chip(monitor_elf)
    chip = mon.chip
    before = chip.instructions
    for _ in range(3):
        result = chip.run()
        assert (result.reason, result.executed) == (StopReason.IDLE, 0)
    assert chip.instructions == before
    assert mon.cmd("X 2").startswith("x=")
    # Without idle detection the same wait burns its whole budget.
    result = chip.run(max_instructions=1000, until_idle=False)
    assert (result.reason, result.executed) == (StopReason.BUDGET, 1000)


class _FakeCpu:
    running = True

    def __init__(self) -> None:
        self.t = 0
        self.stops: list[StopKind] = []

    def pc(self) -> int:
        return 0

    def now(self) -> int:
        return self.t

    def stop(self, kind: StopKind, detail: str = "", partial: bool = True) -> None:
        self.stops.append(kind)

    def invalidate_code(self, address: int, size: int) -> None:
        pass

    def set_fpu_enabled(self, enabled: bool) -> None:
        pass


def test_idle_detector_needs_consecutive_empty_polls_and_a_transmit_resets_it():
    bus = Bus("x", 0, strict=True)
    cpu = _FakeCpu()
    bus.cpu = cpu

    def empty_poll() -> None:
        bus.access_serial += 1  # the status read itself
        cpu.t += 4
        bus.rx_poll_empty()

    for _ in range(IDLE_POLLS - 1):
        empty_poll()
    bus.access_serial += 1  # a transmit (DR write) in between
    for _ in range(IDLE_POLLS - 1):
        empty_poll()
    assert cpu.stops == [] and not bus.parked
    empty_poll()
    assert cpu.stops == [StopKind.IDLE] and bus.parked
    bus.wake()
    assert not bus.parked


def test_idle_detector_ignores_polls_far_apart():
    bus = Bus("x", 0, strict=True)
    cpu = _FakeCpu()
    bus.cpu = cpu
    for _ in range(IDLE_POLLS * 3):
        bus.access_serial += 1
        cpu.t += 1000  # a main loop doing other work between status reads
        bus.rx_poll_empty()
    assert cpu.stops == []


# --- resets and power ----------------------------------------------------------------------------
def test_system_reset_keeps_sram_and_flash(cycle):
    chip = new_chip()
    chip.load_elf(cycle.elf)
    assert run_cycle(chip).startswith(b"ram=lost\n")
    chip.reset()
    out = run_cycle(chip)
    assert out.startswith(b"ram=kept\n") and b"done 00000000\n" in out
    assert chip.peek(cycle.symbol("boots")) == 1  # .bss zeroed again by the startup code
    assert chip.peek(cycle.symbol("initialised")) == 0x1234_ABCD  # .data loaded from flash


def test_flash_cycle_logs_every_erase_and_program_with_its_instruction(cycle):
    chip = new_chip()
    chip.load_elf(cycle.elf)
    assert b"done 00000000\n" in run_cycle(chip)
    ops = chip.flash_ops
    assert [op.index for op in ops] == list(range(1, 2 * (WORDS + 1) + 1))
    assert (ops[0].kind, ops[0].address, ops[0].sector) == ("erase", SECTOR1, 1)
    assert [(op.kind, op.address, op.value) for op in ops[1:WORDS + 1]] == [
        ("program", SECTOR1 + 4 * i, pattern(i)) for i in range(WORDS)]
    assert (ops[WORDS + 1].kind, ops[WORDS + 1].address, ops[WORDS + 1].sector) == ("erase", SECTOR13, 13)
    instructions = [op.instruction for op in ops]
    assert instructions == sorted(instructions) and len(set(instructions)) == len(instructions)
    assert chip.read_flash(SECTOR13, 4) == struct.pack("<I", ~pattern(0) & 0xFFFF_FFFF)


def test_power_cut_at_instruction_is_exact_and_loses_sram_but_keeps_flash(cycle):
    clean = new_chip()
    clean.load_elf(cycle.elf)
    run_cycle(clean)
    op = clean.flash_ops[5]  # a program store in sector 1
    for cut, applied in ((op.instruction - 1, False), (op.instruction, True)):
        chip = new_chip()
        chip.load_elf(cycle.elf)
        chip.cut_power_at_instruction(cut)
        with pytest.raises(PowerCut):
            chip.run(max_instructions=5_000_000)
        assert chip.instructions == cut and not chip.powered
        assert len(chip.flash_ops) == op.index - (0 if applied else 1)
        word = chip.read_flash(op.address, 4)
        assert word == (struct.pack("<I", op.value) if applied else b"\xff" * 4)
        chip.power_on()
        assert chip.read_flash(op.address, 4) == word  # flash survives the power cycle
        assert run_cycle(chip).startswith(b"ram=lost\n")  # SRAM does not
        with pytest.raises(DeviceError, match="powered off"):
            chip.cut_power()
            chip.run()


@pytest.mark.parametrize("torn", [None, "done"])
def test_power_cut_at_flash_op_before_or_after_it(cycle, torn):
    chip = new_chip()
    chip.load_elf(cycle.elf)
    chip.cut_power_at_flash_op(3, torn=torn)  # the second program store
    with pytest.raises(PowerCut):
        run_cycle(chip)
    assert chip.last_cut is not None and chip.last_cut.flash_op is not None
    assert chip.last_cut.flash_op.index == 3 and chip.last_cut.torn == torn
    assert chip.read_flash(SECTOR1, 4) == struct.pack("<I", pattern(0))
    second = chip.read_flash(SECTOR1 + 4, 4)
    assert second == (struct.pack("<I", pattern(1)) if torn == "done" else b"\xff" * 4)
    assert chip.instructions == chip.last_cut.flash_op.instruction - 1


def test_power_cut_during_erase_leaves_sector_partly_erased(cycle):
    chip = new_chip(seed=5)
    chip.load_elf(cycle.elf)
    chip.write_flash(SECTOR1, bytes(0x4000))  # all zero before the erase
    chip.cut_power_at_flash_op(1, torn="erase-partial")
    with pytest.raises(PowerCut, match="erase-partial"):
        run_cycle(chip)
    sector = chip.read_flash(SECTOR1, 0x4000)
    rows = {sector[i:i + 16] for i in range(0, 0x4000, 16)}
    assert rows == {b"\xff" * 16, bytes(16)}  # whole 128-bit rows: some erased, some not
    # Reproducible from the seed and the operation index.
    again = new_chip(seed=5)
    again.load_elf(cycle.elf)
    again.write_flash(SECTOR1, bytes(0x4000))
    again.cut_power_at_flash_op(1, torn="erase-partial")
    with pytest.raises(PowerCut):
        run_cycle(again)
    assert again.read_flash(SECTOR1, 0x4000) == sector
    chip.power_on()
    assert chip.read_flash(SECTOR1, 0x4000) == sector


def test_power_cut_during_program_leaves_only_some_bits_cleared(cycle):
    chip = new_chip()
    chip.load_elf(cycle.elf)
    chip.cut_power_at_flash_op(2, torn="program-partial")
    with pytest.raises(PowerCut):
        run_cycle(chip)
    (word,) = struct.unpack("<I", chip.read_flash(SECTOR1, 4))
    target = pattern(0)
    assert word & target == target  # no bit went to 0 that the program keeps at 1
    assert word not in (target, 0xFFFF_FFFF)


def test_torn_kind_that_does_not_match_the_operation_cuts_before_it(cycle):
    chip = new_chip()
    chip.load_elf(cycle.elf)
    chip.cut_power_at_flash_op(1, torn="program-partial")  # op 1 is an erase
    with pytest.raises(PowerCut):
        run_cycle(chip)
    assert chip.last_cut is not None and chip.last_cut.torn is None
    assert chip.read_flash(SECTOR1, 4) == b"\xff" * 4


def test_cut_at_a_flash_op_already_past_is_refused(cycle):
    chip = new_chip()
    chip.load_elf(cycle.elf)
    run_cycle(chip)
    with pytest.raises(ValueError):
        chip.cut_power_at_flash_op(1)
    with pytest.raises(ValueError):
        chip.cut_power_at_flash_op(len(chip.flash_ops) + 1, torn="half")


# --- determinism ---------------------------------------------------------------------------------
def _scenario(cycle, monitor_elf, seed: int) -> tuple:
    chip = new_chip(seed=seed)
    chip.load_elf(cycle.elf)
    out = run_cycle(chip)
    chip.cut_power_at_flash_op(len(chip.flash_ops) + 7, torn="partial")
    chip.reset()
    with pytest.raises(PowerCut):
        run_cycle(chip)
    chip.power_on()
    out += run_cycle(chip)
    mon = Monitor(chip)
    chip.load_elf(monitor_elf)
    out += mon.boot().encode()
    assert mon.value("C") == 0
    out += mon.cmd("G 4").encode() + mon.cmd("T 3E7").encode()
    return (chip.instructions, chip.flash_image(), [tuple(vars(op).values()) for op in chip.flash_ops], out)


def test_same_image_seed_and_cut_give_identical_runs(cycle, monitor_elf):
    first = _scenario(cycle, monitor_elf, seed=11)
    second = _scenario(cycle, monitor_elf, seed=11)
    assert first[0] == second[0]
    assert first[1] == second[1]
    assert first[2] == second[2]
    assert first[3] == second[3]
    other = _scenario(cycle, monitor_elf, seed=12)
    assert other[3] != first[3]  # the RNG words differ with the seed
