"""Message bodies (protocol §3), the cloud credential (§3.5) and cloud-session messages (§5)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otakey.errors import EnvelopeError, ProtocolError
from otakey.protocol.cloudsession import (
    SessionOpen,
    SessionResult,
    SessionStatus,
    decode_session_message,
)
from otakey.protocol.messages import (
    BODY_LENGTHS,
    Action,
    Checkin,
    CheckinReply,
    CloudConfirm,
    CloudCredential,
    CloudRequest,
    CloudUpdate,
    Empty,
    Hello,
    MsgType,
    Offer,
    Platform,
    decode_body,
)

CRED = CloudCredential(3, Platform.MOSQUITTO, "mqtt://127.0.0.1:1883", "dev-1", "dev-1", b"s3cret")


@pytest.mark.parametrize("body", [
    Hello(bytes(range(32))),
    Offer(bytes(range(32)), 7),
    Empty(),
    CloudRequest(9),
    CloudConfirm(4, 1),
    CheckinReply(Action.UPDATE_CLOUD),
    Checkin(2, 3, Platform.AWS_IOT, bytes([1]) * 16, bytes([2]) * 16, 0x010203, bytes([3]) * 32, 5),
])
def test_fixed_body_round_trips_at_its_exact_length(body):
    raw = body.encode()
    assert len(raw) == type(body).LENGTH
    assert type(body).decode(raw) == body


@pytest.mark.parametrize("msg_type", [t for t, n in BODY_LENGTHS.items() if n is not None])
def test_fixed_body_one_byte_off_is_rejected(msg_type):
    n = BODY_LENGTHS[msg_type]
    for wrong in {n + 1, max(n - 1, 0) if n else n + 16}:
        with pytest.raises(EnvelopeError):
            decode_body(msg_type, bytes(wrong))


def test_offer_layout_is_pub_then_version_le():
    raw = Offer(bytes([9]) * 32, 0x01020304).encode()
    assert raw == bytes([9]) * 32 + b"\x04\x03\x02\x01"


def test_offer_version_zero_is_rejected():
    with pytest.raises(EnvelopeError):
        Offer.decode(bytes(36))


def test_checkin_fields_sit_at_documented_offsets():
    c = Checkin(0x11223344, 0x55667788, 2, bytes([0xAA]) * 16, bytes([0xBB]) * 16, 0x00010203,
                bytes([0xCC]) * 32, 0x7E)
    raw = c.encode()
    assert len(raw) == 110
    assert raw[0:4] == bytes.fromhex("44332211")
    assert raw[4:8] == bytes.fromhex("88776655")
    assert raw[8] == 2
    assert raw[9:25] == bytes([0xAA]) * 16 and raw[25:41] == bytes([0xBB]) * 16
    assert raw[41:45] == bytes.fromhex("03020100")
    assert raw[45:77] == bytes([0xCC]) * 32
    assert raw[77] == 0x7E and raw[78:] == bytes(32)


def test_checkin_reserved_nonzero_is_rejected():
    raw = bytearray(Checkin(1, 0, 0, bytes(16), bytes(16), 1, bytes(32)).encode())
    raw[100] = 1
    with pytest.raises(EnvelopeError):
        Checkin.decode(bytes(raw))


def test_checkin_reply_unknown_action_or_reserved_is_rejected():
    with pytest.raises(EnvelopeError):
        CheckinReply.decode(b"\x04\x00\x00\x00")
    with pytest.raises(EnvelopeError):
        CheckinReply.decode(b"\x00\x00\x01\x00")


def test_cloud_confirm_unknown_result_is_rejected():
    with pytest.raises(EnvelopeError):
        CloudConfirm.decode(b"\x01\x00\x00\x00\x03")


def test_cloud_credential_layout_is_u32_u8_then_u16_prefixed_fields():
    raw = CRED.encode()
    assert raw[:5] == b"\x03\x00\x00\x00\x01"
    n = struct.unpack_from("<H", raw, 5)[0]
    assert raw[7 : 7 + n] == b"mqtt://127.0.0.1:1883"
    assert raw.endswith(b"\x06\x00s3cret")
    assert CloudCredential.decode(raw) == CRED
    assert CloudUpdate.decode(raw).credential == CRED


def test_cloud_credential_at_every_limit_round_trips_at_3597_bytes():
    cred = CloudCredential(0xFFFFFFFF, Platform.AWS_IOT, "e" * 128, "c" * 128, "u" * 128, bytes(3200))
    raw = cred.encode()
    assert len(raw) == 3597
    assert CloudCredential.decode(raw) == cred


@pytest.mark.parametrize("field, value", [
    ("endpoint", "e" * 129), ("client_id", "c" * 129), ("username", "u" * 129), ("secret", bytes(3201)),
    ("version", 0), ("platform", 0), ("platform", 3),
])
def test_cloud_credential_over_limit_is_a_caller_mistake(field, value):
    args = dict(version=1, platform=1, endpoint="", client_id="", username="", secret=b"")
    args[field] = value
    with pytest.raises(ValueError):
        CloudCredential(**args)


@pytest.mark.parametrize("index, limit", [(0, 128), (1, 128), (2, 128), (3, 3200)])
def test_cloud_credential_decode_field_over_limit_is_rejected(index, limit):
    fields = [b"", b"", b"", b""]
    fields[index] = b"x" * (limit + 1)
    raw = b"\x01\x00\x00\x00\x01" + b"".join(struct.pack("<H", len(f)) + f for f in fields)
    with pytest.raises(EnvelopeError):
        CloudCredential.decode(raw)


@pytest.mark.parametrize("mutate", [
    lambda r: r + b"\x00",  # trailing byte
    lambda r: r[:-1],  # truncated secret
    lambda r: r[:6],  # cut inside a length
    lambda r: b"\x00\x00\x00\x00" + r[4:],  # version 0
    lambda r: r[:4] + b"\x03" + r[5:],  # platform 3
])
def test_cloud_credential_malformed_is_rejected(mutate):
    with pytest.raises(EnvelopeError):
        CloudCredential.decode(mutate(CRED.encode()))


def test_cloud_credential_repr_hides_secret():
    assert "s3cret" not in repr(CRED)


def test_session_open_round_trips_with_embedded_credential():
    m = SessionOpen(7, CRED, "devices/dev-1/status", b"online")
    raw = m.encode()
    assert raw[0] == 1 and raw[1] == 7 and raw[2:2 + len(CRED.encode())] == CRED.encode()
    assert decode_session_message(raw) == m


def test_session_result_round_trips():
    m = SessionResult(9, SessionStatus.REFUSED, "not authorised")
    assert decode_session_message(m.encode()) == m


@pytest.mark.parametrize("raw", [
    b"", b"\x03\x01", b"\x02\x01\x04\x00\x00", b"\x02\x01\x00\x05\x00ab",
    SessionResult(1, 0, "x").encode() + b"\x00",
    b"\x01\x01" + CRED.encode() + struct.pack("<H", 257) + b"t" * 257 + b"\x00\x00",
    b"\x01\x01" + CRED.encode() + b"\x00\x00" + struct.pack("<H", 257) + b"p" * 257,
])
def test_session_malformed_message_is_rejected(raw):
    with pytest.raises(ProtocolError) as info:
        decode_session_message(raw)
    assert info.value.code == "malformed"


def test_session_fields_over_limit_are_caller_mistakes():
    with pytest.raises(ValueError):
        SessionOpen(1, CRED, "t" * 257, b"").encode()
    with pytest.raises(ValueError):
        SessionResult(1, 0, "d" * 129).encode()


@settings(max_examples=300)
@given(st.sampled_from([int(t) for t in MsgType if t != MsgType.ERROR]), st.binary(max_size=200))
def test_body_decoders_on_random_bytes_raise_only_envelope_error(msg_type, data):
    try:
        decode_body(msg_type, data)
    except EnvelopeError:
        pass


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_credential_and_session_decoders_on_random_bytes_raise_only_documented_errors(data):
    try:
        CloudCredential.decode(data)
    except EnvelopeError:
        pass
    try:
        decode_session_message(data)
    except ProtocolError as exc:
        assert exc.code == "malformed"
