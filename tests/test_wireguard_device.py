"""Two sans-I/O WireGuard devices talking in memory, on a simulated clock.

Every datagram either device emits is carried to the device bound to its
destination endpoint (or dropped on purpose by the test), so handshakes, data,
keepalives, timers, roaming and cookies run exactly as on a network, only with
``now`` chosen by the test.  Counters are asserted exactly.
"""

from __future__ import annotations

import ipaddress
import random
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# The protocol core needs `cryptography` (X25519, ChaCha20-Poly1305).
pytest.importorskip("cryptography")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from wgpeer import (
    WINDOW_SIZE,
    Drop,
    Outgoing,
    Peer,
    RateLimiter,
    Received,
    TimerConfig,
    WireGuardDevice,
    crypto,
    shortened,
)

A_PRIVATE = crypto.clamp(bytes(range(1, 33)))
B_PRIVATE = crypto.clamp(bytes(range(101, 133)))
C_PRIVATE = crypto.clamp(bytes(range(201, 233)))
A_EP = ("192.0.2.1", 51820)
B_EP = ("192.0.2.2", 51821)
PSK = bytes(range(50, 82))
A_ADDR, B_ADDR = "10.0.0.1", "10.0.0.2"
A_ADDR6, B_ADDR6 = "fd00::1", "fd00::2"
START = 1000.0


def ipv4(src: str, dst: str, payload: bytes = b"hello") -> bytes:
    """A minimal IPv4 packet (the devices do not check the header checksum)."""
    total = 20 + len(payload)
    return (
        bytes([0x45, 0])
        + total.to_bytes(2, "big")
        + bytes(4)
        + bytes([64, 17, 0, 0])
        + ipaddress.IPv4Address(src).packed
        + ipaddress.IPv4Address(dst).packed
        + payload
    )


def ipv6(src: str, dst: str, payload: bytes = b"hello6") -> bytes:
    return (
        bytes([0x60, 0, 0, 0])
        + len(payload).to_bytes(2, "big")
        + bytes([17, 64])
        + ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + payload
    )


class Net:
    """Two devices, A (10.0.0.1) and B (10.0.0.2), and the wire between them."""

    def __init__(
        self,
        *,
        timers_a: TimerConfig | None = None,
        timers_b: TimerConfig | None = None,
        b_knows_a: bool = False,
        keepalive_a: float = 0.0,
        psk: bytes | None = PSK,
    ) -> None:
        self.now = START
        self.a = WireGuardDevice(
            A_PRIVATE, rng=random.Random(1), wall_clock=lambda: 1.7e9 + self.now
        )
        self.b = WireGuardDevice(
            B_PRIVATE, rng=random.Random(2), wall_clock=lambda: 1.7e9 + self.now
        )
        self.pa: Peer = self.a.add_peer(
            self.b.public_key,
            preshared_key=psk,
            allowed_ips=["10.0.0.2/32", "fd00::2/128"],
            endpoint=B_EP,
            persistent_keepalive=keepalive_a,
            timers=timers_a,
        )
        self.pb: Peer = self.b.add_peer(
            self.a.public_key,
            preshared_key=psk,
            allowed_ips=["10.0.0.1/32", "fd00::1/128"],
            endpoint=A_EP if b_knows_a else None,
            timers=timers_b,
        )
        self.devices = {A_EP: self.a, B_EP: self.b}
        self.source = {id(self.a): A_EP, id(self.b): B_EP}
        self.inner: dict[str, list[bytes]] = {"a": [], "b": []}
        #: (from, to, datagram) of everything that crossed the wire.
        self.wire: list[tuple[str, str, bytes]] = []

    def name(self, device: WireGuardDevice) -> str:
        return "a" if device is self.a else "b"

    def carry(self, sender: WireGuardDevice, outgoing: list[Outgoing]) -> None:
        """Deliver *outgoing* and every reply it causes, until the wire is quiet."""
        pending = [(sender, o) for o in outgoing]
        while pending:
            src_device, o = pending.pop(0)
            dst = self.devices.get(o.endpoint)
            assert dst is not None, f"sent to unknown endpoint {o.endpoint}"
            source = self.source[id(src_device)]
            for d in o.datagrams:
                self.wire.append((self.name(src_device), self.name(dst), d))
            inner, replies = dst.decrypt([(d, source) for d in o.datagrams], self.now)
            self.inner[self.name(dst)] += inner
            pending += [(dst, r) for r in replies]

    def send_a(self, *packets: bytes) -> None:
        self.carry(self.a, self.a.encrypt(list(packets), self.now))

    def send_b(self, *packets: bytes) -> None:
        self.carry(self.b, self.b.encrypt(list(packets), self.now))

    def tick(self) -> None:
        self.carry(self.a, self.a.tick(self.now))
        self.carry(self.b, self.b.tick(self.now))

    def kinds(self, since: int = 0) -> list[tuple[str, int, int]]:
        """(direction, message type, length) of wire traffic from index *since*."""
        return [(f"{s}>{d}", dg[0], len(dg)) for s, d, dg in self.wire[since:]]

    def up(self) -> None:
        """Handshake started by A carrying one packet; the session is confirmed both ways."""
        self.send_a(ipv4(A_ADDR, B_ADDR, b"first"))
        assert self.inner["b"] == [ipv4(A_ADDR, B_ADDR, b"first")]
        self.inner["b"].clear()


def test_handshake_carries_queued_packet_and_counts_exactly() -> None:
    net = Net()
    packet = ipv4(A_ADDR, B_ADDR)
    net.send_a(packet)
    # Initiation, response, then the staged packet (no separate keepalive needed).
    assert net.kinds() == [("a>b", 1, 148), ("b>a", 2, 92), ("a>b", 4, 16 + 32 + 16)]
    assert net.inner["b"] == [packet]
    assert net.a.stats.rx == {Received.RESPONSE: 1}
    assert net.b.stats.rx == {Received.INITIATION: 1, Received.DATA: 1}
    assert not net.a.stats.rx_drops and not net.b.stats.rx_drops
    assert net.a.stats.tx_datagrams == 2 and net.b.stats.tx_datagrams == 1
    assert net.pa.stats.handshakes_completed == 1 and net.pb.stats.handshakes_completed == 1
    assert net.pa.stats.initiations_sent == 1 and net.pb.stats.responses_sent == 1
    assert net.pa.stats.tx_packets == 1 and net.pb.stats.rx_packets == 1
    assert net.pa.stats.tx_bytes == 148 + 64 and net.pb.stats.rx_bytes == 148 + 64
    assert net.pb.stats.tx_bytes == 92 and net.pa.stats.rx_bytes == 92
    assert net.pa.stats.last_handshake == START
    # B learnt A's endpoint from the authenticated initiation.
    assert net.pb.endpoint == A_EP
    assert net.pa.current is not None and net.pb.current is not None
    assert net.pa.current.is_initiator and not net.pb.current.is_initiator


def test_transport_both_ways_v4_and_v6() -> None:
    net = Net()
    net.up()
    net.send_b(ipv4(B_ADDR, A_ADDR, b"back"), ipv6(B_ADDR6, A_ADDR6, b"six"))
    net.send_a(ipv6(A_ADDR6, B_ADDR6, b"six-a"))
    assert net.inner["a"] == [ipv4(B_ADDR, A_ADDR, b"back"), ipv6(B_ADDR6, A_ADDR6, b"six")]
    assert net.inner["b"] == [ipv6(A_ADDR6, B_ADDR6, b"six-a")]
    assert net.a.stats.rx[Received.DATA] == 2 and net.b.stats.rx[Received.DATA] == 2
    # Padding to 16 bytes: header + padded plaintext + tag.
    assert all((len(d) - 32) % 16 == 0 for _, _, d in net.wire if d[0] == 4)


def test_padding_to_16_never_beyond_the_mtu() -> None:
    net = Net()
    net.up()
    mtu = net.a.mtu
    sizes = [20, 21, 36, mtu - 20, mtu - 1, mtu, mtu + 3]
    packets = [ipv4(A_ADDR, B_ADDR, bytes(n - 20)) for n in sizes]
    out = net.a.encrypt(packets, net.now)
    lengths = [len(d) - 32 for d in out[0].datagrams]
    assert lengths == [32, 32, 48, mtu - 12, mtu, mtu, mtu + 3]
    net.carry(net.a, out)
    assert net.inner["b"] == packets  # padding removed again


def test_handshake_started_by_b_and_batched_output_grouped_per_endpoint() -> None:
    net = Net(b_knows_a=True)
    packets = [ipv4(B_ADDR, A_ADDR, bytes([i]) * (i + 1)) for i in range(5)]
    net.send_b(*packets)
    assert net.inner["a"] == packets
    assert net.pb.stats.handshakes_completed == 1
    out = net.b.encrypt(packets, net.now)
    assert len(out) == 1 and out[0].endpoint == A_EP and len(out[0].datagrams) == 5
    counters = [int.from_bytes(d[8:16], "little") for d in out[0].datagrams]
    assert counters == sorted(counters)


def test_no_route_and_malformed_outbound_are_counted() -> None:
    net = Net()
    out = net.a.encrypt([ipv4(A_ADDR, "10.9.9.9"), b"", b"\x45\x00", b"\x99" * 40], net.now)
    assert out == []
    assert net.a.stats.tx_drops == {Drop.NO_ROUTE: 1, Drop.MALFORMED: 3}


def test_one_initiation_per_rekey_timeout_while_packets_queue() -> None:
    net = Net()
    first = net.a.encrypt([ipv4(A_ADDR, B_ADDR, b"1")], net.now)
    net.now += 4.9
    second = net.a.encrypt([ipv4(A_ADDR, B_ADDR, b"2")], net.now)
    assert [len(d) for o in first for d in o.datagrams] == [148]
    assert second == []
    assert len(net.pa.staged) == 2 and net.pa.stats.initiations_sent == 1


def test_queue_is_bounded_and_keeps_the_newest() -> None:
    net = Net(timers_a=TimerConfig(queue_limit=4))
    packets = [ipv4(A_ADDR, B_ADDR, bytes([i])) for i in range(6)]
    out = net.a.encrypt(packets, net.now)
    assert [len(d) for o in out for d in o.datagrams] == [148]
    assert net.a.stats.tx_drops == {Drop.QUEUE_FULL: 2}
    assert net.pa.stats.drops == {Drop.QUEUE_FULL: 2}
    net.carry(net.a, out)
    assert net.inner["b"] == packets[2:]


def test_rekey_after_time_by_initiator_only() -> None:
    net = Net()
    net.up()
    old = net.pa.current
    net.now += 119
    mark = len(net.wire)
    net.send_b(ipv4(B_ADDR, A_ADDR))  # the responder never rekeys on time
    assert net.kinds(mark) == [("b>a", 4, 64)]
    net.now += 1.5
    mark = len(net.wire)
    net.send_a(ipv4(A_ADDR, B_ADDR, b"late"))
    # The packet still goes out on the old key, then a fresh handshake follows.
    assert [k[:2] for k in net.kinds(mark)] == [("a>b", 4), ("a>b", 1), ("b>a", 2), ("a>b", 4)]
    assert net.pa.current is not old and net.pa.previous is old
    assert net.pa.stats.handshakes_completed == 2
    assert net.pb.stats.handshakes_completed == 2
    assert net.inner["b"] == [ipv4(A_ADDR, B_ADDR, b"late")]
    # Packets sealed with the previous key still open after the rotation.
    assert net.pb.previous is not None


def test_rekey_after_messages() -> None:
    net = Net(timers_a=TimerConfig(rekey_after_messages=5))
    net.up()  # counter 0 used
    mark = len(net.wire)
    net.send_a(*[ipv4(A_ADDR, B_ADDR, bytes([i])) for i in range(4)])  # counters 1..4
    assert [k[:2] for k in net.kinds(mark)] == [("a>b", 4)] * 4
    net.now += 6  # past REKEY_TIMEOUT since the first initiation, which rate-limits the next
    mark = len(net.wire)
    net.send_a(ipv4(A_ADDR, B_ADDR), ipv4(A_ADDR, B_ADDR))  # counters 5, 6: 6 > 5
    assert [k[:2] for k in net.kinds(mark)][:3] == [("a>b", 4), ("a>b", 4), ("a>b", 1)]
    assert net.pa.stats.handshakes_completed == 2


def test_reject_after_messages_stages_and_rehandshakes() -> None:
    limits = TimerConfig(reject_after_messages=3)
    net = Net(timers_a=limits, timers_b=limits)
    net.up()  # counter 0
    first = net.pa.current
    net.now += 6  # past REKEY_TIMEOUT since the first initiation, which rate-limits the next
    mark = len(net.wire)
    net.send_a(*[ipv4(A_ADDR, B_ADDR, bytes([i])) for i in range(4)])
    # Counters 1 and 2 fit; the rest is staged behind a new handshake and then sent.
    assert [k[:2] for k in net.kinds(mark)] == [
        ("a>b", 4),
        ("a>b", 4),
        ("a>b", 1),
        ("b>a", 2),
        ("a>b", 4),
        ("a>b", 4),
    ]
    assert net.pa.current is not first
    assert len(net.inner["b"]) == 4


def test_keepalive_answers_one_way_data() -> None:
    net = Net()
    net.up()
    net.now += 9.9
    net.tick()
    mark = len(net.wire)
    assert net.kinds(mark) == []
    net.now += 0.2
    net.tick()
    assert net.kinds(mark) == [("b>a", 4, 32)]
    assert net.a.stats.rx[Received.KEEPALIVE] == 1
    assert net.pb.stats.keepalives_sent == 1 and net.pa.stats.keepalives_received == 1
    net.now += 60
    net.tick()
    assert net.kinds(mark) == [("b>a", 4, 32)]  # nothing more to acknowledge


def test_data_without_answer_triggers_new_handshake() -> None:
    net = Net()
    net.up()
    net.now += 10.5
    net.tick()  # B's keepalive acknowledges up()'s packet, which disarms A's timer
    assert net.pa.deadlines() == [START + 540]  # only the key-erasure timer is left
    net.now += 20
    lost = net.a.encrypt([ipv4(A_ADDR, B_ADDR)], net.now)  # never delivered
    assert len(lost) == 1
    deadline = net.pa.new_handshake_at
    assert deadline is not None
    assert 15.0 <= deadline - net.now <= 15.0 + TimerConfig().rekey_timeout_jitter
    net.now = deadline - 0.001
    mark = len(net.wire)
    net.tick()
    assert net.kinds(mark) == []
    net.now = deadline
    net.tick()
    assert [k[:2] for k in net.kinds(mark)][:2] == [("a>b", 1), ("b>a", 2)]


def test_retries_are_jittered_and_give_up_after_rekey_attempt_time() -> None:
    net = Net()
    t = net.pa.timers
    first = net.a.encrypt([ipv4(A_ADDR, B_ADDR)], net.now)
    assert [len(d) for o in first for d in o.datagrams] == [148]
    sent_at = [net.now]
    while net.pa.retransmit_at is not None:
        gap = net.pa.retransmit_at - sent_at[-1]
        assert t.rekey_timeout <= gap < t.rekey_timeout + t.rekey_timeout_jitter
        net.now = net.pa.retransmit_at
        out = net.a.tick(net.now)  # dropped on the floor: B never hears
        if out:
            assert [len(d) for o in out for d in o.datagrams] == [148]
            sent_at.append(net.now)
    # As wireguard-go: the first initiation and 19 retries ("after 20 attempts, giving up").
    assert t.max_handshake_attempts == 18
    assert len(sent_at) == 20
    assert net.pa.stats.initiations_sent == len(sent_at)
    assert 90 <= sent_at[-1] - sent_at[0] <= 95 + 19 * 0.334
    assert net.a.stats.tx_drops == {Drop.HANDSHAKE_TIMEOUT: 1}
    assert not net.pa.staged
    assert net.pa.zero_keys_at is not None


def test_jitter_varies() -> None:
    gaps = set()
    for seed in range(5):
        net = Net()
        net.a._rng = random.Random(seed)
        net.a.encrypt([ipv4(A_ADDR, B_ADDR)], net.now)
        assert net.pa.retransmit_at is not None
        gaps.add(round(net.pa.retransmit_at - net.now, 6))
    assert len(gaps) == 5


def test_session_expires_after_reject_after_time() -> None:
    net = Net()
    net.up()
    held = net.b.encrypt([ipv4(B_ADDR, A_ADDR, b"held")], net.now)
    net.now += 180
    inner, _ = net.a.decrypt([(held[0].datagrams[0], B_EP)], net.now)
    assert inner == []
    assert net.a.stats.rx_drops == {Drop.EXPIRED: 1}
    assert net.pa.stats.drops == {Drop.EXPIRED: 1}
    # Sending now needs a new session: B (responder, never rekeys on time) stages.
    mark = len(net.wire)
    net.send_b(ipv4(B_ADDR, A_ADDR, b"after"))
    assert [k[:2] for k in net.kinds(mark)] == [("b>a", 1), ("a>b", 2), ("b>a", 4)]
    assert net.inner["a"] == [ipv4(B_ADDR, A_ADDR, b"after")]


def test_key_material_is_zeroed_after_three_reject_times() -> None:
    net = Net()
    net.up()
    assert net.pa.zero_keys_at == START + 540
    while net.now < START + 540:
        net.now = min(net.now + 10, START + 540)
        net.tick()
    assert net.pa.current is None and net.pa.previous is None and net.pa.next is None
    assert net.pb.current is None
    assert net.a._index == {} and net.b._index == {}


def test_roaming_follows_the_latest_authenticated_source() -> None:
    net = Net()
    net.up()
    moved = ("198.51.100.7", 4000)
    net.devices[moved] = net.a
    net.source[id(net.a)] = moved
    net.send_a(ipv4(A_ADDR, B_ADDR, b"from elsewhere"))
    assert net.pb.endpoint == moved
    out = net.b.encrypt([ipv4(B_ADDR, A_ADDR)], net.now)
    assert [o.endpoint for o in out] == [moved]
    # A forged (unauthenticated) datagram from a third address moves nothing.
    forged = bytearray(out[0].datagrams[0])
    forged[-1] ^= 1
    net.b.decrypt([(bytes(forged), ("203.0.113.9", 1))], net.now)
    assert net.pb.endpoint == moved


def test_cookie_reply_under_load_then_mac2_accepted() -> None:
    net = Net()
    out = net.a.encrypt([ipv4(A_ADDR, B_ADDR)], net.now)
    initiation = out[0].datagrams[0]
    inner, replies = net.b.decrypt([(initiation, A_EP)], net.now, under_load=True)
    assert inner == []
    assert [len(d) for o in replies for d in o.datagrams] == [64]
    assert replies[0].endpoint == A_EP
    assert net.b.stats.rx == {Received.COOKIE_SENT: 1}
    assert net.pb.current is None and net.pb.next is None  # no DH work done
    net.a.decrypt([(replies[0].datagrams[0], B_EP)], net.now)
    assert net.a.stats.rx == {Received.COOKIE_REPLY: 1}
    # The retry carries mac2; B, still under load, now answers it.
    assert net.pa.retransmit_at is not None
    net.now = net.pa.retransmit_at
    retry = net.a.tick(net.now)
    again = retry[0].datagrams[0]
    assert again[-16:] != bytes(16)
    inner, replies = net.b.decrypt([(again, A_EP)], net.now, under_load=True)
    assert net.b.stats.rx == {Received.COOKIE_SENT: 1, Received.INITIATION: 1}
    assert [len(d) for o in replies for d in o.datagrams] == [92]
    # The cookie is bound to the source address: from elsewhere it is refused again.
    net.now += 1
    other = net.a.initiate(net.b.public_key, net.now + 10)[0].datagrams[0]
    net.b.decrypt([(other, ("192.0.2.99", 1))], net.now, under_load=True)
    assert net.b.stats.rx[Received.COOKIE_SENT] == 2


def _cookie_for_a(net: Net) -> None:
    """B, under load, answers A's initiation with a cookie reply that A takes."""
    first = net.a.initiate(net.b.public_key, net.now)[0].datagrams[0]
    _, replies = net.b.decrypt([(first, A_EP)], net.now, under_load=True)
    net.a.decrypt([(replies[0].datagrams[0], B_EP)], net.now)
    assert net.a.stats.rx == {Received.COOKIE_REPLY: 1}


def _initiations(net: Net, count: int, start: float = 0.0) -> list[bytes]:
    """*count* initiations from A, each with a fresh timestamp (and A's cookie in mac2).

    A makes them at its own times *start* + 6 s, + 12 s ... after ``net.now`` (far
    enough apart for its REKEY_TIMEOUT, near enough for its cookie to stay fresh).
    """
    result = []
    for i in range(count):
        net.a._wall_clock = lambda wall=1.7e9 + net.now + start + 1 + i: wall
        result += net.a.initiate(net.b.public_key, net.now + start + 6 * (i + 1))[0].datagrams
    return result


def test_under_load_handshakes_are_rate_limited_per_source() -> None:
    net = Net()
    _cookie_for_a(net)
    burst = _initiations(net, 8)
    assert all(d[-16:] != bytes(16) for d in burst)  # all carry mac2
    net.b.decrypt([(d, A_EP) for d in burst], net.now, under_load=True)
    # All 8 prove their source; the bucket lets 5 through to the DH (the first is
    # accepted, the next four are within the per-peer flood interval), 3 stop before.
    assert net.b.stats.mac2_accepted == 8
    assert net.b.stats.rx == {Received.COOKIE_SENT: 1, Received.INITIATION: 1}
    assert net.b.stats.rx_drops == {Drop.HANDSHAKE_FLOOD: 4, Drop.HANDSHAKE_RATE_LIMITED: 3}
    assert net.pb.stats.drops == {Drop.HANDSHAKE_FLOOD: 4}
    # A token comes back every 50 ms.
    later = _initiations(net, 2, start=50)
    net.b.decrypt([(d, A_EP) for d in later], net.now + 0.05, under_load=True)
    assert net.b.stats.rx[Received.INITIATION] == 2
    assert net.b.stats.rx_drops[Drop.HANDSHAKE_RATE_LIMITED] == 4


def test_rate_limit_applies_only_under_load() -> None:
    net = Net()
    _cookie_for_a(net)
    burst = _initiations(net, 8)
    net.b.decrypt([(d, A_EP) for d in burst], net.now, under_load=False)
    assert net.b.stats.mac2_accepted == 0  # not looked at when not under load
    assert net.b.stats.rx_drops == {Drop.HANDSHAKE_FLOOD: 7}
    assert len(net.b.rate_limiter) == 0


def test_responses_are_rate_limited_too() -> None:
    net = Net(timers_a=TimerConfig(rekey_timeout=0.1))
    # A is under load and B's address has just spent its only token.
    net.a.rate_limiter = RateLimiter(rate=1, burst=1)
    assert net.a.rate_limiter.allow(B_EP[0], net.now)

    def exchange() -> None:
        initiation = net.a.initiate(net.b.public_key, net.now)[0].datagrams[0]
        _, responses = net.b.decrypt([(initiation, A_EP)], net.now)
        _, replies = net.a.decrypt([(responses[0].datagrams[0], B_EP)], net.now, under_load=True)
        net.b.decrypt([(d, A_EP) for o in replies for d in o.datagrams], net.now)

    exchange()  # B's response has no mac2 yet: a cookie reply, which B takes
    assert net.a.stats.rx == {Received.COOKIE_SENT: 1}
    assert net.b.stats.rx == {Received.INITIATION: 1, Received.COOKIE_REPLY: 1}
    net.now += 0.2
    exchange()  # with mac2 now, but 0.2 s is not enough for a new token
    assert net.a.stats.mac2_accepted == 1
    assert net.a.stats.rx_drops == {Drop.HANDSHAKE_RATE_LIMITED: 1}
    assert net.pa.stats.handshakes_completed == 0
    net.now += 0.8
    exchange()
    assert net.a.stats.mac2_accepted == 2
    assert net.a.stats.rx[Received.RESPONSE] == 1
    assert net.pa.stats.handshakes_completed == 1


def test_cookie_reply_for_unknown_index_or_forged_is_dropped() -> None:
    net = Net()
    net.a.encrypt([ipv4(A_ADDR, B_ADDR)], net.now)
    index = next(iter(net.a._index))
    forged = (3).to_bytes(4, "little") + index.to_bytes(4, "little") + bytes(56)
    unknown = (3).to_bytes(4, "little") + (index ^ 1).to_bytes(4, "little") + bytes(56)
    net.a.decrypt([(forged, B_EP), (unknown, B_EP)], net.now)
    assert net.a.stats.rx_drops == {Drop.BAD_COOKIE: 1, Drop.UNKNOWN_RECEIVER: 1}


def test_persistent_keepalive_brings_the_tunnel_up_and_keeps_it() -> None:
    net = Net(keepalive_a=25)
    assert net.a.next_deadline() == float("-inf")
    net.tick()
    # Initiation, response, and the keepalive that confirms the session to B.
    assert net.kinds() == [("a>b", 1, 148), ("b>a", 2, 92), ("a>b", 4, 32)]
    assert net.pb.stats.handshakes_completed == 1
    net.now += 24.9
    net.tick()
    assert len(net.wire) == 3
    net.now += 0.1
    net.tick()
    assert net.kinds(3) == [("a>b", 4, 32)]


def test_replayed_and_old_datagrams_are_dropped() -> None:
    net = Net()
    net.up()
    out = net.a.encrypt(
        [ipv4(A_ADDR, B_ADDR, i.to_bytes(2, "big")) for i in range(WINDOW_SIZE + 2)], net.now
    )
    datagrams = out[0].datagrams
    first, rest = datagrams[0], datagrams[1:]
    inner, _ = net.b.decrypt([(d, A_EP) for d in rest], net.now)
    assert len(inner) == WINDOW_SIZE + 1
    inner, _ = net.b.decrypt([(first, A_EP), (rest[-1], A_EP), (rest[-5], A_EP)], net.now)
    assert inner == []
    assert net.b.stats.rx_drops == {Drop.REPLAY: 3}
    assert net.pb.stats.drops == {Drop.REPLAY: 3}


def test_out_of_order_within_window_is_accepted_once() -> None:
    net = Net()
    net.up()
    out = net.a.encrypt([ipv4(A_ADDR, B_ADDR, bytes([i])) for i in range(5)], net.now)
    d = out[0].datagrams
    inner, _ = net.b.decrypt([(x, A_EP) for x in (d[4], d[0], d[2], d[1], d[3], d[2])], net.now)
    assert len(inner) == 5
    assert net.b.stats.rx_drops == {Drop.REPLAY: 1}


def test_forged_counter_does_not_move_the_window() -> None:
    net = Net()
    net.up()
    good = net.a.encrypt([ipv4(A_ADDR, B_ADDR)], net.now)[0].datagrams[0]
    forged = bytearray(good)
    forged[8:16] = (10**6).to_bytes(8, "little")
    inner, _ = net.b.decrypt([(bytes(forged), A_EP), (good, A_EP)], net.now)
    assert len(inner) == 1
    assert net.b.stats.rx_drops == {Drop.DECRYPT_FAILED: 1}


def test_wrong_inner_source_is_dropped() -> None:
    net = Net()
    net.up()
    net.send_a(ipv4("10.0.0.77", B_ADDR), ipv6("fd00::77", B_ADDR6))
    assert net.inner["b"] == []
    assert net.b.stats.rx_drops == {Drop.WRONG_SOURCE: 2}
    assert net.pb.stats.drops == {Drop.WRONG_SOURCE: 2}


def test_source_owned_by_another_peer_is_dropped() -> None:
    net = Net()
    c_public = crypto.public_key(C_PRIVATE)
    net.b.add_peer(c_public, allowed_ips=["10.0.0.3/32"])
    net.up()
    # A may not speak for C's address, even though B knows that address.
    net.send_a(ipv4("10.0.0.3", B_ADDR))
    assert net.inner["b"] == []
    assert net.b.stats.rx_drops == {Drop.WRONG_SOURCE: 1}


def test_garbage_and_truncated_messages_are_counted_as_malformed() -> None:
    net = Net()
    net.up()
    initiation = net.a.initiate(net.b.public_key, net.now + 10)[0].datagrams[0]
    transport = net.a.encrypt([ipv4(A_ADDR, B_ADDR)], net.now)[0].datagrams[0]
    bad = [
        b"",
        b"\x01",
        b"\x05\x00\x00\x00" + bytes(100),
        b"\x01\x01\x00\x00" + initiation[4:],  # reserved bytes must be zero
        initiation[:-1],
        initiation + b"\x00",
        bytes([2]) + bytes(90),
        bytes([3]) + bytes(10),
        transport[:31],
    ]
    inner, replies = net.b.decrypt([(d, A_EP) for d in bad], net.now)
    assert inner == [] and replies == []
    assert net.b.stats.rx_drops == {Drop.MALFORMED: len(bad)}


def test_bad_mac1_wrong_keys_and_unknown_peer() -> None:
    net = Net()
    initiation = bytearray(net.a.encrypt([ipv4(A_ADDR, B_ADDR)], net.now)[0].datagrams[0])
    initiation[-20] ^= 1  # inside mac1
    # C is unknown to B but knows B's public key, so mac1 is right.
    c = WireGuardDevice(C_PRIVATE, wall_clock=lambda: 1.7e9)
    c.add_peer(net.b.public_key, endpoint=B_EP, allowed_ips=["10.0.0.2/32"])
    from_c = c.encrypt([ipv4("10.0.0.3", B_ADDR)], 0.0)[0].datagrams[0]
    inner, replies = net.b.decrypt([(bytes(initiation), A_EP), (from_c, A_EP)], net.now)
    assert inner == []
    assert replies == []
    assert net.b.stats.rx_drops == {Drop.BAD_MAC1: 1, Drop.HANDSHAKE_FAILED: 1}


def test_mismatched_preshared_key_fails_at_the_initiator() -> None:
    net = Net()
    net.pb.preshared_key = bytes(32)
    net.send_a(ipv4(A_ADDR, B_ADDR))
    assert net.a.stats.rx_drops == {Drop.HANDSHAKE_FAILED: 1}
    assert net.pa.current is None and net.inner["b"] == []


def test_replayed_initiation_is_refused() -> None:
    net = Net()
    out = net.a.encrypt([ipv4(A_ADDR, B_ADDR)], net.now)
    initiation = out[0].datagrams[0]
    net.carry(net.a, out)
    net.now += 1
    _, replies = net.b.decrypt([(initiation, ("203.0.113.5", 9))], net.now)
    assert replies == []
    assert net.b.stats.rx_drops == {Drop.HANDSHAKE_REPLAY: 1}
    assert net.pb.endpoint == A_EP  # a replay does not move the endpoint


def test_transport_for_unknown_index_is_dropped() -> None:
    net = Net()
    net.up()
    good = net.a.encrypt([ipv4(A_ADDR, B_ADDR)], net.now)[0].datagrams[0]
    other = bytearray(good)
    other[4] ^= 0xFF
    net.b.decrypt([(bytes(other), A_EP)], net.now)
    assert net.b.stats.rx_drops == {Drop.UNKNOWN_RECEIVER: 1}


def test_remove_peer_forgets_routes_and_indices() -> None:
    net = Net()
    net.up()
    net.b.remove_peer(net.a.public_key)
    assert net.b.allowed_ips.lookup(A_ADDR) is None
    assert net.b._index == {}
    good = net.a.encrypt([ipv4(A_ADDR, B_ADDR)], net.now)[0].datagrams[0]
    net.b.decrypt([(good, A_EP)], net.now)
    assert net.b.stats.rx_drops == {Drop.UNKNOWN_RECEIVER: 1}


def test_add_peer_refuses_bad_keys() -> None:
    dev = WireGuardDevice(A_PRIVATE)
    with pytest.raises(ValueError, match="own public key"):
        dev.add_peer(dev.public_key)
    with pytest.raises(ValueError, match="low-order"):
        dev.add_peer(bytes(32))
    dev.add_peer(crypto.public_key(B_PRIVATE))
    with pytest.raises(ValueError, match="exists"):
        dev.add_peer(crypto.public_key(B_PRIVATE))


def _outcomes(dev: WireGuardDevice) -> int:
    return sum(dev.stats.rx.values()) + sum(dev.stats.rx_drops.values())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=200),
            st.sampled_from([1, 2, 3, 4]).flatmap(
                lambda k: st.binary(min_size=0, max_size=180).map(
                    lambda b: k.to_bytes(4, "little") + b
                )
            ),
        ),
        max_size=20,
    ),
    st.booleans(),
)
def test_arbitrary_datagrams_never_raise_and_counters_add_up(
    junk: list[bytes], under_load: bool
) -> None:
    net = Net()
    net.up()
    before = _outcomes(net.b)
    received_before = net.b.stats.rx_datagrams
    inner, _ = net.b.decrypt([(d, A_EP) for d in junk], net.now, under_load=under_load)
    assert inner == []
    assert net.b.stats.rx_datagrams - received_before == len(junk)
    assert _outcomes(net.b) - before == len(junk)
    assert net.b.stats.rx[Received.DATA] == 1  # only the one from up()


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_mutated_real_datagrams_never_raise_and_counters_add_up(data: st.DataObject) -> None:
    net = Net()
    out = net.a.encrypt([ipv4(A_ADDR, B_ADDR)], net.now)
    initiation = out[0].datagrams[0]
    net.carry(net.a, out)
    transport = net.a.encrypt([ipv4(A_ADDR, B_ADDR, b"x" * 30)], net.now)[0].datagrams[0]
    base = data.draw(st.sampled_from([initiation, transport]))
    mutated = bytearray(base)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(mutated) - 1))
        mutated[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(mutated)))
    datagram = bytes(mutated[:cut] if data.draw(st.booleans()) else mutated)
    before = _outcomes(net.b)
    inner, _ = net.b.decrypt([(datagram, A_EP)], net.now + 1)
    assert _outcomes(net.b) - before == 1
    if datagram != base:
        assert inner == []
        assert sum(net.b.stats.rx.values()) - 2 in (0, 1)  # at most a cookie/handshake


def test_duplicate_then_tampered_copy_both_count_as_replay() -> None:
    net = Net()
    net.up()
    good = net.a.encrypt([ipv4(A_ADDR, B_ADDR)], net.now)[0].datagrams[0]
    tampered = good[:-1] + bytes([good[-1] ^ 1])
    net.b.decrypt([(good, A_EP), (good, A_EP), (tampered, A_EP)], net.now)
    # The window check comes first, so a tampered copy of a seen counter costs no decryption.
    assert net.b.stats.rx_drops == {Drop.REPLAY: 2}
    assert net.b.stats.rx == {Received.INITIATION: 1, Received.DATA: 2}


def test_initiator_that_only_receives_rekeys_before_the_session_dies() -> None:
    net = Net()
    net.up()
    net.now = START + 164
    mark = len(net.wire)
    net.send_b(ipv4(B_ADDR, A_ADDR, b"early"))
    assert net.kinds(mark) == [("b>a", 4, 64)]
    net.now = START + 165
    net.send_b(ipv4(B_ADDR, A_ADDR, b"last minute"))
    assert [k[:2] for k in net.kinds(mark + 1)] == [("b>a", 4), ("a>b", 1), ("b>a", 2), ("a>b", 4)]
    assert net.pa.stats.handshakes_completed == 2
    net.now += 6
    net.send_b(ipv4(B_ADDR, A_ADDR, b"once only"))
    assert [k[:2] for k in net.kinds(mark + 5)] == [("b>a", 4)]


def test_initiations_faster_than_the_flood_limit_are_refused() -> None:
    net = Net()
    net.carry(net.a, net.a.initiate(net.b.public_key, net.now))
    # Accepted, answered, and confirmed by A's keepalive.
    assert net.b.stats.rx == {Received.INITIATION: 1, Received.KEEPALIVE: 1}
    # A newer initiation (later timestamp) arriving 10 ms after the last accepted one.
    wall = 1.7e9 + net.now + 1
    net.a._wall_clock = lambda: wall
    again = net.a.initiate(net.b.public_key, net.now + 10)[0].datagrams[0]
    net.b.decrypt([(again, A_EP)], net.now + 0.01)
    assert net.b.stats.rx_drops == {Drop.HANDSHAKE_FLOOD: 1}
    net.b.decrypt([(again, A_EP)], net.now + 0.03)
    assert net.b.stats.rx[Received.INITIATION] == 2


def test_simultaneous_initiations_recover_on_retry() -> None:
    net = Net(b_knows_a=True)
    init_a = net.a.encrypt([ipv4(A_ADDR, B_ADDR, b"a")], net.now)[0].datagrams[0]
    init_b = net.b.encrypt([ipv4(B_ADDR, A_ADDR, b"b")], net.now)[0].datagrams[0]
    # The initiations cross; each side answers the other's and forgets its own ...
    _, resp_b = net.b.decrypt([(init_a, A_EP)], net.now)
    _, resp_a = net.a.decrypt([(init_b, B_EP)], net.now)
    # ... so neither response finds the handshake it answers.
    net.carry(net.b, resp_b)
    net.carry(net.a, resp_a)
    assert net.a.stats.rx_drops == {Drop.UNKNOWN_RECEIVER: 1}
    assert net.b.stats.rx_drops == {Drop.UNKNOWN_RECEIVER: 1}
    assert net.inner == {"a": [], "b": []}
    # The retry timers settle it and the queued packets flow.
    for _ in range(12):
        net.now += 0.5
        net.tick()
    assert net.inner == {"a": [ipv4(B_ADDR, A_ADDR, b"b")], "b": [ipv4(A_ADDR, B_ADDR, b"a")]}


def test_shortened_timers() -> None:
    t = shortened(12)
    assert t.rekey_after_time == 10 and t.reject_after_time == 15
    assert t.keepalive_timeout == 10 / 12 and t.max_handshake_attempts == 18
    with pytest.raises(ValueError, match="positive"):
        shortened(0)
    with pytest.raises(ValueError, match="positive"):
        TimerConfig(rekey_timeout=-1)
    net = Net(timers_a=t)
    net.up()
    net.now += 10
    mark = len(net.wire)
    net.send_a(ipv4(A_ADDR, B_ADDR))
    assert [k[:2] for k in net.kinds(mark)][:2] == [("a>b", 4), ("a>b", 1)]
