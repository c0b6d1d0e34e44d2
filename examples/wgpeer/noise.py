"""The Noise_IKpsk2 handshake as WireGuard uses it, both roles, as pure functions.

The functions take every secret and every random choice as arguments (local static
key, ephemeral key, sender index, timestamp), so that test vectors from another
implementation can be reproduced byte for byte; the device supplies fresh ones.
mac1/mac2 are not handled here (see :mod:`.cookie`): messages come back with zero macs.
"""

from __future__ import annotations

from typing import Final

import attrs

from .crypto import (
    KEY_LEN,
    aead_open,
    aead_seal,
    dh,
    hash_,
    kdf1,
    kdf2,
    kdf3,
    public_key,
)
from .messages import Initiation, Response

CONSTRUCTION: Final = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER: Final = b"WireGuard v1 zx2c4 Jason@zx2c4.com"

INITIAL_CHAIN_KEY: Final = hash_(CONSTRUCTION)
INITIAL_HASH: Final = hash_(INITIAL_CHAIN_KEY + IDENTIFIER)

_ZERO_PSK: Final = bytes(KEY_LEN)


@attrs.frozen
class InitiatorHandshake:
    """What the initiator remembers between sending an initiation and its response."""

    local_index: int
    local_ephemeral: bytes = attrs.field(repr=False)
    remote_static: bytes
    chain_key: bytes = attrs.field(repr=False)
    hash: bytes = attrs.field(repr=False)


@attrs.frozen
class ConsumedInitiation:
    """A responder's view of an authenticated initiation (not yet checked for replay)."""

    remote_static: bytes
    remote_index: int
    remote_ephemeral: bytes
    timestamp: bytes
    chain_key: bytes = attrs.field(repr=False)
    hash: bytes = attrs.field(repr=False)


@attrs.frozen
class SessionKeys:
    """The transport keys one side derives when its part of the handshake is done."""

    send_key: bytes = attrs.field(repr=False)
    receive_key: bytes = attrs.field(repr=False)
    local_index: int
    remote_index: int
    is_initiator: bool


def _mix_hash(h: bytes, data: bytes) -> bytes:
    return hash_(h + data)


def create_initiation(
    *,
    local_private: bytes,
    remote_static: bytes,
    static_static: bytes,
    sender_index: int,
    ephemeral_private: bytes,
    timestamp: bytes,
) -> tuple[Initiation, InitiatorHandshake]:
    """Build a handshake initiation to *remote_static* (macs left zero).

    *static_static* is ``DH(local_private, remote_static)``, which a peer computes once.
    """
    h = _mix_hash(INITIAL_HASH, remote_static)
    ephemeral_public = public_key(ephemeral_private)
    ck = kdf1(INITIAL_CHAIN_KEY, ephemeral_public)
    h = _mix_hash(h, ephemeral_public)

    es = dh(ephemeral_private, remote_static)
    if es is None:
        raise ValueError("the peer's public key is a low-order point")
    ck, key = kdf2(ck, es)
    encrypted_static = aead_seal(key, 0, public_key(local_private), h)
    h = _mix_hash(h, encrypted_static)

    ck, key = kdf2(ck, static_static)
    encrypted_timestamp = aead_seal(key, 0, timestamp, h)
    h = _mix_hash(h, encrypted_timestamp)

    message = Initiation(sender_index, ephemeral_public, encrypted_static, encrypted_timestamp)
    state = InitiatorHandshake(sender_index, ephemeral_private, remote_static, ck, h)
    return message, state


def consume_initiation(
    *,
    local_private: bytes,
    local_public: bytes,
    message: Initiation,
    static_static_for: dict[bytes, bytes],
) -> ConsumedInitiation | None:
    """Decrypt and authenticate an initiation; ``None`` if it fails or the peer is unknown.

    *static_static_for* maps each configured peer's public key to its precomputed
    ``DH(local_private, peer)``; an initiator whose static key is not in it is refused.
    Replay and flood checks on the timestamp are the caller's (see :class:`TimestampGuard`).
    """
    h = _mix_hash(INITIAL_HASH, local_public)
    h = _mix_hash(h, message.ephemeral)
    ck = kdf1(INITIAL_CHAIN_KEY, message.ephemeral)

    se = dh(local_private, message.ephemeral)
    if se is None:
        return None
    ck, key = kdf2(ck, se)
    remote_static = aead_open(key, 0, message.encrypted_static, h)
    if remote_static is None:
        return None
    h = _mix_hash(h, message.encrypted_static)

    static_static = static_static_for.get(remote_static)
    if static_static is None:
        return None
    ck, key = kdf2(ck, static_static)
    timestamp = aead_open(key, 0, message.encrypted_timestamp, h)
    if timestamp is None:
        return None
    h = _mix_hash(h, message.encrypted_timestamp)
    return ConsumedInitiation(remote_static, message.sender, message.ephemeral, timestamp, ck, h)


def create_response(
    *,
    consumed: ConsumedInitiation,
    preshared_key: bytes | None,
    sender_index: int,
    ephemeral_private: bytes,
) -> tuple[Response, SessionKeys]:
    """Answer an initiation (macs left zero) and derive the responder's session keys."""
    ephemeral_public = public_key(ephemeral_private)
    h = _mix_hash(consumed.hash, ephemeral_public)
    ck = kdf1(consumed.chain_key, ephemeral_public)
    ee = dh(ephemeral_private, consumed.remote_ephemeral)
    se = dh(ephemeral_private, consumed.remote_static)
    if ee is None or se is None:
        raise ValueError("the initiator sent a low-order ephemeral or static key")
    ck = kdf1(ck, ee)
    ck = kdf1(ck, se)
    ck, tau, key = kdf3(ck, preshared_key or _ZERO_PSK)
    h = _mix_hash(h, tau)
    encrypted_nothing = aead_seal(key, 0, b"", h)

    receive_key, send_key = kdf2(ck, b"")
    message = Response(sender_index, consumed.remote_index, ephemeral_public, encrypted_nothing)
    keys = SessionKeys(send_key, receive_key, sender_index, consumed.remote_index, False)
    return message, keys


def consume_response(
    *,
    state: InitiatorHandshake,
    local_private: bytes,
    preshared_key: bytes | None,
    message: Response,
) -> SessionKeys | None:
    """Authenticate a response to our initiation; the initiator's session keys or ``None``."""
    h = _mix_hash(state.hash, message.ephemeral)
    ck = kdf1(state.chain_key, message.ephemeral)
    ee = dh(state.local_ephemeral, message.ephemeral)
    se = dh(local_private, message.ephemeral)
    if ee is None or se is None:
        return None
    ck = kdf1(ck, ee)
    ck = kdf1(ck, se)
    ck, tau, key = kdf3(ck, preshared_key or _ZERO_PSK)
    h = _mix_hash(h, tau)
    if aead_open(key, 0, message.encrypted_nothing, h) is None:
        return None
    send_key, receive_key = kdf2(ck, b"")
    return SessionKeys(send_key, receive_key, state.local_index, message.sender, True)


@attrs.define
class TimestampGuard:
    """Per-peer defence against replayed and flooded initiations.

    An initiation is accepted only if its TAI64N timestamp is later than every one
    accepted before from this peer, and not sooner than *min_interval* seconds after
    the last one (a captured initiation cannot be replayed to reset a session, and a
    peer cannot make us do DH work at line rate).
    """

    min_interval: float = 1 / 50
    last_timestamp: bytes = bytes(12)
    last_accepted: float | None = None

    def check(self, timestamp: bytes, now: float) -> str | None:
        """The reason to refuse (``"replay"`` or ``"flood"``), or ``None`` to accept."""
        if timestamp <= self.last_timestamp:
            return "replay"
        if self.last_accepted is not None and now - self.last_accepted <= self.min_interval:
            return "flood"
        return None

    def accept(self, timestamp: bytes, now: float) -> None:
        self.last_timestamp = timestamp
        self.last_accepted = now
