"""The public offload API backed by the compiled ``_speedups`` module.

Importing this raises ImportError when the extension was not built; the
package ``__init__`` then falls back to the pure-Python modules.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import _speedups, gro, udp
from .virtio import VirtioNetHdr

__all__ = [
    "GroTable",
    "batch_sizes",
    "checksum",
    "coalesce",
    "gso_runs",
    "ones_complement_sum",
    "split",
    "split_fields",
    "split_gro",
    "split_with_header",
]

_Buffer = bytes | bytearray | memoryview

ones_complement_sum = _speedups.ones_complement_sum
checksum = _speedups.checksum
split_fields = _speedups.split
# Both take the reference's arguments (positional or keyword) and hand
# arguments of unusual types to the reference, so they can stand in for it
# without a Python frame in between.
split_with_header = _speedups.split_with_header
coalesce = _speedups.coalesce
batch_sizes = _speedups.batch_sizes


def split_gro(buffer: _Buffer, gso_size: int) -> list[bytes]:
    """Cut what one ``UDP_GRO`` read brought into its datagrams.

    Every datagram is *gso_size* bytes except perhaps the last; a *gso_size*
    of 0 (an ordinary datagram) or one at least the buffer's length gives the
    buffer back whole.  The compiled twin of
    :func:`trio_tun.offload.udp.split_gro`.

    Raises:
        ValueError: *gso_size* is negative.
    """
    return _speedups.split_gro(buffer, gso_size)


def gso_runs(
    datagrams: Sequence[_Buffer],
    max_segments: int = udp.MAX_SEGMENTS,
    max_bytes: int = udp.MAX_GSO_BYTES,
) -> list[tuple[int, list[_Buffer]]]:
    """Group consecutive datagrams into ``(gso_size, datagrams)`` runs that one
    ``UDP_SEGMENT`` send can carry.

    A run is datagrams of one size, the last perhaps shorter: at most
    *max_segments* of them and *max_bytes* in total.  An empty datagram, or
    one that alone exceeds *max_bytes*, is a run of its own.  The compiled
    twin of :func:`trio_tun.offload.udp.gso_runs`.

    Raises:
        ValueError: *max_segments* or *max_bytes* is less than 1.
    """
    return _speedups.gso_runs(datagrams, max_segments, max_bytes)


def split(hdr: VirtioNetHdr, packet: _Buffer) -> list[bytes]:
    """Turn *packet* (a bare IP packet that followed *hdr* on a TUN read) into
    complete wire packets: the checksum completed, a GSO packet cut into its
    segments.  The compiled twin of :func:`trio_tun.offload.gso.split`.

    Raises :class:`MalformedPacket` when the header and packet disagree or the
    packet cannot be segmented.
    """
    return _speedups.split(*hdr.fields(), packet)


def _plain(*args: object) -> bool:
    # Arguments whose truth value and comparisons run no code of their own,
    # so evaluating them once up front is what the reference would see.
    return all(a is None or type(a) in (bool, int) for a in args)


class GroTable(gro.GroTable):
    """Collects packets for one writer and coalesces them into super-packets.

    :class:`trio_tun.offload.gro.GroTable` done entirely in C: one table per
    TUN queue (or per writer), not thread-safe; :meth:`add` each packet of a
    batch, then :meth:`flush` for the buffers to write.

    It subclasses the reference so that ``isinstance`` checks keep working;
    the state lives in a ``_speedups.GroTable``.  With arguments of unusual
    types (whose truth value or comparison is Python code the reference
    would run on every packet) it falls back to the reference's logic with
    the C parser and builder.
    """

    _parse = staticmethod(_speedups.gro_parse)
    _build = staticmethod(_speedups.gro_build)

    def __init__(
        self, *, uso: bool = False, max_size: int = 65535, allow_short_last: bool = True
    ) -> None:
        # The reference's own checks and state, for the fallback and so that
        # errors are exactly the reference's.
        super().__init__(uso=uso, max_size=max_size, allow_short_last=allow_short_last)
        self._table: _speedups.GroTable | None = None
        if _plain(uso, allow_short_last) and type(max_size) in (bool, int):
            self._table = _speedups.GroTable(
                uso=uso, max_size=max_size, allow_short_last=allow_short_last
            )

    def __len__(self) -> int:
        if self._table is None:
            return super().__len__()
        return len(self._table)

    @property
    def pending_packets(self) -> int:
        """Number of input packets held until the next :meth:`flush`."""
        if self._table is None:
            return super().pending_packets
        return self._table.pending_packets

    @property
    def pending_buffers(self) -> int:
        """Number of buffers the next :meth:`flush` would return."""
        if self._table is None:
            return super().pending_buffers
        return self._table.pending_buffers

    def add(self, packet: _Buffer) -> None:
        """Queue one IP packet (IPv4 or IPv6, any protocol) to be coalesced.

        Raises :class:`MalformedPacket`, leaving the table unchanged, if
        *packet* is not an IP packet whose header lengths fit in it.
        """
        if self._table is None:
            super().add(packet)
        else:
            self._table.add(packet)

    def flush(self) -> list[bytes]:
        """Return the buffers to write (each a virtio header and one, possibly
        merged, packet) for everything added since the last flush, and empty
        the table."""
        if self._table is None:
            return super().flush()
        return self._table.flush()
