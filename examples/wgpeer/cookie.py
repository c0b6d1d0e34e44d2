"""mac1, mac2 and cookie replies: WireGuard's answer to handshake floods.

Every handshake message carries mac1, keyed by the *receiver's* public key, so a
device can drop garbage before any DH.  When the caller says the device is under
load, a handshake message must also carry a valid mac2, keyed by a cookie that
proves the sender can receive at its source address; without one it gets a cookie
reply instead of an answer.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Callable
from typing import Final

import attrs

from .crypto import MAC_LEN, XNONCE_LEN, hash_, mac, xaead_open, xaead_seal
from .messages import CookieReply

LABEL_MAC1: Final = b"mac1----"
LABEL_COOKIE: Final = b"cookie--"
#: Both the checker's secret and a received cookie are good for this long.
COOKIE_REFRESH_TIME: Final = 120.0

Endpoint = tuple[str, int]


def mac1_key(public_key: bytes) -> bytes:
    return hash_(LABEL_MAC1 + public_key)


def cookie_key(public_key: bytes) -> bytes:
    return hash_(LABEL_COOKIE + public_key)


def endpoint_bytes(endpoint: Endpoint) -> bytes:
    """The source address a cookie is bound to: address bytes, then the port little-endian."""
    host, port = endpoint
    try:
        address = ipaddress.ip_address(host).packed
    except ValueError:
        # Not an address literal (a name from a config, a scoped link-local): any stable
        # bytes bind the cookie just as well, since only we ever recompute it.
        address = host.encode("utf-8", "surrogateescape")
    return address + (port & 0xFFFF).to_bytes(2, "little")


def _split(message: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """(body, mac1, body+mac1, mac2) of a handshake message."""
    end1 = len(message) - MAC_LEN
    start1 = end1 - MAC_LEN
    return message[:start1], message[start1:end1], message[:end1], message[end1:]


@attrs.define
class CookieChecker:
    """The receiving side: checks mac1/mac2 of messages sent to *our* public key."""

    public_key: bytes
    random_bytes: Callable[[int], bytes] = os.urandom
    refresh_time: float = COOKIE_REFRESH_TIME
    _mac1_key: bytes = attrs.field(init=False, repr=False)
    _cookie_key: bytes = attrs.field(init=False, repr=False)
    _secret: bytes = attrs.field(init=False, default=b"", repr=False)
    _secret_set: float | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self._mac1_key = mac1_key(self.public_key)
        self._cookie_key = cookie_key(self.public_key)

    def check_mac1(self, message: bytes) -> bool:
        body, mac1, _, _ = _split(message)
        return hmac.compare_digest(mac(self._mac1_key, body), mac1)

    def _cookie(self, source: Endpoint, now: float) -> bytes | None:
        if self._secret_set is None or now - self._secret_set > self.refresh_time:
            return None
        return mac(self._secret, endpoint_bytes(source))

    def check_mac2(self, message: bytes, source: Endpoint, now: float) -> bool:
        cookie = self._cookie(source, now)
        if cookie is None:
            return False
        _, _, covered, mac2 = _split(message)
        return hmac.compare_digest(mac(cookie, covered), mac2)

    def create_reply(
        self, message: bytes, receiver: int, source: Endpoint, now: float
    ) -> CookieReply:
        """A cookie reply to *message* (which came from *source* with sender *receiver*).

        The secret behind cookies is replaced once it is older than the refresh time,
        so a cookie handed out stops working within two refresh periods.
        """
        cookie = self._cookie(source, now)
        if cookie is None:
            self._secret = self.random_bytes(32)
            self._secret_set = now
            cookie = mac(self._secret, endpoint_bytes(source))
        _, mac1, _, _ = _split(message)
        nonce = self.random_bytes(XNONCE_LEN)
        return CookieReply(receiver, nonce, xaead_seal(self._cookie_key, nonce, cookie, mac1))

    def set_secret(self, secret: bytes, now: float) -> None:
        """Install a known secret (test vectors need one)."""
        self._secret = secret
        self._secret_set = now


@attrs.define
class CookieGenerator:
    """The sending side, one per peer: adds macs to messages sent to *peer's* public key."""

    public_key: bytes
    refresh_time: float = COOKIE_REFRESH_TIME
    _mac1_key: bytes = attrs.field(init=False, repr=False)
    _cookie_key: bytes = attrs.field(init=False, repr=False)
    _cookie: bytes | None = attrs.field(init=False, default=None, repr=False)
    _cookie_set: float = attrs.field(init=False, default=0.0)
    _last_mac1: bytes | None = attrs.field(init=False, default=None, repr=False)

    def __attrs_post_init__(self) -> None:
        self._mac1_key = mac1_key(self.public_key)
        self._cookie_key = cookie_key(self.public_key)

    def add_macs(self, body: bytes, now: float) -> bytes:
        """*body* (a handshake message without macs) followed by mac1 and mac2."""
        mac1 = mac(self._mac1_key, body)
        # A cookie reply is only believed if it answers the last mac1 we sent.
        self._last_mac1 = mac1
        if self._cookie is None or now - self._cookie_set > self.refresh_time:
            return body + mac1 + bytes(MAC_LEN)
        return body + mac1 + mac(self._cookie, body + mac1)

    def consume_reply(self, reply: CookieReply, now: float) -> bool:
        """Store the cookie of an authentic reply; ``False`` if it does not decrypt."""
        if self._last_mac1 is None:
            return False
        cookie = xaead_open(self._cookie_key, reply.nonce, reply.encrypted_cookie, self._last_mac1)
        if cookie is None:
            return False
        self._cookie = cookie
        self._cookie_set = now
        return True
