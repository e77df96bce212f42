"""Message header and encrypt-then-MAC envelope of protocol §2, ERROR messages (§3.6) and the
derived values of §2.3.

Every envelope failure raises :class:`~otakey.errors.EnvelopeError` with one message text; the
failing check is kept in its ``reason`` attribute for tests and logs (never a key).
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from otakey.errors import EnvelopeError
from otakey.protocol.messages import (
    ALLOWED_KEY_KINDS,
    BODY_LENGTHS,
    CloudCredential,
    ErrorCode,
    KeyKind,
    MsgType,
    reject,
)

VERSION = 1
HEADER_LEN = 52
IV_LEN = 16
TAG_LEN = 32
NONCE_LEN = 16
ID_LEN = 12
KEY_LEN = 32
MAX_BODY = 3840
OVERHEAD = HEADER_LEN + IV_LEN + TAG_LEN  # 100
MIN_MESSAGE = OVERHEAD + 16
MAX_MESSAGE = OVERHEAD + (MAX_BODY // 16 + 1) * 16
ERROR_LEN = HEADER_LEN + 1

ENC_INFO = b"OTA-Key v1 enc"
MAC_INFO = b"OTA-Key v1 mac"
AK_INFO = b"OTA-Key v1 AK"
FP_LABEL = b"OTA-Key v1 fingerprint"

_HEADER_FMT = "<BBBBI12s16s16s"
ZERO_NONCE = bytes(NONCE_LEN)


@dataclass(frozen=True)
class Header:
    """The 52-byte header of §2.1 (``reserved`` is always written as 0)."""

    type: int
    key_kind: int
    key_ref: int
    device_id: bytes
    nonce_d: bytes
    nonce_a: bytes = ZERO_NONCE
    version: int = VERSION

    def __post_init__(self) -> None:
        if len(self.device_id) != ID_LEN:
            raise ValueError("device_id must be 12 bytes")
        if len(self.nonce_d) != NONCE_LEN or len(self.nonce_a) != NONCE_LEN:
            raise ValueError("nonces must be 16 bytes")
        if not 0 <= self.key_ref <= 0xFFFFFFFF:
            raise ValueError("key_ref must fit 32 bits")
        for name in ("version", "type", "key_kind"):
            if not 0 <= getattr(self, name) <= 0xFF:
                raise ValueError(f"{name} must fit one byte")

    def pack(self) -> bytes:
        return struct.pack(_HEADER_FMT, self.version, self.type, self.key_kind, 0, self.key_ref,
                           bytes(self.device_id), bytes(self.nonce_d), bytes(self.nonce_a))

    @classmethod
    def unpack(cls, data: bytes) -> Header:
        """Parse the first 52 bytes without judging them (see :func:`check_header`)."""
        if len(data) < HEADER_LEN:
            raise reject("length")
        version, mtype, kind, reserved, key_ref, dev, nd, na = struct.unpack_from(_HEADER_FMT, data)
        if reserved != 0:
            raise reject("reserved")
        return cls(mtype, kind, key_ref, dev, nd, na, version)


def check_header(h: Header) -> None:
    """§2.2 step 2: version, type known (an envelope type), key kind allowed for the type."""
    if h.version != VERSION:
        raise reject("version")
    allowed = ALLOWED_KEY_KINDS.get(h.type)
    if allowed is None:
        raise reject("type")
    if h.key_kind not in allowed:
        raise reject("key_kind")


# --- key derivation -------------------------------------------------------------------------


_HASH_LEN = 32


def _hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 §2.3 over HMAC-SHA256: T(i) = HMAC(PRK, T(i-1) ‖ info ‖ i), first ``length`` bytes."""
    if not 0 < length <= 255 * _HASH_LEN:
        raise ValueError("HKDF output length out of range")
    out, block = b"", b""
    for i in range(1, -(-length // _HASH_LEN) + 1):
        block = hmac.digest(prk, block + info + bytes((i,)), "sha256")
        out += block
    return out[:length]


def hkdf(ikm: bytes, info: bytes, length: int, salt: bytes | None = None) -> bytes:
    """HKDF-SHA256 (RFC 5869). Written on :func:`hmac.digest`: the library's HKDF object cost
    twice as much per call, and this runs several times per request."""
    # salt None is RFC 5869's default: HashLen zero bytes, which the spec's "" also means.
    prk = hmac.digest(salt or bytes(_HASH_LEN), bytes(ikm), "sha256")
    return _hkdf_expand(prk, bytes(info), length)


def derive_keys(root: bytes) -> tuple[bytes, bytes]:
    """(enc_key 16, mac_key 32) of §2.2: two HKDFs of ``root`` with empty salt, so one extract."""
    if len(root) != KEY_LEN:
        raise ValueError("root key must be 32 bytes")
    prk = hmac.digest(bytes(_HASH_LEN), bytes(root), "sha256")
    return _hkdf_expand(prk, ENC_INFO, 16), _hkdf_expand(prk, MAC_INFO, 32)


_ECB = modes.ECB()  # no state: one object for every key


class _RootKeys:
    """What every message under one root key needs: its two subkeys and AES-ECB contexts of the
    enc key, from which CBC is chained (:func:`_cbc_encrypt`, :func:`_cbc_decrypt`)."""

    __slots__ = ("ecb_dec", "ecb_enc", "enc_key", "mac_key")

    def __init__(self, root: bytes) -> None:
        self.enc_key, self.mac_key = derive_keys(root)
        ecb = Cipher(algorithms.AES(self.enc_key), _ECB)
        self.ecb_enc = ecb.encryptor()
        self.ecb_dec = ecb.decryptor()

    def __repr__(self) -> str:
        return "_RootKeys(<hidden>)"


# A root key is used several times within a second (the agent opens a request and seals its
# answer under the same key; a rotation's CONFIRM and ACK under the new one), and the two HKDFs and
# the cipher set-up cost more than the rest of a message (bench/README.md, goal 1). Bounded, in
# this process's memory only, like the keys themselves; ECB contexts hold no state between whole
# blocks, so sharing one is safe.
@lru_cache(maxsize=2048)
def _root_keys(root: bytes) -> _RootKeys:
    return _RootKeys(root)


def _keys_of(root: bytes) -> _RootKeys:
    if type(root) is not bytes:
        root = bytes(root)  # a hashable, immutable cache key
    if len(root) != KEY_LEN:
        raise ValueError("root key must be 32 bytes")
    return _root_keys(root)


# Up to this many blocks CBC is chained by hand over the cached ECB context (one call per block);
# beyond, one cipher object costs less than the per-block calls.
_CHAIN_BLOCKS = 16


def _cbc_encrypt(keys: _RootKeys, iv: bytes, plain: bytes) -> bytes:
    """AES-128-CBC without padding (``plain`` is whole blocks): C_i = E(P_i xor C_(i-1))."""
    if len(plain) > 16 * _CHAIN_BLOCKS:
        encryptor = _cbc(keys.enc_key, iv).encryptor()
        return encryptor.update(plain) + encryptor.finalize()
    update = keys.ecb_enc.update
    out = []
    prev = int.from_bytes(iv, "big")
    for i in range(0, len(plain), 16):
        block = update((int.from_bytes(plain[i:i + 16], "big") ^ prev).to_bytes(16, "big"))
        out.append(block)
        prev = int.from_bytes(block, "big")
    return b"".join(out)


def _cbc_decrypt(keys: _RootKeys, iv: bytes, ct: bytes) -> bytes:
    """AES-128-CBC decryption of whole blocks: P_i = D(C_i) xor C_(i-1), every block at once."""
    n = len(ct)
    decrypted = keys.ecb_dec.update(ct)
    chain = int.from_bytes(iv + ct[:-16], "big")
    return (int.from_bytes(decrypted, "big") ^ chain).to_bytes(n, "big")


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, "sha256")


def fingerprint(key: bytes) -> bytes:
    """§2.3: names a key without revealing it."""
    return hmac_sha256(key, FP_LABEL)[:16]


def x25519_public(priv: bytes) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return X25519PrivateKey.from_private_bytes(priv).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw)


def x25519_shared(priv: bytes, peer_pub: bytes) -> bytes:
    """RFC 7748 X25519; an all-zero result (low-order peer point) is the uniform error."""
    if len(priv) != 32 or len(peer_pub) != 32:
        raise ValueError("X25519 keys are 32 bytes")
    try:
        shared = X25519PrivateKey.from_private_bytes(priv).exchange(
            X25519PublicKey.from_public_bytes(peer_pub))
    except ValueError:
        # cryptography refuses the all-zero shared secret itself.
        raise reject("low_order_point") from None
    if not any(shared):
        raise reject("low_order_point")
    return shared


def derive_ak(shared: bytes, nonce_d: bytes, nonce_a: bytes, device_id: bytes, po_name: bytes) -> bytes:
    """§2.3: AK = HKDF(shared, salt = nonce_d ‖ nonce_a, info = label ‖ device_id ‖ po_name)."""
    if len(shared) != 32 or len(nonce_d) != 16 or len(nonce_a) != 16 or len(device_id) != 12:
        raise ValueError("bad input length for AK derivation")
    if not 1 <= len(po_name) <= 32:
        raise ValueError("po_name must be 1..32 bytes")
    return hkdf(shared, AK_INFO + device_id + po_name, 32, salt=nonce_d + nonce_a)


# --- envelope ---------------------------------------------------------------------------------


def _cbc(key: bytes, iv: bytes) -> Cipher[modes.CBC]:
    return Cipher(algorithms.AES(key), modes.CBC(iv))


def seal_raw(header_bytes: bytes, root: bytes, iv: bytes, plaintext_blocks: bytes) -> bytes:
    """Encrypt already padded plaintext and MAC it. Only for building test vectors that must
    carry a valid MAC around a deliberately wrong header or padding."""
    if len(iv) != IV_LEN or len(plaintext_blocks) % 16:
        raise ValueError("iv must be 16 bytes and plaintext a block multiple")
    keys = _keys_of(root)
    iv = bytes(iv)
    ct = _cbc_encrypt(keys, iv, bytes(plaintext_blocks))
    signed = bytes(header_bytes) + iv + ct
    return signed + hmac.digest(keys.mac_key, signed, "sha256")


def pkcs7_pad(body: bytes) -> bytes:
    """PKCS#7 to 16-byte blocks: 1..16 bytes, each the count (RFC 5652 §6.3)."""
    n = 16 - len(body) % 16
    return bytes(body) + bytes((n,)) * n


def seal(header: Header, root: bytes, iv: bytes, body: bytes) -> bytes:
    """header ‖ iv ‖ AES-128-CBC(enc_key, iv, PKCS#7(body)) ‖ HMAC-SHA256(mac_key, ...)."""
    check_header(header)
    if len(body) > MAX_BODY:
        raise ValueError(f"body longer than {MAX_BODY} bytes")
    return seal_raw(header.pack(), root, iv, pkcs7_pad(body))


KeyLookup = Callable[[Header], bytes | None]


def open_message(data: bytes, key_lookup: KeyLookup) -> tuple[Header, bytes]:
    """Receive order of §2.2 steps 1–6. Step 3 asks ``key_lookup`` for the root key of the
    header (None: no such key). Step 7 (nonces) belongs to the session, not the codec.
    For CLOUD_UPDATE, step 6 is a full parse of the credential (§3.5)."""
    n = len(data)
    # 1. length
    if not MIN_MESSAGE <= n <= MAX_MESSAGE or (n - OVERHEAD) % 16:
        raise reject("length")
    # 2. header fields
    header = Header.unpack(data)
    check_header(header)
    # 3. key
    root = key_lookup(header)
    if root is None:
        raise reject("no_key")
    # 4. tag, constant time over all 32 bytes
    keys = _keys_of(root)
    signed, tag = bytes(data[:-TAG_LEN]), bytes(data[-TAG_LEN:])
    if not hmac.compare_digest(hmac.digest(keys.mac_key, signed, "sha256"), tag):
        raise reject("mac")
    # 5. decrypt and check padding (only now: the MAC proved a key holder made the ciphertext)
    iv = signed[HEADER_LEN : HEADER_LEN + IV_LEN]
    plain = _cbc_decrypt(keys, iv, signed[HEADER_LEN + IV_LEN :])
    pad = plain[-1]
    if not 1 <= pad <= 16 or plain[-pad:] != bytes([pad]) * pad:
        raise reject("padding")
    body = plain[:-pad]
    # 6. body length for the type
    expected = BODY_LENGTHS[header.type]
    if expected is None:
        if header.type == MsgType.CLOUD_UPDATE:
            CloudCredential.decode(body)
    elif len(body) != expected:
        raise reject("body_length")
    return header, body


# --- ERROR (§3.6) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorMessage:
    code: int
    device_id: bytes = bytes(ID_LEN)
    nonce_d: bytes = ZERO_NONCE
    nonce_a: bytes = ZERO_NONCE

    def pack(self) -> bytes:
        if self.code not in tuple(ErrorCode):
            raise ValueError("unknown error code")
        header = Header(MsgType.ERROR, KeyKind.NONE, 0, self.device_id, self.nonce_d, self.nonce_a)
        return header.pack() + bytes([self.code])

    @classmethod
    def unpack(cls, data: bytes) -> ErrorMessage:
        if len(data) != ERROR_LEN:
            raise reject("length")
        h = Header.unpack(data)
        if (h.version != VERSION or h.type != MsgType.ERROR or h.key_kind != KeyKind.NONE
                or h.key_ref != 0 or data[52] not in tuple(ErrorCode)):
            raise reject("error_message")
        return cls(data[52], h.device_id, h.nonce_d, h.nonce_a)


def is_error_message(data: bytes) -> bool:
    """True if ``data`` has the shape of an ERROR (53 bytes, type 0x7F); envelopes are ≥ 116."""
    return len(data) == ERROR_LEN and data[1] == MsgType.ERROR


def error_reply_for(data: bytes, code: int = ErrorCode.REJECTED) -> bytes:
    """ERROR answering ``data``: echoes device_id and nonces when its header parsed, else zeros."""
    try:
        h = Header.unpack(data)
    except EnvelopeError:
        return ErrorMessage(code).pack()
    return ErrorMessage(code, h.device_id, h.nonce_d, h.nonce_a).pack()
