"""Offload reference behaviour that mutation testing found unchecked (``nox -s mutants``).

These call the pure-Python reference modules directly (the compiled speedups
have their own equivalence tests against it).
"""

from __future__ import annotations

import struct

import pytest

from offload.packets import Flow, tcp_flow
from trio_tun.offload import GSO_TCPV4, GSO_TCPV6, NEEDS_CSUM, MalformedPacket, udp
from trio_tun.offload.checksum import checksum, ones_complement_sum, pseudo_header_sum
from trio_tun.offload.gso import finish_checksum, split_fields

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
