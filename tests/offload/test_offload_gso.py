from __future__ import annotations

import struct
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_tun.offload import (
    DATA_VALID,
    GSO_TCPV4,
    GSO_UDP,
    MalformedPacket,
    VirtioNetHdr,
    finish_checksum,
)

from .packets import (
    ACK,
    CWR,
    FIN,
    PSH,
    SYN,
    TCP,
    UDP,
    Flow,
    dpkt_check,
    expected_segments,
    flows,
    naive_sum,
    pseudo,
    super_packet,
    tcp_packet,
)

V4 = Flow(options=b"\x01\x01\x08\x0a" + bytes(range(8)))
V6 = Flow(version=6, src=bytes(range(16)), dst=bytes(range(16, 32)), flow_label=0x12345)
U4 = Flow(proto=UDP, sport=5000, dport=6000)
U6 = Flow(version=6, proto=UDP, src=bytes(16), dst=bytes(15) + b"\x01")


def split(
    impl: types.SimpleNamespace, fields: tuple[int, ...], pkt: bytes | bytearray
) -> list[bytes]:
    """Through VirtioNetHdr and split(), the way the stream code calls it."""
    out: list[bytes] = impl.split(VirtioNetHdr(*fields), pkt)
    assert out == impl.split_fields(*fields, pkt)
    assert out == impl.split_with_header(VirtioNetHdr(*fields).pack() + pkt)
    return out


def test_64k_tcpv4(impl: types.SimpleNamespace) -> None:
    flow = Flow()
    payload = bytes(i & 0xFF for i in range(65535 - 40))
    fields, pkt = super_packet(flow, payload, 1448, seq=0xFFFFF000, ident=0xFFF0)
    assert len(pkt) == 65535
    segs = split(impl, fields, pkt)
    assert len(segs) == 46
    assert segs == expected_segments(flow, payload, 1448, seq=0xFFFFF000, ident=0xFFF0)
    for seg in segs:
        dpkt_check(seg)
    # Sequence numbers and IDs wrapped.
    assert struct.unpack("!I", segs[-1][24:28])[0] < 0x10000
    assert struct.unpack("!H", segs[-1][4:6])[0] < 0x100


@pytest.mark.parametrize("flow", [V4, V6, U4, U6], ids=["tcp4", "tcp6", "udp4", "udp6"])
@pytest.mark.parametrize("length", [1, 1447, 1448, 1449, 2896, 5000])
def test_split_matches_nic(impl: types.SimpleNamespace, flow: Flow, length: int) -> None:
    payload = bytes((i * 7) & 0xFF for i in range(length))
    fields, pkt = super_packet(flow, payload, 1448)
    segs = split(impl, fields, pkt)
    assert segs == expected_segments(flow, payload, 1448)
    for seg in segs:
        dpkt_check(seg)


def test_tcp_flags_per_segment(impl: types.SimpleNamespace) -> None:
    flags = ACK | PSH | FIN | CWR
    fields, pkt = super_packet(V4, bytes(30), 10, flags=flags)
    segs = split(impl, fields, pkt)
    assert [s[20 + 13] for s in segs] == [ACK | CWR, ACK, ACK | PSH | FIN]


def test_hdr_len_is_not_trusted(impl: types.SimpleNamespace) -> None:
    # The kernel reports its linear-area size there, often far past the headers.
    payload = bytes(range(200))
    want = expected_segments(V4, payload, 64)
    for hdr_len in (0, 1, 52, 150, 252):
        fields, pkt = super_packet(V4, payload, 64, hdr_len=hdr_len)
        assert split(impl, fields, pkt) == want


def test_empty_payload_gives_one_segment(impl: types.SimpleNamespace) -> None:
    fields, pkt = super_packet(V4, b"", 1448, flags=ACK)
    assert split(impl, fields, pkt) == [tcp_packet(V4, 1, b"")]


def test_gso_none_finishes_checksum(impl: types.SimpleNamespace) -> None:
    # A SYN as a TUN read delivers it: NEEDS_CSUM, csum_start 20, offset 16.
    flow = Flow()
    want = tcp_packet(flow, 99, b"", flags=SYN, ack=0)
    pkt = bytearray(want)
    pkt[36:38] = struct.pack("!H", naive_sum(pseudo(flow.src, flow.dst, TCP, len(pkt) - 20)))
    fields = (1, 0, 0, 0, 20, 16)
    out = split(impl, fields, bytes(pkt))
    assert len(out) == 1
    dpkt_check(out[0])
    # 0x0000 and 0xFFFF are the same TCP checksum; the kernel writes 0xFFFF.
    assert out[0] == want or (want[36:38] == b"\0\0" and out[0][36:38] == b"\xff\xff")


def test_gso_none_passthrough(impl: types.SimpleNamespace) -> None:
    pkt = tcp_packet(V4, 1, b"hello")
    assert split(impl, (0, 0, 0, 0, 0, 0), pkt) == [pkt]
    assert split(impl, (DATA_VALID, 0, 0, 0, 0, 0), bytearray(pkt)) == [pkt]
    assert split(impl, (0, 0, 0, 0, 0, 0), b"") == [b""]
    assert all(type(x) is bytes for x in impl.split(VirtioNetHdr(), memoryview(pkt)))


def test_finish_checksum() -> None:
    pkt = bytearray(b"\x00" * 20 + b"\x00\x01\x00\x02" + b"\x00\x00")
    finish_checksum(pkt, 20, 4)
    assert pkt[24:26] == struct.pack("!H", ~3 & 0xFFFF)
    zeros = bytearray(8)
    finish_checksum(zeros, 0, 6)
    assert zeros[6:8] == b"\xff\xff"  # never 0: that means "no checksum" to UDP
    with pytest.raises(MalformedPacket):
        finish_checksum(bytearray(10), 4, 5)
    with pytest.raises(MalformedPacket):
        finish_checksum(bytearray(10), -1, 0)


def _v4_tso() -> tuple[tuple[int, int, int, int, int, int], bytearray]:
    fields, pkt = super_packet(V4, bytes(3000), 1448)
    return fields, bytearray(pkt)


def _cases() -> list[tuple[str, tuple[int, ...], bytes]]:
    f, p = _v4_tso()
    f6, p6 = super_packet(V6, bytes(3000), 1448)
    _, pu = super_packet(U4, bytes(3000), 1448)
    cases: list[tuple[str, tuple[int, ...], bytes]] = [
        ("gso_size 0", (1, GSO_TCPV4, 0, 0, 20, 16), bytes(p)),
        ("UFO", (1, GSO_UDP, 0, 1448, 20, 6), bytes(pu)),
        ("csum_start past end", (1, GSO_TCPV4, 0, 1448, 5000, 16), bytes(p)),
        ("csum_offset wrong", (1, GSO_TCPV4, 0, 1448, 20, 6), bytes(p)),
        ("csum_start not ihl", (1, GSO_TCPV4, 0, 1448, 24, 16), bytes(p)),
        ("v6 type on v4", (f[0], 4, *f[2:]), bytes(p)),
        ("v4 type on v6", (f6[0], 1, *f6[2:]), p6),
        ("udp type on tcp", (1, 5, 0, 1448, 20, 6), bytes(p)),
        ("tcp type on udp", (1, 1, 0, 1448, 20, 16), pu),
        ("v6 ext header", (1, 4, 0, 1448, 48, 16), p6),
        ("no NEEDS_CSUM", (0, *f[1:]), bytes(p)),
        ("truncated", f, bytes(p[:30])),
    ]
    q = bytearray(p)
    q[2:4] = b"\x00\x10"
    cases.append(("IPv4 total length", f, bytes(q)))
    q = bytearray(p)
    q[0] = 0x44
    cases.append(("IHL 16", f, bytes(q)))
    q = bytearray(p)
    q[0] = 0x46
    cases.append(("IHL 24 vs csum_start 20", f, bytes(q)))
    q = bytearray(p)
    q[6] = 0x20
    cases.append(("fragment", f, bytes(q)))
    q = bytearray(p)
    q[9] = UDP
    cases.append(("protocol", f, bytes(q)))
    q = bytearray(p)
    q[32] = 0x40
    cases.append(("doff 4", f, bytes(q)))
    q = bytearray(p[:40])
    q[2:4] = struct.pack("!H", 40)
    q[32] = 0xF0
    cases.append(("options past end", f, bytes(q)))
    q = bytearray(p)
    q[0] = 0x55
    cases.append(("version 5", f, bytes(q)))
    q = bytearray(p6)
    q[4:6] = b"\xff\xff"
    cases.append(("IPv6 payload length", f6, bytes(q)))
    big = bytes(p) + bytes(70000)
    cases.append(("longer than 64 KiB", f, big))
    return cases


@pytest.mark.parametrize("name,fields,pkt", _cases(), ids=[c[0] for c in _cases()])
def test_split_rejects(
    impl: types.SimpleNamespace, name: str, fields: tuple[int, ...], pkt: bytes
) -> None:
    with pytest.raises(MalformedPacket):
        impl.split_fields(*fields, pkt)


@pytest.mark.parametrize("bad", [-1, 1 << 16, 1 << 70])
def test_split_fields_out_of_range(impl: types.SimpleNamespace, bad: int) -> None:
    with pytest.raises(MalformedPacket):
        impl.split_fields(0, 0, 0, bad, 0, 0, b"x")


@settings(max_examples=150, deadline=None)
@given(
    flow=st.one_of(flows(TCP), flows(UDP)),
    length=st.integers(0, 9000),
    gso_size=st.integers(1, 2000),
    flags=st.sampled_from([ACK, ACK | PSH, ACK | FIN, ACK | PSH | FIN | CWR]),
    seq=st.integers(0, 0xFFFFFFFF),
    ident=st.integers(0, 0xFFFF),
)
def test_split_property(
    flow: Flow, length: int, gso_size: int, flags: int, seq: int, ident: int
) -> None:
    from .conftest import PYTHON, SPEEDUPS

    payload = bytes((seq + i) & 0xFF for i in range(length))
    fields, pkt = super_packet(flow, payload, gso_size, seq=seq, flags=flags, ident=ident)
    want = expected_segments(flow, payload, gso_size, seq=seq, flags=flags, ident=ident)
    got = PYTHON.split_fields(*fields, pkt)
    assert got == want
    if SPEEDUPS is not None:
        assert SPEEDUPS.split_fields(*fields, pkt) == want
    for seg in got[:3]:
        dpkt_check(seg)
