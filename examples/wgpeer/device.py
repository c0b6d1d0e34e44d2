"""A sans-I/O WireGuard device: inner packets in, datagrams out, and back.

:class:`WireGuardDevice` owns the private key, the peers, the allowed-IPs table, the
index table (receiver index -> peer and keypair) and the counters.  It never reads
a clock for protocol timing (``now`` is passed in, on any monotonic scale), never
touches a socket and never raises on input from the network: whatever cannot be
used is dropped and counted under a reason in :class:`DeviceStats`.

The only clock it reads itself is *wall_clock*, for the TAI64N timestamp in
initiations, which must keep increasing across restarts of the process.
"""

from __future__ import annotations

import collections
import random
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Final

import attrs

from . import messages, noise
from .allowedips import AllowedIPs
from .config import Config
from .cookie import CookieChecker
from .crypto import dh, generate_private_key, public_key, tai64n
from .peer import Endpoint, Keypair, Peer
from .ratelimit import RateLimiter
from .replay import ReplayFilter
from .timers import TimerConfig

_TRANSPORT_PREFIX: Final = messages.MESSAGE_TRANSPORT.to_bytes(4, "little")
DEFAULT_MTU: Final = 1420


class Drop:
    """Reasons a received datagram or a packet to send was dropped (counter keys)."""

    # receive side
    MALFORMED: Final = "malformed"
    BAD_MAC1: Final = "bad_mac1"
    HANDSHAKE_FAILED: Final = "handshake_failed"
    HANDSHAKE_REPLAY: Final = "handshake_replay"
    HANDSHAKE_FLOOD: Final = "handshake_flood"
    #: Under load, a handshake message with a valid mac2 from a source (an IPv4
    #: address, an IPv6 /64) that has used up its token bucket.
    HANDSHAKE_RATE_LIMITED: Final = "handshake_rate_limited"
    UNKNOWN_RECEIVER: Final = "unknown_receiver"
    BAD_COOKIE: Final = "bad_cookie"
    EXPIRED: Final = "expired"
    REPLAY: Final = "replay"
    DECRYPT_FAILED: Final = "decrypt_failed"
    MALFORMED_INNER: Final = "malformed_inner"
    WRONG_SOURCE: Final = "wrong_source"
    # send side
    NO_ROUTE: Final = "no_route"
    QUEUE_FULL: Final = "queue_full"
    NO_ENDPOINT: Final = "no_endpoint"
    HANDSHAKE_TIMEOUT: Final = "handshake_timeout"
    FLUSHED: Final = "flushed"


class Received:
    """What became of received datagrams that were not dropped (counter keys)."""

    DATA: Final = "data"
    KEEPALIVE: Final = "keepalive"
    INITIATION: Final = "initiation"
    RESPONSE: Final = "response"
    COOKIE_REPLY: Final = "cookie_reply"
    #: A handshake message that arrived under load without a valid mac2: answered
    #: with a cookie reply instead.
    COOKIE_SENT: Final = "cookie_sent"


@attrs.define
class DeviceStats:
    """Device-wide counters.

    Every datagram given to :meth:`WireGuardDevice.decrypt` adds one to
    ``rx_datagrams`` and one to exactly one key of either ``rx`` or ``rx_drops``.
    """

    rx_datagrams: int = 0
    tx_datagrams: int = 0
    #: Handshake messages that arrived under load with a valid mac2 (a cookie we
    #: handed out earlier), whatever became of them afterwards.
    mac2_accepted: int = 0
    rx: collections.Counter[str] = attrs.field(factory=collections.Counter)
    rx_drops: collections.Counter[str] = attrs.field(factory=collections.Counter)
    tx_drops: collections.Counter[str] = attrs.field(factory=collections.Counter)


@attrs.frozen
class Outgoing:
    """Datagrams for one destination, in the order they should be sent."""

    endpoint: Endpoint
    datagrams: list[bytes]


class _Batch:
    """Collects datagrams per destination, keeping each destination's order."""

    def __init__(self) -> None:
        self.by_endpoint: dict[Endpoint, list[bytes]] = {}

    def add(self, endpoint: Endpoint, datagram: bytes) -> None:
        self.by_endpoint.setdefault(endpoint, []).append(datagram)

    def result(self) -> list[Outgoing]:
        return [Outgoing(ep, dgs) for ep, dgs in self.by_endpoint.items()]


class WireGuardDevice:
    """The protocol state of one WireGuard interface.

    Args:
      private_key: our 32-byte Curve25519 private key.
      listen_port: the UDP port the caller listens on (kept for reporting only).
      mtu: the inner MTU; padding never makes a message longer than this.
      rng: randomness for indices and timer jitter (a seeded one makes tests exact).
      wall_clock: seconds since the epoch, for initiation timestamps.
      rate_limiter: the per-source limit on handshake messages under load (the
        protocol's usual 20 per second with a burst of 5 by default).
    """

    def __init__(
        self,
        private_key: bytes,
        *,
        listen_port: int = 0,
        mtu: int = DEFAULT_MTU,
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
        rate_limiter: RateLimiter | None = None,
    ) -> None:
        self.private_key: Final = private_key
        self.public_key: Final = public_key(private_key)
        self.listen_port = listen_port
        self.mtu = mtu
        self.peers: dict[bytes, Peer] = {}
        self.allowed_ips: AllowedIPs[Peer] = AllowedIPs()
        self.stats = DeviceStats()
        self.cookie_checker = CookieChecker(self.public_key)
        self.rate_limiter = rate_limiter if rate_limiter is not None else RateLimiter()
        self._rng = rng if rng is not None else random.SystemRandom()
        self._wall_clock = wall_clock
        self._index: dict[int, tuple[Peer, Keypair | None]] = {}
        self._static_static: dict[bytes, bytes] = {}

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        timers: TimerConfig | None = None,
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> WireGuardDevice:
        """A device with the interface and peers of a parsed wg-quick file.

        *timers* applies to every peer (for instance :func:`~wgpeer.timers.shortened`).
        """
        iface = config.interface
        device = cls(
            iface.private_key,
            listen_port=iface.listen_port or 0,
            mtu=iface.mtu or DEFAULT_MTU,
            rng=rng,
            wall_clock=wall_clock,
        )
        for p in config.peers:
            device.add_peer(
                p.public_key,
                preshared_key=p.preshared_key,
                allowed_ips=p.allowed_ips,
                endpoint=p.endpoint,
                persistent_keepalive=p.persistent_keepalive,
                timers=timers,
            )
        return device

    # -- configuration -------------------------------------------------------------------

    def add_peer(
        self,
        public_key: bytes,
        *,
        preshared_key: bytes | None = None,
        allowed_ips: Iterable[str] = (),
        endpoint: Endpoint | None = None,
        persistent_keepalive: float = 0.0,
        timers: TimerConfig | None = None,
    ) -> Peer:
        """Configure a peer; raises :exc:`ValueError` for a key no handshake could use."""
        if public_key == self.public_key:
            raise ValueError("a peer cannot have the device's own public key")
        if public_key in self.peers:
            raise ValueError("a peer with this public key exists already")
        static_static = dh(self.private_key, public_key)
        if static_static is None:
            raise ValueError("the peer's public key is a low-order point")
        peer = Peer(
            public_key,
            static_static,
            preshared_key=preshared_key,
            endpoint=endpoint,
            persistent_keepalive=persistent_keepalive,
            timers=timers or TimerConfig(),
        )
        self.peers[public_key] = peer
        self._static_static[public_key] = static_static
        for prefix in allowed_ips:
            self.allowed_ips.insert(prefix, peer)
        return peer

    def remove_peer(self, public_key: bytes) -> None:
        peer = self.peers.pop(public_key)
        del self._static_static[public_key]
        self.allowed_ips.remove_owner(peer)
        self._zero_keys(peer)
        peer.staged.clear()

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has something to do (``None``: only on new input)."""
        deadlines = [t for peer in self.peers.values() for t in peer.deadlines()]
        return min(deadlines, default=None)

    # -- sending -------------------------------------------------------------------------

    def encrypt(self, packets: Sequence[bytes], now: float) -> list[Outgoing]:
        """Seal inner IP packets for the peers that own their destinations.

        Packets for a peer without a live session are held (bounded, oldest dropped
        first) and a handshake is started.  Returns the datagrams to send, grouped by
        endpoint; each group keeps the order of *packets*.
        """
        per_peer: dict[Peer, list[bytes]] = {}
        lookup_v4 = self.allowed_ips.lookup_v4
        lookup_v6 = self.allowed_ips.lookup_v6
        tx_drops = self.stats.tx_drops
        for packet in packets:
            version = packet[0] >> 4 if packet else 0
            if version == 4 and len(packet) >= 20:
                peer = lookup_v4(packet[16:20])
            elif version == 6 and len(packet) >= 40:
                peer = lookup_v6(packet[24:40])
            else:
                tx_drops[Drop.MALFORMED] += 1
                continue
            if peer is None:
                tx_drops[Drop.NO_ROUTE] += 1
                continue
            per_peer.setdefault(peer, []).append(packet)

        out = _Batch()
        for peer, batch in per_peer.items():
            if not peer.staged and peer.usable_keypair(now) is not None:
                self._seal(peer, batch, now, out)
            else:
                self._stage(peer, batch)
                self._send_staged(peer, now, out)
        return out.result()

    def _seal(self, peer: Peer, packets: list[bytes], now: float, out: _Batch) -> None:
        """Seal with the current keypair, which the caller checked is usable."""
        kp = peer.current
        assert kp is not None
        endpoint = peer.endpoint
        if endpoint is None:
            # Only a peer that has never been heard from and has no configured
            # endpoint gets here; there is nowhere to send to.
            self.stats.tx_drops[Drop.NO_ENDPOINT] += len(packets)
            peer.stats.drops[Drop.NO_ENDPOINT] += len(packets)
            return
        datagrams = out.by_endpoint.setdefault(endpoint, [])
        first = len(datagrams)
        sent = kp.seal_batch(packets, self.mtu, peer.timers.reject_after_messages, datagrams)
        if sent < len(packets):
            # The key is used up mid-batch: the rest waits for the next session.
            self._stage(peer, packets[sent:])
        keepalives = packets[:sent].count(b"")
        tx_bytes = sum(map(len, datagrams[first:]))
        self.stats.tx_datagrams += sent
        stats = peer.stats
        stats.tx_packets += sent - keepalives
        stats.keepalives_sent += keepalives
        stats.tx_bytes += tx_bytes
        if sent:
            if sent > keepalives:
                peer.data_sent(now, self._jitter(peer))
            peer.authenticated_sent()
            peer.authenticated_traversal(now)
        self._keep_key_fresh_sending(peer, now, out)
        if peer.staged:
            self._initiate(peer, now, out, retry=False)

    def _stage(self, peer: Peer, packets: Iterable[bytes]) -> None:
        for packet in packets:
            if not peer.stage(packet):
                self.stats.tx_drops[Drop.QUEUE_FULL] += 1
                peer.stats.drops[Drop.QUEUE_FULL] += 1

    def _send_staged(self, peer: Peer, now: float, out: _Batch) -> None:
        if not peer.staged:
            return
        if peer.usable_keypair(now) is None:
            self._initiate(peer, now, out, retry=False)
            return
        packets = list(peer.staged)
        peer.staged.clear()
        self._seal(peer, packets, now, out)

    def _send_keepalive(self, peer: Peer, now: float, out: _Batch) -> None:
        # Staged data, if any, makes the keepalive unnecessary.
        if not peer.staged:
            peer.staged.append(b"")
        self._send_staged(peer, now, out)

    def _keep_key_fresh_sending(self, peer: Peer, now: float, out: _Batch) -> None:
        kp = peer.current
        if kp is None:
            return
        t = peer.timers
        if kp.send_counter > t.rekey_after_messages or (
            kp.is_initiator and now - kp.created >= t.rekey_after_time
        ):
            self._initiate(peer, now, out, retry=False)

    def _initiate(self, peer: Peer, now: float, out: _Batch, *, retry: bool) -> None:
        """Send a handshake initiation unless one went out less than REKEY_TIMEOUT ago."""
        if not retry:
            peer.handshake_attempts = 0
        if (
            peer.last_sent_handshake is not None
            and now - peer.last_sent_handshake < peer.timers.rekey_timeout
        ):
            return
        endpoint = peer.endpoint
        if endpoint is None:
            self.stats.tx_drops[Drop.NO_ENDPOINT] += 1
            peer.stats.drops[Drop.NO_ENDPOINT] += 1
            return
        peer.last_sent_handshake = now
        if peer.handshake is not None:
            self._index.pop(peer.handshake.local_index, None)
        index = self._new_index(peer, None)
        message, state = noise.create_initiation(
            local_private=self.private_key,
            remote_static=peer.public_key,
            static_static=peer.static_static,
            sender_index=index,
            ephemeral_private=generate_private_key(),
            timestamp=tai64n(self._wall_clock()),
        )
        peer.handshake = state
        datagram = peer.cookies.add_macs(message.body(), now)
        self._emit(peer, endpoint, datagram, out)
        peer.stats.initiations_sent += 1
        peer.authenticated_traversal(now)
        peer.authenticated_sent()
        peer.handshake_initiated(now, self._jitter(peer))

    def _emit(self, peer: Peer, endpoint: Endpoint, datagram: bytes, out: _Batch) -> None:
        out.add(endpoint, datagram)
        self.stats.tx_datagrams += 1
        peer.stats.tx_bytes += len(datagram)

    def _jitter(self, peer: Peer) -> float:
        return self._rng.uniform(0.0, peer.timers.rekey_timeout_jitter)

    def _new_index(self, peer: Peer, keypair: Keypair | None) -> int:
        while True:
            index = self._rng.getrandbits(32)
            if index not in self._index:
                self._index[index] = (peer, keypair)
                return index

    def _forget(self, keypair: Keypair | None) -> None:
        if keypair is not None:
            self._index.pop(keypair.local_index, None)

    def _zero_keys(self, peer: Peer) -> None:
        for kp in (peer.current, peer.previous, peer.next):
            self._forget(kp)
        peer.current = peer.previous = peer.next = None
        if peer.handshake is not None:
            self._index.pop(peer.handshake.local_index, None)
            peer.handshake = None

    # -- receiving -----------------------------------------------------------------------

    def decrypt(
        self,
        datagrams: Iterable[tuple[bytes, Endpoint]],
        now: float,
        *,
        under_load: bool = False,
    ) -> tuple[list[bytes], list[Outgoing]]:
        """Open received datagrams, in order.

        Returns the inner IP packets (trimmed of padding, each from a source address
        its peer is allowed) and the datagrams to send in reply (handshake responses,
        cookie replies, keepalives, packets that were waiting for a session).  When
        *under_load*, handshake messages without a valid mac2 get a cookie reply only,
        and those with one still need a token from their source's bucket in
        :attr:`rate_limiter`.
        """
        inner: list[bytes] = []
        out = _Batch()
        stats = self.stats
        for datagram, source in datagrams:
            stats.rx_datagrams += 1
            # Transport data is nearly all traffic: recognise it without a call.
            if datagram[:4] == _TRANSPORT_PREFIX:
                kind = messages.MESSAGE_TRANSPORT
            else:
                kind = messages.message_type(datagram)
            if kind == messages.MESSAGE_TRANSPORT:
                outcome = self._receive_transport(datagram, source, now, inner, out)
            elif kind == messages.MESSAGE_INITIATION:
                outcome = self._receive_initiation(datagram, source, now, under_load, out)
            elif kind == messages.MESSAGE_RESPONSE:
                outcome = self._receive_response(datagram, source, now, under_load, out)
            elif kind == messages.MESSAGE_COOKIE_REPLY:
                outcome = self._receive_cookie_reply(datagram, now)
            else:
                outcome = Drop.MALFORMED
            if outcome in _RECEIVED:
                stats.rx[outcome] += 1
            else:
                stats.rx_drops[outcome] += 1
        return inner, out.result()

    def _handshake_gate(
        self,
        datagram: bytes,
        sender: int,
        source: Endpoint,
        now: float,
        under_load: bool,
        out: _Batch,
    ) -> str | None:
        """mac1 always; under load, mac2 and the source's rate limit too.

        Returns the drop/outcome if the message stops here, before any DH work.
        """
        if not self.cookie_checker.check_mac1(datagram):
            return Drop.BAD_MAC1
        if not under_load:
            return None
        if not self.cookie_checker.check_mac2(datagram, source, now):
            reply = self.cookie_checker.create_reply(datagram, sender, source, now)
            out.add(source, reply.to_bytes())
            self.stats.tx_datagrams += 1
            return Received.COOKIE_SENT
        self.stats.mac2_accepted += 1
        # The cookie proved the source address is real; the bucket keeps that one
        # address (or /64) from asking for a DH per datagram.  Responses are limited
        # too: their receiver index is visible on the path, so they can be forged
        # in bulk just like initiations.
        if not self.rate_limiter.allow(source[0], now):
            return Drop.HANDSHAKE_RATE_LIMITED
        return None

    def _receive_initiation(
        self, datagram: bytes, source: Endpoint, now: float, under_load: bool, out: _Batch
    ) -> str:
        message = messages.parse_initiation(datagram)
        if message is None:
            return Drop.MALFORMED
        stop = self._handshake_gate(datagram, message.sender, source, now, under_load, out)
        if stop is not None:
            return stop
        consumed = noise.consume_initiation(
            local_private=self.private_key,
            local_public=self.public_key,
            message=message,
            static_static_for=self._static_static,
        )
        if consumed is None:
            return Drop.HANDSHAKE_FAILED
        peer = self.peers[consumed.remote_static]
        refused = peer.guard.check(consumed.timestamp, now)
        if refused is not None:
            reason = Drop.HANDSHAKE_REPLAY if refused == "replay" else Drop.HANDSHAKE_FLOOD
            peer.stats.drops[reason] += 1
            return reason
        index = self._new_index(peer, None)
        try:
            response, keys = noise.create_response(
                consumed=consumed,
                preshared_key=peer.preshared_key,
                sender_index=index,
                ephemeral_private=generate_private_key(),
            )
        except ValueError:
            # A low-order ephemeral from the initiator: authentic but unusable.
            del self._index[index]
            return Drop.HANDSHAKE_FAILED
        peer.guard.accept(consumed.timestamp, now)
        peer.endpoint = source
        peer.stats.rx_bytes += len(datagram)
        peer.authenticated_traversal(now)
        peer.authenticated_received()

        # Our own initiation, if any, lost the race: the peer's wins.
        if peer.handshake is not None:
            self._index.pop(peer.handshake.local_index, None)
            peer.handshake = None
        keypair = Keypair(keys, now, ReplayFilter(peer.timers.reject_after_messages))
        self._index[index] = (peer, keypair)
        self._forget(peer.next)
        self._forget(peer.previous)
        peer.previous = None
        peer.next = keypair
        peer.session_derived(now)

        self._emit(peer, source, peer.cookies.add_macs(response.body(), now), out)
        peer.stats.responses_sent += 1
        peer.authenticated_traversal(now)
        peer.authenticated_sent()
        return Received.INITIATION

    def _receive_response(
        self, datagram: bytes, source: Endpoint, now: float, under_load: bool, out: _Batch
    ) -> str:
        message = messages.parse_response(datagram)
        if message is None:
            return Drop.MALFORMED
        stop = self._handshake_gate(datagram, message.sender, source, now, under_load, out)
        if stop is not None:
            return stop
        entry = self._index.get(message.receiver)
        if entry is None or entry[1] is not None:
            return Drop.UNKNOWN_RECEIVER
        peer = entry[0]
        state = peer.handshake
        if state is None or state.local_index != message.receiver:
            return Drop.UNKNOWN_RECEIVER
        keys = noise.consume_response(
            state=state,
            local_private=self.private_key,
            preshared_key=peer.preshared_key,
            message=message,
        )
        if keys is None:
            peer.stats.drops[Drop.HANDSHAKE_FAILED] += 1
            return Drop.HANDSHAKE_FAILED
        peer.endpoint = source
        peer.stats.rx_bytes += len(datagram)
        peer.authenticated_traversal(now)
        peer.authenticated_received()

        peer.handshake = None
        keypair = Keypair(keys, now, ReplayFilter(peer.timers.reject_after_messages))
        self._index[keys.local_index] = (peer, keypair)
        if peer.next is not None:
            # A session we answered as responder but never saw used: keep it as the
            # previous one so late packets on it still open.
            self._forget(peer.previous)
            self._forget(peer.current)
            peer.previous, peer.next = peer.next, None
        else:
            self._forget(peer.previous)
            peer.previous = peer.current
        peer.current = keypair
        peer.session_derived(now)
        peer.handshake_complete(now)
        self._send_keepalive(peer, now, out)
        return Received.RESPONSE

    def _receive_cookie_reply(self, datagram: bytes, now: float) -> str:
        reply = messages.parse_cookie_reply(datagram)
        if reply is None:
            return Drop.MALFORMED
        entry = self._index.get(reply.receiver)
        if entry is None:
            return Drop.UNKNOWN_RECEIVER
        if not entry[0].cookies.consume_reply(reply, now):
            return Drop.BAD_COOKIE
        return Received.COOKIE_REPLY

    def _receive_transport(
        self, datagram: bytes, source: Endpoint, now: float, inner: list[bytes], out: _Batch
    ) -> str:
        header = messages.parse_transport_header(datagram)
        if header is None:
            return Drop.MALFORMED
        receiver, counter = header
        entry = self._index.get(receiver)
        if entry is None:
            return Drop.UNKNOWN_RECEIVER
        peer, kp = entry
        if kp is None:
            return Drop.UNKNOWN_RECEIVER
        drops = peer.stats.drops
        if now - kp.created >= peer.timers.reject_after_time:
            drops[Drop.EXPIRED] += 1
            return Drop.EXPIRED
        # Cheap check first; the window only moves once the message authenticated.
        if not kp.replay.check(counter):
            drops[Drop.REPLAY] += 1
            return Drop.REPLAY
        plaintext = kp.open(counter, datagram)
        if plaintext is None:
            drops[Drop.DECRYPT_FAILED] += 1
            return Drop.DECRYPT_FAILED
        if not kp.replay.update(counter):
            drops[Drop.REPLAY] += 1
            return Drop.REPLAY

        peer.endpoint = source
        peer.stats.rx_bytes += len(datagram)
        if kp is peer.next:
            # The initiator used the session we derived as responder: it is confirmed.
            self._forget(peer.previous)
            peer.previous, peer.current, peer.next = peer.current, kp, None
            peer.handshake_complete(now)
            self._send_staged(peer, now, out)
        self._keep_key_fresh_receiving(peer, kp, now, out)
        peer.authenticated_received()
        peer.authenticated_traversal(now)
        if not plaintext:
            peer.stats.keepalives_received += 1
            return Received.KEEPALIVE
        peer.data_received(now)

        packet = _trimmed(plaintext)
        if packet is None:
            drops[Drop.MALFORMED_INNER] += 1
            return Drop.MALFORMED_INNER
        if packet[0] >> 4 == 4:
            owner = self.allowed_ips.lookup_v4(packet[12:16])
        else:
            owner = self.allowed_ips.lookup_v6(packet[8:24])
        if owner is not peer:
            drops[Drop.WRONG_SOURCE] += 1
            return Drop.WRONG_SOURCE
        peer.stats.rx_packets += 1
        inner.append(packet)
        return Received.DATA

    def _keep_key_fresh_receiving(self, peer: Peer, kp: Keypair, now: float, out: _Batch) -> None:
        # An initiator whose session is about to die and who is only receiving would
        # otherwise not rekey until it next sends; do it once, shortly before the end.
        if kp is not peer.current or not kp.is_initiator or peer.sent_last_minute_handshake:
            return
        if now - kp.created >= peer.timers.last_minute_rekey_age:
            peer.sent_last_minute_handshake = True
            self._initiate(peer, now, out, retry=False)

    # -- timers --------------------------------------------------------------------------

    def tick(self, now: float) -> list[Outgoing]:
        """Run every timer whose deadline has passed; returns what that sends."""
        out = _Batch()
        for peer in list(self.peers.values()):
            self._tick_peer(peer, now, out)
        return out.result()

    def initiate(self, public_key: bytes, now: float) -> list[Outgoing]:
        """Start a handshake with a peer now (rate limited like any other)."""
        out = _Batch()
        self._initiate(self.peers[public_key], now, out, retry=False)
        return out.result()

    def _tick_peer(self, peer: Peer, now: float, out: _Batch) -> None:
        t = peer.timers
        if peer.retransmit_at is not None and peer.retransmit_at <= now:
            peer.retransmit_at = None
            if peer.handshake_attempts > t.max_handshake_attempts:
                # Give up: nothing queued will ever be sent.
                peer.send_keepalive_at = None
                dropped = len(peer.staged)
                peer.staged.clear()
                self.stats.tx_drops[Drop.HANDSHAKE_TIMEOUT] += dropped
                peer.stats.drops[Drop.HANDSHAKE_TIMEOUT] += dropped
                if peer.zero_keys_at is None:
                    peer.zero_keys_at = now + t.zero_keys_after
            else:
                peer.handshake_attempts += 1
                self._initiate(peer, now, out, retry=True)
        if peer.send_keepalive_at is not None and peer.send_keepalive_at <= now:
            peer.send_keepalive_at = None
            self._send_keepalive(peer, now, out)
            if peer.need_another_keepalive:
                peer.need_another_keepalive = False
                peer.send_keepalive_at = now + t.keepalive_timeout
        if peer.new_handshake_at is not None and peer.new_handshake_at <= now:
            # We sent data and heard nothing back: try a fresh session.
            peer.new_handshake_at = None
            self._initiate(peer, now, out, retry=False)
        if peer.zero_keys_at is not None and peer.zero_keys_at <= now:
            peer.zero_keys_at = None
            self._zero_keys(peer)
            dropped = len(peer.staged)
            peer.staged.clear()
            self.stats.tx_drops[Drop.FLUSHED] += dropped
            peer.stats.drops[Drop.FLUSHED] += dropped
        if peer.persistent_keepalive_at is not None and peer.persistent_keepalive_at <= now:
            peer.persistent_keepalive_at = None
            if peer.persistent_keepalive > 0:
                self._send_keepalive(peer, now, out)


_RECEIVED: Final = frozenset(
    v for k, v in vars(Received).items() if not k.startswith("_") and isinstance(v, str)
)


def _trimmed(plaintext: bytes) -> bytes | None:
    """The IP packet inside a padded plaintext, or ``None`` if it is not one."""
    version = plaintext[0] >> 4
    if version == 4:
        if len(plaintext) < 20:
            return None
        length = int.from_bytes(plaintext[2:4], "big")
    elif version == 6:
        if len(plaintext) < 40:
            return None
        length = 40 + int.from_bytes(plaintext[4:6], "big")
    else:
        return None
    if length > len(plaintext) or (version == 4 and length < 20):
        return None
    return plaintext[:length] if length < len(plaintext) else plaintext
