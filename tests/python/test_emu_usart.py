"""USART1/USART2 of the STM32F429 model (RM0090 §30)."""

from __future__ import annotations

import pytest

from emu_programs.harness import Monitor, monitor_chip, program
from otakey.emu import DeviceError, StopReason
from otakey.emu import rm0090 as rm

U1 = rm.USART1_BASE
U2 = rm.USART2_BASE


@pytest.fixture(scope="module")
def elf(tmp_path_factory: pytest.TempPathFactory):
    return program(tmp_path_factory, "monitor").elf


@pytest.fixture
def mon(elf) -> Monitor:
    return monitor_chip(elf)


def enable_usart2(mon: Monitor, cr1: int) -> None:
    mon.chip.poke(rm.RCC_BASE + rm.RCC_APB1ENR, rm.RCC_APB1ENR_USART2EN)
    mon.chip.poke(U2 + rm.USART_BRR, 0x8B)
    mon.chip.poke(U2 + rm.USART_CR1, cr1)


def test_usart_status_register_resets_to_txe_tc(mon: Monitor):
    mon.chip.poke(rm.RCC_BASE + rm.RCC_APB1ENR, rm.RCC_APB1ENR_USART2EN)
    assert mon.chip.peek(U2 + rm.USART_SR) == rm.USART_SR_TXE | rm.USART_SR_TC
    assert mon.chip.peek(U2 + rm.USART_CR1) == 0


def test_usart_echo_returns_every_byte_in_order(mon: Monitor):
    payload = bytes(range(5, 256)) + b"\x00\x01\x02\x03"
    mon.uart.write(b"Y\n" + payload + b"\x04")
    result = mon.chip.run()
    assert result.reason is StopReason.IDLE
    assert mon.uart.read() == payload + b"\nend\n"


def test_usart_registers_hold_what_firmware_programmed(mon: Monitor):
    assert mon.read32(U1 + rm.USART_BRR) == 0x8B
    assert mon.read32(U1 + rm.USART_CR1) == rm.USART_CR1_UE | rm.USART_CR1_TE | rm.USART_CR1_RE
    mon.write(4, U1 + rm.USART_GTPR, 0x1234)
    assert mon.read32(U1 + rm.USART_GTPR) == 0x1234


def test_usart_byte_written_with_transmitter_off_waits_in_tdr(mon: Monitor):
    enable_usart2(mon, rm.USART_CR1_UE)
    mon.chip.poke(U2 + rm.USART_DR, ord("Z"))
    assert mon.chip.peek(U2 + rm.USART_SR) & (rm.USART_SR_TXE | rm.USART_SR_TC) == 0
    assert mon.chip.uart(2).read() == b""
    mon.chip.poke(U2 + rm.USART_CR1, rm.USART_CR1_UE | rm.USART_CR1_TE)
    assert mon.chip.uart(2).read() == b"Z"
    assert mon.chip.peek(U2 + rm.USART_SR) & rm.USART_SR_TXE


def test_usart_tc_and_rxne_clear_by_writing_zero(mon: Monitor):
    enable_usart2(mon, rm.USART_CR1_UE | rm.USART_CR1_TE | rm.USART_CR1_RE)
    mon.chip.uart(2).write(b"q")
    assert mon.chip.peek(U2 + rm.USART_SR) & rm.USART_SR_RXNE
    mon.chip.poke(U2 + rm.USART_SR, ~(rm.USART_SR_TC | rm.USART_SR_RXNE) & 0xFFFF)
    sr = mon.chip.peek(U2 + rm.USART_SR)
    assert sr & rm.USART_SR_TXE and not sr & (rm.USART_SR_TC | rm.USART_SR_RXNE)
    mon.chip.poke(U2 + rm.USART_DR, 0x41)
    assert mon.chip.peek(U2 + rm.USART_SR) & rm.USART_SR_TC  # set again once a frame went out


def test_usart_receive_sets_rxne_and_dr_read_clears_it(mon: Monitor):
    enable_usart2(mon, rm.USART_CR1_UE | rm.USART_CR1_RE)
    mon.chip.uart(2).write(b"ab")
    assert mon.chip.peek(U2 + rm.USART_SR) & rm.USART_SR_RXNE
    assert mon.chip.peek(U2 + rm.USART_DR) == ord("a")
    assert mon.chip.peek(U2 + rm.USART_DR) == ord("b")
    assert not mon.chip.peek(U2 + rm.USART_SR) & rm.USART_SR_RXNE
    assert mon.chip.peek(U2 + rm.USART_DR) == ord("b")  # RDR keeps the last byte


def test_usart_receiver_off_keeps_queued_bytes_until_enabled(mon: Monitor):
    enable_usart2(mon, rm.USART_CR1_UE)
    mon.chip.uart(2).write(b"x")
    assert not mon.chip.peek(U2 + rm.USART_SR) & rm.USART_SR_RXNE
    assert mon.chip.uart(2).pending == 1
    mon.chip.poke(U2 + rm.USART_CR1, rm.USART_CR1_UE | rm.USART_CR1_RE)
    assert mon.chip.peek(U2 + rm.USART_DR) == ord("x")


def test_usart_paced_bytes_overrun_while_firmware_computes(mon: Monitor):
    chip = mon.chip
    mon.uart.write(b"X 40000\n")
    assert chip.run(max_instructions=3000, until_idle=False).reason is StopReason.BUDGET
    mon.uart.write(b"abc", paced=True)  # one frame every ~1390 cycles at 115200 baud from 16 MHz
    chip.run(max_instructions=20_000, until_idle=False)
    sr = chip.peek(U1 + rm.USART_SR)
    assert sr & rm.USART_SR_RXNE and sr & rm.USART_SR_ORE
    assert chip.peek(U1 + rm.USART_DR) == ord("a")  # RDR kept the first byte; b and c were lost
    assert not chip.peek(U1 + rm.USART_SR) & (rm.USART_SR_ORE | rm.USART_SR_RXNE)


def test_usart_paced_bytes_read_in_time_do_not_overrun(mon: Monitor):
    mon.uart.write(b"Y\n")
    mon.chip.run()
    mon.uart.write(b"hello\x04", paced=True)
    result = mon.chip.run(max_instructions=200_000)
    assert result.reason is StopReason.IDLE
    assert mon.uart.read() == b"hello\nend\n"


def test_usart_access_without_clock_is_reported_and_strict_raises(mon: Monitor):
    with pytest.raises(DeviceError, match="clock-gated"):
        mon.chip.peek(U2 + rm.USART_SR)
    assert mon.chip.reports[-1].kind == "clock-gated"
    assert mon.chip.reports[-1].device == "USART2"


def test_usart_host_callback_sees_each_transmitted_byte(mon: Monitor):
    seen: list[int] = []
    mon.uart.on_transmit = seen.append
    assert mon.cmd("X 3").startswith("x=")
    assert bytes(seen).startswith(b"x=")
