"""Generic receive offload: coalesce the segments of a flow before writing them.

Writing one 64 KiB TCP super-packet to a TUN fd with IFF_VNET_HDR costs one
syscall and one trip through the kernel's stack instead of ~45.  A
:class:`GroTable` collects the packets of one batch, merges consecutive
segments of the same flow that a TSO/USO sender could have produced, and hands
back buffers ready for ``write()`` (virtio header + packet).

Merging is deliberately conservative: a merged packet must split back (in the
kernel, or with :func:`~.gso.split`) into exactly the segments that went in,
so every header byte that segmentation does not regenerate must be identical
across the segments.  The one exception, as in Linux GRO, is the IPv4 ID of
packets with DF set: it means nothing for them (RFC 6864), so it need not
count up, and segmentation renumbers it.  Packets that do not qualify go out
unchanged, and the output never reorders packets of one flow.

This is the reference implementation: the C speedups replace :func:`parse` and
:func:`build` (the per-packet and per-super-packet work) and must agree with
them byte for byte; the table logic is shared.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import Final

from .errors import MalformedPacket
from .virtio import (
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    NEEDS_CSUM,
    ZERO_HDR,
)

__all__ = [
    "KIND_BARRIER",
    "KIND_OTHER",
    "KIND_SOLO",
    "KIND_TCP",
    "KIND_UDP",
    "UDP_MAX_SEGMENTS",
    "GroTable",
    "Parsed",
    "build",
    "coalesce",
    "parse",
]

_M: Final = 0xFFFF

# What parse() found; see GroTable.add for how each kind is handled.
KIND_OTHER: Final = 0  # not TCP/UDP: belongs to no flow we merge
KIND_BARRIER: Final = 1  # might be TCP/UDP but the ports are unknown (fragment, ext header)
KIND_SOLO: Final = 2  # TCP/UDP of a known flow that cannot be merged
KIND_TCP: Final = 3  # a mergeable TCP segment
KIND_UDP: Final = 4  # a mergeable UDP datagram

# Kernels before 6.11 refuse UDP GSO packets of more than 64 segments.
UDP_MAX_SEGMENTS: Final = 64

_PROTO_TCP: Final = 6
_PROTO_UDP: Final = 17
_TCP_ACK: Final = 0x10
_TCP_PSH: Final = 0x08
_IPV6_HDR: Final = 40
# IPv6 headers that may stand between the fixed header and a TCP/UDP header.
_IPV6_EXT_HEADERS: Final = frozenset({0, 43, 44, 51, 60, 135, 139, 140, 253, 254})

_vhdr: Final = struct.Struct("=BBHHHH").pack
_pack_u16: Final = struct.Struct("!H").pack_into

_Buffer = bytes | bytearray | memoryview

# (kind, flow key, match key, L4 offset, header length, payload length,
#  TCP sequence number, IPv4 ID, IDs-may-jump, PSH)
Parsed = tuple[int, bytes, bytes, int, int, int, int, int, int, int]
_NO_FLOW: Final = b""


def parse(packet: _Buffer) -> Parsed:
    """Classify one IP packet for :class:`GroTable` and verify its checksums.

    Raises :class:`MalformedPacket` only when the bytes are not an IP packet
    at all (unknown version, truncated header, IP length past the end);
    anything merely unusual is classified ``KIND_SOLO``/``KIND_OTHER`` and
    passed through unchanged.

    The flow key identifies the flow (protocol, addresses, ports); the match
    key holds every header byte that must be equal between segments merged
    together because segmentation copies it from the first one.
    """
    data = packet if type(packet) is bytes else bytes(packet)
    n = len(data)
    if n == 0:
        raise MalformedPacket("empty packet")
    version = data[0] >> 4
    if version == 4:
        if n < 20:
            raise MalformedPacket("truncated IPv4 header")
        ihl = (data[0] & 0x0F) * 4
        if ihl < 20:
            raise MalformedPacket(f"IPv4 header length {ihl} < 20")
        total = int.from_bytes(data[2:4], "big")
        if total < ihl or total > n:
            raise MalformedPacket("IPv4 total length outside the packet")
        proto = data[9]
        if proto not in (_PROTO_TCP, _PROTO_UDP):
            return (KIND_OTHER, _NO_FLOW, _NO_FLOW, 0, 0, 0, 0, 0, 0, 0)
        if (data[6] & 0x3F) or data[7] or total - ihl < 4:
            # Only the first fragment has ports, so we cannot tell the flow.
            return (KIND_BARRIER, _NO_FLOW, _NO_FLOW, 0, 0, 0, 0, 0, 0, 0)
        key = data[9:10] + data[12:20] + data[ihl : ihl + 4]
        # A merged packet gets a fresh option-less header, and one with
        # trailing bytes or a bad header checksum must reach the kernel as is.
        if ihl != 20 or total != n or int.from_bytes(data[:20], "big") % _M:
            return (KIND_SOLO, key, _NO_FLOW, 0, 0, 0, 0, 0, 0, 0)
        ip_match = data[1:2] + data[6:7] + data[8:9]
        addrs = data[12:20]
        ip_id = int.from_bytes(data[4:6], "big")
        # With DF set the ID carries no meaning (RFC 6864), so like Linux GRO
        # we do not insist that it counts up.
        id_free = 1 if data[6] & 0x40 else 0
    elif version == 6:
        if n < _IPV6_HDR:
            raise MalformedPacket("truncated IPv6 header")
        plen = int.from_bytes(data[4:6], "big")
        if _IPV6_HDR + plen > n:
            raise MalformedPacket("IPv6 payload length past the packet")
        proto = data[6]
        if proto not in (_PROTO_TCP, _PROTO_UDP):
            kind = KIND_BARRIER if proto in _IPV6_EXT_HEADERS else KIND_OTHER
            return (kind, _NO_FLOW, _NO_FLOW, 0, 0, 0, 0, 0, 0, 0)
        if plen < 4:
            return (KIND_BARRIER, _NO_FLOW, _NO_FLOW, 0, 0, 0, 0, 0, 0, 0)
        ihl = _IPV6_HDR
        total = _IPV6_HDR + plen
        key = data[6:7] + data[8:44]
        if total != n:
            return (KIND_SOLO, key, _NO_FLOW, 0, 0, 0, 0, 0, 0, 0)
        ip_match = data[0:4] + data[7:8]
        addrs = data[8:40]
        ip_id = 0
        id_free = 1
    else:
        raise MalformedPacket(f"IP version {version}")

    l4len = total - ihl
    if proto == _PROTO_TCP:
        if l4len < 20:
            return (KIND_SOLO, key, _NO_FLOW, 0, 0, 0, 0, 0, 0, 0)
        thl = (data[ihl + 12] >> 4) * 4
        flags = data[ihl + 13]
        plen = l4len - thl
        # Only plain data segments: anything with SYN/FIN/RST/URG/ECE/CWR
        # changes connection state and must be seen individually.
        if thl < 20 or plen <= 0 or (flags != _TCP_ACK and flags != _TCP_ACK | _TCP_PSH):
            return (KIND_SOLO, key, _NO_FLOW, 0, 0, 0, 0, 0, 0, 0)
    else:
        thl = 8
        plen = l4len - 8
        # Checksum 0 is "none" for IPv4 (unverifiable) and invalid for IPv6.
        if (
            plen <= 0
            or int.from_bytes(data[ihl + 4 : ihl + 6], "big") != l4len
            or not (data[ihl + 6] or data[ihl + 7])
        ):
            return (KIND_SOLO, key, _NO_FLOW, 0, 0, 0, 0, 0, 0, 0)
    s = int.from_bytes(data[ihl:], "big")
    if l4len & 1:
        s <<= 8
    if (int.from_bytes(addrs, "big") + proto + l4len + s) % _M:
        return (KIND_SOLO, key, _NO_FLOW, 0, 0, 0, 0, 0, 0, 0)
    hlen = ihl + thl
    if proto == _PROTO_TCP:
        match = (
            ip_match
            + data[ihl + 8 : ihl + 13]  # ACK number, data offset
            + data[ihl + 14 : ihl + 16]  # window
            + data[ihl + 18 : hlen]  # urgent pointer, options
        )
        seq = int.from_bytes(data[ihl + 4 : ihl + 8], "big")
        return (KIND_TCP, key, match, ihl, hlen, plen, seq, ip_id, id_free, flags & _TCP_PSH)
    return (KIND_UDP, key, ip_match, ihl, hlen, plen, 0, ip_id, id_free, 0)


def build(
    first: bytes, ihl: int, hlen: int, gso_size: int, psh: int, payloads: list[_Buffer]
) -> bytes:
    """Assemble a merged packet with its virtio header.

    *first* is the first segment (its headers are reused), *payloads* the
    payloads of all segments including the first, in order.
    """
    # Arguments normally come straight from parse(); the checks keep a bad
    # call from producing a corrupt packet (and mirror the C version's).
    if not (ihl >= 20 and hlen <= len(first) and (hlen - ihl == 8 or hlen - ihl >= 20)):
        raise ValueError("inconsistent header lengths")
    if not (0 <= gso_size <= _M and 0 <= psh <= 0xFF):
        raise ValueError("gso_size or psh out of range")
    total = hlen + sum(map(len, payloads))
    header = bytearray(first[:hlen])
    v6 = header[0] >> 4 == 6
    if v6 != (ihl == _IPV6_HDR) or (not v6 and header[0] >> 4 != 4):
        raise ValueError("IP version does not match the header length")
    l4len = total - ihl
    if (l4len if v6 else total) > _M:
        raise ValueError("merged packet too long")
    if v6:
        _pack_u16(header, 4, l4len)
        addrs = header[8:40]
    else:
        _pack_u16(header, 2, total)
        header[10] = header[11] = 0
        s = int.from_bytes(header[:ihl], "big")
        _pack_u16(header, 10, _M - ((s - 1) % _M + 1))
        addrs = header[12:20]
    tcp = hlen - ihl != 8
    if tcp:
        header[ihl + 13] |= psh
        proto = _PROTO_TCP
        csum_offset = 16
        gso_type = GSO_TCPV6 if v6 else GSO_TCPV4
    else:
        _pack_u16(header, ihl + 4, l4len)
        proto = _PROTO_UDP
        csum_offset = 6
        gso_type = GSO_UDP_L4
    # NEEDS_CSUM wants the folded, non-inverted pseudo-header sum in the field;
    # it is never 0 because the protocol number is not.
    s = int.from_bytes(addrs, "big") + proto + l4len
    _pack_u16(header, ihl + csum_offset, (s - 1) % _M + 1)
    vhdr = _vhdr(NEEDS_CSUM, gso_type, hlen, gso_size, ihl, csum_offset)
    return b"".join((vhdr, header, *payloads))


class _Item:
    """One super-packet under construction."""

    __slots__ = (
        "first",
        "gso_size",
        "hlen",
        "id_free",
        "ihl",
        "match",
        "next_id",
        "next_seq",
        "payloads",
        "psh",
        "tcp",
        "total",
    )

    def __init__(self, first: bytes, parsed: Parsed) -> None:
        _, _, match, ihl, hlen, plen, seq, ip_id, id_free, _ = parsed
        self.first = first
        self.match = match
        self.ihl = ihl
        self.hlen = hlen
        self.gso_size = plen
        self.total = hlen + plen
        self.tcp = parsed[0] == KIND_TCP
        self.next_seq = (seq + plen) & 0xFFFFFFFF
        self.next_id = (ip_id + 1) & _M
        self.id_free = id_free
        self.psh = 0
        # A view, not a copy: `first` is already our own immutable bytes.
        self.payloads: list[_Buffer] = [memoryview(first)[hlen:]]


class GroTable:
    """Collects packets for one writer and coalesces them into super-packets.

    One table per TUN queue (or per writer); not thread-safe.  Call
    :meth:`add` for each packet of a batch, then :meth:`flush` to get the
    buffers to write (each one virtio header + packet).

    *uso* enables merging UDP datagrams (only when the device has USO4/USO6).
    *max_size* bounds a merged IP packet.  *allow_short_last* can be turned
    off for kernels that reject a GSO write whose last segment is shorter than
    ``gso_size``: then only equal-sized segments are merged.
    """

    _parse: Callable[[_Buffer], Parsed] = staticmethod(parse)
    _build: Callable[[bytes, int, int, int, int, list[_Buffer]], bytes] = staticmethod(build)

    def __init__(
        self, *, uso: bool = False, max_size: int = 65535, allow_short_last: bool = True
    ) -> None:
        if not 0 < max_size <= 65535:
            raise ValueError(f"max_size must be in 1..65535, got {max_size!r}")
        self._uso = uso
        self._max_size = max_size
        self._allow_short = allow_short_last
        # Output slots in arrival order of their first packet: a finished
        # buffer (bytes) or a super-packet still accepting segments.
        self._items: list[bytes | _Item] = []
        # flow key -> the flow's most recent slot, if it can still grow.  Only
        # the most recent slot may grow, so a flow's packets stay in order.
        self._open: dict[bytes, _Item] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def pending_packets(self) -> int:
        """Number of input packets held until the next :meth:`flush`."""
        return self._count

    @property
    def pending_buffers(self) -> int:
        """Number of buffers the next :meth:`flush` would return."""
        return len(self._items)

    def add(self, packet: _Buffer) -> None:
        """Queue one IP packet (IPv4 or IPv6, any protocol).

        Raises :class:`MalformedPacket`, leaving the table unchanged, if
        *packet* is not an IP packet whose header lengths fit in it.
        """
        data = packet if type(packet) is bytes else bytes(packet)
        parsed = self._parse(data)
        kind = parsed[0]
        self._count += 1
        if kind == KIND_OTHER:
            self._items.append(ZERO_HDR + data)
            return
        if kind == KIND_BARRIER:
            # Could belong to any open flow: nothing may be merged past it.
            self._open.clear()
            self._items.append(ZERO_HDR + data)
            return
        key = parsed[1]
        item = self._open.pop(key, None)
        if kind == KIND_SOLO or (kind == KIND_UDP and not self._uso):
            self._items.append(ZERO_HDR + data)
            return
        plen = parsed[5]
        psh = parsed[9]
        # Merge only onto the flow's most recent slot, and only if this segment
        # is exactly what segmenting that slot further would produce next.
        if item is not None and (
            parsed[2] == item.match
            and plen <= item.gso_size
            and item.total + plen <= self._max_size
            and (item.id_free or parsed[7] == item.next_id)
            and (parsed[6] == item.next_seq if item.tcp else len(item.payloads) < UDP_MAX_SEGMENTS)
            and (self._allow_short or plen == item.gso_size)
        ):
            item.payloads.append(memoryview(data)[parsed[4] :])
            item.total += plen
            item.next_seq = (parsed[6] + plen) & 0xFFFFFFFF
            item.next_id = (parsed[7] + 1) & _M
            if psh or plen < item.gso_size:
                # PSH or a short segment is where a sender's burst ends.
                item.psh = psh
            else:
                self._open[key] = item
            return
        # Otherwise it starts the flow's next slot (any previous one is closed).
        if psh:
            self._items.append(ZERO_HDR + data)
            return
        item = _Item(data, parsed)
        self._items.append(item)
        self._open[key] = item

    def flush(self) -> list[bytes]:
        """Return everything added since the last flush, ready to write, and
        empty the table."""
        out: list[bytes] = []
        append = out.append
        build_ = self._build
        for item in self._items:
            if isinstance(item, bytes):
                append(item)
            elif len(item.payloads) == 1:
                append(ZERO_HDR + item.first)
            else:
                append(
                    build_(item.first, item.ihl, item.hlen, item.gso_size, item.psh, item.payloads)
                )
        self._items.clear()
        self._open.clear()
        self._count = 0
        return out


def coalesce(
    packets: Iterable[_Buffer],
    *,
    uso: bool = False,
    max_size: int = 65535,
    allow_short_last: bool = True,
) -> list[bytes]:
    """Coalesce a batch of IP packets: a fresh :class:`GroTable`, add all, flush."""
    table = GroTable(uso=uso, max_size=max_size, allow_short_last=allow_short_last)
    for packet in packets:
        table.add(packet)
    return table.flush()
