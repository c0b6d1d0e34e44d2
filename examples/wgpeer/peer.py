"""Per-peer state: keypairs, the pending handshake, staged packets and timer deadlines.

This module only keeps state and applies the timer *events* (what each kind of
packet sent or received does to the deadlines); deciding what to send when a
deadline passes is :class:`~wgpeer.device.WireGuardDevice`'s job.  Every deadline
is an absolute time on the caller's clock, or ``None`` when that timer is off.
"""

from __future__ import annotations

import collections
import struct
from typing import Final

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .cookie import CookieGenerator
from .messages import MESSAGE_TRANSPORT, TRANSPORT_HEADER_LEN, transport_header
from .noise import InitiatorHandshake, SessionKeys, TimestampGuard
from .replay import ReplayFilter
from .timers import TimerConfig

Endpoint = tuple[str, int]

_NONCE_PREFIX: Final = b"\x00\x00\x00\x00"
#: The 96-bit AEAD nonce: 32 zero bits, then the counter little-endian.
_NONCE: Final = struct.Struct("<IQ")
_HEADER: Final = struct.Struct("<IIQ")
#: Transport plaintext is padded to a multiple of this, to blur packet sizes.
PADDING_MULTIPLE: Final = 16
_ZEROS: Final = bytes(PADDING_MULTIPLE)


@attrs.define(eq=False)
class Keypair:
    """One direction-pair of transport keys, as derived by one handshake."""

    keys: SessionKeys
    created: float
    replay: ReplayFilter
    send_counter: int = 0
    _send: ChaCha20Poly1305 = attrs.field(init=False, repr=False)
    _receive: ChaCha20Poly1305 = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        # One cipher object per key: constructing it costs about as much as sealing.
        self._send = ChaCha20Poly1305(self.keys.send_key)
        self._receive = ChaCha20Poly1305(self.keys.receive_key)

    @property
    def local_index(self) -> int:
        return self.keys.local_index

    @property
    def is_initiator(self) -> bool:
        return self.keys.is_initiator

    def seal(self, plaintext: bytes) -> bytes:
        """A whole transport data message carrying *plaintext* (already padded)."""
        counter = self.send_counter
        self.send_counter = counter + 1
        nonce = _NONCE_PREFIX + counter.to_bytes(8, "little")
        header = transport_header(self.keys.remote_index, counter)
        return header + self._send.encrypt(nonce, plaintext, None)

    def seal_batch(self, packets: list[bytes], mtu: int, limit: int, out: list[bytes]) -> int:
        """Pad and seal packets in order while the key may, appending the messages to *out*.

        Stops early when the send counter reaches *limit* (the key is used up); returns
        how many packets were sealed.  The loop is :meth:`seal` and the padding rule
        written out once, since this is the per-packet cost of the whole send path.
        """
        encrypt = self._send.encrypt
        header = _HEADER.pack
        nonce = _NONCE.pack
        remote = self.keys.remote_index
        counter = self.send_counter
        count = min(len(packets), max(0, limit - counter))
        for i in range(count):
            packet = packets[i]
            size = len(packet)
            pad = -size % PADDING_MULTIPLE
            if pad and size + pad > mtu:
                pad = max(0, mtu - size)
            if pad:
                packet += _ZEROS[:pad]
            out.append(
                header(MESSAGE_TRANSPORT, remote, counter)
                + encrypt(nonce(0, counter), packet, None)
            )
            counter += 1
        self.send_counter = counter
        return count

    def open(self, counter: int, datagram: bytes) -> bytes | None:
        """The plaintext of a transport message, or ``None`` if it does not authenticate.

        The replay filter is the caller's to consult before and update after.
        """
        try:
            # A memoryview slice: the ciphertext is not copied before decryption.
            return self._receive.decrypt(
                _NONCE.pack(0, counter), memoryview(datagram)[TRANSPORT_HEADER_LEN:], None
            )
        except InvalidTag:
            return None


@attrs.define
class PeerStats:
    """What a peer has done; byte counts are whole datagrams on the wire."""

    handshakes_completed: int = 0
    initiations_sent: int = 0
    responses_sent: int = 0
    last_handshake: float | None = None
    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    tx_packets: int = 0
    keepalives_sent: int = 0
    keepalives_received: int = 0
    drops: collections.Counter[str] = attrs.field(factory=collections.Counter)


@attrs.define(eq=False)
class Peer:
    """Everything a device knows about one peer."""

    public_key: bytes
    static_static: bytes = attrs.field(repr=False)
    preshared_key: bytes | None = attrs.field(default=None, repr=False)
    endpoint: Endpoint | None = None
    persistent_keepalive: float = 0.0
    timers: TimerConfig = attrs.field(factory=TimerConfig)
    stats: PeerStats = attrs.field(factory=PeerStats)

    cookies: CookieGenerator = attrs.field(init=False)
    guard: TimestampGuard = attrs.field(init=False)
    handshake: InitiatorHandshake | None = attrs.field(init=False, default=None)
    current: Keypair | None = attrs.field(init=False, default=None)
    previous: Keypair | None = attrs.field(init=False, default=None)
    #: A responder's new keypair, unused for sending until the initiator uses it first.
    next: Keypair | None = attrs.field(init=False, default=None)
    staged: collections.deque[bytes] = attrs.field(init=False, factory=collections.deque)

    handshake_attempts: int = attrs.field(init=False, default=0)
    last_sent_handshake: float | None = attrs.field(init=False, default=None)
    sent_last_minute_handshake: bool = attrs.field(init=False, default=False)
    need_another_keepalive: bool = attrs.field(init=False, default=False)
    retransmit_at: float | None = attrs.field(init=False, default=None)
    send_keepalive_at: float | None = attrs.field(init=False, default=None)
    new_handshake_at: float | None = attrs.field(init=False, default=None)
    zero_keys_at: float | None = attrs.field(init=False, default=None)
    persistent_keepalive_at: float | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self.cookies = CookieGenerator(self.public_key)
        self.guard = TimestampGuard(self.timers.handshake_initiation_rate)
        if self.persistent_keepalive > 0:
            # A persistent keepalive also means "bring the tunnel up now".
            self.persistent_keepalive_at = float("-inf")

    def deadlines(self) -> list[float]:
        """Every armed timer's deadline."""
        return [
            t
            for t in (
                self.retransmit_at,
                self.send_keepalive_at,
                self.new_handshake_at,
                self.zero_keys_at,
                self.persistent_keepalive_at,
            )
            if t is not None
        ]

    def usable_keypair(self, now: float) -> Keypair | None:
        """The current keypair if it may still seal, else ``None``."""
        kp = self.current
        if kp is None:
            return None
        if now - kp.created >= self.timers.reject_after_time:
            return None
        if kp.send_counter >= self.timers.reject_after_messages:
            return None
        return kp

    def stage(self, packet: bytes) -> bool:
        """Hold *packet* until a keypair exists; ``False`` if that pushed out the oldest."""
        self.staged.append(packet)
        if len(self.staged) > self.timers.queue_limit:
            self.staged.popleft()
            return False
        return True

    # -- timer events, named after what happened -------------------------------------------

    def data_sent(self, now: float, jitter: float) -> None:
        # Sent data and heard nothing back for a while: the session may be dead.
        if self.new_handshake_at is None:
            t = self.timers
            self.new_handshake_at = now + t.keepalive_timeout + t.rekey_timeout + jitter

    def data_received(self, now: float) -> None:
        # Got data: the peer wants to know it arrived, even if we have nothing to say.
        if self.send_keepalive_at is None:
            self.send_keepalive_at = now + self.timers.keepalive_timeout
        else:
            self.need_another_keepalive = True

    def authenticated_sent(self) -> None:
        self.send_keepalive_at = None

    def authenticated_received(self) -> None:
        self.new_handshake_at = None

    def authenticated_traversal(self, now: float) -> None:
        if self.persistent_keepalive > 0:
            self.persistent_keepalive_at = now + self.persistent_keepalive

    def handshake_initiated(self, now: float, jitter: float) -> None:
        self.send_keepalive_at = None
        self.retransmit_at = now + self.timers.rekey_timeout + jitter

    def handshake_complete(self, now: float) -> None:
        self.retransmit_at = None
        self.handshake_attempts = 0
        self.sent_last_minute_handshake = False
        self.stats.handshakes_completed += 1
        self.stats.last_handshake = now

    def session_derived(self, now: float) -> None:
        self.zero_keys_at = now + self.timers.zero_keys_after
