"""The real firmware ELF in the built-in emulator (strict mode), through its gateway, against a real
agent process and a real Mosquitto: boot banner, stage 2, cloud credentials with the device's own
test-before-confirm session, AK and cloud-key rotation, a wrong PK, a garbage keystore area.

Flash is read back from both keystore sectors and decoded; the device's flash operations are
compared word for word with what docs/flash-layout.md §3 prescribes (the Python reference plan).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agentproc import Stack, make_stack, mqtt_accepts, run, wait_for
from otakey.agent.product_file import ProductFile
from otakey.firmware import FirmwareElf, build_firmware
from otakey.firmware.build import CACHE_ENV
from otakey.harness.backend import RunReason
from otakey.harness.emu_backend import EmuBackend
from otakey.harness.linked import LinkedDevice, parse_banner
from otakey.protocol.cloudsession import SessionStatus
from otakey.protocol.framing import Channel, FrameDecoder
from otakey.protocol.keystore import (
    AREA_A,
    AREA_B,
    COMMIT_MAGIC,
    FlashOp,
    KeystoreState,
    apply_ops,
    commit,
    decode_record,
)
from otakey.protocol.messages import Action, MsgType
from otakey.store import Transaction

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
CHECKIN_WAIT_MS = 12_000  # the firmware checks in every 10 s of device time (main.c)


def firmware_version() -> str:
    """DEV_FW_VERSION as the C header defines it, "major.minor.patch"."""
    text = (ROOT / "firmware_c/core/include/otakey/device.h").read_text()
    m = re.search(r"#define DEV_FW_VERSION \(\((\d+)u << 16\) \| \((\d+)u << 8\) \| (\d+)u\)", text)
    assert m is not None, "DEV_FW_VERSION not found in device.h"
    return ".".join(m.groups())


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def build_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    cache = Path(tmp_path_factory.getbasetemp()) / "otakey-cache"
    old = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(cache)
    yield cache
    if old is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = old


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, mosquitto: Any) -> Iterator[Stack]:
    s = make_stack(tmp_path_factory.mktemp("fw-emu"), "sqlite", mosquitto=mosquitto)
    s.create_product("PO-EMU", quantity=50)
    s.agent()
    yield s
    s.stop_all()


@pytest.fixture(scope="module")
def product(stack: Stack) -> ProductFile:
    assert stack.product is not None
    return stack.product


@pytest.fixture(scope="module")
def elf(stack: Stack, product: ProductFile, build_cache: Path) -> FirmwareElf:
    return FirmwareElf(build_firmware(stack.tmp / f"{product.po_name}.product.json").elf)


@pytest.fixture(scope="module")
def forged_elf(stack: Stack, product: ProductFile, build_cache: Path) -> tuple[FirmwareElf, ProductFile]:
    """An image of another order with the same number and name: a PK the agent never issued."""
    other = ProductFile(po_name=product.po_name, po_id=product.po_id, pk=os.urandom(32), quantity=1)
    path = stack.tmp / "forged.product.json"
    other.write(path)
    return FirmwareElf(build_firmware(path).elf), other


def new_device(elf: FirmwareElf, seed: int = 1) -> EmuBackend:
    dev = EmuBackend.create(elf, uid=os.urandom(12), seed=seed)
    assert dev.chip.strict
    return dev


def linked(stack: Stack, dev: EmuBackend) -> LinkedDevice:
    return LinkedDevice(dev, "127.0.0.1", stack.agents[0].port, settle_timeout=30.0)


def cloud_ready(ld: LinkedDevice) -> bool:
    ks = ld.device.key_state()
    return ks.cloud_version is not None and ld.sessions_with(SessionStatus.CONNECTED) > 0


def flash_ops_as_plan(dev: EmuBackend) -> list[FlashOp]:
    """The chip's flash operations in the keystore reference's terms (area, offset, bytes)."""
    ops = []
    for op in dev.flash_ops:
        area = next(a for a in dev.firmware.areas.values() if a.address <= op.address < a.end)
        if op.kind == "erase":
            assert (op.address, op.size) == (area.address, area.size), "erase of a whole sector only"
            ops.append(FlashOp("erase", area.name))
        else:
            assert op.size == 4 and op.value is not None
            data = op.value.to_bytes(4, "little")
            ops.append(FlashOp("program", area.name, op.address - area.address, data))
    return ops


def agent_device(stack: Stack, device_id: bytes) -> Any:
    async def work(tx: Transaction) -> Any:
        return await tx.get_device(device_id)
    return stack.query(work)


def set_action(stack: Stack, device_id: bytes, action: Action) -> None:
    async def work(tx: Transaction) -> None:
        await tx.set_pending_action([device_id], action)
    stack.query(work)


def active_state(dev: EmuBackend) -> KeystoreState:
    result = dev.decode_keystore()
    assert result.state is not None
    return result.state


# --------------------------------------------------------------------------------------------- boot


def test_boot_banner_names_firmware_version_uid_and_factory_keys(elf: FirmwareElf, product: ProductFile):
    dev = new_device(elf)
    dev.power_on()
    out = dev.run_until_idle(50_000_000)
    assert out.reason is RunReason.IDLE
    frames = [f for f in FrameDecoder().feed(dev.read()) if hasattr(f, "channel")]
    console = b"".join(f.payload for f in frames if f.channel == Channel.CONSOLE).decode()
    banner = parse_banner(console.splitlines()[0])
    assert banner is not None, console
    assert (banner.fw_version, banner.uid, banner.keys, banner.area, banner.generation) == (
        firmware_version(), dev.uid, "factory", "B", 1)
    # Right after the banner it starts stage 2: PROV_HELLO under the PO's PK, with its own UID.
    hello = next(f.payload for f in frames if f.channel == Channel.AGENT)
    assert (hello[1], hello[2], int.from_bytes(hello[4:8], "little"), hello[8:20]) == (
        MsgType.PROV_HELLO, 0x00, product.po_id, dev.uid)
    assert dev.flash_ops == [] and dev.chip.reports == []
    dev.close()


# --------------------------------------------------------------------------------------------- stage 2


def test_stage2_commits_ak_then_cloud_credentials_exactly_as_the_flash_layout_says(
        stack: Stack, elf: FirmwareElf, product: ProductFile):
    dev = new_device(elf, seed=2)
    factory = (elf.area_image(AREA_A), elf.area_image(AREA_B))

    async def go() -> LinkedDevice:
        async with linked(stack, dev) as ld:
            dev.power_on()
            assert await ld.run_until(lambda: cloud_ready(ld), 30_000)
            return ld

    ld = run(go())
    # Both sectors, read back and decoded: A holds the AK record (stage 2), B the newer record with
    # the cloud credential; neither holds the PK, and the PK bytes are nowhere in flash.
    rec_a = decode_record(dev.read_flash(AREA_A))
    rec_b = decode_record(dev.read_flash(AREA_B))
    assert (rec_a.generation, rec_a.pk, rec_a.ak_version, rec_a.cloud) == (2, None, 1, None)
    assert (rec_b.generation, rec_b.pk, rec_b.ak, rec_b.ak_version) == (3, None, rec_a.ak, 1)
    assert rec_b.cloud is not None and rec_b.cloud.version == 1
    assert (rec_b.po_id, rec_b.po_name) == (product.po_id, product.po_name)
    assert product.pk not in dev.chip.flash_image()
    ks = dev.key_state()
    assert (ks.keys, ks.active, ks.pk_in_flash) == ("cloud", "B", False)

    # Word for word: stage 2 wrote the inactive area A (erase, record words in address order, the
    # commit word last) then scrubbed the PK area B; the cloud update wrote the then inactive
    # area B and committed it, leaving A as the fallback.
    plan_ak = commit(factory, rec_a)
    after_ak = apply_ops(factory, plan_ak.ops)
    plan_cloud = commit(after_ak, rec_b)
    ops = flash_ops_as_plan(dev)
    assert ops == [*plan_ak.ops, *plan_cloud.ops]
    assert plan_ak.target == AREA_A and plan_ak.ops[-1] == FlashOp("erase", AREA_B)
    assert plan_cloud.target == AREA_B and plan_cloud.ops[-1] == FlashOp(
        "program", AREA_B, 0, COMMIT_MAGIC.to_bytes(4, "little"))

    # The agent holds the same AK, and the session the gateway opened used the stored credential.
    agent = agent_device(stack, dev.uid)
    assert agent.ak_version == 1 and agent.ak == rec_a.ak
    session = [r for r in ld.gateway.session_records if r.status is SessionStatus.CONNECTED]
    assert len(session) == 1 and session[0].client_id == rec_b.cloud.client_id
    assert mqtt_accepts(rec_b.cloud)
    assert dev.chip.reports == []
    dev.close()


# --------------------------------------------------------------------------------------------- updates


@dataclass
class Live:
    """A device with its gateway on one event loop that outlives single calls (the gateway's tasks
    belong to that loop)."""

    dev: EmuBackend
    ld: LinkedDevice
    runner: asyncio.Runner

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)


@pytest.fixture
def provisioned(stack: Stack, elf: FirmwareElf) -> Iterator[Live]:
    """A device through stage 2 and its first cloud credential, gateway still up."""
    dev = new_device(elf, seed=3)
    ld = linked(stack, dev)
    live = Live(dev, ld, asyncio.Runner())

    async def up() -> None:
        await ld.start()
        dev.power_on()
        assert await ld.run_until(lambda: cloud_ready(ld), 30_000)

    try:
        live.run(up())
        yield live
    finally:
        live.run(ld.close())
        live.runner.close()


def test_ak_rotation_after_a_check_in_commits_the_agents_new_ak(stack: Stack, provisioned: Live):
    dev, ld = provisioned.dev, provisioned.ld
    before = active_state(dev)
    set_action(stack, dev.uid, Action.ROTATE_AK)
    instructions = dev.instructions
    start_ms = dev.device_ms
    assert provisioned.run(ld.run_until(lambda: dev.key_state().ak_version == 2, CHECKIN_WAIT_MS))
    after = active_state(dev)
    assert after.ak_version == 2 and after.ak != before.ak and after.cloud == before.cloud
    assert after.generation == before.generation + 1
    agent = agent_device(stack, dev.uid)
    assert (agent.ak_version, agent.ak, agent.ak_pending) == (2, after.ak, None)
    # The wait for the check-in passed as warped SysTick periods, not as executed instructions:
    # ~10 s at 180 MHz would be 1.8 billion.
    waited_ms = dev.device_ms - start_ms
    assert 9_000 <= waited_ms <= CHECKIN_WAIT_MS
    assert dev.instructions - instructions < 50_000_000
    assert dev.chip.reports == []


def test_cloud_key_rotation_new_key_connects_and_the_old_one_is_refused(stack: Stack, provisioned: Live):
    dev, ld = provisioned.dev, provisioned.ld
    old = active_state(dev).cloud
    assert old is not None and mqtt_accepts(old)
    set_action(stack, dev.uid, Action.UPDATE_CLOUD)
    ok = provisioned.run(ld.run_until(lambda: (dev.key_state().cloud_version or 0) >= 2
                          and ld.sessions_with(SessionStatus.CONNECTED) >= 2, CHECKIN_WAIT_MS))
    assert ok
    new = active_state(dev).cloud
    assert new is not None and new.version == old.version + 1 and new.secret != old.secret
    # The credential in the device's flash is the one the real broker accepts; once the device
    # confirmed it, the agent retires the old one and the broker refuses it.
    assert mqtt_accepts(new)
    assert wait_for(lambda: not mqtt_accepts(old), timeout=10.0), "old cloud key still accepted"
    assert dev.chip.reports == []


# --------------------------------------------------------------------------------------------- refusals


def test_device_with_a_wrong_pk_is_refused_and_keeps_its_factory_state(stack: Stack, forged_elf):
    image, other = forged_elf
    dev = new_device(image, seed=4)
    factory_b = image.area_image(AREA_B)

    async def go() -> LinkedDevice:
        async with linked(stack, dev) as ld:
            dev.power_on()
            await ld.settle()
            await ld.advance(7_000)  # a retry every 2 s of device time, each refused
            return ld

    ld = run(go())
    assert ld.gateway.counters.frames_to_agent >= 3  # HELLO, then retries with fresh nonces
    assert ld.gateway.counters.frames_from_agent == ld.gateway.counters.frames_to_agent  # every one answered
    ks = dev.key_state()
    assert (ks.keys, ks.active, ks.ak_version, ks.pk_in_flash) == ("factory", "B", None, True)
    assert dev.read_flash(AREA_B) == factory_b and set(dev.read_flash(AREA_A)) == {0xFF}
    assert dev.flash_ops == []  # nothing was ever written
    assert decode_record(dev.read_flash(AREA_B)).pk == other.pk
    assert agent_device(stack, dev.uid) is None
    assert dev.chip.reports == []
    dev.close()


def test_garbage_in_keystore_area_a_is_reported_at_boot_and_provisioning_still_works(
        stack: Stack, elf: FirmwareElf):
    dev = new_device(elf, seed=5)
    dev.write_flash(AREA_A, os.urandom(elf.area(AREA_A).size))

    async def go() -> LinkedDevice:
        async with linked(stack, dev) as ld:
            dev.power_on()
            assert await ld.run_until(lambda: cloud_ready(ld), 30_000)
            return ld

    ld = run(go())
    banner = parse_banner(ld.console[0])
    assert banner is not None and (banner.keys, banner.area) == ("factory", "B")
    assert "keystore: area A invalid" in ld.console[1:]
    assert dev.flash_ops[0].kind == "erase" and dev.flash_ops[0].address == elf.area(AREA_A).address
    assert dev.key_state().provisioned
    dev.close()


def test_device_with_garbage_in_both_areas_boots_with_no_keys_and_stays_silent(
        stack: Stack, elf: FirmwareElf):
    dev = new_device(elf, seed=6)
    for area in (AREA_A, AREA_B):
        dev.write_flash(area, os.urandom(elf.area(area).size))
    garbage = (dev.read_flash(AREA_A), dev.read_flash(AREA_B))

    async def go() -> LinkedDevice:
        async with linked(stack, dev) as ld:
            dev.power_on()
            await ld.settle()
            await ld.advance(5_000)
            return ld

    ld = run(go())
    banner = parse_banner(ld.console[0])
    assert banner is not None and (banner.uid, banner.keys, banner.area, banner.generation) == (
        dev.uid, "none", None, 0)
    assert ld.console[1] == "keystore: keystore_empty, no valid area"
    assert ld.gateway.counters.frames_to_agent == 0  # no key to seal with: it never talks
    assert (dev.read_flash(AREA_A), dev.read_flash(AREA_B)) == garbage  # and erases nothing
    assert dev.key_state().keys == "none"
    assert dev.chip.reports == []
    dev.close()
