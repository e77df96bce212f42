"""What the tools need from a firmware ELF, read with pyelftools: entry point, vector table,
the keystore areas and the application range from the linker script's symbols, symbol lookup, and
the bytes the image puts at any flash address.

Nothing here hard-codes an address: the linker script (firmware_c/port/stm32f429/stm32f429.ld)
states the flash map and exports it as symbols (``__keystore_a_start``, ``__keystore_b_start``,
``__keystore_size``, ``__app_start``/``__app_end``, ``__factory_record_start``/``_end``, ...), and
docs/flash-layout.md says the tools read them from there.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from otakey.errors import Error, KeystoreError
from otakey.protocol.keystore import AREA_A, AREA_B, AreaName, BootResult, KeystoreState, boot, decode_record

KEYSTORE_SYMBOLS = ("__keystore_a_start", "__keystore_b_start", "__keystore_size")
APP_SYMBOLS = ("__app_start", "__app_end")
VECTOR_SECTIONS = (".isr_vector", ".vectors", ".vector_table")


class ElfError(Error):
    """A file is not a firmware ELF the tools can use (not ELF, not ARM, a symbol missing)."""


@dataclass(frozen=True)
class Area:
    """One keystore area: its name (A/B), flash address and size."""

    name: AreaName
    address: int
    size: int

    @property
    def end(self) -> int:
        return self.address + self.size


@dataclass(frozen=True)
class VectorTable:
    address: int
    initial_sp: int
    reset: int  # the reset handler's address with the Thumb bit


class FirmwareElf:
    """One firmware image. Everything is read once, when the object is made; the file may change
    afterwards without affecting it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                elf = ELFFile(f)
                if elf["e_machine"] != "EM_ARM" or elf.elfclass != 32 or not elf.little_endian:
                    raise ElfError(f"{self.path} is not a 32-bit little-endian ARM ELF")
                self.entry: int = elf["e_entry"]
                self._segments = tuple(
                    (seg["p_paddr"], bytes(seg.data()[:seg["p_filesz"]])) for seg in elf.iter_segments()
                    if seg["p_type"] == "PT_LOAD" and seg["p_filesz"] > 0)
                self._sections = {s.name: (s["sh_addr"], s["sh_size"]) for s in elf.iter_sections()
                                  if s.name and s["sh_flags"] & 2}  # SHF_ALLOC
                symtab = elf.get_section_by_name(".symtab")
                if symtab is None:
                    raise ElfError(f"{self.path} has no symbol table (stripped?)")
                self._symbols: dict[str, int] = {}
                for sym in symtab.iter_symbols():
                    if sym.name and sym["st_shndx"] != "SHN_UNDEF":
                        self._symbols.setdefault(sym.name, sym["st_value"])
        except FileNotFoundError:
            raise ElfError(f"{self.path}: no such file") from None
        except (ELFError, OSError) as exc:
            raise ElfError(f"{self.path} is not a readable ELF file ({exc})") from None
        if not self._segments:
            raise ElfError(f"{self.path} has no loadable segments")

    # --- symbols ---------------------------------------------------------------------------------
    def symbol(self, name: str) -> int:
        """The value (address) of a symbol; ElfError when the image does not define it."""
        try:
            return self._symbols[name]
        except KeyError:
            raise ElfError(f"{self.path} does not define the symbol {name}") from None

    def has_symbol(self, name: str) -> bool:
        return name in self._symbols

    @property
    def symbols(self) -> dict[str, int]:
        return dict(self._symbols)

    def section(self, name: str) -> tuple[int, int]:
        """(address, size) of an allocated section."""
        try:
            return self._sections[name]
        except KeyError:
            raise ElfError(f"{self.path} has no section {name}") from None

    # --- layout ----------------------------------------------------------------------------------
    @cached_property
    def vector_table(self) -> VectorTable:
        address = next((self._sections[n][0] for n in VECTOR_SECTIONS if n in self._sections),
                       min(a for a, _ in self._segments))
        sp, reset = struct.unpack("<II", self.read(address, 8))
        return VectorTable(address, sp, reset)

    @cached_property
    def areas(self) -> dict[AreaName, Area]:
        """Keystore areas A and B from ``__keystore_{a,b}_start`` and ``__keystore_size``."""
        size = self.symbol("__keystore_size")
        return {AREA_A: Area(AREA_A, self.symbol("__keystore_a_start"), size),
                AREA_B: Area(AREA_B, self.symbol("__keystore_b_start"), size)}

    def area(self, name: str) -> Area:
        key = name.upper()
        if key not in (AREA_A, AREA_B):
            raise ValueError("a keystore area is A or B")
        return self.areas[key]  # type: ignore[index]

    @cached_property
    def app_range(self) -> tuple[int, int]:
        """[start, end) of the application image that ``port_app_hash()`` covers."""
        return self.symbol("__app_start"), self.symbol("__app_end")

    @cached_property
    def factory_record_range(self) -> tuple[int, int] | None:
        """[start, end) of the factory record placed in area B, when the image marks it."""
        if not (self.has_symbol("__factory_record_start") and self.has_symbol("__factory_record_end")):
            return None
        return self.symbol("__factory_record_start"), self.symbol("__factory_record_end")

    # --- contents --------------------------------------------------------------------------------
    def read(self, address: int, size: int, fill: int = 0xFF) -> bytes:
        """The bytes the image programs at [address, address+size); ``fill`` where it programs
        nothing (erased flash reads 0xFF)."""
        if size < 0:
            raise ValueError("size must be >= 0")
        out = bytearray([fill]) * size
        end = address + size
        for start, data in self._segments:
            lo, hi = max(start, address), min(start + len(data), end)
            if lo < hi:
                out[lo - address:hi - address] = data[lo - start:hi - start]
        return bytes(out)

    def area_image(self, name: str) -> bytes:
        """The whole keystore area as the image flashes it."""
        area = self.area(name)
        return self.read(area.address, area.size)

    def keystore_boot(self) -> BootResult:
        """The boot rule (flash-layout §2) over the image's two areas: what a fresh device loads."""
        return boot(self.area_image(AREA_A), self.area_image(AREA_B))

    def factory_state(self) -> KeystoreState:
        """The factory record in area B, decoded; ElfError when the image carries none."""
        try:
            return decode_record(self.area_image(AREA_B), self.area(AREA_B).size)
        except KeystoreError as exc:
            raise ElfError(f"{self.path}: keystore area B holds no valid factory record ({exc})") from None

    def app_image(self) -> bytes:
        start, end = self.app_range
        return self.read(start, end - start)

    def segments(self) -> tuple[tuple[int, bytes], ...]:
        """(load address, bytes) of every loadable segment, in file order."""
        return self._segments

    def __repr__(self) -> str:
        return f"<FirmwareElf {self.path}>"
