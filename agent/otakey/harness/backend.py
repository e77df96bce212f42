"""The device backend: one interface to a device that runs the real firmware image, whatever runs it
(DESIGN §3 "Device backends"): the built-in emulator (``emu``, :mod:`.emu_backend`), and later
Renode and a real board. Tests, the Robot keyword library, ``otakey emu run`` and the campaigns talk
to devices only through this class.

Lifecycle (call order)::

    dev = backend("emu").create(elf, uid=..., seed=..., name=...)   # flashed with the image, off
    dev.power_on()                      # boots from flash as it is (first time: the factory image)
    dev.run_until_idle()                # run until the firmware waits for input
    dev.read() / dev.write(frames)      # the link: USART1 bytes (protocol §1 frames)
    dev.run_for(2000)                   # let 2 s of device time pass (cheap while it waits)
    dev.cut_power()                     # now; or cut_power_at_instruction(n) / at_flash_op(k, torn)
    dev.power_on() ...                  # SRAM lost, flash kept
    dev.read_flash("A"), dev.decode_keystore(), dev.key_state()
    dev.close()

Required methods raise ``NotImplementedError`` here: :meth:`create`, :meth:`power_on`,
:meth:`run_for`, :meth:`run_until_idle`, :meth:`write`, :meth:`read`, :meth:`input_pending`,
:meth:`cut_power`, :meth:`read_flash`, :meth:`close`, and the properties :attr:`powered` and
:attr:`device_ms`. Optional (a backend that cannot do them raises ``NotImplementedError``, and a
test that needs them says so): :meth:`cut_power_at_instruction`, :meth:`cut_power_at_flash_op`
(a real board cannot cut at an exact instruction), :attr:`instructions`, :attr:`flash_ops`.
Implemented here on top of :meth:`read_flash`: :meth:`decode_keystore`, :meth:`key_state`.

Time is the device's own: :meth:`run_for` counts milliseconds of device time, never wall time.
A backend makes waiting cheap where it can (the emulator warps SysTick while the firmware waits).

Runtime conditions are values, not exceptions: a run ends with a :class:`RunOutcome` whose reason
says idle, budget, fault, reset or power cut. Caller mistakes (a run while powered off, a bad area
name) raise ``ValueError``/:class:`~otakey.errors.DeviceError`.
"""

from __future__ import annotations

import enum
import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from otakey.errors import KeystoreError
from otakey.protocol.keystore import AREA_A, AREA_B, AreaName, BootResult, KeystoreState, boot, decode_record


class RunReason(enum.Enum):
    IDLE = "idle"  # the firmware waits for input (and for no time-out that is due)
    BUDGET = "budget"  # the device time or instruction budget ran out
    OUTPUT = "output"  # run_for(stop_on_output=True) stopped because the device transmitted
    FAULT = "fault"  # the core faulted; it stays faulted until power-on
    RESET = "reset"  # the firmware reset itself; it is booting again
    POWER_CUT = "power-cut"  # a scheduled cut happened; the device is off


@dataclass(frozen=True)
class RunOutcome:
    reason: RunReason
    instructions: int  # executed in this call (0 where the backend cannot count)
    device_ms: float  # device time that passed in this call, warps included
    detail: str = ""


@dataclass(frozen=True)
class KeyState:
    """What the device's keystore holds, as its boot rule (flash-layout §2) sees it, without keys.

    ``keys`` is the banner's word: ``none``, ``factory`` (PK), ``provisioned`` (AK) or ``cloud``.
    ``pk_in_flash`` is whether any area still decodes to a record with a PK (the scrub left none).
    """

    keys: str
    active: AreaName | None
    generation: int
    po_id: int | None
    po_name: str | None
    ak_version: int | None
    cloud_version: int | None
    cloud_platform: int | None
    pk_in_flash: bool
    valid: tuple[bool, bool]
    blank: tuple[bool, bool]

    @property
    def provisioned(self) -> bool:
        return self.ak_version is not None and not self.pk_in_flash

    def to_dict(self) -> dict[str, Any]:
        return {"keys": self.keys, "active": self.active, "generation": self.generation, "po_id": self.po_id,
                "po_name": self.po_name, "ak_version": self.ak_version, "cloud_version": self.cloud_version,
                "cloud_platform": self.cloud_platform, "pk_in_flash": self.pk_in_flash,
                "valid": list(self.valid), "blank": list(self.blank)}


def key_state_of(areas: tuple[bytes, bytes]) -> KeyState:
    result = boot(*areas)
    state = result.state
    pk_anywhere = False
    for image in areas:
        try:
            pk_anywhere |= decode_record(image, len(image)).has_pk
        except KeystoreError:
            continue
    if state is None:
        keys = "none"
    elif state.cloud is not None:
        keys = "cloud"
    elif state.ak is not None:
        keys = "provisioned"
    else:
        keys = "factory" if state.has_pk else "none"
    return KeyState(
        keys=keys, active=result.active, generation=0 if state is None else state.generation,
        po_id=None if state is None else state.po_id, po_name=None if state is None else state.po_name,
        ak_version=None if state is None else state.ak_version,
        cloud_version=None if state is None or state.cloud is None else state.cloud.version,
        cloud_platform=None if state is None or state.cloud is None else int(state.cloud.platform),
        pk_in_flash=pk_anywhere, valid=result.valid, blank=result.blank)


class DeviceBackend(ABC):
    """One device running a firmware image. See the module docstring for the lifecycle."""

    #: registry name ("emu", "renode", "board")
    kind: ClassVar[str] = ""

    name: str
    uid: bytes

    # --- life ------------------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def create(cls, elf: str | Path, uid: bytes, seed: int = 0, name: str | None = None,
               **options: Any) -> DeviceBackend:
        """A device flashed with ``elf`` (both keystore areas as the image has them), powered off.
        ``uid`` is its 96-bit unique ID; ``seed`` makes its randomness (RNG, RAM contents, torn
        writes) reproducible where the backend can."""
        raise NotImplementedError

    @abstractmethod
    def power_on(self) -> None:
        """Apply power: the firmware boots from flash as it is; RAM and peripherals start afresh."""
        raise NotImplementedError

    @property
    @abstractmethod
    def powered(self) -> bool:
        raise NotImplementedError

    @abstractmethod
    def close(self) -> None:
        """Release everything the device holds (idempotent)."""
        raise NotImplementedError

    # --- running ---------------------------------------------------------------------------------
    @abstractmethod
    def run_until_idle(self, max_instructions: int | None = None) -> RunOutcome:
        """Run until the firmware waits for input (IDLE), or ``max_instructions`` (BUDGET)."""
        raise NotImplementedError

    @abstractmethod
    def run_for(self, ms: float, stop_on_output: bool = False) -> RunOutcome:
        """Let ``ms`` milliseconds of device time pass, the firmware running all along (it may time
        out, retry, check in). ``stop_on_output``: return as soon as the device has transmitted
        something and is waiting again (reason OUTPUT), so that an answer can reach it in time."""
        raise NotImplementedError

    @property
    @abstractmethod
    def device_ms(self) -> float:
        """Device time since creation, in milliseconds (what the firmware's clock would say)."""
        raise NotImplementedError

    @property
    def instructions(self) -> int:
        """Instructions retired since creation (optional)."""
        raise NotImplementedError

    # --- link ------------------------------------------------------------------------------------
    @abstractmethod
    def write(self, data: bytes) -> None:
        """Bytes to the device's link (USART1 receive side)."""
        raise NotImplementedError

    @abstractmethod
    def read(self) -> bytes:
        """Everything the device transmitted on its link since the last read."""
        raise NotImplementedError

    @abstractmethod
    def input_pending(self) -> bool:
        """Bytes written to the device that it has not taken yet."""
        raise NotImplementedError

    # --- power cuts ------------------------------------------------------------------------------
    @abstractmethod
    def cut_power(self) -> None:
        """Remove power now."""
        raise NotImplementedError

    def cut_power_at_instruction(self, n: int) -> None:
        """Cut power when the device's instruction count reaches ``n`` (optional)."""
        raise NotImplementedError

    def cut_power_at_flash_op(self, k: int, torn: str | None = None) -> None:
        """Cut power at flash operation ``k`` (1-based over the device's life), cleanly before it or
        leaving it torn (``"partial"``, ``"erase-partial"``, ``"program-partial"``, ``"done"``)
        (optional)."""
        raise NotImplementedError

    @property
    def flash_ops(self) -> list[Any]:
        """The flash operations so far, in order (optional)."""
        raise NotImplementedError

    # --- flash and keys --------------------------------------------------------------------------
    @abstractmethod
    def read_flash(self, area: str) -> bytes:
        """The whole keystore area ``"A"`` or ``"B"`` as it is in the device's flash now."""
        raise NotImplementedError

    def decode_keystore(self) -> BootResult:
        """Both areas through the boot rule (flash-layout §2): active area, its state, validity."""
        return boot(self.read_flash(AREA_A), self.read_flash(AREA_B))

    def decode_area(self, area: str) -> KeystoreState | None:
        """One area's record, or None when it holds no valid record."""
        image = self.read_flash(area)
        try:
            return decode_record(image, len(image))
        except KeystoreError:
            return None

    def key_state(self) -> KeyState:
        return key_state_of((self.read_flash(AREA_A), self.read_flash(AREA_B)))

    def __enter__(self) -> DeviceBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: Backends by name -> "module:Class" (an explicit registry, imported only when used, so a backend
#: whose tools are not installed costs nothing until chosen). Renode and real boards add theirs here.
BACKENDS: dict[str, str] = {
    "emu": "otakey.harness.emu_backend:EmuBackend",
    "board": "otakey.harness.board_backend:BoardBackend",
    "renode": "otakey.harness.renode_backend:RenodeBackend",
}


def backend(kind: str) -> type[DeviceBackend]:
    """The backend class registered as ``kind``."""
    try:
        target = BACKENDS[kind]
    except KeyError:
        raise ValueError(f"unknown device backend {kind!r}; known: {', '.join(BACKENDS)}") from None
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, DeviceBackend)):
        raise TypeError(f"{target} is not a DeviceBackend")
    return cls
