"""Keystore records and the dual-area rules of docs/flash-layout.md.

Pure: records are encoded to/decoded from bytes, the boot rule judges two area images, and
:func:`commit` returns the flash operations an update performs (for campaigns and for checking
the C keystore), without touching any flash.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field, replace
from typing import Literal

from otakey.errors import EnvelopeError, KeystoreError
from otakey.protocol.messages import CloudCredential

AREA_SIZE = 16 * 1024  # RM0090 table 6: sectors 1 and 2 are 16 KB
ERASED = 0xFF
WORD = 4  # program unit with PSIZE x32

COMMIT_MAGIC = 0x3CC3A55A
COMMIT_BLANK = 0xFFFFFFFF
COMMIT_INVALID = 0x00000000
RECORD_MAGIC = b"OKKS"
FORMAT = 1
HEADER_LEN = 16
HASH_LEN = 32
MAX_PAYLOAD = 4096

TAG_PRODUCT = 0x01
TAG_PK = 0x02
TAG_AK = 0x03
TAG_CLOUD = 0x04

PO_NAME_MAX = 32
KEY_LEN = 32

AREA_A = "A"
AREA_B = "B"
AreaName = Literal["A", "B"]


@dataclass(frozen=True)
class KeystoreState:
    """Everything one record holds. ``pk`` only in the factory record."""

    generation: int
    po_id: int
    po_name: str
    pk: bytes | None = None
    ak_version: int | None = None
    ak: bytes | None = field(default=None, repr=False)
    cloud: CloudCredential | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.generation <= 0xFFFFFFFF or not 0 <= self.po_id <= 0xFFFFFFFF:
            raise ValueError("generation and po_id are 32-bit")
        if not 1 <= len(self.po_name.encode()) <= PO_NAME_MAX or not self.po_name.isascii():
            raise ValueError("po_name must be 1..32 ASCII bytes")
        if self.pk is not None and len(self.pk) != KEY_LEN:
            raise ValueError("pk must be 32 bytes")
        if (self.ak is None) != (self.ak_version is None):
            raise ValueError("ak and ak_version go together")
        if self.ak is not None and (len(self.ak) != KEY_LEN or not 0 <= self.ak_version <= 0xFFFFFFFF):  # type: ignore[operator]
            raise ValueError("ak must be 32 bytes with a 32-bit version")

    def __repr__(self) -> str:  # keys never appear in logs
        return (f"KeystoreState(generation={self.generation}, po_id={self.po_id}, "
                f"po_name={self.po_name!r}, pk={'set' if self.pk else None}, "
                f"ak_version={self.ak_version}, cloud={self.cloud!r})")

    @property
    def has_pk(self) -> bool:
        return self.pk is not None


def _align4(n: int) -> int:
    return (n + 3) & ~3


def encode_payload(state: KeystoreState) -> bytes:
    """TLVs in tag order: PRODUCT, PK, AK, CLOUD."""
    out = bytearray()

    def tlv(tag: int, value: bytes) -> None:
        out.extend(struct.pack("<BH", tag, len(value)) + value)

    tlv(TAG_PRODUCT, state.po_id.to_bytes(4, "little") + state.po_name.encode())
    if state.pk is not None:
        tlv(TAG_PK, bytes(state.pk))
    if state.ak is not None and state.ak_version is not None:
        tlv(TAG_AK, state.ak_version.to_bytes(4, "little") + bytes(state.ak))
    if state.cloud is not None:
        tlv(TAG_CLOUD, state.cloud.encode())
    return bytes(out)


def record_length(payload_len: int) -> int:
    return HEADER_LEN + _align4(payload_len) + HASH_LEN


def build_record(generation: int, payload: bytes, commit: int = COMMIT_MAGIC, fmt: int = FORMAT,
                 magic: bytes = RECORD_MAGIC, payload_len: int | None = None,
                 hash_override: bytes | None = None) -> bytes:
    """Low-level record image (also used to build deliberately bad vectors)."""
    plen = len(payload) if payload_len is None else payload_len
    body = magic + struct.pack("<IHH", generation, fmt, plen) + payload
    digest = hashlib.sha256(body).digest() if hash_override is None else hash_override
    pad = bytes([ERASED]) * (_align4(len(payload)) - len(payload))
    return struct.pack("<I", commit) + body + pad + digest


def encode_record(state: KeystoreState) -> bytes:
    """Record image from offset 0 through the hash, commit word committed, padding erased."""
    payload = encode_payload(state)
    if len(payload) > MAX_PAYLOAD or record_length(len(payload)) > AREA_SIZE:
        raise KeystoreError("record too big")
    return build_record(state.generation, payload)


def _bad(why: str) -> KeystoreError:
    err = KeystoreError(f"invalid record: {why}")
    err.why = why  # type: ignore[attr-defined]
    return err


def _parse_tlvs(payload: bytes, generation: int) -> KeystoreState:
    seen: dict[int, bytes] = {}
    pos = 0
    while pos < len(payload):
        if pos + 3 > len(payload):
            raise _bad("tlv_truncated")
        tag, n = struct.unpack_from("<BH", payload, pos)
        pos += 3
        if pos + n > len(payload):
            raise _bad("tlv_truncated")
        if tag not in (TAG_PRODUCT, TAG_PK, TAG_AK, TAG_CLOUD):
            raise _bad("unknown_tag")
        if tag in seen:
            raise _bad("duplicate_tag")
        seen[tag] = payload[pos : pos + n]
        pos += n
    product = seen.get(TAG_PRODUCT)
    if product is None:
        raise _bad("missing_product")
    if not 5 <= len(product) <= 4 + PO_NAME_MAX:
        raise _bad("product_length")
    po_name_b = product[4:]
    if not po_name_b.isascii():
        raise _bad("product_name")
    pk = seen.get(TAG_PK)
    if pk is not None and len(pk) != KEY_LEN:
        raise _bad("pk_length")
    ak_tlv = seen.get(TAG_AK)
    if ak_tlv is not None and len(ak_tlv) != 4 + KEY_LEN:
        raise _bad("ak_length")
    cloud = None
    if TAG_CLOUD in seen:
        try:
            cloud = CloudCredential.decode(seen[TAG_CLOUD])
        except EnvelopeError:
            raise _bad("cloud") from None
    return KeystoreState(
        generation=generation,
        po_id=int.from_bytes(product[:4], "little"),
        po_name=po_name_b.decode(),
        pk=pk,
        ak_version=None if ak_tlv is None else int.from_bytes(ak_tlv[:4], "little"),
        ak=None if ak_tlv is None else ak_tlv[4:],
        cloud=cloud,
    )


def decode_record(image: bytes, area_size: int = AREA_SIZE) -> KeystoreState:
    """Validate an area image (bytes from offset 0) per flash-layout §2; raises KeystoreError."""
    if len(image) < HEADER_LEN:
        raise _bad("truncated")
    commit, magic, generation, fmt, plen = struct.unpack_from("<I4sIHH", image, 0)
    if commit != COMMIT_MAGIC:
        raise _bad("not_committed")
    if magic != RECORD_MAGIC:
        raise _bad("magic")
    if fmt != FORMAT:
        raise _bad("format")
    if plen > MAX_PAYLOAD or record_length(plen) > area_size:
        raise _bad("payload_len")
    end = record_length(plen)
    if len(image) < end:
        raise _bad("truncated")
    digest = hashlib.sha256(image[4 : HEADER_LEN + plen]).digest()
    if digest != image[end - HASH_LEN : end]:
        raise _bad("hash")
    return _parse_tlvs(bytes(image[HEADER_LEN : HEADER_LEN + plen]), generation)


# --- boot rule (§2) -------------------------------------------------------------------------


@dataclass(frozen=True)
class BootResult:
    active: AreaName | None
    state: KeystoreState | None
    scrub: bool  # the spare area is erased at boot (PK scrub completion / garbage removal)
    valid: tuple[bool, bool]
    blank: tuple[bool, bool]


def _try_decode(image: bytes) -> KeystoreState | None:
    try:
        return decode_record(image)
    except KeystoreError:
        return None


def _is_blank(image: bytes) -> bool:
    return all(b == ERASED for b in image)


def boot(area_a: bytes, area_b: bytes) -> BootResult:
    """Flash-layout §2 over two full area images."""
    states = (_try_decode(area_a), _try_decode(area_b))
    blank = (_is_blank(area_a), _is_blank(area_b))
    valid = (states[0] is not None, states[1] is not None)
    active_idx: int | None = None
    if states[0] is not None and states[1] is not None:
        active_idx = 1 if states[1].generation > states[0].generation else 0
    elif states[0] is not None:
        active_idx = 0
    elif states[1] is not None:
        active_idx = 1
    if active_idx is None:
        return BootResult(None, None, False, valid, blank)
    active = states[active_idx]
    assert active is not None
    other_idx = 1 - active_idx
    other = states[other_idx]
    other_ok = blank[other_idx] or (other is not None and not other.has_pk)
    scrub = not active.has_pk and not other_ok
    return BootResult((AREA_A, AREA_B)[active_idx], active, scrub, valid, blank)


# --- commit (§3) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FlashOp:
    """One flash operation: ``erase`` of a whole area, or ``program`` of one 4-byte word."""

    op: Literal["erase", "program"]
    area: AreaName
    offset: int = 0
    data: bytes = b""


@dataclass(frozen=True)
class CommitPlan:
    target: AreaName
    state: KeystoreState  # the new state with its generation
    ops: tuple[FlashOp, ...]


def commit(areas: tuple[bytes, bytes], new_state: KeystoreState) -> CommitPlan:
    """Operations of flash-layout §3 for committing ``new_state`` over the given area images.

    The generation is the active one + 1 (1 when none is active), whatever ``new_state`` says.
    Every record word is programmed, even one that happens to read 0xFFFFFFFF, so the number
    of operations depends only on the record length.
    """
    result = boot(areas[0], areas[1])
    target: AreaName = AREA_A if result.active in (None, AREA_B) else AREA_B
    generation = 1 if result.state is None else result.state.generation + 1
    if generation > 0xFFFFFFFF:
        raise KeystoreError("generation exhausted")
    state = replace(new_state, generation=generation)
    image = encode_record(state)
    ops: list[FlashOp] = [FlashOp("erase", target)]
    for off in range(WORD, len(image), WORD):
        ops.append(FlashOp("program", target, off, image[off : off + WORD]))
    ops.append(FlashOp("program", target, 0, image[:WORD]))
    if not state.has_pk and result.state is not None and result.state.has_pk:
        ops.append(FlashOp("erase", AREA_B if target == AREA_A else AREA_A))
    return CommitPlan(target, state, tuple(ops))


def apply_ops(areas: tuple[bytes, bytes], ops: tuple[FlashOp, ...] | list[FlashOp],
              area_size: int = AREA_SIZE) -> tuple[bytes, bytes]:
    """Apply operations with NOR semantics (program = old AND new). For tests and campaigns."""
    imgs = [bytearray(a.ljust(area_size, b"\xff")) for a in areas]
    for op in ops:
        img = imgs[0 if op.area == AREA_A else 1]
        if op.op == "erase":
            img[:] = bytes([ERASED]) * area_size
        else:
            for i, b in enumerate(op.data):
                img[op.offset + i] &= b
    return bytes(imgs[0]), bytes(imgs[1])


def invalidate_ops(area: AreaName) -> tuple[FlashOp, ...]:
    """Invalidation of the newest record: its commit word programmed to 0, no erase."""
    return (FlashOp("program", area, 0, COMMIT_INVALID.to_bytes(4, "little")),)
