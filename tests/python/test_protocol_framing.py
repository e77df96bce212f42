"""Link framing (protocol §1): COBS, CRC, and the resynchronising incremental decoder."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otakey.errors import FrameError
from otakey.protocol.framing import (
    FRAME_BAD_CHANNEL,
    FRAME_BAD_COBS,
    FRAME_BAD_CRC,
    FRAME_TOO_LONG,
    FRAME_TOO_SHORT,
    MAX_ENCODED,
    MAX_PAYLOAD,
    Channel,
    Frame,
    FrameDecoder,
    cobs_decode,
    cobs_encode,
    crc32,
    encode_frame,
)

DOCUMENTED = {FRAME_TOO_LONG, FRAME_BAD_COBS, FRAME_TOO_SHORT, FRAME_BAD_CRC, FRAME_BAD_CHANNEL}


def _raw_frame(channel: int, payload: bytes, crc_xor: int = 0) -> bytes:
    content = bytes([channel]) + payload
    return cobs_encode(content + (zlib.crc32(content) ^ crc_xor).to_bytes(4, "little")) + b"\x00"


def _only_error(data: bytes) -> str:
    events = FrameDecoder().feed(data)
    assert len(events) == 1 and isinstance(events[0], FrameError), events
    return events[0].code


def test_max_encoded_matches_spec_bound():
    assert MAX_ENCODED == 4118


def test_crc32_is_iso_hdlc_check_value():
    # The catalogue check value of CRC-32/ISO-HDLC over "123456789".
    assert crc32(b"123456789") == 0xCBF43926


@pytest.mark.parametrize("data, encoded", [
    (b"", b"\x01"),
    (b"\x00", b"\x01\x01"),
    (b"\x00\x00", b"\x01\x01\x01"),
    (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
    (b"\x11\x00", b"\x02\x11\x01"),
])
def test_cobs_encode_known_examples(data, encoded):
    assert cobs_encode(data) == encoded
    assert cobs_decode(encoded) == data


def test_cobs_full_block_at_end_has_no_extra_code_byte():
    data = bytes(range(1, 255))  # 254 non-zero bytes
    assert cobs_encode(data) == b"\xff" + data


def test_cobs_255_run_splits_into_two_blocks():
    data = b"\x07" * 255
    assert cobs_encode(data) == b"\xff" + b"\x07" * 254 + b"\x02\x07"


def test_cobs_non_minimal_trailing_code_decodes_to_same_bytes():
    data = b"\x05" * 254
    assert cobs_decode(b"\xff" + data + b"\x01") == data


@pytest.mark.parametrize("bad", [b"", b"\x03\x01", b"\x02\x00", b"\x00"])
def test_cobs_decode_malformed_raises_bad_cobs(bad):
    with pytest.raises(FrameError) as info:
        cobs_decode(bad)
    assert info.value.code == FRAME_BAD_COBS


def test_encode_frame_layout_is_cobs_of_channel_payload_crc_then_delimiter():
    wire = encode_frame(Channel.AGENT, b"abc")
    assert wire[-1] == 0 and 0 not in wire[:-1]
    content = cobs_decode(wire[:-1])
    assert content[:4] == b"\x01abc"
    assert int.from_bytes(content[4:], "little") == zlib.crc32(b"\x01abc")


def test_encode_frame_rejects_unknown_channel_and_oversized_payload():
    with pytest.raises(ValueError):
        encode_frame(4, b"")
    with pytest.raises(ValueError):
        encode_frame(Channel.AGENT, bytes(MAX_PAYLOAD + 1))


def test_max_payload_frame_stays_within_encoded_limit():
    payload = b"\x01" * MAX_PAYLOAD
    wire = encode_frame(Channel.AGENT, payload)
    assert len(wire) - 1 <= MAX_ENCODED
    assert FrameDecoder().feed(wire) == [Frame(Channel.AGENT, payload)]


@pytest.mark.parametrize("channel", list(Channel))
def test_decoder_returns_frame_for_every_channel(channel):
    assert FrameDecoder().feed(encode_frame(channel, b"x\x00y")) == [Frame(channel, b"x\x00y")]


def test_decoder_byte_by_byte_equals_all_at_once():
    stream = encode_frame(Channel.AGENT, b"one") + b"\x00" + encode_frame(Channel.CONSOLE, b"two\n")
    dec = FrameDecoder()
    events = [e for b in stream for e in dec.feed(bytes([b]))]
    assert events == FrameDecoder().feed(stream)
    assert events == [Frame(1, b"one"), Frame(3, b"two\n")]


def test_decoder_ignores_empty_frames():
    assert FrameDecoder().feed(b"\x00\x00\x00") == []


def test_decoder_wrong_crc_reports_bad_crc():
    assert _only_error(_raw_frame(Channel.AGENT, b"hello", crc_xor=0x100)) == FRAME_BAD_CRC


def test_decoder_truncated_frame_reports_bad_cobs():
    wire = encode_frame(Channel.AGENT, b"hello")
    assert _only_error(wire[:-2] + b"\x00") == FRAME_BAD_COBS


def test_decoder_unknown_channel_reports_bad_channel():
    assert _only_error(_raw_frame(0x04, b"hello")) == FRAME_BAD_CHANNEL
    assert _only_error(_raw_frame(0x00, b"hello")) == FRAME_BAD_CHANNEL


def test_decoder_content_shorter_than_five_reports_too_short():
    assert _only_error(cobs_encode(b"\x01\x02\x03\x04") + b"\x00") == FRAME_TOO_SHORT


def test_decoder_oversized_frame_reports_too_long_once_and_recovers():
    dec = FrameDecoder()
    events = dec.feed(b"\x42" * (MAX_ENCODED + 1))
    assert [e.code for e in events] == [FRAME_TOO_LONG]
    assert dec.feed(b"\x42" * 10000) == []  # still dropping: reported only once
    good = encode_frame(Channel.AGENT, b"after")
    assert dec.feed(b"\x00" + good) == [Frame(Channel.AGENT, b"after")]


def test_decoder_accepts_frame_of_exactly_max_encoded_bytes():
    dec = FrameDecoder()
    events = dec.feed(b"\x42" * MAX_ENCODED)
    assert events == [] and dec.pending == MAX_ENCODED


def test_decoder_decoded_content_longer_than_limit_reports_too_long():
    # 4118 code bytes of 0x01 are a legal COBS length but decode to 4117 zero bytes.
    assert _only_error(b"\x01" * MAX_ENCODED + b"\x00") == FRAME_TOO_LONG


def test_decoder_garbage_between_frames_costs_only_that_garbage():
    a, b = encode_frame(Channel.AGENT, b"a"), encode_frame(Channel.CLOUD, b"b")
    events = FrameDecoder().feed(a + b"\xde\xad\xbe\xef\x00" + b)
    assert events[0] == Frame(1, b"a") and events[2] == Frame(2, b"b")
    assert isinstance(events[1], FrameError) and events[1].code in DOCUMENTED


def test_decoder_error_leaves_no_partial_state():
    dec = FrameDecoder()
    dec.feed(_raw_frame(Channel.AGENT, b"x", crc_xor=1))
    assert dec.pending == 0
    assert dec.feed(encode_frame(Channel.AGENT, b"y")) == [Frame(1, b"y")]


@settings(max_examples=300)
@given(st.binary(max_size=6000))
def test_decoder_random_bytes_only_yield_frames_or_documented_errors(data):
    for event in FrameDecoder().feed(data):
        if isinstance(event, FrameError):
            assert event.code in DOCUMENTED
        else:
            assert isinstance(event, Frame) and event.channel in (1, 2, 3)
            assert len(event.payload) <= MAX_PAYLOAD


@settings(max_examples=200)
@given(st.sampled_from(list(Channel)), st.binary(max_size=MAX_PAYLOAD))
def test_frame_round_trip_any_payload(channel, payload):
    assert FrameDecoder().feed(encode_frame(channel, payload)) == [Frame(channel, payload)]


@settings(max_examples=200)
@given(st.binary(max_size=600))
def test_cobs_round_trip_and_no_zero_in_output(data):
    enc = cobs_encode(data)
    assert 0 not in enc
    assert cobs_decode(enc) == data
    assert len(enc) <= len(data) + 1 + len(data) // 254
