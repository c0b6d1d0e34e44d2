"""The compiled coalesce, GroTable and split_with_header against the Python
reference: the same output bytes, the same exceptions (type and message), for
generated flows and for garbage, whatever container and buffer types carry
the packets."""

from __future__ import annotations

import copy
import os
import pickle
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_tun._framing import VirtioFraming
from trio_tun.offload import ZERO_HDR, MalformedPacket, gro, gso

from .conftest import PACKET_TYPES, SPEEDUPS
from .packets import (
    ACK,
    CWR,
    ECE,
    FIN,
    PSH,
    RST,
    SYN,
    TCP,
    UDP,
    URG,
    VNET,
    Flow,
    flows,
    icmp_echo,
    ip_wrap,
    l4_tcp,
    l4_udp,
    naive_sum,
    pseudo,
    super_packet,
    tcp_packet,
    udp_packet,
)
from .test_offload_fuzz import gro_inputs, mutated, split_inputs

pytestmark = pytest.mark.skipif(SPEEDUPS is None, reason="_speedups extension not built")

if SPEEDUPS is not None:
    from trio_tun.offload import _accel, _speedups

N: int = int(os.environ.get("TRIO_TUN_FUZZ_EXAMPLES", "300"))
EQUIV = settings(max_examples=N // 2, deadline=None, suppress_health_check=list(HealthCheck))

_PATTERN = bytes(range(256)) * 260


def outcome(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[object, ...]:
    """What a call did: its result, or the type and message of what it raised."""
    try:
        return ("returned", fn(*args, **kwargs))
    except Exception as exc:  # any exception must match too
        return ("raised", type(exc), str(exc))


def assert_same(ref: tuple[object, ...], got: tuple[object, ...]) -> None:
    assert got == ref
    if got[0] == "returned":
        assert type(got[1]) is list
        assert all(type(b) in PACKET_TYPES for b in got[1])  # type: ignore[attr-defined]


def payload(size: int, offset: int) -> bytes:
    offset %= 256
    return _PATTERN[offset : offset + size]


# ---------------------------------------------------------------------------
# Batches: flows with every kind of irregularity, plus packets of every kind
# the table treats specially.

_flags = st.sampled_from(
    [ACK] * 40
    + [ACK | PSH] * 5
    + [ACK | FIN, SYN, SYN | ACK, RST | ACK, ACK | URG, ACK | ECE, ACK | CWR, PSH, 0]
)


_changes = st.sampled_from(
    ["none"] * 30 + ["gap", "ack", "ttl", "window", "df", "label", "urgent", "options", "tos"]
)


@st.composite
def flow_packets(draw: st.DrawFn, proto: int) -> list[bytes]:
    """Segments of one flow: mostly what a TSO/USO sender makes, with the odd
    gap, retransmission, header change, ID jump or bad checksum."""
    flow = draw(flows(proto))
    n = draw(st.integers(1, 24))
    if draw(st.integers(0, 3)):
        size = draw(st.sampled_from([1, 7, 100, 536, 1200, 1448]))
        sizes = [size] * n
        if draw(st.booleans()):
            sizes[-1] = draw(st.integers(0, size + 5))
    else:
        sizes = draw(st.lists(st.integers(0, 1500), min_size=n, max_size=n))
    seq = draw(st.integers(0, 0xFFFFFFFF))
    ack = draw(st.integers(0, 0xFFFFFFFF))
    ident = draw(st.integers(0, 0xFFFF))
    id_mode = draw(st.sampled_from(["count", "count", "same", "random"]))
    # "No checksum" (IPv4) or an invalid 0 (IPv6): nothing to verify, no merging.
    zero_udp_csum = proto == UDP and draw(st.integers(0, 5)) == 0
    out = []
    for i, size in enumerate(sizes):
        change = draw(_changes)
        if change == "gap":
            seq += draw(st.sampled_from([1, -1, -size, 1000]))
        elif change == "ack":
            ack += 1
        # The rest keep the 5-tuple (the flow key) but change a header byte
        # that must match between merged segments.
        elif change == "ttl":
            flow = attrs.evolve(flow, ttl=(flow.ttl % 255) + 1)
        elif change == "window":
            flow = attrs.evolve(flow, window=(flow.window + 1) & 0xFFFF)
        elif change == "df":
            flow = attrs.evolve(flow, df=not flow.df)
        elif change == "label" and flow.version == 6:
            flow = attrs.evolve(flow, flow_label=(flow.flow_label + 1) & 0xFFFFF)
        elif change == "urgent":
            flow = attrs.evolve(flow, urgent=flow.urgent ^ 1)
        elif change == "options" and flow.options:  # e.g. the timestamp moves on
            flow = attrs.evolve(flow, options=flow.options[:-1] + bytes([~flow.options[-1] & 255]))
        elif change == "tos":
            flow = attrs.evolve(flow, tos=flow.tos ^ 1)
        if id_mode == "count":
            pid = ident + i
        elif id_mode == "same":
            pid = ident
        else:
            pid = draw(st.integers(0, 0xFFFF))
        corrupt = draw(st.integers(0, 25)) == 0
        data = payload(size, seq)
        if proto == TCP:
            pkt = tcp_packet(
                flow, seq, data, ack=ack, flags=draw(_flags), ident=pid, corrupt=corrupt
            )
        else:
            pkt = udp_packet(flow, data, ident=pid, corrupt=corrupt)
            if zero_udp_csum:
                ihl = 20 if flow.version == 4 else 40
                pkt = pkt[: ihl + 6] + b"\0\0" + pkt[ihl + 8 :]
        out.append(pkt)
        seq += size
    return out


def _v4_fragment(flow: Flow, frag: int, body: bytes) -> bytes:
    pkt = bytearray(ip_wrap(attrs.evolve(flow, version=4, src=bytes(4), dst=bytes(4)), body))
    pkt[6:8] = struct.pack("!H", frag)
    pkt[10:12] = b"\0\0"
    return bytes(pkt)


@st.composite
def special_packets(draw: st.DrawFn) -> bytes:
    """One packet of a kind that goes out alone, closes a flow or is a barrier."""
    flow = draw(st.one_of(flows(TCP), flows(UDP)))
    kind = draw(
        st.sampled_from(
            [
                "icmp4",
                "icmp6",
                "frag_mf",
                "frag_offset",
                "v6_ext",
                "v6_other",
                "ip_options",
                "trailing",
                "bad_ip_csum",
                "short_l4",
                "short_tcp",
                "udp_no_csum",
                "udp_bad_len",
                "no_payload",
                "garbage",
            ]
        )
    )
    body = payload(draw(st.integers(0, 60)), draw(st.integers(0, 255)))
    if kind == "icmp4":
        return icmp_echo(4)
    if kind == "icmp6":
        return icmp_echo(6)
    if kind == "frag_mf":
        return _v4_fragment(flow, 0x2000, l4_udp(flow, body))
    if kind == "frag_offset":
        return _v4_fragment(flow, draw(st.integers(1, 0x1FFF)), body)
    if kind == "v6_ext":
        nh = draw(st.sampled_from([0, 43, 44, 51, 60, 135, 139, 140, 253, 254]))
        v6 = Flow(version=6, proto=nh, src=bytes(range(16)), dst=bytes(16))
        return ip_wrap(v6, body)
    if kind == "v6_other":
        v6 = Flow(
            version=6,
            proto=draw(st.sampled_from([1, 2, 41, 58, 59, 132])),
            src=bytes(16),
            dst=bytes(16),
        )
        return ip_wrap(v6, body)
    if kind == "ip_options":
        l4 = l4_tcp(flow, 1, 2, ACK, body) if flow.proto == TCP else l4_udp(flow, body)
        v4 = attrs.evolve(flow, version=4, src=flow.src[:4], dst=flow.dst[:4])
        return ip_wrap(v4, l4, ip_options=b"\x01\x01\x01\x00")
    if kind == "trailing":
        return tcp_packet(flow, 1, body + b"x") + b"\0\0"
    if kind == "bad_ip_csum":
        v4 = attrs.evolve(flow, version=4, src=bytes(4), dst=bytes(4), options=b"")
        pkt = bytearray(tcp_packet(v4, 1, body + b"y"))
        pkt[10] ^= 0x40
        return bytes(pkt)
    if kind == "short_l4":
        return ip_wrap(flow, body[:3])
    if kind == "short_tcp":
        return ip_wrap(attrs.evolve(flow, proto=TCP), payload(draw(st.integers(4, 19)), 3))
    if kind == "udp_no_csum":
        pkt = bytearray(udp_packet(attrs.evolve(flow, proto=UDP), body + b"z"))
        ihl = 20 if flow.version == 4 else 40
        pkt[ihl + 6 : ihl + 8] = b"\0\0"
        return bytes(pkt)
    if kind == "udp_bad_len":
        pkt = bytearray(udp_packet(attrs.evolve(flow, proto=UDP), body + b"z"))
        ihl = 20 if flow.version == 4 else 40
        pkt[ihl + 4 : ihl + 6] = b"\0\x09"
        return bytes(pkt)
    if kind == "no_payload":
        return tcp_packet(attrs.evolve(flow, proto=TCP), 1, b"")
    return draw(st.binary(max_size=80))


@st.composite
def batches(draw: st.DrawFn) -> list[bytes]:
    """Several flows (TCP and UDP, v4 and v6) interleaved, with special and
    damaged packets sprinkled in."""
    queues = [
        draw(flow_packets(draw(st.sampled_from([TCP, TCP, UDP]))))
        for _ in range(draw(st.integers(1, 4)))
    ]
    out: list[bytes] = []
    while any(queues):
        q = draw(st.sampled_from([q for q in queues if q]))
        for _ in range(draw(st.integers(1, 10))):
            if q:
                out.append(q.pop(0))
        roll = draw(st.integers(0, 24))
        if roll <= 1:
            out.append(draw(special_packets()))
        elif roll == 2 and out:
            i = draw(st.integers(0, len(out) - 1))
            out[i] = draw(mutated(out[i]))
    return out


def _noncontiguous(data: bytes) -> memoryview:
    doubled = bytearray(2 * len(data))
    doubled[::2] = data
    return memoryview(doubled)[::2]


def _memoryview_h(data: bytes) -> memoryview | bytes:
    return memoryview(bytearray(data)).cast("H") if len(data) % 2 == 0 else data


_CARRIERS: dict[str, Callable[[bytes], Any]] = {
    "bytes": bytes,
    "bytearray": bytearray,
    "memoryview": memoryview,
    "slice": lambda b: memoryview(b"<<" + b + b">>")[2:-2],
    "noncontiguous": _noncontiguous,
    "format_H": _memoryview_h,
}


@st.composite
def carried(draw: st.DrawFn, packets: list[bytes]) -> tuple[str, list[Any]]:
    """The packets as the buffer types a caller may hand over (mostly bytes)."""
    mode = draw(st.sampled_from(["bytes"] * 4 + ["mixed"]))
    if mode == "bytes":
        return "bytes", list(packets)
    names = draw(
        st.lists(st.sampled_from(sorted(_CARRIERS)), min_size=len(packets), max_size=len(packets))
    )
    return "+".join(sorted(set(names))), [
        _CARRIERS[n](p) for n, p in zip(names, packets, strict=True)
    ]


def _container(kind: str, items: list[Any]) -> Iterable[Any]:
    if kind == "tuple":
        return tuple(items)
    if kind == "generator":
        return (p for p in items)
    if kind == "iterator":
        return iter(items)
    return list(items)


_options = st.fixed_dictionaries(
    {},
    optional={
        "uso": st.booleans(),
        "max_size": st.one_of(
            st.sampled_from([65535, 1500, 3000, 9000, 20000]), st.integers(1, 65535)
        ),
        "allow_short_last": st.booleans(),
    },
)


def _compare_coalesce(items: list[Any], container: str, options: dict[str, Any]) -> None:
    ref = outcome(gro.coalesce, _container(container, items), **options)
    got = outcome(_accel.coalesce, _container(container, items), **options)
    assert_same(ref, got)


@EQUIV
@given(
    batch=batches(),
    options=_options,
    container=st.sampled_from(["list"] * 6 + ["tuple", "generator", "iterator"]),
    data=st.data(),
)
def test_coalesce_matches_reference(
    batch: list[bytes], options: dict[str, Any], container: str, data: st.DataObject
) -> None:
    _, items = data.draw(carried(batch))
    _compare_coalesce(items, container, options)


@settings(max_examples=N // 4, deadline=None, suppress_health_check=list(HealthCheck))
@given(batch=gro_inputs(), options=_options)
def test_coalesce_matches_reference_on_damaged_batches(
    batch: list[bytes], options: dict[str, Any]
) -> None:
    _compare_coalesce(batch, "list", options)


@settings(max_examples=N // 3, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    batch=st.lists(
        st.one_of(st.binary(max_size=100), special_packets(), st.builds(bytes)), max_size=20
    ),
    options=_options,
)
def test_coalesce_matches_reference_on_garbage(batch: list[bytes], options: dict[str, Any]) -> None:
    _compare_coalesce(batch, "list", options)


def _run_table(cls: type[Any], items: list[Any], options: dict[str, Any]) -> list[object]:
    """Add one at a time, flushing now and then; record everything."""
    record: list[object] = []
    table = cls(**options)
    for i, item in enumerate(items):
        record.append(outcome(table.add, item))
        record.append((len(table), table.pending_packets, table.pending_buffers))
        if i % 17 == 16:
            record.append(outcome(table.flush))
    record.append(outcome(table.flush))
    record.append((len(table), table.pending_packets, table.pending_buffers))
    return record


@EQUIV
@given(batch=batches(), options=_options, data=st.data())
def test_table_matches_reference(
    batch: list[bytes], options: dict[str, Any], data: st.DataObject
) -> None:
    _, items = data.draw(carried(batch))
    assert _run_table(_accel.GroTable, items, options) == _run_table(gro.GroTable, items, options)
    assert _run_table(_speedups.GroTable, items, options) == _run_table(
        gro.GroTable, items, options
    )


# ---------------------------------------------------------------------------
# split_with_header


@st.composite
def reads(draw: st.DrawFn) -> bytes:
    """What a TUN read returns: a header and a packet, valid or damaged."""
    fields, pkt = draw(split_inputs())
    buf = VNET.pack(*fields) + pkt
    cut = draw(st.sampled_from([None] * 8 + [0, 1, 9, 10, 11]))
    return buf if cut is None else buf[:cut]


@st.composite
def valid_reads(draw: st.DrawFn) -> bytes:
    flow = draw(st.one_of(flows(TCP), flows(UDP)))
    length = draw(st.integers(0, 20000))
    gso_size = draw(st.sampled_from([1, 100, 536, 1448, 1460, 9000]))
    # Any IP ID and sequence number: split works them into each segment's
    # checksums by difference from the first.
    fields, pkt = super_packet(
        flow,
        payload(length, length),
        gso_size,
        ident=draw(st.integers(0, 0xFFFF)),
        seq=draw(st.integers(0, 0xFFFFFFFF)),
    )
    return VNET.pack(*fields) + pkt


@settings(max_examples=N, deadline=None, suppress_health_check=list(HealthCheck))
@given(buf=st.one_of(reads(), valid_reads()), carrier=st.sampled_from(sorted(_CARRIERS)))
def test_split_with_header_matches_reference(buf: bytes, carrier: str) -> None:
    item = _CARRIERS[carrier](buf)
    ref = outcome(gso.split_with_header, item)
    assert_same(ref, outcome(_accel.split_with_header, item))
    assert_same(ref, outcome(_speedups.split_with_header, buf=item))


@settings(max_examples=N // 2, deadline=None, suppress_health_check=list(HealthCheck))
@given(inp=split_inputs())
def test_split_fields_messages_match_reference(inp: tuple[tuple[int, ...], bytes]) -> None:
    fields, pkt = inp
    assert_same(outcome(gso.split_fields, *fields, pkt), outcome(_accel.split_fields, *fields, pkt))


def _unpack_each_frame(run: list[bytes]) -> tuple[list[bytes], int]:
    """What VirtioFraming.unpack does frame by frame, with the reference split."""
    packets: list[bytes] = []
    malformed = 0
    for frame in run:
        if len(frame) <= 10:
            malformed += 1
        elif frame[0] == 0 and frame[1] == 0:
            packets.append(frame[10:])
        else:
            try:
                packets.extend(gso.split_with_header(frame))
            except MalformedPacket:
                malformed += 1
    return packets, malformed


@settings(max_examples=N // 2, deadline=None, suppress_health_check=list(HealthCheck))
@given(run=st.lists(st.one_of(reads(), valid_reads()), max_size=8), slack=st.integers(0, 64))
def test_split_frames_is_unpacking_each_frame(run: list[bytes], slack: int) -> None:
    """A run of reads packed in a pool (with room to spare after it), split in
    one call: the packets and the malformed count of frame-by-frame unpacking."""
    pool = bytearray(b"".join(run) + b"\xff" * slack)
    packets, malformed = _speedups.split_frames(memoryview(pool), [len(f) for f in run])
    assert (packets, malformed) == _unpack_each_frame(run)
    assert all(type(p) in PACKET_TYPES for p in packets)


def test_split_frames_refuses_lengths_past_the_buffer() -> None:
    frame = ZERO_HDR + icmp_echo()
    assert _speedups.split_frames(frame * 2, [len(frame)] * 2) == ([icmp_echo()] * 2, 0)
    with pytest.raises(ValueError, match="past the buffer"):
        _speedups.split_frames(frame * 2, [len(frame)] * 3)
    with pytest.raises(ValueError, match="past the buffer"):
        _speedups.split_frames(frame, [-1])


@EQUIV
@given(batch=batches(), uso=st.booleans(), data=st.data())
def test_frame_segments_counts_what_segments_counts(
    batch: list[bytes], uso: bool, data: st.DataObject
) -> None:
    try:
        frames = _accel.coalesce(batch, uso=uso)
    except MalformedPacket:
        return
    start = data.draw(st.integers(0, len(frames)))
    end = data.draw(st.integers(start, len(frames)))
    counts = [VirtioFraming(coalescing=True, uso=uso).segments(f) for f in frames[start:end]]
    want = (sum(counts), sum(n > 1 for n in counts))
    assert _speedups.frame_segments(frames, start, end) == want


# ---------------------------------------------------------------------------
# Targeted cases


TS = b"\x01\x01\x08\x0a" + bytes(range(8))


def _segs(n: int, flow: Flow | None = None, size: int = 1448) -> list[bytes]:
    flow = flow or Flow(options=TS)
    return [tcp_packet(flow, 1 + i * size, payload(size, i), ident=i) for i in range(n)]


def test_many_flows_interleaved() -> None:
    """More flows than the inline hash table holds, round robin, with a
    barrier in the middle; and more packets than the inline packet array."""
    flows_ = [Flow(options=TS, sport=1000 + i) for i in range(300)]
    per_flow = [_segs(3, f, 100) for f in flows_]
    batch = [per_flow[f][k] for k in range(3) for f in range(300)]
    batch.insert(450, _v4_fragment(Flow(), 0x10, b"12345678"))
    for container in ("list", "generator"):
        _compare_coalesce(batch, container, {})
    out = _accel.coalesce(batch)
    assert len(out) == 601
    assert _run_table(_accel.GroTable, batch, {}) == _run_table(gro.GroTable, batch, {})


def test_every_barrier_kind_closes_every_flow() -> None:
    a, b = _segs(4), _segs(4, Flow(options=TS, sport=1))
    for nh in (0, 43, 44, 51, 60, 135, 139, 140, 253, 254):
        barrier = ip_wrap(Flow(version=6, proto=nh, src=bytes(16), dst=bytes(16)), b"x" * 8)
        batch = [a[0], b[0], a[1], barrier, b[1], a[2], b[2], a[3], b[3]]
        assert _accel.coalesce(batch) == gro.coalesce(batch)
        assert len(_accel.coalesce(batch)) == 5


def test_udp_segment_cap_and_uso() -> None:
    flow = Flow(proto=UDP, sport=53, dport=5353)
    segs = [udp_packet(flow, payload(100, i), ident=i) for i in range(200)]
    for uso in (False, True):
        assert _accel.coalesce(segs, uso=uso) == gro.coalesce(segs, uso=uso)
    assert len(_accel.coalesce(segs, uso=True)) == 4  # 64 + 64 + 64 + 8


def test_max_size_boundaries() -> None:
    segs = _segs(50)
    for max_size in (1, 52, 52 + 1448, 52 + 2 * 1448 - 1, 52 + 2 * 1448, 65535):
        assert _accel.coalesce(segs, max_size=max_size) == gro.coalesce(segs, max_size=max_size)


def test_buffers_are_read_not_kept() -> None:
    segs = _segs(5)
    bufs = [bytearray(s) for s in segs]
    out = _accel.coalesce(bufs)
    for b in bufs:
        b[:] = bytes(len(b))  # resizing would fail if a view were still held
        b.extend(b"x")
    assert out == gro.coalesce(segs)


class _Weird:
    """A packet whose bytes() runs code: writes to another packet of the
    batch and to the list being coalesced."""

    def __init__(self, data: bytes, victim: bytearray, batch: list[Any]) -> None:
        self.data, self.victim, self.batch = data, victim, batch

    def __bytes__(self) -> bytes:
        self.victim[:] = bytes(len(self.victim))
        self.batch.append(icmp_echo())
        return self.data


def test_bytes_conversion_that_runs_code() -> None:
    segs = _segs(4)

    def make() -> list[Any]:
        victim = bytearray(segs[0])
        batch: list[Any] = [victim, segs[1]]
        batch.append(_Weird(segs[2], victim, batch))
        batch.append(segs[3])
        return batch

    ref = outcome(gro.coalesce, make())
    assert ref[0] == "returned"
    assert outcome(_accel.coalesce, make()) == ref


def _reenter(cls: type[Any], segs: list[bytes]) -> tuple[list[list[bytes]], list[bytes]]:
    table = cls()
    flushed: list[list[bytes]] = []

    class Reenter:
        def __bytes__(self) -> bytes:
            flushed.append(table.flush())
            return segs[2]

    for packet in (segs[0], segs[1], Reenter(), segs[3]):
        table.add(packet)
    return flushed, table.flush()


def test_table_reentrancy() -> None:
    """__bytes__ flushing the very table that is converting it."""
    segs = _segs(4)
    expected = ([gro.coalesce(segs[:2])], gro.coalesce(segs[2:]))
    assert _reenter(gro.GroTable, segs) == expected
    assert _reenter(_speedups.GroTable, segs) == expected
    assert _reenter(_accel.GroTable, segs) == expected


@pytest.mark.parametrize(
    "item",
    [5, 0, "text", None, [0x45, 0, 0], object(), memoryview(b"")[::-1]],
    ids=["int", "zero", "str", "none", "list", "object", "empty_view"],
)
def test_non_buffer_packets(item: object) -> None:
    segs = _segs(2)
    for batch in ([item], [segs[0], item, segs[1]], [b"", item]):
        _compare_coalesce(batch, "list", {})
        _compare_coalesce(batch, "generator", {})


def test_released_memoryview() -> None:
    view = memoryview(_segs(1)[0])
    view.release()
    _compare_coalesce([view], "list", {})
    assert outcome(_accel.split_with_header, view) == outcome(gso.split_with_header, view)


def test_iterable_errors_propagate() -> None:
    def broken() -> Iterator[bytes]:
        yield _segs(1)[0]
        raise KeyError("boom")

    assert outcome(_accel.coalesce, broken()) == outcome(gro.coalesce, broken())
    assert outcome(_accel.coalesce, 42) == outcome(gro.coalesce, 42)


class _Truth:
    def __init__(self, value: bool) -> None:
        self.value = value
        self.calls = 0

    def __bool__(self) -> bool:
        self.calls += 1
        return self.value


@pytest.mark.parametrize(
    "options",
    [
        {"max_size": 65536},
        {"max_size": 0},
        {"max_size": -1},
        {"max_size": 2**70},
        {"max_size": True},
        {"max_size": 3000.5},
        {"max_size": "x"},
        {"max_size": None},
        {"uso": 1, "allow_short_last": 0},
        {"uso": None},
        {"uso": "yes", "allow_short_last": []},
    ],
)
def test_option_types_and_ranges(options: dict[str, Any]) -> None:
    udp = [udp_packet(Flow(proto=UDP), payload(100, i), ident=i) for i in range(3)]
    tcp = [*_segs(3, size=100)[:2], tcp_packet(Flow(options=TS), 201, b"xy", ident=2)]
    for batch in (udp, tcp, udp + tcp):
        _compare_coalesce(batch, "list", options)
        assert outcome(_run_table, _accel.GroTable, batch, options) == outcome(
            _run_table, gro.GroTable, batch, options
        )


def test_truth_values_are_asked_like_the_reference() -> None:
    udp = [udp_packet(Flow(proto=UDP), payload(100, i), ident=i) for i in range(3)]
    tcp = _segs(3, size=100)
    for batch in (udp, tcp):
        ref_uso, ref_short = _Truth(True), _Truth(False)
        uso, short = _Truth(True), _Truth(False)
        ref = gro.coalesce(batch, uso=ref_uso, allow_short_last=ref_short)  # type: ignore[arg-type]
        assert _accel.coalesce(batch, uso=uso, allow_short_last=short) == ref  # type: ignore[arg-type]
        assert (uso.calls, short.calls) == (ref_uso.calls, ref_short.calls)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((), {}),
        (([], []), {}),
        (([],), {"packets": []}),
        ((), {"packets": [], "usso": True}),
        (([],), {"max_size": 100, "uso": True, "allow_short_last": False}),
        ((), {"packets": ()}),
    ],
)
def test_call_signature(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    assert outcome(_accel.coalesce, *args, **kwargs) == outcome(gro.coalesce, *args, **kwargs)


def test_split_with_header_signature() -> None:
    buf = ZERO_HDR + icmp_echo()
    assert _accel.split_with_header(buf=buf) == gso.split_with_header(buf=buf)
    for args, kwargs in (((), {}), ((buf, buf), {}), ((buf,), {"buf": buf}), ((), {"b": 1})):
        ref = outcome(gso.split_with_header, *args, **kwargs)
        got = outcome(_accel.split_with_header, *args, **kwargs)
        assert got[:2] == ref[:2]  # TypeError either way; the wording is CPython's


def test_split_with_header_64k() -> None:
    flow = Flow(options=TS)
    fields, pkt = super_packet(flow, payload(65535 - 52, 0), 1448)
    buf = VNET.pack(*fields) + pkt
    out = _accel.split_with_header(buf)
    assert len(out) == 46
    assert out == gso.split_with_header(buf)
    # Straight back together: coalesce undoes split (PSH rides on the last).
    assert _accel.coalesce(out) == gro.coalesce(out)
    assert [len(b) for b in _accel.coalesce(out)] == [10 + len(pkt)]


# Segments: split's packets carry a mark that lets coalesce skip their checksums.


def _read(n: int, seed: int = 0, flow: Flow | None = None) -> bytes:
    """A TUN read of a TCP super-packet of n full segments."""
    fields, pkt = super_packet(flow or Flow(options=TS), payload(1448 * n, seed), 1448)
    return VNET.pack(*fields) + pkt


def _segments(n: int, seed: int = 0, flow: Flow | None = None) -> list[bytes]:
    return _accel.split_with_header(_read(n, seed, flow))


def test_split_marks_the_segments_it_cut() -> None:
    for flow in (Flow(options=TS), Flow(version=6, src=bytes(16), dst=bytes(15) + b"\1")):
        segs = _segments(3, flow=flow)
        assert [type(s) for s in segs] == [_speedups.Segment] * 3
        assert segs == gso.split_with_header(_read(3, flow=flow))
    # A packet that was not cut is not marked: its checksum is the kernel's.
    plain = _accel.split_with_header(ZERO_HDR + icmp_echo())
    assert [type(p) for p in plain] == [bytes]


def test_a_segment_cannot_be_made_or_kept_outside_split() -> None:
    seg = _segments(1)[0]
    with pytest.raises(TypeError):
        _speedups.Segment(seg)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        type("Forged", (_speedups.Segment,), {})
    for copied in (
        pickle.loads(pickle.dumps(seg)),
        copy.copy(seg),
        copy.deepcopy(seg),
        bytes(seg),
        seg[:],
        seg + b"",
    ):
        assert type(copied) is bytes and copied == seg


def test_a_recycled_segment_has_its_own_hash() -> None:
    first = _segments(1, seed=1)[0]
    old = hash(first)
    del first  # its block goes back to the free list, hash cached in it
    again = _segments(1, seed=2)[0]
    assert hash(again) == hash(bytes(again)) != old


def test_a_damaged_copy_of_a_segment_is_checked_again() -> None:
    """Only a Segment skips the checksum check: bytes made from one, changed,
    are summed and not merged."""
    segs = _segments(4)
    assert len(_accel.coalesce(segs)) == 1
    damaged = bytearray(segs[2])
    damaged[-1] ^= 0x01
    batch = [segs[0], segs[1], bytes(damaged), segs[3]]
    assert _accel.coalesce(batch) == gro.coalesce(batch)
    assert len(_accel.coalesce(batch)) == 3  # [0, 1] merged, [2] alone, [3] alone
    assert _speedups.gro_parse(bytes(damaged))[0] == gro.parse(bytes(damaged))[0]


def test_segments_survive_their_neighbours_being_freed() -> None:
    """Blocks go back to the free list and out again: what is kept stays."""
    kept = []
    for round_ in range(50):
        segs = _segments(8, seed=round_, flow=Flow(options=TS, sport=1000 + round_))
        kept.append(segs[round_ % 8])
        del segs
    for round_, seg in enumerate(kept):
        want = gso.split_with_header(_read(8, round_, Flow(options=TS, sport=1000 + round_)))
        assert seg == want[round_ % 8]


def test_exception_class_is_the_packages() -> None:
    with pytest.raises(MalformedPacket, match="IP version 7"):
        _accel.coalesce([b"\x70" * 40])
    with pytest.raises(MalformedPacket, match="virtio header needs 10 bytes"):
        _accel.split_with_header(b"123")


# Every MalformedPacket the parsers raise, with its message.


def _with(buf: bytes, at: int, value: bytes) -> bytes:
    return buf[:at] + value + buf[at + len(value) :]


def _v4_len(pkt: bytes) -> bytes:
    return _with(pkt, 2, struct.pack("!H", len(pkt)))


def _malformed_packets() -> dict[str, bytes]:
    seg = tcp_packet(Flow(options=TS), 1, b"x" * 20)
    seg6 = tcp_packet(Flow(version=6, src=bytes(16), dst=bytes(16)), 1, b"x" * 20)
    return {
        "empty": b"",
        "v4_truncated": seg[:19],
        "v4_ihl": _with(seg, 0, b"\x44"),
        "v4_total_short": _with(seg, 2, b"\x00\x13"),
        "v4_total_long": _with(seg, 2, struct.pack("!H", len(seg) + 1)),
        "v6_truncated": seg6[:39],
        "v6_plen": _with(seg6, 4, struct.pack("!H", len(seg6) - 39)),
        "version_0": b"\x00" * 40,
        "version_7": b"\x70" * 40,
        "version_15": b"\xff" * 60,
    }


@pytest.mark.parametrize(("name", "packet"), sorted(_malformed_packets().items()))
def test_malformed_packet_messages(name: str, packet: bytes) -> None:
    ref = outcome(gro.parse, packet)
    assert ref[:2] == ("raised", MalformedPacket)
    assert outcome(_speedups.gro_parse, packet) == ref
    assert outcome(_accel.coalesce, [packet]) == ref
    assert outcome(_accel.GroTable().add, packet) == ref


def _malformed_reads() -> dict[str, bytes]:
    flow = Flow(options=TS)
    fields, pkt = super_packet(flow, payload(3000, 0), 1448)
    flow6 = Flow(version=6, src=bytes(range(16)), dst=bytes(16))
    fields6, pkt6 = super_packet(flow6, payload(3000, 0), 1448)

    def read(
        *changes: tuple[int, int], packet: bytes = pkt, base: tuple[int, ...] = fields
    ) -> bytes:
        f = list(base)
        for i, v in changes:
            f[i] = v
        return VNET.pack(*f) + packet

    return {
        "short_header": b"123456789",
        "flags": read((0, 4)),
        "gso_type": read((1, 2)),
        "hdr_len": read((2, len(pkt) + 1)),
        "csum_field": read((4, len(pkt))),
        "ecn_alone": read((1, 0x80)),
        "gso_size_0": read((3, 0)),
        "no_needs_csum": read((0, 0)),
        "ufo": read((1, 3)),
        "csum_offset": read((5, 6)),
        "tcpv6_on_v4": read((1, 4)),
        "v4_truncated": read((2, 0), (4, 0), packet=pkt[:19]),
        "v4_ihl": read(packet=_with(pkt, 0, b"\x44")),
        "csum_start": read((4, 24)),
        "v4_total": read(packet=pkt + b"\0"),
        "v4_fragment": read(packet=_with(pkt, 6, b"\x60")),
        "v4_protocol": read((1, 5), (5, 6)),
        "tcpv4_on_v6": read((1, 1), base=fields6, packet=pkt6),
        "v6_truncated": read((2, 0), (4, 0), base=fields6, packet=pkt6[:39]),
        "v6_csum_start": read((4, 20), base=fields6, packet=pkt6),
        "v6_plen": read(base=fields6, packet=pkt6 + b"\0"),
        "v6_next_header": read((1, 5), (5, 6), base=fields6, packet=pkt6),
        "gso_version": read(packet=_with(pkt, 0, b"\x55")),
        "tcp_truncated": read((2, 0), packet=_v4_len(pkt[:38])),
        "tcp_doff": read(packet=_with(pkt, 32, b"\x40")),
        "tcp_options": read(packet=_v4_len(_with(pkt, 32, b"\xf0")[:60])),
        "ok": read(),
        "ok_v6": read(base=fields6, packet=pkt6),
        "ok_plain": read((0, 0), (1, 0), (3, 0)),
        "ok_needs_csum": read((1, 0), (3, 0)),
    }


@pytest.mark.parametrize(("name", "buf"), sorted(_malformed_reads().items()))
def test_split_messages(name: str, buf: bytes) -> None:
    ref = outcome(gso.split_with_header, buf)
    assert (ref[0] == "returned") == name.startswith("ok"), ref
    assert_same(ref, outcome(_accel.split_with_header, buf))
    assert_same(ref, outcome(_accel.split_with_header, bytearray(buf)))
    if len(buf) >= 10:
        fields = VNET.unpack(buf[:10])
        assert_same(
            outcome(gso.split_fields, *fields, buf[10:]),
            outcome(_accel.split_fields, *fields, buf[10:]),
        )


def _udp_summing_to_zero(flow: Flow, body: bytes, ident: int) -> bytes:
    """A UDP packet whose checksum is 0xFFFF (all-ones, the other zero) with
    its checksum field set to 0: it verifies, but 0 means "no checksum"."""
    pkt = bytearray(udp_packet(flow, body + b"\0\0", ident=ident))
    ihl = 20 if flow.version == 4 else 40
    pkt[ihl + 6 : ihl + 8] = b"\0\0"
    l4 = bytes(pkt[ihl:])
    s = naive_sum(pseudo(flow.src, flow.dst, UDP, len(l4)) + l4)
    pkt[-2:] = struct.pack("!H", ~s & 0xFFFF)
    assert naive_sum(pseudo(flow.src, flow.dst, UDP, len(l4)) + bytes(pkt[ihl:])) == 0xFFFF
    return bytes(pkt)


@pytest.mark.parametrize("version", [4, 6])
def test_udp_zero_checksum_that_would_verify(version: int) -> None:
    alen = 4 if version == 4 else 16
    flow = Flow(version=version, proto=UDP, src=bytes(range(alen)), dst=bytes(alen))
    segs = [_udp_summing_to_zero(flow, payload(98, i), i) for i in range(3)]
    ref = gro.coalesce(segs, uso=True)
    assert ref == [ZERO_HDR + s for s in segs]
    assert _accel.coalesce(segs, uso=True) == ref
    assert [_speedups.gro_parse(s) for s in segs] == [gro.parse(s) for s in segs]


# -- found under ASan/UBSan (nox -s sanitize) -------------------------------------------

needs_mmsg = pytest.mark.skipif(
    SPEEDUPS is None or not hasattr(_speedups, "sendmmsg"), reason="Linux's sendmmsg/recvmmsg"
)

# The caller's list loses its messages while sendmmsg iterates the first
# message's buffers (a generator): sendmmsg once read the freed list and
# message (a crash).  A subprocess, so that a crash fails this test only.
_SENDMMSG_LIST_CHANGES = """
import socket
from trio_tun.offload import _speedups

a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
b.setblocking(False)
messages = []

def buffers():
    messages.clear()
    yield b"first"

messages.extend([(buffers(), 0, None), ([b"second", bytearray(b"!")], 0, None)])
sent = _speedups.sendmmsg(a.fileno(), messages)
got = []
for _ in range(3):
    try:
        got.append(b.recv(100))
    except BlockingIOError:
        break
print(sent, got, messages)
"""


def _isolated(code: str) -> str:
    """Run *code* in a fresh interpreter (a crash fails the calling test only)."""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


@needs_mmsg
def test_sendmmsg_sends_what_it_was_given_when_the_list_changes() -> None:
    # Both messages went, as they were when the call began.
    assert _isolated(_SENDMMSG_LIST_CHANGES) == "2 [b'first', b'second!'] []"


# Same with gro_build's payloads: a payload that is no buffer is converted
# with bytes(), whose iteration empties the list; gro_build then read past
# the list's (freed) items.
_GRO_BUILD_LIST_CHANGES = """
from trio_tun.offload import _speedups
from trio_tun.offload import gro

first = bytes.fromhex(%r)
payloads = []

class Chunk:
    def __iter__(self):
        payloads.clear()
        return iter(b"abc")

payloads.extend([Chunk(), b"x" * 100, bytearray(b"y" * 100)])
got = _speedups.gro_build(first, 20, 40, 100, 0, payloads)
want = gro.build(first, 20, 40, 100, 0, [b"abc", b"x" * 100, b"y" * 100])
print(got == want, len(got), payloads)
"""


def test_gro_build_reads_the_payloads_it_was_given_when_the_list_changes() -> None:
    first = tcp_packet(Flow(), 1, b"p" * 100)
    code = _GRO_BUILD_LIST_CHANGES % first.hex()
    assert _isolated(code) == f"True {10 + 40 + 203} []"


@needs_mmsg
@pytest.mark.parametrize("want_address", [False, True])
def test_recvmmsg_without_ancillary_buffer(want_address: bool) -> None:
    # ancbufsize 0 leaves msg_control NULL: the cmsg walk once did NULL + 0
    # (undefined behaviour, UBSan aborts; silent in a plain build).
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        for i in range(3):
            a.send(bytes([i + 1]) * (10 + i))
        buf = bytearray(4 * 64)
        got = _speedups.recvmmsg(b.fileno(), buf, 64, 4, 0, want_address)
        assert got == [(10 + i, [], 0, None) for i in range(3)]
        for i in range(3):
            assert buf[i * 64 : i * 64 + 10 + i] == bytes([i + 1]) * (10 + i)


# A datagram whose len() (Python code both implementations call) empties the
# caller's list: gso_runs once kept walking the list's old length, reading
# its freed storage (UBSan: an offset applied to its NULL item array).
_GSO_RUNS_LIST_CHANGES = """
from trio_tun.offload import _speedups, udp

def datagrams():
    items = [b"a" * 10, b"b" * 10, b"c" * 4]

    class Shrinking:
        def __len__(self):
            items.clear()
            return 10

    items.insert(1, Shrinking())
    return items

def shape(runs):
    return [(size, [type(d).__name__ for d in run]) for size, run in runs]

got = _speedups.gso_runs(datagrams(), 64, 65000)
want = udp.gso_runs(datagrams(), 64, 65000)
print(shape(got) == shape(want), shape(got))
"""


def test_gso_runs_when_a_datagram_empties_the_list() -> None:
    # Like the reference: it stops where the emptied list now ends.
    assert _isolated(_GSO_RUNS_LIST_CHANGES) == "True [(10, ['bytes', 'Shrinking'])]"
