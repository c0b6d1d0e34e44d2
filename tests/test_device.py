"""Real TUN devices: exact packets both ways, batches, and device control.

Every test runs in the fresh namespace of the ``netns`` fixture; its sockets
are created by the test's thread, which is inside that namespace.
"""

from __future__ import annotations

import re
import socket

import anyio
import dpkt
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6

import trio_tun
from packets_util import (
    IPPROTO_UDP,
    disable_ipv6_by_default,
    is_udp_to,
    kernel_addresses,
    kernel_link,
    kernel_links,
    kernel_routes,
    parse,
    receive_matching,
    recv_datagram,
    udp4,
    udp6,
    udp_socket,
)
from trio_tun import Layer, TunAttribute
from trio_tun.testing import NetNamespace

pytestmark = [pytest.mark.kernel, pytest.mark.anyio]

IFF_UP = 0x1


def _scapy_agrees_v4(packet: bytes) -> None:
    """scapy recomputes both checksums from scratch and gets the kernel's values."""
    pkt = IP(packet)
    del pkt.chksum
    del pkt[UDP].chksum
    assert bytes(IP(bytes(pkt))) == packet


def _scapy_agrees_v6(packet: bytes) -> None:
    pkt = IPv6(packet)
    del pkt[UDP].chksum
    assert bytes(IPv6(bytes(pkt))) == packet


# -- packets from the kernel to the stream ------------------------------------


async def test_udp4_from_socket_arrives_exact(netns: NetNamespace) -> None:
    disable_ipv6_by_default()
    async with trio_tun.open_tun(addresses=["10.8.0.1/24"], mtu=1400, offload=False) as dev:
        sock = udp_socket()
        with sock:
            for payload in (b"hello, tun", bytes(range(256)) * 5 + b"x" * 92):
                # 1372 bytes of payload: exactly one 1400-byte packet, not fragmented.
                sock.sendto(payload, ("10.8.0.2", 5555))
                with anyio.fail_after(10):
                    packet = await dev.receive()  # the device is quiet: no IPv6 noise
                p = parse(packet)
                assert p is not None
                assert p.version == 4
                assert packet[0] == 0x45  # no options
                assert p.total_length == len(packet) == 20 + 8 + len(payload)
                assert p.proto == IPPROTO_UDP
                assert p.ttl == 64
                assert (p.src, p.dst) == ("10.8.0.1", "10.8.0.2")
                assert p.sport == sock.getsockname()[1]
                assert p.dport == 5555
                assert p.udp_length == 8 + len(payload)
                assert p.udp_payload == payload
                assert p.header_checksum_ok
                assert p.udp_checksum_field != 0
                assert p.l4_checksum_ok
                ip = dpkt.ip.IP(packet)
                assert ip.data.data == payload
                _scapy_agrees_v4(packet)
        assert len(payload) + 28 == 1400


async def test_udp6_from_socket_arrives_exact(netns: NetNamespace) -> None:
    async with trio_tun.open_tun(addresses=["fd00:8::1/64"], mtu=1400, offload=False) as dev:
        sock = udp_socket(socket.AF_INET6)
        with sock:
            for payload in (b"hello, tun6", b"\xa5" * (1400 - 48)):
                sock.sendto(payload, ("fd00:8::2", 5556))
                # The kernel sends router solicitations/MLD reports too: skip them.
                packet = await receive_matching(dev, lambda p: is_udp_to(p, "fd00:8::2", 5556))
                p = parse(packet)
                assert p is not None
                assert p.version == 6
                assert p.total_length == len(packet) == 40 + 8 + len(payload)
                assert p.proto == IPPROTO_UDP
                assert p.ttl == 64  # hop limit
                assert (p.src, p.dst) == ("fd00:8::1", "fd00:8::2")
                assert p.sport == sock.getsockname()[1]
                assert p.udp_length == 8 + len(payload)
                assert p.udp_payload == payload
                assert p.l4_checksum_ok
                assert dpkt.ip6.IP6(packet).data.data == payload
                _scapy_agrees_v6(packet)


# -- packets from the stream to the kernel ------------------------------------


async def test_send_udp4_arrives_at_socket(netns: NetNamespace) -> None:
    disable_ipv6_by_default()
    async with trio_tun.open_tun(addresses=["10.8.0.1/24"], offload=False) as dev:
        with udp_socket(bind=("10.8.0.1", 7000)) as sock:
            # Control: the kernel does check our checksums, so a corrupted
            # datagram is dropped and the next arrival is the good one.
            bad = bytearray(udp4("10.8.0.2", "10.8.0.1", 4321, 7000, b"corrupted"))
            bad[-1] ^= 0xFF
            await dev.send(bad)
            good = udp4("10.8.0.2", "10.8.0.1", 4321, 7000, b"from the tunnel")
            await dev.send(good)
            data, source = await recv_datagram(sock)
            assert data == b"from the tunnel"
            assert source == ("10.8.0.2", 4321)
            stats = dev.statistics()
            assert stats.tx_packets == 2  # the kernel accepted both writes
            assert stats.tx_bytes == len(bad) + len(good)
            assert stats.tx_dropped == 0
            assert (await kernel_link(netns, dev.index))["stats"]["rx_packets"] == 2


async def test_send_udp6_arrives_at_socket(netns: NetNamespace) -> None:
    async with trio_tun.open_tun(addresses=["fd00:8::1/64"], mtu=1400, offload=False) as dev:
        with udp_socket(socket.AF_INET6, bind=("fd00:8::1", 7001)) as sock:
            payload = b"six" * 300
            await dev.send(udp6("fd00:8::2", "fd00:8::1", 4322, 7001, payload))
            data, source = await recv_datagram(sock)
            assert data == payload
            assert source[:2] == ("fd00:8::2", 4322)


async def test_ipv6_addresses_usable_as_soon_as_configured(netns: NetNamespace) -> None:
    """A packet for a new IPv6 address, sent at once, is delivered (not dropped as
    Ip6InAddrErrors while the kernel is still installing the address's local route)."""
    for i in range(10):
        async with trio_tun.open_tun(addresses=[f"fd00:{i}::1/64"], offload=False) as dev:
            with udp_socket(socket.AF_INET6, bind=(f"fd00:{i}::1", 7010)) as sock:
                await dev.send(udp6(f"fd00:{i}::2", f"fd00:{i}::1", 4000, 7010, b"at once"))
                data, _source = await recv_datagram(sock)
                assert data == b"at once"
            await dev.add_address("fd00:77::1/64")
            with udp_socket(socket.AF_INET6, bind=("fd00:77::1", 7011)) as sock:
                await dev.send(udp6("fd00:77::2", "fd00:77::1", 4000, 7011, b"added"))
                data, _source = await recv_datagram(sock)
                assert data == b"added"


async def test_send_batch_delivers_every_packet(netns: NetNamespace) -> None:
    disable_ipv6_by_default()
    count = 16
    async with trio_tun.open_tun(addresses=["10.8.0.1/24"], offload=False) as dev:
        with udp_socket(bind=("10.8.0.1", 7002)) as sock:
            packets = [
                udp4("10.8.0.2", "10.8.0.1", 5000 + i, 7002, f"batch #{i}".encode() * (i + 1))
                for i in range(count)
            ]
            await dev.send_batch(packets)
            arrived = [await recv_datagram(sock) for _ in range(count)]
            assert [data for data, _ in arrived] == [
                f"batch #{i}".encode() * (i + 1) for i in range(count)
            ]
            assert [src for _, src in arrived] == [("10.8.0.2", 5000 + i) for i in range(count)]
            stats = dev.statistics()
            assert stats.tx_packets == count
            assert stats.tx_bytes == sum(map(len, packets))
            assert (await kernel_link(netns, dev.index))["stats"]["rx_packets"] == count


async def test_receive_batch_takes_what_is_queued(netns: NetNamespace) -> None:
    disable_ipv6_by_default()
    count = 20
    async with trio_tun.open_tun(addresses=["10.8.0.1/24"], offload=False) as dev:
        with udp_socket() as sock:
            for i in range(count):
                sock.sendto(b"queued %d" % i, ("10.8.0.2", 6000))
            # A UDP send through a TUN device is queued on its fd before sendto()
            # returns, so all 20 are waiting now.
            first = await dev.receive_batch(5)
            assert len(first) == 5  # the limit is honoured
            second = await dev.receive_batch(64)
            assert len(second) == count - 5
            payloads = []
            for packet in first + second:
                p = parse(packet)
                assert p is not None
                assert p.dst == "10.8.0.2"
                assert p.l4_checksum_ok
                payloads.append(p.udp_payload)
            assert payloads == [b"queued %d" % i for i in range(count)]
            with pytest.raises(ValueError):
                await dev.receive_batch(0)
            stats = dev.statistics()
            assert stats.rx_packets == count
            assert stats.rx_bytes == sum(len(p) for p in first + second)


# -- device control -----------------------------------------------------------


async def test_name_pattern_and_kernel_chosen_name(netns: NetNamespace) -> None:
    async with trio_tun.open_tun("vpn%d", offload=False) as a:
        assert a.name == "vpn0"  # a fresh namespace: the first free number
        async with trio_tun.open_tun("vpn%d", offload=False) as b:
            assert b.name == "vpn1"
            async with trio_tun.open_tun(offload=False) as c:
                assert re.fullmatch(r"tun\d+", c.name)
                assert {"vpn0", "vpn1", c.name} <= set(await kernel_links(netns))
                for dev in (a, b, c):
                    assert dev.index == socket.if_nametoindex(dev.name)
                    assert (await kernel_link(netns, dev.index))["name"] == dev.name
    assert await kernel_links(netns) == ["lo"]


async def test_mtu_get_and_set(netns: NetNamespace) -> None:
    async with trio_tun.open_tun(addresses=["10.8.0.1/24"], mtu=1400, offload=False) as dev:
        assert dev.mtu == 1400
        assert (await kernel_link(netns, dev.index))["mtu"] == 1400
        await dev.set_mtu(9000)
        assert dev.mtu == 9000
        assert (await kernel_link(netns, dev.index))["mtu"] == 9000
        await dev.set_mtu(576)
        assert (await kernel_link(netns, dev.index))["mtu"] == 576
        assert dev.extra(TunAttribute.mtu) == 576
        with pytest.raises(ValueError):
            await dev.set_mtu(10)
        assert (await kernel_link(netns, dev.index))["mtu"] == 576


async def test_addresses_add_remove(netns: NetNamespace) -> None:
    async with trio_tun.open_tun(addresses=["10.8.0.1/24"], mtu=1400, offload=False) as dev:
        got = {str(a) for a in await dev.addresses()}
        assert "10.8.0.1/24" in got
        assert got == await kernel_addresses(netns, dev.index)

        await dev.add_address("10.9.0.1/16")
        await dev.add_address("fd00:9::1/64")
        kernel = await kernel_addresses(netns, dev.index)
        assert {"10.8.0.1/24", "10.9.0.1/16", "fd00:9::1/64"} <= kernel
        assert {str(a) for a in await dev.addresses()} == kernel

        with pytest.raises(FileExistsError):
            await dev.add_address("10.9.0.1/16")

        await dev.remove_address("10.9.0.1/16")
        await dev.remove_address("fd00:9::1/64")
        kernel = await kernel_addresses(netns, dev.index)
        assert "10.9.0.1/16" not in kernel
        assert "fd00:9::1/64" not in kernel
        assert "10.8.0.1/24" in kernel

        with pytest.raises(LookupError):
            await dev.remove_address("10.9.0.1/16")


async def test_up_and_down(netns: NetNamespace) -> None:
    disable_ipv6_by_default()
    async with trio_tun.open_tun(addresses=["10.8.0.1/24"], offload=False) as dev:
        assert await dev.is_up()
        assert (await kernel_link(netns, dev.index))["flags"] & IFF_UP

        await dev.set_down()
        assert not await dev.is_up()
        assert not (await kernel_link(netns, dev.index))["flags"] & IFF_UP
        # A down device refuses writes: dropped and counted, not raised.
        await dev.send(udp4("10.8.0.2", "10.8.0.1", 1, 2, b"while down"))
        assert dev.statistics().tx_dropped == 1
        assert dev.statistics().tx_packets == 0

        await dev.set_up()
        assert await dev.is_up()
        assert (await kernel_link(netns, dev.index))["flags"] & IFF_UP

    async with trio_tun.open_tun(up=False, offload=False) as dev:
        assert not await dev.is_up()
        assert not (await kernel_link(netns, dev.index))["flags"] & IFF_UP


async def test_routes(netns: NetNamespace) -> None:
    async with trio_tun.open_tun(addresses=["10.8.0.1/24"], mtu=1400, offload=False) as dev:
        await dev.add_route("10.20.0.0/16")
        await dev.add_route("fd00:20::/48", metric=300)
        kernel = await kernel_routes(netns, dev.index)
        assert {"10.8.0.0/24", "10.20.0.0/16", "fd00:20::/48"} <= kernel
        assert {str(r) for r in await dev.routes()} == kernel

        # The route is real: traffic for 10.20.x.x now comes out of the device.
        with udp_socket() as sock:
            sock.sendto(b"routed", ("10.20.3.4", 9))
            packet = await receive_matching(dev, lambda p: is_udp_to(p, "10.20.3.4", 9))
            p = parse(packet)
            assert p is not None
            assert p.udp_payload == b"routed"

        await dev.remove_route("10.20.0.0/16")
        await dev.remove_route("fd00:20::/48")
        kernel = await kernel_routes(netns, dev.index)
        assert "10.20.0.0/16" not in kernel
        assert "fd00:20::/48" not in kernel
        assert {str(r) for r in await dev.routes()} == kernel
        with pytest.raises(LookupError):
            await dev.remove_route("10.20.0.0/16")


async def test_typed_attributes(netns: NetNamespace) -> None:
    async with trio_tun.open_tun("attr%d", mtu=1300, offload=False) as dev:
        assert dev.extra(TunAttribute.name) == dev.name == "attr0"
        assert dev.extra(TunAttribute.index) == socket.if_nametoindex("attr0")
        assert dev.extra(TunAttribute.mtu) == 1300
        assert dev.extra(TunAttribute.layer) is Layer.L3
        assert dev.extra(TunAttribute.fileno) == dev.fileno() >= 0
        assert dev.extra(TunAttribute.offload) == trio_tun.OffloadFlags()
        assert not dev.extra(TunAttribute.offload).enabled
        assert isinstance(dev, trio_tun.TunStream)
        assert isinstance(dev, anyio.abc.UnreliableObjectStream)


async def test_statistics_match_traffic(netns: NetNamespace) -> None:
    disable_ipv6_by_default()
    async with trio_tun.open_tun(addresses=["10.8.0.1/24"], offload=False) as dev:
        with udp_socket(bind=("10.8.0.1", 7003)) as sock:
            sent = [udp4("10.8.0.2", "10.8.0.1", 1000, 7003, b"s" * (10 * i)) for i in range(5)]
            for packet in sent:
                await dev.send(packet)
            for _ in sent:
                await recv_datagram(sock)
            received = []
            for i in range(7):
                sock.sendto(b"r" * i, ("10.8.0.2", 1001))
                with anyio.fail_after(10):
                    received.append(await dev.receive())
            await dev.send(b"\x00" * 40)  # not IP: the kernel refuses it (EINVAL)

            stats = dev.statistics()
            assert stats.tx_packets == 5
            assert stats.tx_bytes == sum(map(len, sent))
            assert stats.tx_dropped == 1
            assert stats.rx_packets == 7
            assert stats.rx_bytes == sum(map(len, received))
            assert stats.reads == 7
            assert stats.read_bytes == stats.rx_bytes
            assert stats.writes == 5
            assert stats.write_bytes == stats.tx_bytes
            assert stats.rx_malformed == stats.rx_dropped == 0
            # The kernel's own counters, seen from the device's side.
            kernel = (await kernel_link(netns, dev.index))["stats"]
            assert kernel["rx_packets"] == 5
            assert kernel["rx_bytes"] == stats.tx_bytes
            assert kernel["tx_packets"] == 7
            assert kernel["tx_bytes"] == stats.rx_bytes
