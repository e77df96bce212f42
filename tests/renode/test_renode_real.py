"""Against a real Renode (not run by `.ci/run`: CI machines have none). Run it where Renode is:

    PYRENODE_BUILD_DIR=/path/to/renode python -m pytest tests/renode

Without one of PYRENODE_PKG, PYRENODE_BUILD_DIR, PYRENODE_BIN the test fails, naming them: a run
that says "passed" has really booted the image in Renode."""

from __future__ import annotations

import pytest

from otakey.firmware.elf import FirmwareElf
from otakey.harness.campaign import campaign_firmware
from otakey.harness.renode_backend import RenodeBackend
from otakey.protocol.framing import Channel, Frame, FrameDecoder

UID = bytes.fromhex("0102030405060708090a0b0c")


@pytest.fixture(scope="module")
def elf() -> FirmwareElf:
    return FirmwareElf(campaign_firmware())


def test_renode_runs_one_device_to_its_boot_banner(elf: FirmwareElf) -> None:
    dev = RenodeBackend.create(elf, UID, name="real-1")
    try:
        dev.power_on()
        dev.run_for(500.0)
        frames = [e for e in FrameDecoder().feed(dev.read()) if isinstance(e, Frame)]
        console = b"".join(f.payload for f in frames if f.channel == Channel.CONSOLE).decode(errors="replace")
        assert f"uid={UID.hex()} keys=factory area=B gen=1" in console, console
        assert dev.read_flash("B") == elf.area_image("B")
    finally:
        dev.close()
