"""The C device state machine (libotakey_hostdev.so: core + host port, driven by ctypes) against
the Python reference agent, with pytest as the gateway on the CLOUD channel.

Every byte the C device sends goes through the Python frame decoder and the agent's envelope
checks, and every answer goes back through the C frame decoder: the two implementations meet only
on the wire. Keys never cross the ctypes boundary; the device reports fingerprints.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from otakey.protocol.cloudsession import SessionOpen, SessionResult, SessionStatus, decode_session_message
from otakey.protocol.envelope import Header, fingerprint, is_error_message
from otakey.protocol.framing import Channel, Frame, FrameDecoder, encode_frame
from otakey.protocol.handshake import LastError, ReferenceAgent
from otakey.protocol.keystore import KeystoreState, encode_record
from otakey.protocol.messages import Action, MsgType

REPO = Path(__file__).resolve().parents[2]
AREA_A, AREA_B = 0, 1
TIMEOUT_MS = 1000
CHECKIN_MS = 60_000
UID = bytes.fromhex("3a0027000d51343132363830")
PO_ID = 4660
PO_NAME = "PO-2024-0042"
PK = bytes(range(0x40, 0x60))
APP_HASH = bytes.fromhex("c2890dac8e66d6561a262bff4c4b741b11a12769e640e73f753f344ed572b4a4")

# enum dev_state (device.h)
STATE_IDLE = 1
STATE_REVOKED = 10


# --- building and loading the library -------------------------------------------------------


def _build_hostdev() -> Path:
    """Configure and build only the shared library target (fast when up to date).

    OTAKEY_HOSTDEV_BUILD picks the build directory; the default is build/pytest-hostdev.
    """
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.fail("cmake not found: install cmake (scripts/setup.sh) to build libotakey_hostdev.so",
                    pytrace=False)
    build = Path(os.environ.get("OTAKEY_HOSTDEV_BUILD", REPO / "build" / "pytest-hostdev"))
    steps = ([cmake, "-S", str(REPO), "-B", str(build), "-DCMAKE_BUILD_TYPE=Debug"],
             [cmake, "--build", str(build), "--target", "otakey_hostdev", "-j", "2"])
    for cmd in steps:
        run = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if run.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed:\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}", pytrace=False)
    return build / "firmware_c" / "host" / "libotakey_hostdev.so"


def _declare(lib: ctypes.CDLL) -> None:
    u8p, sz, u32 = ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint32
    sigs: dict[str, tuple[list[object], object]] = {
        "host_reset": ([], None),
        "host_flash_reset": ([], None),
        "host_flash_raw_write": ([ctypes.c_int, u32, u8p, sz], ctypes.c_int),
        "host_flash_raw_is_blank": ([ctypes.c_int], ctypes.c_int),
        "host_set_uid": ([u8p], None),
        "host_set_app_hash": ([u8p], None),
        "host_time_advance": ([u32], None),
        "host_rng_seed": ([ctypes.c_uint64], None),
        "host_link_tx_take": ([ctypes.c_void_p, sz], sz),
        "host_dev_boot": ([u32, u32], ctypes.c_int),
        "host_dev_feed": ([u8p, sz], None),
        "host_dev_poll": ([], ctypes.c_int),
        "host_dev_state": ([], ctypes.c_int),
        "host_dev_state_name": ([], ctypes.c_char_p),
        "host_dev_sizeof": ([], sz),
        "host_dev_has_pk": ([], ctypes.c_int),
        "host_dev_has_ak": ([], ctypes.c_int),
        "host_dev_has_cloud": ([], ctypes.c_int),
        "host_dev_ak_version": ([], u32),
        "host_dev_cloud_version": ([], u32),
        "host_dev_generation": ([], u32),
        "host_dev_active_area": ([], ctypes.c_int),
        "host_dev_ak_fingerprint": ([ctypes.c_void_p], ctypes.c_int),
        "host_dev_cloud_fingerprint": ([ctypes.c_void_p], ctypes.c_int),
        "host_dev_last_error": ([], ctypes.c_int),
        "host_dev_messages_rejected": ([], u32),
        "host_dev_timeouts": ([], u32),
    }
    for name, (args, res) in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = res


@pytest.fixture(scope="module")
def hostdev() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(_build_hostdev()))
    _declare(lib)
    return lib


# --- the C device, seen from the wire ----------------------------------------------------------


class CDevice:
    """One C device (the library holds a single struct dev, like a chip holds one firmware)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        self.decoder = FrameDecoder()
        self.console: list[str] = []

    def factory_reset(self, uid: bytes = UID, seed: int = 1) -> None:
        self.lib.host_reset()
        self.lib.host_flash_reset()
        self.lib.host_set_uid(uid)
        self.lib.host_set_app_hash(APP_HASH)
        self.lib.host_rng_seed(seed)
        image = encode_record(KeystoreState(generation=1, po_id=PO_ID, po_name=PO_NAME, pk=PK))
        assert self.lib.host_flash_raw_write(AREA_B, 0, image, len(image)) == 0
        self.decoder.reset()
        self.console.clear()

    def boot(self) -> int:
        rc = int(self.lib.host_dev_boot(TIMEOUT_MS, CHECKIN_MS))
        self.take()
        return rc

    def take(self) -> list[Frame]:
        """Every frame the device sent since the last call; console lines are kept aside."""
        buf = ctypes.create_string_buffer(65536)
        n = self.lib.host_link_tx_take(buf, len(buf))
        frames: list[Frame] = []
        for ev in self.decoder.feed(buf.raw[:n]):
            assert isinstance(ev, Frame), f"the C device sent a bad frame: {ev}"
            if ev.channel == Channel.CONSOLE:
                self.console.append(ev.payload.decode())
            else:
                frames.append(ev)
        return frames

    def send(self, channel: int, payload: bytes) -> None:
        data = encode_frame(channel, payload)
        self.lib.host_dev_feed(data, len(data))

    @property
    def state(self) -> str:
        return str(self.lib.host_dev_state_name().decode())

    def ak_fp(self) -> bytes:
        out = ctypes.create_string_buffer(16)
        assert self.lib.host_dev_ak_fingerprint(out) == 0
        return out.raw

    def cloud_fp(self) -> bytes:
        out = ctypes.create_string_buffer(16)
        assert self.lib.host_dev_cloud_fingerprint(out) == 0
        return out.raw


Gateway = Callable[[SessionOpen], int]


def gateway_accepts(_: SessionOpen) -> int:
    return SessionStatus.CONNECTED


@dataclass
class Wire:
    """Carries frames between the C device, the reference agent and the test's gateway, and
    records what crossed: ("d2a"|"a2d", MsgType) and ("d2g", SessionOpen) / ("g2d", status)."""

    dev: CDevice
    agent: ReferenceAgent
    gateway: Gateway = gateway_accepts
    drop_next_answer: bool = False
    log: list[tuple[str, object]] = field(default_factory=list)
    sessions: list[SessionOpen] = field(default_factory=list)

    def pump(self) -> None:
        for _ in range(32):
            frames = self.dev.take()
            if not frames:
                return
            for f in frames:
                if f.channel == Channel.AGENT:
                    self.log.append(("d2a", MsgType(f.payload[1])))
                    answer = self.agent.handle(f.payload)
                    kind = MsgType.ERROR if is_error_message(answer) else MsgType(answer[1])
                    if self.drop_next_answer:
                        self.drop_next_answer = False
                        self.log.append(("lost", kind))
                        continue
                    self.log.append(("a2d", kind))
                    self.dev.send(Channel.AGENT, answer)
                elif f.channel == Channel.CLOUD:
                    msg = decode_session_message(f.payload)
                    assert isinstance(msg, SessionOpen)
                    self.sessions.append(msg)
                    status = self.gateway(msg)
                    self.log.append(("d2g", msg.credential.version))
                    self.log.append(("g2d", status))
                    self.dev.send(Channel.CLOUD, SessionResult(msg.request_id, status, "").encode())
        raise AssertionError("the device kept talking")

    def step(self, advance_ms: int = 0) -> list[tuple[str, object]]:
        """Advance the clock, let the device start whatever is due, carry everything until quiet."""
        start = len(self.log)
        if advance_ms:
            self.dev.lib.host_time_advance(advance_ms)
        self.dev.lib.host_dev_poll()
        self.pump()
        return self.log[start:]


@pytest.fixture
def wire(hostdev: ctypes.CDLL) -> Iterator[Wire]:
    dev = CDevice(hostdev)
    dev.factory_reset()
    agent = ReferenceAgent()
    agent.add_order(PO_ID, PO_NAME, PK)
    assert dev.boot() == 0
    yield Wire(dev, agent)


def _provision(w: Wire) -> None:
    assert w.step() == [("d2a", MsgType.PROV_HELLO), ("a2d", MsgType.PROV_OFFER),
                        ("d2a", MsgType.PROV_CONFIRM), ("a2d", MsgType.ACK)]


def _first_cloud(w: Wire) -> None:
    assert w.step() == [("d2a", MsgType.CLOUD_REQUEST), ("a2d", MsgType.CLOUD_UPDATE),
                        ("d2g", 1), ("g2d", SessionStatus.CONNECTED),
                        ("d2a", MsgType.CLOUD_CONFIRM), ("a2d", MsgType.ACK)]


def _checkin_with_action(w: Wire, action: Action) -> list[tuple[str, object]]:
    w.agent.set_action(UID, action)
    return w.step(advance_ms=CHECKIN_MS)


# --- tests ---------------------------------------------------------------------------------------


def test_c_device_boot_banner_names_factory_keys_on_console(wire: Wire) -> None:
    assert wire.dev.console == [f"OTA-Key fw 1.0.0 uid={UID.hex()} keys=factory area=B gen=1\n"]
    assert wire.dev.state == "idle"
    assert wire.dev.lib.host_dev_sizeof() < 12 * 1024  # RAM budget: 16 KB for the whole firmware


def test_c_device_provisioning_with_python_agent_derives_the_same_ak(wire: Wire) -> None:
    _provision(wire)
    agent_dev = wire.agent.devices[UID]
    assert agent_dev.completed and agent_dev.ak_version == 1 and agent_dev.pending_ak is None
    assert agent_dev.ak is not None
    assert wire.dev.ak_fp() == fingerprint(agent_dev.ak)
    lib = wire.dev.lib
    assert (lib.host_dev_has_pk(), lib.host_dev_has_ak(), lib.host_dev_ak_version()) == (0, 1, 1)
    assert lib.host_flash_raw_is_blank(AREA_B) == 1  # the PK record is scrubbed from flash
    assert wire.dev.state == "idle"


def test_c_device_first_cloud_credential_is_tested_through_gateway_then_confirmed(wire: Wire) -> None:
    _provision(wire)
    _first_cloud(wire)
    agent_dev = wire.agent.devices[UID]
    assert agent_dev.cloud is not None and agent_dev.cloud.version == 1 and agent_dev.cloud_pending is None
    # The gateway saw exactly the credential the agent issued, and the device stored that one.
    opened = wire.sessions[0]
    assert opened.credential == agent_dev.cloud
    assert opened.topic == f"devices/{agent_dev.cloud.client_id}/status"
    assert wire.dev.cloud_fp() == fingerprint(agent_dev.cloud.secret)
    assert wire.dev.lib.host_dev_cloud_version() == 1


def test_c_device_ak_rotation_from_checkin_action_moves_both_sides_to_version_2(wire: Wire) -> None:
    _provision(wire)
    _first_cloud(wire)
    old_fp = wire.dev.ak_fp()
    assert _checkin_with_action(wire, Action.ROTATE_AK) == [
        ("d2a", MsgType.CHECKIN), ("a2d", MsgType.CHECKIN_REPLY)]
    assert wire.step() == [("d2a", MsgType.AK_ROTATE_HELLO), ("a2d", MsgType.AK_ROTATE_OFFER),
                           ("d2a", MsgType.AK_ROTATE_CONFIRM), ("a2d", MsgType.ACK)]
    agent_dev = wire.agent.devices[UID]
    assert agent_dev.ak_version == 2 and agent_dev.ak is not None
    assert wire.dev.lib.host_dev_ak_version() == 2
    assert wire.dev.ak_fp() == fingerprint(agent_dev.ak) != old_fp
    assert wire.dev.lib.host_dev_cloud_version() == 1  # the credential rides along
    # The next check-in verifies under AK 2 only.
    assert wire.step(advance_ms=CHECKIN_MS) == [("d2a", MsgType.CHECKIN), ("a2d", MsgType.CHECKIN_REPLY)]


def test_c_device_cloud_update_accepted_by_gateway_activates_version_2(wire: Wire) -> None:
    _provision(wire)
    _first_cloud(wire)
    _checkin_with_action(wire, Action.UPDATE_CLOUD)
    assert wire.step() == [("d2a", MsgType.CLOUD_REQUEST), ("a2d", MsgType.CLOUD_UPDATE),
                           ("d2g", 2), ("g2d", SessionStatus.CONNECTED),
                           ("d2a", MsgType.CLOUD_CONFIRM), ("a2d", MsgType.ACK)]
    agent_dev = wire.agent.devices[UID]
    assert agent_dev.cloud is not None and agent_dev.cloud.version == 2
    assert ("cloud_active", UID, 2) in wire.agent.events
    assert wire.dev.cloud_fp() == fingerprint(agent_dev.cloud.secret)
    assert wire.dev.lib.host_dev_generation() == 4  # factory 1, AK 2, cloud v1 3, cloud v2 4


def test_c_device_refused_cloud_credential_falls_back_and_confirms_result_1(wire: Wire) -> None:
    _provision(wire)
    _first_cloud(wire)
    v1 = wire.agent.devices[UID].cloud
    assert v1 is not None
    _checkin_with_action(wire, Action.UPDATE_CLOUD)
    wire.gateway = lambda _: SessionStatus.REFUSED
    assert wire.step() == [("d2a", MsgType.CLOUD_REQUEST), ("a2d", MsgType.CLOUD_UPDATE),
                           ("d2g", 2), ("g2d", SessionStatus.REFUSED),
                           ("d2a", MsgType.CLOUD_CONFIRM), ("a2d", MsgType.ACK)]
    agent_dev = wire.agent.devices[UID]
    # The agent revoked v2 and kept v1; the device is back on v1, the v2 area invalidated.
    assert ("cloud_revoked", UID, 2) in wire.agent.events
    assert agent_dev.cloud == v1 and agent_dev.cloud_pending is None
    lib = wire.dev.lib
    assert lib.host_dev_cloud_version() == 1 and lib.host_dev_generation() == 3
    assert wire.dev.cloud_fp() == fingerprint(v1.secret)
    assert lib.host_dev_last_error() == LastError.CLOUD_REFUSED
    # A reboot agrees (the invalidated record never comes back), and the next check-in tells
    # the agent why the last exchange failed.
    assert wire.dev.boot() == 0
    assert lib.host_dev_cloud_version() == 1 and lib.host_dev_generation() == 3
    wire.step()
    checkin = wire.agent.devices[UID].last_checkin
    assert checkin is not None and checkin.cloud_version == 1
    assert checkin.cloud_fp == fingerprint(v1.secret)


def test_c_device_checkin_reports_firmware_app_hash_and_fingerprints(wire: Wire) -> None:
    _provision(wire)
    _first_cloud(wire)
    wire.step(advance_ms=CHECKIN_MS)
    agent_dev = wire.agent.devices[UID]
    c = agent_dev.last_checkin
    assert c is not None and agent_dev.ak is not None and agent_dev.cloud is not None
    assert (c.ak_version, c.cloud_version, c.cloud_platform) == (1, 1, agent_dev.cloud.platform)
    assert c.ak_fp == fingerprint(agent_dev.ak)
    assert c.cloud_fp == fingerprint(agent_dev.cloud.secret)
    assert c.fw_version == 0x010000 and c.app_hash == APP_HASH and c.last_error == 0
    # Nothing is due before the interval has passed again.
    assert wire.step(advance_ms=CHECKIN_MS - 1) == []


def test_c_device_lost_offer_times_out_and_retries_with_a_fresh_nonce(wire: Wire) -> None:
    wire.drop_next_answer = True
    assert wire.step() == [("d2a", MsgType.PROV_HELLO), ("lost", MsgType.PROV_OFFER)]
    first = wire.agent.devices[UID].pending_ak
    assert first is not None
    assert wire.step(advance_ms=TIMEOUT_MS - 1) == []
    assert wire.step(advance_ms=1) == [("d2a", MsgType.PROV_HELLO), ("a2d", MsgType.PROV_OFFER),
                                       ("d2a", MsgType.PROV_CONFIRM), ("a2d", MsgType.ACK)]
    agent_dev = wire.agent.devices[UID]
    assert agent_dev.ak is not None and agent_dev.completed
    assert agent_dev.ak != first.ak  # the new HELLO replaced the pending AK
    assert wire.dev.ak_fp() == fingerprint(agent_dev.ak)
    assert wire.dev.lib.host_dev_timeouts() == 1


def test_c_device_lost_ack_leaves_key_final_and_next_message_proves_it(wire: Wire) -> None:
    wire.step()  # HELLO/OFFER/CONFIRM/ACK
    # A second device state: rotate, but lose the ACK of the confirm.
    _first_cloud(wire)
    _checkin_with_action(wire, Action.ROTATE_AK)
    wire.log.clear()
    wire.dev.lib.host_dev_poll()
    frames = wire.dev.take()
    assert [MsgType(f.payload[1]) for f in frames] == [MsgType.AK_ROTATE_HELLO]
    offer = wire.agent.handle(frames[0].payload)
    wire.dev.send(Channel.AGENT, offer)
    confirm = wire.dev.take()[0].payload
    assert MsgType(confirm[1]) == MsgType.AK_ROTATE_CONFIRM
    # The CONFIRM is lost: the agent still holds AK 2 as pending, the device already runs on it.
    assert wire.agent.devices[UID].pending_ak is not None
    assert wire.dev.lib.host_dev_ak_version() == 2
    wire.step(advance_ms=TIMEOUT_MS)  # the device gives the ACK up
    assert wire.dev.state == "idle"
    assert wire.step(advance_ms=CHECKIN_MS) == [("d2a", MsgType.CHECKIN), ("a2d", MsgType.CHECKIN_REPLY)]
    agent_dev = wire.agent.devices[UID]
    assert agent_dev.ak_version == 2 and agent_dev.pending_ak is None  # activated by the check-in
    assert agent_dev.ak is not None and wire.dev.ak_fp() == fingerprint(agent_dev.ak)


def test_c_device_second_provisioning_of_a_provisioned_id_is_refused(wire: Wire) -> None:
    _provision(wire)
    # A clone: the same chip ID with the factory image again (the paper's "one ID, many tokens").
    wire.dev.factory_reset()
    assert wire.dev.boot() == 0
    assert wire.step() == [("d2a", MsgType.PROV_HELLO), ("a2d", MsgType.ERROR)]
    assert ("duplicate_provisioning", UID) in wire.agent.anomalies
    lib = wire.dev.lib
    assert wire.dev.state == "idle" and lib.host_dev_has_pk() == 1 and lib.host_dev_has_ak() == 0
    assert lib.host_dev_last_error() == LastError.AGENT_REFUSED
    # It backs off for a timeout before it asks again.
    assert wire.step() == []


def test_c_device_revoked_by_checkin_stops_talking(wire: Wire) -> None:
    _provision(wire)
    _first_cloud(wire)
    wire.agent.revoke(UID)
    assert wire.step(advance_ms=CHECKIN_MS) == [("d2a", MsgType.CHECKIN), ("a2d", MsgType.CHECKIN_REPLY)]
    assert wire.dev.lib.host_dev_state() == STATE_REVOKED
    assert wire.step(advance_ms=10 * CHECKIN_MS) == []
    assert wire.dev.lib.host_dev_has_ak() == 1  # keys kept for forensics


def test_c_device_drops_agent_answer_for_another_exchange(wire: Wire) -> None:
    wire.dev.lib.host_dev_poll()
    hello = wire.dev.take()[0].payload
    offer = wire.agent.handle(hello)
    # The same OFFER with the device's nonce_d changed no longer verifies, nor names this exchange.
    h = Header.unpack(offer)
    assert h.type == MsgType.PROV_OFFER
    forged = offer[:20] + bytes(16) + offer[36:]
    wire.dev.send(Channel.AGENT, forged)
    assert wire.dev.take() == []
    assert wire.dev.lib.host_dev_messages_rejected() == 1
    assert wire.dev.state == "prov_wait_offer"
    wire.dev.send(Channel.AGENT, offer)
    assert [MsgType(f.payload[1]) for f in wire.dev.take()] == [MsgType.PROV_CONFIRM]


def test_c_device_longest_client_id_still_yields_a_session_topic_the_gateway_accepts(wire: Wire) -> None:
    """§3.5 allows a 128-byte client id; the topic devices/<id>/status must still fit §5 (found by
    fuzz_device: fuzz/crashes/fuzz_device-session-topic-over-128)."""
    from otakey.protocol.messages import CloudCredential, Platform

    def long_ids(device_id: bytes, version: int, rng: Callable[[int], bytes]) -> CloudCredential:
        return CloudCredential(version, Platform.MOSQUITTO, "mqtt://127.0.0.1:1883", "c" * 128,
                               "u" * 128, rng(24).hex().encode())

    wire.agent = ReferenceAgent(issuer=long_ids)
    wire.agent.add_order(PO_ID, PO_NAME, PK)
    _provision(wire)
    _first_cloud(wire)  # the gateway decoded the SESSION_OPEN (topic 143 bytes) and accepted it
    assert wire.sessions[0].topic == "devices/" + "c" * 128 + "/status"
    assert wire.dev.lib.host_dev_cloud_version() == 1
