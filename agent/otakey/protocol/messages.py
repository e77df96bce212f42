"""Message bodies of protocol §3: one frozen dataclass per body, each with exact length checks.

Decoders raise :class:`~otakey.errors.EnvelopeError` (the uniform error: a body that fails
its checks is treated exactly like a bad MAC). Encoders raise ``ValueError`` for caller mistakes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from otakey.errors import EnvelopeError


class MsgType(IntEnum):
    PROV_HELLO = 0x01
    PROV_OFFER = 0x02
    PROV_CONFIRM = 0x03
    ACK = 0x04
    AK_ROTATE_HELLO = 0x10
    AK_ROTATE_OFFER = 0x11
    AK_ROTATE_CONFIRM = 0x12
    CLOUD_REQUEST = 0x20
    CLOUD_UPDATE = 0x21
    CLOUD_CONFIRM = 0x22
    CHECKIN = 0x30
    CHECKIN_REPLY = 0x31
    ERROR = 0x7F


class KeyKind(IntEnum):
    PK = 0x00
    AK = 0x01
    NONE = 0xFF


class Action(IntEnum):
    NONE = 0
    ROTATE_AK = 1
    UPDATE_CLOUD = 2
    REVOKED = 3


class ErrorCode(IntEnum):
    REJECTED = 0x01
    REFUSED = 0x02
    RETRY = 0x03


class Platform(IntEnum):
    NONE = 0
    MOSQUITTO = 1
    AWS_IOT = 2


class CloudResult(IntEnum):
    OK = 0
    CLOUD_REFUSED = 1
    STORE_FAILED = 2


# Key kinds each type may be sealed with (§2.2 step 2). ACK answers only AK-protected confirms
# (PROV_CONFIRM, AK_ROTATE_CONFIRM, CLOUD_CONFIRM), so an ACK under PK is never legitimate.
ALLOWED_KEY_KINDS: dict[int, frozenset[int]] = {
    MsgType.PROV_HELLO: frozenset({KeyKind.PK}),
    MsgType.PROV_OFFER: frozenset({KeyKind.PK}),
    MsgType.PROV_CONFIRM: frozenset({KeyKind.AK}),
    MsgType.ACK: frozenset({KeyKind.AK}),
    MsgType.AK_ROTATE_HELLO: frozenset({KeyKind.AK}),
    MsgType.AK_ROTATE_OFFER: frozenset({KeyKind.AK}),
    MsgType.AK_ROTATE_CONFIRM: frozenset({KeyKind.AK}),
    MsgType.CLOUD_REQUEST: frozenset({KeyKind.AK}),
    MsgType.CLOUD_UPDATE: frozenset({KeyKind.AK}),
    MsgType.CLOUD_CONFIRM: frozenset({KeyKind.AK}),
    MsgType.CHECKIN: frozenset({KeyKind.AK}),
    MsgType.CHECKIN_REPLY: frozenset({KeyKind.AK}),
}

# Exact body length per type (§3, step 6); None = variable (CLOUD_UPDATE, checked by parsing §3.5).
BODY_LENGTHS: dict[int, int | None] = {
    MsgType.PROV_HELLO: 32,
    MsgType.PROV_OFFER: 36,
    MsgType.PROV_CONFIRM: 0,
    MsgType.ACK: 0,
    MsgType.AK_ROTATE_HELLO: 32,
    MsgType.AK_ROTATE_OFFER: 36,
    MsgType.AK_ROTATE_CONFIRM: 0,
    MsgType.CLOUD_REQUEST: 4,
    MsgType.CLOUD_UPDATE: None,
    MsgType.CLOUD_CONFIRM: 5,
    MsgType.CHECKIN: 110,
    MsgType.CHECKIN_REPLY: 4,
}

ENVELOPE_TYPES = frozenset(ALLOWED_KEY_KINDS)


def reject(reason: str) -> EnvelopeError:
    err = EnvelopeError("message rejected")
    err.reason = reason  # type: ignore[attr-defined]
    return err


def _need_len(data: bytes, n: int) -> None:
    if len(data) != n:
        raise reject("body_length")


def _u32(value: int, name: str) -> bytes:
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{name} out of range: {value}")
    return value.to_bytes(4, "little")


def _key32(value: bytes, name: str) -> bytes:
    if len(value) != 32:
        raise ValueError(f"{name} must be 32 bytes")
    return bytes(value)


# --- §3.5 cloud credential ------------------------------------------------------------------

ENDPOINT_MAX = 128
CLIENT_ID_MAX = 128
USERNAME_MAX = 128
SECRET_MAX = 3200
CLOUD_MAX_LEN = 4 + 1 + 3 * (2 + 128) + 2 + SECRET_MAX


@dataclass(frozen=True)
class CloudCredential:
    """A cloud credential (§3.5). ``endpoint``/``client_id``/``username`` are ASCII-ish text kept
    as bytes-compatible str (UTF-8 on the wire); ``secret`` is raw bytes."""

    version: int
    platform: int
    endpoint: str
    client_id: str
    username: str
    secret: bytes

    def __post_init__(self) -> None:
        if not 1 <= self.version <= 0xFFFFFFFF:
            raise ValueError("cloud version must be 1..2^32-1")
        if self.platform not in (Platform.MOSQUITTO, Platform.AWS_IOT):
            raise ValueError("platform must be 1 (mosquitto) or 2 (aws-iot)")
        for name, limit in (("endpoint", ENDPOINT_MAX), ("client_id", CLIENT_ID_MAX),
                            ("username", USERNAME_MAX)):
            if len(getattr(self, name).encode()) > limit:
                raise ValueError(f"{name} longer than {limit} bytes")
        if len(self.secret) > SECRET_MAX:
            raise ValueError(f"secret longer than {SECRET_MAX} bytes")

    def encode(self) -> bytes:
        out = bytearray(struct.pack("<IB", self.version, self.platform))
        for field in (self.endpoint.encode(), self.client_id.encode(), self.username.encode(),
                      bytes(self.secret)):
            out += struct.pack("<H", len(field)) + field
        return bytes(out)

    @classmethod
    def decode_prefix(cls, data: bytes) -> tuple[CloudCredential, int]:
        """Parse a credential at the start of ``data``; returns it and the bytes it used."""
        if len(data) < 5:
            raise reject("cloud_credential")
        version, platform = struct.unpack_from("<IB", data, 0)
        if version < 1 or platform not in (Platform.MOSQUITTO, Platform.AWS_IOT):
            raise reject("cloud_credential")
        pos = 5
        fields: list[bytes] = []
        for limit in (ENDPOINT_MAX, CLIENT_ID_MAX, USERNAME_MAX, SECRET_MAX):
            if pos + 2 > len(data):
                raise reject("cloud_credential")
            (n,) = struct.unpack_from("<H", data, pos)
            pos += 2
            if n > limit or pos + n > len(data):
                raise reject("cloud_credential")
            fields.append(bytes(data[pos : pos + n]))
            pos += n
        try:
            texts = [f.decode() for f in fields[:3]]
        except UnicodeDecodeError:
            raise reject("cloud_credential") from None
        return cls(version, platform, texts[0], texts[1], texts[2], fields[3]), pos

    @classmethod
    def decode(cls, data: bytes) -> CloudCredential:
        cred, used = cls.decode_prefix(data)
        if used != len(data):
            raise reject("cloud_credential")
        return cred

    def __repr__(self) -> str:  # never show the secret
        return (f"CloudCredential(version={self.version}, platform={self.platform}, "
                f"endpoint={self.endpoint!r}, client_id={self.client_id!r}, "
                f"username={self.username!r}, secret=<{len(self.secret)} bytes>)")


# --- bodies ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """PROV_HELLO / AK_ROTATE_HELLO: the sender's ephemeral X25519 public key."""

    eph_pub: bytes
    LENGTH: ClassVar[int] = 32

    def encode(self) -> bytes:
        return _key32(self.eph_pub, "eph_pub")

    @classmethod
    def decode(cls, data: bytes) -> Hello:
        _need_len(data, cls.LENGTH)
        return cls(bytes(data))


@dataclass(frozen=True)
class Offer:
    """PROV_OFFER / AK_ROTATE_OFFER."""

    eph_pub: bytes
    ak_version: int
    LENGTH: ClassVar[int] = 36

    def encode(self) -> bytes:
        if self.ak_version < 1:
            raise ValueError("ak_version must be >= 1")
        return _key32(self.eph_pub, "eph_pub") + _u32(self.ak_version, "ak_version")

    @classmethod
    def decode(cls, data: bytes) -> Offer:
        _need_len(data, cls.LENGTH)
        version = int.from_bytes(data[32:36], "little")
        if version < 1:
            raise reject("body_field")
        return cls(bytes(data[:32]), version)


@dataclass(frozen=True)
class Empty:
    """PROV_CONFIRM, AK_ROTATE_CONFIRM and ACK."""

    LENGTH: ClassVar[int] = 0

    def encode(self) -> bytes:
        return b""

    @classmethod
    def decode(cls, data: bytes) -> Empty:
        _need_len(data, cls.LENGTH)
        return cls()


@dataclass(frozen=True)
class CloudRequest:
    have_version: int
    LENGTH: ClassVar[int] = 4

    def encode(self) -> bytes:
        return _u32(self.have_version, "have_version")

    @classmethod
    def decode(cls, data: bytes) -> CloudRequest:
        _need_len(data, cls.LENGTH)
        return cls(int.from_bytes(data, "little"))


@dataclass(frozen=True)
class CloudConfirm:
    version: int
    result: int
    LENGTH: ClassVar[int] = 5

    def encode(self) -> bytes:
        if self.result not in tuple(CloudResult):
            raise ValueError("result must be 0, 1 or 2")
        return _u32(self.version, "version") + bytes([self.result])

    @classmethod
    def decode(cls, data: bytes) -> CloudConfirm:
        _need_len(data, cls.LENGTH)
        if data[4] not in tuple(CloudResult):
            raise reject("body_field")
        return cls(int.from_bytes(data[:4], "little"), data[4])


@dataclass(frozen=True)
class Checkin:
    """CHECKIN body (§3.4, 110 bytes)."""

    ak_version: int
    cloud_version: int
    cloud_platform: int
    ak_fp: bytes
    cloud_fp: bytes
    fw_version: int
    app_hash: bytes
    last_error: int = 0
    LENGTH: ClassVar[int] = 110
    _FMT: ClassVar[str] = "<IIB16s16sI32sB32s"

    def encode(self) -> bytes:
        if self.cloud_platform not in tuple(Platform):
            raise ValueError("cloud_platform must be 0, 1 or 2")
        if len(self.ak_fp) != 16 or len(self.cloud_fp) != 16 or len(self.app_hash) != 32:
            raise ValueError("fingerprints are 16 bytes, app_hash 32")
        if not 0 <= self.last_error <= 0xFF:
            raise ValueError("last_error is one byte")
        for name in ("ak_version", "cloud_version", "fw_version"):
            _u32(getattr(self, name), name)
        return struct.pack(self._FMT, self.ak_version, self.cloud_version, self.cloud_platform,
                           self.ak_fp, self.cloud_fp, self.fw_version, self.app_hash,
                           self.last_error, bytes(32))

    @classmethod
    def decode(cls, data: bytes) -> Checkin:
        _need_len(data, cls.LENGTH)
        (ak_version, cloud_version, platform, ak_fp, cloud_fp, fw_version, app_hash, last_error,
         reserved) = struct.unpack(cls._FMT, data)
        if platform not in tuple(Platform) or any(reserved):
            raise reject("body_field")
        return cls(ak_version, cloud_version, platform, ak_fp, cloud_fp, fw_version, app_hash,
                   last_error)


@dataclass(frozen=True)
class CheckinReply:
    action: int
    LENGTH: ClassVar[int] = 4

    def encode(self) -> bytes:
        if self.action not in tuple(Action):
            raise ValueError("unknown action")
        return bytes([self.action, 0, 0, 0])

    @classmethod
    def decode(cls, data: bytes) -> CheckinReply:
        _need_len(data, cls.LENGTH)
        if data[0] not in tuple(Action) or any(data[1:]):
            raise reject("body_field")
        return cls(data[0])


@dataclass(frozen=True)
class CloudUpdate:
    credential: CloudCredential

    def encode(self) -> bytes:
        return self.credential.encode()

    @classmethod
    def decode(cls, data: bytes) -> CloudUpdate:
        return cls(CloudCredential.decode(data))


Body = Hello | Offer | Empty | CloudRequest | CloudUpdate | CloudConfirm | Checkin | CheckinReply

BODY_CLASSES: dict[int, type] = {
    MsgType.PROV_HELLO: Hello,
    MsgType.PROV_OFFER: Offer,
    MsgType.PROV_CONFIRM: Empty,
    MsgType.ACK: Empty,
    MsgType.AK_ROTATE_HELLO: Hello,
    MsgType.AK_ROTATE_OFFER: Offer,
    MsgType.AK_ROTATE_CONFIRM: Empty,
    MsgType.CLOUD_REQUEST: CloudRequest,
    MsgType.CLOUD_UPDATE: CloudUpdate,
    MsgType.CLOUD_CONFIRM: CloudConfirm,
    MsgType.CHECKIN: Checkin,
    MsgType.CHECKIN_REPLY: CheckinReply,
}


def decode_body(msg_type: int, data: bytes) -> Body:
    """Decode the body of an envelope type; raises the uniform EnvelopeError on any mismatch."""
    cls = BODY_CLASSES.get(msg_type)
    if cls is None:
        raise reject("type")
    return cls.decode(data)  # type: ignore[no-any-return]
