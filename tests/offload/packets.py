"""Packet builders, a naive checksum and a model of the kernel for the offload tests.

Everything here is written independently of ``trio_tun.offload`` (a word-by-word
checksum, ``struct`` for headers) so the tests do not check the code against
itself.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import attrs
from hypothesis import strategies as st

TCP: int = 6
UDP: int = 17
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80

# The virtio header, spelled out here rather than imported.
VNET = struct.Struct("=BBHHHH")
NEEDS_CSUM = 1
GSO_TCPV4, GSO_UDP_L4, GSO_TCPV6 = 1, 5, 4


def naive_sum(data: bytes) -> int:
    """Ones'-complement sum the slow, obvious way (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def naive_checksum(data: bytes) -> int:
    return ~naive_sum(data) & 0xFFFF


def pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


@attrs.frozen
class Flow:
    """What stays the same for every segment of one flow."""

    version: int = 4
    proto: int = TCP
    src: bytes = bytes([10, 0, 0, 1])
    dst: bytes = bytes([10, 0, 0, 2])
    sport: int = 40000
    dport: int = 443
    tos: int = 0
    ttl: int = 64
    df: bool = True
    flow_label: int = 0
    window: int = 502
    urgent: int = 0
    options: bytes = b""

    @property
    def key(self) -> tuple[int, int, bytes, bytes, int, int]:
        return (self.version, self.proto, self.src, self.dst, self.sport, self.dport)


def l4_tcp(
    flow: Flow, seq: int, ack: int, flags: int, payload: bytes, *, corrupt: bool = False
) -> bytes:
    doff = 5 + len(flow.options) // 4
    hdr = struct.pack(
        "!HHIIBBHHH",
        flow.sport,
        flow.dport,
        seq & 0xFFFFFFFF,
        ack & 0xFFFFFFFF,
        doff << 4,
        flags,
        flow.window,
        0,
        flow.urgent,
    )
    seg = hdr + flow.options + payload
    csum = naive_checksum(pseudo(flow.src, flow.dst, TCP, len(seg)) + seg)
    if corrupt:
        csum ^= 0x0101
    return seg[:16] + struct.pack("!H", csum) + seg[18:]


def l4_udp(flow: Flow, payload: bytes, *, corrupt: bool = False) -> bytes:
    length = 8 + len(payload)
    seg = struct.pack("!HHHH", flow.sport, flow.dport, length, 0) + payload
    csum = naive_checksum(pseudo(flow.src, flow.dst, UDP, length) + seg) or 0xFFFF
    if corrupt:
        csum ^= 0x0101
    return seg[:6] + struct.pack("!H", csum) + seg[8:]


def ip_wrap(flow: Flow, l4: bytes, ident: int = 0, *, ip_options: bytes = b"") -> bytes:
    if flow.version == 4:
        ihl = 5 + len(ip_options) // 4
        hdr = struct.pack(
            "!BBHHHBBH4s4s",
            0x40 | ihl,
            flow.tos,
            ihl * 4 + len(l4),
            ident & 0xFFFF,
            0x4000 if flow.df else 0,
            flow.ttl,
            flow.proto,
            0,
            flow.src,
            flow.dst,
        )
        hdr += ip_options
        csum = naive_checksum(hdr)
        return hdr[:10] + struct.pack("!H", csum) + hdr[12:] + l4
    first = (6 << 28) | (flow.tos << 20) | flow.flow_label
    return struct.pack("!IHBB", first, len(l4), flow.proto, flow.ttl) + flow.src + flow.dst + l4


def tcp_packet(
    flow: Flow,
    seq: int,
    payload: bytes,
    *,
    ack: int = 1000,
    flags: int = ACK,
    ident: int = 0,
    corrupt: bool = False,
) -> bytes:
    return ip_wrap(flow, l4_tcp(flow, seq, ack, flags, payload, corrupt=corrupt), ident)


def udp_packet(flow: Flow, payload: bytes, *, ident: int = 0, corrupt: bool = False) -> bytes:
    return ip_wrap(flow, l4_udp(flow, payload, corrupt=corrupt), ident)


def tcp_flow(
    flow: Flow,
    sizes: Sequence[int],
    *,
    seq: int = 1,
    ack: int = 1000,
    ident: int = 0,
    flags: Sequence[int] | None = None,
) -> list[bytes]:
    """Consecutive segments of one flow, sequence numbers and IP IDs counting up."""
    out = []
    for i, size in enumerate(sizes):
        payload = bytes((seq + j) & 0xFF for j in range(size))
        f = ACK if flags is None else flags[i]
        out.append(tcp_packet(flow, seq, payload, ack=ack, flags=f, ident=ident + i))
        seq += size
    return out


def flow_key_of(packet: bytes) -> tuple[int, int, bytes, bytes, int, int] | None:
    """(version, proto, src, dst, sport, dport) of a TCP/UDP packet, else None."""
    if packet[0] >> 4 == 4:
        ihl = (packet[0] & 15) * 4
        proto, src, dst = packet[9], packet[12:16], packet[16:20]
        l4 = packet[ihl:]
        version = 4
    else:
        proto, src, dst, l4 = packet[6], packet[8:24], packet[24:40], packet[40:]
        version = 6
    if proto not in (TCP, UDP) or len(l4) < 4:
        return None
    sport, dport = struct.unpack("!HH", l4[:4])
    return (version, proto, src, dst, sport, dport)


# --------------------------------------------------------------------------
# The kernel, played naively: what it does with a buffer written to a TUN fd
# with IFF_VNET_HDR (virtio_net_hdr_to_skb, then software segmentation).


class KernelRejects(Exception):
    """The real kernel would have refused this write (EINVAL) or dropped it."""


def kernel_receive(buf: bytes) -> list[bytes]:
    """Return the wire packets the kernel makes of one written buffer.

    Checks what the kernel relies on for a GSO write (csum_start at the
    transport header, the pseudo-header sum in the checksum field, ...) and
    segments with complete checksums.
    """
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = VNET.unpack(buf[:10])
    pkt = bytearray(buf[10:])
    if gso_type == 0:
        if flags & NEEDS_CSUM:
            pos = csum_start + csum_offset
            c = naive_checksum(bytes(pkt[csum_start:]))
            pkt[pos : pos + 2] = struct.pack("!H", c or 0xFFFF)
        elif flags:
            raise KernelRejects(f"flags {flags}")
        return [bytes(pkt)]
    if flags != NEEDS_CSUM or gso_size == 0:
        raise KernelRejects("GSO needs NEEDS_CSUM and a gso_size")
    version = pkt[0] >> 4
    if version == 4:
        ihl = (pkt[0] & 15) * 4
        if naive_sum(bytes(pkt[:ihl])) != 0xFFFF:
            raise KernelRejects("bad IPv4 header checksum")
        if struct.unpack("!H", pkt[2:4])[0] != len(pkt):
            raise KernelRejects("IPv4 length")
        proto, src, dst = pkt[9], bytes(pkt[12:16]), bytes(pkt[16:20])
        ident = struct.unpack("!H", pkt[4:6])[0]
    else:
        ihl = 40
        if struct.unpack("!H", pkt[4:6])[0] != len(pkt) - 40:
            raise KernelRejects("IPv6 length")
        proto, src, dst = pkt[6], bytes(pkt[8:24]), bytes(pkt[24:40])
        ident = 0
    want = {GSO_TCPV4: (4, TCP), GSO_TCPV6: (6, TCP), GSO_UDP_L4: (version, UDP)}
    if want.get(gso_type) != (version, proto):
        raise KernelRejects("gso_type does not match the packet")
    if csum_start != ihl or csum_offset != (16 if proto == TCP else 6):
        raise KernelRejects("csum_start/csum_offset not at the L4 checksum")
    l4len = len(pkt) - ihl
    field = struct.unpack("!H", pkt[csum_start + csum_offset : csum_start + csum_offset + 2])[0]
    if field != naive_sum(pseudo(src, dst, proto, l4len)):
        raise KernelRejects("checksum field does not hold the pseudo-header sum")
    thl = (pkt[ihl + 12] >> 4) * 4 if proto == TCP else 8
    hlen = ihl + thl
    if hdr_len > len(pkt):
        raise KernelRejects("hdr_len")
    payload = bytes(pkt[hlen:])
    nseg = -(-len(payload) // gso_size)
    if proto == UDP and (nseg < 2 or nseg > 64):
        raise KernelRejects("UDP GSO needs 2..64 segments")
    out = []
    seq = struct.unpack("!I", pkt[ihl + 4 : ihl + 8])[0] if proto == TCP else 0
    for i in range(nseg):
        chunk = payload[i * gso_size : (i + 1) * gso_size]
        last = i == nseg - 1
        h = bytearray(pkt[:hlen])
        if version == 4:
            h[2:4] = struct.pack("!H", hlen + len(chunk))
            h[4:6] = struct.pack("!H", (ident + i) & 0xFFFF)
            h[10:12] = b"\0\0"
            h[10:12] = struct.pack("!H", naive_checksum(bytes(h[:ihl])))
        else:
            h[4:6] = struct.pack("!H", thl + len(chunk))
        if proto == TCP:
            h[ihl + 4 : ihl + 8] = struct.pack("!I", (seq + i * gso_size) & 0xFFFFFFFF)
            if not last:
                h[ihl + 13] &= ~(FIN | PSH) & 0xFF
            if i:
                h[ihl + 13] &= ~CWR & 0xFF
        else:
            h[ihl + 4 : ihl + 6] = struct.pack("!H", 8 + len(chunk))
        pos = ihl + (16 if proto == TCP else 6)
        h[pos : pos + 2] = b"\0\0"
        seg = bytes(h[ihl:]) + chunk
        c = naive_checksum(pseudo(src, dst, proto, len(seg)) + seg)
        if proto == UDP:
            c = c or 0xFFFF
        h[pos : pos + 2] = struct.pack("!H", c)
        out.append(bytes(h) + chunk)
    return out


# --------------------------------------------------------------------------
# Independent verification with dpkt.


def dpkt_check(packet: bytes) -> None:
    """Assert that dpkt parses *packet* and agrees with its IP and L4 checksums."""
    import dpkt

    if packet[0] >> 4 == 4:
        ip = dpkt.ip.IP(packet)
        assert ip.len == len(packet)
        ip_sum = ip.sum
        l4 = ip.data
        l4_sum = l4.sum
        ip.sum = 0
        l4.sum = 0
        again = dpkt.ip.IP(bytes(ip))
        assert again.sum == ip_sum, "IPv4 header checksum"
        new_l4 = again.data.sum
    else:
        ip = dpkt.ip6.IP6(packet)
        assert ip.plen == len(packet) - 40
        l4 = ip.data
        l4_sum = l4.sum
        l4.sum = 0
        new_l4 = dpkt.ip6.IP6(bytes(ip)).data.sum
        if ip.nxt == UDP and new_l4 == 0:
            new_l4 = 0xFFFF  # dpkt leaves IPv6 UDP's 0 as is; RFC 8200 says 0xFFFF
    assert isinstance(l4, dpkt.tcp.TCP | dpkt.udp.UDP)
    assert l4_sum == new_l4, f"L4 checksum {l4_sum:#06x} != {new_l4:#06x}"


# --------------------------------------------------------------------------
# Hypothesis strategies.

_tcp_options = st.sampled_from(
    [
        b"",
        b"\x01\x01\x08\x0a" + bytes(range(8)),  # NOP NOP timestamps
        b"\x01\x01\x08\x0a\xff\xff\xff\xff\x00\x00\x00\x01",
        b"\x01\x01\x05\x0a" + bytes(range(8)) + b"\x01\x01\x08\x0a" + bytes(8),  # SACK + TS
        b"\x02\x04\x05\xb4",  # MSS
    ]
)


@st.composite
def flows(draw: st.DrawFn, proto: int = TCP) -> Flow:
    version = draw(st.sampled_from([4, 6]))
    alen = 4 if version == 4 else 16
    src = draw(st.binary(min_size=alen, max_size=alen))
    dst = draw(st.binary(min_size=alen, max_size=alen))
    return Flow(
        version=version,
        proto=proto,
        src=src,
        dst=dst,
        sport=draw(st.integers(0, 0xFFFF)),
        dport=draw(st.integers(0, 0xFFFF)),
        tos=draw(st.integers(0, 0xFF)),
        ttl=draw(st.integers(1, 0xFF)),
        df=draw(st.booleans()),
        flow_label=draw(st.integers(0, 0xFFFFF)),
        window=draw(st.integers(0, 0xFFFF)),
        urgent=draw(st.sampled_from([0, 0, 0, 7])),
        options=draw(_tcp_options) if proto == TCP else b"",
    )


# Mostly the pattern a TSO sender produces (a run of equal sizes, maybe a
# short tail), sometimes anything.
@st.composite
def segment_sizes(draw: st.DrawFn, max_segments: int = 12) -> list[int]:
    n = draw(st.integers(1, max_segments))
    if draw(st.booleans()):
        size = draw(st.sampled_from([1, 2, 3, 100, 1448, 1460]))
        sizes = [size] * n
        if draw(st.booleans()):
            sizes[-1] = draw(st.integers(1, size))
        return sizes
    return draw(st.lists(st.integers(0, 1500), min_size=n, max_size=n))


_flag_choices = st.sampled_from(
    [ACK] * 12
    + [ACK | PSH] * 3
    + [ACK | FIN, SYN, SYN | ACK, RST, RST | ACK, ACK | URG, ACK | ECE, ACK | CWR, 0]
)


def _distinct(flow: Flow, used: set[object]) -> Flow:
    """Give each generated flow its own 5-tuple: two "flows" sharing one are
    one flow whose sequence numbers and IP IDs jump, and then merging (with
    DF, IDs need not count up) renumbers IDs, so the round trip is not exact."""
    while flow.key in used:
        flow = attrs.evolve(flow, sport=(flow.sport + 1) & 0xFFFF)
    used.add(flow.key)
    return flow


@st.composite
def tcp_batches(draw: st.DrawFn) -> list[bytes]:
    """One or more TCP flows interleaved, plus the odd ICMP packet, as one
    batch to coalesce.  Within a flow, sequence numbers and IP IDs are
    consecutive, as a TSO sender produces them."""
    packets_by_flow: list[list[bytes]] = []
    used: set[object] = set()
    for _ in range(draw(st.integers(1, 3))):
        flow = _distinct(draw(flows(TCP)), used)
        sizes = draw(segment_sizes())
        seq = draw(st.integers(0, 0xFFFFFFFF))
        ack = draw(st.integers(0, 0xFFFFFFFF))
        ident = draw(st.integers(0, 0xFFFF))
        pkts = []
        for i, size in enumerate(sizes):
            flags = draw(_flag_choices)
            if draw(st.integers(0, 15)) == 0:
                ack += 1  # the ACK number moves on mid-flow
            corrupt = draw(st.integers(0, 20)) == 0
            payload = bytes((seq + j) & 0xFF for j in range(size))
            pkts.append(
                tcp_packet(
                    flow, seq, payload, ack=ack, flags=flags, ident=ident + i, corrupt=corrupt
                )
            )
            seq += size
        packets_by_flow.append(pkts)
    return draw(_interleave(packets_by_flow))


@st.composite
def udp_batches(draw: st.DrawFn) -> list[bytes]:
    packets_by_flow: list[list[bytes]] = []
    used: set[object] = set()
    for _ in range(draw(st.integers(1, 3))):
        flow = _distinct(draw(flows(UDP)), used)
        sizes = draw(segment_sizes(max_segments=70))
        ident = draw(st.integers(0, 0xFFFF))
        pkts = []
        for i, size in enumerate(sizes):
            corrupt = draw(st.integers(0, 20)) == 0
            payload = bytes((i + j) & 0xFF for j in range(size))
            pkts.append(udp_packet(flow, payload, ident=ident + i, corrupt=corrupt))
        packets_by_flow.append(pkts)
    return draw(_interleave(packets_by_flow))


def icmp_echo(version: int = 4) -> bytes:
    flow = Flow(
        version=version,
        proto=1 if version == 4 else 58,
        src=bytes(4 if version == 4 else 16),
        dst=bytes(4 if version == 4 else 16),
    )
    return ip_wrap(flow, b"\x08\x00\xf7\xff\x00\x00\x00\x00")


@st.composite
def _interleave(draw: st.DrawFn, lists: list[list[bytes]]) -> list[bytes]:
    """Merge lists keeping each one's order; sprinkle in ICMP packets."""
    queues = [list(lst) for lst in lists]
    out: list[bytes] = []
    while any(queues):
        live = [q for q in queues if q]
        q = draw(st.sampled_from(live))
        # Long runs from one flow are what makes coalescing worthwhile.
        for _ in range(draw(st.integers(1, 8))):
            if q:
                out.append(q.pop(0))
        if draw(st.integers(0, 10)) == 0:
            out.append(icmp_echo(draw(st.sampled_from([4, 6]))))
    return out


# --------------------------------------------------------------------------
# What the kernel hands us on a read: super-packets with NEEDS_CSUM.


def super_packet(
    flow: Flow,
    payload: bytes,
    gso_size: int,
    *,
    seq: int = 1,
    ack: int = 1000,
    flags: int = ACK | PSH,
    ident: int = 0,
    hdr_len: int | None = None,
) -> tuple[tuple[int, int, int, int, int, int], bytes]:
    """A TSO/USO packet as a TUN read returns it: the header fields and the
    packet, whose L4 checksum field holds the pseudo-header sum."""
    if flow.proto == TCP:
        l4 = bytearray(l4_tcp(flow, seq, ack, flags, payload))
        off, l4_hlen = 16, 20 + len(flow.options)
        gso_type = GSO_TCPV4 if flow.version == 4 else GSO_TCPV6
    else:
        l4 = bytearray(l4_udp(flow, payload))
        off, l4_hlen = 6, 8
        gso_type = GSO_UDP_L4
    l4[off : off + 2] = struct.pack(
        "!H", naive_sum(pseudo(flow.src, flow.dst, flow.proto, len(l4)))
    )
    pkt = ip_wrap(flow, bytes(l4), ident)
    ihl = 20 if flow.version == 4 else 40
    fields = (
        NEEDS_CSUM,
        gso_type,
        ihl + l4_hlen if hdr_len is None else hdr_len,
        gso_size,
        ihl,
        off,
    )
    return fields, pkt


def expected_segments(
    flow: Flow,
    payload: bytes,
    gso_size: int,
    *,
    seq: int = 1,
    ack: int = 1000,
    flags: int = ACK | PSH,
    ident: int = 0,
) -> list[bytes]:
    """The segments a NIC would put on the wire for super_packet(...)."""
    chunks = [payload[i : i + gso_size] for i in range(0, len(payload), gso_size)] or [b""]
    out = []
    for i, chunk in enumerate(chunks):
        if flow.proto == UDP:
            out.append(udp_packet(flow, chunk, ident=ident + i))
            continue
        f = flags
        if i != len(chunks) - 1:
            f &= ~(FIN | PSH)
        if i:
            f &= ~CWR
        out.append(tcp_packet(flow, seq + i * gso_size, chunk, ack=ack, flags=f, ident=ident + i))
    return out
