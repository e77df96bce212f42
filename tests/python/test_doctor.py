"""``otakey doctor``: with a tool missing from PATH it says so and prints the exact install command;
with everything the default paths need it exits 0."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# What the required checks look up on PATH (the broker itself may also sit in /usr/sbin).
TOOLS = ("arm-none-eabi-gcc", "cmake", "mosquitto", "mosquitto_ctrl")


def doctor(path_dir: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "agent")
    if path_dir is not None:
        env["PATH"] = str(path_dir)
    return subprocess.run(
        [sys.executable, "-m", "otakey", "doctor", "--no-board", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def path_without(tmp_path: Path, missing: str) -> Path:
    """A PATH folder holding links to the required tools, except ``missing``."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool) or (f"/usr/sbin/{tool}" if os.path.exists(f"/usr/sbin/{tool}") else None)
        assert found, f"{tool} must be installed for this test (scripts/setup.sh)"
        if tool != missing:
            (folder / tool).symlink_to(found)
    return folder


def test_doctor_without_cmake_on_path_says_missing_and_prints_apt_command(tmp_path: Path) -> None:
    r = doctor(path_without(tmp_path, "cmake"))
    assert r.returncode == 1, r.stdout + r.stderr
    line = next(x for x in r.stdout.splitlines() if "CMake" in x)
    assert line.split()[0] == "MISSING" and "cmake is not on PATH" in line
    assert "apt-get install -y --no-install-recommends cmake make" in r.stdout
    assert "1 required tool(s) missing: CMake" in r.stdout
    # The tools that are there are still reported as present.
    toolchain = next(x for x in r.stdout.splitlines() if "ARM toolchain" in x)
    assert toolchain.split()[0] == "ok"


def test_doctor_json_without_toolchain_names_the_debian_packages(tmp_path: Path) -> None:
    r = doctor(path_without(tmp_path, "arm-none-eabi-gcc"), "--json")
    assert r.returncode == 1, r.stderr
    data = json.loads(r.stdout)
    assert data["ok"] is False
    checks = {c["name"]: c for c in data["checks"]}
    tc = checks["ARM toolchain"]
    assert (tc["ok"], tc["required"]) == (False, True)
    assert "gcc-arm-none-eabi libnewlib-arm-none-eabi" in tc["fix"]
    assert checks["CMake"]["ok"] is True and checks["CMake"]["fix"] == ""
    # Optional checks never make the exit status fail on their own: the failing ones are required.
    assert {c["name"] for c in data["checks"] if c["required"] and not c["ok"]} == {"ARM toolchain"}


def test_doctor_with_every_required_tool_exits_zero_and_lists_optional_ones() -> None:
    r = doctor(None, "--json")
    data = json.loads(r.stdout)
    missing = [c for c in data["checks"] if c["required"] and not c["ok"]]
    assert r.returncode == 0 and data["ok"] is True, missing
    names = {c["name"] for c in data["checks"]}
    assert {"PostgreSQL 15", "Renode + pyrenode3", "ST-LINK probe", "Chromium"} <= names
    assert all(c["ok"] or c["fix"] for c in data["checks"]), "every missing tool comes with its fix"
