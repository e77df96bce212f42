"""The ``renode`` backend and the Renode files in renode/: the error on a machine without Renode, the
.resc/.repl agreeing with the backend and with the firmware ELF, and the backend's monitor commands
(with a recording session standing in for Renode). One test runs a device in a real Renode; it needs
PYRENODE_PKG, PYRENODE_BUILD_DIR or PYRENODE_BIN, which this machine cannot have (DESIGN §4)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from otakey.emu import rm0090 as rm
from otakey.errors import DeviceError, Error
from otakey.firmware.elf import FirmwareElf
from otakey.harness.campaign import campaign_firmware
from otakey.harness.emu_backend import EmuBackend
from otakey.harness.renode_backend import (
    ENV_VARS,
    RenodeBackend,
    RenodeNotFound,
    device_commands,
    load_pyrenode3,
    power_cycle_commands,
    renode_dir,
    resc_commands,
    resc_macro,
    uid_words,
)

RENODE = renode_dir()
UID = bytes.fromhex("0102030405060708090a0b0c")


@pytest.fixture(scope="module")
def elf() -> FirmwareElf:
    return FirmwareElf(campaign_firmware())


@pytest.fixture
def no_renode(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no `renode` on it
    yield


def _resc(name: str) -> str:
    return (RENODE / name).read_text()


def _defaults(text: str) -> dict[str, str]:
    return dict(re.findall(r"^\$(\w+)\?=(.+)$", text, re.MULTILINE))


# --------------------------------------------------------------------------------------------- no Renode


def test_renode_missing_error_names_the_three_env_vars(no_renode: None) -> None:
    with pytest.raises(RenodeNotFound) as info:
        load_pyrenode3()
    message = str(info.value)
    assert all(var in message for var in ENV_VARS), message
    assert "renode/README.md" in message
    assert isinstance(info.value, Error)


def test_renode_backend_create_without_renode_raises_one_clear_error(
    no_renode: None, elf: FirmwareElf
) -> None:
    with pytest.raises(RenodeNotFound) as info:
        RenodeBackend.create(elf, UID)
    assert "PYRENODE_PKG" in str(info.value) and "\n" not in str(info.value)


def test_renode_env_pointing_at_nothing_still_names_the_env_vars(tmp_path: Path) -> None:
    # In a child process: a failed pyrenode3 import leaves its loader half set up for the process.
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env["PYRENODE_PKG"] = str(tmp_path / "renode-missing.pkg.tar.xz")
    agent_dir = str(Path(__file__).resolve().parents[2] / "agent")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (agent_dir, env.get("PYTHONPATH", "")) if p)
    code = (
        "import os\n"
        "from otakey.harness.renode_backend import RenodeNotFound, load_pyrenode3\n"
        "before = os.environ.get('TMPDIR')\n"
        "try:\n"
        "    load_pyrenode3()\n"
        "except RenodeNotFound as exc:\n"
        "    print('TMPDIR kept' if os.environ.get('TMPDIR') == before else 'TMPDIR changed')\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.startswith("TMPDIR kept\n"), out.stdout + out.stderr
    assert all(var in out.stdout for var in ENV_VARS), out.stdout


# --------------------------------------------------------------------------------------------- the files


def test_device_resc_runs_the_backends_commands(elf: FirmwareElf) -> None:
    text = _resc("otakey-device.resc")
    w0, w1, w2 = uid_words(UID)
    variables = {
        "elf": f"@{elf.path}",
        "name": '"dev-7"',
        "term": '"dev-7-uart"',
        "port": "4567",
        "uid0": f"0x{w0:08X}",
        "uid1": f"0x{w1:08X}",
        "uid2": f"0x{w2:08X}",
        "vtor": f"0x{elf.vector_table.address:08X}",
    }
    expected = device_commands(
        elf, name="dev-7", term="dev-7-uart", port=4567, uid=UID, repl=RENODE / "stm32f429i-disc1.repl"
    )
    assert resc_commands(text, variables, RENODE) == expected


def test_resc_power_cycle_macro_is_the_backends_power_cut(elf: FirmwareElf) -> None:
    body = resc_macro(_resc("otakey-device.resc"), "power_cycle")
    vtor = f"0x{elf.vector_table.address:08X}"
    assert [line.replace("$vtor", vtor) for line in body] == power_cycle_commands(elf)
    assert "sysbus.sram ZeroAll" in body, "Renode keeps RAM on reset: the cut must clear it"
    assert not any("LoadELF" in line for line in body), "reloading the ELF would wipe the stored keys"


def test_resc_defaults_match_the_elf_and_the_chip(elf: FirmwareElf) -> None:
    defaults = _defaults(_resc("otakey-device.resc"))
    assert int(defaults["vtor"], 16) == elf.vector_table.address == elf.section(".isr_vector")[0]
    uid_writes = re.findall(r"sysbus WriteDoubleWord (0x[0-9A-F]+) \$uid(\d)", _resc("otakey-device.resc"))
    assert [(int(a, 16), int(i)) for a, i in uid_writes] == [(rm.UID_BASE + 4 * i, i) for i in range(3)]


def test_firmware_reads_the_uid_and_usart_the_renode_files_use(elf: FirmwareElf) -> None:
    # The literal pools of the code hold the addresses the port uses: the .resc writes the UID
    # where the firmware reads it, and connects the USART the firmware talks on.
    start, end = elf.app_range
    code = elf.read(start, end - start) + elf.read(*elf.section(".boot"))
    assert rm.UID_BASE.to_bytes(4, "little") in code
    assert rm.USART1_BASE.to_bytes(4, "little") in code
    assert "connector Connect sysbus.usart1" in _resc("otakey-device.resc")
    assert rm.USART1_BASE == 0x40011000  # Renode's stm32f4.repl: usart1 @ sysbus <0x40011000, +0x100>


def test_repl_systick_frequency_is_the_firmwares_hclk(elf: FirmwareElf) -> None:
    repl = (RENODE / "stm32f429i-disc1.repl").read_text()
    m = re.search(r"^nvic:\s*\n\s+systickFrequency:\s*(\d+)", repl, re.MULTILINE)
    assert m, "the repl must set nvic.systickFrequency"
    dev = EmuBackend.create(elf, UID, seed=1)
    try:
        dev.power_on()
        dev.run_until_idle(50_000_000)
        hclk = dev.chip.rcc.clocks().hclk
        reload = dev.chip.peek(rm.SCS_BASE + rm.SYST_RVR)  # the firmware's 1 ms period in HCLK cycles
    finally:
        dev.close()
    assert int(m.group(1)) == hclk == (reload + 1) * 1000 == 180_000_000


def test_repl_replaces_the_stock_svd_download_and_builds_on_the_f429() -> None:
    repl = (RENODE / "stm32f429i-disc1.repl").read_text()
    code = "\n".join(line for line in repl.splitlines() if not line.lstrip().startswith("//"))
    assert 'using "platforms/cpus/stm32f429.repl"' in code
    assert re.search(r"^sysbus:\s*\n\s+init:\s*$", code, re.MULTILINE), (
        "init: (not init add:) replaces the SVD"
    )
    assert "ApplySVD" not in code and "http" not in code


def test_fleet_resc_gives_each_device_its_own_uid_name_and_port() -> None:
    text = _resc("otakey-fleet.resc")
    blocks = [
        dict(re.findall(r"^\$(\w+)=(.+)$", chunk, re.MULTILINE))
        for chunk in text.split("include $ORIGIN/otakey-device.resc")[:-1]
    ]
    assert len(blocks) == text.count("include $ORIGIN/otakey-device.resc") >= 2
    uids = {(b["uid0"], b["uid1"], b["uid2"]) for b in blocks}
    assert len(uids) == len({b["name"] for b in blocks}) == len({b["port"] for b in blocks}) == len(blocks)
    assert len({b["term"] for b in blocks}) == len(blocks)


# --------------------------------------------------------------------------------------------- the backend


class RecordingRenode:
    """Stands in for Renode's monitor and memory: records commands; a reset can be made to wipe
    flash, to prove the backend puts the keystore back."""

    def __init__(self, elf: FirmwareElf, wipe_on_reset: bool = False) -> None:
        self.commands: list[str] = []
        self.memory: dict[int, bytes] = {a.address: elf.area_image(a.name) for a in elf.areas.values()}
        self.wipe_on_reset = wipe_on_reset
        self.writes: list[int] = []

    def execute(self, command: str) -> str:
        self.commands.append(command)
        if command == "machine Reset" and self.wipe_on_reset:
            self.memory = {a: bytes(len(d)) for a, d in self.memory.items()}
        if command == "cpu ExecutedInstructions":
            return "0x3E8"
        return ""

    def read_bytes(self, machine: str, address: int, size: int) -> bytes:
        return self.memory[address][:size]

    def write_bytes(self, machine: str, address: int, data: bytes) -> None:
        self.writes.append(address)
        self.memory[address] = bytes(data)


def test_renode_backend_sets_up_the_machine_like_the_resc(elf: FirmwareElf) -> None:
    fake = RecordingRenode(elf)
    dev = RenodeBackend.create(elf, UID, name="dev-1", session=fake, port=4444, connect=False)
    assert dev.name.startswith("dev-1-"), "unique per device: Renode keeps names for its lifetime"
    assert fake.commands == device_commands(
        elf, name=dev.name, term=f"{dev.name}-uart", port=4444, uid=UID, repl=RENODE / "stm32f429i-disc1.repl"
    )
    again = RenodeBackend.create(elf, UID, name="dev-1", session=fake, port=4445, connect=False)
    assert again.name != dev.name
    assert dev.link_url == "tcp://127.0.0.1:4444"
    assert dev.read_flash("B") == elf.area_image("B")
    assert dev.instructions == 1000
    with pytest.raises(DeviceError, match="external gateway"):
        dev.power_on() or dev.write(b"x")


def test_renode_power_cut_clears_sram_resets_and_puts_flash_back(elf: FirmwareElf) -> None:
    fake = RecordingRenode(elf, wipe_on_reset=True)
    dev = RenodeBackend.create(elf, UID, name="dev-2", session=fake, port=4445, connect=False)
    dev.power_on()
    fake.commands.clear()
    dev.cut_power()
    assert not dev.powered
    assert fake.commands[:1] == [f'mach set "{dev.name}"']
    assert fake.commands[1:] == power_cycle_commands(elf)
    assert sorted(fake.writes) == sorted(a.address for a in elf.areas.values())
    assert dev.read_flash("A") == elf.area_image("A") and dev.read_flash("B") == elf.area_image("B")


def test_renode_run_for_advances_virtual_time_in_slices(elf: FirmwareElf) -> None:
    fake = RecordingRenode(elf)
    dev = RenodeBackend.create(elf, UID, name="dev-3", session=fake, port=4446, connect=False)
    dev._powered = True
    out = dev.run_for(250.0)
    runs = [c for c in fake.commands if c.startswith("emulation RunFor")]
    assert runs == [
        'emulation RunFor "0.100000"',
        'emulation RunFor "0.100000"',
        'emulation RunFor "0.050000"',
    ]
    assert out.device_ms == pytest.approx(250.0) and dev.device_ms == pytest.approx(250.0)
