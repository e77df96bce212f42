"""The ``board`` device backend: a real STM32F429I-DISC1 on its USB ST-LINK.

Two things come over that one USB cable: the debug probe (SWD), which flashes the image, resets the
core and reads memory, and the ST-LINK's virtual COM port, which is the firmware's USART1 — the link
the gateway carries (pyserial, ``/dev/ttyACM0`` on Linux). :class:`Probe` drives the probe with
either OpenOCD or st-flash (stlink-tools); :class:`BoardBackend` is the device behind the backend
interface.

Flashing, as ``otakey flash`` runs it:

- OpenOCD: ``openocd -f board/stm32f429disc1.cfg -c "program ELF verify reset exit"`` — OpenOCD reads
  the load addresses from the ELF, verifies, and resets into the new image;
- st-flash: ``st-flash --reset write IMAGE.bin BASE`` with BASE the lowest load address of the ELF
  (never a constant), then ``st-flash read`` of the same range, compared here byte for byte. The
  ``.bin`` next to the ELF is used when it is exactly the ELF's image, otherwise one is made from
  the ELF.

Both programs exit non-zero when no probe answers; that becomes :class:`NoProbe`, one sentence that
says what to plug in. What a real board cannot do: cut power at an exact instruction or flash
operation (use the ``emu`` backend), or lose its RAM on a "cut" — :meth:`BoardBackend.cut_power`
holds the core in reset-halt through OpenOCD (the firmware zeroes ``.bss`` on every boot anyway).
Time on a board is wall time.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from otakey.emu import rm0090 as rm
from otakey.errors import DeviceError
from otakey.firmware.elf import FirmwareElf

from .backend import DeviceBackend, RunOutcome, RunReason

PROBES = ("openocd", "stlink")
OPENOCD_BOARD = "board/stm32f429disc1.cfg"  # shipped with OpenOCD >= 0.11 (scripts/board/)
INSTALL = {"openocd": "apt-get install openocd", "st-flash": "apt-get install stlink-tools"}
DEFAULT_PORT = "/dev/ttyACM0"  # the ST-LINK/V2-B virtual COM port on Linux
# What the tools print when no probe is there or it cannot be opened (OpenOCD 0.12, stlink 1.7).
_NO_PROBE = re.compile(
    r"open failed|unable to open|no device found|couldn't find any st-?link|"
    r"found 0 stlink|libusb_error_access|libusb_open\(\) failed|"
    r"unable to find a matching",
    re.IGNORECASE,
)
_IDLE_GAP_MS = 100.0  # a board is idle when its link stays quiet this long

Runner = Callable[[list[str], float], "subprocess.CompletedProcess[str]"]


class ProbeError(DeviceError):
    """The probe tool failed (not installed, a verify mismatch, an error it printed)."""


class NoProbe(ProbeError):
    """No ST-LINK probe answered."""


def _run_tool(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def _tcl_word(path: str | Path) -> str:
    """A path as one Tcl word for OpenOCD's -c (braces keep spaces and brackets literal)."""
    text = str(path)
    if re.fullmatch(r"[A-Za-z0-9_./+=:@%,-]+", text):
        return text
    if "{" in text or "}" in text:
        raise ValueError(f"OpenOCD cannot be given a path with braces: {text}")
    return "{" + text + "}"


@dataclass(frozen=True)
class FlashImage:
    """The flash contents an ELF programs, as one range from its lowest load address."""

    base: int
    data: bytes = field(repr=False)

    @classmethod
    def of(cls, elf: FirmwareElf) -> FlashImage:
        segments = elf.segments()
        base = min(address for address, _ in segments)
        end = max(address + len(data) for address, data in segments)
        return cls(base, elf.read(base, end - base))


@dataclass(frozen=True)
class FlashResult:
    probe: str
    elf: str
    base: int
    size: int
    commands: list[list[str]]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "probe": self.probe,
            "elf": self.elf,
            "base": f"0x{self.base:08X}",
            "size": self.size,
            "commands": self.commands,
            "verified": True,
            "seconds": round(self.seconds, 3),
        }


class Probe:
    """An ST-LINK driven through ``openocd`` or ``st-flash``. ``serial`` picks one probe when several
    are plugged in. ``runner`` executes an argv (tests pass a fake; default: subprocess)."""

    def __init__(
        self,
        kind: str = "openocd",
        *,
        serial: str | None = None,
        timeout: float = 120.0,
        openocd_config: str = OPENOCD_BOARD,
        runner: Runner | None = None,
    ) -> None:
        if kind not in PROBES:
            raise ValueError(f"a probe is one of {', '.join(PROBES)}")
        if serial is not None and not re.fullmatch(r"[0-9A-Za-z]+", serial):
            raise ValueError("a probe serial number is letters and digits")
        self.kind = kind
        self.serial = serial
        self.timeout = timeout
        self.openocd_config = openocd_config
        self.runner = runner or _run_tool

    @property
    def tool(self) -> str:
        return "openocd" if self.kind == "openocd" else "st-flash"

    # --- argv ------------------------------------------------------------------------------------
    def _openocd(self, *commands: str) -> list[str]:
        argv = ["openocd", "-f", self.openocd_config]
        if self.serial:
            argv += ["-c", f"adapter serial {self.serial}"]
        for c in commands:
            argv += ["-c", c]
        return argv

    def _stflash(self, *args: str) -> list[str]:
        argv = ["st-flash"]
        if self.serial:
            argv += ["--serial", self.serial]
        return argv + list(args)

    def flash_commands(
        self, elf: FirmwareElf, bin_path: str | Path | None = None, readback: str | Path | None = None
    ) -> list[list[str]]:
        """The commands :meth:`flash` runs, in order (st-flash: ``bin_path`` is the image written,
        ``readback`` where the flash is read back to for the comparison)."""
        if self.kind == "openocd":
            return [self._openocd(f"program {_tcl_word(elf.path)} verify reset exit")]
        image = FlashImage.of(elf)
        path = str(bin_path or elf.path.with_suffix(".bin"))
        back = str(readback or Path(tempfile.gettempdir()) / "otakey-flash-readback.bin")
        return [
            self._stflash("--reset", "write", path, f"0x{image.base:08X}"),
            self._stflash("read", back, f"0x{image.base:08X}", str(len(image.data))),
        ]

    def reset_command(self, halt: bool = False) -> list[str]:
        if self.kind == "openocd":
            return self._openocd("init", "reset halt" if halt else "reset run", "shutdown")
        if halt:
            raise ProbeError("st-flash cannot hold the core halted; use --probe openocd for that")
        return self._stflash("reset")

    def read_command(self, address: int, size: int, out: str | Path) -> list[str]:
        if size <= 0:
            raise ValueError("size must be > 0")
        if self.kind == "openocd":
            return self._openocd(
                "init", "halt", f"dump_image {_tcl_word(out)} 0x{address:08X} {size}", "resume", "shutdown"
            )
        return self._stflash("read", str(out), f"0x{address:08X}", str(size))

    # --- running ---------------------------------------------------------------------------------
    def run(self, argv: list[str], what: str) -> str:
        try:
            proc = self.runner(argv, self.timeout)
        except FileNotFoundError:
            raise ProbeError(f"{argv[0]} is not installed ({INSTALL.get(argv[0], 'install it')})") from None
        except subprocess.TimeoutExpired:
            raise ProbeError(f"{argv[0]} did not finish {what} within {self.timeout:.0f} s") from None
        output = (proc.stdout or "") + (proc.stderr or "")
        if proc.returncode != 0:
            m = _NO_PROBE.search(output)
            if m:
                raise NoProbe(
                    f"no ST-LINK probe answered ({argv[0]}: {_line_of(output, m.start())}): "
                    "connect the STM32F429I-DISC1 by its USB ST-LINK connector (CN1) and check "
                    "that this user may open it (the udev rules of the openocd/stlink-tools "
                    "package)"
                )
            tail = " | ".join(output.strip().splitlines()[-3:])
            raise ProbeError(f"{argv[0]} failed {what} (exit {proc.returncode}): {tail}")
        return output

    def flash(self, elf_path: str | Path | FirmwareElf) -> FlashResult:
        """Program the ELF's image and verify it; the core then runs the new image."""
        started = time.monotonic()
        elf = elf_path if isinstance(elf_path, FirmwareElf) else FirmwareElf(elf_path)
        image = FlashImage.of(elf)
        if self.kind == "openocd":
            commands = self.flash_commands(elf)
            output = self.run(commands[0], "programming")
            if re.search(r"verify failed|checksum mismatch", output, re.IGNORECASE):
                raise ProbeError("the flash does not match the image after programming (OpenOCD verify)")
            return FlashResult(
                self.kind, str(elf.path), image.base, len(image.data), commands, time.monotonic() - started
            )
        with tempfile.TemporaryDirectory(prefix="otakey-flash-") as tmp:
            bin_path = self._bin_for(elf, image, Path(tmp))
            readback = Path(tmp) / "readback.bin"
            commands = self.flash_commands(elf, bin_path, readback)
            self.run(commands[0], "programming")
            self.run(commands[1], "reading back")
            if not readback.exists() or readback.read_bytes() != image.data:
                raise ProbeError(
                    "the flash does not match the image after programming (read back by st-flash)"
                )
        return FlashResult(
            self.kind, str(elf.path), image.base, len(image.data), commands, time.monotonic() - started
        )

    @staticmethod
    def _bin_for(elf: FirmwareElf, image: FlashImage, tmp: Path) -> Path:
        beside = elf.path.with_suffix(".bin")
        if beside.is_file() and beside.read_bytes() == image.data:
            return beside
        made = tmp / (elf.path.stem + ".bin")
        made.write_bytes(image.data)
        return made

    def reset(self, halt: bool = False) -> None:
        self.run(self.reset_command(halt), "resetting the core")

    def read_memory(self, address: int, size: int) -> bytes:
        with tempfile.TemporaryDirectory(prefix="otakey-probe-") as tmp:
            out = Path(tmp) / "dump.bin"
            self.run(self.read_command(address, size, out), f"reading 0x{address:08X}+{size}")
            data = out.read_bytes() if out.exists() else b""
        if len(data) != size:
            raise ProbeError(f"{self.tool} read {len(data)} of {size} bytes at 0x{address:08X}")
        return data


def _line_of(text: str, pos: int) -> str:
    """The line of ``text`` around ``pos``, without st-flash's "<time> WARN file.c:" prefix."""
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    line = text[start : end if end >= 0 else len(text)].strip()
    return re.sub(r"^\S*T\d\d:\d\d:\d\d\s+[A-Z]+\s+\S+:\s*", "", line)


# --------------------------------------------------------------------------------------------- backend


def _open_serial(url: str, baudrate: int) -> Any:
    import serial  # pyserial, a dependency of the gateway

    try:
        return serial.serial_for_url(
            url,
            baudrate=baudrate,
            bytesize=serial.EIGHTBITS,
            parity=serial.PARITY_NONE,
            stopbits=serial.STOPBITS_ONE,
            timeout=0,
            write_timeout=5.0,
        )
    except (serial.SerialException, ValueError, OSError) as exc:
        raise DeviceError(f"cannot open the board's serial port {url}: {exc}") from None


class BoardBackend(DeviceBackend):
    kind = "board"

    def __init__(self, probe: Probe, firmware: FirmwareElf, link: Any, name: str, uid: bytes) -> None:
        self.probe = probe
        self.firmware = firmware
        self.link = link
        self.name = name
        self.uid = uid
        self._powered = False
        self._device_ms = 0.0
        self._pending = b""
        self._closed = False

    @classmethod
    def create(
        cls, elf: str | Path | FirmwareElf, uid: bytes, seed: int = 0, name: str | None = None, **options: Any
    ) -> BoardBackend:
        """``options``: ``port`` (serial device or pyserial URL, default /dev/ttyACM0), ``probe``
        (openocd|stlink, default openocd), ``serial`` (probe serial number), ``flash`` (default
        True: program and verify the ELF first), ``baudrate``, ``runner`` (tests). ``uid``: the
        board's UID, checked through the probe; empty: take whatever the board has. The board is
        left halted (off) until :meth:`power_on`."""
        unknown = set(options) - {"port", "probe", "serial", "flash", "baudrate", "runner"}
        if unknown:
            raise ValueError(f"unknown board backend options: {', '.join(sorted(unknown))}")
        firmware = elf if isinstance(elf, FirmwareElf) else FirmwareElf(elf)
        probe = Probe(
            options.get("probe", "openocd"), serial=options.get("serial"), runner=options.get("runner")
        )
        if options.get("flash", True):
            probe.flash(firmware)
        board_uid = probe.read_memory(rm.UID_BASE, 12)
        if uid and bytes(uid) != board_uid:
            raise DeviceError(f"the board's UID is {board_uid.hex()}, not {bytes(uid).hex()}")
        if probe.kind == "openocd":
            probe.reset(halt=True)
        link = _open_serial(options.get("port") or default_port(), int(options.get("baudrate", 115200)))
        return cls(probe, firmware, link, name or f"board-{board_uid.hex()}", board_uid)

    def power_on(self) -> None:
        self._check_open()
        self.link.reset_input_buffer()  # what came before the boot belongs to no one
        self._pending = b""
        self.probe.reset(halt=False)
        self._powered = True

    @property
    def powered(self) -> bool:
        return self._powered

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.link.close()

    def _check_open(self) -> None:
        if self._closed:
            raise DeviceError(f"{self.name}: closed")

    # --- running (wall time) -----------------------------------------------------------------
    @property
    def device_ms(self) -> float:
        return self._device_ms

    def _pump(self) -> int:
        waiting = self.link.in_waiting
        data = self.link.read(waiting) if waiting else b""
        self._pending += data
        return len(data)

    def run_for(self, ms: float, stop_on_output: bool = False) -> RunOutcome:
        if ms < 0:
            raise ValueError("ms must be >= 0")
        self._check_open()
        start = time.monotonic()
        deadline = start + ms / 1000.0
        while True:
            got = self._pump()
            now = time.monotonic()
            if stop_on_output and (got or self._pending):
                reason = RunReason.OUTPUT
                break
            if now >= deadline:
                reason = RunReason.BUDGET
                break
            # A real board runs by itself: waiting here is the device's time passing.
            time.sleep(min(0.005, deadline - now))
        elapsed = (time.monotonic() - start) * 1000.0
        self._device_ms += elapsed
        self._unseen_input = False
        return RunOutcome(reason, 0, elapsed)

    def run_until_idle(self, max_instructions: int | None = None) -> RunOutcome:
        """Until the link stays quiet for 100 ms (or ``max_instructions`` at 180 MHz of time)."""
        self._check_open()
        start = time.monotonic()
        limit = None if max_instructions is None else max_instructions / 180e6
        quiet_since = start
        while True:
            now = time.monotonic()
            if self._pump():
                quiet_since = now
            if (now - quiet_since) * 1000.0 >= _IDLE_GAP_MS:
                reason = RunReason.IDLE
                break
            if limit is not None and now - start >= limit:
                reason = RunReason.BUDGET
                break
            time.sleep(0.005)
        elapsed = (time.monotonic() - start) * 1000.0
        self._device_ms += elapsed
        self._unseen_input = False
        return RunOutcome(reason, 0, elapsed)

    # --- link ------------------------------------------------------------------------------------
    _unseen_input = False

    def write(self, data: bytes) -> None:
        self._check_open()
        self.link.write(bytes(data))
        self.link.flush()
        self._unseen_input = True

    def read(self) -> bytes:
        self._pump()
        data, self._pending = self._pending, b""
        return data

    def input_pending(self) -> bool:
        """Bytes were written and no run has let the board answer them since."""
        return self._unseen_input

    @property
    def link_url(self) -> str:
        """What the gateway opens for this board (its serial transport)."""
        return str(getattr(self.link, "port", None) or getattr(self.link, "name", ""))

    # --- power -----------------------------------------------------------------------------------
    def cut_power(self) -> None:
        """Hold the core in reset-halt through the probe (OpenOCD): the nearest a probe comes to a
        cut. RAM is kept, flash is kept; :meth:`power_on` resets it into the firmware again."""
        self._check_open()
        self.probe.reset(halt=True)
        self._powered = False

    # --- flash -----------------------------------------------------------------------------------
    def read_flash(self, area: str) -> bytes:
        a = self.firmware.area(area)
        return self.probe.read_memory(a.address, a.size)

    def __repr__(self) -> str:
        return f"<BoardBackend {self.name} {self.probe.kind} {'on' if self._powered else 'off'}>"


def default_port() -> str:
    """The serial port to use: ``$OTAKEY_BOARD_PORT`` or /dev/ttyACM0."""
    return os.environ.get("OTAKEY_BOARD_PORT", DEFAULT_PORT)
