"""A model of the STM32F429 on the unicorn CPU engine, for running firmware without hardware.

It knows nothing of OTA-Key: it is a chip (memory map, FLASH interface, RCC/PWR, USART1/2, RNG,
SysTick/DWT, SCB) with power cuts, reproducible from the firmware image, the seed and the cut point.

    chip = Stm32f429("dev-1", uid=bytes(12), seed=1, strict=True)
    chip.load_elf("firmware.elf")
    chip.uart(1).write(b"hello")
    result = chip.run()            # -> RunResult(reason=StopReason.IDLE, ...)
    print(chip.uart(1).read())

Only :mod:`otakey.emu.cpu` imports the engine; the peripherals see the bus only.
"""

from otakey.emu.bus import BusReport, FlashOp
from otakey.emu.chip import CutInfo, ElfImage, RunResult, Stm32f429, StopReason
from otakey.emu.usart import UartHost
from otakey.errors import DeviceError, FlashFault, PowerCut

__all__ = [
    "BusReport",
    "CutInfo",
    "DeviceError",
    "ElfImage",
    "FlashFault",
    "FlashOp",
    "PowerCut",
    "RunResult",
    "Stm32f429",
    "StopReason",
    "UartHost",
]
