"""GPIO ports A-K (RM0090 §8.4) and SYSCFG (RM0090 §9.2): register storage for start-up code.

Pins are not modelled: ``IDR`` reads back ``ODR`` (as if every pin were looped back), ``BSRR`` sets
and resets ``ODR`` bits. SYSCFG is storage, except that remapping memory (``MEMRMP.MEM_MODE`` or
the bank swap ``UFB_MODE``) is not modelled and is reported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from otakey.emu import rm0090 as rm
from otakey.emu.peripheral import Peripheral, ResetKind, StorageRegisters

if TYPE_CHECKING:
    from otakey.emu.bus import Bus

_GPIO_RESETS = {
    "A": (rm.GPIOA_MODER_RESET, rm.GPIOA_OSPEEDR_RESET, rm.GPIOA_PUPDR_RESET),
    "B": (rm.GPIOB_MODER_RESET, rm.GPIOB_OSPEEDR_RESET, rm.GPIOB_PUPDR_RESET),
}


class Gpio(Peripheral):
    def __init__(self, bus: Bus, port: str) -> None:
        index = rm.GPIO_PORTS.index(port)
        super().__init__(bus, f"GPIO{port}", rm.GPIOA_BASE + index * rm.GPIO_STRIDE)
        self.clock_gate = (rm.RCC_AHB1ENR, rm.RCC_AHB1ENR_GPIOAEN << index)
        self.port = port
        self.reset(ResetKind.POWER_ON)

    def reset(self, kind: ResetKind) -> None:
        moder, ospeedr, pupdr = _GPIO_RESETS.get(self.port, (0, 0, 0))
        self.regs = {rm.GPIO_MODER: moder, rm.GPIO_OTYPER: 0, rm.GPIO_OSPEEDR: ospeedr,
                     rm.GPIO_PUPDR: pupdr, rm.GPIO_ODR: 0, rm.GPIO_LCKR: 0, rm.GPIO_AFRL: 0,
                     rm.GPIO_AFRH: 0}

    def read_register(self, offset: int) -> int | None:
        if offset == rm.GPIO_IDR:
            return self.regs[rm.GPIO_ODR]
        if offset == rm.GPIO_BSRR:
            return 0  # write-only
        return self.regs.get(offset)

    def write_register(self, offset: int, value: int) -> bool:
        if offset == rm.GPIO_BSRR:
            odr = self.regs[rm.GPIO_ODR]
            self.regs[rm.GPIO_ODR] = (odr | (value & 0xFFFF)) & ~(value >> 16)
            return True
        if offset == rm.GPIO_IDR:
            return True  # read-only
        if offset not in self.regs:
            return False
        mask = 0xFFFF if offset in (rm.GPIO_OTYPER, rm.GPIO_ODR) else 0x1_FFFF if offset == rm.GPIO_LCKR \
            else 0xFFFF_FFFF
        self.regs[offset] = value & mask
        return True


class Syscfg(StorageRegisters):
    clock_gate = (rm.RCC_APB2ENR, rm.RCC_APB2ENR_SYSCFGEN)

    def __init__(self, bus: Bus) -> None:
        layout = {rm.SYSCFG_MEMRMP: (0, 0x0000_0D07), rm.SYSCFG_PMC: (0, 0x0080_0000),
                  **{rm.SYSCFG_EXTICR1 + 4 * i: (0, 0xFFFF) for i in range(4)},
                  rm.SYSCFG_CMPCR: (0, 0x1)}
        super().__init__(bus, "SYSCFG", rm.SYSCFG_BASE, layout)

    def read_register(self, offset: int) -> int | None:
        value = super().read_register(offset)
        if offset == rm.SYSCFG_CMPCR and value is not None and value & 1:
            value |= 1 << 8  # READY follows CMP_PD: the compensation cell is ready at once
        return value

    def write_register(self, offset: int, value: int) -> bool:
        remap = rm.SYSCFG_MEMRMP_MEM_MODE | rm.SYSCFG_MEMRMP_UFB_MODE
        if offset == rm.SYSCFG_MEMRMP and value & remap:
            return False  # memory remapping is not modelled: report it
        return super().write_register(offset, value)
