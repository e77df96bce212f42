"""System memory window 0x1FFF_0000-0x1FFF_7FFF: device signature and OTP (RM0090 §39, §3.8).

Modelled: the 96-bit unique device ID at 0x1FFF_7A10 (per device, given at construction; RM0090
§39.1), the flash size register at 0x1FFF_7A22 (0x0800 = 2048 KB; §39.2) and the OTP area reading
as erased. The ROM bootloader's contents are not modelled (reads are reported); writes anywhere
here are reported too (OTP programming is not modelled).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from otakey.emu import rm0090 as rm
from otakey.emu.peripheral import Peripheral, ResetKind

if TYPE_CHECKING:
    from otakey.emu.bus import Bus

_UID = rm.UID_BASE - rm.SYSMEM_BASE
_FLASHSIZE_WORD = (rm.FLASHSIZE_BASE - rm.SYSMEM_BASE) & ~3
_OTP = rm.OTP_BASE - rm.SYSMEM_BASE


class SystemMemory(Peripheral):
    def __init__(self, bus: Bus, uid: bytes) -> None:
        if len(uid) != 12:
            raise ValueError("the unique device ID is 96 bits (12 bytes)")
        super().__init__(bus, "SYSMEM", rm.SYSMEM_BASE, 0x8000)
        self.uid = bytes(uid)

    def reset(self, kind: ResetKind) -> None:
        pass

    def read_register(self, offset: int) -> int | None:
        if _UID <= offset < _UID + 12:
            i = offset - _UID
            return int.from_bytes(self.uid[i:i + 4], "little")
        if offset == _FLASHSIZE_WORD:
            # The size half-word sits in the upper half; the lower half is not documented.
            return (rm.FLASH_SIZE // 1024) << 16
        if _OTP <= offset < _OTP + rm.OTP_SIZE:
            return 0xFFFF_FFFF
        return None

    def write_register(self, offset: int, value: int) -> bool:
        return False
