"""Real TAP devices: the test plays a neighbour (ARP/NDP) and sees exact Ethernet frames."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

import trio_tun
from packets_util import (
    BROADCAST_MAC,
    ETH_P_IP,
    ETH_P_IPV6,
    arp_reply,
    arp_request_for,
    ethernet,
    ethertype,
    is_udp_to,
    kernel_link,
    mac_bytes,
    neighbour_advertisement,
    neighbour_solicitation_for,
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

DEV_MAC = "02:00:00:00:00:01"
PEER_MAC = mac_bytes("02:00:00:00:00:02")


def _frame_with_udp_to(dst: str, dport: int) -> Callable[[bytes], bool]:
    def match(frame: bytes) -> bool:
        return ethertype(frame) in (ETH_P_IP, ETH_P_IPV6) and is_udp_to(frame[14:], dst, dport)

    return match


async def test_tap_mac_and_layer(netns: NetNamespace) -> None:
    async with trio_tun.open_tap("tap%d", mac=DEV_MAC, addresses=["10.9.0.1/24"]) as dev:
        assert dev.name == "tap0"
        assert isinstance(dev, trio_tun.TapStream)
        assert dev.layer is Layer.L2
        assert dev.extra(TunAttribute.layer) is Layer.L2
        assert (await kernel_link(netns, dev.index))["address"] == DEV_MAC


async def test_tap_ipv4_arp_then_exact_frame(netns: NetNamespace) -> None:
    dev_mac = mac_bytes(DEV_MAC)
    async with trio_tun.open_tap(mac=DEV_MAC, addresses=["10.9.0.1/24"]) as dev:
        with udp_socket() as sock:
            payload = b"over ethernet"
            sock.sendto(payload, ("10.9.0.2", 4444))

            # The kernel must first ask who has 10.9.0.2; we answer as the peer.
            request = await receive_matching(
                dev, lambda f: arp_request_for(f, "10.9.0.2") is not None
            )
            assert request[:6] == BROADCAST_MAC
            assert request[6:12] == dev_mac
            sender = arp_request_for(request, "10.9.0.2")
            assert sender == (dev_mac, socket.inet_aton("10.9.0.1"))
            await dev.send(
                arp_reply(peer_mac=PEER_MAC, peer_ip="10.9.0.2", to_mac=dev_mac, to_ip=sender[1])
            )

            # The datagram the kernel held back now comes out, addressed to the peer.
            frame = await receive_matching(dev, _frame_with_udp_to("10.9.0.2", 4444))
            assert frame[:6] == PEER_MAC
            assert frame[6:12] == dev_mac
            assert ethertype(frame) == ETH_P_IP
            p = parse(frame[14:])
            assert p is not None
            assert (p.src, p.dst) == ("10.9.0.1", "10.9.0.2")
            assert p.sport == sock.getsockname()[1]
            assert p.udp_payload == payload
            assert p.header_checksum_ok
            assert p.l4_checksum_ok
            assert len(frame) == 14 + p.total_length  # no padding on a TAP read


async def test_tap_ipv6_ndp_then_exact_frame(netns: NetNamespace) -> None:
    dev_mac = mac_bytes(DEV_MAC)
    async with trio_tun.open_tap(mac=DEV_MAC, addresses=["fd00:9::1/64"], mtu=1500) as dev:
        with udp_socket(socket.AF_INET6) as sock:
            payload = b"over ethernet, v6"
            sock.sendto(payload, ("fd00:9::2", 4445))

            # Skip router solicitations, MLD reports and DAD probes for our own
            # link-local address; answer the solicitation for the peer.
            solicitation = await receive_matching(
                dev, lambda f: neighbour_solicitation_for(f, "fd00:9::2") is not None
            )
            found = neighbour_solicitation_for(solicitation, "fd00:9::2")
            assert found is not None
            src_mac, src_ip = found
            assert src_mac == dev_mac
            # Multicast to the solicited-node group of fd00:9::2.
            assert solicitation[:6] == bytes.fromhex("3333ff000002")
            await dev.send(
                neighbour_advertisement(
                    peer_mac=PEER_MAC, peer_ip="fd00:9::2", to_mac=src_mac, to_ip=src_ip
                )
            )

            frame = await receive_matching(dev, _frame_with_udp_to("fd00:9::2", 4445))
            assert frame[:6] == PEER_MAC
            assert frame[6:12] == dev_mac
            assert ethertype(frame) == ETH_P_IPV6
            p = parse(frame[14:])
            assert p is not None
            assert (p.src, p.dst) == ("fd00:9::1", "fd00:9::2")
            assert p.udp_payload == payload
            assert p.l4_checksum_ok


async def test_tap_frames_written_arrive_at_sockets(netns: NetNamespace) -> None:
    dev_mac = mac_bytes(DEV_MAC)
    async with trio_tun.open_tap(
        mac=DEV_MAC, addresses=["10.9.0.1/24", "fd00:9::1/64"], mtu=1500
    ) as dev:
        with (
            udp_socket(bind=("10.9.0.1", 7100)) as sock4,
            udp_socket(socket.AF_INET6, bind=("fd00:9::1", 7101)) as sock6,
        ):
            frame4 = ethernet(
                dev_mac, PEER_MAC, ETH_P_IP, udp4("10.9.0.2", "10.9.0.1", 3333, 7100, b"frame4")
            )
            frame6 = ethernet(
                dev_mac,
                PEER_MAC,
                ETH_P_IPV6,
                udp6("fd00:9::2", "fd00:9::1", 3334, 7101, b"frame6" * 100),
            )
            # A frame for another MAC is not for this host: dropped by the kernel.
            stray = ethernet(
                b"\x02\x00\x00\x00\x00\x99",
                PEER_MAC,
                ETH_P_IP,
                udp4("10.9.0.2", "10.9.0.1", 3333, 7100, b"not for us"),
            )
            await dev.send(stray)
            await dev.send(frame4)
            await dev.send(frame6)

            data, source = await recv_datagram(sock4)
            assert (data, source) == (b"frame4", ("10.9.0.2", 3333))
            data, source = await recv_datagram(sock6)
            assert data == b"frame6" * 100
            assert source[:2] == ("fd00:9::2", 3334)

            stats = dev.statistics()
            assert stats.tx_packets == 3
            assert stats.tx_bytes == len(stray) + len(frame4) + len(frame6)
