"""The ``virtio_net_hdr`` that prefixes every packet on a TUN fd with IFF_VNET_HDR."""

from __future__ import annotations

import struct
from typing import Final

import attrs

from .errors import MalformedPacket

__all__ = [
    "DATA_VALID",
    "GSO_ECN",
    "GSO_NONE",
    "GSO_TCPV4",
    "GSO_TCPV6",
    "GSO_UDP",
    "GSO_UDP_L4",
    "NEEDS_CSUM",
    "VIRTIO_NET_HDR_LEN",
    "ZERO_HDR",
    "VirtioNetHdr",
]

VIRTIO_NET_HDR_LEN: Final = 10

# flags
NEEDS_CSUM: Final = 1
DATA_VALID: Final = 2
# The kernel never sets any other flag on a TUN read (RSC_INFO is for guests),
# so anything else means we are not looking at a virtio header at all.
_KNOWN_FLAGS: Final = NEEDS_CSUM | DATA_VALID

# gso_type
GSO_NONE: Final = 0
GSO_TCPV4: Final = 1
GSO_UDP: Final = 3
GSO_TCPV6: Final = 4
GSO_UDP_L4: Final = 5
GSO_ECN: Final = 0x80
_KNOWN_GSO_TYPES: Final = frozenset({GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4})

# The kernel fills the header in its own byte order, not network order.
_STRUCT: Final = struct.Struct("=BBHHHH")

ZERO_HDR: Final[bytes] = bytes(VIRTIO_NET_HDR_LEN)


def _u8(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= 0xFF:
        raise ValueError(f"{attribute.name} must fit in 8 bits, got {value!r}")


def _u16(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"{attribute.name} must fit in 16 bits, got {value!r}")


@attrs.frozen
class VirtioNetHdr:
    """One ``struct virtio_net_hdr`` (the 10-byte legacy layout, no ``num_buffers``).

    Field ranges are checked at construction so that :meth:`pack` cannot fail;
    whether the fields make sense *together* is :meth:`validate`'s job, because
    that needs the length of the packet they describe.
    """

    flags: int = attrs.field(default=0, validator=_u8)
    gso_type: int = attrs.field(default=0, validator=_u8)
    hdr_len: int = attrs.field(default=0, validator=_u16)
    gso_size: int = attrs.field(default=0, validator=_u16)
    csum_start: int = attrs.field(default=0, validator=_u16)
    csum_offset: int = attrs.field(default=0, validator=_u16)

    def fields(self) -> tuple[int, int, int, int, int, int]:
        """The six fields in wire order (the shape the C speedups take them in)."""
        return (
            self.flags,
            self.gso_type,
            self.hdr_len,
            self.gso_size,
            self.csum_start,
            self.csum_offset,
        )

    def pack(self) -> bytes:
        return _STRUCT.pack(*self.fields())

    @classmethod
    def unpack(cls, buf: bytes | bytearray | memoryview) -> VirtioNetHdr:
        """Parse the first 10 bytes of *buf*; anything after them is ignored."""
        if memoryview(buf).nbytes < VIRTIO_NET_HDR_LEN:
            raise MalformedPacket(f"virtio header needs {VIRTIO_NET_HDR_LEN} bytes")
        return cls(*_STRUCT.unpack_from(buf))

    @property
    def base_gso_type(self) -> int:
        """``gso_type`` without the ECN bit."""
        return self.gso_type & ~GSO_ECN

    def validate(self, packet_len: int) -> None:
        """Raise :class:`MalformedPacket` unless this header can describe a
        packet of *packet_len* bytes.

        This only checks the header against itself and the length; the packet
        bytes are checked by whoever interprets them (e.g. :func:`~.gso.split`).
        """
        _validate_fields(*self.fields(), packet_len)


def _validate_fields(
    flags: int,
    gso_type: int,
    hdr_len: int,
    gso_size: int,
    csum_start: int,
    csum_offset: int,
    packet_len: int,
) -> None:
    # Kept as a plain function over ints so gso.split can run it without
    # building a VirtioNetHdr, and so the C speedups have one spec to mirror.
    # The ranges are rechecked because split_fields takes raw ints.
    if not (
        0 <= flags <= 0xFF
        and 0 <= gso_type <= 0xFF
        and 0 <= hdr_len <= 0xFFFF
        and 0 <= gso_size <= 0xFFFF
        and 0 <= csum_start <= 0xFFFF
        and 0 <= csum_offset <= 0xFFFF
    ):
        raise MalformedPacket("virtio header field out of range")
    if flags & ~_KNOWN_FLAGS:
        raise MalformedPacket(f"unknown virtio flags {flags:#x}")
    base = gso_type & ~GSO_ECN
    if base not in _KNOWN_GSO_TYPES:
        raise MalformedPacket(f"unknown gso_type {gso_type:#x}")
    # hdr_len is only a hint (the kernel reports its linear-area size), but it
    # can never exceed the packet it describes.
    if hdr_len > packet_len:
        raise MalformedPacket(f"hdr_len {hdr_len} exceeds packet length {packet_len}")
    if flags & NEEDS_CSUM and csum_start + csum_offset + 2 > packet_len:
        raise MalformedPacket(
            f"checksum field at {csum_start}+{csum_offset} lies outside a {packet_len}-byte packet"
        )
    if base == GSO_NONE:
        if gso_type & GSO_ECN:
            raise MalformedPacket("GSO_ECN without a GSO type")
        return
    if gso_size == 0:
        raise MalformedPacket("GSO type set but gso_size is 0")
    # Every segment needs its L4 checksum finished, so the kernel always marks
    # GSO packets NEEDS_CSUM; without it there is no csum_start to find L4 by.
    if not flags & NEEDS_CSUM:
        raise MalformedPacket("GSO packet without NEEDS_CSUM")
