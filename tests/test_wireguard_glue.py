"""examples/wireguard.py's pumps and timer task, in memory and on Trio's virtual clock.

Two tunnels run against in-memory TUN streams (``trio_tun.testing.memory_tun_pair``)
and an in-memory UDP network, so the glue is exercised without root, quickly, and
with timers that fire on simulated time.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest
import trio
import trio.testing

from trio_tun.testing import memory_tun_pair

# The protocol core needs `cryptography` (X25519, ChaCha20-Poly1305).
pytest.importorskip("cryptography")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from wgpeer import Received, WireGuardDevice, crypto

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("wireguard_example", EXAMPLES / "wireguard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


example = _load_example()
Endpoint = tuple[str, int]
A_EP: Endpoint = ("192.0.2.1", 51820)
B_EP: Endpoint = ("192.0.2.2", 51820)


class MemoryUdp:
    """One socket of an in-memory UDP network (datagrams are never lost here)."""

    def __init__(self, network: dict[Endpoint, MemoryUdp], local: Endpoint) -> None:
        self.network = network
        self.local = local
        network[local] = self
        self._send, self._receive = trio.open_memory_channel[tuple[bytes, Endpoint]](1000)
        self.sent = 0

    async def receive_batch(self) -> list[tuple[bytes, Endpoint]]:
        batch = [await self._receive.receive()]
        while True:
            try:
                batch.append(self._receive.receive_nowait())
            except trio.WouldBlock:
                return batch

    async def send_many(self, items: list[tuple[bytes, Endpoint]]) -> None:
        for datagram, destination in items:
            self.network[destination]._send.send_nowait((datagram, self.local))
            self.sent += 1
        await trio.lowlevel.checkpoint()

    @property
    def counters(self) -> MemoryUdp:
        return self

    @property
    def tx_datagrams(self) -> int:
        return self.sent


def ipv4(src: str, dst: str, payload: bytes) -> bytes:
    header = bytes([0x45, 0]) + (20 + len(payload)).to_bytes(2, "big") + bytes(4)
    header += bytes([64, 17, 0, 0])
    return header + ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed + payload


@pytest.mark.trio
async def test_tunnels_carry_packets_and_keepalive_on_virtual_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a_key, b_key = crypto.generate_private_key(), crypto.generate_private_key()
    a = WireGuardDevice(a_key, rng=random.Random(1))
    b = WireGuardDevice(b_key, rng=random.Random(2))
    peer_b = a.add_peer(b.public_key, allowed_ips=["10.0.0.2/32"], endpoint=B_EP)
    peer_a = b.add_peer(a.public_key, allowed_ips=["10.0.0.1/32"])
    network: dict[Endpoint, MemoryUdp] = {}
    app_a, tun_a = memory_tun_pair(names=("appa", "tuna"))
    app_b, tun_b = memory_tun_pair(names=("appb", "tunb"))
    udp_a, udp_b = MemoryUdp(network, A_EP), MemoryUdp(network, B_EP)
    async with trio.open_nursery() as nursery:
        for device, tun, udp in ((a, tun_a, udp_a), (b, tun_b, udp_b)):
            tunnel = example.Tunnel(device, tun, udp)
            nursery.start_soon(tunnel.run)
        packets = [ipv4("10.0.0.1", "10.0.0.2", bytes([i]) * 100) for i in range(3)]
        await app_a.send_batch(packets)
        with trio.fail_after(5):
            received = [await app_b.receive() for _ in packets]
        assert received == packets
        assert peer_b.stats.handshakes_completed == 1
        assert peer_a.endpoint == A_EP
        # B has nothing to say; after KEEPALIVE_TIMEOUT its timer task sends a keepalive.
        await trio.sleep(11)
        assert peer_a.stats.keepalives_sent == 1
        assert a.stats.rx[Received.KEEPALIVE] == 1
        # And the tunnel still works the other way.
        await app_b.send(ipv4("10.0.0.2", "10.0.0.1", b"back"))
        with trio.fail_after(5):
            assert await app_a.receive() == ipv4("10.0.0.2", "10.0.0.1", b"back")
        nursery.cancel_scope.cancel()
    assert not a.stats.rx_drops and not b.stats.rx_drops


@pytest.mark.trio
async def test_timer_task_retries_an_unanswered_handshake(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a = WireGuardDevice(crypto.generate_private_key(), rng=random.Random(3))
    peer = a.add_peer(
        crypto.public_key(crypto.generate_private_key()),
        allowed_ips=["10.0.0.2/32"],
        endpoint=B_EP,
    )
    network: dict[Endpoint, MemoryUdp] = {}
    app, tun = memory_tun_pair()
    udp, silent = MemoryUdp(network, A_EP), MemoryUdp(network, B_EP)
    async with trio.open_nursery() as nursery:
        tunnel = example.Tunnel(a, tun, udp)
        nursery.start_soon(tunnel.run)
        await app.send(ipv4("10.0.0.1", "10.0.0.2", b"x"))
        await trio.sleep(0.1)
        assert peer.stats.initiations_sent == 1
        await trio.sleep(5.5)
        assert peer.stats.initiations_sent == 2
        await trio.sleep(120)
        assert peer.stats.initiations_sent == 20  # then it gave up
        assert a.stats.tx_drops == {"handshake_timeout": 1}
        nursery.cancel_scope.cancel()
    assert silent.sent == 0


def test_v4_mapped_addresses_are_normalised() -> None:
    assert example._unmapped(("::ffff:192.0.2.1", 5, 0, 0)) == ("192.0.2.1", 5)
    assert example._unmapped(("2001:db8::1", 5, 0, 0)) == ("2001:db8::1", 5)


@pytest.mark.trio
async def test_a_tunnel_always_under_load_hands_out_a_cookie_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a = WireGuardDevice(crypto.generate_private_key(), rng=random.Random(4))
    b = WireGuardDevice(crypto.generate_private_key(), rng=random.Random(5))
    peer_b = a.add_peer(b.public_key, allowed_ips=["10.0.0.2/32"], endpoint=B_EP)
    peer_a = b.add_peer(a.public_key, allowed_ips=["10.0.0.1/32"])
    network: dict[Endpoint, MemoryUdp] = {}
    app_a, tun_a = memory_tun_pair(names=("appa", "tuna"))
    app_b, tun_b = memory_tun_pair(names=("appb", "tunb"))
    udp_a, udp_b = MemoryUdp(network, A_EP), MemoryUdp(network, B_EP)
    async with trio.open_nursery() as nursery:
        for device, tun, udp, threshold in ((a, tun_a, udp_a, 16), (b, tun_b, udp_b, 0)):
            tunnel = example.Tunnel(device, tun, udp, under_load_batch=threshold)
            nursery.start_soon(tunnel.run)
        packet = ipv4("10.0.0.1", "10.0.0.2", b"through the cookie")
        await app_a.send(packet)
        start = trio.current_time()
        with trio.fail_after(10):
            assert await app_b.receive() == packet
        # B answered the first initiation with a cookie only; A's retry, one
        # REKEY_TIMEOUT (plus jitter) later, carried mac2 and was answered.
        assert 5.0 <= trio.current_time() - start <= 5.0 + 0.334 + 0.1
        assert b.stats.rx[Received.COOKIE_SENT] == 1 and a.stats.rx[Received.COOKIE_REPLY] == 1
        assert b.stats.mac2_accepted == 1 and b.stats.rx[Received.INITIATION] == 1
        assert peer_b.stats.initiations_sent == 2 and peer_a.stats.handshakes_completed == 1
        nursery.cancel_scope.cancel()
    assert not a.stats.rx_drops and not b.stats.rx_drops


def test_under_load_threshold_option() -> None:
    assert example.parse_args(["x.conf"]).under_load_threshold == example.UNDER_LOAD_BATCH
    assert example.parse_args(["x.conf", "--under-load-threshold", "0"]).under_load_threshold == 0
    for bad in ("-1", "two", "1.5"):
        with pytest.raises(SystemExit):
            example.parse_args(["x.conf", "--under-load-threshold", bad])
    with pytest.raises(ValueError, match="negative"):
        example.Tunnel(None, None, None, under_load_batch=-1)
