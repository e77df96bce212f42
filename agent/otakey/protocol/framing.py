"""Link framing of protocol §1: COBS(channel ‖ payload ‖ crc32) ‖ 0x00.

Pure byte transforms plus an incremental decoder; no I/O. The decoder reports dropped frames as
:class:`~otakey.errors.FrameError` values (not raised) because a bad frame on a serial line is a
runtime condition, and the stream goes on with the next byte.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from enum import IntEnum

from otakey.errors import FrameError

MAX_PAYLOAD = 4096
MIN_CONTENT = 5  # channel (1) + crc (4)
MAX_CONTENT = 1 + MAX_PAYLOAD + 4
# COBS adds one code byte per started 254-byte block: 4101 + ceil(4101 / 254).
MAX_ENCODED = MAX_CONTENT + -(-MAX_CONTENT // 254)
DELIMITER = 0x00

FRAME_TOO_LONG = "frame_too_long"
FRAME_BAD_COBS = "frame_bad_cobs"
FRAME_TOO_SHORT = "frame_too_short"
FRAME_BAD_CRC = "frame_bad_crc"
FRAME_BAD_CHANNEL = "frame_bad_channel"


class Channel(IntEnum):
    AGENT = 0x01
    CLOUD = 0x02
    CONSOLE = 0x03


CHANNELS = frozenset(int(c) for c in Channel)


@dataclass(frozen=True)
class Frame:
    channel: int
    payload: bytes


def crc32(data: bytes) -> int:
    """CRC-32/ISO-HDLC, the one zlib computes."""
    return zlib.crc32(data) & 0xFFFFFFFF


def cobs_encode(data: bytes) -> bytes:
    """Consistent Overhead Byte Stuffing, minimal form.

    A final block of exactly 254 non-zero bytes is *not* followed by an extra 0x01 code byte
    (the C encoder does the same, so the vectors pin this choice down).
    """
    out = bytearray([0])  # placeholder for the first code byte
    code_pos: int | None = 0
    code = 1
    n = len(data)
    for i, b in enumerate(data):
        if b != 0:
            out.append(b)
            code += 1
            if code < 0xFF:
                continue
            # A full block of 254 bytes: no implied zero after it.
            out[code_pos] = code  # type: ignore[index]
            code = 1
            code_pos = None
            if i + 1 < n:
                code_pos = len(out)
                out.append(0)
        else:
            if code_pos is None:  # cannot happen: a zero always follows an open block
                code_pos = len(out)
                out.append(0)
            out[code_pos] = code
            code = 1
            code_pos = len(out)
            out.append(0)
    if code_pos is not None:
        out[code_pos] = code
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Inverse of :func:`cobs_encode`; raises FrameError(frame_bad_cobs) on malformed input.

    Malformed means: empty, a 0x00 inside, or a code byte announcing more bytes than remain.
    The non-minimal form (an extra 0x01 after a final 0xFF block) decodes to the same bytes.
    """
    if not data:
        raise FrameError("bad COBS", FRAME_BAD_COBS)
    out = bytearray()
    i = 0
    n = len(data)
    while i < n:
        code = data[i]
        if code == 0:
            raise FrameError("bad COBS", FRAME_BAD_COBS)
        end = i + code
        if end > n:
            raise FrameError("bad COBS", FRAME_BAD_COBS)
        block = data[i + 1 : end]
        if 0 in block:
            raise FrameError("bad COBS", FRAME_BAD_COBS)
        out += block
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


def encode_frame(channel: int, payload: bytes) -> bytes:
    """Whole wire frame including the trailing 0x00 delimiter."""
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel}")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    content = bytes([channel]) + bytes(payload)
    content += crc32(content).to_bytes(4, "little")
    return cobs_encode(content) + b"\x00"


def decode_frame_body(encoded: bytes) -> Frame:
    """Check one frame given without its delimiter; raises FrameError with the documented code.

    Checks run in the order of protocol §1: COBS, length, CRC, channel.
    """
    if len(encoded) > MAX_ENCODED:
        raise FrameError("frame too long", FRAME_TOO_LONG)
    content = cobs_decode(encoded)
    if len(content) < MIN_CONTENT:
        raise FrameError("frame too short", FRAME_TOO_SHORT)
    if len(content) > MAX_CONTENT:
        # Only reachable with the non-minimal COBS form; the payload limit still holds.
        raise FrameError("frame too long", FRAME_TOO_LONG)
    body, crc = content[:-4], int.from_bytes(content[-4:], "little")
    if crc32(body) != crc:
        raise FrameError("bad CRC", FRAME_BAD_CRC)
    if body[0] not in CHANNELS:
        raise FrameError("unknown channel", FRAME_BAD_CHANNEL)
    return Frame(channel=body[0], payload=bytes(body[1:]))


class FrameDecoder:
    """Incremental receiver with the resynchronisation of protocol §1.

    ``feed`` returns, in stream order, every good :class:`Frame` and every dropped frame as a
    :class:`FrameError` (its ``code`` is the documented name). A frame that grows past
    MAX_ENCODED is reported as ``frame_too_long`` at the byte that overflows, once; everything up
    to and including the next 0x00 is then dropped.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._dropping = False

    @property
    def pending(self) -> int:
        """Bytes held for the frame in progress (0 while dropping an oversized one)."""
        return len(self._buf)

    def reset(self) -> None:
        self._buf.clear()
        self._dropping = False

    def feed(self, data: bytes) -> list[Frame | FrameError]:
        events: list[Frame | FrameError] = []
        for b in data:
            if b == DELIMITER:
                if self._dropping:
                    self._dropping = False
                elif self._buf:
                    try:
                        events.append(decode_frame_body(bytes(self._buf)))
                    except FrameError as exc:
                        events.append(exc)
                self._buf.clear()
                continue
            if self._dropping:
                continue
            if len(self._buf) >= MAX_ENCODED:
                self._buf.clear()
                self._dropping = True
                events.append(FrameError("frame too long", FRAME_TOO_LONG))
                continue
            self._buf.append(b)
        return events
