"""The Cortex-M4 core on the unicorn CPU engine: the only module that imports ``unicorn``.

What the engine does not give us, and how this adapter makes up for it (facts measured with
unicorn 2.1.4, see DESIGN.md §4):

* M-class mode defaults to a Cortex-M33: the model is set to Cortex-M4 before anything else.
* No reset logic: SP and PC come from the vector table at the boot alias (address 0 = flash).
* Flash is mapped read/execute over host memory shared with :class:`FlashMemory`; the engine hands
  every CPU store to the write-protect hook, which passes it to the FLASH model (and, once the
  region is marked read-only by one host write, the engine then drops the store itself).
  Translated code goes stale when flash changes: the range is removed from the translation cache
  (on the 0x0800_0000 view; for code run through the alias at 0 the whole cache is flushed at the
  end of the current slice, as removing alias ranges crashes the engine).
* Peripherals are MMIO regions whose callbacks go to the bus; unmapped addresses go to the bus too.
* Instruction counting: execution runs in slices with ``count=N`` (the engine then stops exactly
  after N instructions, except inside an IT block, which it finishes first). The engine keeps the
  running count of the slice in ``uc_struct.emu_counter`` but has no getter for it; callbacks need
  it as the current time, so its offset is found once by calibration (two runs with known counts,
  checked) and read through ctypes.
* Before a memory hook the engine rewinds the CPU state to the accessing instruction, including the
  IT-block bits, and never writes them back if the hook lets execution go on: a flash store inside
  an IT block would leave the next blocks translated as conditional. The hooks clear them again.
* The binding's hooks form reference cycles, so a discarded core is freed explicitly (``close``).
* No exceptions: SVC, BKPT, UDF, faults and exception return end the slice as a fault.
* The FPU always works in the engine, whatever CPACR says: until CPACR grants CP10/CP11 access a
  block hook scans each translated block for floating-point encodings and faults on the first.
* ``wfi`` ends the slice with PC after it.

A stop requested from inside an access callback ends the slice right after that access; the
engine then resumes at the start of the same instruction (the access is made again). Flash stores
therefore never stop the slice except for power cuts, which end the run anyway. The engine's
handle, ``uclib.uc_mmio_map`` and the finalizer are binding internals: unicorn is pinned to 2.1.4.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from unicorn import (
    UC_ARCH_ARM,
    UC_HOOK_BLOCK,
    UC_HOOK_INTR,
    UC_HOOK_MEM_FETCH_PROT,
    UC_HOOK_MEM_UNMAPPED,
    UC_HOOK_MEM_WRITE_PROT,
    UC_MEM_FETCH_UNMAPPED,
    UC_MEM_WRITE_UNMAPPED,
    UC_MODE_MCLASS,
    UC_MODE_THUMB,
    UC_PROT_EXEC,
    UC_PROT_READ,
    UC_PROT_WRITE,
    Uc,
    UcError,
)
from unicorn.arm_const import (
    UC_ARM_REG_CONTROL,
    UC_ARM_REG_EPSR,
    UC_ARM_REG_LR,
    UC_ARM_REG_MSP,
    UC_ARM_REG_PC,
    UC_ARM_REG_PRIMASK,
    UC_ARM_REG_SP,
    UC_CPU_ARM_CORTEX_M4,
)
from unicorn.unicorn_py3.unicorn import MMIO_READ_CFUNC, MMIO_WRITE_CFUNC, uclib

from otakey.emu import rm0090 as rm
from otakey.emu.bus import PAGE, StopKind
from otakey.errors import DeviceError

if TYPE_CHECKING:
    from otakey.emu.bus import Bus
    from otakey.emu.flash import FlashMemory

_NEVER = 0xFFFF_FFFF  # an "until" address no Thumb PC can equal
_EPSR_T = 1 << 24
_MASK = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFF_FFFF, 8: 0xFFFF_FFFF_FFFF_FFFF}
_PRIORITY = {StopKind.RESTART: 0, StopKind.IDLE: 1, StopKind.RESET: 2, StopKind.FAULT: 3,
             StopKind.STRICT: 4, StopKind.POWER_CUT: 5}
# QEMU's ARM exception numbers, as the engine reports them to the interrupt hook.
_EXCEPTIONS = {1: "undefined instruction (UDF)", 2: "SVC", 3: "prefetch abort", 4: "data abort",
               7: "BKPT", 8: "exception return", 16: "semihosting", 17: "NOCP UsageFault",
               18: "INVSTATE UsageFault", 19: "stack overflow", 22: "unaligned access UsageFault"}
_WFI = (b"\x30\xbf", b"\x20\xbf")  # wfi, wfe (16-bit encodings)
_WFI_W = (b"\xaf\xf3\x03\x80", b"\xaf\xf3\x02\x80")  # wfi.w, wfe.w

_counter_offset_cache: int | None = None


def _handle(uc: Uc) -> int:
    raw: Any = uc._uch  # the engine handle; the binding has no public accessor
    return int(raw.value if hasattr(raw, "value") else raw)


def _counter_offset() -> int:
    """Byte offset of ``emu_counter`` in the engine's ``uc_struct`` (found once per process)."""
    global _counter_offset_cache
    if _counter_offset_cache is not None:
        return _counter_offset_cache
    uc = Uc(UC_ARCH_ARM, UC_MODE_THUMB | UC_MODE_MCLASS)
    uc.ctl_set_cpu_model(UC_CPU_ARM_CORTEX_M4)
    uc.mem_map(rm.SRAM_BASE, PAGE)
    uc.mem_write(rm.SRAM_BASE, b"\x00\xbf" * 16)  # nop x 16
    base = _handle(uc)
    size_t = ctypes.sizeof(ctypes.c_size_t)
    found: set[int] = set()
    for magic, nops in ((0x5EED_C0DE_0AB1, 2), (0x5EED_C0DE_0BC3, 5)):
        uc.emu_start(rm.SRAM_BASE | 1, rm.SRAM_BASE + 2 * nops, 0, magic)
        # emu_count (our magic) directly follows emu_counter; stop at the first match, well
        # inside the structure, so nothing past it is ever read.
        words = (ctypes.c_size_t * 1024).from_address(base)
        index = next((i for i, w in enumerate(words) if w == magic), None)
        if index is None or index == 0 or words[index - 1] != nops:
            raise DeviceError("unicorn: cannot locate the instruction counter; "
                              "this adapter needs unicorn 2.1.4")
        found.add((index - 1) * size_t)
    if len(found) != 1:
        raise DeviceError("unicorn: instruction counter calibration is inconsistent")
    _counter_offset_cache = found.pop()
    return _counter_offset_cache


def find_fp_instruction(code: bytes, address: int) -> int | None:
    """Address of the first coprocessor 10/11 (FPU) instruction in Thumb ``code``, or None.

    Thumb-2 encodes coprocessor, FP and SIMD instructions as ``111x 11xx xxxx xxxx`` followed by a
    half-word whose bits 11:9 are ``101`` for CP10/CP11 (ARMv7-M ARM A5.3.18, A6.4).
    """
    i = 0
    while i + 2 <= len(code):
        hw1 = code[i] | code[i + 1] << 8
        if hw1 >> 11 in (0b11101, 0b11110, 0b11111):
            if i + 4 > len(code):
                break
            hw2 = code[i + 2] | code[i + 3] << 8
            if hw1 & 0xEC00 == 0xEC00 and hw2 & 0x0E00 == 0x0A00:
                return address + i
            i += 4
        else:
            i += 2
    return None


@dataclass(frozen=True)
class SliceEnd:
    kind: StopKind
    executed: int  # instructions retired in this slice
    detail: str = ""


class Cpu:
    """One powered-on core with its RAM; recreated at every power-on and system reset."""

    def __init__(self, bus: Bus, flash: FlashMemory, sram: bytes, ccm: bytes) -> None:
        self.bus = bus
        self.flash = flash
        self.base = 0  # instructions retired before the current slice
        self.running = False
        self._stop: tuple[StopKind, str, bool] | None = None
        self._stop_pc = 0
        self._flush_pending = False
        self._alias_code = False
        self._fpu_hook: int | None = None
        self._fp_scan: dict[tuple[int, int], int | None] = {}
        self._unmodelled_pages: set[int] = set()
        self.callback_error: BaseException | None = None

        uc = Uc(UC_ARCH_ARM, UC_MODE_THUMB | UC_MODE_MCLASS)
        uc.ctl_set_cpu_model(UC_CPU_ARM_CORTEX_M4)
        self.uc = uc
        rx = UC_PROT_READ | UC_PROT_EXEC
        for base in (rm.FLASH_BASE, rm.BOOT_ALIAS_BASE):
            uc.mem_map_ptr(base, flash.size, rx, flash.host_address)
            # One host write marks the read-only region as ROM, so that CPU stores the
            # write-protect hook handled are not also written through.
            uc.mem_write(base, flash.read(rm.FLASH_BASE, 1))
        uc.mem_map(rm.SRAM_BASE, rm.SRAM_SIZE, UC_PROT_READ | UC_PROT_WRITE | UC_PROT_EXEC)
        uc.mem_write(rm.SRAM_BASE, sram)
        uc.mem_map(rm.CCMDATARAM_BASE, rm.CCMDATARAM_SIZE, UC_PROT_READ | UC_PROT_WRITE)
        uc.mem_write(rm.CCMDATARAM_BASE, ccm)
        self._map_peripherals()
        uc.hook_add(UC_HOOK_MEM_WRITE_PROT, self._on_flash_store, None, rm.BOOT_ALIAS_BASE, rm.FLASH_END)
        uc.hook_add(UC_HOOK_MEM_UNMAPPED, self._on_unmapped)
        uc.hook_add(UC_HOOK_MEM_FETCH_PROT, self._on_fetch_prot)
        uc.hook_add(UC_HOOK_INTR, self._on_exception)
        uc.hook_add(UC_HOOK_BLOCK, self._on_alias_block, None, rm.BOOT_ALIAS_BASE, flash.size - 1)
        self._counter = ctypes.c_size_t.from_address(_handle(uc) + _counter_offset())
        self.set_fpu_enabled(False)

    def close(self) -> None:
        """Free the engine now. Its hooks form reference cycles through the binding, so waiting for
        the garbage collector would keep megabytes per discarded core alive (campaigns power-cycle
        thousands of times). The binding's own finalizer does the freeing, once."""
        self.running = False
        finalizer: Any = getattr(self.uc, "_Uc__finalizer", None)
        if finalizer is not None:
            finalizer()

    # --- reset ----------------------------------------------------------------------------------
    def boot(self) -> str | None:
        """Load SP and PC from the vector table at the boot alias; a problem is returned as text."""
        sp, pc = struct.unpack("<II", self.flash.read(rm.FLASH_BASE, 8))
        self.uc.reg_write(UC_ARM_REG_MSP, sp & ~3)
        self.uc.reg_write(UC_ARM_REG_SP, sp & ~3)
        self.uc.reg_write(UC_ARM_REG_LR, 0xFFFF_FFFF)
        self.uc.reg_write(UC_ARM_REG_CONTROL, 0)
        self.uc.reg_write(UC_ARM_REG_PRIMASK, 0)
        self.uc.reg_write(UC_ARM_REG_PC, pc & ~1)
        if not pc & 1:
            return f"reset vector 0x{pc:08X} lacks the Thumb bit: INVSTATE UsageFault, lockup"
        return None

    # --- running --------------------------------------------------------------------------------
    def run(self, count: int) -> SliceEnd:
        """Execute at most ``count`` (>= 1) instructions."""
        self._stop = None
        self.callback_error = None
        error: UcError | None = None
        pc = self.uc.reg_read(UC_ARM_REG_PC)
        self.running = True
        self.bus.cpu = self
        try:
            self.uc.emu_start(pc | 1, _NEVER, 0, count)
        except UcError as exc:
            error = exc
        finally:
            self.running = False
        counter = self._counter.value
        if self.callback_error is not None:
            raise self.callback_error
        if self._flush_pending:
            self._flush_pending = False
            self.uc.ctl_flush_tb()
        if self._stop is not None:
            kind, detail, partial = self._stop
            # The engine cannot leave in the middle of an IT block: a stop asked for there lands
            # on the first instruction after the block, which is counted but not run, like the
            # instruction whose access asked for the stop in the ordinary case.
            if partial or self.pc() != self._stop_pc:
                counter -= 1
            return SliceEnd(kind, counter, detail)
        if error is not None:
            return SliceEnd(StopKind.FAULT, max(counter - 1, 0), f"{error} at pc=0x{self.pc():08X}")
        if counter > count:
            # Budget reached: the instruction at PC was counted, not run. Inside an IT block the
            # engine overshoots to the end of the block (at most 4 instructions).
            return SliceEnd(StopKind.COUNT, counter - 1)
        here = self.pc()
        if self._read_code(here - 2, 2) in _WFI or self._read_code(here - 4, 4) in _WFI_W:
            return SliceEnd(StopKind.WFI, counter, f"wfi/wfe at pc=0x{here - 2:08X}")
        return SliceEnd(StopKind.FAULT, counter, f"core stopped for no known reason at pc=0x{here:08X}")

    def _read_code(self, address: int, n: int) -> bytes:
        try:
            return bytes(self.uc.mem_read(address, n))
        except UcError:
            return b""

    def stop(self, kind: StopKind, detail: str = "", partial: bool = True) -> None:
        """End the slice after the current access; ``partial``: the instruction did not retire."""
        if not self.running:
            return
        if self._stop is None or _PRIORITY[kind] > _PRIORITY[self._stop[0]]:
            self._stop = (kind, detail, partial)
            self._stop_pc = self.pc()
        self.uc.emu_stop()

    # --- services for the bus -------------------------------------------------------------------
    def pc(self) -> int:
        return int(self.uc.reg_read(UC_ARM_REG_PC))

    def now(self) -> int:
        return self.base + self._counter.value if self.running else self.base

    def invalidate_code(self, address: int, size: int) -> None:
        if rm.FLASH_BASE <= address <= rm.FLASH_END:
            self.uc.ctl_remove_cache(address, address + size)
        if self._alias_code:
            if self.running:
                self._flush_pending = True
            else:
                self.uc.ctl_flush_tb()

    def set_fpu_enabled(self, enabled: bool) -> None:
        if enabled == (self._fpu_hook is None):
            return
        if enabled:
            assert self._fpu_hook is not None
            self.uc.hook_del(self._fpu_hook)
            self._fpu_hook = None
        else:
            self._fpu_hook = self.uc.hook_add(UC_HOOK_BLOCK, self._on_block_fp_check)
        # Translated blocks carry (or lack) the hook call: retranslate from the next instruction.
        if self.running:
            self._flush_pending = True
            self.stop(StopKind.RESTART, "CPACR changed")
        else:
            self.uc.ctl_flush_tb()

    # --- memory access for the host (debugger view) ---------------------------------------------
    def mem_read(self, address: int, n: int) -> bytes:
        return bytes(self.uc.mem_read(address, n))

    def mem_write(self, address: int, data: bytes) -> None:
        self.uc.mem_write(address, data)

    def ram_contents(self) -> tuple[bytes, bytes]:
        return self.mem_read(rm.SRAM_BASE, rm.SRAM_SIZE), self.mem_read(rm.CCMDATARAM_BASE,
                                                                          rm.CCMDATARAM_SIZE)

    # --- engine callbacks -----------------------------------------------------------------------
    def _map_peripherals(self) -> None:
        """MMIO regions for every peripheral, with raw ctypes callbacks.

        The binding's ``mmio_map`` wraps each callback in two Python frames; on status-polling
        loops that doubles the cost of an access, so the engine's C entry point is used directly
        (user data = peripheral index + 1, as a null pointer arrives as None).
        """
        peripherals = list(self.bus.peripherals)
        bus_read = self.bus.mmio_read
        bus_write = self.bus.mmio_write

        def read(handle: int, offset: int, size: int, user: int) -> int:
            try:
                return bus_read(peripherals[user - 1], offset, size) & _MASK[size]
            except BaseException as exc:  # nothing may unwind through the engine's C frames
                self._callback_failed(exc)
                return 0

        def write(handle: int, offset: int, size: int, value: int, user: int) -> None:
            try:
                bus_write(peripherals[user - 1], offset, value & _MASK[size], size)
            except BaseException as exc:
                self._callback_failed(exc)

        self._mmio_callbacks = (MMIO_READ_CFUNC(read), MMIO_WRITE_CFUNC(write))
        for index, peripheral in enumerate(peripherals, start=1):
            status = uclib.uc_mmio_map(self.uc._uch, peripheral.base, peripheral.size,
                                       self._mmio_callbacks[0], ctypes.c_void_p(index),
                                       self._mmio_callbacks[1], ctypes.c_void_p(index))
            if status != 0:
                raise UcError(status)

    def _callback_failed(self, exc: BaseException) -> None:
        if self.callback_error is None:
            self.callback_error = exc
        self.stop(StopKind.FAULT, f"model error: {exc!r}")

    def _on_flash_store(self, uc: Uc, access: int, address: int, size: int, value: int, _: Any) -> bool:
        self.bus.flash_store(address, size, value & _MASK[size])
        self._clear_restored_it_state()
        return True

    def _clear_restored_it_state(self) -> None:
        """Undo the IT state the engine restores before calling a memory hook.

        Before a memory hook runs, the engine rewinds the CPU state to the instruction (PC and the
        IT-block bits); when the hook lets execution go on, the rest of the translated block never
        writes the IT bits back, so a store inside an IT block would leave the following blocks
        translated as conditional. Inside a block the IT state lives in the translated code and
        the saved copy is zero (the block writes it back itself when it exits mid-IT), so zeroing
        it (EPSR with only the Thumb bit) is exact.
        """
        self.uc.reg_write(UC_ARM_REG_EPSR, _EPSR_T)

    def _on_unmapped(self, uc: Uc, access: int, address: int, size: int, value: int, _: Any) -> bool:
        kind = "x" if access == UC_MEM_FETCH_UNMAPPED else "w" if access == UC_MEM_WRITE_UNMAPPED else "r"
        if kind == "x":
            self.bus.unmapped(address, size, kind, None)
            self.stop(StopKind.FAULT, f"instruction fetch from unmapped 0x{address:08X}", partial=False)
            return False
        if self.bus.strict:
            self.bus.unmapped(address, size, kind, value & _MASK.get(size, _MASK[8]) if kind == "w" else None)
            return False
        # Lenient mode: map a page that reports every access and reads as 0; the engine then
        # retries this access through it (so it is reported once, there).
        page = address & ~(PAGE - 1)
        if page not in self._unmodelled_pages:
            self._unmodelled_pages.add(page)
            uc.mmio_map(page, PAGE, self._unmodelled_read, page, self._unmodelled_write, page)
        self._clear_restored_it_state()
        return True

    def _unmodelled_read(self, uc: Uc, offset: int, size: int, page: int) -> int:
        self.bus.unmapped(page + offset, size, "r", None)
        return 0

    def _unmodelled_write(self, uc: Uc, offset: int, size: int, value: int, page: int) -> None:
        self.bus.unmapped(page + offset, size, "w", value & _MASK[size])

    def _on_fetch_prot(self, uc: Uc, access: int, address: int, size: int, value: int, _: Any) -> bool:
        # The silicon faults too: CCM RAM sits on the D-bus only (RM0090 §2.3.1).
        self.bus.bus_error("bus", address, size, "x", None, "instruction fetch from data-only memory")
        return False

    def _on_exception(self, uc: Uc, intno: int, _: Any) -> None:
        name = _EXCEPTIONS.get(intno, f"exception {intno}")
        self.stop(StopKind.FAULT, f"{name} at pc=0x{self.pc():08X} (exceptions are not modelled)",
                  partial=False)

    def _on_alias_block(self, uc: Uc, address: int, size: int, _: Any) -> None:
        self._alias_code = True

    def _on_block_fp_check(self, uc: Uc, address: int, size: int, _: Any) -> None:
        key = (address, size)
        if key not in self._fp_scan:
            self._fp_scan[key] = find_fp_instruction(bytes(uc.mem_read(address, size)), address)
        hit = self._fp_scan[key]
        if hit is not None:
            self.stop(StopKind.FAULT, f"NOCP UsageFault: floating-point instruction at 0x{hit:08X} "
                      "while CPACR grants no CP10/CP11 access", partial=False)
