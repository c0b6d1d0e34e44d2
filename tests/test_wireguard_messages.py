"""Message formats: build/parse round trips, and parsers that never raise."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

# The protocol core needs `cryptography` (X25519, ChaCha20-Poly1305).
pytest.importorskip("cryptography")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from wgpeer import messages as m

u32 = st.integers(0, 2**32 - 1)


def b(n: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=n, max_size=n)


@settings(deadline=None)
@given(u32, b(32), b(48), b(28), b(16), b(16))
def test_initiation_round_trip(
    sender: int, eph: bytes, static: bytes, ts: bytes, mac1: bytes, mac2: bytes
) -> None:
    msg = m.Initiation(sender, eph, static, ts, mac1, mac2)
    wire = msg.to_bytes()
    assert len(wire) == m.INITIATION_LEN == 148
    assert wire[:4] == b"\x01\x00\x00\x00"
    assert m.parse_initiation(wire) == msg
    assert m.message_type(wire) == m.MESSAGE_INITIATION


@settings(deadline=None)
@given(u32, u32, b(32), b(16), b(16), b(16))
def test_response_round_trip(
    sender: int, receiver: int, eph: bytes, empty: bytes, mac1: bytes, mac2: bytes
) -> None:
    msg = m.Response(sender, receiver, eph, empty, mac1, mac2)
    wire = msg.to_bytes()
    assert len(wire) == m.RESPONSE_LEN == 92
    assert m.parse_response(wire) == msg


@settings(deadline=None)
@given(u32, b(24), b(32))
def test_cookie_reply_round_trip(receiver: int, nonce: bytes, cookie: bytes) -> None:
    msg = m.CookieReply(receiver, nonce, cookie)
    wire = msg.to_bytes()
    assert len(wire) == m.COOKIE_REPLY_LEN == 64
    assert m.parse_cookie_reply(wire) == msg


@settings(deadline=None)
@given(u32, st.integers(0, 2**64 - 1), st.binary(min_size=16, max_size=64))
def test_transport_header_round_trip(receiver: int, counter: int, body: bytes) -> None:
    wire = m.transport_header(receiver, counter) + body
    assert m.parse_transport_header(wire) == (receiver, counter)


@settings(deadline=None)
@given(st.binary(max_size=200))
def test_parsers_never_raise_and_only_accept_their_exact_shape(data: bytes) -> None:
    init = m.parse_initiation(data)
    resp = m.parse_response(data)
    cookie = m.parse_cookie_reply(data)
    transport = m.parse_transport_header(data)
    assert init is None or (len(data) == 148 and data[:4] == b"\x01\0\0\0")
    assert resp is None or (len(data) == 92 and data[:4] == b"\x02\0\0\0")
    assert cookie is None or (len(data) == 64 and data[:4] == b"\x03\0\0\0")
    assert transport is None or (len(data) >= 32 and data[:4] == b"\x04\0\0\0")
    if init is not None:
        assert init.to_bytes() == data
    if resp is not None:
        assert resp.to_bytes() == data
    if cookie is not None:
        assert cookie.to_bytes() == data
    assert m.message_type(data) in (0, 1, 2, 3, 4)


@settings(deadline=None)
@given(st.sampled_from([1, 2, 3, 4]), st.integers(1, 255))
def test_nonzero_reserved_bytes_are_refused(kind: int, reserved: int) -> None:
    for size in (148, 92, 64, 48):
        wire = bytes([kind, reserved, 0, 0]) + bytes(size - 4)
        assert m.message_type(wire) == 0
        assert m.parse_initiation(wire) is None
        assert m.parse_response(wire) is None
        assert m.parse_cookie_reply(wire) is None
        assert m.parse_transport_header(wire) is None
