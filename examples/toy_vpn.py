"""A toy VPN: IP packets from a TUN device, carried in UDP datagrams to a peer.

Run one copy on each end, each pointing at the other::

    # host A (underlay address 192.0.2.1)
    python examples/toy_vpn.py --local 192.0.2.1:51820 --peer 192.0.2.2:51820 \\
        --tun-address 10.8.0.1/24
    # host B (underlay address 192.0.2.2)
    python examples/toy_vpn.py --local 192.0.2.2:51820 --peer 192.0.2.1:51820 \\
        --tun-address 10.8.0.2/24

and ``ping 10.8.0.2`` on A crosses the tunnel.  The whole VPN is the two pump
functions below, run side by side in a nursery until ``--duration`` runs out.

It is a toy: no encryption, no authentication beyond "the datagram came from the
peer's address", no keepalives.  Needs root (CAP_NET_ADMIN).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import math
import socket
import sys
from collections.abc import Sequence

import trio

import trio_tun

#: Leaves room for the outer IPv4 (20 bytes) and UDP (8 bytes) headers on a 1500-byte link.
DEFAULT_MTU = 1400

Endpoint = tuple[str, int]


async def tun_to_udp(dev: trio_tun.TunStream, sock: trio.socket.SocketType, peer: Endpoint) -> None:
    """Every packet the kernel routes into the device goes to the peer as one datagram."""
    while True:
        for packet in await dev.receive_batch():
            # A tunnel drops what it can't carry (peer unreachable, ...), as a network would.
            with contextlib.suppress(OSError):
                await sock.sendto(packet, peer)


async def udp_to_tun(sock: trio.socket.SocketType, dev: trio_tun.TunStream, peer: Endpoint) -> None:
    """Every datagram from the peer is handed to the kernel as an IP packet."""
    while True:
        data, sender = await sock.recvfrom(65535)
        if sender[:2] != peer or not data:
            continue  # not from our peer (or empty): ignore it
        # The kernel refuses what isn't IP; send() counts that in statistics().tx_dropped.
        await dev.send(data)


def endpoint(text: str) -> Endpoint:
    """Parse ``"192.0.2.1:51820"`` or ``"[2001:db8::1]:51820"``."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected ADDRESS:PORT, not {text!r}")
    host = host.removeprefix("[").removesuffix("]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return str(address), int(port)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--local", type=endpoint, required=True, help="UDP ADDRESS:PORT to bind")
    parser.add_argument("--peer", type=endpoint, required=True, help="the peer's ADDRESS:PORT")
    parser.add_argument(
        "--tun-address",
        action="append",
        required=True,
        metavar="ADDR/PREFIX",
        help="address of the tunnel device, e.g. 10.8.0.1/24 (repeatable)",
    )
    parser.add_argument("--name", default="vpn%d", help="device name or pattern (default: vpn%%d)")
    parser.add_argument("--mtu", type=int, default=DEFAULT_MTU, help="tunnel MTU (default: 1400)")
    parser.add_argument(
        "--duration", type=float, default=None, help="stop after this many seconds (default: never)"
    )
    args = parser.parse_args(argv)
    if ipaddress.ip_address(args.local[0]).version != ipaddress.ip_address(args.peer[0]).version:
        parser.error("--local and --peer must both be IPv4 or both IPv6")
    return args


async def run(args: argparse.Namespace) -> int:
    family = socket.AF_INET6 if ":" in args.local[0] else socket.AF_INET
    with trio.socket.socket(family, socket.SOCK_DGRAM) as sock:
        await sock.bind(args.local)
        async with trio_tun.open_tun(args.name, addresses=args.tun_address, mtu=args.mtu) as dev:
            print(
                f"{dev.name} up: {', '.join(args.tun_address)} via UDP "
                f"{args.local[0]}:{args.local[1]} <-> {args.peer[0]}:{args.peer[1]}",
                flush=True,
            )
            with trio.move_on_after(math.inf if args.duration is None else args.duration):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(tun_to_udp, dev, sock, args.peer)
                    nursery.start_soon(udp_to_tun, sock, dev, args.peer)
            stats = dev.statistics()
            print(
                f"{dev.name}: {stats.rx_packets} packets into the tunnel, "
                f"{stats.tx_packets} out of it ({stats.tx_dropped} refused by the kernel)",
                flush=True,
            )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return trio.run(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
