"""The ``renode`` device backend: the firmware ELF on Renode's STM32F429, driven through pyrenode3.

Renode is not on any registry we can reach (DESIGN §4), so nothing here is imported until this
backend is chosen, and a machine without Renode gets one :class:`RenodeNotFound` that says how to
point pyrenode3 at a Renode: ``PYRENODE_PKG`` (a Renode package), ``PYRENODE_BUILD_DIR`` (a Renode
source tree built with ``./build.sh``) or ``PYRENODE_BIN`` (a portable binary).

A device is one Renode machine set up exactly as ``renode/otakey-device.resc`` does it
(:func:`device_commands` is that script as a list, and a test keeps the two equal): our platform file
``renode/stm32f429i-disc1.repl``, the ELF loaded once, the UID written to 0x1FFF7A10 (Renode has no
UID model), and USART1 on a server socket terminal on 127.0.0.1. The backend dials that socket itself
so that :meth:`read`/:meth:`write` work like every other backend (and a :class:`LinkedDevice` carries
it to an agent); with ``connect=False`` the socket is left for an external gateway
(``tcp://127.0.0.1:PORT``, :attr:`RenodeBackend.link_url`).

Renode facts this relies on (DESIGN §4): ``machine Reset`` keeps RAM *and* flash, so a power cut is
pause → dump flash → zero SRAM → reset → reload flash if the reset changed it → boot from the vector
table in flash (VTOR; Renode maps nothing at the 0x0 alias). Time is Renode's virtual time:
:meth:`run_for` is ``emulation RunFor``; with ``systickFrequency`` at 180 MHz one firmware millisecond
is one virtual millisecond. All machines of one Renode process share that time: running one device
runs them all — so cut power with one device per Renode process (as brickproof does), or a device
that is "off" runs again with the others.

What Renode cannot do here: cut at an exact instruction or flash operation (use the ``emu`` backend:
``otakey campaign``), and say when the firmware waits for input — :meth:`run_until_idle` runs
until a slice of virtual time passes without output.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from otakey.emu import rm0090 as rm
from otakey.errors import DeviceError
from otakey.firmware.elf import FirmwareElf

from .backend import DeviceBackend, RunOutcome, RunReason

ENV_VARS = ("PYRENODE_PKG", "PYRENODE_BUILD_DIR", "PYRENODE_BIN")
RENODE_DIR_ENV = "OTAKEY_RENODE_DIR"
PYRENODE_INSTALL = "pip install 'pyrenode3[all] @ git+https://github.com/antmicro/pyrenode3.git'"
SLICE_MS = 100.0  # virtual time per RunFor while watching for output (each RunFor costs a monitor call)
MIPS = 180  # one instruction per HCLK cycle at 180 MHz, as renode/otakey-device.resc sets


class RenodeNotFound(DeviceError):
    """Renode or pyrenode3 is not installed, or pyrenode3 cannot load the Renode it was pointed at."""


def _hint() -> str:
    return (
        f"set exactly one of {ENV_VARS[0]} (a Renode package), {ENV_VARS[1]} (a Renode source "
        f"tree built with ./build.sh) or {ENV_VARS[2]} (a Renode portable binary), or install Renode "
        "so that `renode` is on PATH; see renode/README.md"
    )


def renode_dir() -> Path:
    """The folder with our .repl/.resc files: ``$OTAKEY_RENODE_DIR`` or ``renode/`` of the checkout."""
    env = os.environ.get(RENODE_DIR_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[3] / "renode"


# --------------------------------------------------------------------------------------------- commands


def uid_words(uid: bytes) -> tuple[int, int, int]:
    """The 96-bit UID as the three little-endian words at 0x1FFF7A10/14/18 (port_device_uid)."""
    if len(uid) != 12:
        raise ValueError("a UID is 12 bytes (96 bits)")
    return tuple(int.from_bytes(uid[i : i + 4], "little") for i in (0, 4, 8))  # type: ignore[return-value]


def _path(p: str | Path) -> str:
    text = str(p)
    if '"' in text:
        raise ValueError(f"a path with a double quote cannot be passed to the Renode monitor: {text}")
    return f'@"{text}"' if " " in text else f"@{text}"


def device_commands(
    firmware: FirmwareElf, *, name: str, term: str, port: int, uid: bytes, repl: str | Path, mips: int = MIPS
) -> list[str]:
    """The monitor commands that make one device, in the order ``renode/otakey-device.resc`` runs
    them (with its variables filled in). Addresses come from the ELF and the RM0090 table."""
    w0, w1, w2 = uid_words(uid)
    vtor = firmware.vector_table.address
    return [
        "using sysbus",
        f'mach create "{name}"',
        f"machine LoadPlatformDescription {_path(repl)}",
        f"cpu PerformanceInMips {mips}",
        f"sysbus LoadELF {_path(firmware.path)}",
        f"sysbus WriteDoubleWord 0x{rm.UID_BASE:08X} 0x{w0:08X}",
        f"sysbus WriteDoubleWord 0x{rm.UID_BASE + 4:08X} 0x{w1:08X}",
        f"sysbus WriteDoubleWord 0x{rm.UID_BASE + 8:08X} 0x{w2:08X}",
        f"cpu VectorTableOffset 0x{vtor:08X}",
        f'emulation CreateServerSocketTerminal {port} "{term}" false',
        f'connector Connect sysbus.usart1 "{term}"',
    ]


def power_cycle_commands(firmware: FirmwareElf) -> list[str]:
    """A power cycle as the .resc's ``power_cycle`` macro: SRAM lost, flash kept, boot from flash."""
    return [
        "pause",
        "sysbus.sram ZeroAll",
        "machine Reset",
        f"cpu VectorTableOffset 0x{firmware.vector_table.address:08X}",
    ]


# --------------------------------------------------------------------------------------------- session


class RenodeSession(Protocol):
    """What the backend needs from a Renode: monitor commands and memory access by machine."""

    def execute(self, command: str) -> str: ...

    def read_bytes(self, machine: str, address: int, size: int) -> bytes: ...

    def write_bytes(self, machine: str, address: int, data: bytes) -> None: ...


class PyRenodeSession:
    """The Renode of this process, through pyrenode3 (one per process: pyrenode3 is a singleton)."""

    def __init__(self) -> None:
        wrappers = load_pyrenode3()
        self._emulation = wrappers.Emulation()
        self._monitor = wrappers.Monitor()

    def execute(self, command: str) -> str:
        out, err = self._monitor.execute(command)
        if err:
            raise DeviceError(f"Renode refused `{command}`: {' '.join(str(err).split())}")
        return str(out)

    def _sysbus(self, machine: str) -> Any:
        mach = self._emulation.get_mach(machine)
        if mach is None:
            raise DeviceError(f"Renode has no machine {machine!r}")
        return mach.sysbus

    def read_bytes(self, machine: str, address: int, size: int) -> bytes:
        data = self._sysbus(machine).ReadBytes(address, size)
        try:
            return bytes(data)
        except TypeError:  # a .NET byte[] that pythonnet does not turn into bytes directly
            return bytes(int(b) for b in data)

    def write_bytes(self, machine: str, address: int, data: bytes) -> None:
        from System import Array, Byte  # type: ignore[import-not-found]  # pythonnet, with Renode

        self._sysbus(machine).WriteBytes(Array[Byte](list(data)), address)


def load_pyrenode3() -> Any:
    """``pyrenode3.wrappers`` with Renode loaded, or :class:`RenodeNotFound` with the fix."""
    if not any(os.environ.get(v) for v in ENV_VARS) and shutil.which("renode") is None:
        raise RenodeNotFound(f"Renode was not found: {_hint()}")
    # Renode deletes every $TMPDIR/renode-* folder not named after a live PID when it starts
    # (DESIGN §4): give it a folder of its own so it cannot remove another Renode's files.
    previous = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = tempfile.mkdtemp(prefix="otakey-renode-tmp-")
    # pyrenode3 reads the PYRENODE_* variables once, at first import: after a failed import its
    # cached submodules would keep the old settings, so drop them before trying again.
    if "pyrenode3" not in sys.modules:
        for name in [m for m in sys.modules if m.startswith("pyrenode3.")]:
            del sys.modules[name]
    try:
        import pyrenode3  # noqa: F401
        from pyrenode3 import wrappers
    except Exception as exc:  # pyrenode3 raises ImportError, or errors of its loader
        if previous is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = previous
        if isinstance(exc, ModuleNotFoundError) and exc.name == "pyrenode3":
            raise RenodeNotFound(f"pyrenode3 is not installed ({PYRENODE_INSTALL}); then {_hint()}") from None
        reason = " ".join(str(exc).split())
        raise RenodeNotFound(f"pyrenode3 cannot load Renode ({reason}); {_hint()}") from None
    return wrappers


_SERIAL = itertools.count(1)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------------------------- backend


class RenodeBackend(DeviceBackend):
    kind = "renode"

    def __init__(
        self, session: RenodeSession, firmware: FirmwareElf, name: str, uid: bytes, port: int, connect: bool
    ) -> None:
        self.session = session
        self.firmware = firmware
        self.name = name
        self.uid = uid
        self.port = port
        self._connect = connect
        self._sock: socket.socket | None = None
        self._powered = False
        self._booted_once = False
        self._device_ms = 0.0
        self._closed = False

    @property
    def link_url(self) -> str:
        """What a gateway dials to carry this device's link (when ``connect=False``)."""
        return f"tcp://127.0.0.1:{self.port}"

    @classmethod
    def create(
        cls, elf: str | Path | FirmwareElf, uid: bytes, seed: int = 0, name: str | None = None, **options: Any
    ) -> RenodeBackend:
        """``options``: ``port`` (socket terminal, default a free one), ``connect`` (default True:
        the backend dials the socket itself), ``repl`` (platform file), ``mips``, ``session`` (a
        :class:`RenodeSession`; default the process's Renode through pyrenode3). ``seed`` is unused:
        Renode's RNG model has its own seed."""
        unknown = set(options) - {"port", "connect", "repl", "mips", "session"}
        if unknown:
            raise ValueError(f"unknown renode backend options: {', '.join(sorted(unknown))}")
        firmware = elf if isinstance(elf, FirmwareElf) else FirmwareElf(elf)
        uid = bytes(uid)
        uid_words(uid)
        # Renode keeps machine and terminal names for the life of its process (a removed machine's
        # terminal stays registered): make both unique per device made in this process.
        name = f"{name or 'otakey'}-{uid.hex()[:8]}-{next(_SERIAL)}"
        repl = Path(options.get("repl") or renode_dir() / "stm32f429i-disc1.repl")
        if not repl.is_file():
            raise DeviceError(f"the Renode platform file {repl} is missing (set {RENODE_DIR_ENV})")
        session: RenodeSession = options.get("session") or PyRenodeSession()
        port = int(options.get("port") or _free_port())
        for command in device_commands(
            firmware,
            name=name,
            term=f"{name}-uart",
            port=port,
            uid=uid,
            repl=repl,
            mips=int(options.get("mips", MIPS)),
        ):
            session.execute(command)
        return cls(session, firmware, name, uid, port, bool(options.get("connect", True)))

    # --- life ------------------------------------------------------------------------------------
    def _select(self) -> None:
        self.session.execute(f'mach set "{self.name}"')

    def power_on(self) -> None:
        self._check_open()
        if self._powered:
            return
        if self._booted_once:
            self._select()
            # Power-on reset: the core reloads SP and PC from the table in flash.
            self.session.execute("machine Reset")
            self.session.execute(f"cpu VectorTableOffset 0x{self.firmware.vector_table.address:08X}")
        self._booted_once = True
        self._powered = True
        if self._connect and self._sock is None:
            self._sock = socket.create_connection(("127.0.0.1", self.port), timeout=5.0)
            self._sock.setblocking(False)

    @property
    def powered(self) -> bool:
        return self._powered

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        # Halted, not removed: removing a machine left Renode 1.15.3's system bus of the next one
        # with a disposed thread-local (ObjectDisposedException) when driven through pyrenode3.
        with contextlib.suppress(DeviceError):
            self._select()
            self.session.execute("cpu IsHalted true")

    def _check_open(self) -> None:
        if self._closed:
            raise DeviceError(f"{self.name}: closed")

    # --- running ---------------------------------------------------------------------------------
    @property
    def device_ms(self) -> float:
        return self._device_ms

    @property
    def instructions(self) -> int:
        self._select()
        out = self.session.execute("cpu ExecutedInstructions").strip().split()
        return int(out[-1], 0) if out else 0

    def _run_slice(self, ms: float) -> None:
        self.session.execute(f'emulation RunFor "{ms / 1000.0:.6f}"')
        self._device_ms += ms
        self._unseen_input = False

    def run_for(self, ms: float, stop_on_output: bool = False) -> RunOutcome:
        if ms < 0:
            raise ValueError("ms must be >= 0")
        self._check_open()
        if not self._powered:
            raise DeviceError(f"{self.name}: powered off")
        start = self._device_ms
        left = ms
        while left > 0:
            step = min(SLICE_MS, left)
            self._run_slice(step)
            left -= step
            if stop_on_output and self._peek_output():
                return RunOutcome(RunReason.OUTPUT, 0, self._device_ms - start)
        return RunOutcome(RunReason.BUDGET, 0, self._device_ms - start)

    def run_until_idle(self, max_instructions: int | None = None) -> RunOutcome:
        """Run until one slice of virtual time passes without output (Renode cannot see the
        firmware poll its empty UART), or ``max_instructions`` worth of time at ``MIPS``."""
        self._check_open()
        if not self._powered:
            raise DeviceError(f"{self.name}: powered off")
        start = self._device_ms
        budget_ms = None if max_instructions is None else max_instructions / (MIPS * 1000.0)
        while budget_ms is None or self._device_ms - start < budget_ms:
            before = len(self._pending)
            self._run_slice(SLICE_MS)
            if not self._peek_output() or len(self._pending) == before:
                return RunOutcome(RunReason.IDLE, 0, self._device_ms - start)
        return RunOutcome(RunReason.BUDGET, 0, self._device_ms - start)

    # --- link ------------------------------------------------------------------------------------
    _pending = b""

    def _need_link(self) -> socket.socket:
        if self._sock is None:
            raise DeviceError(
                f"{self.name}: the link is left to an external gateway ({self.link_url})"
                if not self._connect
                else f"{self.name}: powered off"
            )
        return self._sock

    def _peek_output(self) -> bool:
        sock = self._need_link()
        while True:
            try:
                chunk = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            if not chunk:
                break
            self._pending += chunk
        return bool(self._pending)

    _unseen_input = False

    def write(self, data: bytes) -> None:
        self._check_open()
        self._need_link().sendall(bytes(data))
        self._unseen_input = True

    def read(self) -> bytes:
        self._peek_output()
        data, self._pending = self._pending, b""
        return data

    def input_pending(self) -> bool:
        """Bytes were written since virtual time last ran: the firmware has not seen them yet."""
        return self._unseen_input

    # --- power cuts ------------------------------------------------------------------------------
    def cut_power(self) -> None:
        """Pause, dump flash, zero SRAM, reset, put flash back if the reset touched it."""
        self._check_open()
        self._select()
        areas = {a: self.read_flash(a) for a in ("A", "B")}
        for command in power_cycle_commands(self.firmware):
            self.session.execute(command)
        for area, before in areas.items():
            if self.read_flash(area) != before:
                self.session.write_bytes(self.name, self.firmware.area(area).address, before)
        self._powered = False

    # --- flash -----------------------------------------------------------------------------------
    def read_flash(self, area: str) -> bytes:
        a = self.firmware.area(area)
        return self.session.read_bytes(self.name, a.address, a.size)

    def __repr__(self) -> str:
        return f"<RenodeBackend {self.name} port={self.port} {'on' if self._powered else 'off'}>"


def resc_commands(text: str, variables: dict[str, str], origin: str | Path) -> list[str]:
    """The commands a .resc runs, with ``$var`` filled in (for the test that keeps
    :func:`device_commands` and ``otakey-device.resc`` equal): comments, ``:name:`` headers,
    variable defaults and the macro are dropped; ``$ORIGIN`` becomes ``@origin``."""
    out: list[str] = []
    in_macro = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith('"""'):
            in_macro = not in_macro
            continue
        if in_macro or not line or line.startswith(("//", ":", "#", "macro ")):
            continue
        if line.startswith("$") and "=" in line.split()[0]:
            continue
        line = line.replace("$ORIGIN", f"@{origin}")
        for key in sorted(variables, key=len, reverse=True):
            line = line.replace(f"${key}", variables[key])
        out.append(line)
    return out


def resc_macro(text: str, name: str) -> Sequence[str]:
    """The statements of macro ``name`` in a .resc."""
    lines = text.splitlines()
    for i, raw in enumerate(lines):
        if raw.strip() == f"macro {name}":
            body = []
            for inner in lines[i + 2 :]:
                if inner.strip().startswith('"""'):
                    return body
                if inner.strip():
                    body.append(inner.strip())
    raise ValueError(f"no macro {name}")
