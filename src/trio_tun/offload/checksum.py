"""The internet checksum (RFC 1071) and TCP/UDP pseudo-header sums.

Pure Python but not slow: instead of adding 16-bit words one by one we read the
whole buffer as one big-endian integer and reduce it modulo 0xFFFF.  Since
``2**16 == 1 (mod 0xFFFF)``, that integer is congruent to the sum of its 16-bit
words, and the ones'-complement sum is exactly "that sum modulo 0xFFFF, except
that a non-zero sum never folds to 0 but to 0xFFFF".  CPython does the
conversion and the single-digit division in C, which is what makes this fast.
"""

from __future__ import annotations

from typing import Final

__all__ = ["checksum", "fold", "ones_complement_sum", "pseudo_header_sum"]

_M: Final = 0xFFFF
# Largest accepted `initial`: enough for an unfolded 32-bit partial sum, and a
# bound the C speedups can share exactly.
MAX_INITIAL: Final = 0xFFFFFFFF

_Buffer = bytes | bytearray | memoryview


def fold(n: int) -> int:
    """Fold a non-negative integer sum of 16-bit words to a 16-bit ones'-complement
    sum: 0 stays 0, any other value lands in 1..0xFFFF."""
    return (n - 1) % _M + 1 if n else 0


def _nbytes(data: _Buffer) -> int:
    # len() of a memoryview counts items, not bytes, when its format is wider.
    return data.nbytes if type(data) is memoryview else len(data)


def ones_complement_sum(data: _Buffer, initial: int = 0) -> int:
    """16-bit folded ones'-complement sum (not inverted) of *data* plus *initial*.

    *data* is read as big-endian 16-bit words, an odd trailing byte padded with
    a zero byte.  *initial* (0..0xFFFFFFFF) lets sums be chained, e.g. a
    :func:`pseudo_header_sum` followed by the segment it covers.
    """
    if not 0 <= initial <= MAX_INITIAL:
        raise ValueError(f"initial must be in 0..{MAX_INITIAL:#x}, got {initial!r}")
    n = int.from_bytes(data, "big")
    if _nbytes(data) & 1:
        n <<= 8
    n += initial
    return (n - 1) % _M + 1 if n else 0


def checksum(data: _Buffer, initial: int = 0) -> int:
    """The internet checksum: the inverted :func:`ones_complement_sum`."""
    return ~ones_complement_sum(data, initial) & _M


def pseudo_header_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """Folded sum of the TCP/UDP pseudo-header for IPv4 (4-byte addresses) or
    IPv6 (16-byte addresses).

    *length* is the L4 length (header plus payload).  The result is what the
    kernel expects in the checksum field of a NEEDS_CSUM packet.
    """
    if len(src) != len(dst) or len(src) not in (4, 16):
        raise ValueError("src and dst must both be 4 (IPv4) or 16 (IPv6) bytes")
    if not 0 <= proto <= 0xFF:
        raise ValueError(f"proto must fit in 8 bits, got {proto!r}")
    # IPv6 carries a 32-bit length; IPv4 a 16-bit one, which is the same sum.
    if not 0 <= length <= 0xFFFFFFFF:
        raise ValueError(f"length must fit in 32 bits, got {length!r}")
    n = int.from_bytes(src, "big") + int.from_bytes(dst, "big") + proto + length
    return (n - 1) % _M + 1 if n else 0
