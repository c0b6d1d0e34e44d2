"""Fuzz harnesses: one check function per parser or transformation of trio-tun.

Every check takes arbitrary bytes (what a fuzzer, or a corpus file, offers),
interprets them, runs the code under test and asserts invariants: not only
"no crash" but the properties the rest of the library relies on.  An
``AssertionError`` (or any exception other than the documented
:class:`~trio_tun.offload.MalformedPacket`) is a finding.

The same functions serve both callers:

* ``tests/fuzz/run.py`` feeds them to atheris (coverage-guided, ``nox -s fuzz``);
* ``tests/test_fuzz_corpus.py`` replays every corpus file through every check
  in the normal test command (no atheris needed).

The reference checks here are written independently of the library: checksums
are summed 16-bit word by word (``array``), headers are parsed with
``struct``, so a bug shared by the library's two implementations still shows.

Input formats (shared so any corpus file means something to every harness):

* a *read*: 10-byte virtio-net header + packet, exactly what one ``read()`` on
  a TUN fd with ``IFF_VNET_HDR`` returns (``virtio``, ``gso_split``);
* a *batch*: one options byte, then records of a 2-byte big-endian length and
  that many bytes (``gro_coalesce``, ``stream_decode``, parts of ``speedups``);
* ``speedups``: one operation byte, then that operation's input (bytes 0 to
  239 pick the packet functions, 240 to 255 the UDP GSO/GRO helpers and the
  frame loops, so the older corpus keeps its meaning).
"""

from __future__ import annotations

import errno
import functools
import os
import socket
import struct
import sys
from array import array
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, Final

from trio_tun import _ports
from trio_tun.offload import MalformedPacket, batch, gro, udp
from trio_tun.offload import reference as py
from trio_tun.offload.virtio import VIRTIO_NET_HDR_LEN, VirtioNetHdr

try:
    from trio_tun.offload import _accel, _speedups
except ImportError:  # not built: the differential harness only runs the reference
    _accel = None  # type: ignore[assignment]
    _speedups = None  # type: ignore[assignment]

#: What a split packet may be: bytes, or the speedups' bytes subclass for the
#: segments it cut from a super-packet (never a view of somebody's buffer).
PACKET_TYPES: Final[tuple[type, ...]] = (
    (bytes,) if _speedups is None else (bytes, _speedups.Segment)
)

VNET: Final = struct.Struct("=BBHHHH")
NEEDS_CSUM: Final = 1
DATA_VALID: Final = 2
GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4 = 0, 1, 3, 4, 5
GSO_ECN: Final = 0x80
TCP: Final = 6
UDP: Final = 17
TCP_FIN, TCP_PSH, TCP_CWR = 0x01, 0x08, 0x80
#: A valid IPv4/UDP packet (checksum 0 = none) that ends a stream-level batch.
SENTINEL: Final = bytes.fromhex("4500001c00004000401100000a0000010a0000020035003500080000")
#: Bounds on what one input may make us do (keeps every iteration quick).
MAX_RECORDS: Final = 48
MAX_STREAM_FRAMES: Final = 16
#: Frames one input writes through the frame loops: a few more than an AF_UNIX
#: datagram socket queues by default (``net.unix.max_dgram_qlen``, 10), so
#: that the writer sometimes stops at EAGAIN.
MAX_LOOP_FRAMES: Final = 12
#: The operation bytes of ``speedups`` from which on the newer entry points are driven.
NEWER_OPS: Final = 240


# -- independent reference helpers --------------------------------------------------


def ref_sum(data: bytes | bytearray | memoryview) -> int:
    """Folded 16-bit ones'-complement sum, word by word (0 only for all-zero data)."""
    raw = bytes(data)
    if len(raw) & 1:
        raw += b"\0"
    words = array("H", raw)
    if sys.byteorder == "little":
        words.byteswap()
    return fold(sum(words))


def fold(total: int) -> int:
    """End-around-carry fold of a sum of 16-bit values."""
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


def records(data: bytes, limit: int = MAX_RECORDS) -> list[bytes]:
    """Split *data* into length-prefixed records (2-byte big-endian length each)."""
    out: list[bytes] = []
    pos = 0
    while pos + 2 <= len(data) and len(out) < limit:
        size = int.from_bytes(data[pos : pos + 2], "big")
        pos += 2
        out.append(data[pos : pos + size])
        pos += size
    return out


def make_records(items: list[bytes]) -> bytes:
    """The inverse of :func:`records` (without the options byte)."""
    return b"".join(len(item).to_bytes(2, "big") + item for item in items)


def outcome(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, ...]:
    """What a call did: ("ok", result) or ("raised", type, message)."""
    try:
        return ("ok", fn(*args, **kwargs))
    except Exception as exc:  # every exception is compared or checked by the caller
        return ("raised", type(exc), str(exc))


def only_malformed(result: tuple[Any, ...]) -> None:
    """Untrusted bytes may make the offload layer raise MalformedPacket, nothing else."""
    if result[0] == "raised":
        assert result[1] is MalformedPacket, f"{result[1].__name__}: {result[2]}"


def check_wire_packet(seg: bytes, version: int, proto: int) -> None:
    """*seg* is a complete IP packet whose lengths and checksums a receiver accepts."""
    if version == 4:
        ihl = (seg[0] & 0x0F) * 4
        assert seg[0] >> 4 == 4 and ihl >= 20
        assert int.from_bytes(seg[2:4], "big") == len(seg), "IPv4 total length"
        assert ref_sum(seg[:ihl]) == 0xFFFF, "IPv4 header checksum"
        assert seg[9] == proto
        src, dst = seg[12:16], seg[16:20]
    else:
        ihl = 40
        assert seg[0] >> 4 == 6
        assert int.from_bytes(seg[4:6], "big") == len(seg) - 40, "IPv6 payload length"
        assert seg[6] == proto
        src, dst = seg[8:24], seg[24:40]
    l4 = seg[ihl:]
    if proto == UDP:
        assert int.from_bytes(l4[4:6], "big") == len(l4), "UDP length"
        assert l4[6:8] != b"\0\0", "a segment's UDP checksum is never 0 (none)"
    assert ref_sum(pseudo(src, dst, proto, len(l4)) + l4) == 0xFFFF, "L4 checksum"


# -- virtio header --------------------------------------------------------------------


def header_is_consistent(fields: tuple[int, ...], packet_len: int) -> bool:
    """The rules a virtio header must follow (restated from the kernel's, independently)."""
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = fields
    base = gso_type & ~GSO_ECN
    if flags & ~(NEEDS_CSUM | DATA_VALID) or base not in (0, 1, 3, 4, 5):
        return False
    if hdr_len > packet_len:
        return False
    if flags & NEEDS_CSUM and csum_start + csum_offset + 2 > packet_len:
        return False
    if base == GSO_NONE:
        return not gso_type & GSO_ECN
    return gso_size > 0 and bool(flags & NEEDS_CSUM)


def check_virtio(data: bytes) -> None:
    """VirtioNetHdr.unpack/pack/validate against a struct-level restatement."""
    result = outcome(VirtioNetHdr.unpack, data)
    if len(data) < VIRTIO_NET_HDR_LEN:
        assert result[0] == "raised" and result[1] is MalformedPacket
        return
    assert result[0] == "ok", result
    hdr: VirtioNetHdr = result[1]
    fields = VNET.unpack_from(data)
    assert (
        hdr.flags,
        hdr.gso_type,
        hdr.hdr_len,
        hdr.gso_size,
        hdr.csum_start,
        hdr.csum_offset,
    ) == fields
    assert hdr.pack() == data[:VIRTIO_NET_HDR_LEN]
    assert VirtioNetHdr.unpack(memoryview(data)) == hdr
    packet_len = len(data) - VIRTIO_NET_HDR_LEN
    valid = outcome(hdr.validate, packet_len)
    only_malformed(valid)
    assert (valid[0] == "ok") == header_is_consistent(fields, packet_len), (fields, valid)
    split = outcome(py.split_with_header, data)
    only_malformed(split)
    if valid[0] == "raised":
        # A header that can't describe the packet never yields packets.
        assert split[0] == "raised"


# -- GSO split ------------------------------------------------------------------------


def _l4_header_end(packet: bytes, version: int, tcp: bool) -> int:
    ihl = (packet[0] & 0x0F) * 4 if version == 4 else 40
    return ihl + ((packet[ihl + 12] >> 4) * 4 if tcp else 8)


def check_gso_split(data: bytes) -> None:
    """split_with_header on one TUN read: segments are whole, in order and checksummed."""
    result = outcome(py.split_with_header, data)
    only_malformed(result)
    if result[0] == "raised":
        return
    segments: list[bytes] = result[1]
    assert segments and all(type(s) is bytes for s in segments)
    flags, gso_type, _, gso_size, csum_start, csum_offset = VNET.unpack_from(data)
    packet = data[VIRTIO_NET_HDR_LEN:]
    base = gso_type & ~GSO_ECN
    if base == GSO_NONE:
        (seg,) = segments
        assert len(seg) == len(packet)
        if not flags & NEEDS_CSUM:
            assert seg == packet
            return
        pos = csum_start + csum_offset
        # Only the checksum field changed.  It held the pseudo-header sum (the
        # kernel's NEEDS_CSUM contract); with that added back, the covered
        # range now verifies as a receiver would check it.
        assert seg[:pos] == packet[:pos] and seg[pos + 2 :] == packet[pos + 2 :]
        # The kernel's rule (skb_checksum_help): the field gets the inverted
        # sum of everything from csum_start, a 0 result written as 0xFFFF.
        field = int.from_bytes(seg[pos : pos + 2], "big")
        assert field == (~ref_sum(packet[csum_start:]) & 0xFFFF or 0xFFFF)
        if csum_offset % 2 == 0:
            # And so, for a field on a 16-bit boundary (every real protocol's),
            # a receiver that adds the pseudo-header sum back verifies it.
            pseudo_sum = int.from_bytes(packet[pos : pos + 2], "big")
            assert fold(ref_sum(seg[csum_start:]) + pseudo_sum) == 0xFFFF
        return
    version = packet[0] >> 4
    tcp = base != GSO_UDP_L4
    proto = TCP if tcp else UDP
    hlen = _l4_header_end(packet, version, tcp)
    ihl = csum_start
    payload = packet[hlen:]
    assert len(segments) == max(1, -(-len(payload) // gso_size))
    assert b"".join(seg[hlen:] for seg in segments) == payload
    seq = int.from_bytes(packet[ihl + 4 : ihl + 8], "big")
    offset = 0
    for index, seg in enumerate(segments):
        last = index == len(segments) - 1
        chunk = len(seg) - hlen
        # Within the MTU the sender asked for: headers plus at most gso_size.
        assert 0 <= chunk <= gso_size and len(seg) <= 65535
        assert last or chunk == gso_size
        check_wire_packet(seg, version, proto)
        # What segmentation must not change: addresses and ports.
        if version == 4:
            assert seg[12:20] == packet[12:20]
        else:
            assert seg[8:40] == packet[8:40]
        assert seg[ihl : ihl + 4] == packet[ihl : ihl + 4]
        if tcp:
            assert int.from_bytes(seg[ihl + 4 : ihl + 8], "big") == (seq + offset) & 0xFFFFFFFF
            if not last:
                assert not seg[ihl + 13] & (TCP_FIN | TCP_PSH)
            # Options are copied unchanged.
            assert seg[ihl + 20 : hlen] == packet[ihl + 20 : hlen]
        offset += chunk


# -- GRO coalesce ---------------------------------------------------------------------


def _gro_options(byte: int) -> dict[str, Any]:
    return {
        "uso": bool(byte & 1),
        "allow_short_last": not byte & 2,
        "max_size": (65535, 9000, 1500, 200 + (byte >> 3) * 7)[(byte >> 2) & 3],
    }


def _flow_key(packet: bytes) -> tuple[Any, ...] | None:
    """Protocol, addresses and ports of an unfragmented TCP/UDP packet; else None."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4 and len(packet) >= 20:
        ihl = (packet[0] & 0x0F) * 4
        if packet[9] in (TCP, UDP) and not (packet[6] & 0x3F or packet[7]):
            return (4, packet[9], packet[12:20], packet[ihl : ihl + 4])
    elif version == 6 and len(packet) >= 44 and packet[6] in (TCP, UDP):
        return (6, packet[6], packet[8:40], packet[40:44])
    return None


def _normalise(packet: bytes) -> bytes:
    """Blank what GRO may legitimately renumber: the IPv4 ID (and so the header
    checksum) of packets with DF set, which carries no meaning for them (RFC 6864)."""
    if len(packet) >= 20 and packet[0] >> 4 == 4 and packet[6] & 0x40:
        return packet[:4] + b"\0\0" + packet[6:10] + b"\0\0" + packet[12:]
    return packet


def _kernel_would_accept(buf: bytes, max_size: int) -> None:
    """What the kernel checks on a GSO write (tun_get_user / virtio_net_hdr_to_skb)."""
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = VNET.unpack_from(buf)
    packet = buf[VIRTIO_NET_HDR_LEN:]
    if gso_type == GSO_NONE:
        # Passed through unchanged (whatever its size): a plain header.
        assert flags == 0 and buf[:VIRTIO_NET_HDR_LEN] == bytes(VIRTIO_NET_HDR_LEN)
        return
    # Only merged packets are bound by max_size.
    assert len(packet) <= max_size
    assert flags == NEEDS_CSUM and gso_size > 0 and hdr_len <= len(packet)
    version = packet[0] >> 4
    ihl = 20 if version == 4 else 40
    assert csum_start == ihl
    if version == 4:
        assert ref_sum(packet[:20]) == 0xFFFF
        proto, src, dst = packet[9], packet[12:16], packet[16:20]
    else:
        proto, src, dst = packet[6], packet[8:24], packet[24:40]
    want = {GSO_TCPV4: (4, TCP), GSO_TCPV6: (6, TCP), GSO_UDP_L4: (version, UDP)}
    assert want.get(gso_type) == (version, proto)
    assert csum_offset == (16 if proto == TCP else 6)
    field = int.from_bytes(packet[csum_start + csum_offset : csum_start + csum_offset + 2], "big")
    assert field == ref_sum(pseudo(src, dst, proto, len(packet) - ihl)), "pseudo-header sum"
    hlen = _l4_header_end(packet, version, proto == TCP)
    nseg = -(-(len(packet) - hlen) // gso_size)
    assert nseg >= 2
    if proto == UDP:
        assert nseg <= gro.UDP_MAX_SEGMENTS


def check_gro_coalesce(data: bytes) -> None:
    """coalesce a batch: buffers the kernel accepts that split back into the batch."""
    if not data:
        return
    options = _gro_options(data[0])
    batch = [p for p in records(data[1:]) if p]
    result = outcome(py.coalesce, batch, **options)
    only_malformed(result)
    not_ip = any(outcome(gro.parse, p)[0] == "raised" for p in batch)
    assert (result[0] == "raised") == not_ip
    if result[0] == "raised":
        return
    check_roundtrip(batch, result[1], options)
    # Valid input seeds the round trip harder: split every record that is a
    # GSO read, and coalesce the segments that come out.
    segments: list[bytes] = []
    for record in batch:
        split = outcome(py.split_with_header, record)
        if split[0] == "ok" and VNET.unpack_from(record)[1] != GSO_NONE:
            segments.extend(split[1])
    if segments:
        check_roundtrip(segments, py.coalesce(segments, **options), options)


def check_roundtrip(batch: list[bytes], buffers: list[bytes], options: dict[str, Any]) -> None:
    wire: list[bytes] = []
    for buf in buffers:
        assert type(buf) is bytes and len(buf) > VIRTIO_NET_HDR_LEN
        _kernel_would_accept(buf, options["max_size"])
        split = outcome(py.split_with_header, buf)
        assert split[0] == "ok", split
        if not options["allow_short_last"] and VNET.unpack_from(buf)[1] != GSO_NONE:
            gso_size = VNET.unpack_from(buf)[3]
            hlen = len(split[1][0]) - gso_size
            assert all(len(s) - hlen == gso_size for s in split[1])
        wire.extend(split[1])
    assert len(wire) == len(batch)
    assert sorted(map(_normalise, wire)) == sorted(map(_normalise, batch))
    # Packets of one flow stay in their order.
    got: dict[Any, list[bytes]] = defaultdict(list)
    want: dict[Any, list[bytes]] = defaultdict(list)
    for packet in wire:
        got[_flow_key(packet)].append(_normalise(packet))
    for packet in batch:
        want[_flow_key(packet)].append(_normalise(packet))
    for key, packets in want.items():
        if key is not None:
            assert got[key] == packets, key


# -- compiled speedups against the reference ------------------------------------------


def _as_buffer(data: bytes, kind: int) -> bytes | bytearray | memoryview:
    return (data, bytearray(data), memoryview(data))[kind % 3]


def _same(ref: tuple[Any, ...], got: tuple[Any, ...]) -> None:
    assert got == ref, (ref, got)
    if got[0] == "ok" and isinstance(got[1], list):
        assert all(type(b) in PACKET_TYPES for b in got[1])


def check_speedups(data: bytes) -> None:
    """The compiled functions give byte-identical results and the same exceptions."""
    if _speedups is None or _accel is None or not data:
        return
    if data[0] >= NEWER_OPS:
        _check_newer(data[0] - NEWER_OPS, data[1:])
        return
    op, kind, body = data[0] % 6, data[0] // 6, data[1:]
    if op == 0:
        _same(
            outcome(py.split_with_header, body),
            outcome(_accel.split_with_header, _as_buffer(body, kind)),
        )
    elif op == 1:
        # Raw header fields, out-of-range values included.
        if len(body) < 24:
            return
        fields = struct.unpack_from("<6i", body)
        packet = body[24:]
        _same(
            outcome(py.split_fields, *fields, packet),
            outcome(_accel.split_fields, *fields, _as_buffer(packet, kind)),
        )
    elif op == 2:
        if not body:
            return
        options = _gro_options(body[0])
        batch = [_as_buffer(p, kind + i) for i, p in enumerate(records(body[1:]))]
        _same(outcome(py.coalesce, batch, **options), outcome(_accel.coalesce, batch, **options))
    elif op == 3:
        _check_gro_tables(body)
    elif op == 4:
        if len(body) < 5:
            return
        initial = int.from_bytes(body[:5], "big") >> (body[0] & 7)
        payload = _as_buffer(body[5:], kind)
        for name in ("checksum", "ones_complement_sum"):
            ref = outcome(getattr(py, name), body[5:], initial)
            got = outcome(getattr(_accel, name), payload, initial)
            if ref[0] == "raised":
                # An out-of-range *initial* is the caller's mistake, not bad
                # packet bytes: the same exception type is enough (the
                # compiled module words its message differently).
                assert got[:2] == ref[:2], (ref, got)
            else:
                _same(ref, got)
    else:
        for packet in records(body):
            _same(outcome(gro.parse, packet), outcome(_speedups.gro_parse, packet))
            parsed = outcome(gro.parse, packet)
            if parsed[0] == "ok" and parsed[1][0] in (gro.KIND_TCP, gro.KIND_UDP):
                _, _, _, ihl, hlen, plen, *_ = parsed[1]
                args = (packet, ihl, hlen, max(plen, 1), 0, [packet[hlen:], packet[hlen:]])
                _same(outcome(gro.build, *args), outcome(_speedups.gro_build, *args))


def _check_newer(selector: int, body: bytes) -> None:
    op, kind = selector % 3, selector // 3
    if op == 0:
        _check_split_gro(body, kind)
    elif op == 1:
        _check_gso_runs(body, kind)
    else:
        _check_frame_loops(body, kind)


def _check_split_gro(body: bytes, kind: int) -> None:
    """split_gro: the reference's pieces (or its ValueError), every piece bytes."""
    assert _accel is not None
    if len(body) < 2:
        return
    # Signed and small: negative sizes, 0, sizes below, at and above the
    # buffer's length (out-of-range huge ints are the caller's mistake).
    gso_size = int.from_bytes(body[:2], "big", signed=True)
    buffer = body[2:]
    ref = outcome(udp.split_gro, buffer, gso_size)
    _same(ref, outcome(_accel.split_gro, _as_buffer(buffer, kind), gso_size))
    if ref[0] == "ok":
        assert b"".join(ref[1]) == buffer


class _Shrinking:
    """A datagram-sized object whose ``len()`` empties the list that holds it.

    ``len()`` is Python code that both gso_runs run on each datagram; the
    reference then stops at the end of the emptied list, and the compiled one
    must too, without reading the list's freed storage.
    """

    def __init__(self, owner: list[Any], size: int) -> None:
        self.owner = owner
        self.size = size

    def __len__(self) -> int:
        self.owner.clear()
        return self.size

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Shrinking) and other.size == self.size

    __hash__ = None  # type: ignore[assignment]


def _check_gso_runs(body: bytes, kind: int) -> None:
    """gso_runs: the reference's runs (or its ValueError), which give back the datagrams."""
    assert _accel is not None
    if len(body) < 4:
        return
    # Below 1 is refused; up to a few over the kernel's 64 segments.
    max_segments = body[0] % 72 - 2
    max_bytes = int.from_bytes(body[1:3], "big") - 8
    mode = body[3]
    sizes = records(body[4:])

    def datagrams() -> list[Any]:
        items: list[Any] = [_as_buffer(d, kind + i) for i, d in enumerate(sizes)]
        if mode & 1 and items:
            # Somewhere in the list, a datagram whose len() empties it.
            items.insert(mode % (len(items) + 1), _Shrinking(items, mode >> 1))
        return items

    def given() -> Sequence[Any]:
        # The compiled ones take a list as it is and make one of anything else.
        return tuple(datagrams()) if mode & 2 and not mode & 1 else datagrams()

    ref = outcome(udp.gso_runs, datagrams(), max_segments, max_bytes)
    got = outcome(_accel.gso_runs, given(), max_segments, max_bytes)
    assert got == ref, (ref, got)
    # batch_sizes walks the same kind of list (shrinking datagram included).
    sizes_ref = outcome(batch.batch_sizes, datagrams())
    assert outcome(_accel.batch_sizes, given()) == sizes_ref, sizes_ref
    if ref[0] == "ok" and not mode & 1:
        runs: list[tuple[int, list[Any]]] = ref[1]
        assert [bytes(d) for _, run in runs for d in run] == sizes
        for size, run in runs:
            assert 1 <= len(run) <= max(1, max_segments)
            assert all(len(d) == size for d in run[:-1]) and len(run[-1]) <= size


def _check_frame_loops(body: bytes, kind: int) -> None:
    """read_frames/write_frames against their Python twins over AF_UNIX datagram pairs.

    Each twin writes the same frames from the same start to a pair of its
    own and reads them back: the same (next, status, nbytes), the same
    frames (each cut to *size*, as a datagram read is) and the same status.
    Arguments out of range: the compiled loops raise ValueError.
    """
    assert _speedups is not None
    if len(body) < 5 or not hasattr(_speedups, "read_frames"):
        return
    count = body[0] % 24 - 2
    size = (int.from_bytes(body[1:3], "big") % 4100) - 2
    if body[3] & 0x80:
        size = (1 << 20) + (body[3] & 1)  # the largest accepted, and one past it
    frames = [_as_buffer(f, kind + i) for i, f in enumerate(records(body[5:], MAX_LOOP_FRAMES))]
    start = body[4] % (len(frames) + 3) - 1
    seq: list[Any] | tuple[Any, ...] = tuple(frames) if body[3] & 1 else frames
    compiled = (_speedups.read_frames, _speedups.write_frames)
    twins = (_ports._read_frames_py, _ports._write_frames_py)
    results: list[tuple[tuple[int, int, int], tuple[list[bytes], int] | None]] = []
    for read_frames, write_frames in (twins, compiled):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        with a, b:
            a.setblocking(False)
            b.setblocking(False)
            if not 0 <= start <= len(frames):
                if write_frames is _speedups.write_frames:
                    assert outcome(write_frames, a.fileno(), seq, start)[1] is ValueError
                continue
            wrote = write_frames(a.fileno(), seq, start)
            if body[3] & 2:
                a.close()  # the reader meets a peer that has gone
            if count < 0 or not 1 <= size <= 1 << 20:
                if read_frames is _speedups.read_frames:
                    assert outcome(read_frames, b.fileno(), count, size)[1] is ValueError
                results.append((wrote, None))
                continue
            results.append((wrote, read_frames(b.fileno(), count, size)))
    if not results:
        return
    assert results[0] == results[1], results
    (index, status, nbytes), read = results[1]
    sent = [bytes(f) for f in frames[start:index]]
    assert nbytes == sum(map(len, sent))
    assert status in (0, errno.EAGAIN) and (status == 0) == (index == len(frames))
    if read is not None:
        got, rstatus = read
        # A zero-length datagram reads as 0 bytes, which the loops take for
        # the end of the stream.
        want = [f[:size] for f in sent[:count]]
        if b"" in want:
            want = want[: want.index(b"")]
        assert got == want, (got, want)
        if len(got) < count:
            assert rstatus in (errno.EAGAIN, _ports.FRAMES_EOF)


def _check_gro_tables(body: bytes) -> None:
    """Incremental GroTable use: add, look at the counts, flush at fuzzer-chosen points."""
    assert _accel is not None
    if not body:
        return
    options = _gro_options(body[0])
    ref = py.GroTable(**options)
    fast = _accel.GroTable(**options)
    for record in records(body[1:]):
        if record[:1] == b"\xff":
            _same(outcome(ref.flush), outcome(fast.flush))
            continue
        _same(outcome(ref.add, record), outcome(fast.add, record))
        assert (len(ref), ref.pending_packets, ref.pending_buffers) == (
            len(fast),
            fast.pending_packets,
            fast.pending_buffers,
        )
    _same(outcome(ref.flush), outcome(fast.flush))


# -- stream-level decode --------------------------------------------------------------


def expected_stream_packets(frame: bytes) -> list[bytes] | None:
    """What a stream with a virtio header must make of one read (None: malformed)."""
    if len(frame) <= VIRTIO_NET_HDR_LEN:
        return None
    result = outcome(py.split_with_header, frame)
    only_malformed(result)
    if frame[0] == 0 and frame[1] == GSO_NONE:
        return [frame[VIRTIO_NET_HDR_LEN:]]
    return None if result[0] == "raised" else list(result[1])


def check_stream_decode(data: bytes) -> None:
    """from_fd(vnet_hdr=True) over a SOCK_SEQPACKET pair: every read is split or counted.

    The socket pair stands in for a TUN fd: each datagram is one read of a
    virtio header and a packet.  Whatever the reads hold, the stream hands out
    exactly the reference's packets, counts the rest as malformed, and ends
    promptly at the sentinel.
    """
    if not data:
        return
    frames = [f for f in records(data[1:], MAX_STREAM_FRAMES) if f]
    expected: list[bytes] = []
    malformed = 0
    for frame in frames:
        packets = expected_stream_packets(frame)
        if packets is None:
            malformed += 1
        else:
            expected.extend(packets)
    batch = None if data[0] < 64 else 1 + data[0] % 64
    got, stats = _stream_run(frames, batch, expected.count(SENTINEL) + 1)
    assert got == [*expected, SENTINEL]
    assert stats["reads"] == len(frames) + 1
    assert stats["rx_malformed"] == malformed
    assert stats["rx_packets"] == len(got)


def _stream_run(
    frames: list[bytes], batch: int | None, sentinels: int
) -> tuple[list[bytes], dict[str, int]]:
    """Write *frames* and the sentinel frame, read until *sentinels* sentinels came.

    A frame may carry the sentinel packet itself (the fuzzer finds it), so
    the reader counts them: stopping at the first would end the run early.
    """
    import trio

    import trio_tun

    async def main() -> tuple[list[bytes], dict[str, int]]:
        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        stream = trio_tun.from_fd(right.detach(), vnet_hdr=True)
        got: list[bytes] = []
        seen = 0
        try:
            sender = trio.socket.from_stdlib_socket(left)
            with sender, trio.fail_after(30):
                async with trio.open_nursery() as nursery:

                    async def send_all() -> None:
                        for frame in [*frames, bytes(VIRTIO_NET_HDR_LEN) + SENTINEL]:
                            await sender.send(frame)

                    nursery.start_soon(send_all)
                    while seen < sentinels:
                        more = await stream.receive_batch(batch)
                        seen += more.count(SENTINEL)
                        got.extend(more)
            stats = stream.statistics()
        finally:
            await stream.aclose()
        return got, {
            "reads": stats.reads,
            "rx_malformed": stats.rx_malformed,
            "rx_packets": stats.rx_packets,
        }

    return _trio_thread().run(main)


class _TrioThread:
    """One Trio run in a daemon thread, for every input of a fuzzing process.

    Starting a run per input cost more than the input itself (about half
    the time of ``stream_decode``); each input still gets a fresh socket pair
    and stream, and its own deadline.
    """

    def __init__(self) -> None:
        import threading

        import trio

        self._trio = trio
        ready = threading.Event()
        self._token: Any = None

        async def serve() -> None:
            self._token = trio.lowlevel.current_trio_token()
            ready.set()
            await trio.sleep_forever()

        threading.Thread(target=trio.run, args=(serve,), daemon=True).start()
        ready.wait()

    def run(self, fn: Callable[[], Any]) -> Any:
        return self._trio.from_thread.run(fn, trio_token=self._token)


@functools.cache
def _trio_thread() -> _TrioThread:
    return _TrioThread()


# -- AF-header framing (BSD/macOS) ---------------------------------------------------


def check_af_header(data: bytes) -> None:
    """The 4-byte address-family header: strip/decode against a restatement of the
    rules, and encode-then-decode gives the packet back.  The first input byte
    picks the kernel numbering (Darwin, FreeBSD, OpenBSD, NetBSD, this host)."""
    from trio_tun import _framing as _afheader

    if not data:
        return
    numberings = (
        _afheader.DARWIN,
        _afheader.FREEBSD,
        _afheader.OPENBSD,
        _afheader.NETBSD,
        _afheader.HOST,
    )
    families = numberings[data[0] % len(numberings)]
    framing = _afheader.AfFraming(families)
    frame = data[1:]
    family = int.from_bytes(frame[:4], "big") if len(frame) >= 4 else -1
    version = frame[4] >> 4 if len(frame) > 4 else -1
    acceptable = (family == families.inet and version == 4) or (
        family == families.inet6 and version == 6
    )
    stripped = framing.strip(frame)
    decoded = framing.decode(frame)
    if acceptable:
        assert stripped is not None and bytes(stripped) == frame[4:]
        assert decoded == frame[4:] and type(decoded) is bytes
    else:
        assert stripped is None and decoded is None
    for buffer in (frame, bytearray(frame), memoryview(frame)):
        encoded = framing.encode(buffer)
        if not frame or frame[0] >> 4 not in (4, 6):
            assert encoded is None
            continue
        assert encoded is not None
        want = families.inet if frame[0] >> 4 == 4 else families.inet6
        assert encoded[:4] == want.to_bytes(4, "big") and encoded[4:] == frame
        assert framing.decode(encoded) == frame


HARNESSES: Final[dict[str, Callable[[bytes], None]]] = {
    "virtio": check_virtio,
    "gso_split": check_gso_split,
    "gro_coalesce": check_gro_coalesce,
    "speedups": check_speedups,
    "stream_decode": check_stream_decode,
    "af_header": check_af_header,
}

CORPUS: Final = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
