"""GPIO and SYSCFG storage of the STM32F429 model (RM0090 §8, §9)."""

from __future__ import annotations

import pytest

from emu_programs.harness import Monitor, monitor_chip, program
from otakey.emu import DeviceError
from otakey.emu import rm0090 as rm

GPIOG = rm.GPIOA_BASE + rm.GPIO_PORTS.index("G") * rm.GPIO_STRIDE


@pytest.fixture(scope="module")
def elf(tmp_path_factory: pytest.TempPathFactory):
    return program(tmp_path_factory, "monitor").elf


@pytest.fixture
def mon(elf) -> Monitor:
    return monitor_chip(elf)


def test_gpioa_holds_the_usart_pin_setup_and_debug_pins(mon: Monitor):
    moder = mon.read32(rm.GPIOA_BASE + rm.GPIO_MODER)
    assert moder >> 18 & 0xF == 0xA  # PA9/PA10 alternate function, set by the firmware
    assert moder & 0xFC00_0000 == rm.GPIOA_MODER_RESET  # PA13-15 still the debug port
    assert mon.read32(rm.GPIOA_BASE + rm.GPIO_AFRH) & 0xFF0 == 0x770


def test_gpio_bsrr_sets_and_resets_output_bits(mon: Monitor):
    mon.write(4, rm.RCC_BASE + rm.RCC_AHB1ENR, rm.RCC_AHB1ENR_RESET | 1 | (1 << 6))  # GPIOA, GPIOG
    mon.write(4, GPIOG + rm.GPIO_BSRR, (1 << 13) | (1 << 14))
    assert mon.read32(GPIOG + rm.GPIO_ODR) == (1 << 13) | (1 << 14)
    mon.write(4, GPIOG + rm.GPIO_BSRR, 1 << (16 + 13))
    assert mon.read32(GPIOG + rm.GPIO_ODR) == 1 << 14
    assert mon.read32(GPIOG + rm.GPIO_IDR) == 1 << 14


def test_gpio_port_without_clock_is_gated(mon: Monitor):
    mon.uart.write(f"r4 {GPIOG:08X}\n".encode())
    with pytest.raises(DeviceError, match="GPIOG: clock-gated"):
        mon.chip.run()


def test_syscfg_memory_remap_is_reported_as_unmodelled(mon: Monitor):
    mon.write(4, rm.RCC_BASE + rm.RCC_APB2ENR, rm.RCC_APB2ENR_USART1EN | rm.RCC_APB2ENR_SYSCFGEN)
    mon.write(4, rm.SYSCFG_BASE + rm.SYSCFG_EXTICR1, 0x1234)
    assert mon.read32(rm.SYSCFG_BASE + rm.SYSCFG_EXTICR1) == 0x1234
    mon.uart.write(b"w4 40013800 1\n")  # MEM_MODE = system memory at 0
    with pytest.raises(DeviceError, match="SYSCFG: unmodelled"):
        mon.chip.run()
