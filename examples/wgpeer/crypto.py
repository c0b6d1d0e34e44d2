"""The primitives the WireGuard protocol is built from, named as in the whitepaper.

Everything here is a pure function over bytes.  ChaCha20-Poly1305 and X25519 come
from ``cryptography``; BLAKE2s from :mod:`hashlib`; HChaCha20 (only needed for the
XChaCha20-Poly1305 that seals cookie replies) is written out here because no
dependency we carry exposes it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

KEY_LEN: Final = 32
HASH_LEN: Final = 32
MAC_LEN: Final = 16
TAG_LEN: Final = 16
TIMESTAMP_LEN: Final = 12
XNONCE_LEN: Final = 24

#: TAI64 labels seconds from 1970 as 2**62 + seconds, plus the 10 s TAI-UTC offset of 1970.
_TAI64_BASE: Final = 0x400000000000000A
#: Nanoseconds are rounded down to 2**24 ns (about 16.8 ms), as wireguard-go does, so an
#: initiation does not leak a precise clock reading to an observer who can decrypt it later.
_TIMESTAMP_WHITENER: Final = (1 << 24) - 1

_MASK32: Final = 0xFFFFFFFF
_SIGMA: Final = struct.unpack("<4I", b"expand 32-byte k")


def hash_(data: bytes) -> bytes:
    """BLAKE2s-256 of *data* (the whitepaper's HASH)."""
    return hashlib.blake2s(data).digest()


def mac(key: bytes, data: bytes) -> bytes:
    """Keyed BLAKE2s with a 16-byte digest (the whitepaper's MAC)."""
    return hashlib.blake2s(data, digest_size=MAC_LEN, key=key).digest()


def hmac_(key: bytes, data: bytes) -> bytes:
    """HMAC over BLAKE2s-256 (the whitepaper's HMAC, used only inside the KDF)."""
    return hmac.new(key, data, hashlib.blake2s).digest()


def kdf1(key: bytes, data: bytes) -> bytes:
    """HKDF with BLAKE2s, one 32-byte output."""
    prk = hmac_(key, data)
    return hmac_(prk, b"\x01")


def kdf2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    """HKDF with BLAKE2s, two 32-byte outputs."""
    prk = hmac_(key, data)
    t1 = hmac_(prk, b"\x01")
    return t1, hmac_(prk, t1 + b"\x02")


def kdf3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    """HKDF with BLAKE2s, three 32-byte outputs."""
    prk = hmac_(key, data)
    t1 = hmac_(prk, b"\x01")
    t2 = hmac_(prk, t1 + b"\x02")
    return t1, t2, hmac_(prk, t2 + b"\x03")


def aead_nonce(counter: int) -> bytes:
    """The 96-bit ChaCha20-Poly1305 nonce: 32 zero bits, then the counter little-endian."""
    return b"\x00\x00\x00\x00" + counter.to_bytes(8, "little")


def aead_seal(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> bytes:
    """ChaCha20-Poly1305 encryption with WireGuard's counter nonce."""
    return ChaCha20Poly1305(key).encrypt(aead_nonce(counter), plaintext, ad)


def aead_open(key: bytes, counter: int, ciphertext: bytes, ad: bytes) -> bytes | None:
    """Decrypt and authenticate; ``None`` when the tag does not verify."""
    try:
        return ChaCha20Poly1305(key).decrypt(aead_nonce(counter), ciphertext, ad)
    except InvalidTag:
        return None


def _quarter_round(s: list[int], a: int, b: int, c: int, d: int) -> None:
    s[a] = (s[a] + s[b]) & _MASK32
    x = s[d] ^ s[a]
    s[d] = ((x << 16) | (x >> 16)) & _MASK32
    s[c] = (s[c] + s[d]) & _MASK32
    x = s[b] ^ s[c]
    s[b] = ((x << 12) | (x >> 20)) & _MASK32
    s[a] = (s[a] + s[b]) & _MASK32
    x = s[d] ^ s[a]
    s[d] = ((x << 8) | (x >> 24)) & _MASK32
    s[c] = (s[c] + s[d]) & _MASK32
    x = s[b] ^ s[c]
    s[b] = ((x << 7) | (x >> 25)) & _MASK32


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20: derive a 32-byte subkey from a key and the first 16 bytes of an XNonce."""
    if len(key) != KEY_LEN or len(nonce16) != 16:
        raise ValueError("hchacha20 needs a 32-byte key and a 16-byte nonce")
    s = [*_SIGMA, *struct.unpack("<8I", key), *struct.unpack("<4I", nonce16)]
    for _ in range(10):
        _quarter_round(s, 0, 4, 8, 12)
        _quarter_round(s, 1, 5, 9, 13)
        _quarter_round(s, 2, 6, 10, 14)
        _quarter_round(s, 3, 7, 11, 15)
        _quarter_round(s, 0, 5, 10, 15)
        _quarter_round(s, 1, 6, 11, 12)
        _quarter_round(s, 2, 7, 8, 13)
        _quarter_round(s, 3, 4, 9, 14)
    return struct.pack("<8I", *s[0:4], *s[12:16])


def xaead_seal(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """XChaCha20-Poly1305 encryption (24-byte random nonce), as used for cookie replies."""
    subkey = hchacha20(key, nonce[:16])
    return ChaCha20Poly1305(subkey).encrypt(b"\x00" * 4 + nonce[16:24], plaintext, ad)


def xaead_open(key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes) -> bytes | None:
    """XChaCha20-Poly1305 decryption; ``None`` when the tag does not verify."""
    subkey = hchacha20(key, nonce[:16])
    try:
        return ChaCha20Poly1305(subkey).decrypt(b"\x00" * 4 + nonce[16:24], ciphertext, ad)
    except InvalidTag:
        return None


def tai64n(wall_time: float) -> bytes:
    """The 12-byte TAI64N label of a wall-clock time (seconds since the epoch), whitened."""
    seconds = int(wall_time // 1)
    nanos = int((wall_time - seconds) * 1e9) & ~_TIMESTAMP_WHITENER
    return struct.pack(">QI", _TAI64_BASE + seconds, min(nanos, 999_999_999))


# -- Curve25519 -------------------------------------------------------------------------------


def generate_private_key() -> bytes:
    """A fresh random X25519 private key, clamped the way ``wg genkey`` prints it."""
    return clamp(X25519PrivateKey.generate().private_bytes_raw())


def clamp(private_key: bytes) -> bytes:
    """Clamp a scalar as RFC 7748 does (X25519 clamps anyway; ``wg`` shows keys clamped)."""
    b = bytearray(private_key)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


def public_key(private_key: bytes) -> bytes:
    """The X25519 public key of *private_key*."""
    return X25519PrivateKey.from_private_bytes(private_key).public_key().public_bytes_raw()


def dh(private_key: bytes, public: bytes) -> bytes | None:
    """X25519; ``None`` for a low-order public key (an all-zero shared secret)."""
    try:
        shared = X25519PrivateKey.from_private_bytes(private_key).exchange(
            X25519PublicKey.from_public_bytes(public)
        )
    except ValueError:
        # cryptography refuses the all-zero result itself; same meaning.
        return None
    if shared == bytes(KEY_LEN):
        return None
    return shared


# -- key text ---------------------------------------------------------------------------------


def encode_key(key: bytes) -> str:
    """Base64 text of a 32-byte key, as ``wg`` prints it."""
    return base64.b64encode(key).decode("ascii")


def decode_key(text: str) -> bytes:
    """Parse base64 key text; raises :exc:`ValueError` unless it is exactly 32 bytes."""
    text = text.strip()
    if len(text) != 44 or not text.endswith("="):
        raise ValueError("a key is 44 characters of base64 ending in '='")
    try:
        key = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"a key must be base64: {exc}") from None
    if len(key) != KEY_LEN:
        raise ValueError("a key must decode to 32 bytes")
    return key
