"""The envelope's fast paths (protocol/envelope.py) give the library's bytes exactly: HKDF on
hmac.digest, CBC chained over a cached ECB context, PKCS#7 by hand, the bounded per-root cache."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives import hmac as chmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from otakey.protocol import envelope as env
from otakey.protocol.messages import KeyKind, MsgType


def _library_hkdf(ikm: bytes, info: bytes, length: int, salt: bytes | None) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


@pytest.mark.parametrize("salt", [None, b"", b"s" * 32, b"\x01" * 7])
def test_hkdf_equals_the_library_hkdf_for_every_length_up_to_three_blocks(salt: bytes | None) -> None:
    ikm, info = os.urandom(32), b"OTA-Key test info"
    for length in range(1, 97):
        assert env.hkdf(ikm, info, length, salt=salt) == _library_hkdf(ikm, info, length, salt or None)


def test_derive_keys_equals_two_library_hkdfs() -> None:
    for _ in range(20):
        root = os.urandom(32)
        assert env.derive_keys(root) == (_library_hkdf(root, env.ENC_INFO, 16, None),
                                         _library_hkdf(root, env.MAC_INFO, 32, None))


def test_hkdf_refuses_lengths_outside_rfc5869() -> None:
    with pytest.raises(ValueError):
        env.hkdf(bytes(32), b"", 0)
    with pytest.raises(ValueError):
        env.hkdf(bytes(32), b"", 255 * 32 + 1)


def test_pkcs7_pad_equals_the_library_padder_for_lengths_0_to_48() -> None:
    for n in range(49):
        body = os.urandom(n)
        padder = padding.PKCS7(128).padder()
        assert env.pkcs7_pad(body) == padder.update(body) + padder.finalize()


def _library_seal(header: bytes, root: bytes, iv: bytes, plain: bytes) -> bytes:
    enc_key, mac_key = env.derive_keys(root)
    encryptor = Cipher(algorithms.AES(enc_key), modes.CBC(iv)).encryptor()
    signed = header + iv + encryptor.update(plain) + encryptor.finalize()
    mac = chmac.HMAC(mac_key, hashes.SHA256())
    mac.update(signed)
    return signed + mac.finalize()


def test_seal_raw_equals_library_cbc_and_hmac_on_both_sides_of_the_chaining_limit() -> None:
    # 1..40 blocks: the hand-chained path (<= 16 blocks) and the one-cipher-object path beyond.
    header = env.Header(MsgType.CHECKIN, KeyKind.AK, 1, os.urandom(12), os.urandom(16)).pack()
    for blocks in range(1, 41):
        root, iv, plain = os.urandom(32), os.urandom(16), os.urandom(16 * blocks)
        assert env.seal_raw(header, root, iv, plain) == _library_seal(header, root, iv, plain)


def test_cbc_decrypt_equals_the_library_for_1_to_40_blocks() -> None:
    for blocks in range(1, 41):
        root, iv, ct = os.urandom(32), os.urandom(16), os.urandom(16 * blocks)
        keys = env._keys_of(root)
        decryptor = Cipher(algorithms.AES(keys.enc_key), modes.CBC(iv)).decryptor()
        assert env._cbc_decrypt(keys, iv, ct) == decryptor.update(ct) + decryptor.finalize()


def test_open_message_reads_what_the_library_sealed() -> None:
    root, iv, body = os.urandom(32), os.urandom(16), os.urandom(32)
    header = env.Header(MsgType.AK_ROTATE_HELLO, KeyKind.AK, 1, os.urandom(12), os.urandom(16))
    padder = padding.PKCS7(128).padder()
    message = _library_seal(header.pack(), root, iv, padder.update(body) + padder.finalize())
    assert env.open_message(message, lambda _h: root) == (header, body)


def test_tampered_message_is_still_refused_with_the_cached_keys() -> None:
    root = os.urandom(32)
    header = env.Header(MsgType.AK_ROTATE_HELLO, KeyKind.AK, 1, os.urandom(12), os.urandom(16))
    message = env.seal(header, root, os.urandom(16), os.urandom(32))
    assert env.open_message(message, lambda _h: root)[1]  # warms the cache for this root
    for i in (0, 60, len(message) - 1):
        bad = bytearray(message)
        bad[i] ^= 1
        with pytest.raises(env.EnvelopeError):
            env.open_message(bytes(bad), lambda _h: root)


def test_root_key_cache_is_bounded_and_never_shows_a_key() -> None:
    for _ in range(env._root_keys.cache_info().maxsize + 50):
        env._keys_of(os.urandom(32))
    info = env._root_keys.cache_info()
    assert info.currsize <= info.maxsize == 2048
    root = os.urandom(32)
    keys = env._keys_of(root)
    assert keys.mac_key.hex() not in repr(keys) and root.hex() not in repr(keys)
    with pytest.raises(ValueError):
        env._keys_of(bytes(31))
