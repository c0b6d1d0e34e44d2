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

Both directions move batches, not packets: with offload on (the default of
``open_tun``) one TUN read brings a whole TCP super-packet, already split into
segments by ``receive_batch``; ``send_batch`` on the UDP stream sends runs of
equal-sized datagrams with one ``sendmsg`` each (UDP GSO), and the peer's
``receive_batch`` gets up to 64 of them per ``recvmsg`` (UDP GRO) and hands them
to its TUN device, which coalesces them back into super-packets.  That is what
makes the tunnel several times faster than one ``sendto`` per packet (``python
-m trio_tun demo`` measures both).

It is a toy: no encryption, no authentication beyond "the datagram came from the
peer's address" (the UDP socket is connected to the peer, so the kernel drops
anything else), no keepalives.  Needs root (CAP_NET_ADMIN).
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import sys
from collections.abc import Sequence

import trio

import trio_tun

#: Leaves room for the outer IPv4 (20 bytes) and UDP (8 bytes) headers on a 1500-byte link.
DEFAULT_MTU = 1400

Endpoint = tuple[str, int]


async def tun_to_udp(dev: trio_tun.TunStream, udp: trio_tun.UdpStream) -> None:
    """Every packet the kernel routes into the device goes to the peer as one datagram."""
    while True:
        # A datagram the network can't carry (peer unreachable, ...) is counted
        # in udp.statistics().tx_dropped and the tunnel carries on, as a network would.
        await udp.send_batch(await dev.receive_batch())


async def udp_to_tun(udp: trio_tun.UdpStream, dev: trio_tun.TunStream) -> None:
    """Every datagram from the peer is handed to the kernel as an IP packet."""
    while True:
        batch = await udp.receive_batch()
        if not all(batch):
            batch = [datagram for datagram in batch if datagram]  # empty: no packet
        # The kernel refuses what isn't IP; send_batch counts that in statistics().tx_dropped.
        await dev.send_batch(batch)


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
    local, peer = args.local, args.peer
    async with (
        trio_tun.open_udp(local[0], local[1], remote_host=peer[0], remote_port=peer[1]) as udp,
        trio_tun.open_tun(args.name, addresses=args.tun_address, mtu=args.mtu) as dev,
    ):
        print(
            f"{dev.name} up: {', '.join(args.tun_address)} via UDP "
            f"{local[0]}:{local[1]} <-> {peer[0]}:{peer[1]} "
            f"(TUN offload {dev.offload}, UDP GSO {udp.gso}, GRO {udp.gro})",
            flush=True,
        )
        with trio.move_on_after(math.inf if args.duration is None else args.duration):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(tun_to_udp, dev, udp)
                nursery.start_soon(udp_to_tun, udp, dev)
        stats, u = dev.statistics(), udp.statistics()
        print(
            f"{dev.name}: {stats.rx_packets} packets into the tunnel, "
            f"{stats.tx_packets} out of it ({stats.tx_dropped} refused by the kernel)",
            flush=True,
        )
        print(
            f"UDP: {u.tx_datagrams} datagrams sent in {u.writes} system calls "
            f"({u.tx_dropped} dropped), {u.rx_datagrams} received in {u.reads}",
            flush=True,
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return trio.run(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
