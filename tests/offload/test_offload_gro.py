from __future__ import annotations

import struct
import types

import pytest

from trio_tun.offload import (
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    NEEDS_CSUM,
    ZERO_HDR,
    MalformedPacket,
    VirtioNetHdr,
)

from .packets import (
    ACK,
    CWR,
    ECE,
    FIN,
    PSH,
    RST,
    SYN,
    UDP,
    URG,
    Flow,
    dpkt_check,
    icmp_echo,
    ip_wrap,
    kernel_receive,
    l4_tcp,
    tcp_flow,
    tcp_packet,
    udp_packet,
)

TS = b"\x01\x01\x08\x0a" + bytes(range(8))
A = Flow(options=TS)
B = Flow(options=TS, sport=40001)
A6 = Flow(version=6, src=bytes(range(16)), dst=bytes(range(16, 32)), flow_label=7, options=TS)
UA = Flow(proto=UDP, sport=5000, dport=6000)
UA6 = Flow(version=6, proto=UDP, src=bytes(range(16)), dst=bytes(range(16, 32)))


def hdr_of(buf: bytes) -> VirtioNetHdr:
    return VirtioNetHdr.unpack(buf)


def segments_of(impl: types.SimpleNamespace, out: list[bytes]) -> list[list[bytes]]:
    """What each output buffer becomes on the wire, checked against the
    kernel model and our own split()."""
    result = []
    for buf in out:
        kernel = kernel_receive(buf)
        assert impl.split(hdr_of(buf), buf[10:]) == kernel
        result.append(kernel)
    return result


def test_one_flow_merges(impl: types.SimpleNamespace) -> None:
    segs = tcp_flow(A, [1448] * 10)
    out = impl.coalesce(segs)
    assert len(out) == 1
    hdr = hdr_of(out[0])
    assert hdr == VirtioNetHdr(NEEDS_CSUM, GSO_TCPV4, 20 + 32, 1448, 20, 16)
    assert len(out[0]) == 10 + 52 + 14480
    assert segments_of(impl, out) == [segs]


def test_ipv6_flow_merges(impl: types.SimpleNamespace) -> None:
    segs = tcp_flow(A6, [1000] * 5 + [10])
    out = impl.coalesce(segs)
    assert hdr_of(out[0]) == VirtioNetHdr(NEEDS_CSUM, GSO_TCPV6, 40 + 32, 1000, 40, 16)
    assert segments_of(impl, out) == [segs]


@pytest.mark.parametrize("flow", [UA, UA6], ids=["v4", "v6"])
def test_udp_only_with_uso(impl: types.SimpleNamespace, flow: Flow) -> None:
    segs = [udp_packet(flow, bytes([i]) * 1200, ident=i) for i in range(5)]
    out = impl.coalesce(segs)
    assert out == [ZERO_HDR + s for s in segs]
    out = impl.coalesce(segs, uso=True)
    ihl = 20 if flow.version == 4 else 40
    assert hdr_of(out[0]) == VirtioNetHdr(NEEDS_CSUM, GSO_UDP_L4, ihl + 8, 1200, ihl, 6)
    assert segments_of(impl, out) == [segs]


def test_udp_segment_limit(impl: types.SimpleNamespace) -> None:
    segs = [udp_packet(UA, bytes(100), ident=i) for i in range(70)]
    out = impl.coalesce(segs, uso=True)
    assert [len(s) for s in segments_of(impl, out)] == [64, 6]


def test_single_segments_go_out_unchanged(impl: types.SimpleNamespace) -> None:
    seg = tcp_packet(A, 1, b"x" * 100)
    assert impl.coalesce([seg]) == [ZERO_HDR + seg]
    ping = icmp_echo()
    assert impl.coalesce([ping, bytearray(seg)]) == [ZERO_HDR + ping, ZERO_HDR + seg]


def test_psh_closes_and_is_carried(impl: types.SimpleNamespace) -> None:
    segs = tcp_flow(A, [100] * 5, flags=[ACK, ACK, ACK | PSH, ACK, ACK])
    out = impl.coalesce(segs)
    assert len(out) == 2
    assert out[0][10 + 20 + 13] == ACK | PSH
    assert out[1][10 + 20 + 13] == ACK
    assert segments_of(impl, out) == [segs[:3], segs[3:]]


def test_psh_first_goes_alone(impl: types.SimpleNamespace) -> None:
    segs = tcp_flow(A, [100] * 3, flags=[ACK | PSH, ACK, ACK])
    out = impl.coalesce(segs)
    assert out[0] == ZERO_HDR + segs[0]
    assert segments_of(impl, out) == [segs[:1], segs[1:]]


@pytest.mark.parametrize(
    "flag", [FIN | ACK, SYN, SYN | ACK, RST, RST | ACK, URG | ACK, ECE | ACK, CWR | ACK, 0]
)
def test_other_flags_never_merge(impl: types.SimpleNamespace, flag: int) -> None:
    segs = tcp_flow(A, [100] * 5, flags=[ACK, ACK, flag, ACK, ACK])
    out = impl.coalesce(segs)
    assert out[1] == ZERO_HDR + segs[2]
    assert segments_of(impl, out) == [segs[:2], segs[2:3], segs[3:]]


def test_short_segment_ends_super_packet(impl: types.SimpleNamespace) -> None:
    segs = tcp_flow(A, [1448, 1448, 100, 1448, 1448])
    out = impl.coalesce(segs)
    assert segments_of(impl, out) == [segs[:3], segs[3:]]
    out = impl.coalesce(segs, allow_short_last=False)
    assert segments_of(impl, out) == [segs[:2], segs[2:3], segs[3:]]


def test_longer_segment_starts_new(impl: types.SimpleNamespace) -> None:
    segs = tcp_flow(A, [100, 1448, 1448])
    assert segments_of(impl, impl.coalesce(segs)) == [segs[:1], segs[1:]]


def test_bad_checksum_goes_alone(impl: types.SimpleNamespace) -> None:
    segs = tcp_flow(A, [100] * 4)
    bad = tcp_packet(A, 201, bytes((201 + j) & 0xFF for j in range(100)), ident=2, corrupt=True)
    segs[2] = bad
    out = impl.coalesce(segs)
    assert out[1] == ZERO_HDR + bad
    assert len(out) == 3
    bad_ip = bytearray(segs[1])
    bad_ip[10] ^= 1
    out = impl.coalesce([segs[0], bytes(bad_ip)])
    assert out == [ZERO_HDR + segs[0], ZERO_HDR + bad_ip]


def test_udp_zero_checksum_not_merged(impl: types.SimpleNamespace) -> None:
    segs = [bytearray(udp_packet(UA, bytes(100), ident=i)) for i in range(3)]
    for s in segs:
        s[26:28] = b"\0\0"  # "no checksum": nothing to verify
    out = impl.coalesce(segs, uso=True)
    assert out == [ZERO_HDR + s for s in segs]


def test_ack_and_header_changes_split_runs(impl: types.SimpleNamespace) -> None:
    base = tcp_flow(A, [100] * 2)
    variants = [
        tcp_flow(A, [100] * 2, seq=201, ack=1001, ident=2),
        tcp_flow(Flow(options=TS, ttl=63), [100] * 2, seq=201, ident=2),
        tcp_flow(Flow(options=TS, tos=3), [100] * 2, seq=201, ident=2),
        tcp_flow(Flow(options=TS, window=1), [100] * 2, seq=201, ident=2),
        tcp_flow(Flow(options=TS[:-1] + b"\x09"), [100] * 2, seq=201, ident=2),
        tcp_flow(Flow(options=TS, df=False), [100] * 2, seq=201, ident=2),
        tcp_flow(A, [100] * 2, seq=202, ident=2),  # gap
        tcp_flow(A, [100] * 2, seq=101, ident=2),  # retransmission
    ]
    for more in variants:
        out = impl.coalesce(base + more)
        assert segments_of(impl, out) == [base, more]


def test_ip_ids_must_count_up_without_df(impl: types.SimpleNamespace) -> None:
    nodf = Flow(df=False)
    segs = tcp_flow(nodf, [100] * 3, ident=0xFFFF)  # wraps
    assert len(impl.coalesce(segs)) == 1
    jumpy = [tcp_packet(nodf, 1 + 100 * i, bytes(100), ident=7 * i) for i in range(3)]
    assert len(impl.coalesce(jumpy)) == 3
    # With DF the ID carries no meaning, as in Linux GRO.
    df_jumpy = [tcp_packet(A, 1 + 100 * i, bytes(100), ident=7 * i) for i in range(3)]
    assert len(impl.coalesce(df_jumpy)) == 1


def test_max_size(impl: types.SimpleNamespace) -> None:
    segs = tcp_flow(A, [1448] * 50)
    out = impl.coalesce(segs)
    assert [len(s) for s in segments_of(impl, out)] == [45, 5]
    assert all(len(b) - 10 <= 65535 for b in out)
    out = impl.coalesce(segs[:10], max_size=52 + 3 * 1448)
    assert [len(s) for s in segments_of(impl, out)] == [3, 3, 3, 1]
    with pytest.raises(ValueError):
        impl.GroTable(max_size=65536)
    with pytest.raises(ValueError):
        impl.GroTable(max_size=0)


def test_flows_interleaved_keep_their_order(impl: types.SimpleNamespace) -> None:
    a = tcp_flow(A, [100] * 4)
    b = tcp_flow(B, [100] * 4)
    fin = tcp_packet(A, 401, b"", flags=FIN | ACK, ident=4)
    a2 = tcp_flow(A, [100] * 2, seq=401, ident=5)
    batch = [a[0], b[0], a[1], b[1], a[2], a[3], b[2], fin, b[3], a2[0], a2[1]]
    out = impl.coalesce(batch)
    assert segments_of(impl, out) == [a, b, [fin], a2]


def test_non_ip_flow_packets_do_not_close_flows(impl: types.SimpleNamespace) -> None:
    a = tcp_flow(A, [100] * 3)
    ping = icmp_echo()
    out = impl.coalesce([a[0], ping, a[1], a[2]])
    assert segments_of(impl, out) == [a, [ping]]


def test_fragment_is_a_barrier(impl: types.SimpleNamespace) -> None:
    a = tcp_flow(A, [100] * 4)
    frag = bytearray(ip_wrap(Flow(proto=UDP, df=False), bytes(40)))
    frag[6:8] = b"\x00\x10"  # offset 128: no ports, could be anyone's
    frag[10:12] = b"\0\0"
    out = impl.coalesce([a[0], a[1], bytes(frag), a[2], a[3]])
    assert segments_of(impl, out) == [a[:2], [bytes(frag)], a[2:]]


def test_ipv4_options_and_trailing_bytes_go_alone(impl: types.SimpleNamespace) -> None:
    a = tcp_flow(A, [100] * 3)
    l4 = l4_tcp(A, 201, 1000, ACK, bytes((201 + j) & 0xFF for j in range(100)))
    opt = ip_wrap(A, l4, 2, ip_options=b"\x01\x01\x01\x00")
    out = impl.coalesce([a[0], a[1], opt])
    assert out[1] == ZERO_HDR + opt
    padded = a[2] + b"\0\0"
    out = impl.coalesce([a[0], a[1], padded])
    assert out[1] == ZERO_HDR + padded


def test_table_accounting(impl: types.SimpleNamespace) -> None:
    table = impl.GroTable()
    segs = tcp_flow(A, [100] * 3)
    for s in segs:
        table.add(memoryview(s))
    table.add(icmp_echo(6))
    assert len(table) == table.pending_packets == 4
    assert table.pending_buffers == 2
    with pytest.raises(MalformedPacket):
        table.add(b"\x45garbage")
    assert len(table) == 4
    out = table.flush()
    assert len(out) == 2
    assert len(table) == 0 and table.flush() == []
    # The table copies: reusing the caller's buffer afterwards is fine.
    buf = bytearray(segs[0])
    table.add(buf)
    buf[:] = bytes(len(buf))
    assert table.flush() == [ZERO_HDR + segs[0]]


@pytest.mark.parametrize(
    "bad",
    [b"", b"\x00", b"\x45" + bytes(18), b"\x44" + bytes(30), b"\x60" + bytes(30), b"\x70" * 40],
)
def test_add_rejects_non_ip(impl: types.SimpleNamespace, bad: bytes) -> None:
    with pytest.raises(MalformedPacket):
        impl.GroTable().add(bad)


def test_ipv4_length_past_end_rejected(impl: types.SimpleNamespace) -> None:
    seg = bytearray(tcp_packet(A, 1, bytes(10)))
    seg[2:4] = struct.pack("!H", len(seg) + 1)
    with pytest.raises(MalformedPacket):
        impl.GroTable().add(seg)


def test_merged_output_passes_dpkt_after_split(impl: types.SimpleNamespace) -> None:
    segs = tcp_flow(A6, [1428] * 7) + tcp_flow(A, [1448] * 7)
    out = impl.coalesce(segs)
    assert all(hdr_of(b).gso_type != GSO_NONE for b in out)
    for group in segments_of(impl, out):
        for seg in group:
            dpkt_check(seg)


def test_speedups_table_is_a_grotable(speedups: types.SimpleNamespace) -> None:
    from trio_tun.offload import gro

    assert issubclass(speedups.GroTable, gro.GroTable)
