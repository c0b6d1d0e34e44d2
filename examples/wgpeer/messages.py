"""The four WireGuard message formats: fixed-size layouts, little-endian integers.

Parsers take whatever arrived in a datagram and return ``None`` for anything that is
not exactly a well-formed message of their type; they never raise.  Builders take
the fields and return the bytes (macs included, computed by the caller).
"""

from __future__ import annotations

import struct
from typing import Final

import attrs

from .crypto import KEY_LEN, MAC_LEN, TAG_LEN, TIMESTAMP_LEN, XNONCE_LEN

MESSAGE_INITIATION: Final = 1
MESSAGE_RESPONSE: Final = 2
MESSAGE_COOKIE_REPLY: Final = 3
MESSAGE_TRANSPORT: Final = 4

INITIATION_LEN: Final = 148
RESPONSE_LEN: Final = 92
COOKIE_REPLY_LEN: Final = 64
TRANSPORT_HEADER_LEN: Final = 16
#: An empty transport message (a keepalive) is a header and a tag.
KEEPALIVE_LEN: Final = TRANSPORT_HEADER_LEN + TAG_LEN

# The type is one byte followed by three reserved zero bytes, so reading the first
# four bytes as a little-endian u32 checks both at once.
_INITIATION: Final = struct.Struct(f"<II{KEY_LEN}s{KEY_LEN + TAG_LEN}s{TIMESTAMP_LEN + TAG_LEN}s")
_RESPONSE: Final = struct.Struct(f"<III{KEY_LEN}s{TAG_LEN}s")
_COOKIE_REPLY: Final = struct.Struct(f"<II{XNONCE_LEN}s{MAC_LEN + TAG_LEN}s")
_TRANSPORT: Final = struct.Struct("<IIQ")
_MACS: Final = 2 * MAC_LEN

assert _INITIATION.size + _MACS == INITIATION_LEN
assert _RESPONSE.size + _MACS == RESPONSE_LEN
assert _COOKIE_REPLY.size == COOKIE_REPLY_LEN
assert _TRANSPORT.size == TRANSPORT_HEADER_LEN


@attrs.frozen
class Initiation:
    """Handshake initiation (type 1), 148 bytes."""

    sender: int
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes
    mac1: bytes = bytes(MAC_LEN)
    mac2: bytes = bytes(MAC_LEN)

    def body(self) -> bytes:
        """The bytes covered by mac1 (everything before it)."""
        return _INITIATION.pack(
            MESSAGE_INITIATION,
            self.sender,
            self.ephemeral,
            self.encrypted_static,
            self.encrypted_timestamp,
        )

    def to_bytes(self) -> bytes:
        return self.body() + self.mac1 + self.mac2


@attrs.frozen
class Response:
    """Handshake response (type 2), 92 bytes."""

    sender: int
    receiver: int
    ephemeral: bytes
    encrypted_nothing: bytes
    mac1: bytes = bytes(MAC_LEN)
    mac2: bytes = bytes(MAC_LEN)

    def body(self) -> bytes:
        """The bytes covered by mac1 (everything before it)."""
        return _RESPONSE.pack(
            MESSAGE_RESPONSE, self.sender, self.receiver, self.ephemeral, self.encrypted_nothing
        )

    def to_bytes(self) -> bytes:
        return self.body() + self.mac1 + self.mac2


@attrs.frozen
class CookieReply:
    """Cookie reply (type 3), 64 bytes."""

    receiver: int
    nonce: bytes
    encrypted_cookie: bytes

    def to_bytes(self) -> bytes:
        return _COOKIE_REPLY.pack(
            MESSAGE_COOKIE_REPLY, self.receiver, self.nonce, self.encrypted_cookie
        )


def message_type(datagram: bytes) -> int:
    """The message type of a datagram, or 0 when the first four bytes are not a known type."""
    if len(datagram) < 4:
        return 0
    kind = int.from_bytes(datagram[:4], "little")
    return kind if MESSAGE_INITIATION <= kind <= MESSAGE_TRANSPORT else 0


def parse_initiation(datagram: bytes) -> Initiation | None:
    if len(datagram) != INITIATION_LEN:
        return None
    kind, sender, ephemeral, static, timestamp = _INITIATION.unpack_from(datagram)
    if kind != MESSAGE_INITIATION:
        return None
    end = _INITIATION.size
    return Initiation(
        sender,
        ephemeral,
        static,
        timestamp,
        datagram[end : end + MAC_LEN],
        datagram[end + MAC_LEN :],
    )


def parse_response(datagram: bytes) -> Response | None:
    if len(datagram) != RESPONSE_LEN:
        return None
    kind, sender, receiver, ephemeral, nothing = _RESPONSE.unpack_from(datagram)
    if kind != MESSAGE_RESPONSE:
        return None
    end = _RESPONSE.size
    return Response(
        sender,
        receiver,
        ephemeral,
        nothing,
        datagram[end : end + MAC_LEN],
        datagram[end + MAC_LEN :],
    )


def parse_cookie_reply(datagram: bytes) -> CookieReply | None:
    if len(datagram) != COOKIE_REPLY_LEN:
        return None
    kind, receiver, nonce, cookie = _COOKIE_REPLY.unpack(datagram)
    if kind != MESSAGE_COOKIE_REPLY:
        return None
    return CookieReply(receiver, nonce, cookie)


def parse_transport_header(datagram: bytes) -> tuple[int, int] | None:
    """``(receiver, counter)`` of a transport data message, or ``None``.

    The content is not copied; callers slice ``datagram[TRANSPORT_HEADER_LEN:]``.
    """
    if len(datagram) < KEEPALIVE_LEN:
        return None
    kind, receiver, counter = _TRANSPORT.unpack_from(datagram)
    if kind != MESSAGE_TRANSPORT:
        return None
    return receiver, counter


def transport_header(receiver: int, counter: int) -> bytes:
    """The 16-byte header of a transport data message."""
    return _TRANSPORT.pack(MESSAGE_TRANSPORT, receiver, counter)
