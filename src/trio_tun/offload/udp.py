"""UDP segmentation offload, sans-I/O: plan ``UDP_SEGMENT`` sends, split ``UDP_GRO`` reads.

Linux (4.18+) lets one ``sendmsg`` carry many UDP datagrams of one size to one
destination (a ``UDP_SEGMENT`` control message with the segment size; only
the last segment may be shorter), and with the ``UDP_GRO`` socket option one
``recvmsg`` may bring many datagrams of one flow glued together, with an
``int`` control message saying where to cut.  This module plans the first
and undoes the second; it does no I/O and imports nothing from the rest of
the package.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final

__all__ = [
    "GRO_MALFORMED",
    "MAX_SEGMENTS",
    "SOL_UDP",
    "UDP_GRO",
    "UDP_SEGMENT",
    "gso_cmsg",
    "gso_runs",
    "max_gso_bytes",
    "parse_gro_cmsgs",
    "split_gro",
]

_Buffer = bytes | bytearray | memoryview

#: ``IPPROTO_UDP``, the cmsg level of both options (Linux numbers; fixed by the ABI).
SOL_UDP: Final = 17
#: sendmsg cmsg (u16 segment size) / setsockopt: segment what is sent.
UDP_SEGMENT: Final = 103
#: setsockopt: coalesce what is received; recvmsg then carries an ``int`` cmsg.
UDP_GRO: Final = 104
#: The kernel's ``UDP_MAX_SEGMENTS``: more segments per send are refused (EINVAL).
MAX_SEGMENTS: Final = 64
#: Returned by :func:`parse_gro_cmsgs` when a message can't be split safely.
GRO_MALFORMED: Final = -1

_UDP_HEADER: Final = 8
_MAX_IP_PACKET: Final = 65535
#: Bytes one GSO send may carry by default: the largest IPv6 payload of one
#: UDP datagram (the IPv4 limit is 20 bytes more; ``max_gso_bytes`` says which).
MAX_GSO_BYTES: Final = _MAX_IP_PACKET - _UDP_HEADER - 40
_MSG_TRUNC: Final = 0x20
_MSG_CTRUNC: Final = 0x08
_U16: Final = struct.Struct("=H")
_INT: Final = struct.Struct("=i")


def max_gso_bytes(ipv6: bool) -> int:
    """The most UDP payload bytes one segmented send may carry.

    The whole super-datagram must still fit one IP packet's length field:
    65535 minus the UDP header and the IP header (20, or 40 for IPv6, counted
    conservatively for dual-stack sockets too).
    """
    return _MAX_IP_PACKET - _UDP_HEADER - (40 if ipv6 else 20)


def gso_runs(
    datagrams: Sequence[_Buffer],
    max_segments: int = MAX_SEGMENTS,
    max_bytes: int = MAX_GSO_BYTES,
) -> list[tuple[int, list[_Buffer]]]:
    """Group consecutive datagrams into runs one ``UDP_SEGMENT`` send can carry.

    A run is datagrams of one size (its ``gso_size``), except that the last may
    be shorter; at most *max_segments* of them and *max_bytes* in total.  An
    empty datagram, or one that alone exceeds *max_bytes*, is a run of its own:
    a zero-length segment can't be expressed, and an oversized one is for the
    kernel to refuse.  A run of one datagram is sent without the cmsg.

    Concatenating a run and cutting it every ``gso_size`` bytes
    (:func:`split_gro`) gives back its datagrams.

    Raises:
        ValueError: *max_segments* or *max_bytes* is less than 1.
    """
    if max_segments < 1 or max_bytes < 1:
        raise ValueError("max_segments and max_bytes must be at least 1")
    runs: list[tuple[int, list[_Buffer]]] = []
    run: list[_Buffer] = []
    size = 0
    total = 0
    for datagram in datagrams:
        n = len(datagram)
        if run and 0 < n <= size and len(run) < max_segments and total + n <= max_bytes:
            run.append(datagram)
            total += n
            if n < size:
                # A short segment can only be the last one.
                runs.append((size, run))
                run = []
            continue
        if run:
            runs.append((size, run))
        if n == 0 or n > max_bytes:
            runs.append((n, [datagram]))
            run = []
            continue
        run = [datagram]
        size = total = n
    if run:
        runs.append((size, run))
    return runs


def split_gro(buffer: _Buffer, gso_size: int) -> list[bytes]:
    """Cut what one ``UDP_GRO`` read brought into its datagrams.

    Every datagram is *gso_size* bytes except perhaps the last; a *gso_size*
    of 0 (no cmsg: an ordinary datagram) or one at least the buffer's length
    gives the buffer back whole.

    Raises:
        ValueError: *gso_size* is negative.
    """
    if gso_size < 0:
        raise ValueError(f"gso_size must not be negative, not {gso_size}")
    n = len(buffer)
    if gso_size == 0 or gso_size >= n:
        return [bytes(buffer)]
    view = memoryview(buffer)
    return [bytes(view[i : i + gso_size]) for i in range(0, n, gso_size)]


def gso_cmsg(gso_size: int) -> tuple[int, int, bytes]:
    """The ``sendmsg`` ancillary item that asks the kernel to segment by *gso_size*."""
    return (SOL_UDP, UDP_SEGMENT, _U16.pack(gso_size))


def parse_gro_cmsgs(ancdata: Sequence[tuple[int, int, bytes]], msg_flags: int) -> tuple[int, int]:
    """Read the segment size out of one ``recvmsg``'s ancillary data.

    Returns ``(gso_size, bad)``: *gso_size* is 0 for a plain datagram, the
    segment size for a coalesced read, or :data:`GRO_MALFORMED` when the data
    can't be cut safely (the payload or the control data was truncated, the
    ``UDP_GRO`` cmsg has the wrong length, a non-positive value, or appears
    twice); *bad* counts the ancillary items that were malformed or unknown.
    Unknown items alone don't make the payload unusable.  Never raises: all of
    this comes from the kernel, but it's counted, not trusted.
    """
    gso_size = 0
    bad = 0
    if msg_flags & (_MSG_TRUNC | _MSG_CTRUNC):
        gso_size = GRO_MALFORMED
        bad += 1
    seen = False
    for level, kind, data in ancdata:
        if level != SOL_UDP or kind != UDP_GRO:
            bad += 1
            continue
        if seen or len(data) != _INT.size:
            gso_size = GRO_MALFORMED
            bad += 1
            continue
        seen = True
        (value,) = _INT.unpack(data)
        if value <= 0:
            gso_size = GRO_MALFORMED
            bad += 1
        elif gso_size != GRO_MALFORMED:
            gso_size = value
    return gso_size, bad
