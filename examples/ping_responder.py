"""Answer ping (ICMP echo, IPv4) and ping -6 (ICMPv6 echo) for a whole subnet, under Trio.

The device gets the addresses given with ``--address`` (default ``10.8.0.1/24`` and
``fd00:8::1/64``).  The kernel routes every other address of those subnets into the
device, and this script answers echo requests sent to any of them, so::

    python examples/ping_responder.py &
    ping 10.8.0.2            # or 10.8.0.77, or ping -6 fd00:8::42

gets replies.  It needs root (CAP_NET_ADMIN) and stops after ``--count`` replies or
``--timeout`` seconds, whichever comes first.

The packet logic (:func:`echo_reply`) is pure: bytes in, bytes (or ``None``) out,
no I/O.  ``asyncio_echo.py`` reuses it, together with :class:`Responder`, which only
uses the ``anyio.abc.UnreliableObjectStream`` API and so runs on any event loop.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import math
import struct
import sys
from collections.abc import Sequence

import anyio.abc
import trio

import trio_tun

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

DEFAULT_ADDRESSES = ("10.8.0.1/24", "fd00:8::1/64")

IPPROTO_ICMP = 1
IPPROTO_ICMPV6 = 58
ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST = 0, 8
ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY = 128, 129
IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
IPV6_HEADER_LEN = 40
REPLY_TTL = 64


# -- pure packet logic ---------------------------------------------------------


def internet_checksum(data: bytes | bytearray) -> int:
    """RFC 1071: the ones'-complement of the ones'-complement sum of 16-bit words."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmpv6_checksum(
    src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address, message: bytes | bytearray
) -> int:
    """ICMPv6 checksums also cover a pseudo-header (RFC 8200, section 8.1)."""
    pseudo = src.packed + dst.packed + struct.pack("!I3xB", len(message), IPPROTO_ICMPV6)
    return internet_checksum(pseudo + bytes(message))


def _answers_for(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, interfaces: Sequence[Interface]
) -> bool:
    """Whether *address* is some other host in one of the device's subnets."""
    return any(
        iface.version == address.version and address in iface.network and address != iface.ip
        for iface in interfaces
    )


def _echo_reply_v4(packet: bytes, interfaces: Sequence[Interface]) -> bytes | None:
    if len(packet) < IPV4_HEADER.size:
        return None
    ihl = (packet[0] & 0x0F) * 4
    total_length = int.from_bytes(packet[2:4], "big")
    fragment = int.from_bytes(packet[6:8], "big") & 0x3FFF  # MF flag and offset
    if ihl < 20 or not ihl + 8 <= total_length <= len(packet) or fragment:
        return None
    if packet[9] != IPPROTO_ICMP or internet_checksum(packet[:ihl]) != 0:
        return None
    src = ipaddress.IPv4Address(packet[12:16])
    dst = ipaddress.IPv4Address(packet[16:20])
    message = bytearray(packet[ihl:total_length])
    if message[0] != ICMP_ECHO_REQUEST or message[1] != 0 or internet_checksum(message) != 0:
        return None
    if not _answers_for(dst, interfaces):
        return None
    # Same identifier, sequence number and payload; only type and checksum change.
    message[0] = ICMP_ECHO_REPLY
    message[2:4] = b"\0\0"
    message[2:4] = internet_checksum(message).to_bytes(2, "big")
    ident = int.from_bytes(packet[4:6], "big")
    header = bytearray(
        IPV4_HEADER.pack(
            0x45, 0, 20 + len(message), ident, 0, REPLY_TTL, IPPROTO_ICMP, 0, dst.packed, src.packed
        )
    )
    header[10:12] = internet_checksum(header).to_bytes(2, "big")
    return bytes(header + message)


def _echo_reply_v6(packet: bytes, interfaces: Sequence[Interface]) -> bytes | None:
    if len(packet) < IPV6_HEADER_LEN + 8:
        return None
    payload_length = int.from_bytes(packet[4:6], "big")
    # Extension headers are not followed: an echo request normally has none.
    if packet[6] != IPPROTO_ICMPV6 or IPV6_HEADER_LEN + payload_length > len(packet):
        return None
    src = ipaddress.IPv6Address(packet[8:24])
    dst = ipaddress.IPv6Address(packet[24:40])
    message = bytearray(packet[IPV6_HEADER_LEN : IPV6_HEADER_LEN + payload_length])
    if len(message) < 8 or message[0] != ICMPV6_ECHO_REQUEST or message[1] != 0:
        return None
    if icmpv6_checksum(src, dst, message) != 0 or not _answers_for(dst, interfaces):
        return None
    message[0] = ICMPV6_ECHO_REPLY
    message[2:4] = b"\0\0"
    message[2:4] = icmpv6_checksum(dst, src, message).to_bytes(2, "big")
    # Keep version, traffic class and flow label; swap the addresses.
    header = packet[:4] + struct.pack("!HBB", len(message), IPPROTO_ICMPV6, REPLY_TTL)
    return header + dst.packed + src.packed + bytes(message)


def echo_reply(packet: bytes, interfaces: Sequence[Interface]) -> bytes | None:
    """The reply to *packet* if it is an echo request we should answer, else ``None``.

    *interfaces* are the device's own addresses: requests to any other address
    of their subnets are answered.  Anything else (router solicitations, MLD
    reports, fragments, bad checksums, other protocols) gets ``None``.
    """
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4:
        return _echo_reply_v4(packet, interfaces)
    if version == 6:
        return _echo_reply_v6(packet, interfaces)
    return None


# -- I/O -----------------------------------------------------------------------


@dataclasses.dataclass
class Responder:
    """Answers echo requests on a packet stream and counts its replies.

    :meth:`run` only uses the ``anyio.abc.UnreliableObjectStream`` API, so it
    works with a trio-tun device on Trio or asyncio alike, and with
    ``trio_tun.testing.memory_tun_pair()`` in a unit test.
    """

    interfaces: Sequence[Interface]
    replies: int = 0

    async def run(
        self, dev: anyio.abc.UnreliableObjectStream[bytes], count: int | None = None
    ) -> None:
        """Answer what arrives on *dev*; return after *count* replies (never if ``None``)."""
        if count is not None and count <= 0:
            return
        async for packet in dev:
            reply = echo_reply(packet, self.interfaces)
            if reply is None:
                continue
            await dev.send(reply)
            self.replies += 1
            if count is not None and self.replies >= count:
                return


def parse_args(
    argv: Sequence[str] | None = None, description: str | None = None
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description or __doc__.splitlines()[0])
    parser.add_argument(
        "--name", default="ping%d", help="device name or pattern (default: ping%%d)"
    )
    parser.add_argument(
        "--address",
        action="append",
        dest="addresses",
        metavar="ADDR/PREFIX",
        help="address of the device, repeatable (default: 10.8.0.1/24 and fd00:8::1/64)",
    )
    parser.add_argument("--count", type=int, default=None, help="stop after this many replies")
    parser.add_argument(
        "--timeout", type=float, default=None, help="stop after this many seconds (default: never)"
    )
    args = parser.parse_args(argv)
    raw = args.addresses or list(DEFAULT_ADDRESSES)
    try:
        args.interfaces = [ipaddress.ip_interface(a) for a in raw]
    except ValueError as exc:
        parser.error(str(exc))
    return args


def report(replies: int, args: argparse.Namespace) -> int:
    """Print the outcome; the exit status is 1 when ``--count`` was not reached."""
    print(f"sent {replies} echo replies", flush=True)
    if args.count is not None and replies < args.count:
        print(f"timed out after {args.timeout} s, before {args.count} replies", file=sys.stderr)
        return 1
    return 0


async def serve(args: argparse.Namespace) -> int:
    async with trio_tun.open_tun(args.name, addresses=args.interfaces) as dev:
        subnets = ", ".join(str(iface.network) for iface in args.interfaces)
        print(f"{dev.name}: answering pings to {subnets}", flush=True)
        responder = Responder(args.interfaces)
        with trio.move_on_after(math.inf if args.timeout is None else args.timeout):
            await responder.run(dev, args.count)
    return report(responder.replies, args)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return trio.run(serve, args)


if __name__ == "__main__":
    sys.exit(main())
