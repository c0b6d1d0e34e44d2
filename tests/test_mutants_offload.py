"""Offload reference behaviour that mutation testing found unchecked (``nox -s mutants``).

These call the pure-Python reference modules directly (the compiled speedups
have their own equivalence tests against it).
"""

from __future__ import annotations

import collections
import importlib
import struct
from collections.abc import Callable
from typing import Any

import pytest

from offload.packets import UDP, Flow, super_packet, tcp_flow, tcp_packet, udp_packet
from trio_tun._framing import PlainFraming, VirtioFraming
from trio_tun.offload import GSO_TCPV4, GSO_TCPV6, NEEDS_CSUM, MalformedPacket, gro, udp
from trio_tun.offload.checksum import checksum, ones_complement_sum, pseudo_header_sum
from trio_tun.offload.gso import finish_checksum, split_fields, split_with_header

V4 = (bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
V6 = (bytes(15) + b"\x01", bytes(15) + b"\x02")


# -- checksum -------------------------------------------------------------------


@pytest.mark.parametrize("items", [1, 3, 4])
def test_sums_read_a_wide_memoryview_by_its_bytes(items: int) -> None:
    data = bytes(range(1, 2 * items + 1))
    wide = memoryview(data).cast("H")  # len() counts items, not bytes
    assert len(wide) == items
    assert ones_complement_sum(wide) == ones_complement_sum(data)
    assert checksum(wide, 0x1234) == checksum(data, 0x1234)


def test_pseudo_header_length_takes_all_32_bits() -> None:
    src, dst = V6
    top = pseudo_header_sum(src, dst, 17, 0xFFFFFFFF)
    # 0xFFFFFFFF is congruent to 0 modulo 0xFFFF: the same sum as length 0 ...
    assert top == pseudo_header_sum(src, dst, 17, 0)
    # ... one more does not fit.
    with pytest.raises(ValueError, match=r"length must fit in 32 bits, got 4294967296"):
        pseudo_header_sum(src, dst, 17, 0x1_0000_0000)
    with pytest.raises(ValueError, match=r"length must fit in 32 bits, got -1"):
        pseudo_header_sum(src, dst, 17, -1)


def test_errors_say_what_was_wrong() -> None:
    src, dst = V4
    with pytest.raises(
        ValueError, match=r"^src and dst must both be 4 \(IPv4\) or 16 \(IPv6\) bytes$"
    ):
        pseudo_header_sum(src, V6[1], 6, 20)
    with pytest.raises(ValueError, match=r"^proto must fit in 8 bits, got 256$"):
        pseudo_header_sum(src, dst, 256, 20)
    with pytest.raises(ValueError, match=r"^initial must be in 0\.\.0xffffffff, got 4294967296$"):
        ones_complement_sum(b"ab", 0x1_0000_0000)
    with pytest.raises(ValueError, match=r"^initial must be in 0\.\.0xffffffff, got -1$"):
        checksum(b"ab", -1)


# -- UDP GSO/GRO control messages -----------------------------------------------

GRO = (udp.SOL_UDP, udp.UDP_GRO)
UNKNOWN = (0, 1, b"x")


def _gro(value: int) -> tuple[int, int, bytes]:
    return (*GRO, struct.pack("=i", value))


def test_gso_cmsg_carries_the_segment_size() -> None:
    assert udp.gso_cmsg(1400) == (udp.SOL_UDP, udp.UDP_SEGMENT, struct.pack("=H", 1400))


@pytest.mark.parametrize(
    ("ancdata", "expected"),
    [
        # The smallest segment size is a size, not an error.
        ([_gro(1)], (1, 0)),
        # Every bad item is counted, wherever it comes.
        ([(*GRO, b"\0\0\0"), UNKNOWN], (udp.GRO_MALFORMED, 2)),
        ([UNKNOWN, _gro(0)], (udp.GRO_MALFORMED, 2)),
        ([_gro(1200), UNKNOWN, UNKNOWN], (1200, 2)),
        ([UNKNOWN, _gro(1200), _gro(1300)], (udp.GRO_MALFORMED, 2)),
        ([UNKNOWN, _gro(-5), UNKNOWN], (udp.GRO_MALFORMED, 3)),
    ],
    ids=["size 1", "short then unknown", "unknown then zero", "unknowns", "twice", "negative"],
)
def test_gro_cmsgs_are_counted_one_by_one(
    ancdata: list[tuple[int, int, bytes]], expected: tuple[int, int]
) -> None:
    assert udp.parse_gro_cmsgs(ancdata, 0) == expected


# -- GSO: finishing checksums, error messages -----------------------------------


@pytest.mark.parametrize("csum_start", [20, 21])
@pytest.mark.parametrize("length", [40, 41])
def test_finish_checksum_makes_the_region_sum_to_all_ones(csum_start: int, length: int) -> None:
    packet = bytearray((7 * i + 3) & 0xFF for i in range(length))
    # The field holds the pseudo-header sum, as the kernel leaves it.
    pos = csum_start + 6
    pseudo = int.from_bytes(packet[pos : pos + 2], "big")
    finish_checksum(packet, csum_start, 6)
    # The receiver's check: pseudo-header plus the region, checksum included,
    # is all ones, odd length or not.
    assert ones_complement_sum(packet[csum_start:], pseudo) == 0xFFFF


def test_finish_checksum_accepts_offset_zero_and_names_a_bad_field() -> None:
    packet = bytearray(b"\x12\x34\x00\x07\x56\x78")
    finish_checksum(packet, 2, 0)
    assert ones_complement_sum(packet[2:], 7) == 0xFFFF
    with pytest.raises(MalformedPacket, match=r"^checksum field at 4\+10 lies outside a 12-byte"):
        finish_checksum(bytearray(12), 4, 10)


def test_gso_errors_name_the_mismatch() -> None:
    packet = tcp_flow(Flow(), [200])[0]
    with pytest.raises(MalformedPacket, match=r"^GSO_TCPV6 on an IPv4 packet$"):
        split_fields(NEEDS_CSUM, GSO_TCPV6, 40, 100, 20, 16, packet)
    with pytest.raises(MalformedPacket, match=r"^csum_offset 10 is not the L4 checksum field$"):
        split_fields(NEEDS_CSUM, GSO_TCPV4, 40, 100, 20, 10, packet)


# -- UDP GSO runs -----------------------------------------------------------------


def test_gso_runs_edges() -> None:
    # A 1-byte datagram can end a run, or start one of 1-byte segments.
    assert udp.gso_runs([b"aa", b"b"]) == [(2, [b"aa", b"b"])]
    assert udp.gso_runs([b"a", b"b", b"c"]) == [(1, [b"a", b"b", b"c"])]
    # A run may fill max_bytes exactly.
    assert udp.gso_runs([b"aa", b"bb", b"cc"], max_bytes=4) == [
        (2, [b"aa", b"bb"]),
        (2, [b"cc"]),
    ]
    with pytest.raises(ValueError, match=r"^max_segments and max_bytes must be at least 1$"):
        udp.gso_runs([b"a"], max_segments=0)


def _v4(size: int = 340) -> bytearray:
    packet = bytearray(tcp_flow(Flow(), [size - 40])[0])
    return packet


def _v6() -> bytearray:
    flow = Flow(version=6, src=bytes(15) + b"\x01", dst=bytes(15) + b"\x02")
    return bytearray(tcp_flow(flow, [300])[0])


def _cut_v4(packet: bytearray, n: int) -> bytes:
    cut = bytearray(packet[:n])
    if n >= 4:
        cut[2:4] = n.to_bytes(2, "big")
    return bytes(cut)


def _with(packet: bytearray, offset: int, value: int) -> bytes:
    copy = bytearray(packet)
    copy[offset] = value
    return bytes(copy)


MALFORMED = [
    ("v4 19 bytes", GSO_TCPV4, 0, _cut_v4(_v4(), 19), "truncated IPv4 header"),
    ("v4 20 bytes", GSO_TCPV4, 0, _cut_v4(_v4(), 20), "csum_start 0 != IPv4 header length 20"),
    ("v4 39 bytes", GSO_TCPV4, 20, _cut_v4(_v4(), 39), "truncated TCP header"),
    ("v4 options", GSO_TCPV4, 20, _with(_v4(60), 32, 0xF0), "TCP options run past the packet"),
    ("v4 length", GSO_TCPV4, 20, bytes(_v4()) + b"\0", "IPv4 total length does not match"),
    ("v4 fragment", GSO_TCPV4, 20, _with(_v4(), 7, 1), "GSO packet is an IPv4 fragment"),
    ("v4 protocol", GSO_TCPV4, 20, _with(_v4(), 9, 17), "IPv4 protocol 17 does not match"),
    ("v6 as v4", GSO_TCPV4, 40, bytes(_v6()), "GSO_TCPV4 on an IPv6 packet"),
    ("v6 39 bytes", GSO_TCPV6, 0, bytes(_v6()[:39]), "truncated IPv6 header"),
    ("v6 40 bytes", GSO_TCPV6, 0, bytes(_v6()[:40]), r"csum_start 0 != 40 \(IPv6 extension"),
    ("v6 next", GSO_TCPV6, 40, _with(_v6(), 6, 17), "IPv6 next header 17 does not match"),
]


@pytest.mark.parametrize(
    ("gso_type", "csum_start", "packet", "message"),
    [pytest.param(*case[1:], id=case[0]) for case in MALFORMED],
)
def test_gso_refuses_malformed_packets_saying_why(
    gso_type: int, csum_start: int, packet: bytes, message: str
) -> None:
    with pytest.raises(MalformedPacket, match=f"^{message}"):
        split_fields(NEEDS_CSUM, gso_type, 0, 100, csum_start, 16, packet)


# -- the compiled speedups as an oracle for parse/build ---------------------------
#
# gro.parse and gro.build must agree with their C versions on every input,
# tuple field for tuple field and message for message (the module docstring
# says so).  tests/offload compare the two only when the package uses the
# speedups; mutation testing runs with TRIO_TUN_PURE_PYTHON=1, so here the C
# module is imported directly and serves as the expected answer for a
# systematic corpus: valid packets, every truncation, and every header byte
# set to a few telling values, with and without the checksums made right again.

_speedups: Any
try:
    _speedups = importlib.import_module("trio_tun.offload._speedups")
except ImportError:  # not built: nothing to compare against
    _speedups = None
needs_c = pytest.mark.skipif(_speedups is None, reason="_speedups extension not built")


def _outcome(func: Callable[..., object], *args: object) -> object:
    try:
        return func(*args)
    except (MalformedPacket, ValueError) as exc:
        return (type(exc), str(exc))


def _fix_checksums(packet: bytes) -> bytes:
    """*packet* with its IPv4 header and TCP/UDP checksums recomputed, when
    its headers say where they are (else unchanged)."""
    buf = bytearray(packet)
    if not buf:
        return packet
    version = buf[0] >> 4
    if version == 4 and len(buf) >= 20:
        ihl = (buf[0] & 0x0F) * 4
        if ihl < 20 or ihl > len(buf):
            return packet
        buf[10:12] = b"\0\0"
        buf[10:12] = checksum(bytes(buf[:ihl])).to_bytes(2, "big")
        src, dst, proto, l4 = bytes(buf[12:16]), bytes(buf[16:20]), buf[9], ihl
    elif version == 6 and len(buf) >= 40:
        src, dst, proto, l4 = bytes(buf[8:24]), bytes(buf[24:40]), buf[6], 40
    else:
        return packet
    field = {6: 16, 17: 6}.get(proto)
    if field is None or l4 + field + 2 > len(buf):
        return bytes(buf)
    buf[l4 + field : l4 + field + 2] = b"\0\0"
    length = len(buf) - l4
    csum = checksum(bytes(buf[l4:]), pseudo_header_sum(src, dst, proto, length))
    buf[l4 + field : l4 + field + 2] = csum.to_bytes(2, "big")
    return bytes(buf)


def _parse_corpus() -> list[bytes]:
    v6 = Flow(version=6, src=V6[0], dst=V6[1])
    bases = [
        tcp_flow(Flow(), [40])[0],
        tcp_flow(Flow(df=False, options=b"\x01\x01\x08\x0a" + bytes(8)), [21])[0],
        tcp_flow(v6, [33])[0],
        udp_packet(Flow(proto=UDP), b"datagram"),
        udp_packet(Flow(proto=UDP, version=6, src=V6[0], dst=V6[1]), b"odd"),
        tcp_packet(Flow(), 7, b"", flags=0x10),
    ]
    # A 1-byte segment is the smallest that merges.
    bases.append(tcp_flow(Flow(), [1])[0])
    # UDP checksums with one zero byte (0 in both means "none").
    # A 2-byte payload w lowers the checksum by w (ones' complement), so pick
    # w to get each wanted checksum.
    plain = int.from_bytes(udp_packet(Flow(proto=UDP), b"\0\0")[26:28], "big")
    for wanted in (0x0012, 0x1200):
        packet = udp_packet(Flow(proto=UDP), ((plain - wanted) % 0xFFFF).to_bytes(2, "big"))
        assert int.from_bytes(packet[26:28], "big") == wanted
        bases.append(packet)
    corpus: list[bytes] = []
    for base in bases:
        # Cut short with the IP length fields saying so: L4 headers of every
        # length below the full one.
        for n in range(20 if base[0] >> 4 == 4 else 40, len(base)):
            cut = bytearray(base[:n])
            if base[0] >> 4 == 4:
                cut[2:4] = n.to_bytes(2, "big")
            else:
                cut[4:6] = (n - 40).to_bytes(2, "big")
            corpus.append(_fix_checksums(bytes(cut)))
        corpus.append(base)
        corpus.append(base + b"\0")
        corpus.extend(base[:n] for n in range(len(base)))
        head = min(len(base), 64)
        for pos in range(head):
            for value in {0, 0xFF, base[pos] ^ 1, base[pos] ^ 0x40, (base[pos] + 4) & 0xFF}:
                edited = base[:pos] + bytes([value]) + base[pos + 1 :]
                corpus.append(edited)
                corpus.append(_fix_checksums(edited))
    return corpus


@needs_c
def test_parse_agrees_with_the_compiled_parser_on_every_edit() -> None:
    corpus = _parse_corpus()
    assert len(corpus) > 3000
    kinds: collections.Counter[object] = collections.Counter()
    for packet in corpus:
        expected = _outcome(_speedups.gro_parse, packet)
        assert _outcome(gro.parse, packet) == expected, packet.hex()
        kinds[expected[0] if isinstance(expected, tuple) and len(expected) == 10 else "error"] += 1
    # The corpus reaches every verdict.
    assert set(kinds) == {*range(5), "error"}, kinds


@needs_c
@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_parse_takes_any_buffer(kind: Callable[[bytes], Any]) -> None:
    packets = [tcp_flow(Flow(), [10])[0], udp_packet(Flow(proto=UDP), b"x")]
    for packet in packets:
        assert gro.parse(kind(packet)) == _speedups.gro_parse(packet)


def _build_cases() -> list[tuple[bytes, int, int, int, int, list[bytes]]]:
    v4 = tcp_flow(Flow(), [10])[0]
    v6 = tcp_flow(Flow(version=6, src=V6[0], dst=V6[1]), [10])[0]
    u4 = udp_packet(Flow(proto=UDP), b"0123456789")
    u6 = udp_packet(Flow(proto=UDP, version=6, src=V6[0], dst=V6[1]), b"0123456789")
    two = [b"0123456789", b"abcdefghij"]
    cases = []
    for first, ihl, hlen in ((v4, 20, 40), (v6, 40, 60), (u4, 20, 28), (u6, 40, 48)):
        for gso in (-1, 0, 1, 10, 0xFFFF, 0x10000):
            for psh in (-1, 0, 8, 0xFF, 0x100):
                cases.append((first, ihl, hlen, gso, psh, two))
        # The largest merged packet, and one byte more: the IPv4 total length
        # and the IPv6 payload length are what must fit in 16 bits.
        room = 0xFFFF - (hlen if ihl == 20 else hlen - ihl)
        for extra in (0, 1):
            cases.append((first, ihl, hlen, 100, 0, [bytes(room - 30000 + extra), bytes(30000)]))
        for bad_ihl, bad_hlen in ((19, hlen), (ihl, len(first) + 1), (ihl, ihl + 7)):
            cases.append((first, bad_ihl, bad_hlen, 10, 0, two))
    # Version and header length disagree, or the version is neither.
    cases.append((v6, 20, 40, 10, 0, two))
    cases.append((tcp_flow(Flow(), [40])[0], 40, 60, 10, 0, two))
    cases.append((b"\x55" + v4[1:], 20, 40, 10, 0, two))
    return cases


@needs_c
def test_build_agrees_with_the_compiled_builder() -> None:
    # The C messages are more specific than the reference's, so errors are
    # compared by the reference's message (the C one names the same field).
    refusals: collections.Counter[str] = collections.Counter()
    built = 0
    for case in _build_cases():
        expected = _outcome(_speedups.gro_build, *case)
        got = _outcome(gro.build, *case)
        if isinstance(expected, bytes):
            assert got == expected, case[1:5]
            built += 1
        else:
            assert isinstance(got, tuple), case[1:5]
            assert got[0] is ValueError is expected[0], (got, expected)
            refusals[got[1]] += 1
    assert built == 4 * (4 * 3 + 1)
    assert refusals == {
        "gso_size or psh out of range": 4 * (6 * 5 - 4 * 3),
        "merged packet too long": 4,
        "inconsistent header lengths": 4 * 3,
        "IP version does not match the header length": 3,
    }


def test_grotable_merges_udp_only_when_asked() -> None:
    flow = Flow(proto=UDP)
    datagrams = [udp_packet(flow, bytes([i]) * 100) for i in range(3)]
    assert len(gro.coalesce(datagrams)) == 3
    table = gro.GroTable()
    for datagram in datagrams:
        table.add(datagram)
    assert len(table.flush()) == 3
    assert len(gro.coalesce(datagrams, uso=True)) == 1


def test_grotable_ip_ids_must_count_up_without_df() -> None:
    # Without DF the IP ID is a real fragment ID: segmentation renumbers from
    # the first one, so only IDs counting up by one may merge, at any length.
    flow = Flow(df=False)
    segments = tcp_flow(flow, [100] * 4, ident=7)
    merged = gro.coalesce(segments)
    assert len(merged) == 1
    assert split_with_header(merged[0]) == segments
    jump = [*segments[:3], tcp_flow(flow, [100] * 4, ident=8)[3]]
    assert len(gro.coalesce(jump)) == 2


def _split_corpus() -> list[tuple[tuple[int, int, int, int, int, int], bytes]]:
    payload = bytes(range(95))
    v6 = (V6[0], V6[1])
    bases = [
        super_packet(Flow(), payload, 30),
        super_packet(Flow(version=6, src=v6[0], dst=v6[1]), payload, 30),
        super_packet(Flow(proto=UDP), payload, 30),
        super_packet(Flow(proto=UDP, version=6, src=v6[0], dst=v6[1]), payload, 30),
    ]
    corpus = []
    for fields, packet in bases:
        corpus.append((fields, packet))
        for index, values in enumerate(
            (
                (0, 2, 3, 0x100),
                (0, 1, 3, 4, 5, 6, 0x80, 0x81, 0x85, 0xFF, 0x100),
                (0, 1, len(packet), len(packet) + 1),
                (0, 1, 31, len(payload), 0xFFFF, 0x10000),
                (0, 1, fields[4] - 1, fields[4] + 1, 0xFFFF, 0x10000),
                (0, 6, 10, 16, 0x10000),
            )
        ):
            for value in values:
                changed = list(fields)
                changed[index] = value
                f0, f1, f2, f3, f4, f5 = changed
                corpus.append(((f0, f1, f2, f3, f4, f5), packet))
        for n in range(len(packet)):
            cut = bytearray(packet[:n])
            if n >= 6:
                if packet[0] >> 4 == 4:
                    cut[2:4] = n.to_bytes(2, "big")
                else:
                    cut[4:6] = max(0, n - 40).to_bytes(2, "big")
            corpus.append((fields, bytes(cut)))
        for pos in range(min(len(packet), 64)):
            for value in {0, 0xFF, packet[pos] ^ 1, packet[pos] ^ 0x40}:
                corpus.append((fields, packet[:pos] + bytes([value]) + packet[pos + 1 :]))
    return corpus


@needs_c
def test_split_agrees_with_the_compiled_splitter() -> None:
    verdicts: collections.Counter[str] = collections.Counter()
    for fields, packet in _split_corpus():
        expected = _outcome(_speedups.split, *fields, packet)
        assert _outcome(split_fields, *fields, packet) == expected, (fields, packet.hex())
        verdicts["split" if isinstance(expected, list) else str(expected)] += 1
    assert verdicts["split"] > 100
    # Every refusal reason came up at least once.
    assert len(verdicts) > 25, verdicts


# -- framing --------------------------------------------------------------------


def test_virtio_framing_coalesces_udp_past_a_bad_packet_when_uso() -> None:
    flow = Flow(proto=UDP)
    datagrams = [udp_packet(flow, bytes([i]) * 100, ident=i) for i in range(3)]
    framing = VirtioFraming(coalescing=True, uso=True)
    frames, refused = framing.coalesce([*datagrams, b"\x45junk"])
    assert refused == 1
    assert len(frames) == 1
    assert split_with_header(frames[0]) == datagrams
    frames, refused = VirtioFraming(coalescing=True, uso=False).coalesce([*datagrams, b"\x45"])
    assert (len(frames), refused) == (3, 1)


def test_virtio_framing_counts_segments_only_of_gso_frames() -> None:
    framing = VirtioFraming(coalescing=True, uso=False)
    body = bytes(1000)
    # A plain frame is one packet whatever gso_size says, and so is a GSO
    # frame without a segment size.
    plain = struct.pack("=BBHHHH", 0, 0, 40, 100, 0, 0) + body
    no_size = struct.pack("=BBHHHH", 0, GSO_TCPV4, 40, 0, 0, 0) + body
    gso = struct.pack("=BBHHHH", 0, GSO_TCPV4, 40, 100, 0, 0) + body
    assert [framing.segments(f) for f in (plain, no_size, gso)] == [1, 1, 10]


def test_virtio_framing_coalesces_udp_when_uso() -> None:
    datagrams = [udp_packet(Flow(proto=UDP), bytes([i]) * 100, ident=i) for i in range(3)]
    frames, refused = VirtioFraming(coalescing=True, uso=True).coalesce(datagrams)
    assert (len(frames), refused) == (1, 0)
    assert split_with_header(frames[0]) == datagrams
    frames, refused = VirtioFraming(coalescing=True, uso=False).coalesce(datagrams)
    assert (len(frames), refused) == (3, 0)


def test_one_to_one_framings_say_they_never_coalesce() -> None:
    with pytest.raises(NotImplementedError, match=r"^this framing never coalesces$"):
        PlainFraming().coalesce([b"x"])
