"""Header, encrypt-then-MAC envelope, derived values and ERROR messages (protocol §2, §3.6)."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from otakey.errors import EnvelopeError
from otakey.protocol import envelope as env
from otakey.protocol.messages import Checkin, CheckinReply, ErrorCode, KeyKind, MsgType, Platform

ROOT = bytes(range(32))
OTHER = bytes(range(1, 33))
DEV = bytes.fromhex("0102030405060708090a0b0c")
ND = bytes([0xD0]) * 16
NA = bytes([0xA0]) * 16
IV = bytes([0x1F]) * 16


def _hkdf_ref(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 written out independently of the code under test."""
    prk = hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()
    okm, block = b"", b""
    for i in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        okm += block
    return okm[:length]


def _reply_header(**kw) -> env.Header:
    args = dict(type=MsgType.CHECKIN_REPLY, key_kind=KeyKind.AK, key_ref=1, device_id=DEV, nonce_d=ND,
                nonce_a=NA)
    args.update(kw)
    return env.Header(**args)


def _good(body: bytes = b"\x00\x00\x00\x00") -> bytes:
    return env.seal(_reply_header(), ROOT, IV, body)


def _reason(data: bytes, key: bytes | None = ROOT) -> str:
    with pytest.raises(EnvelopeError) as info:
        env.open_message(data, lambda _h: key)
    assert str(info.value) == "message rejected"  # the same text for every failure
    return info.value.reason


def _remac(header: bytes, plain: bytes) -> bytes:
    return env.seal_raw(header, ROOT, IV, plain)


def test_header_packs_to_52_bytes_in_documented_layout():
    h = env.Header(MsgType.PROV_HELLO, KeyKind.PK, 0x01020304, DEV, ND, NA)
    raw = h.pack()
    assert len(raw) == 52
    assert raw[:4] == b"\x01\x01\x00\x00"
    assert raw[4:8] == b"\x04\x03\x02\x01"
    assert raw[8:20] == DEV and raw[20:36] == ND and raw[36:52] == NA
    assert env.Header.unpack(raw) == h


def test_header_rejects_wrong_field_sizes_as_caller_mistake():
    with pytest.raises(ValueError):
        env.Header(MsgType.ACK, KeyKind.AK, 1, DEV[:11], ND)
    with pytest.raises(ValueError):
        env.Header(MsgType.ACK, KeyKind.AK, 1 << 32, DEV, ND)


def test_derive_keys_matches_rfc5869_with_empty_salt():
    enc, mac = env.derive_keys(ROOT)
    assert enc == _hkdf_ref(ROOT, b"", b"OTA-Key v1 enc", 16)
    assert mac == _hkdf_ref(ROOT, b"", b"OTA-Key v1 mac", 32)


def test_seal_is_aes_cbc_then_hmac_over_header_iv_ciphertext():
    msg = _good(b"body")
    enc, mac = env.derive_keys(ROOT)
    header, iv, ct, tag = msg[:52], msg[52:68], msg[68:-32], msg[-32:]
    assert tag == hmac.new(mac, header + iv + ct, hashlib.sha256).digest()
    dec = Cipher(algorithms.AES(enc), modes.CBC(iv)).decryptor()
    assert dec.update(ct) + dec.finalize() == b"body" + bytes([12]) * 12


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 31, 32, 33, 110])
def test_message_length_is_100_plus_padded_body(n):
    h = env.Header(MsgType.CLOUD_UPDATE, KeyKind.AK, 1, DEV, ND, NA)
    msg = env.seal(h, ROOT, IV, bytes(n))
    assert len(msg) == 100 + (n // 16 + 1) * 16


def test_open_returns_header_and_body():
    h, body = env.open_message(_good(b"\x02\x00\x00\x00"), lambda _h: ROOT)
    assert h == _reply_header() and body == b"\x02\x00\x00\x00"


def test_open_truncated_message_is_rejected():
    assert _reason(_good()[:-1]) == "length"
    assert _reason(_good()[:115]) == "length"


def test_open_oversized_message_is_rejected():
    big = _remac(_reply_header().pack(), bytes(env.MAX_MESSAGE - 100 + 16))
    assert len(big) == env.MAX_MESSAGE + 16
    assert _reason(big) == "length"


def test_open_flipped_mac_byte_is_rejected():
    msg = bytearray(_good())
    msg[-5] ^= 0x80
    assert _reason(bytes(msg)) == "mac"


@pytest.mark.parametrize("pos", [0 + 8, 40, 52, 70])  # device_id, nonce_a, iv, ciphertext
def test_open_flipped_covered_byte_is_rejected_by_mac(pos):
    msg = bytearray(_good())
    msg[pos] ^= 1
    assert _reason(bytes(msg)) == "mac"


def test_open_under_wrong_key_is_rejected():
    assert _reason(_good(), key=OTHER) == "mac"


def test_open_without_key_is_rejected_before_mac():
    assert _reason(_good(), key=None) == "no_key"


def test_open_wrong_version_is_rejected_even_with_valid_mac():
    hdr = bytearray(_reply_header().pack())
    hdr[0] = 2
    assert _reason(_remac(bytes(hdr), env.pkcs7_pad(bytes(4)))) == "version"


def test_open_unknown_type_is_rejected_even_with_valid_mac():
    hdr = bytearray(_reply_header().pack())
    hdr[1] = 0x55
    assert _reason(_remac(bytes(hdr), env.pkcs7_pad(bytes(4)))) == "type"


def test_open_error_type_is_not_an_envelope():
    hdr = bytearray(_reply_header().pack())
    hdr[1], hdr[2] = MsgType.ERROR, KeyKind.NONE
    assert _reason(_remac(bytes(hdr), env.pkcs7_pad(bytes(4)))) == "type"


def test_open_key_kind_not_allowed_for_type_is_rejected():
    hdr = bytearray(env.Header(MsgType.PROV_HELLO, KeyKind.PK, 7, DEV, ND).pack())
    hdr[2] = KeyKind.AK
    assert _reason(_remac(bytes(hdr), env.pkcs7_pad(bytes(32)))) == "key_kind"


def test_open_reserved_byte_set_is_rejected():
    hdr = bytearray(_reply_header().pack())
    hdr[3] = 1
    assert _reason(_remac(bytes(hdr), env.pkcs7_pad(bytes(4)))) == "reserved"


@pytest.mark.parametrize("plain", [
    bytes(16),  # pad byte 0
    bytes(15) + b"\x11",  # pad byte 17
    bytes(12) + b"\x03\x04\x04\x04",  # pad bytes differ
])
def test_open_bad_padding_under_valid_mac_is_rejected(plain):
    assert _reason(_remac(_reply_header().pack(), plain)) == "padding"


def test_open_bad_padding_without_valid_mac_reports_mac_not_padding():
    msg = bytearray(_remac(_reply_header().pack(), bytes(16)))
    msg[-1] ^= 1
    assert _reason(bytes(msg)) == "mac"


def test_open_wrong_body_length_for_type_is_rejected():
    assert _reason(_good(bytes(5))) == "body_length"
    assert _reason(_good(b"")) == "body_length"


def test_open_does_not_ask_for_a_key_when_the_header_is_bad():
    asked = []
    hdr = bytearray(_reply_header().pack())
    hdr[0] = 9
    with pytest.raises(EnvelopeError):
        env.open_message(_remac(bytes(hdr), bytes(16)), lambda h: asked.append(h) or ROOT)
    assert asked == []


def test_open_cloud_update_body_must_parse_as_credential():
    h = env.Header(MsgType.CLOUD_UPDATE, KeyKind.AK, 1, DEV, ND, NA)
    with pytest.raises(EnvelopeError) as info:
        env.open_message(env.seal(h, ROOT, IV, b"\x01\x00\x00\x00\x01"), lambda _h: ROOT)
    assert info.value.reason == "cloud_credential"


def test_seal_rejects_body_over_limit_and_bad_header():
    h = env.Header(MsgType.CLOUD_UPDATE, KeyKind.AK, 1, DEV, ND, NA)
    with pytest.raises(ValueError):
        env.seal(h, ROOT, IV, bytes(env.MAX_BODY + 1))
    with pytest.raises(EnvelopeError):
        env.seal(env.Header(MsgType.PROV_HELLO, KeyKind.AK, 1, DEV, ND), ROOT, IV, bytes(32))


def test_max_body_message_is_3956_bytes_and_opens():
    h = env.Header(MsgType.CLOUD_UPDATE, KeyKind.AK, 1, DEV, ND, NA)
    from otakey.protocol.messages import CloudCredential

    cred = CloudCredential(1, Platform.AWS_IOT, "e" * 128, "c" * 128, "u" * 128, bytes(3200))
    msg = env.seal(h, ROOT, IV, cred.encode())
    assert len(msg) <= env.MAX_MESSAGE == 3956
    assert env.open_message(msg, lambda _h: ROOT)[1] == cred.encode()


def test_fingerprint_is_truncated_hmac_of_label():
    assert env.fingerprint(ROOT) == hmac.new(ROOT, b"OTA-Key v1 fingerprint", hashlib.sha256).digest()[:16]


def test_derive_ak_matches_rfc5869_with_nonces_as_salt():
    shared = bytes([7]) * 32
    ak = env.derive_ak(shared, ND, NA, DEV, b"PO-1")
    assert ak == _hkdf_ref(shared, ND + NA, b"OTA-Key v1 AK" + DEV + b"PO-1", 32)


def test_x25519_both_sides_get_the_same_secret():
    a, b = bytes([1]) * 32, bytes([2]) * 32
    assert env.x25519_shared(a, env.x25519_public(b)) == env.x25519_shared(b, env.x25519_public(a))


def test_x25519_low_order_point_is_rejected():
    with pytest.raises(EnvelopeError):
        env.x25519_shared(bytes([5]) * 32, bytes(32))


def test_error_message_is_53_bytes_and_round_trips():
    e = env.ErrorMessage(ErrorCode.REFUSED, DEV, ND, NA)
    raw = e.pack()
    assert len(raw) == 53 and raw[1] == 0x7F and raw[2] == 0xFF and raw[4:8] == bytes(4) and raw[52] == 2
    assert env.ErrorMessage.unpack(raw) == e
    assert env.is_error_message(raw)


def test_error_message_with_unknown_code_is_rejected():
    raw = bytearray(env.ErrorMessage(ErrorCode.RETRY, DEV, ND).pack())
    raw[52] = 9
    with pytest.raises(EnvelopeError):
        env.ErrorMessage.unpack(bytes(raw))


def test_error_reply_echoes_header_or_zeros():
    echo = env.ErrorMessage.unpack(env.error_reply_for(_good()))
    assert (echo.device_id, echo.nonce_d, echo.nonce_a, echo.code) == (DEV, ND, NA, ErrorCode.REJECTED)
    blank = env.ErrorMessage.unpack(env.error_reply_for(b"\x01\x02"))
    assert blank.device_id == bytes(12) and blank.nonce_d == bytes(16)


def test_checkin_envelope_round_trip():
    body = Checkin(1, 0, 0, bytes(16), bytes(16), 0x010000, bytes(32)).encode()
    h = env.Header(MsgType.CHECKIN, KeyKind.AK, 1, DEV, ND)
    assert env.open_message(env.seal(h, ROOT, IV, body), lambda _h: ROOT)[1] == body
    assert CheckinReply.decode(env.open_message(_good(), lambda _h: ROOT)[1]).action == 0


@settings(max_examples=300)
@given(st.binary(max_size=4200))
def test_open_random_bytes_raise_only_envelope_error(data):
    try:
        env.open_message(data, lambda _h: ROOT)
    except EnvelopeError:
        pass


@settings(max_examples=200)
@given(st.binary(min_size=116, max_size=400).filter(lambda b: (len(b) - 100) % 16 == 0))
def test_open_random_well_sized_messages_with_valid_header_fail_the_mac(tail):
    data = _reply_header().pack() + tail[52:]
    with pytest.raises(EnvelopeError) as info:
        env.open_message(data, lambda _h: ROOT)
    assert info.value.reason == "mac"
