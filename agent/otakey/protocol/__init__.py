"""Python reference of the OTA-Key wire protocol (docs/protocol.md) and keystore format
(docs/flash-layout.md). Pure codecs and state machines: bytes in, objects out, no I/O."""

from otakey.protocol.cloudsession import SessionOpen, SessionResult, SessionStatus, decode_session_message
from otakey.protocol.envelope import (
    ErrorMessage,
    Header,
    derive_ak,
    derive_keys,
    fingerprint,
    open_message,
    seal,
)
from otakey.protocol.framing import Channel, Frame, FrameDecoder, crc32, encode_frame
from otakey.protocol.handshake import DeviceSession, DeviceState, ReferenceAgent, ScriptedRng
from otakey.protocol.keystore import KeystoreState, boot, commit, decode_record, encode_record
from otakey.protocol.messages import (
    Action,
    Checkin,
    CheckinReply,
    CloudConfirm,
    CloudCredential,
    CloudRequest,
    CloudUpdate,
    ErrorCode,
    KeyKind,
    MsgType,
    Platform,
    decode_body,
)

__all__ = [
    "Action",
    "Channel",
    "Checkin",
    "CheckinReply",
    "CloudConfirm",
    "CloudCredential",
    "CloudRequest",
    "CloudUpdate",
    "DeviceSession",
    "DeviceState",
    "ErrorCode",
    "ErrorMessage",
    "Frame",
    "FrameDecoder",
    "Header",
    "KeyKind",
    "KeystoreState",
    "MsgType",
    "Platform",
    "ReferenceAgent",
    "ScriptedRng",
    "SessionOpen",
    "SessionResult",
    "SessionStatus",
    "boot",
    "commit",
    "crc32",
    "decode_body",
    "decode_record",
    "decode_session_message",
    "derive_ak",
    "derive_keys",
    "encode_frame",
    "encode_record",
    "fingerprint",
    "open_message",
    "seal",
]
