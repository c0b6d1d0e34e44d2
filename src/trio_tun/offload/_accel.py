"""The public offload API backed by the compiled ``_speedups`` module.

Importing this raises ImportError when the extension was not built; the
package ``__init__`` then falls back to the pure-Python modules.
"""

from __future__ import annotations

from collections.abc import Iterable

from . import _speedups, gro
from .virtio import VIRTIO_NET_HDR_LEN, VirtioNetHdr

__all__ = [
    "GroTable",
    "checksum",
    "coalesce",
    "ones_complement_sum",
    "split",
    "split_fields",
    "split_with_header",
]

_Buffer = bytes | bytearray | memoryview

ones_complement_sum = _speedups.ones_complement_sum
checksum = _speedups.checksum
split_fields = _speedups.split


def split(hdr: VirtioNetHdr, packet: _Buffer) -> list[bytes]:
    """See :func:`trio_tun.offload.gso.split`."""
    return _speedups.split(
        hdr.flags,
        hdr.gso_type,
        hdr.hdr_len,
        hdr.gso_size,
        hdr.csum_start,
        hdr.csum_offset,
        packet,
    )


def split_with_header(buf: _Buffer) -> list[bytes]:
    """See :func:`trio_tun.offload.gso.split_with_header`."""
    hdr = VirtioNetHdr.unpack(buf)
    return split(hdr, memoryview(buf).cast("B")[VIRTIO_NET_HDR_LEN:])


class GroTable(gro.GroTable):
    """:class:`trio_tun.offload.gro.GroTable` with the per-packet parsing and
    the super-packet assembly done in C; the merge decisions are shared."""

    _parse = staticmethod(_speedups.gro_parse)
    _build = staticmethod(_speedups.gro_build)


def coalesce(
    packets: Iterable[_Buffer],
    *,
    uso: bool = False,
    max_size: int = 65535,
    allow_short_last: bool = True,
) -> list[bytes]:
    """See :func:`trio_tun.offload.gro.coalesce`."""
    table = GroTable(uso=uso, max_size=max_size, allow_short_last=allow_short_last)
    for packet in packets:
        table.add(packet)
    return table.flush()
