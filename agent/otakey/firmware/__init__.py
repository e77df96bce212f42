"""The firmware image as the tools see it: building a product order's factory image
(:mod:`.build`, ``otakey firmware build``) and reading an ELF (:mod:`.elf`: entry, vector table,
keystore areas and application range from the linker script's symbols)."""

from .build import BuildResult, FirmwareBuildError, build_firmware, load_product
from .elf import Area, ElfError, FirmwareElf

__all__ = ["Area", "BuildResult", "ElfError", "FirmwareBuildError", "FirmwareElf", "build_firmware",
           "load_product"]
