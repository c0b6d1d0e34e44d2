"""Our handshake reproduces wireguard-go's bytes exactly (tests/data/wireguard/README.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

# The protocol core needs `cryptography` (X25519, ChaCha20-Poly1305).
pytest.importorskip("cryptography")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from wgpeer import crypto, messages, noise
from wgpeer.cookie import CookieChecker, CookieGenerator

VECTORS = json.loads(
    (Path(__file__).parent / "data" / "wireguard" / "handshake_vectors.json").read_text()
)


def _b(vector: dict[str, Any], key: str) -> bytes:
    return bytes.fromhex(vector[key])


def _psk(vector: dict[str, Any]) -> bytes | None:
    return None if vector["preshared_key"] is None else _b(vector, "preshared_key")


@pytest.fixture(params=VECTORS, ids=[v["name"] for v in VECTORS])
def vector(request: pytest.FixtureRequest) -> dict[str, Any]:
    value: dict[str, Any] = request.param
    return value


def test_public_keys(vector: dict[str, Any]) -> None:
    assert crypto.public_key(_b(vector, "initiator_private")) == _b(vector, "initiator_public")
    assert crypto.public_key(_b(vector, "responder_private")) == _b(vector, "responder_public")


def _initiate(vector: dict[str, Any]) -> tuple[bytes, noise.InitiatorHandshake]:
    go_initiation = messages.parse_initiation(_b(vector, "initiation"))
    assert go_initiation is not None
    init_private = _b(vector, "initiator_private")
    resp_public = _b(vector, "responder_public")
    static_static = crypto.dh(init_private, resp_public)
    assert static_static is not None
    message, state = noise.create_initiation(
        local_private=init_private,
        remote_static=resp_public,
        static_static=static_static,
        sender_index=go_initiation.sender,
        ephemeral_private=_b(vector, "initiator_ephemeral"),
        timestamp=_b(vector, "timestamp"),
    )
    return CookieGenerator(resp_public).add_macs(message.body(), now=0.0), state


def test_initiation_bytes(vector: dict[str, Any]) -> None:
    ours, _ = _initiate(vector)
    assert ours.hex() == vector["initiation"]


def test_responder_consumes_and_answers_byte_for_byte(vector: dict[str, Any]) -> None:
    resp_private = _b(vector, "responder_private")
    init_public = _b(vector, "initiator_public")
    checker = CookieChecker(_b(vector, "responder_public"))
    assert checker.check_mac1(_b(vector, "initiation"))
    parsed = messages.parse_initiation(_b(vector, "initiation"))
    assert parsed is not None
    static_static = crypto.dh(resp_private, init_public)
    assert static_static is not None
    consumed = noise.consume_initiation(
        local_private=resp_private,
        local_public=_b(vector, "responder_public"),
        message=parsed,
        static_static_for={init_public: static_static},
    )
    assert consumed is not None
    assert consumed.remote_static == init_public
    assert consumed.timestamp == _b(vector, "timestamp")
    go_response = messages.parse_response(_b(vector, "response"))
    assert go_response is not None
    response, keys = noise.create_response(
        consumed=consumed,
        preshared_key=_psk(vector),
        sender_index=go_response.sender,
        ephemeral_private=_b(vector, "responder_ephemeral"),
    )
    wire = CookieGenerator(init_public).add_macs(response.body(), now=0.0)
    assert wire.hex() == vector["response"]
    assert keys.send_key.hex() == vector["responder_send_key"]
    assert keys.receive_key.hex() == vector["responder_receive_key"]
    assert not keys.is_initiator


def test_initiator_consumes_response_and_seals_first_message(vector: dict[str, Any]) -> None:
    _, state = _initiate(vector)
    go_response = messages.parse_response(_b(vector, "response"))
    assert go_response is not None
    keys = noise.consume_response(
        state=state,
        local_private=_b(vector, "initiator_private"),
        preshared_key=_psk(vector),
        message=go_response,
    )
    assert keys is not None
    assert keys.send_key.hex() == vector["initiator_send_key"]
    assert keys.receive_key.hex() == vector["initiator_receive_key"]
    plaintext = _b(vector, "plaintext")
    padded = plaintext + bytes(-len(plaintext) % 16)
    sealed = messages.transport_header(keys.remote_index, 0) + crypto.aead_seal(
        keys.send_key, 0, padded, b""
    )
    assert sealed.hex() == vector["first_transport"]


def test_wrong_preshared_key_fails(vector: dict[str, Any]) -> None:
    _, state = _initiate(vector)
    go_response = messages.parse_response(_b(vector, "response"))
    assert go_response is not None
    wrong = bytes(32) if _psk(vector) is not None else b"\x01" * 32
    keys = noise.consume_response(
        state=state,
        local_private=_b(vector, "initiator_private"),
        preshared_key=wrong,
        message=go_response,
    )
    assert keys is None


def test_cookie_reply_and_mac2(vector: dict[str, Any]) -> None:
    source = ("192.0.2.1", 51820)
    from wgpeer.cookie import endpoint_bytes

    assert endpoint_bytes(source) == _b(vector, "cookie_source")
    go_reply = messages.parse_cookie_reply(_b(vector, "cookie_reply"))
    assert go_reply is not None
    # Our checker, with the same secret and wireguard-go's random nonce, seals the same reply.
    checker = CookieChecker(
        _b(vector, "responder_public"), random_bytes=lambda n: go_reply.nonce[:n]
    )
    checker.set_secret(_b(vector, "cookie_secret"), now=0.0)
    initiation = _b(vector, "initiation")
    ours = checker.create_reply(initiation, go_reply.receiver, source, now=1.0)
    assert ours.to_bytes().hex() == vector["cookie_reply"]
    # Our generator opens wireguard-go's reply and computes the same mac2.
    generator = CookieGenerator(_b(vector, "responder_public"))
    generator.add_macs(initiation[:-32], now=0.0)
    assert generator.consume_reply(go_reply, now=0.0)
    again = generator.add_macs(initiation[:-32], now=1.0)
    assert again.hex() == vector["initiation_with_mac2"]
    assert checker.check_mac2(again, source, now=1.0)
    assert not checker.check_mac2(again, ("192.0.2.1", 51821), now=1.0)
