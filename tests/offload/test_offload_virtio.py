from __future__ import annotations

import struct

import pytest

from trio_tun.offload import (
    DATA_VALID,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP,
    GSO_UDP_L4,
    NEEDS_CSUM,
    VIRTIO_NET_HDR_LEN,
    ZERO_HDR,
    MalformedPacket,
    VirtioNetHdr,
)


def test_constants() -> None:
    assert VIRTIO_NET_HDR_LEN == 10
    assert (NEEDS_CSUM, DATA_VALID) == (1, 2)
    assert (GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4, GSO_ECN) == (0, 1, 3, 4, 5, 0x80)
    assert bytes(10) == ZERO_HDR
    assert VirtioNetHdr().pack() == ZERO_HDR


def test_pack_is_native_order() -> None:
    hdr = VirtioNetHdr(NEEDS_CSUM, GSO_TCPV4, 54, 1448, 20, 16)
    raw = hdr.pack()
    assert raw == struct.pack("=BBHHHH", 1, 1, 54, 1448, 20, 16)
    assert len(raw) == VIRTIO_NET_HDR_LEN
    assert VirtioNetHdr.unpack(raw) == hdr


def test_unpack_ignores_trailing_bytes_and_takes_any_buffer() -> None:
    hdr = VirtioNetHdr(NEEDS_CSUM, GSO_UDP_L4, 28, 1200, 20, 6)
    buf = hdr.pack() + b"packet bytes"
    assert VirtioNetHdr.unpack(buf) == hdr
    assert VirtioNetHdr.unpack(bytearray(buf)) == hdr
    assert VirtioNetHdr.unpack(memoryview(buf)) == hdr


@pytest.mark.parametrize("length", [0, 1, 9])
def test_unpack_short(length: int) -> None:
    with pytest.raises(MalformedPacket):
        VirtioNetHdr.unpack(bytes(length))


@pytest.mark.parametrize(
    "field,value",
    [("flags", 256), ("gso_type", -1), ("hdr_len", 65536), ("csum_offset", -1)],
)
def test_field_ranges_checked_at_construction(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=field):
        VirtioNetHdr(**{field: value})


def test_validate_accepts_real_headers() -> None:
    # What the kernel hands us for a SYN, a TSO burst and a UDP_SEGMENT send.
    VirtioNetHdr(NEEDS_CSUM, GSO_NONE, 0, 0, 20, 16).validate(60)
    VirtioNetHdr(NEEDS_CSUM, GSO_TCPV4, 66, 1448, 20, 16).validate(14546)
    VirtioNetHdr(NEEDS_CSUM, GSO_TCPV6 | GSO_ECN, 86, 1428, 40, 16).validate(2944)
    VirtioNetHdr(NEEDS_CSUM, GSO_UDP_L4, 28, 1200, 20, 6).validate(2428)
    VirtioNetHdr(DATA_VALID).validate(100)
    VirtioNetHdr().validate(0)


@pytest.mark.parametrize(
    "hdr,length",
    [
        (VirtioNetHdr(flags=4), 100),  # unknown flag
        (VirtioNetHdr(gso_type=2), 100),  # unknown gso type
        (VirtioNetHdr(gso_type=GSO_ECN), 100),  # ECN without a type
        (VirtioNetHdr(gso_type=0x41), 100),
        (VirtioNetHdr(NEEDS_CSUM, GSO_TCPV4, 0, 0, 20, 16), 100),  # gso_size 0
        (VirtioNetHdr(0, GSO_TCPV4, 0, 1448, 20, 16), 100),  # GSO without NEEDS_CSUM
        (VirtioNetHdr(NEEDS_CSUM, csum_start=20, csum_offset=16), 37),  # field past the end
        (VirtioNetHdr(NEEDS_CSUM, csum_start=200, csum_offset=0), 100),
        (VirtioNetHdr(hdr_len=101), 100),
    ],
)
def test_validate_rejects(hdr: VirtioNetHdr, length: int) -> None:
    with pytest.raises(MalformedPacket):
        hdr.validate(length)


def test_validate_boundary() -> None:
    VirtioNetHdr(NEEDS_CSUM, csum_start=20, csum_offset=16).validate(38)
    with pytest.raises(MalformedPacket):
        VirtioNetHdr(NEEDS_CSUM, csum_start=20, csum_offset=16).validate(37)


def test_frozen_and_base_type() -> None:
    hdr = VirtioNetHdr(gso_type=GSO_TCPV6 | GSO_ECN)
    assert hdr.base_gso_type == GSO_TCPV6
    with pytest.raises(AttributeError):
        hdr.flags = 1  # type: ignore[misc]
