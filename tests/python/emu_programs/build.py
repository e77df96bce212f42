"""Builds the emulator's bare-metal test programs with arm-none-eabi-gcc.

Each program is ``startup.c`` + ``rt.c`` + its own source, linked with ``link.ld``. Builds are cached per
process and output directory, so several test modules can ask for the same programs cheaply.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.elffile import ELFFile

HERE = Path(__file__).resolve().parent
CFLAGS = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16", "-Os",
          "-ffunction-sections", "-fdata-sections", "-nostartfiles", "--specs=nano.specs",
          "--specs=nosys.specs", "-Wall", "-Wextra", "-Werror", "-std=c11", "-Wl,--gc-sections"]

# name -> (source file, extra compiler flags)
PROGRAMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "monitor": ("monitor.c", ("-DRT_ENABLE_FPU=0",)),
    "flashcycle": ("flashcycle.c", ()),
    "compute": ("compute.c", ()),
    "compute_short": ("compute.c", ("-DROUNDS=200000u",)),
}

_cache: dict[tuple[str, Path], Program] = {}


@dataclass(frozen=True)
class Program:
    name: str
    elf: Path

    def symbol(self, name: str) -> int:
        """Address of a symbol in the program (e.g. a variable to inspect)."""
        with open(self.elf, "rb") as f:
            symtab = ELFFile(f).get_section_by_name(".symtab")
            assert symtab is not None, "program has no symbol table"
            symbols = symtab.get_symbol_by_name(name)
            if not symbols:
                raise KeyError(name)
            return int(symbols[0]["st_value"])


def compiler() -> str:
    cc = shutil.which("arm-none-eabi-gcc")
    if cc is None:
        raise RuntimeError("arm-none-eabi-gcc not found: run scripts/setup.sh")
    return cc


def build(name: str, out_dir: Path) -> Program:
    key = (name, out_dir)
    if key in _cache:
        return _cache[key]
    source, flags = PROGRAMS[name]
    out_dir.mkdir(parents=True, exist_ok=True)
    elf = out_dir / f"{name}.elf"
    cmd = [compiler(), *CFLAGS, *flags, f"-I{HERE}", f"-T{HERE / 'link.ld'}",
           str(HERE / "startup.c"), str(HERE / "rt.c"), str(HERE / source), "-o", str(elf)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    program = Program(name, elf)
    _cache[key] = program
    return program
