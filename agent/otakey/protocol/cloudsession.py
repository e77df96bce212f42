"""CLOUD channel messages of protocol §5 (device ⇄ gateway, plain).

The payload of a CLOUD frame is ``type (1) ‖ body``. Decoders raise ``ProtocolError`` with code
``malformed`` — the gateway answers such a request with status 3.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from otakey.errors import EnvelopeError, ProtocolError
from otakey.protocol.messages import CloudCredential

# Each variable field is a u16 length followed by n bytes, n at most these limits (read as
# §3.5 writes its fields: "2 + n" bytes with the bound on n). The topic bound leaves room for
# `devices/<client_id>/status` with the longest client id §3.5 allows (128 bytes).
TOPIC_MAX = 256
PAYLOAD_MAX = 256
DETAIL_MAX = 128


class SessionType(IntEnum):
    SESSION_OPEN = 0x01
    SESSION_RESULT = 0x02


class SessionStatus(IntEnum):
    CONNECTED = 0  # connected and published
    REFUSED = 1  # the broker refused the credential
    UNREACHABLE = 2
    MALFORMED = 3


def _malformed() -> ProtocolError:
    return ProtocolError("malformed cloud-session message", "malformed")


def _field(data: bytes, pos: int, limit: int) -> tuple[bytes, int]:
    if pos + 2 > len(data):
        raise _malformed()
    (n,) = struct.unpack_from("<H", data, pos)
    pos += 2
    if n > limit or pos + n > len(data):
        raise _malformed()
    return bytes(data[pos : pos + n]), pos + n


def _put(value: bytes, limit: int, name: str) -> bytes:
    if len(value) > limit:
        raise ValueError(f"{name} longer than {limit} bytes")
    return struct.pack("<H", len(value)) + value


@dataclass(frozen=True)
class SessionOpen:
    request_id: int
    credential: CloudCredential
    topic: str
    payload: bytes

    def encode(self) -> bytes:
        if not 0 <= self.request_id <= 0xFF:
            raise ValueError("request_id is one byte")
        return (bytes([SessionType.SESSION_OPEN, self.request_id]) + self.credential.encode()
                + _put(self.topic.encode(), TOPIC_MAX, "topic") + _put(self.payload, PAYLOAD_MAX, "payload"))


@dataclass(frozen=True)
class SessionResult:
    request_id: int
    status: int
    detail: str = ""

    def encode(self) -> bytes:
        if not 0 <= self.request_id <= 0xFF or self.status not in tuple(SessionStatus):
            raise ValueError("bad request_id or status")
        return (bytes([SessionType.SESSION_RESULT, self.request_id, self.status])
                + _put(self.detail.encode(), DETAIL_MAX, "detail"))


def decode_session_message(data: bytes) -> SessionOpen | SessionResult:
    """Decode a CLOUD channel payload; nothing may follow the last field."""
    if len(data) < 2:
        raise _malformed()
    kind, request_id = data[0], data[1]
    if kind == SessionType.SESSION_OPEN:
        try:
            cred, used = CloudCredential.decode_prefix(data[2:])
        except EnvelopeError:
            raise _malformed() from None
        topic, pos = _field(data, 2 + used, TOPIC_MAX)
        payload, pos = _field(data, pos, PAYLOAD_MAX)
        if pos != len(data):
            raise _malformed()
        try:
            topic_s = topic.decode()
        except UnicodeDecodeError:
            raise _malformed() from None
        return SessionOpen(request_id, cred, topic_s, payload)
    if kind == SessionType.SESSION_RESULT:
        if len(data) < 3 or data[2] not in tuple(SessionStatus):
            raise _malformed()
        detail, pos = _field(data, 3, DETAIL_MAX)
        if pos != len(data):
            raise _malformed()
        try:
            detail_s = detail.decode()
        except UnicodeDecodeError:
            raise _malformed() from None
        return SessionResult(request_id, data[2], detail_s)
    raise _malformed()
