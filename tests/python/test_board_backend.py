"""The ``board`` backend and ``otakey flash``: the exact commands it runs for OpenOCD and st-flash (no
board here), its verification, its one-sentence error when no probe answers (with the real openocd and
st-flash binaries when they are installed), and the device behind the backend interface with a
probe stand-in and pyserial's loopback port as the ST-LINK's virtual COM port."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from otakey.cli import flash as flash_cli
from otakey.emu import rm0090 as rm
from otakey.errors import DeviceError
from otakey.firmware.elf import FirmwareElf
from otakey.harness.board_backend import (
    OPENOCD_BOARD,
    BoardBackend,
    FlashImage,
    NoProbe,
    Probe,
    ProbeError,
)
from otakey.harness.campaign import campaign_firmware

BOARD_UID = bytes.fromhex("3a0025000f51333338363933")


@pytest.fixture(scope="module")
def elf() -> FirmwareElf:
    return FirmwareElf(campaign_firmware())


class FakeProbe:
    """openocd/st-flash as far as the backend uses them: a flash array, the UID, a core that is
    halted or running. ``corrupt`` makes programming drop a byte (a failing verify)."""

    def __init__(self, corrupt: bool = False, uid: bytes = BOARD_UID) -> None:
        self.flash = bytearray(b"\xff") * rm.FLASH_SIZE
        self.uid = uid
        self.corrupt = corrupt
        self.calls: list[list[str]] = []
        self.core = "running"

    def _read(self, address: int, size: int) -> bytes:
        if address == rm.UID_BASE:
            return self.uid[:size]
        offset = address - rm.FLASH_BASE
        return bytes(self.flash[offset : offset + size])

    def _program(self, address: int, data: bytes) -> None:
        offset = address - rm.FLASH_BASE
        self.flash[offset : offset + len(data)] = data
        if self.corrupt:
            self.flash[offset + 100] ^= 0x01

    def __call__(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        self.calls.append(argv)
        if argv[0] == "st-flash":
            args = [a for a in argv[1:] if a != "--reset"]
            if args[:1] == ["--serial"]:
                args = args[2:]
            if args[0] == "write":
                self._program(int(args[2], 16), Path(args[1]).read_bytes())
            elif args[0] == "read":
                Path(args[1]).write_bytes(self._read(int(args[2], 16), int(args[3])))
            elif args[0] == "reset":
                self.core = "running"
        else:
            for command in argv[argv.index("-f") + 2 :][1::2]:
                words = command.split()
                if words[0] == "program":
                    for address, data in FirmwareElf(words[1]).segments():
                        self._program(address, data)
                elif words[0] == "dump_image":
                    Path(words[1]).write_bytes(self._read(int(words[2], 16), int(words[3])))
                elif words[:2] == ["reset", "halt"]:
                    self.core = "halted"
                elif words[:2] == ["reset", "run"]:
                    self.core = "running"
        return subprocess.CompletedProcess(argv, 0, "", "")


# --------------------------------------------------------------------------------------------- commands


def test_openocd_flash_command_programs_verifies_and_resets_the_elf(elf: FirmwareElf) -> None:
    assert Probe("openocd").flash_commands(elf) == [
        ["openocd", "-f", "board/stm32f429disc1.cfg", "-c", f"program {elf.path} verify reset exit"]
    ]


def test_stflash_writes_the_bin_at_the_elfs_lowest_load_address(elf: FirmwareElf) -> None:
    image = FlashImage.of(elf)
    base = min(address for address, _ in elf.segments())
    assert image.base == base == elf.vector_table.address
    write, read = Probe("stlink").flash_commands(elf, "/x/fw.bin", "/x/back.bin")
    assert write == ["st-flash", "--reset", "write", "/x/fw.bin", f"0x{base:08X}"]
    assert read == ["st-flash", "read", "/x/back.bin", f"0x{base:08X}", str(len(image.data))]


def test_flash_image_of_the_elf_is_the_builds_bin(elf: FirmwareElf) -> None:
    # The build's .bin is the flash image from the first section with 0xFF between sections: the
    # image derived from the ELF must be byte for byte that file, or st-flash would write another.
    assert FlashImage.of(elf).data == elf.path.with_suffix(".bin").read_bytes()


def test_probe_serial_selects_one_probe_for_both_tools(elf: FirmwareElf) -> None:
    assert Probe("openocd", serial="066DFF48")._openocd("init")[3:5] == ["-c", "adapter serial 066DFF48"]
    assert Probe("stlink", serial="066DFF48").reset_command()[:3] == ["st-flash", "--serial", "066DFF48"]
    with pytest.raises(ValueError):
        Probe("stlink", serial="066D; rm -rf /")


def test_elf_path_with_spaces_is_one_openocd_word(tmp_path: Path, elf: FirmwareElf) -> None:
    spaced = tmp_path / "my images" / "otakey fw.elf"
    spaced.parent.mkdir()
    shutil.copyfile(elf.path, spaced)
    command = Probe("openocd").flash_commands(FirmwareElf(spaced))[0][-1]
    assert command == f"program {{{spaced}}} verify reset exit"


def test_openocd_reset_and_read_commands() -> None:
    probe = Probe("openocd")
    assert probe.reset_command(halt=True)[-6:] == ["-c", "init", "-c", "reset halt", "-c", "shutdown"]
    assert probe.read_command(0x1FFF7A10, 12, "/x/uid.bin")[-10:] == [
        "-c",
        "init",
        "-c",
        "halt",
        "-c",
        "dump_image /x/uid.bin 0x1FFF7A10 12",
        "-c",
        "resume",
        "-c",
        "shutdown",
    ]
    with pytest.raises(ProbeError, match="cannot hold the core"):
        Probe("stlink").reset_command(halt=True)


# --------------------------------------------------------------------------------------------- running


def test_stflash_flash_reads_back_and_accepts_an_identical_image(elf: FirmwareElf) -> None:
    fake = FakeProbe()
    result = Probe("stlink", runner=fake).flash(elf)
    image = FlashImage.of(elf)
    assert fake._read(image.base, len(image.data)) == image.data
    assert [c[1:3] for c in fake.calls] == [["--reset", "write"], ["read", fake.calls[1][2]]]
    assert result.base == image.base and result.size == len(image.data)


def test_stflash_flash_that_does_not_read_back_raises(elf: FirmwareElf) -> None:
    with pytest.raises(ProbeError, match="does not match the image"):
        Probe("stlink", runner=FakeProbe(corrupt=True)).flash(elf)


def test_openocd_verify_failure_in_output_raises(elf: FirmwareElf) -> None:
    def runner(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(
            argv, 1, "", "Error: checksum mismatch - attempting binary compare\n** Verify Failed **\n"
        )

    with pytest.raises(ProbeError) as info:
        Probe("openocd", runner=runner).flash(elf)
    assert not isinstance(info.value, NoProbe)


@pytest.mark.parametrize("kind", ["openocd", "stlink"])
def test_flash_without_a_probe_says_so_in_one_sentence(kind: str, elf: FirmwareElf) -> None:
    probe = Probe(kind, timeout=60)
    with pytest.raises(ProbeError) as info:
        probe.flash(elf)
    message = str(info.value)
    assert "\n" not in message
    if shutil.which(probe.tool):
        # The real tool ran and found no ST-LINK on this machine.
        assert isinstance(info.value, NoProbe), message
        assert message.startswith("no ST-LINK probe answered") and "USB ST-LINK connector" in message
    else:
        assert f"{probe.tool} is not installed" in message and "apt-get install" in message


def test_flash_cli_dry_run_prints_the_commands(elf: FirmwareElf, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    flash_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["flash", "--probe", "openocd", str(elf.path), "--dry-run", "--json"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["commands"] == [
        ["openocd", "-f", OPENOCD_BOARD, "-c", f"program {elf.path} verify reset exit"]
    ]


# --------------------------------------------------------------------------------------------- backend


def test_board_backend_flashes_checks_uid_and_carries_the_link(elf: FirmwareElf) -> None:
    fake = FakeProbe()
    dev = BoardBackend.create(elf, BOARD_UID, port="loop://", runner=fake)
    try:
        assert dev.uid == BOARD_UID and fake.core == "halted", "created off: held in reset-halt"
        assert dev.read_flash("B") == elf.area_image("B")
        dev.power_on()
        assert dev.powered and fake.core == "running"
        dev.write(b"\x00frame\x00")
        out = dev.run_for(20.0, stop_on_output=True)
        assert dev.read() == b"\x00frame\x00" and out.reason.value == "output"
        dev.cut_power()
        assert not dev.powered and fake.core == "halted"
        with pytest.raises(NotImplementedError):
            dev.cut_power_at_flash_op(1)
    finally:
        dev.close()


def test_board_backend_refuses_a_board_with_another_uid(elf: FirmwareElf) -> None:
    with pytest.raises(DeviceError, match="the board's UID is"):
        BoardBackend.create(elf, bytes(12), port="loop://", runner=FakeProbe(), flash=False)


def test_board_backend_bad_serial_port_is_a_device_error(elf: FirmwareElf, tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match="cannot open the board's serial port"):
        BoardBackend.create(elf, b"", port=str(tmp_path / "ttyACM9"), runner=FakeProbe(), flash=False)
