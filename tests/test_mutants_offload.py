"""Offload reference behaviour that mutation testing found unchecked (``nox -s mutants``).

These call the pure-Python reference modules directly (the compiled speedups
have their own equivalence tests against it).
"""

from __future__ import annotations

import struct

import pytest

from trio_tun.offload import udp
from trio_tun.offload.checksum import checksum, ones_complement_sum, pseudo_header_sum

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
