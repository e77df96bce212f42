"""Embedded flash: the 2 MB array and the FLASH interface registers (RM0090 §3).

The array (:class:`FlashMemory`) is non-volatile: it survives power cuts and resets, and the CPU
adapter maps it read/execute so that every CPU store lands in :meth:`FlashInterface.cpu_store`.

The interface (:class:`FlashInterface`, RM0090 §3.9) models:

* ``KEYR``: KEY1 then KEY2 unlock ``CR`` (§3.6.1). Any other write — a wrong key, the wrong
  order, or a key while already unlocked — is a bus error and keeps ``CR`` locked until the next
  reset. ``OPTKEYR`` unlocks ``OPTCR`` the same way (§3.6.2).
* ``CR``: ``LOCK``, ``PG``, ``SER``, ``MER`` (bank 1), ``MER1`` (bank 2), ``SNB`` (5 bits; bank-2
  sector *n* is SNB *n*+4, so SNB 12-15 and 28-31 name no sector), ``PSIZE``, ``STRT``, ``EOPIE``,
  ``ERRIE``. Ignored while locked.
* ``SR``: ``BSY`` for a number of status reads after each operation (the busy-wait loop stays
  cheap), ``EOP`` at completion if ``EOPIE`` (§3.9.4), and the error flags, all write-1-to-clear:
  ``WRPERR`` (write-protected sector), ``PGAERR`` (store not aligned to its size, or an x64 pair not
  on 8 bytes), ``PGPERR`` (store size differs from ``PSIZE``), ``PGSERR`` (store to flash while
  ``PG`` is clear, ``CR`` locked, or an erase mode selected), ``OPERR`` with ``ERRIE``.
* Programming only clears bits: the cell becomes old AND new, without any error flag (there is no
  "not erased" check on F4). Erase sets the sector to 0xFF. With ``PSIZE`` = x64 the CPU writes
  two words, the first on an 8-byte boundary; the pair is one operation.
* Choices of ours where RM0090 is silent: erase with an invalid SNB, or with ``SER`` and a mass
  erase bit together, sets ``PGSERR`` and erases nothing; option-byte programming is not counted as
  a flash operation; PCROP read protection (``RDERR``) and RDP levels are not modelled.

Every erase and every successful program store is logged on the bus as one flash operation; the
bus decides whether the scheduled power cut hits it, and this module then leaves the torn result.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

from otakey.emu import rm0090 as rm
from otakey.emu.peripheral import Peripheral, ResetKind

if TYPE_CHECKING:
    import random

    from otakey.emu.bus import Bus, Tear

_CR_WRITABLE = (rm.FLASH_CR_PG | rm.FLASH_CR_SER | rm.FLASH_CR_MER | rm.FLASH_CR_SNB | rm.FLASH_CR_PSIZE
                | rm.FLASH_CR_MER1 | rm.FLASH_CR_EOPIE | rm.FLASH_CR_ERRIE | rm.FLASH_CR_LOCK)
_ACR_WRITABLE = (rm.FLASH_ACR_LATENCY | rm.FLASH_ACR_PRFTEN | rm.FLASH_ACR_ICEN | rm.FLASH_ACR_DCEN
                 | rm.FLASH_ACR_ICRST | rm.FLASH_ACR_DCRST)
_ERASE_MODES = rm.FLASH_CR_SER | rm.FLASH_CR_MER | rm.FLASH_CR_MER1


class FlashMemory:
    """The main flash array, backed by host memory the CPU adapter maps directly."""

    def __init__(self, size: int = rm.FLASH_SIZE, base: int = rm.FLASH_BASE) -> None:
        self.base = base
        self.size = size
        self.buffer = (ctypes.c_ubyte * size)()
        ctypes.memset(self.buffer, rm.FLASH_ERASED, size)
        self.view = memoryview(self.buffer).cast("B")

    @property
    def host_address(self) -> int:
        return ctypes.addressof(self.buffer)

    def _offset(self, address: int, n: int) -> int:
        offset = address - self.base
        if offset < 0 or n < 0 or offset + n > self.size:
            raise ValueError(f"flash range 0x{address:08X}+{n} outside 0x{self.base:08X}+{self.size}")
        return offset

    def read(self, address: int, n: int) -> bytes:
        offset = self._offset(address, n)
        return bytes(self.view[offset:offset + n])

    def write_raw(self, address: int, data: bytes) -> None:
        """Overwrite bytes as a programmer does after erasing (no 1->0 rule): host use only."""
        offset = self._offset(address, len(data))
        self.view[offset:offset + len(data)] = data

    def program(self, address: int, value: int, size: int, clear_mask: int | None = None) -> None:
        """Program ``size`` bytes little-endian: new = old AND value (only 1->0 transitions).

        ``clear_mask`` limits which bits actually go to 0 (a torn program).
        """
        offset = self._offset(address, size)
        old = int.from_bytes(self.view[offset:offset + size], "little")
        cleared = old & ~value
        if clear_mask is not None:
            cleared &= clear_mask
        self.view[offset:offset + size] = (old & ~cleared).to_bytes(size, "little")

    def erase(self, address: int, size: int) -> None:
        offset = self._offset(address, size)
        ctypes.memset(self.host_address + offset, rm.FLASH_ERASED, size)


class FlashInterface(Peripheral):
    """FLASH interface registers at 0x4002_3C00 plus the CPU-store path into the array."""

    write_one_to_clear = frozenset({rm.FLASH_SR})

    def __init__(self, bus: Bus, memory: FlashMemory, base: int = rm.FLASH_R_BASE,
                 program_busy_reads: int = 1, erase_busy_reads: int = 3) -> None:
        super().__init__(bus, "FLASH", base)
        self.memory = memory
        self.program_busy_reads = program_busy_reads
        self.erase_busy_reads = erase_busy_reads
        # Option bytes are non-volatile: they survive resets; OPTCR reloads from them.
        self.option_user = rm.FLASH_OPTCR_RESET & rm.FLASH_OPTCR_WRITABLE
        self.option_bank2 = rm.FLASH_OPTCR1_RESET
        self.reset(ResetKind.POWER_ON)

    def reset(self, kind: ResetKind) -> None:
        self.acr = 0
        self.sr = 0
        self.cr = rm.FLASH_CR_RESET
        self.optcr = self.option_user | rm.FLASH_OPTCR_OPTLOCK
        self.optcr1 = self.option_bank2
        self._key_stage = 0
        self._cr_jammed = False  # a wrong key sequence locks CR until reset
        self._optkey_stage = 0
        self._optcr_jammed = False
        self._busy = 0
        self._pending_x64: tuple[int, int] | None = None
        self._swallow: tuple[int, int] = (0, 0)  # byte stores the CPU engine replays after a split

    # --- registers ------------------------------------------------------------------------------
    def read_register(self, offset: int) -> int | None:
        if offset == rm.FLASH_SR:
            return self._read_sr()
        return self.peek_register(offset)

    def peek_register(self, offset: int) -> int | None:
        if offset == rm.FLASH_ACR:
            return self.acr
        if offset in (rm.FLASH_KEYR, rm.FLASH_OPTKEYR):
            return 0  # write-only
        if offset == rm.FLASH_SR:
            return self.sr | (rm.FLASH_SR_BSY if self._busy else 0)
        if offset == rm.FLASH_CR:
            return self.cr | (rm.FLASH_CR_STRT if self._busy and self._erasing else 0)
        if offset == rm.FLASH_OPTCR:
            return self.optcr
        if offset == rm.FLASH_OPTCR1:
            return self.optcr1
        return None

    def write_register(self, offset: int, value: int) -> bool:
        if offset == rm.FLASH_ACR:
            self.acr = value & _ACR_WRITABLE
        elif offset == rm.FLASH_KEYR:
            self._write_keyr(value)
        elif offset == rm.FLASH_OPTKEYR:
            self._write_optkeyr(value)
        elif offset == rm.FLASH_SR:
            self.sr &= ~(value & rm.FLASH_SR_W1C)
        elif offset == rm.FLASH_CR:
            self._write_cr(value)
        elif offset == rm.FLASH_OPTCR:
            self._write_optcr(value)
        elif offset == rm.FLASH_OPTCR1:
            self._finish_busy()
            if not self.optcr & rm.FLASH_OPTCR_OPTLOCK:
                self.optcr1 = value & rm.FLASH_OPTCR1_WRITABLE
        else:
            return False
        return True

    def _read_sr(self) -> int:
        value = self.sr | (rm.FLASH_SR_BSY if self._busy else 0)
        if self._busy:
            self._busy -= 1
            if not self._busy:
                self._complete()
        return value

    def _finish_busy(self) -> None:
        # RM0090 §3.6: an access while BSY stalls the bus until the operation is over.
        if self._busy:
            self._busy = 0
            self._complete()

    def _complete(self) -> None:
        if self.cr & rm.FLASH_CR_EOPIE:
            self.sr |= rm.FLASH_SR_EOP

    def _error(self, flag: int) -> None:
        self.sr |= flag
        if self.cr & rm.FLASH_CR_ERRIE:
            self.sr |= rm.FLASH_SR_OPERR

    def _write_keyr(self, value: int) -> None:
        expected = rm.FLASH_KEY1 if self._key_stage == 0 else rm.FLASH_KEY2
        if self._cr_jammed or not self.cr & rm.FLASH_CR_LOCK or value != expected:
            why = ("after a failed unlock" if self._cr_jammed
                   else "while already unlocked" if not self.cr & rm.FLASH_CR_LOCK
                   else f"0x{value:08X} where 0x{expected:08X} was due")
            self._cr_jammed = True
            self._key_stage = 0
            self.cr |= rm.FLASH_CR_LOCK
            self.bus.bus_error(self.name, self.base + rm.FLASH_KEYR, 4, "w", value,
                               f"wrong FLASH_KEYR sequence ({why}); FLASH_CR locked until reset "
                               "(RM0090 §3.6.1)")
            return
        if self._key_stage == 0:
            self._key_stage = 1
        else:
            self._key_stage = 0
            self.cr &= ~rm.FLASH_CR_LOCK

    def _write_optkeyr(self, value: int) -> None:
        expected = rm.FLASH_OPT_KEY1 if self._optkey_stage == 0 else rm.FLASH_OPT_KEY2
        locked = self.optcr & rm.FLASH_OPTCR_OPTLOCK
        if self._optcr_jammed or not locked or value != expected:
            self._optcr_jammed = True
            self._optkey_stage = 0
            self.optcr |= rm.FLASH_OPTCR_OPTLOCK
            self.bus.bus_error(self.name, self.base + rm.FLASH_OPTKEYR, 4, "w", value,
                               "wrong FLASH_OPTKEYR sequence; FLASH_OPTCR locked until reset "
                               "(RM0090 §3.6.2)")
            return
        if self._optkey_stage == 0:
            self._optkey_stage = 1
        else:
            self._optkey_stage = 0
            self.optcr &= ~rm.FLASH_OPTCR_OPTLOCK

    def _write_optcr(self, value: int) -> None:
        self._finish_busy()
        if self.optcr & rm.FLASH_OPTCR_OPTLOCK:
            return
        self.optcr = (value & (rm.FLASH_OPTCR_WRITABLE | rm.FLASH_OPTCR_OPTLOCK))
        if value & rm.FLASH_OPTCR_OPTSTRT:
            # Option bytes take the new values (RM0090 §3.7.2); not counted as a flash operation.
            self.option_user = self.optcr & rm.FLASH_OPTCR_WRITABLE
            self.option_bank2 = self.optcr1
            self._busy = self.erase_busy_reads
            self._erasing = False

    def _write_cr(self, value: int) -> None:
        self._finish_busy()
        if self.cr & rm.FLASH_CR_LOCK:
            return  # RM0090 §3.6.1: CR cannot be written while locked
        self.cr = value & _CR_WRITABLE
        if value & rm.FLASH_CR_STRT and not value & rm.FLASH_CR_LOCK:
            self._start_erase()

    # --- erase ----------------------------------------------------------------------------------
    _erasing = False

    def _start_erase(self) -> None:
        cr = self.cr
        modes = cr & _ERASE_MODES
        if not modes:
            return
        if cr & rm.FLASH_CR_SER and modes != rm.FLASH_CR_SER:
            self._error(rm.FLASH_SR_PGSERR)  # SER with a mass erase: no erase (RM0090 §3.6.3)
            return
        if cr & rm.FLASH_CR_SER:
            snb = (cr & rm.FLASH_CR_SNB) >> rm.FLASH_CR_SNB_POS
            sector = rm.FLASH_SECTOR_BY_SNB.get(snb)
            if sector is None:
                self._error(rm.FLASH_SR_PGSERR)  # SNB 12-15, 28-31 name no sector
                return
            targets = [sector]
        else:
            banks = {1} if cr & rm.FLASH_CR_MER else set()
            if cr & rm.FLASH_CR_MER1:
                banks.add(2)
            targets = [s for s in rm.FLASH_SECTORS if s.bank in banks]
        if any(self._protected(s) for s in targets):
            self._error(rm.FLASH_SR_WRPERR)
            return
        address = targets[0].address
        size = targets[-1].end - address
        number = targets[0].number if len(targets) == 1 else None
        tear = self.bus.flash_op("erase", address, size, None, number)
        if tear is None:
            self.memory.erase(address, size)
        else:
            self._torn_erase(tear, address, size)
        self.bus.flash_changed(address, size)
        self._busy = self.erase_busy_reads
        self._erasing = True
        if tear is not None:
            self.bus.power_cut(f"power cut during erase of 0x{address:08X}+0x{size:X} ({tear.mode})")

    def _torn_erase(self, tear: Tear, address: int, size: int) -> None:
        if tear.mode == "done":
            self.memory.erase(address, size)
        elif tear.mode == "erase-partial":
            # An interrupted erase leaves a mix: some 128-bit rows erased, the others as they were.
            rows = _partial_choice(tear.rng, size // rm.FLASH_ROW)
            for row in rows:
                self.memory.erase(address + row * rm.FLASH_ROW, rm.FLASH_ROW)

    def _protected(self, sector: rm.FlashSector) -> bool:
        bits = self.option_user if sector.bank == 1 else self.option_bank2
        nwrp = (bits >> rm.FLASH_OPTCR_NWRP_POS) >> (sector.number % 12) & 1
        sprmod = self.option_user >> 31 & 1
        return nwrp == sprmod  # nWRP=0 protects; with SPRMOD=1 (PCROP) the level flips

    # --- CPU stores into the array --------------------------------------------------------------
    def cpu_store(self, address: int, size: int, value: int) -> None:
        start, end = self._swallow
        if start <= address < end:
            # The CPU engine replays a misaligned store as byte stores; the first call decided.
            if address + size >= end:
                self._swallow = (0, 0)
            return
        if address % size:
            self._swallow = (address, address + size)
        self._finish_busy()
        cr = self.cr
        if cr & rm.FLASH_CR_LOCK or not cr & rm.FLASH_CR_PG or cr & _ERASE_MODES:
            self._pending_x64 = None
            self._error(rm.FLASH_SR_PGSERR)
            return
        psize = (cr & rm.FLASH_CR_PSIZE) >> rm.FLASH_CR_PSIZE_POS
        if psize == rm.FLASH_PSIZE_X64:
            pair = self._x64_pair(address, size, value)
            if pair is None:
                return
            address, value = pair
            size = 8
        elif size != 1 << psize:
            self._error(rm.FLASH_SR_PGPERR)
            return
        elif address % size:
            self._error(rm.FLASH_SR_PGAERR)
            return
        sector = rm.sector_at(address)
        assert sector is not None
        if self._protected(sector):
            self._error(rm.FLASH_SR_WRPERR)
            return
        tear = self.bus.flash_op("program", address, size, value, sector.number)
        if tear is None:
            self.memory.program(address, value, size)
        elif tear.mode == "done":
            self.memory.program(address, value, size)
        elif tear.mode == "program-partial":
            old = int.from_bytes(self.memory.read(address, size), "little")
            to_clear = [bit for bit in range(size * 8) if (old & ~value) >> bit & 1]
            mask = sum(1 << to_clear[i] for i in _partial_choice(tear.rng, len(to_clear)))
            self.memory.program(address, value, size, clear_mask=mask)
        self.bus.flash_changed(address, size)
        self._busy = self.program_busy_reads
        self._erasing = False
        if tear is not None:
            self.bus.power_cut(f"power cut while programming 0x{address:08X} ({tear.mode})")

    def _x64_pair(self, address: int, size: int, value: int) -> tuple[int, int] | None:
        """x64 parallelism: two word stores, the first 8-byte aligned, form one double word."""
        if size != 4:
            self._pending_x64 = None
            self._error(rm.FLASH_SR_PGPERR)
            return None
        if self._pending_x64 is None:
            if address % 8:
                self._error(rm.FLASH_SR_PGAERR)
                return None
            self._pending_x64 = (address, value)
            return None
        first, low = self._pending_x64
        self._pending_x64 = None
        if address != first + 4:
            self._error(rm.FLASH_SR_PGSERR)
            return None
        return first, low | (value << 32)


class OptionBytes(Peripheral):
    """The user option bytes as the CPU reads them (RM0090 §3.7.1; layout as quoted, not checked).

    Bank 1 at 0x1FFF_C000: half-word 0 = RDP:USER, half-word at +8 = SPRMOD/DB1M:nWRP[11:0].
    Bank 2 at 0x1FFE_C000: half-word at +8 = nWRP[11:0] of sectors 12-23.
    """

    def __init__(self, bus: Bus, flash: FlashInterface, bank: int) -> None:
        base = rm.OPTION_BYTES_BANK1 if bank == 1 else rm.OPTION_BYTES_BANK2
        super().__init__(bus, f"OPTION_BYTES{bank}", base)
        self.flash = flash
        self.bank = bank

    def reset(self, kind: ResetKind) -> None:
        pass

    def read_register(self, offset: int) -> int | None:
        user = self.flash.option_user
        if self.bank == 1 and offset == 0x0:
            return user & 0xFFFC
        if offset == 0x8:
            bits = user if self.bank == 1 else self.flash.option_bank2
            return bits >> 16 & (0xCFFF if self.bank == 1 else 0x0FFF)
        return None

    def write_register(self, offset: int, value: int) -> bool:
        return False  # option bytes change only through FLASH_OPTCR


def _partial_choice(rng: random.Random, n: int) -> list[int]:
    """A deterministic proper, non-empty subset of range(n) (when n >= 2)."""
    if n <= 1:
        return []
    while True:
        chosen = [i for i in range(n) if rng.random() < 0.5]
        if 0 < len(chosen) < n:
            return chosen
