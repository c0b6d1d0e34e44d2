"""A UDP checksum that comes out as 0 must go on the wire as 0xFFFF.

For UDP a checksum field of 0 means "no checksum": IPv4 receivers then skip
the check, and IPv6 receivers drop the datagram (RFC 8200 8.1).  RFC 768 says
a computed 0 is sent as all ones.  Random packets hit the case once in 65536,
so these tests build packets whose checksum folds to 0 on purpose, for the
plain checksum-offload path and for UDP segmentation, in both implementations.
"""

from __future__ import annotations

import struct
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_tun.offload import VirtioNetHdr

from .packets import UDP, Flow, naive_sum, pseudo, super_packet

U4 = Flow(proto=UDP, sport=5000, dport=6000)
U6 = Flow(version=6, proto=UDP, src=bytes(16), dst=bytes(15) + b"\x01")


def zeroing(flow: Flow, payload: bytes) -> bytes:
    """*payload* with its last two bytes chosen so the UDP checksum folds to 0.

    The checksum is ~(sum of pseudo-header, UDP header and payload); it is 0
    exactly when that sum is 0xFFFF.  The last two bytes sit at an even
    offset of the datagram (the payload length is even), so they add as one
    16-bit word.
    """
    assert len(payload) % 2 == 0 and len(payload) >= 2
    body = payload[:-2] + b"\0\0"
    length = 8 + len(body)
    header = struct.pack("!HHHH", flow.sport, flow.dport, length, 0)
    partial = naive_sum(pseudo(flow.src, flow.dst, UDP, length) + header + body)
    word = 0xFFFF - partial
    if word == 0:
        # The sum is already 0xFFFF with a zero word: any word keeps the
        # ones'-complement sum at 0xFFFF only if it is 0xFFFF itself.
        word = 0xFFFF
    return payload[:-2] + struct.pack("!H", word)


def udp_checksum_field(packet: bytes) -> int:
    ihl = (packet[0] & 15) * 4 if packet[0] >> 4 == 4 else 40
    return int(struct.unpack_from("!H", packet, ihl + 6)[0])


def verifies(flow: Flow, packet: bytes) -> bool:
    ihl = (packet[0] & 15) * 4 if packet[0] >> 4 == 4 else 40
    l4 = packet[ihl:]
    return naive_sum(pseudo(flow.src, flow.dst, UDP, len(l4)) + l4) == 0xFFFF


@pytest.mark.parametrize("flow", [U4, U6], ids=["ipv4", "ipv6"])
@settings(max_examples=30)
@given(data=st.binary(min_size=2, max_size=600).filter(lambda b: len(b) % 2 == 0))
def test_checksum_offload_writes_all_ones(
    impl: types.SimpleNamespace, flow: Flow, data: bytes
) -> None:
    payload = zeroing(flow, data)
    # One datagram with NEEDS_CSUM and no segmentation: the reader finishes it.
    fields, packet = super_packet(flow, payload, 0)
    fields = (fields[0], 0, 0, 0, fields[4], fields[5])
    (out,) = impl.split(VirtioNetHdr(*fields), packet)
    assert udp_checksum_field(out) == 0xFFFF
    assert verifies(flow, out)


@pytest.mark.parametrize("flow", [U4, U6], ids=["ipv4", "ipv6"])
@settings(max_examples=30)
@given(
    first=st.binary(min_size=2, max_size=400).filter(lambda b: len(b) % 2 == 0),
    rest=st.binary(min_size=1, max_size=800),
)
def test_udp_segmentation_writes_all_ones(
    impl: types.SimpleNamespace, flow: Flow, first: bytes, rest: bytes
) -> None:
    # The first segment's checksum folds to 0; the others are whatever they are.
    segment = zeroing(flow, first)
    fields, packet = super_packet(flow, segment + rest, len(segment))
    out = impl.split(VirtioNetHdr(*fields), packet)
    assert len(out) == 1 + -(-len(rest) // len(segment))
    assert udp_checksum_field(out[0]) == 0xFFFF
    assert all(verifies(flow, p) for p in out)
