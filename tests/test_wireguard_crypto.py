"""Primitives: HChaCha20/XChaCha20-Poly1305, the KDF, TAI64N, key text, and a full
handshake between random keys."""

from __future__ import annotations

import hashlib
import hmac
import struct
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

# The protocol core needs `cryptography` (X25519, ChaCha20-Poly1305).
pytest.importorskip("cryptography")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from wgpeer import crypto, noise

keys = st.binary(min_size=32, max_size=32)


def hchacha20_from_keystream(key: bytes, nonce16: bytes) -> bytes:
    """An independent HChaCha20: a ChaCha20 block minus its input words.

    A ChaCha20 block is ``rounds(state) + state``; HChaCha20 is words 0-3 and 12-15 of
    ``rounds(state)`` for the same state (the 16 nonce bytes in the counter+nonce slot).
    """
    block = Cipher(algorithms.ChaCha20(key, nonce16), mode=None).encryptor().update(bytes(64))
    out = struct.unpack("<16I", block)
    state = struct.unpack("<4I", b"expand 32-byte k") + (0,) * 8 + struct.unpack("<4I", nonce16)
    words = [(out[i] - state[i]) & 0xFFFFFFFF for i in (0, 1, 2, 3, 12, 13, 14, 15)]
    return struct.pack("<8I", *words)


def test_hchacha20_published_vector() -> None:
    # draft-irtf-cfrg-xchacha, section 2.2.1.
    key = bytes(range(32))
    nonce = bytes.fromhex("000000090000004a0000000031415927")
    expected = "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"
    assert crypto.hchacha20(key, nonce).hex() == expected
    assert hchacha20_from_keystream(key, nonce).hex() == expected


@settings(deadline=None)
@given(keys, st.binary(min_size=16, max_size=16))
def test_hchacha20_matches_keystream_oracle(key: bytes, nonce: bytes) -> None:
    assert crypto.hchacha20(key, nonce) == hchacha20_from_keystream(key, nonce)


@settings(deadline=None)
@given(keys, st.binary(min_size=24, max_size=24), st.binary(max_size=64), st.binary(max_size=32))
def test_xaead_round_trip_and_tamper(key: bytes, nonce: bytes, text: bytes, ad: bytes) -> None:
    sealed = crypto.xaead_seal(key, nonce, text, ad)
    assert len(sealed) == len(text) + 16
    assert crypto.xaead_open(key, nonce, sealed, ad) == text
    assert crypto.xaead_open(key, nonce, sealed, ad + b"x") is None
    flipped = bytes([sealed[0] ^ 1]) + sealed[1:]
    assert crypto.xaead_open(key, nonce, flipped, ad) is None


@settings(deadline=None)
@given(keys, st.integers(0, 2**64 - 1), st.binary(max_size=64))
def test_aead_round_trip(key: bytes, counter: int, text: bytes) -> None:
    sealed = crypto.aead_seal(key, counter, text, b"ad")
    assert crypto.aead_open(key, counter, sealed, b"ad") == text
    assert crypto.aead_open(key, counter ^ 1, sealed, b"ad") is None


@settings(deadline=None)
@given(keys, st.binary(max_size=100))
def test_kdf_is_hkdf_over_hmac_blake2s(key: bytes, data: bytes) -> None:
    def h(k: bytes, m: bytes) -> bytes:
        return hmac.new(k, m, hashlib.blake2s).digest()

    prk = h(key, data)
    t1 = h(prk, b"\x01")
    t2 = h(prk, t1 + b"\x02")
    t3 = h(prk, t2 + b"\x03")
    assert crypto.kdf1(key, data) == t1
    assert crypto.kdf2(key, data) == (t1, t2)
    assert crypto.kdf3(key, data) == (t1, t2, t3)


def test_noise_constants() -> None:
    assert noise.INITIAL_CHAIN_KEY.hex().startswith("60e26dae")
    assert crypto.hash_(noise.INITIAL_CHAIN_KEY + noise.IDENTIFIER) == noise.INITIAL_HASH


@settings(deadline=None)
@given(st.floats(0, 2**40), st.floats(0, 2**40))
def test_tai64n_is_monotonic(a: float, b: float) -> None:
    if a <= b:
        assert crypto.tai64n(a) <= crypto.tai64n(b)
    assert len(crypto.tai64n(a)) == 12


def test_tai64n_known_value_and_whitening() -> None:
    stamp = crypto.tai64n(1_700_000_000.999)
    seconds, nanos = struct.unpack(">QI", stamp)
    assert seconds == 0x400000000000000A + 1_700_000_000
    assert nanos % (1 << 24) == 0 and 999_000_000 - (1 << 24) < nanos <= 999_000_000


@settings(deadline=None)
@given(keys)
def test_key_text_round_trip(key: bytes) -> None:
    assert crypto.decode_key(crypto.encode_key(key)) == key


@pytest.mark.parametrize(
    "text", ["", "abc", "A" * 44, "!" * 43 + "=", crypto.encode_key(bytes(31)) + "AA"]
)
def test_bad_key_text(text: str) -> None:
    with pytest.raises(ValueError, match="key"):
        crypto.decode_key(text)


def test_low_order_point_gives_no_shared_secret() -> None:
    assert crypto.dh(crypto.generate_private_key(), bytes(32)) is None


@settings(max_examples=20, deadline=None)
@given(keys, keys, keys, keys, st.one_of(st.none(), keys), st.integers(0, 2**32 - 1))
def test_handshake_between_random_keys(
    i_priv: bytes, r_priv: bytes, i_eph: bytes, r_eph: bytes, psk: bytes | None, index: int
) -> None:
    i_pub, r_pub = crypto.public_key(i_priv), crypto.public_key(r_priv)
    ss_i, ss_r = crypto.dh(i_priv, r_pub), crypto.dh(r_priv, i_pub)
    assert ss_i is not None and ss_i == ss_r
    msg, state = noise.create_initiation(
        local_private=i_priv,
        remote_static=r_pub,
        static_static=ss_i,
        sender_index=index,
        ephemeral_private=i_eph,
        timestamp=crypto.tai64n(1.0),
    )
    consumed = noise.consume_initiation(
        local_private=r_priv, local_public=r_pub, message=msg, static_static_for={i_pub: ss_i}
    )
    assert consumed is not None and consumed.remote_static == i_pub
    assert (
        noise.consume_initiation(
            local_private=r_priv, local_public=r_pub, message=msg, static_static_for={}
        )
        is None
    )
    response, r_keys = noise.create_response(
        consumed=consumed, preshared_key=psk, sender_index=index ^ 1, ephemeral_private=r_eph
    )
    i_keys = noise.consume_response(
        state=state, local_private=i_priv, preshared_key=psk, message=response
    )
    assert i_keys is not None
    assert i_keys.send_key == r_keys.receive_key and i_keys.receive_key == r_keys.send_key
    assert i_keys.remote_index == index ^ 1 and r_keys.remote_index == index
