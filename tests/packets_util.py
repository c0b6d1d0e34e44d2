"""Small packet builders and parsers for the real-kernel tests, plus bounded I/O helpers.

Everything here builds wire-format bytes by hand (no scapy/dpkt), so the tests
that compare these bytes with what the kernel produced or accepted check two
independent implementations against each other.  dpkt/scapy are only used by
the tests themselves, to cross-check.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import anyio
import anyio.to_thread

from trio_tun import PacketStream
from trio_tun.testing import NetNamespace

IPPROTO_ICMP: Final = 1
IPPROTO_UDP: Final = 17
IPPROTO_ICMPV6: Final = 58
ETH_P_IP: Final = 0x0800
ETH_P_ARP: Final = 0x0806
ETH_P_IPV6: Final = 0x86DD
BROADCAST_MAC: Final = b"\xff" * 6

#: Generous deadline for anything that waits on the kernel (the machine may be slow).
TIMEOUT: Final = 10.0


# -- checksums ----------------------------------------------------------------


def checksum(data: bytes | bytearray | memoryview) -> int:
    """The internet checksum (RFC 1071) of *data*: the complement of the folded sum."""
    return (~_fold(_sum16(data))) & 0xFFFF


def _sum16(data: bytes | bytearray | memoryview) -> int:
    raw = bytes(data)
    if len(raw) % 2:
        raw += b"\0"
    total = 0
    for (word,) in struct.iter_unpack("!H", raw):
        total += word
    return total


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def sum_is_valid(data: bytes | bytearray | memoryview) -> bool:
    """True when *data*, checksum field included, sums to 0xFFFF (the check a receiver does)."""
    return _fold(_sum16(data)) == 0xFFFF


def pseudo_header(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    """The IPv4 (4-byte addresses) or IPv6 (16-byte) pseudo-header for L4 checksums."""
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!I3xB", length, proto)


# -- addresses ----------------------------------------------------------------


def ip_bytes(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


def mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


# -- IPv4 / IPv6 --------------------------------------------------------------


def ipv4(
    src: str, dst: str, proto: int, payload: bytes, *, ttl: int = 64, ident: int = 0x1234
) -> bytes:
    """An IPv4 packet (no options, DF set) with a correct header checksum."""
    header = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(payload),
            ident,
            0x4000,
            ttl,
            proto,
            0,
            ip_bytes(src),
            ip_bytes(dst),
        )
    )
    struct.pack_into("!H", header, 10, checksum(header))
    return bytes(header) + payload


def ipv6(src: str, dst: str, next_header: int, payload: bytes, *, hop_limit: int = 64) -> bytes:
    """An IPv6 packet without extension headers."""
    return (
        struct.pack("!IHBB", 6 << 28, len(payload), next_header, hop_limit)
        + ip_bytes(src)
        + ip_bytes(dst)
        + payload
    )


def _l4_with_checksum(src: bytes, dst: bytes, proto: int, segment: bytes, offset: int) -> bytes:
    """Fill the 16-bit checksum at *offset* of *segment* using the pseudo-header."""
    buf = bytearray(segment)
    struct.pack_into("!H", buf, offset, 0)
    value = checksum(pseudo_header(src, dst, proto, len(buf)) + bytes(buf))
    if proto == IPPROTO_UDP and value == 0:
        value = 0xFFFF  # RFC 768: a computed 0 is sent as all ones
    struct.pack_into("!H", buf, offset, value)
    return bytes(buf)


def udp_segment(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """A UDP header + payload with the checksum for the *src*/*dst* pseudo-header."""
    segment = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return _l4_with_checksum(ip_bytes(src), ip_bytes(dst), IPPROTO_UDP, segment, 6)


def udp4(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """A complete IPv4/UDP packet, both checksums correct."""
    return ipv4(src, dst, IPPROTO_UDP, udp_segment(src, dst, sport, dport, payload))


def udp6(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """A complete IPv6/UDP packet, checksum correct."""
    return ipv6(src, dst, IPPROTO_UDP, udp_segment(src, dst, sport, dport, payload))


def icmpv6(src: str, dst: str, body: bytes, *, hop_limit: int = 64) -> bytes:
    """An IPv6 packet carrying ICMPv6 message *body* (checksum field filled in)."""
    message = _l4_with_checksum(ip_bytes(src), ip_bytes(dst), IPPROTO_ICMPV6, body, 2)
    return ipv6(src, dst, IPPROTO_ICMPV6, message, hop_limit=hop_limit)


# -- parsing ------------------------------------------------------------------


class Parsed:
    """The fields of an IP packet the tests look at (IPv4 or IPv6, no extension headers)."""

    def __init__(self, packet: bytes) -> None:
        self.raw = packet
        self.version = packet[0] >> 4
        if self.version == 4:
            ihl = (packet[0] & 0x0F) * 4
            self.header = packet[:ihl]
            self.total_length = struct.unpack_from("!H", packet, 2)[0]
            self.ttl = packet[8]
            self.proto = packet[9]
            self.src_raw = packet[12:16]
            self.dst_raw = packet[16:20]
            self.payload = packet[ihl : self.total_length]
        elif self.version == 6:
            self.header = packet[:40]
            payload_length = struct.unpack_from("!H", packet, 4)[0]
            self.total_length = 40 + payload_length
            self.proto = packet[6]
            self.ttl = packet[7]
            self.src_raw = packet[8:24]
            self.dst_raw = packet[24:40]
            self.payload = packet[40 : self.total_length]
        else:
            raise ValueError(f"not an IP packet (version {self.version})")
        self.src = str(ipaddress.ip_address(self.src_raw))
        self.dst = str(ipaddress.ip_address(self.dst_raw))

    @property
    def header_checksum_ok(self) -> bool:
        """IPv4 header checksum valid (IPv6 has none: always True)."""
        return self.version == 6 or sum_is_valid(self.header)

    @property
    def l4_checksum_ok(self) -> bool:
        """UDP/ICMP/ICMPv6 checksum valid (with the pseudo-header where the protocol has one)."""
        if self.version == 4 and self.proto == IPPROTO_ICMP:
            return sum_is_valid(self.payload)
        pseudo = pseudo_header(self.src_raw, self.dst_raw, self.proto, len(self.payload))
        return sum_is_valid(pseudo + self.payload)

    @property
    def is_udp(self) -> bool:
        return self.proto == IPPROTO_UDP

    @property
    def sport(self) -> int:
        return int(struct.unpack_from("!H", self.payload, 0)[0])

    @property
    def dport(self) -> int:
        return int(struct.unpack_from("!H", self.payload, 2)[0])

    @property
    def udp_length(self) -> int:
        return int(struct.unpack_from("!H", self.payload, 4)[0])

    @property
    def udp_checksum_field(self) -> int:
        return int(struct.unpack_from("!H", self.payload, 6)[0])

    @property
    def udp_payload(self) -> bytes:
        return self.payload[8 : self.udp_length]


def parse(packet: bytes) -> Parsed | None:
    """Parse an IP packet; ``None`` when it is not IPv4/IPv6."""
    if not packet or packet[0] >> 4 not in (4, 6):
        return None
    return Parsed(packet)


def is_udp_to(packet: bytes, dst: str, dport: int) -> bool:
    """Whether *packet* is a UDP datagram for *dst*:*dport* (for skipping kernel noise)."""
    p = parse(packet)
    return p is not None and p.is_udp and p.dst == dst and p.dport == dport


# -- echo (ping) --------------------------------------------------------------


def echo_reply(packet: bytes) -> bytes | None:
    """The reply to an ICMP/ICMPv6 echo request, or ``None`` if *packet* is not one.

    Addresses are swapped, the type becomes echo reply, and every checksum is
    recomputed from scratch (ICMPv6 over the pseudo-header, IPv4 header too).
    """
    p = parse(packet)
    if p is None:
        return None
    if p.version == 4 and p.proto == IPPROTO_ICMP and p.payload[:1] == b"\x08":
        body = bytearray(p.payload)
        body[0] = 0  # echo reply
        struct.pack_into("!H", body, 2, 0)
        struct.pack_into("!H", body, 2, checksum(body))
        return ipv4(p.dst, p.src, IPPROTO_ICMP, bytes(body), ident=0)
    if p.version == 6 and p.proto == IPPROTO_ICMPV6 and p.payload[:1] == bytes([128]):
        body = bytearray(p.payload)
        body[0] = 129  # echo reply
        return icmpv6(p.dst, p.src, bytes(body))
    return None


# -- Ethernet, ARP, NDP -------------------------------------------------------


def ethernet(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return dst + src + struct.pack("!H", ethertype) + payload


def ethertype(frame: bytes) -> int:
    return int(struct.unpack_from("!H", frame, 12)[0])


def arp_request_for(frame: bytes, target_ip: str) -> tuple[bytes, bytes] | None:
    """(sender MAC, sender IP) of an ARP request asking for *target_ip*, else ``None``."""
    if len(frame) < 42 or ethertype(frame) != ETH_P_ARP:
        return None
    htype, ptype, hlen, plen, op = struct.unpack_from("!HHBBH", frame, 14)
    if (htype, ptype, hlen, plen, op) != (1, ETH_P_IP, 6, 4, 1):
        return None
    sha, spa, tpa = frame[22:28], frame[28:32], frame[38:42]
    if tpa != ip_bytes(target_ip):
        return None
    return sha, spa


def arp_reply(*, peer_mac: bytes, peer_ip: str, to_mac: bytes, to_ip: bytes) -> bytes:
    """An Ethernet frame with an ARP reply saying *peer_ip* is at *peer_mac*."""
    arp = struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, 2) + peer_mac + ip_bytes(peer_ip)
    arp += to_mac + to_ip
    return ethernet(to_mac, peer_mac, ETH_P_ARP, arp)


def neighbour_solicitation_for(frame: bytes, target_ip: str) -> tuple[bytes, str] | None:
    """(source MAC, source IP) of an NDP neighbour solicitation for *target_ip*, else ``None``."""
    if len(frame) < 14 + 40 + 24 or ethertype(frame) != ETH_P_IPV6:
        return None
    p = Parsed(frame[14:])
    if p.proto != IPPROTO_ICMPV6 or p.payload[0] != 135:
        return None
    if p.payload[8:24] != ip_bytes(target_ip):
        return None
    return frame[6:12], p.src


def neighbour_advertisement(*, peer_mac: bytes, peer_ip: str, to_mac: bytes, to_ip: str) -> bytes:
    """An Ethernet frame with a solicited NA (S and O flags, target link-layer option)."""
    body = struct.pack("!BBHI", 136, 0, 0, 0x60000000) + ip_bytes(peer_ip)
    body += struct.pack("!BB", 2, 1) + peer_mac  # target link-layer address option
    return ethernet(to_mac, peer_mac, ETH_P_IPV6, icmpv6(peer_ip, to_ip, body, hop_limit=255))


# -- bounded I/O helpers ------------------------------------------------------


async def receive_matching(
    stream: PacketStream,
    predicate: Callable[[bytes], bool],
    *,
    limit: int = 200,
    within: float = TIMEOUT,
) -> bytes:
    """Receive until a packet satisfies *predicate*, skipping kernel noise (RS, MLD, ...)."""
    with anyio.fail_after(within):
        for _ in range(limit):
            packet = await stream.receive()
            if predicate(packet):
                return packet
    raise AssertionError(f"no matching packet among {limit} received")


def udp_socket(family: int = socket.AF_INET, bind: tuple[str, int] | None = None) -> socket.socket:
    """A non-blocking UDP socket in the calling thread's namespace."""
    sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    if bind is not None:
        sock.bind(bind)
    return sock


async def recv_datagram(sock: socket.socket, within: float = TIMEOUT) -> tuple[bytes, Any]:
    """The next datagram on *sock* and its source address, waiting at most *within* seconds."""
    with anyio.fail_after(within):
        while True:
            await anyio.wait_readable(sock)
            try:
                return sock.recvfrom(65535)
            except BlockingIOError:
                continue


def udp_flood(
    ns: NetNamespace,
    target: tuple[str, int],
    stop: threading.Event,
    *,
    source: str | None = None,
    size: int = 1200,
    seconds: float = 20.0,
    limit: int = 2_000_000,
) -> int:
    """Send datagrams of *size* bytes from *ns* to *target* until *stop* is set
    (bounded by *seconds* and *limit*); returns how many went.  For a thread."""
    sender = ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = 0
    with sender:
        if source is not None:
            sender.bind((source, 0))
        sender.setblocking(False)
        payload = bytes(size)
        deadline = time.monotonic() + seconds
        while not stop.is_set() and time.monotonic() < deadline and sent < limit:
            try:
                sender.sendto(payload, target)
                sent += 1
            except BlockingIOError:
                time.sleep(0.0005)
    return sent


def disable_ipv6_by_default() -> None:
    """Make devices created later in the calling thread's namespace IPv6-free (so quiet).

    A new device otherwise sends router solicitations and MLD reports by itself,
    which would make exact packet counts impossible.  ``/proc/sys/net`` is
    per-namespace and resolved for the calling thread, so this only affects the
    test's own namespace.
    """
    with open("/proc/sys/net/ipv6/conf/default/disable_ipv6", "w") as f:
        f.write("1")


async def wait_queued(stream: PacketStream, within: float = TIMEOUT) -> None:
    """Wait until the kernel has a packet queued on *stream*'s fd (without reading it)."""
    with anyio.fail_after(within):
        await anyio.wait_readable(stream.fileno())


def tun_fd_count() -> int:
    """How many of this process's fds are open on /dev/net/tun."""
    count = 0
    for entry in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{entry}") == "/dev/net/tun":
                count += 1
        except OSError:
            continue
    return count


# -- what the kernel says, independently of trio-tun --------------------------


# pyroute2's sync IPRoute can't be created in a thread that runs an asyncio loop,
# so these run in a worker thread; ``ns.entered()`` puts that thread in *ns*.


def _iproute(ns: NetNamespace) -> Any:
    from pyroute2 import IPRoute

    with ns.entered():
        return IPRoute()


def _kernel_link(ns: NetNamespace, index: int) -> dict[str, Any]:
    """pyroute2's view of link *index* in *ns*: name, mtu, flags, address, stats."""
    ipr = _iproute(ns)
    try:
        (link,) = ipr.get_links(index)
        return {
            "name": link.get_attr("IFLA_IFNAME"),
            "mtu": link.get_attr("IFLA_MTU"),
            "flags": link["flags"],
            "address": link.get_attr("IFLA_ADDRESS"),
            "stats": link.get_attr("IFLA_STATS64"),
        }
    finally:
        ipr.close()


def _kernel_addresses(ns: NetNamespace, index: int) -> set[str]:
    """Addresses on link *index* in *ns*, as ``"10.0.0.1/24"`` strings."""
    ipr = _iproute(ns)
    try:
        return {
            f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}" for msg in ipr.get_addr(index=index)
        }
    finally:
        ipr.close()


def _kernel_routes(ns: NetNamespace, index: int) -> set[str]:
    """Destination prefixes routed out of link *index* in the main table of *ns*."""
    ipr = _iproute(ns)
    try:
        out = set()
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in ipr.get_routes(family=family, table=254):
                dst = msg.get_attr("RTA_DST")
                if dst is not None and msg.get_attr("RTA_OIF") == index:
                    out.add(f"{dst}/{msg['dst_len']}")
        return out
    finally:
        ipr.close()


def _kernel_delete_link(ns: NetNamespace, name: str) -> None:
    """Delete link *name* in *ns* through a netlink socket made inside *ns*."""
    ipr = _iproute(ns)
    try:
        ipr.link("del", index=ipr.link_lookup(ifname=name)[0])
    finally:
        ipr.close()


def _kernel_links(ns: NetNamespace) -> list[str]:
    return ns.links()


async def kernel_link(ns: NetNamespace, index: int) -> dict[str, Any]:
    """pyroute2's view of link *index* in *ns*: name, mtu, flags, address, stats."""
    return await anyio.to_thread.run_sync(_kernel_link, ns, index)


async def kernel_addresses(ns: NetNamespace, index: int) -> set[str]:
    """Addresses on link *index* in *ns*, as ``"10.0.0.1/24"`` strings."""
    return await anyio.to_thread.run_sync(_kernel_addresses, ns, index)


async def kernel_routes(ns: NetNamespace, index: int) -> set[str]:
    """Destination prefixes routed out of link *index* in the main table of *ns*."""
    return await anyio.to_thread.run_sync(_kernel_routes, ns, index)


async def kernel_delete_link(ns: NetNamespace, name: str) -> None:
    """Delete link *name* in *ns* through a netlink socket made inside *ns*."""
    await anyio.to_thread.run_sync(_kernel_delete_link, ns, name)


async def kernel_links(ns: NetNamespace) -> list[str]:
    """``ns.links()``, from a worker thread (it uses pyroute2's sync IPRoute)."""
    return await anyio.to_thread.run_sync(_kernel_links, ns)


# -- refusing writes ----------------------------------------------------------


def refuse_writes(monkeypatch: Any, refuse: Callable[[bytes], int]) -> None:
    """Make every frame write of a file-descriptor port fail where *refuse* says so.

    *refuse(frame)* returns the errno to fail that frame with (the whole frame,
    virtio header included), or 0 to write it.  Both write paths of
    ``trio_tun._ports`` are covered: one frame (``writev``) and the write loop
    (``_write_frames``), which writes the frames before a refused one and
    reports that one as the kernel's loop would.
    """
    import trio_tun._ports as ports

    real_writev, real_write_frames = ports.writev, ports._write_frames

    def writev(fd: int, buffers: list[bytes]) -> int:
        error = refuse(b"".join(buffers))
        if error:
            raise OSError(error, "refused for the test")
        return int(real_writev(fd, buffers))

    def write_frames(fd: int, frames: list[bytes], start: int) -> tuple[int, int, int]:
        # Asks *refuse* once per frame, as the kernel's loop meets each once.
        for index in range(start, len(frames)):
            error = refuse(bytes(frames[index]))
            if error:
                after, status, nbytes = real_write_frames(fd, frames[:index], start)
                return (after, status, nbytes) if status else (index, error, nbytes)
        result: tuple[int, int, int] = real_write_frames(fd, frames, start)
        return result

    monkeypatch.setattr(ports, "writev", writev)
    monkeypatch.setattr(ports, "_write_frames", write_frames)
