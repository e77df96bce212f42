"""Property tests of the Python parsers beyond what test_protocol_*.py already fuzz.

Those files feed uniformly random bytes to each decoder (which mostly fail at the first check)
and round-trip hand-picked values. Here the inputs are built to get *past* the first checks:
frames mixed with garbage and cut at random points, envelopes carrying a valid MAC around any
header and any plaintext, credentials and keystore records shaped like the grammar but with every
field allowed to be wrong, and pairs of flash areas of every kind. Each verdict is compared with a
small oracle written here from docs/protocol.md and docs/flash-layout.md, so the tests say *which*
answer is right, not only that nothing but the documented errors escaped:

- FrameDecoder reports FrameError values (never raises); open_message, CloudCredential.decode
  and decode_body raise EnvelopeError (with the failing check in ``reason``); session decoding
  raises ProtocolError("malformed"); decode_record raises KeystoreError (``why``); boot() never
  raises; commit() raises KeystoreError only when the generation is exhausted.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otakey.errors import EnvelopeError, FrameError, KeystoreError, ProtocolError
from otakey.protocol import envelope as env
from otakey.protocol import keystore as ks
from otakey.protocol.cloudsession import SessionOpen, SessionResult, decode_session_message
from otakey.protocol.framing import (
    FRAME_BAD_CRC,
    MAX_PAYLOAD,
    Channel,
    Frame,
    FrameDecoder,
    encode_frame,
)
from otakey.protocol.messages import (
    ALLOWED_KEY_KINDS,
    BODY_LENGTHS,
    CloudCredential,
    MsgType,
    decode_body,
)

ROOT = bytes(range(0x20, 0x40))
FIELD_MAX = (128, 128, 128, 3200)  # §3.5: endpoint, client_id, username, secret
BLANK = b"\xff" * ks.AREA_SIZE
CLOUD = CloudCredential(3, 1, "mqtt://127.0.0.1:1883", "dev", "dev", b"pw")
SLOW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- framing (protocol §1) -------------------------------------------------------------------

frames = st.builds(encode_frame, st.sampled_from(list(Channel)), st.binary(max_size=300))
streams = st.lists(st.one_of(frames, st.binary(max_size=200), st.just(b"\x00")), max_size=8).map(b"".join)


def _norm(events: list[Frame | FrameError]) -> list[object]:
    return [("error", e.code) if isinstance(e, FrameError) else e for e in events]


@settings(max_examples=200)
@given(streams, st.data())
def test_decoder_events_do_not_depend_on_how_the_stream_is_cut(stream, data):
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    dec = FrameDecoder()
    events = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        events += dec.feed(stream[start:end])
    assert _norm(events) == _norm(FrameDecoder().feed(stream))


@settings(max_examples=200)
@given(streams)
def test_every_decoded_frame_reencodes_to_a_frame_that_decodes_unchanged(stream):
    for event in FrameDecoder().feed(stream):
        if isinstance(event, Frame):
            wire = encode_frame(event.channel, event.payload)
            assert 0 not in wire[:-1] and wire[-1] == 0
            assert FrameDecoder().feed(wire) == [event]


@settings(max_examples=150)
@given(st.binary(max_size=6000), st.sampled_from(list(Channel)), st.binary(max_size=MAX_PAYLOAD))
def test_a_good_frame_after_any_garbage_and_one_delimiter_is_received(garbage, channel, payload):
    events = FrameDecoder().feed(garbage + b"\x00" + encode_frame(channel, payload))
    assert events[-1] == Frame(channel, payload)


def _cobs_code_positions(wire: bytes) -> set[int]:
    pos, codes = 0, set()
    while pos < len(wire) - 1:
        codes.add(pos)
        pos += wire[pos]
    return codes


@settings(max_examples=200)
@given(st.sampled_from(list(Channel)), st.binary(min_size=1, max_size=600), st.data())
def test_any_changed_data_byte_of_a_frame_is_reported_as_bad_crc(channel, payload, data):
    wire = bytearray(encode_frame(channel, payload))
    data_positions = sorted(set(range(len(wire) - 1)) - _cobs_code_positions(bytes(wire)))
    pos = data.draw(st.sampled_from(data_positions))
    wire[pos] = data.draw(st.integers(1, 255).filter(lambda v: v != wire[pos]))
    # A COBS data byte is a content byte: one changed byte is always caught by CRC-32, and the
    # CRC is checked before the channel.
    events = FrameDecoder().feed(bytes(wire))
    assert len(events) == 1 and isinstance(events[0], FrameError) and events[0].code == FRAME_BAD_CRC


# --- envelope (protocol §2) ------------------------------------------------------------------

TYPES = [int(t) for t in MsgType] + [0x00, 0x05, 0x7E, 0xFF]


def _expected_reason(version: int, mtype: int, kind: int, reserved: int, plain: bytes) -> str | None:
    """The first failing check of §2.2 for a message carrying a valid MAC (None: accepted)."""
    if reserved != 0:
        return "reserved"
    if version != 1:
        return "version"
    if mtype not in ALLOWED_KEY_KINDS:
        return "type"  # ERROR (0x7F) is not an envelope either
    if kind not in ALLOWED_KEY_KINDS[mtype]:
        return "key_kind"
    pad = plain[-1]
    if not 1 <= pad <= 16 or plain[-pad:] != bytes([pad]) * pad:
        return "padding"
    body = plain[:-pad]
    want = BODY_LENGTHS[mtype]
    if want is None:
        return None if _credential_ok(body) else "cloud_credential"
    return None if len(body) == want else "body_length"


@st.composite
def macd_messages(draw: st.DrawFn) -> tuple[bytes, tuple[int, int, int, int], bytes]:
    version = draw(st.sampled_from([1, 1, 1, 0, 2]))
    mtype = draw(st.sampled_from(TYPES))
    kind = draw(st.sampled_from([0x00, 0x01, 0x01, 0xFF, 0x02]))
    reserved = draw(st.sampled_from([0, 0, 0, 0x80]))
    header = struct.pack("<BBBBI", version, mtype, kind, reserved, draw(st.integers(0, 2**32 - 1)))
    header += draw(st.binary(min_size=44, max_size=44))  # device_id, nonce_d, nonce_a
    want = BODY_LENGTHS.get(mtype)
    if want is not None and draw(st.booleans()):
        body = draw(st.binary(min_size=want, max_size=want))
    elif mtype == MsgType.CLOUD_UPDATE and draw(st.booleans()):
        body = draw(credential_bytes())
    else:
        body = draw(st.binary(max_size=150))
    pad = draw(st.sampled_from([None, None, None, 0, 17, "mixed"]))
    if pad is None:
        plain = env.pkcs7_pad(body)
    else:
        n = 16 - len(body) % 16
        tail = bytes([n]) * (n - 1) + bytes([1 if n != 1 else 2]) if pad == "mixed" else bytes([pad]) * n
        plain = body + tail
    iv = draw(st.binary(min_size=16, max_size=16))
    return env.seal_raw(header, ROOT, iv, plain), (version, mtype, kind, reserved), plain


@settings(max_examples=300, deadline=None)
@given(macd_messages())
def test_open_under_a_valid_mac_answers_exactly_the_first_failing_check(case):
    msg, (version, mtype, kind, reserved), plain = case
    reason = _expected_reason(version, mtype, kind, reserved, plain)
    if len(msg) > env.MAX_MESSAGE:
        reason = "length"
    if reason is None:
        header, body = env.open_message(msg, lambda _h: ROOT)
        assert header.pack() == msg[:52] and body == plain[: -plain[-1]]
        try:  # field checks belong to the body decoder, which may still refuse with the same error
            decode_body(mtype, body)
        except EnvelopeError:
            pass
    else:
        with pytest.raises(EnvelopeError) as info:
            env.open_message(msg, lambda _h: ROOT)
        assert info.value.reason == reason
        assert str(info.value) == "message rejected"


def _exact(n: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=n, max_size=n)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([t for t in ALLOWED_KEY_KINDS if BODY_LENGTHS[t] is not None]), st.data())
def test_seal_then_open_round_trips_every_type_at_its_length_and_refuses_any_other(mtype, data):
    kind = next(iter(ALLOWED_KEY_KINDS[mtype]))
    h = env.Header(mtype, kind, data.draw(st.integers(0, 2**32 - 1)), data.draw(_exact(12)),
                   data.draw(_exact(16)), data.draw(_exact(16)))
    want = BODY_LENGTHS[mtype]
    body = data.draw(st.binary(min_size=want, max_size=want) | st.binary(max_size=200))
    msg = env.seal(h, ROOT, bytes(16), body)
    if len(body) == want:
        assert env.open_message(msg, lambda _h: ROOT) == (h, body)
    else:
        with pytest.raises(EnvelopeError) as info:
            env.open_message(msg, lambda _h: ROOT)
        assert info.value.reason == "body_length"


# --- message bodies (protocol §3) -------------------------------------------------------------


@st.composite
def near_valid_bodies(draw: st.DrawFn) -> tuple[int, bytes]:
    """Bodies of the right length whose fields are each valid or not, half and half."""
    mtype = draw(st.sampled_from([t for t, n in BODY_LENGTHS.items() if n is not None]))
    raw = bytearray(draw(st.binary(min_size=BODY_LENGTHS[mtype], max_size=BODY_LENGTHS[mtype])))
    if draw(st.booleans()):
        if mtype in (MsgType.PROV_OFFER, MsgType.AK_ROTATE_OFFER):
            raw[32:36] = draw(st.sampled_from([0, 1, 2**32 - 1])).to_bytes(4, "little")
        elif mtype == MsgType.CHECKIN:
            raw[8] = draw(st.integers(0, 3))
            raw[78:] = bytes(32)
        elif mtype == MsgType.CHECKIN_REPLY:
            raw[0] = draw(st.integers(0, 4))
            raw[1:] = bytes(3)
        elif mtype == MsgType.CLOUD_CONFIRM:
            raw[4] = draw(st.integers(0, 3))
    return mtype, bytes(raw)


@settings(max_examples=400)
@given(near_valid_bodies())
def test_an_accepted_body_reencodes_to_exactly_its_bytes(case):
    mtype, raw = case
    try:
        body = decode_body(mtype, raw)
    except EnvelopeError:
        return
    assert body.encode() == raw  # type: ignore[union-attr]


# --- cloud credential (protocol §3.5) and cloud-session messages (§5) ------------------------


def _utf8(b: bytes) -> bool:
    try:
        b.decode()
    except UnicodeDecodeError:
        return False
    return True


def _credential_ok(buf: bytes) -> bool:
    """§3.5 (plus UTF-8 text fields, which the Python reference requires) as an oracle."""
    if len(buf) < 5 or int.from_bytes(buf[:4], "little") == 0 or buf[4] not in (1, 2):
        return False
    pos, fields = 5, []
    for limit in FIELD_MAX:
        if len(buf) - pos < 2:
            return False
        n = int.from_bytes(buf[pos : pos + 2], "little")
        pos += 2
        if n > limit or n > len(buf) - pos:
            return False
        fields.append(buf[pos : pos + n])
        pos += n
    return pos == len(buf) and all(_utf8(f) for f in fields[:3])


@st.composite
def credential_bytes(draw: st.DrawFn) -> bytes:
    """Credential-shaped bytes: each field's length at, below or past its limit; text that may not
    be UTF-8; a length prefix that may lie; maybe something after the last field."""
    out = struct.pack("<IB", draw(st.sampled_from([0, 1, 7, 2**32 - 1])), draw(st.integers(0, 3)))
    for limit in FIELD_MAX:
        n = draw(st.sampled_from([0, 1, limit, limit + 1]) | st.integers(0, min(limit, 40)))
        if n > 200:
            value = draw(st.sampled_from([b"a", b"\xff"])) * n
        else:
            value = draw(st.text(max_size=n).map(str.encode) | st.binary(min_size=n, max_size=n))
            value = value[:n] if len(value) >= n else value
        declared = len(value) + draw(st.sampled_from([0, 0, 0, 1, -1]))
        out += struct.pack("<H", max(0, declared)) + value
    return out + draw(st.sampled_from([b"", b"", b"\x00", b"junk"]))


@settings(max_examples=400)
@given(credential_bytes())
def test_credential_decode_accepts_exactly_the_grammar_and_round_trips(raw):
    try:
        cred = CloudCredential.decode(raw)
    except EnvelopeError as exc:
        assert not _credential_ok(raw)
        assert exc.reason == "cloud_credential"  # type: ignore[attr-defined]
        return
    assert _credential_ok(raw)
    assert cred.encode() == raw


@settings(max_examples=200)
@given(credential_bytes(), st.binary(max_size=40))
def test_credential_decode_prefix_consumes_exactly_the_credential(raw, tail):
    if not _credential_ok(raw):
        return
    cred, used = CloudCredential.decode_prefix(raw + tail)
    assert used == len(raw) and cred == CloudCredential.decode(raw)


@st.composite
def session_bytes(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from([1, 1, 2, 2, 0, 3]))
    out = bytes([kind, draw(st.integers(0, 255))])
    if kind == 1:
        out += draw(credential_bytes())
        for limit in (128, 256):
            n = draw(st.sampled_from([0, 5, limit, limit + 1]))
            out += struct.pack("<H", n) + draw(st.sampled_from([b"t", b"\xc3"])) * n
    else:
        out += bytes([draw(st.integers(0, 5))])
        n = draw(st.sampled_from([0, 3, 128, 129]))
        out += struct.pack("<H", n) + draw(st.sampled_from([b"d", b"\xe2"])) * n
    return out + draw(st.sampled_from([b"", b"", b"x"]))


@settings(max_examples=300)
@given(session_bytes())
def test_session_message_decodes_only_to_values_that_reencode_to_its_bytes(raw):
    try:
        msg = decode_session_message(raw)
    except ProtocolError as exc:
        assert exc.code == "malformed"
        return
    assert isinstance(msg, (SessionOpen, SessionResult))
    assert msg.encode() == raw


# --- keystore records and the boot rule (flash-layout §1-§3) ---------------------------------


def _tlvs_ok(payload: bytes) -> bool:
    """flash-layout §1 TLV rules as an oracle."""
    seen: set[int] = set()
    pos = 0
    while pos < len(payload):
        if len(payload) - pos < 3:
            return False
        tag, n = payload[pos], int.from_bytes(payload[pos + 1 : pos + 3], "little")
        pos += 3
        value = payload[pos : pos + n]
        if n > len(payload) - pos or tag not in (1, 2, 3, 4) or tag in seen:
            return False
        seen.add(tag)
        if tag == 1 and not (5 <= n <= 36 and value[4:].isascii()):
            return False
        if (tag == 2 and n != 32) or (tag == 3 and n != 36):
            return False
        if tag == 4 and not _credential_ok(value):
            return False
        pos += n
    return 1 in seen


def _tlv(tag: int, value: bytes) -> bytes:
    return struct.pack("<BH", tag, len(value)) + value


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    entries = []
    if draw(st.integers(0, 9)) > 0:
        name = draw(st.sampled_from([b"", b"P", b"PO-1", b"N" * 32, b"N" * 33, b"\x80ab"]))
        entries.append(_tlv(1, draw(st.binary(min_size=4, max_size=4)) + name))
    for tag, good in ((2, 32), (3, 36)):
        if draw(st.booleans()):
            n = draw(st.sampled_from([good, good, good - 1, good + 1]))
            entries.append(_tlv(tag, draw(st.binary(min_size=n, max_size=n))))
    if draw(st.booleans()):
        entries.append(_tlv(4, draw(credential_bytes())))
    if draw(st.integers(0, 5)) == 0:
        entries.append(_tlv(draw(st.sampled_from([0, 1, 5, 0xFF])), draw(st.binary(max_size=8))))
    entries = draw(st.permutations(entries))
    payload = b"".join(entries)
    cut = draw(st.sampled_from([0, 0, 0, 1, 2, 5]))
    return payload[: len(payload) - cut] if cut else payload


@settings(max_examples=400, deadline=None)
@given(payloads(), st.integers(0, 2**32 - 1))
def test_record_with_a_valid_hash_is_accepted_exactly_by_the_tlv_rules_and_round_trips(payload, gen):
    image = ks.build_record(gen, payload)
    try:
        state = ks.decode_record(image)
    except KeystoreError:
        assert not _tlvs_ok(payload)
        return
    assert _tlvs_ok(payload) and state.generation == gen
    again = ks.encode_record(state)
    assert len(again) == len(image)  # the same TLVs, now in tag order, take the same room
    assert ks.decode_record(again) == state
    assert ks.encode_record(ks.decode_record(again)) == again


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([ks.COMMIT_MAGIC, ks.COMMIT_MAGIC, ks.COMMIT_BLANK, ks.COMMIT_INVALID, 0x3CC3A55B]),
       st.sampled_from([ks.RECORD_MAGIC, ks.RECORD_MAGIC, b"OKKT"]), st.sampled_from([1, 1, 0, 2]),
       st.integers(0, 5000), st.binary(max_size=64))
def test_record_header_fields_under_a_valid_hash_raise_only_keystore_error(commit, magic, fmt, plen, junk):
    payload = _tlv(1, b"\x01\x00\x00\x00PO") + junk
    image = ks.build_record(1, payload, commit=commit, fmt=fmt, magic=magic, payload_len=plen)
    if len(image) >= 16 + plen:
        # rehash whatever range payload_len names, where it fits
        end = 16 + ((plen + 3) & ~3)
        body = image[4 : 16 + plen]
        image = image[:end].ljust(end, b"\xff") + hashlib.sha256(body).digest()
    try:
        ks.decode_record(image)
    except KeystoreError as exc:
        assert exc.why in RECORD_WHYS  # type: ignore[attr-defined]
        return
    assert commit == ks.COMMIT_MAGIC and magic == ks.RECORD_MAGIC and fmt == 1 and plen <= ks.MAX_PAYLOAD


# Every documented reason decode_record gives (KeystoreError.why).
RECORD_WHYS = {"not_committed", "magic", "format", "payload_len", "truncated", "hash", "tlv_truncated",
               "unknown_tag", "duplicate_tag", "missing_product", "product_length", "product_name",
               "pk_length", "ak_length", "cloud"}

states = st.builds(
    ks.KeystoreState,
    generation=st.sampled_from([0, 1, 2, 7, 2**32 - 2, 2**32 - 1]),
    po_id=st.integers(0, 2**32 - 1),
    po_name=st.text(st.characters(max_codepoint=0x7F), min_size=1, max_size=32),
    pk=st.none() | st.binary(min_size=32, max_size=32),
    cloud=st.none() | st.just(CLOUD),
).flatmap(lambda s: st.one_of(
    st.just(s),
    st.builds(lambda v, k: replace(s, ak_version=v, ak=k), st.integers(0, 2**32 - 1),
              st.binary(min_size=32, max_size=32)),
))


@st.composite
def areas(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["blank", "record", "record", "flipped", "invalidated", "garbage"]))
    if kind == "blank":
        return BLANK
    if kind == "garbage":
        return draw(st.binary(max_size=300)).ljust(ks.AREA_SIZE, b"\xff")
    image = bytearray(ks.encode_record(draw(states)))
    if kind == "flipped":
        pos = draw(st.integers(0, len(image) - 1))
        image[pos] ^= 1 << draw(st.integers(0, 7))
    elif kind == "invalidated":
        image[:4] = bytes(4)
    return bytes(image).ljust(ks.AREA_SIZE, b"\xff")


def _decode_or_none(image: bytes) -> ks.KeystoreState | None:
    try:
        return ks.decode_record(image)
    except KeystoreError:
        return None


@SLOW
@given(areas(), areas())
def test_boot_on_any_pair_of_areas_follows_the_boot_rule(a, b):
    result = ks.boot(a, b)
    sa, sb = _decode_or_none(a), _decode_or_none(b)
    if sa is not None and sb is not None:
        want = "B" if sb.generation > sa.generation else "A"
    else:
        want = "A" if sa is not None else ("B" if sb is not None else None)
    assert result.active == want
    assert result.valid == (sa is not None, sb is not None)
    assert result.blank == (a == BLANK, b == BLANK)
    if want is None:
        assert result.state is None and not result.scrub
        return
    active, other_img, other = (sa, b, sb) if want == "A" else (sb, a, sa)
    assert result.state == active
    other_ok = other_img == BLANK or (other is not None and not other.has_pk)
    assert result.scrub == (not active.has_pk and not other_ok)


@SLOW
@given(areas(), areas(), states, st.data())
def test_commit_over_any_areas_makes_the_new_state_active_and_every_cut_boots_old_or_new(a, b, new, data):
    before = ks.boot(a, b)
    try:
        plan = ks.commit((a, b), new)
    except KeystoreError:
        assert before.state is not None and before.state.generation == 2**32 - 1
        return
    want = replace(new, generation=1 if before.state is None else before.state.generation + 1)
    assert plan.state == want
    assert ks.boot(*ks.apply_ops((a, b), plan.ops)).state == want
    for k in data.draw(st.lists(st.integers(0, len(plan.ops) - 1), min_size=1, max_size=4)):
        assert ks.boot(*ks.apply_ops((a, b), plan.ops[:k])).state in (before.state, want)
