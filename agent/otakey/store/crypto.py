"""Keys at rest: AES-256-GCM under a key-encryption key (KEK).

Every secret column (a PO's PK, a device's AKs, cloud secrets, stored answers) holds
``format (1) ‖ nonce (12) ‖ ciphertext ‖ tag (16)``. The associated data is the row's identity
(:func:`aad`), so a ciphertext copied into another row — another device, another version — fails
to open instead of handing one device's key to another. The database alone therefore reveals no
key; whoever holds the database *and* the KEK holds every key, so keep them apart (the KEK in a
file readable by the agent only, or in the environment of its service).

The KEK is never used directly: a data key is derived from it with HKDF-SHA256, which leaves room
for other uses of the same KEK later without key reuse across purposes.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from otakey.errors import StorageError

KEK_ENV = "OTAKEY_KEK"
KEK_LEN = 32
FORMAT_V1 = 1
NONCE_LEN = 12
TAG_LEN = 16
_AAD_PREFIX = b"OTA-Key store v1\x00"
_DATA_KEY_INFO = b"OTA-Key store v1 data key"
# A fixed plaintext sealed into every database at creation: opening it proves the KEK is the
# database's own before anything else is read (a wrong KEK would otherwise surface as a confusing
# failure on the first secret read).
KEK_CHECK_PLAINTEXT = b"OTA-Key KEK check"


def aad(kind: str, *parts: bytes | int | str) -> bytes:
    """Associated data naming one secret: its kind and the identity of the row holding it.

    Each part is length-prefixed, so (b"ab", b"c") and (b"a", b"bc") never collide.
    """
    out = []
    for part in (kind, *parts):
        if isinstance(part, int):
            raw = part.to_bytes(8, "little", signed=True)  # struct "<q"
        elif isinstance(part, str):
            raw = part.encode()
        else:
            raw = bytes(part)
        out.append(len(raw).to_bytes(2, "little"))  # struct "<H"
        out.append(raw)
    return b"".join(out)


class Kek:
    """A 32-byte key-encryption key. Seals and opens secrets; never shows its key in repr()."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes | bytearray) or len(key) != KEK_LEN:
            raise ValueError(f"a KEK is exactly {KEK_LEN} bytes")
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_DATA_KEY_INFO)
        data_key = hkdf.derive(bytes(key))
        self._aead = AESGCM(data_key)

    def __repr__(self) -> str:
        return "Kek(<hidden>)"

    @classmethod
    def parse(cls, text: str | bytes) -> Kek:
        """A KEK written as 64 hex digits or base64 of 32 bytes (surrounding whitespace ignored).

        Raw 32-byte binary is accepted from files too, when it is neither hex nor base64.
        """
        raw = text.encode() if isinstance(text, str) else bytes(text)
        stripped = raw.strip()
        if len(stripped) == 2 * KEK_LEN:
            try:
                return cls(binascii.unhexlify(stripped))
            except (binascii.Error, ValueError):
                pass
        try:
            decoded = base64.b64decode(stripped, validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        if len(decoded) == KEK_LEN:
            return cls(decoded)
        if len(raw) == KEK_LEN:
            return cls(raw)
        raise ValueError("a KEK must be 32 bytes, written as 64 hex digits or in base64")

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Kek:
        return cls.parse(Path(path).read_bytes())

    @classmethod
    def load(cls, kek_file: str | os.PathLike[str] | None = None,
             environ: dict[str, str] | None = None) -> Kek:
        """The agent's KEK: from ``--kek-file`` if given, else from ``$OTAKEY_KEK``.

        Raises ValueError when neither is set or the value is malformed.
        """
        if kek_file is not None:
            return cls.from_file(kek_file)
        env = os.environ if environ is None else environ
        value = env.get(KEK_ENV)
        if not value:
            raise ValueError(f"no KEK: pass --kek-file or set {KEK_ENV} (32 bytes, hex or base64)")
        return cls.parse(value)

    @classmethod
    def generate(cls) -> tuple[Kek, str]:
        """A fresh random KEK and its hex text (to write into a KEK file)."""
        key = os.urandom(KEK_LEN)
        return cls(key), key.hex()

    def seal(self, plaintext: bytes, associated: bytes) -> bytes:
        nonce = os.urandom(NONCE_LEN)
        ct = self._aead.encrypt(nonce, bytes(plaintext), _AAD_PREFIX + associated)
        return bytes([FORMAT_V1]) + nonce + ct

    def open(self, blob: bytes, associated: bytes) -> bytes:
        """Decrypt a sealed value; StorageError if it was sealed under another KEK, for another
        row, or altered."""
        blob = bytes(blob)
        if len(blob) < 1 + NONCE_LEN + TAG_LEN or blob[0] != FORMAT_V1:
            raise StorageError("a sealed value is malformed")
        try:
            return self._aead.decrypt(blob[1:1 + NONCE_LEN], blob[1 + NONCE_LEN:], _AAD_PREFIX + associated)
        except InvalidTag:
            raise StorageError("a sealed value does not open under this KEK for this row") from None
