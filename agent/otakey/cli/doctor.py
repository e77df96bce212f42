"""``otakey doctor``: what this machine has of the tools OTA-Key uses, and how to get the rest.

Each check says what it found and, when something is missing, the exact command that installs it.
*Required* checks are what the default paths need — ``otakey firmware build``, ``otakey demo``,
``otakey emu run``, ``otakey report`` and the Robot suites on the emulator: the ARM toolchain with
newlib, CMake, Mosquitto with its dynamic-security plugin and ``mosquitto_ctrl``, and the Python
packages moto (the AWS IoT stand-in), matplotlib and Robot Framework. The others are *optional*:
PostgreSQL (several agent replicas), Renode with pyrenode3 (the ``renode`` backend), an ST-LINK probe
tool and a board answering on it (the ``board`` backend), Chromium (rendering the report headless).

Exit status: 0 when every required check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

# Debian package names, as scripts/setup.sh installs them.
APT_TOOLCHAIN = "gcc-arm-none-eabi libnewlib-arm-none-eabi binutils-arm-none-eabi"
APT_MOSQUITTO = "mosquitto mosquitto-clients"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TOOL_TIMEOUT = 10.0


@dataclass(frozen=True)
class Check:
    """One thing looked at. ``fix`` is the command that installs what is missing ("" when ok)."""

    name: str
    ok: bool
    detail: str
    fix: str
    required: bool
    needed_for: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def apt(packages: str) -> str:
    """The install command for Debian packages, with sudo unless we are root."""
    # --no-install-recommends: the toolchain's recommended C++ newlib alone is 1.6 GB (DESIGN §4).
    sudo = "" if os.geteuid() == 0 else "sudo "
    return f"{sudo}apt-get install -y --no-install-recommends {packages}"


def pip(requirement: str) -> str:
    return f"{Path(sys.executable).name} -m pip install '{requirement}'"


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0].strip() if text else ""


def _version(argv: list[str]) -> str:
    m = re.search(r"\d+\.\d+(?:\.\d+)?", _first_line(argv))
    return m.group(0) if m else "version unknown"


# --------------------------------------------------------------------------------------------- checks


def check_toolchain() -> Check:
    name, needed = "ARM toolchain", "otakey firmware build, demo, emu run, campaigns"
    fix = apt(APT_TOOLCHAIN)
    gcc = shutil.which("arm-none-eabi-gcc")
    if gcc is None:
        return Check(name, False, "arm-none-eabi-gcc is not on PATH", fix, True, needed)
    # The firmware links with --specs=nano.specs: newlib's nano C library must be there too.
    libc = _first_line(
        [
            gcc,
            "-mcpu=cortex-m4",
            "-mthumb",
            "-mfloat-abi=hard",
            "-mfpu=fpv4-sp-d16",
            "-print-file-name=libc_nano.a",
        ]
    )
    if not (libc and os.path.isabs(libc) and os.path.exists(libc)):
        return Check(
            name,
            False,
            f"arm-none-eabi-gcc {_version([gcc, '--version'])} without newlib-nano",
            apt("libnewlib-arm-none-eabi"),
            True,
            needed,
        )
    return Check(
        name, True, f"arm-none-eabi-gcc {_version([gcc, '--version'])} with newlib-nano", "", True, needed
    )


def check_cmake() -> Check:
    name, needed = "CMake", "otakey firmware build, the C tests"
    cmake = shutil.which("cmake")
    if cmake is None:
        return Check(name, False, "cmake is not on PATH", apt("cmake make"), True, needed)
    return Check(name, True, f"cmake {_version([cmake, '--version'])}", "", True, needed)


def check_mosquitto() -> Check:
    from otakey.harness.servers import DYNSEC_PLUGIN_PATHS

    name, needed = "Mosquitto + dynsec", "otakey demo, emu run, campaigns, Robot suites"
    fix = apt(APT_MOSQUITTO)
    broker = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
    )
    if broker is None:
        return Check(name, False, "mosquitto is not installed", fix, True, needed)
    if shutil.which("mosquitto_ctrl") is None:
        return Check(
            name,
            False,
            "mosquitto_ctrl is not on PATH (it creates the dynsec file)",
            apt("mosquitto-clients"),
            True,
            needed,
        )
    plugin = next((p for p in DYNSEC_PLUGIN_PATHS if os.path.exists(p)), None)
    if plugin is None:
        return Check(
            name,
            False,
            "the dynamic-security plugin is missing (Mosquitto >= 2.0 ships it)",
            apt("mosquitto"),
            True,
            needed,
        )
    return Check(name, True, f"mosquitto {_version([broker, '-h'])}, {plugin}", "", True, needed)


def _module(name: str, module: str, requirement: str, needed: str, required: bool) -> Check:
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        return Check(
            name, False, f"Python package {module!r} is not importable", pip(requirement), required, needed
        )
    from importlib.metadata import PackageNotFoundError, version

    dist = re.split(r"[\[<>=]", requirement, maxsplit=1)[0]
    try:
        detail = f"{dist} {version(dist)}"
    except PackageNotFoundError:
        detail = f"{module} importable"
    return Check(name, True, detail, "", required, needed)


def check_moto() -> Check:
    return _module(
        "moto (AWS IoT stand-in)",
        "moto.server",
        "moto[server]>=5",
        "otakey demo (migration), campaigns --flow migrate, Robot suites",
        True,
    )


def check_matplotlib() -> Check:
    return _module("matplotlib", "matplotlib", "matplotlib>=3.7", "otakey report", True)


def check_robot() -> Check:
    return _module(
        "Robot Framework", "robot", "robotframework>=7", "the Robot suites (scripts/robot.sh)", True
    )


def check_postgres() -> Check:
    from otakey.harness.servers import PG_BIN_DIRS

    name, needed = "PostgreSQL 15", "several agent replicas (postgresql:// --db), their tests"
    for d in PG_BIN_DIRS:
        if all(os.path.exists(os.path.join(d, t)) for t in ("initdb", "pg_ctl")):
            return Check(name, True, f"initdb and pg_ctl in {d}", "", False, needed)
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return Check(name, True, f"initdb {_version([initdb, '--version'])}", "", False, needed)
    return Check(name, False, "initdb/pg_ctl not found", apt("postgresql"), False, needed)


def check_renode() -> Check:
    from otakey.harness.renode_backend import ENV_VARS, PYRENODE_INSTALL

    name, needed = "Renode + pyrenode3", "--backend renode (demo, Robot suites)"
    has_module = importlib.util.find_spec("pyrenode3") is not None
    env = {v: os.environ[v] for v in ENV_VARS if os.environ.get(v)}
    renode = shutil.which("renode")
    if not has_module:
        return Check(name, False, "pyrenode3 is not installed", PYRENODE_INSTALL, False, needed)
    if not env and renode is None:
        return Check(
            name,
            False,
            f"pyrenode3 installed, but none of {', '.join(ENV_VARS)} is set and `renode` is not on PATH",
            "export PYRENODE_BIN=/path/to/renode  # see renode/README.md",
            False,
            needed,
        )
    where = ", ".join(f"{k}={v}" for k, v in env.items()) or renode or ""
    return Check(name, True, f"pyrenode3 with {where}", "", False, needed)


def _probe_answers(tool: str, path: str) -> tuple[bool, str]:
    """Ask the probe tool whether an ST-LINK (and a target behind it) answers."""
    if tool == "st-flash":
        info = shutil.which("st-info")
        if info is None:
            return False, "st-info missing (it comes with stlink-tools)"
        try:
            run = subprocess.run(
                [info, "--probe"], capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired:
            return False, "st-info --probe did not finish in time"
        out = run.stdout + run.stderr
        if "found 0" in out.lower() or not out.strip():
            return False, "no ST-LINK answers (st-info --probe)"
        return True, out.strip().splitlines()[0]
    from otakey.harness.board_backend import OPENOCD_BOARD

    try:
        run = subprocess.run(
            [path, "-f", OPENOCD_BOARD, "-c", "init", "-c", "shutdown"],
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False, "openocd did not finish probing in time"
    if run.returncode == 0:
        return True, "a board answers through OpenOCD"
    return False, "no board answers through OpenOCD"


def check_probe(probe_board: bool = True) -> Check:
    name, needed = "ST-LINK probe", "--backend board, otakey flash"
    tools = [(t, shutil.which(t)) for t in ("openocd", "st-flash")]
    present = [(t, p) for t, p in tools if p]
    if not present:
        return Check(
            name,
            False,
            "neither openocd nor st-flash is installed",
            apt("openocd stlink-tools"),
            False,
            needed,
        )
    names = ", ".join(t for t, _ in present)
    if not probe_board:
        return Check(name, True, f"{names} installed (board not probed)", "", False, needed)
    answers = [_probe_answers(t, p) for t, p in present]  # type: ignore[arg-type]
    if any(ok for ok, _ in answers):
        return Check(name, True, f"{names}: " + next(d for ok, d in answers if ok), "", False, needed)
    return Check(
        name,
        False,
        f"{names} installed; {answers[0][1]}",
        "plug in the STM32F429I-DISC1 by its ST-LINK USB port (CN1)",
        False,
        needed,
    )


def check_chromium() -> Check:
    name, needed = "Chromium", "rendering the report headless (tests, screenshots)"
    for binary in CHROMIUM_NAMES:
        path = shutil.which(binary)
        if path:
            return Check(name, True, f"{binary} at {path}", "", False, needed)
    return Check(name, False, "no chromium on PATH", apt("chromium"), False, needed)


CHECKS: tuple[Callable[[], Check], ...] = (
    check_toolchain,
    check_cmake,
    check_mosquitto,
    check_moto,
    check_matplotlib,
    check_robot,
    check_postgres,
    check_renode,
    check_probe,
    check_chromium,
)


def run_checks(checks: tuple[Callable[[], Check], ...] = CHECKS) -> list[Check]:
    return [c() for c in checks]


def first_missing(checks: tuple[Callable[[], Check], ...]) -> Check | None:
    """The first failing check of ``checks`` (for commands that need them before they start)."""
    for c in checks:
        result = c()
        if not result.ok:
            return result
    return None


# --------------------------------------------------------------------------------------------- CLI


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "doctor",
        help="check the tools OTA-Key uses and say how to install what is missing",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print the checks as one JSON object")
    p.add_argument("--no-board", action="store_true", help="do not ask the probe whether a board answers")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    checks = list(CHECKS)
    if args.no_board:
        checks[checks.index(check_probe)] = lambda: check_probe(probe_board=False)
    results = run_checks(tuple(checks))
    missing = [c for c in results if c.required and not c.ok]
    if args.json:
        json.dump({"ok": not missing, "checks": [c.to_dict() for c in results]}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 1 if missing else 0
    width = max(len(c.name) for c in results)
    for c in results:
        mark = "ok" if c.ok else ("MISSING" if c.required else "missing")
        kind = "" if c.required else " (optional)"
        print(f"  {mark:8} {c.name:{width}}  {c.detail}{kind}")
        if not c.ok:
            print(f"  {'':8} {'':{width}}  needed for: {c.needed_for}")
            print(f"  {'':8} {'':{width}}  fix:        {c.fix}")
    if missing:
        print(
            f"\n{len(missing)} required tool(s) missing: {', '.join(c.name for c in missing)}. "
            "Run the install commands above (or scripts/setup.sh)."
        )
        return 1
    optional = [c.name for c in results if not c.ok]
    print(
        "\nEverything the default paths need is present"
        + (f"; optional, not present: {', '.join(optional)}." if optional else ".")
    )
    return 0
