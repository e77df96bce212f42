"""Deterministic test vectors for the C core: ``python -m otakey.protocol.vectors --out tests/vectors``.

Every input is fixed (derived from a label by SHA-256), so regenerating gives byte-identical
files. JSON: sorted keys, 2-space indent, lowercase hex. The schema of each file is described
in its ``"about"`` member and kept stable: the C tests read these files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from otakey.protocol import envelope as env
from otakey.protocol import framing, keystore
from otakey.protocol.cloudsession import SessionOpen, SessionResult, SessionStatus
from otakey.protocol.handshake import DeviceSession, ReferenceAgent, ScriptedRng
from otakey.protocol.messages import (
    Action,
    Checkin,
    CheckinReply,
    CloudConfirm,
    CloudCredential,
    CloudRequest,
    CloudResult,
    Empty,
    ErrorCode,
    Hello,
    KeyKind,
    MsgType,
    Offer,
    Platform,
)

Json = dict[str, Any]


def det(label: str, n: int) -> bytes:
    """n fixed bytes named by label."""
    out = b""
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"{label}#{counter}".encode()).digest()
        counter += 1
    return out[:n]


def det_nonzero(label: str, n: int) -> bytes:
    return bytes((b % 255) + 1 for b in det(label, n))


# Fixed identities shared by the files.
PK = det("pk", 32)
PO_ID = 0x00001234
PO_NAME = "PO-2024-0042"
DEVICE_ID = det("device_id", 12)
AK1 = det("ak-v1", 32)
FW_VERSION = 0x010000
APP_HASH = hashlib.sha256(b"OTA-Key example application image").digest()


def mosquitto_credential(version: int = 1) -> CloudCredential:
    return CloudCredential(version, Platform.MOSQUITTO, "mqtt://127.0.0.1:1883", DEVICE_ID.hex(),
                           DEVICE_ID.hex(), det(f"mosquitto-password-{version}", 24).hex().encode())


def _pem(kind: str, label: str, nbytes: int) -> bytes:
    import base64

    b64 = base64.b64encode(det(label, nbytes)).decode()
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return (f"-----BEGIN {kind}-----\n" + "\n".join(lines) + f"\n-----END {kind}-----\n").encode()


def aws_credential(version: int = 1) -> CloudCredential:
    # An RSA-2048 certificate and key in PEM are ~1.2 KB + ~1.7 KB: the secret is ~2.9 KB.
    secret = (_pem("CERTIFICATE", f"aws-cert-{version}", 900)
              + _pem("RSA PRIVATE KEY", f"aws-key-{version}", 1190))
    return CloudCredential(version, Platform.AWS_IOT, "mqtts://a1b2c3d4e5f6g7-ats.iot.eu-west-1.amazonaws.com:8883",
                           f"otakey-{DEVICE_ID.hex()}", "", secret)


def _dump(path: Path, data: Json) -> None:
    path.write_text(json.dumps(data, sort_keys=True, indent=2) + "\n")


# === frames ====================================================================================


def _content_nonzero_payload(label: str, length: int, channel: int = framing.Channel.AGENT) -> bytes:
    """A payload of non-zero bytes whose CRC has no zero byte either, so the whole content is
    one zero-free run of length + 5 bytes."""
    i = 0
    while True:
        p = det_nonzero(f"{label}/{i}", length)
        crc = framing.crc32(bytes([channel]) + p).to_bytes(4, "little")
        if 0 not in crc:
            return p
        i += 1


def _cut_last_block(frame: bytes) -> bytes:
    encoded = frame[:-1]
    pos, last = 0, 0
    while pos < len(encoded):
        last = pos
        pos += encoded[pos]
    return encoded[:last] + b"\x00"


def frames_vectors() -> Json:
    ch = framing.Channel
    goods: list[tuple[str, int, bytes]] = [
        ("empty_payload", ch.AGENT, b""),
        ("single_zero", ch.AGENT, b"\x00"),
        ("zeros_inside", ch.AGENT, b"\x11\x00\x00\x22\x00\x33"),
        ("all_zero_16", ch.AGENT, bytes(16)),
        ("run_252_no_zero", ch.AGENT, det_nonzero("run252", 252)),
        ("run_253_no_zero", ch.AGENT, det_nonzero("run253", 253)),
        ("run_254_no_zero", ch.AGENT, det_nonzero("run254", 254)),
        ("run_255_no_zero", ch.AGENT, det_nonzero("run255", 255)),
        # content = 254 non-zero bytes exactly: one full block ends the frame (minimal COBS form)
        ("content_exactly_254_no_zero", ch.AGENT, _content_nonzero_payload("c254", 249)),
        ("content_exactly_508_no_zero", ch.AGENT, _content_nonzero_payload("c508", 503)),
        ("content_254_run_then_zero", ch.AGENT, det_nonzero("c254z", 253) + b"\x00" + b"\x42"),
        ("max_payload_random", ch.AGENT, det("max-random", framing.MAX_PAYLOAD)),
        ("max_payload_no_zero", ch.AGENT, _content_nonzero_payload("max-nz", framing.MAX_PAYLOAD)),
        ("cloud_channel", ch.CLOUD, b"\x02\x01\x00\x00\x00"),
        ("console_channel", ch.CONSOLE, b"OTA-Key fw=1.0.0 keys=pk area=B gen=1\n"),
    ]
    frames = [{"name": n, "channel": int(c), "payload": p.hex(), "encoded": framing.encode_frame(c, p).hex()}
              for n, c, p in goods]

    def raw(channel: int, payload: bytes, crc_xor: int = 0) -> bytes:
        content = bytes([channel]) + payload
        crc = framing.crc32(content) ^ crc_xor
        return framing.cobs_encode(content + crc.to_bytes(4, "little")) + b"\x00"

    good = framing.encode_frame(ch.AGENT, b"hello")
    bad: list[tuple[str, bytes, str]] = [
        ("wrong_crc", raw(ch.AGENT, b"hello", 0x1), framing.FRAME_BAD_CRC),
        ("payload_byte_flipped", bytes(good[:3]) + bytes([good[3] ^ 0x40]) + good[4:], framing.FRAME_BAD_CRC),
        # the last content byte cut: the final code byte now announces one byte too many
        ("truncated", good[:-2] + b"\x00", framing.FRAME_BAD_COBS),
        # the last COBS block cut off whole: still valid COBS, so the CRC catches it
        ("truncated_at_block_boundary", _cut_last_block(framing.encode_frame(ch.AGENT, b"hello\x00world")),
         framing.FRAME_BAD_CRC),
        ("invalid_cobs_code_past_end", b"\x09\x01\x02\x03\x00", framing.FRAME_BAD_COBS),
        ("invalid_cobs_code_ff_short", b"\xff" + b"\x01" * 10 + b"\x00", framing.FRAME_BAD_COBS),
        ("unknown_channel_4", raw(0x04, b"hello"), framing.FRAME_BAD_CHANNEL),
        ("unknown_channel_0", raw(0x00, b"hello"), framing.FRAME_BAD_CHANNEL),
        ("too_short_4_bytes", framing.cobs_encode(b"\x01\x02\x03\x04") + b"\x00", framing.FRAME_TOO_SHORT),
        ("too_short_1_byte", b"\x02\x01\x00", framing.FRAME_TOO_SHORT),
        ("oversized_4119_before_delimiter", b"\x01" + b"\x55" * 4118 + b"\x00", framing.FRAME_TOO_LONG),
        ("oversized_payload_4097", framing.cobs_encode(
            bytes([ch.AGENT]) + det("p4097", 4097)
            + framing.crc32(bytes([ch.AGENT]) + det("p4097", 4097)).to_bytes(4, "little")) + b"\x00",
         framing.FRAME_TOO_LONG),
        # 4118 code bytes of 0x01 decode to 4117 zero bytes: within the encoded limit, yet the
        # content is longer than 4101 (a decoder must bound the decoded length too)
        ("content_too_long_within_encoded_limit", b"\x01" * 4118 + b"\x00", framing.FRAME_TOO_LONG),
    ]
    bad_frames = []
    for name, data, error in bad:
        events = framing.FrameDecoder().feed(data)
        got = [e.code for e in events if isinstance(e, framing.FrameError)]
        assert got == [error] and len(events) == 1, (name, events)
        bad_frames.append({"name": name, "encoded": data.hex(), "error": error})

    f1 = framing.encode_frame(ch.AGENT, b"first")
    f2 = framing.encode_frame(ch.CONSOLE, b"second\n")
    streams_in = [
        ("two_frames_back_to_back", f1 + f2),
        ("leading_flush_delimiters", b"\x00\x00" + f1),
        ("garbage_between_frames", f1 + b"\x13\x37\xde\xad" + b"\x00" + f2),
        ("garbage_without_delimiter_joins_next_frame", b"\x13\x37" + f1 + f2),
        ("oversized_then_good", b"\x42" * 5000 + b"\x00" + f1),
        ("oversized_eats_following_frame_until_delimiter", b"\x42" * 4200 + f1 + f2),
    ]
    streams = []
    for name, data in streams_in:
        events = framing.FrameDecoder().feed(data)
        streams.append({"name": name, "bytes": data.hex(), "events": [
            {"error": e.code} if isinstance(e, framing.FrameError)
            else {"channel": e.channel, "payload": e.payload.hex()} for e in events]})
    return {
        "about": ("encoded includes the trailing 0x00 delimiter. Each bad frame fed to a fresh decoder "
                  "gives exactly one error and no frame. streams: every event a fresh decoder reports, "
                  "in order; frame_too_long is reported once, when the 4119th byte arrives."),
        "max_encoded": framing.MAX_ENCODED,
        "frames": frames,
        "bad_frames": bad_frames,
        "streams": streams,
    }


# === envelopes ===============================================================================


def _msg_entry(name: str, root: bytes, header: env.Header, iv: bytes, body: bytes) -> Json:
    message = env.seal(header, root, iv, body)
    return {"name": name, "root": root.hex(), "type": header.type, "key_kind": header.key_kind,
            "key_ref": header.key_ref, "device_id": header.device_id.hex(), "nonce_d": header.nonce_d.hex(),
            "nonce_a": header.nonce_a.hex(), "iv": iv.hex(), "body": body.hex(), "message": message.hex()}


def _tiny_credential(total_len: int) -> bytes:
    # 13 bytes of fixed overhead (version, platform, four u16 lengths); the rest is the endpoint.
    return CloudCredential(1, Platform.MOSQUITTO, "e" * (total_len - 13), "", "", b"").encode()


def envelopes_vectors() -> Json:
    nd, na = det("env-nonce_d", 16), det("env-nonce_a", 16)
    z = env.ZERO_NONCE
    checkin = Checkin(1, 1, Platform.MOSQUITTO, env.fingerprint(AK1),
                      env.fingerprint(mosquitto_credential().secret), FW_VERSION, APP_HASH, 0)
    T, K = MsgType, KeyKind
    cases: list[tuple[str, int, int, int, bytes, bytes, bytes]] = [
        ("prov_hello", T.PROV_HELLO, K.PK, PO_ID, PK, z, Hello(det("eph-pub-d", 32)).encode()),
        ("prov_offer", T.PROV_OFFER, K.PK, PO_ID, PK, na, Offer(det("eph-pub-a", 32), 1).encode()),
        ("prov_confirm_empty_body", T.PROV_CONFIRM, K.AK, 1, AK1, na, b""),
        ("ack", T.ACK, K.AK, 1, AK1, na, b""),
        ("ak_rotate_hello", T.AK_ROTATE_HELLO, K.AK, 1, AK1, z, Hello(det("eph-pub-d2", 32)).encode()),
        ("ak_rotate_offer", T.AK_ROTATE_OFFER, K.AK, 1, AK1, na, Offer(det("eph-pub-a2", 32), 2).encode()),
        ("ak_rotate_confirm", T.AK_ROTATE_CONFIRM, K.AK, 2, det("ak-v2", 32), na, b""),
        ("cloud_request", T.CLOUD_REQUEST, K.AK, 1, AK1, z, CloudRequest(0).encode()),
        ("cloud_update_mosquitto", T.CLOUD_UPDATE, K.AK, 1, AK1, na, mosquitto_credential().encode()),
        ("cloud_update_aws_2_9kb", T.CLOUD_UPDATE, K.AK, 1, AK1, na, aws_credential().encode()),
        ("cloud_update_body_15", T.CLOUD_UPDATE, K.AK, 1, AK1, na, _tiny_credential(15)),
        ("cloud_update_body_16", T.CLOUD_UPDATE, K.AK, 1, AK1, na, _tiny_credential(16)),
        ("cloud_update_body_17", T.CLOUD_UPDATE, K.AK, 1, AK1, na, _tiny_credential(17)),
        ("cloud_confirm", T.CLOUD_CONFIRM, K.AK, 1, AK1, na, CloudConfirm(1, CloudResult.OK).encode()),
        ("checkin", T.CHECKIN, K.AK, 1, AK1, z, checkin.encode()),
        ("checkin_reply", T.CHECKIN_REPLY, K.AK, 1, AK1, na, CheckinReply(Action.ROTATE_AK).encode()),
    ]
    messages = []
    for i, (name, t, kind, ref, root, nonce_a, body) in enumerate(cases):
        h = env.Header(t, kind, ref, DEVICE_ID, nd, nonce_a)
        messages.append(_msg_entry(name, root, h, det(f"env-iv-{i}", 16), body))

    # --- bad messages: each must be refused by the receive order of §2.2 steps 1–6 ---
    iv = det("bad-iv", 16)
    good_h = env.Header(T.CHECKIN_REPLY, K.AK, 1, DEVICE_ID, nd, na)
    good = env.seal(good_h, AK1, iv, CheckinReply(Action.NONE).encode())

    good_long = env.seal(env.Header(T.CHECKIN, K.AK, 1, DEVICE_ID, nd, z), AK1, iv, checkin.encode())

    def flip(data: bytes, pos: int) -> bytes:
        b = bytearray(data)
        b[pos] ^= 0x01
        return bytes(b)

    def remac(header_bytes: bytes, plain: bytes) -> bytes:
        return env.seal_raw(header_bytes, AK1, iv, plain)

    padded_reply = env.pkcs7_pad(CheckinReply(Action.NONE).encode())
    hdr = bytearray(good_h.pack())
    wrong_version = bytearray(hdr)
    wrong_version[0] = 2
    unknown_type = bytearray(hdr)
    unknown_type[1] = 0x55
    bad_reserved = bytearray(hdr)
    bad_reserved[3] = 1
    error_type = bytearray(hdr)
    error_type[1], error_type[2] = T.ERROR, K.NONE
    hello_under_ak = env.Header(T.PROV_HELLO, K.PK, PO_ID, DEVICE_ID, nd, z).pack()
    hello_under_ak = hello_under_ak[:2] + bytes([K.AK]) + hello_under_ak[3:]
    ack_under_pk = bytearray(env.Header(T.ACK, K.AK, 1, DEVICE_ID, nd, na).pack())
    ack_under_pk[2] = K.PK
    body_plus_one = env.pkcs7_pad(CheckinReply(Action.NONE).encode() + b"\x00")
    bad: list[tuple[str, bytes, str]] = [
        ("truncated_one_byte", good[:-1], "length"),
        ("truncated_one_block", good_long[:-16], "mac"),
        ("truncated_below_minimum", good[:100], "length"),
        ("length_not_block_multiple", good + b"\x00", "length"),
        ("oversized", env.seal_raw(hdr, AK1, iv, bytes(env.MAX_MESSAGE - env.OVERHEAD + 16)), "length"),
        ("flipped_mac_byte", flip(good, len(good) - 1), "mac"),
        ("flipped_first_mac_byte", flip(good, len(good) - 32), "mac"),
        ("flipped_ciphertext_byte", flip(good, env.HEADER_LEN + 16), "mac"),
        ("flipped_iv_byte", flip(good, env.HEADER_LEN), "mac"),
        ("flipped_header_device_id", flip(good, 8), "mac"),
        ("flipped_header_nonce_a", flip(good, 40), "mac"),
        ("flipped_header_key_ref", flip(good, 4), "mac"),
        ("wrong_version_remaced", remac(bytes(wrong_version), padded_reply), "version"),
        ("reserved_nonzero_remaced", remac(bytes(bad_reserved), padded_reply), "reserved"),
        ("unknown_type_remaced", remac(bytes(unknown_type), padded_reply), "type"),
        ("error_type_as_envelope_remaced", remac(bytes(error_type), padded_reply), "type"),
        ("key_kind_ak_for_prov_hello_remaced", remac(hello_under_ak, env.pkcs7_pad(bytes(32))), "key_kind"),
        ("key_kind_pk_for_ack_remaced", remac(bytes(ack_under_pk), env.pkcs7_pad(b"")), "key_kind"),
        ("bad_padding_zero_remaced", remac(hdr, b"\x00" * 16), "padding"),
        ("bad_padding_17_remaced", remac(hdr, b"\x00" * 15 + b"\x11"), "padding"),
        ("bad_padding_inconsistent_remaced", remac(hdr, b"\x00" * 12 + b"\x03\x04\x04\x04"), "padding"),
        ("bad_padding_whole_block_inconsistent_remaced",
         remac(hdr, b"\x00" * 16 + b"\x10" * 7 + b"\x11" + b"\x10" * 8),
         "padding"),
        ("wrong_body_length_remaced", remac(hdr, body_plus_one), "body_length"),
        ("wrong_body_length_empty_remaced", remac(hdr, env.pkcs7_pad(b"")), "body_length"),
        ("wrong_key", env.seal(good_h, det("other-key", 32), iv, CheckinReply(Action.NONE).encode()), "mac"),
    ]
    bad_messages = []
    for name, data, reason in bad:
        try:
            env.open_message(data, lambda _h: AK1)
        except env.EnvelopeError as exc:
            assert exc.reason == reason, (name, exc.reason)  # type: ignore[attr-defined]
        else:
            raise AssertionError(f"bad vector {name} opened")
        bad_messages.append({"name": name, "root": AK1.hex(), "message": data.hex(), "error": "rejected",
                             "reason": reason})

    errors = []
    for name, code, dev, ndv, nav in [
        ("rejected_echo", ErrorCode.REJECTED, DEVICE_ID, nd, z),
        ("refused_echo", ErrorCode.REFUSED, DEVICE_ID, nd, na),
        ("retry_echo", ErrorCode.RETRY, DEVICE_ID, nd, z),
        ("rejected_unparsed_header", ErrorCode.REJECTED, bytes(12), z, z),
    ]:
        msg = env.ErrorMessage(code, dev, ndv, nav).pack()
        errors.append({"name": name, "type": int(T.ERROR), "device_id": dev.hex(), "nonce_d": ndv.hex(),
                       "nonce_a": nav.hex(), "code": int(code), "message": msg.hex()})
    return {
        "about": ("messages: seal(header, root, iv, body) == message and opening it gives body. "
                  "bad_messages: refused by §2.2 steps 1-6 with root as the key; reason is the "
                  "Python reference's internal check name (never on the wire)."),
        "messages": messages,
        "bad_messages": bad_messages,
        "errors": errors,
    }


# === flows ===================================================================================


def _state_json(st: keystore.KeystoreState | None) -> Json | None:
    if st is None:
        return None
    cloud = None
    if st.cloud is not None:
        c = st.cloud
        cloud = {"version": c.version, "platform": c.platform, "endpoint": c.endpoint,
                 "client_id": c.client_id, "username": c.username, "secret": c.secret.hex()}
    return {"generation": st.generation, "po_id": st.po_id, "po_name": st.po_name,
            "pk": st.pk.hex() if st.pk is not None else None, "ak_version": st.ak_version,
            "ak": st.ak.hex() if st.ak is not None else None, "cloud": cloud}


class _Recorder:
    """Wraps a ScriptedRng and names each draw in order."""

    def __init__(self, chunks: list[tuple[str, bytes]]) -> None:
        self.names = [n for n, _ in chunks]
        self.rng = ScriptedRng([c for _, c in chunks])

    def __call__(self, n: int) -> bytes:
        return self.rng(n)

    def draws(self) -> list[Json]:
        assert len(self.rng.draws) == len(self.names), "RNG script and use disagree"
        return [{"what": w, "hex": d.hex()} for w, d in zip(self.names, self.rng.draws, strict=True)]


def _agent(rng: _Recorder, issue: CloudCredential | None = None) -> ReferenceAgent:
    def issuer(_dev: bytes, version: int, _rng: Any) -> CloudCredential:
        assert issue is not None and issue.version == version
        return issue

    agent = ReferenceAgent(rng=rng, issuer=issuer)
    agent.add_order(PO_ID, PO_NAME, PK)
    return agent


def _seed_agent_with_ak(agent: ReferenceAgent, ak_version: int, ak: bytes,
                        cloud: CloudCredential | None = None) -> None:
    from otakey.protocol.handshake import AgentDevice

    agent.devices[DEVICE_ID] = AgentDevice(DEVICE_ID, PO_ID, ak_version, ak, completed=True, cloud=cloud)


def _flow(name: str, device: DeviceSession, dev_rng: _Recorder, agent_rng: _Recorder, steps: list[Json],
          inputs: Json, before: keystore.KeystoreState, derived: Json, extra: Json | None = None) -> Json:
    out = {"name": name, "inputs": inputs, "messages": steps, "derived": derived,
           "device_rng_draws": dev_rng.draws(), "agent_rng_draws": agent_rng.draws(),
           "keystore_before": _state_json(before), "keystore_after": _state_json(device.keystore)}
    if extra:
        out.update(extra)
    return out


def _exchange(device: DeviceSession, agent: ReferenceAgent, first: bytes, names: list[str]) -> list[Json]:
    """Run device message → agent answer → ... until the device is done; returns the messages."""
    steps = [{"name": names[0], "dir": "d2a", "message": first.hex()}]
    msg = first
    i = 1
    while True:
        answer = agent.handle(msg)
        steps.append({"name": names[i], "dir": "a2d", "message": answer.hex()})
        i += 1
        out = device.receive(answer)
        assert out.dropped is None, out
        if out.session is not None:
            return steps
        if out.send is None:
            return steps
        steps.append({"name": names[i], "dir": "d2a", "message": out.send.hex()})
        i += 1
        msg = out.send


def flows_vectors() -> Json:
    flows = []
    factory = keystore.KeystoreState(1, PO_ID, PO_NAME, pk=PK)

    # --- provisioning ---
    d_rng = _Recorder([("nonce_d", det("prov-nonce_d", 16)), ("eph_priv", det("prov-dev-eph", 32)),
                       ("iv", det("prov-iv-hello", 16)), ("iv", det("prov-iv-confirm", 16))])
    a_rng = _Recorder([("nonce_a", det("prov-nonce_a", 16)), ("eph_priv", det("prov-agent-eph", 32)),
                       ("iv", det("prov-iv-offer", 16)), ("iv", det("prov-iv-ack", 16))])
    agent = _agent(a_rng)
    device = DeviceSession(DEVICE_ID, factory, d_rng, FW_VERSION, APP_HASH)
    steps = _exchange(device, agent, device.start_provisioning(),
                      ["PROV_HELLO", "PROV_OFFER", "PROV_CONFIRM", "ACK"])
    assert device.keystore is not None and device.keystore.ak is not None
    ak = device.keystore.ak
    shared = env.x25519_shared(det("prov-dev-eph", 32), env.x25519_public(det("prov-agent-eph", 32)))
    flows.append(_flow("provisioning", device, d_rng, a_rng, steps, {
        "pk": PK.hex(), "po_id": PO_ID, "po_name": PO_NAME, "device_id": DEVICE_ID.hex(),
        "device_eph_priv": det("prov-dev-eph", 32).hex(), "agent_eph_priv": det("prov-agent-eph", 32).hex(),
        "device_eph_pub": env.x25519_public(det("prov-dev-eph", 32)).hex(),
        "agent_eph_pub": env.x25519_public(det("prov-agent-eph", 32)).hex(),
        "nonce_d": det("prov-nonce_d", 16).hex(), "nonce_a": det("prov-nonce_a", 16).hex(),
        "ivs": [det(f"prov-iv-{x}", 16).hex() for x in ("hello", "offer", "confirm", "ack")],
    }, factory, {"shared": shared.hex(), "ak": ak.hex(), "ak_version": 1, "ak_fp": env.fingerprint(ak).hex(),
                 "pk_fp": env.fingerprint(PK).hex()}))

    # --- AK rotation from v1 ---
    start = keystore.KeystoreState(2, PO_ID, PO_NAME, ak_version=1, ak=AK1)
    d_rng = _Recorder([("nonce_d", det("rot-nonce_d", 16)), ("eph_priv", det("rot-dev-eph", 32)),
                       ("iv", det("rot-iv-hello", 16)), ("iv", det("rot-iv-confirm", 16))])
    a_rng = _Recorder([("nonce_a", det("rot-nonce_a", 16)), ("eph_priv", det("rot-agent-eph", 32)),
                       ("iv", det("rot-iv-offer", 16)), ("iv", det("rot-iv-ack", 16))])
    agent = _agent(a_rng)
    _seed_agent_with_ak(agent, 1, AK1)
    device = DeviceSession(DEVICE_ID, start, d_rng, FW_VERSION, APP_HASH)
    steps = _exchange(device, agent, device.start_ak_rotation(),
                      ["AK_ROTATE_HELLO", "AK_ROTATE_OFFER", "AK_ROTATE_CONFIRM", "ACK"])
    assert device.keystore is not None and device.keystore.ak is not None
    ak2 = device.keystore.ak
    flows.append(_flow("ak_rotation", device, d_rng, a_rng, steps, {
        "pk": PK.hex(), "po_id": PO_ID, "po_name": PO_NAME, "device_id": DEVICE_ID.hex(),
        "ak": AK1.hex(), "ak_version": 1,
        "device_eph_priv": det("rot-dev-eph", 32).hex(), "agent_eph_priv": det("rot-agent-eph", 32).hex(),
        "nonce_d": det("rot-nonce_d", 16).hex(), "nonce_a": det("rot-nonce_a", 16).hex(),
        "ivs": [det(f"rot-iv-{x}", 16).hex() for x in ("hello", "offer", "confirm", "ack")],
    }, start, {"ak": ak2.hex(), "ak_version": 2, "ak_fp": env.fingerprint(ak2).hex(),
               "old_ak_fp": env.fingerprint(AK1).hex()}))

    # --- cloud update v1 (mosquitto) -> v2 (aws-iot migration), tested, confirmed ---
    old_cloud = mosquitto_credential(1)
    new_cloud = aws_credential(2)
    start = keystore.KeystoreState(3, PO_ID, PO_NAME, ak_version=1, ak=AK1, cloud=old_cloud)
    d_rng = _Recorder([("nonce_d", det("cloud-nonce_d", 16)), ("iv", det("cloud-iv-request", 16)),
                       ("iv", det("cloud-iv-confirm", 16))])
    a_rng = _Recorder([("nonce_a", det("cloud-nonce_a", 16)), ("iv", det("cloud-iv-update", 16)),
                       ("iv", det("cloud-iv-ack", 16))])
    agent = _agent(a_rng, new_cloud)
    _seed_agent_with_ak(agent, 1, AK1, old_cloud)
    device = DeviceSession(DEVICE_ID, start, d_rng, FW_VERSION, APP_HASH)
    steps = _exchange(device, agent, device.start_cloud_request(), ["CLOUD_REQUEST", "CLOUD_UPDATE"])
    session = device.state
    assert session.value == "cloud_wait_session"
    open_msg = SessionOpen(1, new_cloud, f"devices/{new_cloud.client_id}/status", b"online")
    result = SessionResult(1, SessionStatus.CONNECTED, "")
    out = device.session_result(result)
    assert out.send is not None
    steps.append({"name": "CLOUD_CONFIRM", "dir": "d2a", "message": out.send.hex()})
    ack = agent.handle(out.send)
    steps.append({"name": "ACK", "dir": "a2d", "message": ack.hex()})
    assert device.receive(ack).done
    flows.append(_flow("cloud_update", device, d_rng, a_rng, steps, {
        "pk": PK.hex(), "po_id": PO_ID, "po_name": PO_NAME, "device_id": DEVICE_ID.hex(), "ak": AK1.hex(),
        "ak_version": 1, "old_credential": old_cloud.encode().hex(),
        "nonce_d": det("cloud-nonce_d", 16).hex(), "nonce_a": det("cloud-nonce_a", 16).hex(),
        "ivs": [det(f"cloud-iv-{x}", 16).hex() for x in ("request", "update", "confirm", "ack")],
        "new_credential": new_cloud.encode().hex(),
    }, start, {"cloud_fp": env.fingerprint(new_cloud.secret).hex(),
               "old_cloud_fp": env.fingerprint(old_cloud.secret).hex()},
        {"session": [{"name": "SESSION_OPEN", "dir": "d2g", "payload": open_msg.encode().hex()},
                     {"name": "SESSION_RESULT", "dir": "g2d", "payload": result.encode().hex()}]}))

    # --- check-in ---
    start = keystore.KeystoreState(4, PO_ID, PO_NAME, ak_version=1, ak=AK1, cloud=old_cloud)
    d_rng = _Recorder([("nonce_d", det("checkin-nonce_d", 16)), ("iv", det("checkin-iv", 16))])
    a_rng = _Recorder([("nonce_a", det("checkin-nonce_a", 16)), ("iv", det("checkin-iv-reply", 16))])
    agent = _agent(a_rng)
    _seed_agent_with_ak(agent, 1, AK1, old_cloud)
    agent.set_action(DEVICE_ID, Action.UPDATE_CLOUD)
    device = DeviceSession(DEVICE_ID, start, d_rng, FW_VERSION, APP_HASH)
    body = device.checkin_body()
    steps = _exchange(device, agent, device.start_checkin(), ["CHECKIN", "CHECKIN_REPLY"])
    flows.append(_flow("checkin", device, d_rng, a_rng, steps, {
        "pk": PK.hex(), "po_id": PO_ID, "po_name": PO_NAME, "device_id": DEVICE_ID.hex(), "ak": AK1.hex(),
        "ak_version": 1,
        "nonce_d": det("checkin-nonce_d", 16).hex(), "nonce_a": det("checkin-nonce_a", 16).hex(),
        "ivs": [det("checkin-iv", 16).hex(), det("checkin-iv-reply", 16).hex()],
        "fw_version": FW_VERSION, "app_hash": APP_HASH.hex(), "last_error": 0,
    }, start, {"checkin_body": body.encode().hex(), "ak_fp": env.fingerprint(AK1).hex(),
               "cloud_fp": env.fingerprint(old_cloud.secret).hex(), "action": int(Action.UPDATE_CLOUD)}))
    return {
        "about": ("Each flow runs the device (DeviceSession) against the reference agent with fixed RNG "
                  "outputs. device_rng_draws lists, in order, every value the device takes from its RNG: "
                  "at an exchange start nonce_d (16), eph_priv (32, X25519 flows only), then the IV (16) "
                  "of the first message; each later device message draws its IV just before sealing. "
                  "agent_rng_draws: the reference agent's draws (nonce_a, eph_priv, then one IV per answer). "
                  "keystore_before/after are the device's active record (generation +1 per commit). "
                  "cloud_update.session shows the reference device's test session on the CLOUD channel "
                  "(request_id, topic and payload are the reference's choice, not part of the contract)."),
        "flows": flows,
    }


# === keystore ================================================================================


def keystore_vectors() -> Json:
    ks = keystore
    factory = ks.KeystoreState(1, PO_ID, PO_NAME, pk=PK)
    provisioned = ks.KeystoreState(2, PO_ID, PO_NAME, ak_version=1, ak=AK1)
    with_mosq = ks.KeystoreState(3, PO_ID, PO_NAME, ak_version=1, ak=AK1, cloud=mosquitto_credential(1))
    with_aws = ks.KeystoreState(4, PO_ID, PO_NAME, ak_version=2, ak=det("ak-v2", 32), cloud=aws_credential(2))
    short_name = ks.KeystoreState(7, 1, "A", pk=PK)
    records = [(n, s, ks.encode_record(s)) for n, s in [
        ("factory_pk", factory), ("provisioned_ak", provisioned), ("with_mosquitto_cloud", with_mosq),
        ("with_aws_cloud", with_aws), ("one_char_po_name", short_name)]]

    prov_payload = ks.encode_payload(provisioned)

    def tlv(tag: int, value: bytes) -> bytes:
        return bytes([tag]) + len(value).to_bytes(2, "little") + value

    good = ks.encode_record(provisioned)
    product = tlv(ks.TAG_PRODUCT, PO_ID.to_bytes(4, "little") + PO_NAME.encode())
    ak_tlv = tlv(ks.TAG_AK, (1).to_bytes(4, "little") + AK1)

    def with_commit(image: bytes, word: bytes) -> bytes:
        return word + image[4:]

    bad: list[tuple[str, bytes, str]] = [
        ("commit_blank", with_commit(good, b"\xff\xff\xff\xff"), "not_committed"),
        ("torn_commit_word", with_commit(good, bytes.fromhex("5aa5ffff")), "not_committed"),
        ("torn_commit_word_one_bit", with_commit(good, bytes.fromhex("5aa5c3bc")), "not_committed"),
        ("commit_invalidated", with_commit(good, b"\x00\x00\x00\x00"), "not_committed"),
        ("bad_magic", ks.build_record(2, prov_payload, magic=b"OKKT"), "magic"),
        ("bad_format", ks.build_record(2, prov_payload, fmt=2), "format"),
        ("bad_hash", good[:-1] + bytes([good[-1] ^ 1]), "hash"),
        ("payload_byte_flipped", good[:20] + bytes([good[20] ^ 0x80]) + good[21:], "hash"),
        ("unknown_tag", ks.build_record(2, prov_payload + tlv(0x05, b"x")), "unknown_tag"),
        ("duplicate_tag", ks.build_record(2, prov_payload + ak_tlv), "duplicate_tag"),
        ("payload_len_too_big", ks.build_record(2, prov_payload, payload_len=4097), "payload_len"),
        ("payload_len_past_image", ks.build_record(2, prov_payload, payload_len=len(prov_payload) + 64),
         "hash"),
        ("missing_product", ks.build_record(2, ak_tlv), "missing_product"),
        ("product_name_empty", ks.build_record(2, tlv(ks.TAG_PRODUCT, PO_ID.to_bytes(4, "little")) + ak_tlv),
         "product_length"),
        ("product_name_33", ks.build_record(2, tlv(ks.TAG_PRODUCT, PO_ID.to_bytes(4, "little") + b"N" * 33)
                                            + ak_tlv), "product_length"),
        ("pk_wrong_length", ks.build_record(2, product + tlv(ks.TAG_PK, PK[:31])), "pk_length"),
        ("ak_wrong_length", ks.build_record(2, product + tlv(ks.TAG_AK, AK1)), "ak_length"),
        ("tlv_overruns_payload", ks.build_record(2, product + bytes([ks.TAG_AK, 0x30, 0x00]) + AK1),
         "tlv_truncated"),
        ("tlv_header_truncated", ks.build_record(2, product + bytes([ks.TAG_AK, 0x24])), "tlv_truncated"),
        ("cloud_trailing_byte",
         ks.build_record(2, prov_payload + tlv(ks.TAG_CLOUD, mosquitto_credential().encode() + b"\x00")),
         "cloud"),
        ("cloud_platform_0", ks.build_record(2, prov_payload + tlv(ks.TAG_CLOUD, bytes(
            mosquitto_credential().encode()[:4]) + b"\x00" + mosquitto_credential().encode()[5:])), "cloud"),
        ("all_erased", b"\xff" * 64, "not_committed"),
    ]
    bad_records = []
    for name, image, why in bad:
        try:
            ks.decode_record(image.ljust(ks.AREA_SIZE, b"\xff"))
        except ks.KeystoreError as exc:
            assert exc.why == why, (name, exc.why)  # type: ignore[attr-defined]
        else:
            raise AssertionError(f"bad record {name} decoded")
        bad_records.append({"name": name, "image": image.hex(), "why": why})

    blank = b""
    rec = {n: img for n, _, img in records}
    factory_img, prov_img = rec["factory_pk"], rec["provisioned_ak"]
    prov_gen3 = ks.encode_record(replace(provisioned, generation=3))
    mosq_img = rec["with_mosquitto_cloud"]  # generation 3
    torn_prov = with_commit(prov_img, bytes.fromhex("5aa5ffff"))
    half_erased = b"\xff" * 16 + factory_img[16:]
    boot_in: list[tuple[str, bytes, bytes]] = [
        ("factory_only_b", blank, factory_img),
        ("factory_only_a", factory_img, blank),
        ("both_blank", blank, blank),
        ("both_valid_b_newer_no_pk", prov_img, mosq_img),
        ("both_valid_a_newer_no_pk", mosq_img, prov_img),
        ("equal_generations_a_wins", prov_gen3, mosq_img),
        ("active_no_pk_other_holds_pk_scrub", prov_img, factory_img),
        ("active_pk_other_blank", blank, factory_img),
        ("new_area_torn_commit_old_pk_wins", torn_prov, factory_img),
        ("new_area_torn_commit_old_ak_wins_scrub", with_commit(mosq_img, bytes.fromhex("5aa5ffff")),
         prov_img),
        ("active_invalidated_falls_back_scrub", with_commit(mosq_img, bytes(4)), prov_img),
        ("active_no_pk_other_garbage_scrub", prov_img, det("garbage", 256)),
        ("active_pk_other_garbage_no_scrub", det("garbage", 256), factory_img),
        ("active_no_pk_other_half_erased_scrub", prov_img, half_erased),
        ("none_valid_garbage", det("garbage-a", 128), with_commit(factory_img, bytes(4))),
        ("active_no_pk_other_hash_bad_scrub", mosq_img, prov_img[:-1] + bytes([prov_img[-1] ^ 1])),
    ]
    boot_cases = []
    for name, a, b in boot_in:
        full_a = a.ljust(ks.AREA_SIZE, b"\xff")
        full_b = b.ljust(ks.AREA_SIZE, b"\xff")
        result = ks.boot(full_a, full_b)
        boot_cases.append({"name": name, "area_a": a.hex(), "area_b": b.hex(), "active": result.active,
                           "scrub": result.scrub,
                           "generation": result.state.generation if result.state else None})

    commits = []
    for name, a, b, new in [
        ("provision_from_factory_in_b", blank, factory_img, replace(provisioned, generation=0)),
        ("cloud_update_from_a", prov_img, blank, replace(with_mosq, generation=0)),
    ]:
        plan = ks.commit((a.ljust(ks.AREA_SIZE, b"\xff"), b.ljust(ks.AREA_SIZE, b"\xff")), new)
        commits.append({"name": name, "area_a": a.hex(), "area_b": b.hex(), "state": _state_json(new),
                        "target": plan.target, "generation": plan.state.generation,
                        "ops": [{"op": o.op, "area": o.area, "offset": o.offset, "data": o.data.hex()}
                                for o in plan.ops]})
    return {
        "about": ("images: record bytes from offset 0 through the hash, commit word committed, padding "
                  "0xFF. Area images in boot_cases/commits are prefixes: pad each with 0xFF to area_size. "
                  "bad_records: refused when read as an area (image padded with 0xFF to area_size); 'why' is "
                  "the Python reference's check name. commits: the flash operations "
                  "of flash-layout §3 in order (program = one 4-byte word at offset; every record word is "
                  "programmed, the commit word at offset 0 last)."),
        "area_size": ks.AREA_SIZE,
        "erased_value": ks.ERASED,
        "records": [{"name": n, "state": _state_json(s), "image": img.hex()} for n, s, img in records],
        "bad_records": bad_records,
        "boot_cases": boot_cases,
        "commits": commits,
    }


# === bodies ==================================================================================


def _cred_json(c: CloudCredential) -> Json:
    return {"version": c.version, "platform": c.platform, "endpoint": c.endpoint, "client_id": c.client_id,
            "username": c.username, "secret": c.secret.hex()}


def bodies_vectors() -> Json:
    creds = [
        ("mosquitto", mosquitto_credential(1)),
        ("aws_iot_2_9kb", aws_credential(2)),
        ("all_fields_empty", CloudCredential(1, Platform.MOSQUITTO, "", "", "", b"")),
        ("all_fields_max", CloudCredential(0xFFFFFFFF, Platform.AWS_IOT, "e" * 128, "c" * 128, "u" * 128,
                                           det("max-secret", 3200))),
    ]
    good = mosquitto_credential(1).encode()

    def u16(n: int) -> bytes:
        return n.to_bytes(2, "little")

    base = (1).to_bytes(4, "little") + b"\x01"
    bad_creds = [
        ("version_0", bytes(4) + good[4:], "version must be >= 1"),
        ("platform_0", good[:4] + b"\x00" + good[5:], "platform must be 1 or 2"),
        ("platform_3", good[:4] + b"\x03" + good[5:], "platform must be 1 or 2"),
        ("trailing_byte", good + b"\x00", "nothing may follow the last field"),
        ("truncated_secret", good[:-1], "secret length past the end"),
        ("truncated_in_length", good[:6], "u16 length cut"),
        ("too_short_for_header", good[:4], "shorter than version and platform"),
        ("endpoint_129", base + u16(129) + b"e" * 129 + u16(0) + u16(0) + u16(0), "endpoint > 128"),
        ("client_id_129", base + u16(0) + u16(129) + b"c" * 129 + u16(0) + u16(0), "client_id > 128"),
        ("username_129", base + u16(0) + u16(0) + u16(129) + b"u" * 129 + u16(0), "username > 128"),
        ("secret_3201", base + u16(0) + u16(0) + u16(0) + u16(3201) + b"s" * 3201, "secret > 3200"),
    ]
    for name, data, _ in bad_creds:
        try:
            CloudCredential.decode(data)
        except env.EnvelopeError:
            continue
        raise AssertionError(f"bad credential {name} decoded")

    checkins = [
        ("provisioned_no_cloud",
         Checkin(1, 0, Platform.NONE, env.fingerprint(AK1), bytes(16), FW_VERSION, APP_HASH)),
        ("with_cloud_and_error", Checkin(3, 2, Platform.AWS_IOT, env.fingerprint(det("ak-v3", 32)),
                                         env.fingerprint(aws_credential(2).secret), 0x010203, APP_HASH, 4)),
    ]
    checkin_bad = checkins[0][1].encode()
    bad_checkins = [
        ("length_109", checkin_bad[:-1], "body is exactly 110 bytes"),
        ("length_111", checkin_bad + b"\x00", "body is exactly 110 bytes"),
        ("reserved_nonzero", checkin_bad[:-1] + b"\x01", "reserved must be zero"),
        ("platform_3", checkin_bad[:8] + b"\x03" + checkin_bad[9:], "platform 0..2"),
    ]
    simple = [
        ("prov_hello", MsgType.PROV_HELLO, Hello(det("eph-pub-d", 32)).encode()),
        ("prov_offer_v1", MsgType.PROV_OFFER, Offer(det("eph-pub-a", 32), 1).encode()),
        ("confirm_empty", MsgType.PROV_CONFIRM, Empty().encode()),
        ("cloud_request_have_0", MsgType.CLOUD_REQUEST, CloudRequest(0).encode()),
        ("cloud_confirm_refused", MsgType.CLOUD_CONFIRM, CloudConfirm(7, CloudResult.CLOUD_REFUSED).encode()),
        ("checkin_reply_revoked", MsgType.CHECKIN_REPLY, CheckinReply(Action.REVOKED).encode()),
    ]
    sessions = [
        ("session_open_mosquitto",
         SessionOpen(1, mosquitto_credential(1), f"devices/{DEVICE_ID.hex()}/status", b"online")),
        ("session_open_aws_max_topic_payload",
         SessionOpen(255, aws_credential(2), "t" * 256, det("pl", 256))),
        ("session_result_connected", SessionResult(1, SessionStatus.CONNECTED, "")),
        ("session_result_refused", SessionResult(2, SessionStatus.REFUSED, "not authorised")),
        ("session_result_unreachable", SessionResult(3, SessionStatus.UNREACHABLE, "connection refused")),
        ("session_result_malformed", SessionResult(4, SessionStatus.MALFORMED, "bad request")),
    ]

    def session_json(name: str, m: SessionOpen | SessionResult) -> Json:
        if isinstance(m, SessionOpen):
            fields: Json = {"request_id": m.request_id, "credential": _cred_json(m.credential),
                            "topic": m.topic, "payload": m.payload.hex()}
            kind = "SESSION_OPEN"
        else:
            fields = {"request_id": m.request_id, "status": m.status, "detail": m.detail}
            kind = "SESSION_RESULT"
        return {"name": name, "kind": kind, "fields": fields, "encoded": m.encode().hex()}

    open_good = sessions[0][1].encode()
    bad_sessions = [
        ("unknown_type", b"\x03\x01", "type 1 or 2"),
        ("empty", b"", "type and request_id needed"),
        ("open_trailing_byte", open_good + b"\x00", "nothing may follow the payload"),
        ("open_topic_257", b"\x01\x01" + good + u16(257) + b"t" * 257 + u16(0), "topic > 256"),
        ("open_payload_257", b"\x01\x01" + good + u16(0) + u16(257) + b"p" * 257, "payload > 256"),
        ("result_status_4", b"\x02\x01\x04" + u16(0), "status 0..3"),
        ("result_detail_129", b"\x02\x01\x01" + u16(129) + b"d" * 129, "detail > 128"),
        ("result_detail_not_utf8", b"\x02\x01\x01" + u16(2) + b"\xff\xfe", "detail is UTF-8"),
    ]
    return {
        "about": ("Body encodings of protocol §3 (plaintext before padding) and CLOUD channel payloads "
                  "of §5 (type ‖ body). Variable session fields are u16 length + n bytes, n <= 256 "
                  "(topic, payload) or 128 (detail)."),
        "cloud_credentials": [{"name": n, "credential": _cred_json(c), "encoded": c.encode().hex()}
                              for n, c in creds],
        "bad_cloud_credentials": [{"name": n, "encoded": d.hex(), "why": w} for n, d, w in bad_creds],
        "checkins": [{"name": n, "fields": {
            "ak_version": c.ak_version, "cloud_version": c.cloud_version, "cloud_platform": c.cloud_platform,
            "ak_fp": c.ak_fp.hex(), "cloud_fp": c.cloud_fp.hex(), "fw_version": c.fw_version,
            "app_hash": c.app_hash.hex(), "last_error": c.last_error}, "encoded": c.encode().hex()}
            for n, c in checkins],
        "bad_checkins": [{"name": n, "encoded": d.hex(), "why": w} for n, d, w in bad_checkins],
        "bodies": [{"name": n, "type": int(t), "encoded": b.hex()} for n, t, b in simple],
        "session_messages": [session_json(n, m) for n, m in sessions],
        "bad_session_messages": [{"name": n, "encoded": d.hex(), "why": w} for n, d, w in bad_sessions],
    }


GENERATORS = {
    "frames.json": frames_vectors,
    "envelopes.json": envelopes_vectors,
    "flows.json": flows_vectors,
    "keystore.json": keystore_vectors,
    "bodies.json": bodies_vectors,
}


def write_all(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, gen in GENERATORS.items():
        path = out / name
        _dump(path, gen())
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("tests/vectors"))
    args = parser.parse_args(argv)
    for path in write_all(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
