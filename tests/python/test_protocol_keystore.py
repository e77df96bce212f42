"""Keystore record format, boot rule and commit sequence (docs/flash-layout.md)."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otakey.errors import KeystoreError
from otakey.protocol import keystore as ks
from otakey.protocol.messages import CloudCredential, Platform

PK = bytes(range(32))
AK = bytes(range(32, 64))
CLOUD = CloudCredential(1, Platform.MOSQUITTO, "mqtt://127.0.0.1:1883", "d", "d", b"pw")
FACTORY = ks.KeystoreState(1, 0x1234, "PO-1", pk=PK)
PROVISIONED = ks.KeystoreState(2, 0x1234, "PO-1", ak_version=1, ak=AK)
WITH_CLOUD = ks.KeystoreState(3, 0x1234, "PO-1", ak_version=1, ak=AK, cloud=CLOUD)
BLANK = b"\xff" * ks.AREA_SIZE


def area(image: bytes) -> bytes:
    return image.ljust(ks.AREA_SIZE, b"\xff")


def tlv(tag: int, value: bytes) -> bytes:
    return struct.pack("<BH", tag, len(value)) + value


def why(image: bytes) -> str:
    with pytest.raises(KeystoreError) as info:
        ks.decode_record(area(image))
    return info.value.why


@pytest.mark.parametrize("state", [FACTORY, PROVISIONED, WITH_CLOUD,
                                   replace(FACTORY, pk=PK, ak_version=3, ak=AK, cloud=CLOUD)])
def test_record_round_trip(state):
    image = ks.encode_record(state)
    assert ks.decode_record(area(image)) == state


def test_record_layout_matches_flash_layout_table():
    image = ks.encode_record(PROVISIONED)
    commit, magic, gen, fmt, plen = struct.unpack_from("<I4sIHH", image)
    assert (commit, magic, gen, fmt) == (0x3CC3A55A, b"OKKS", 2, 1)
    payload = image[16 : 16 + plen]
    assert payload == tlv(1, struct.pack("<I", 0x1234) + b"PO-1") + tlv(3, struct.pack("<I", 1) + AK)
    hash_off = 16 + ((plen + 3) & ~3)
    assert image[16 + plen : hash_off] == b"\xff" * (hash_off - 16 - plen)
    assert image[hash_off:] == hashlib.sha256(image[4 : 16 + plen]).digest()
    assert len(image) == hash_off + 32


def test_state_rejects_bad_fields_as_caller_mistakes():
    with pytest.raises(ValueError):
        ks.KeystoreState(1, 1, "")
    with pytest.raises(ValueError):
        ks.KeystoreState(1, 1, "x" * 33)
    with pytest.raises(ValueError):
        ks.KeystoreState(1, 1, "x", ak=AK)  # AK without version
    with pytest.raises(ValueError):
        ks.KeystoreState(1, 1, "x", pk=PK[:31])


def test_state_repr_hides_keys():
    text = repr(replace(FACTORY, ak_version=1, ak=AK))
    assert PK.hex() not in text and AK.hex() not in text and str(list(PK)) not in text


# --- every bad record -----------------------------------------------------------------------

GOOD = ks.encode_record(PROVISIONED)
PAYLOAD = ks.encode_payload(PROVISIONED)
PRODUCT = tlv(1, struct.pack("<I", 0x1234) + b"PO-1")


def test_record_blank_commit_is_invalid():
    assert why(b"\xff\xff\xff\xff" + GOOD[4:]) == "not_committed"


def test_record_torn_commit_word_is_invalid():
    assert why(bytes.fromhex("5aa5ffff") + GOOD[4:]) == "not_committed"
    assert why(bytes.fromhex("5aa5c3bc") + GOOD[4:]) == "not_committed"


def test_record_invalidated_commit_is_invalid():
    assert why(bytes(4) + GOOD[4:]) == "not_committed"


def test_record_bad_magic_is_invalid():
    assert why(ks.build_record(2, PAYLOAD, magic=b"OKKX")) == "magic"


def test_record_unknown_format_is_invalid():
    assert why(ks.build_record(2, PAYLOAD, fmt=2)) == "format"


def test_record_bad_hash_is_invalid():
    assert why(GOOD[:-1] + bytes([GOOD[-1] ^ 1])) == "hash"


def test_record_torn_payload_word_fails_hash():
    torn = bytearray(GOOD)
    torn[24] &= 0x0F
    assert why(bytes(torn)) == "hash"


def test_record_unknown_tag_is_invalid():
    assert why(ks.build_record(2, PAYLOAD + tlv(9, b""))) == "unknown_tag"


def test_record_duplicate_tag_is_invalid():
    assert why(ks.build_record(2, PAYLOAD + PRODUCT)) == "duplicate_tag"


def test_record_payload_len_too_big_is_invalid():
    assert why(ks.build_record(2, PAYLOAD, payload_len=4097)) == "payload_len"


def test_record_missing_product_is_invalid():
    assert why(ks.build_record(2, tlv(3, struct.pack("<I", 1) + AK))) == "missing_product"


@pytest.mark.parametrize("payload, reason", [
    (tlv(1, b"\x01\x00\x00\x00"), "product_length"),
    (tlv(1, b"\x01\x00\x00\x00" + b"n" * 33), "product_length"),
    (PRODUCT + tlv(2, PK[:16]), "pk_length"),
    (PRODUCT + tlv(3, AK), "ak_length"),
    (PRODUCT + tlv(4, CLOUD.encode()[:-1]), "cloud"),
    (PRODUCT + b"\x03\x40", "tlv_truncated"),
    (PRODUCT + b"\x03\x40\x00" + AK, "tlv_truncated"),
])
def test_record_bad_tlv_values_are_invalid(payload, reason):
    assert why(ks.build_record(2, payload)) == reason


def test_record_with_largest_cloud_credential_fits_and_round_trips():
    huge = CloudCredential(1, Platform.AWS_IOT, "e" * 128, "c" * 128, "u" * 128, bytes(3200))
    state = replace(PROVISIONED, cloud=huge)
    assert len(ks.encode_payload(state)) < ks.MAX_PAYLOAD  # the biggest legal state still fits
    assert ks.decode_record(area(ks.encode_record(state))) == state


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_decode_random_images_raises_only_keystore_error(data):
    try:
        ks.decode_record(area(data))
    except KeystoreError:
        pass


@settings(max_examples=100)
@given(st.integers(min_value=4, max_value=len(GOOD) - 1), st.integers(min_value=0, max_value=7))
def test_any_single_bit_flip_in_a_record_invalidates_it(pos, bit):
    damaged = bytearray(GOOD)
    damaged[pos] ^= 1 << bit
    if 16 + len(PAYLOAD) <= pos < 16 + ((len(PAYLOAD) + 3) & ~3):
        return  # the erased padding is outside the hash by design
    with pytest.raises(KeystoreError):
        ks.decode_record(area(bytes(damaged)))


# --- boot rule ------------------------------------------------------------------------------


def images(*states: ks.KeystoreState) -> list[bytes]:
    return [area(ks.encode_record(s)) for s in states]


def test_boot_both_blank_has_no_active_area():
    r = ks.boot(BLANK, BLANK)
    assert r.active is None and r.state is None and not r.scrub and r.blank == (True, True)


def test_boot_factory_in_b_is_active_without_scrub():
    r = ks.boot(BLANK, *images(FACTORY))
    assert r.active == "B" and r.state == FACTORY and not r.scrub


def test_boot_higher_generation_wins_in_either_area():
    a, b = images(PROVISIONED, WITH_CLOUD)
    assert ks.boot(a, b).active == "B"
    assert ks.boot(b, a).active == "A"


def test_boot_equal_generations_a_wins():
    a, b = images(replace(PROVISIONED, generation=5), replace(WITH_CLOUD, generation=5))
    assert ks.boot(a, b).active == "A"


def test_boot_active_without_pk_and_other_with_pk_scrubs():
    a, b = images(PROVISIONED, FACTORY)
    r = ks.boot(a, b)
    assert r.active == "A" and r.scrub


def test_boot_torn_new_area_keeps_old_pk_record_and_no_scrub():
    torn = bytes.fromhex("5aa5ffff") + ks.encode_record(PROVISIONED)[4:]
    r = ks.boot(area(torn), *images(FACTORY))
    assert r.active == "B" and r.state == FACTORY and not r.scrub


def test_boot_active_without_pk_and_garbage_other_scrubs():
    r = ks.boot(*images(PROVISIONED), area(b"\x12" * 100))
    assert r.active == "A" and r.scrub


def test_boot_active_without_pk_and_valid_fallback_without_pk_keeps_it():
    a, b = images(PROVISIONED, WITH_CLOUD)
    assert not ks.boot(a, b).scrub


def test_boot_invalidated_newest_falls_back_to_previous():
    a, b = images(PROVISIONED, WITH_CLOUD)
    b = bytes(4) + b[4:]
    r = ks.boot(a, b)
    assert r.active == "A" and r.state == PROVISIONED and r.scrub


def test_boot_none_valid_reports_no_keys():
    torn = bytes(4) + ks.encode_record(FACTORY)[4:]
    r = ks.boot(area(torn), area(b"\x00" * 50))
    assert r.active is None and not r.scrub and r.valid == (False, False)


# --- commit and power cuts --------------------------------------------------------------------


def test_commit_targets_inactive_area_and_programs_commit_word_last():
    plan = ks.commit((BLANK, area(ks.encode_record(FACTORY))), PROVISIONED)
    assert plan.target == "A" and plan.state.generation == 2
    ops = plan.ops
    assert ops[0] == ks.FlashOp("erase", "A")
    programs = [o for o in ops if o.op == "program"]
    assert [o.offset for o in programs[:-1]] == list(range(4, len(ks.encode_record(plan.state)), 4))
    assert programs[-1].offset == 0 and programs[-1].data == bytes.fromhex("5aa5c33c")
    assert ops[-1] == ks.FlashOp("erase", "B")  # PK scrub after the commit


def test_commit_without_pk_elsewhere_does_not_erase_other_area():
    plan = ks.commit((area(ks.encode_record(PROVISIONED)), BLANK), WITH_CLOUD)
    assert plan.target == "B" and plan.state.generation == 3
    assert [o for o in plan.ops if o.op == "erase"] == [ks.FlashOp("erase", "B")]


def test_commit_applied_boots_into_new_state_and_pk_is_gone():
    start = (BLANK, area(ks.encode_record(FACTORY)))
    plan = ks.commit(start, PROVISIONED)
    a, b = ks.apply_ops(start, plan.ops)
    r = ks.boot(a, b)
    assert r.state == plan.state and b == BLANK and PK not in a + b


def _torn(area_bytes: bytes, op: ks.FlashOp) -> bytes:
    img = bytearray(area_bytes)
    if op.op == "erase":
        img[: ks.AREA_SIZE // 2] = b"\xff" * (ks.AREA_SIZE // 2)  # half the sector erased
    else:
        img[op.offset] &= op.data[0]  # only the first byte landed
    return bytes(img)


@pytest.mark.parametrize("start_states, new", [
    ((None, FACTORY), PROVISIONED),
    ((PROVISIONED, None), WITH_CLOUD),
    ((PROVISIONED, WITH_CLOUD), replace(WITH_CLOUD, ak_version=2, ak=PK)),
])
def test_power_cut_at_every_commit_operation_boots_old_or_new(start_states, new):
    start = tuple(area(ks.encode_record(s)) if s else BLANK for s in start_states)
    old = ks.boot(*start).state
    plan = ks.commit(start, new)  # type: ignore[arg-type]
    commit_index = plan.ops.index(ks.FlashOp("program", plan.target, 0, bytes.fromhex("5aa5c33c")))
    failures = []
    for k in range(len(plan.ops) + 1):
        done = ks.apply_ops(start, plan.ops[:k])  # type: ignore[arg-type]
        variants = [done]
        if k < len(plan.ops):
            op = plan.ops[k]
            idx = 0 if op.area == "A" else 1
            torn = list(done)
            torn[idx] = _torn(done[idx], op)
            variants.append((torn[0], torn[1]))
        for a, b in variants:
            r = ks.boot(a, b)
            expected = plan.state if k > commit_index else old
            if r.state != expected:
                failures.append(k)
    assert failures == [], f"{len(failures)}/{len(plan.ops) + 1} cut points failed"


def test_invalidation_ops_program_commit_word_to_zero_only():
    ops = ks.invalidate_ops("B")
    a, b = ks.apply_ops(tuple(images(PROVISIONED, WITH_CLOUD)), ops)  # type: ignore[arg-type]
    assert ks.boot(a, b).state == PROVISIONED
