"""Generic segmentation: turn one super-packet read from a TUN fd into segments.

With IFF_VNET_HDR and TUNSETOFFLOAD the kernel hands us TCP and UDP payloads
of up to 64 KiB in a single read, described by a :class:`~.virtio.VirtioNetHdr`.
A user of the stream wants wire-sized packets with complete checksums, so this
module does what a NIC would do for a TSO/USO transmit.

This is the reference implementation; ``_speedups.split`` must return
byte-identical results and raise :class:`MalformedPacket` for exactly the same
inputs.
"""

from __future__ import annotations

import struct
from typing import Final

from .errors import MalformedPacket
from .virtio import (
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP,
    GSO_UDP_L4,
    NEEDS_CSUM,
    VIRTIO_NET_HDR_LEN,
    VirtioNetHdr,
    _validate_fields,
)

__all__ = ["finish_checksum", "split", "split_fields", "split_with_header"]

_M: Final = 0xFFFF
_PROTO_TCP: Final = 6
_PROTO_UDP: Final = 17
_TCP_FIN: Final = 0x01
_TCP_PSH: Final = 0x08
_TCP_CWR: Final = 0x80
_TCP_CSUM_OFFSET: Final = 16
_UDP_CSUM_OFFSET: Final = 6
_IPV4_MIN_HDR: Final = 20
_IPV6_HDR: Final = 40
_TCP_MIN_HDR: Final = 20
_UDP_HDR: Final = 8

_pack_u16: Final = struct.Struct("!H").pack_into
_pack_u32: Final = struct.Struct("!I").pack_into

_Buffer = bytes | bytearray | memoryview


def finish_checksum(packet: bytearray, csum_start: int, csum_offset: int) -> None:
    """Complete a NEEDS_CSUM checksum in place.

    The kernel leaves the (non-inverted) pseudo-header sum in the field at
    ``csum_start + csum_offset`` and expects whoever finishes the job to sum
    from ``csum_start`` to the end *including* that field.  A result of 0 is
    written as 0xFFFF, as the kernel does, because for UDP 0 would mean "no
    checksum" and for TCP the two are equivalent.
    """
    pos = csum_start + csum_offset
    if csum_start < 0 or csum_offset < 0 or pos + 2 > len(packet):
        raise MalformedPacket(
            f"checksum field at {csum_start}+{csum_offset} lies outside a {len(packet)}-byte packet"
        )
    n = int.from_bytes(memoryview(packet)[csum_start:], "big")
    if (len(packet) - csum_start) & 1:
        n <<= 8
    csum = _M - ((n - 1) % _M + 1) if n else _M
    packet[pos : pos + 2] = (csum or _M).to_bytes(2, "big")


def split(hdr: VirtioNetHdr, packet: _Buffer) -> list[bytes]:
    """Turn *packet* (a bare IP packet that followed *hdr* on a TUN read) into
    complete wire packets.

    Raises :class:`MalformedPacket` when the header and packet disagree or the
    packet cannot be segmented; never anything else for bad bytes.
    """
    return split_fields(*hdr.fields(), packet)


def split_with_header(buf: _Buffer) -> list[bytes]:
    """:func:`split` for a whole TUN read: 10-byte virtio header, then the packet."""
    hdr = VirtioNetHdr.unpack(buf)
    return split(hdr, memoryview(buf).cast("B")[VIRTIO_NET_HDR_LEN:])


def split_fields(
    flags: int,
    gso_type: int,
    hdr_len: int,
    gso_size: int,
    csum_start: int,
    csum_offset: int,
    packet: _Buffer,
    /,
) -> list[bytes]:
    """:func:`split` over the header's fields, so callers that parsed the header
    themselves (or the C speedups' tests) need not build a VirtioNetHdr."""
    data = packet if type(packet) is bytes else bytes(packet)
    n = len(data)
    _validate_fields(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, n)
    base = gso_type & ~GSO_ECN
    if base == GSO_NONE:
        if flags & NEEDS_CSUM:
            buf = bytearray(data)
            finish_checksum(buf, csum_start, csum_offset)
            return [bytes(buf)]
        return [data]
    if base == GSO_UDP:
        # UFO would need IP fragmentation; kernels stopped emitting it on TUN.
        raise MalformedPacket("GSO_UDP (UFO) cannot be segmented")
    return _segment(base, gso_size, csum_start, csum_offset, data)


def _segment(
    base: int, gso_size: int, csum_start: int, csum_offset: int, data: bytes
) -> list[bytes]:
    n = len(data)
    tcp = base != GSO_UDP_L4
    proto = _PROTO_TCP if tcp else _PROTO_UDP
    if csum_offset != (_TCP_CSUM_OFFSET if tcp else _UDP_CSUM_OFFSET):
        raise MalformedPacket(f"csum_offset {csum_offset} is not the L4 checksum field")
    # validate() guaranteed the checksum field is inside the packet, so n >= 2.
    version = data[0] >> 4
    if version == 4:
        if base == GSO_TCPV6:
            raise MalformedPacket("GSO_TCPV6 on an IPv4 packet")
        if n < _IPV4_MIN_HDR:
            raise MalformedPacket("truncated IPv4 header")
        ihl = (data[0] & 0x0F) * 4
        if ihl < _IPV4_MIN_HDR:
            raise MalformedPacket(f"IPv4 header length {ihl} < 20")
        # We locate L4 by csum_start and the IP header by ihl; if they
        # disagree, one of them is lying and we cannot know which.
        if csum_start != ihl:
            raise MalformedPacket(f"csum_start {csum_start} != IPv4 header length {ihl}")
        if int.from_bytes(data[2:4], "big") != n:
            raise MalformedPacket("IPv4 total length does not match the packet")
        if (data[6] & 0x3F) or data[7]:
            raise MalformedPacket("GSO packet is an IPv4 fragment")
        if data[9] != proto:
            raise MalformedPacket(f"IPv4 protocol {data[9]} does not match gso_type")
        addrs = data[12:20]
    elif version == 6:
        if base == GSO_TCPV4:
            raise MalformedPacket("GSO_TCPV4 on an IPv6 packet")
        if n < _IPV6_HDR:
            raise MalformedPacket("truncated IPv6 header")
        # Extension headers are not supported: L4 must follow the fixed header.
        if csum_start != _IPV6_HDR:
            raise MalformedPacket(f"csum_start {csum_start} != 40 (IPv6 extension headers?)")
        if int.from_bytes(data[4:6], "big") != n - _IPV6_HDR:
            raise MalformedPacket("IPv6 payload length does not match the packet")
        if data[6] != proto:
            raise MalformedPacket(f"IPv6 next header {data[6]} does not match gso_type")
        addrs = data[8:40]
        ihl = _IPV6_HDR
    else:
        raise MalformedPacket(f"IP version {version} in a GSO packet")

    # hdr_len from the kernel is only a hint (often the linear-area size), so
    # the header length comes from the L4 header itself.
    if tcp:
        if ihl + _TCP_MIN_HDR > n:
            raise MalformedPacket("truncated TCP header")
        doff = data[ihl + 12] >> 4
        if doff < 5:
            raise MalformedPacket(f"TCP data offset {doff} < 5")
        hlen = ihl + doff * 4
        if hlen > n:
            raise MalformedPacket("TCP options run past the packet")
    else:
        hlen = ihl + _UDP_HDR
        if hlen > n:
            raise MalformedPacket("truncated UDP header")

    header = bytearray(data[:hlen])
    csum_pos = ihl + csum_offset
    # The pseudo-header minus the length; src and dst are adjacent, so one
    # integer covers both.
    pseudo = int.from_bytes(addrs, "big") + proto
    v4 = version == 4
    ip_id = int.from_bytes(data[4:6], "big")
    seq = int.from_bytes(data[ihl + 4 : ihl + 8], "big") if tcp else 0
    tcp_flags = data[ihl + 13] if tcp else 0
    l4_hlen = hlen - ihl
    segments: list[bytes] = []
    start = hlen
    index = 0
    while True:
        end = min(start + gso_size, n)
        payload = data[start:end]
        plen = end - start
        last = end >= n
        l4len = l4_hlen + plen
        if v4:
            _pack_u16(header, 2, hlen + plen)
            _pack_u16(header, 4, (ip_id + index) & _M)
            header[10] = header[11] = 0
            s = int.from_bytes(header[:ihl], "big")
            _pack_u16(header, 10, _M - ((s - 1) % _M + 1))
        else:
            _pack_u16(header, 4, l4len)
        if tcp:
            _pack_u32(header, ihl + 4, (seq + start - hlen) & 0xFFFFFFFF)
            f = tcp_flags
            if not last:
                f &= ~(_TCP_FIN | _TCP_PSH)
            if index:
                f &= ~_TCP_CWR
            header[ihl + 13] = f
        else:
            _pack_u16(header, ihl + 4, l4len)
        header[csum_pos] = header[csum_pos + 1] = 0
        p = int.from_bytes(payload, "big")
        if plen & 1:
            p <<= 8
        # Never zero: the pseudo-header holds a non-zero protocol number.
        s = pseudo + l4len + int.from_bytes(header[ihl:], "big") + p
        csum = _M - ((s - 1) % _M + 1)
        if not tcp and not csum:
            csum = _M  # 0 would mean "no checksum" for UDP
        _pack_u16(header, csum_pos, csum)
        segments.append(bytes(header) + payload)
        if last:
            return segments
        start = end
        index += 1
