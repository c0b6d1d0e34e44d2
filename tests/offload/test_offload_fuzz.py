"""Hostile input: only MalformedPacket may come out, always promptly, and the
compiled and pure-Python implementations agree on every input."""

from __future__ import annotations

import os
import types

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_tun.offload import GSO_NONE, MalformedPacket, VirtioNetHdr

from .conftest import PACKET_TYPES, PYTHON, SPEEDUPS
from .packets import (
    ACK,
    FIN,
    PSH,
    SYN,
    TCP,
    UDP,
    KernelRejects,
    flows,
    kernel_receive,
    super_packet,
    tcp_batches,
    tcp_packet,
    udp_batches,
    udp_packet,
)

IMPLS = [PYTHON] if SPEEDUPS is None else [PYTHON, SPEEDUPS]
# Kept small for the normal run; raise it for a longer fuzzing session, e.g.
# against a sanitizer build of the speedups.
N: int = int(os.environ.get("TRIO_TUN_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=N, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mutated(draw: st.DrawFn, packet: bytes) -> bytes:
    """A few random edits of a valid packet: byte flips, truncation, growth."""
    buf = bytearray(packet)
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["set", "set", "set", "truncate", "extend"]))
        if op == "set" and buf:
            # Headers are where the interesting bytes are.
            pos = draw(st.integers(0, min(len(buf) - 1, draw(st.sampled_from([60, 100, 70000])))))
            buf[pos] = draw(st.integers(0, 255))
        elif op == "truncate":
            del buf[draw(st.integers(0, len(buf))) :]
        else:
            buf += draw(st.binary(max_size=40))
    return bytes(buf)


_u16 = st.one_of(st.integers(0, 0xFFFF), st.sampled_from([0, 1, 6, 16, 20, 40, 0xFFFF]))
_fields = st.tuples(
    st.one_of(st.integers(0, 0xFF), st.sampled_from([0, 1, 2, 3])),
    st.one_of(st.integers(0, 0xFF), st.sampled_from([0, 1, 3, 4, 5, 0x81, 0x84, 0x85])),
    _u16,
    _u16,
    _u16,
    _u16,
)


@st.composite
def split_inputs(draw: st.DrawFn) -> tuple[tuple[int, ...], bytes]:
    kind = draw(st.sampled_from(["random", "mutated", "mutated", "fields"]))
    if kind == "random":
        return draw(_fields), draw(st.binary(max_size=200))
    flow = draw(st.one_of(flows(TCP), flows(UDP)))
    length = draw(st.integers(0, 4000))
    gso = draw(st.integers(1, 1500))
    fields, pkt = super_packet(flow, bytes(length), gso)
    if kind == "fields":
        return draw(_fields), pkt
    fields_l = list(fields)
    for _ in range(draw(st.integers(0, 2))):
        i = draw(st.integers(0, 5))
        fields_l[i] = draw(_fields)[i]
    return tuple(fields_l), draw(mutated(pkt))


def outcome(fn: object, *args: object) -> object:
    try:
        return fn(*args)  # type: ignore[operator]
    except MalformedPacket:
        return MalformedPacket


@FUZZ
@given(inp=split_inputs())
def test_split_only_raises_malformed(inp: tuple[tuple[int, ...], bytes]) -> None:
    fields, pkt = inp
    results = [outcome(impl.split_fields, *fields, pkt) for impl in IMPLS]
    assert all(r == results[0] for r in results), "implementations disagree"
    result = results[0]
    if result is not MalformedPacket:
        assert isinstance(result, list)
        assert all(type(s) in PACKET_TYPES for s in result)
        # Every output byte is accounted for: segments repeat headers only.
        assert sum(map(len, result)) >= len(pkt)
        # And a well-formed header was given, or split would have refused.
        VirtioNetHdr(*fields).validate(len(pkt))


@FUZZ
@given(fields=_fields, pkt=st.binary(max_size=100))
def test_split_with_header_only_raises_malformed(fields: tuple[int, ...], pkt: bytes) -> None:
    buf = VirtioNetHdr(*fields).pack() + pkt
    for impl in IMPLS:
        for n in (0, 5, len(buf)):
            outcome(impl.split_with_header, buf[:n])


@st.composite
def gro_inputs(draw: st.DrawFn) -> list[bytes]:
    batch = draw(st.one_of(tcp_batches(), udp_batches()))
    out = []
    for p in batch:
        roll = draw(st.integers(0, 9))
        if roll == 0:
            out.append(draw(st.binary(max_size=80)))
        elif roll < 4:
            out.append(draw(mutated(p)))
        else:
            out.append(p)
    return out


def run_table(impl: types.SimpleNamespace, batch: list[bytes], uso: bool) -> tuple[object, ...]:
    table = impl.GroTable(uso=uso)
    accepted = []
    for p in batch:
        try:
            table.add(p)
        except MalformedPacket:
            continue
        accepted.append(p)
    assert table.pending_packets == len(accepted)
    return table.flush(), accepted


@settings(max_examples=N // 2, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=gro_inputs(), uso=st.booleans())
def test_gro_only_raises_malformed(batch: list[bytes], uso: bool) -> None:
    results = [run_table(impl, batch, uso) for impl in IMPLS]
    assert all(r == results[0] for r in results), "implementations disagree"
    out, accepted = results[0]
    assert isinstance(out, list) and isinstance(accepted, list)
    wire = []
    for buf in out:
        hdr = VirtioNetHdr.unpack(buf)
        if hdr.gso_type == GSO_NONE:
            assert hdr.pack() == bytes(10)
            wire.append(buf[10:])
            continue
        # Whatever garbage came in, a merged write is one the kernel takes.
        try:
            segs = kernel_receive(buf)
        except KernelRejects as exc:  # pragma: no cover - a bug if reached
            raise AssertionError(f"kernel would reject a merged write: {exc}") from exc
        for impl in IMPLS:
            assert impl.split(hdr, buf[10:]) == segs
        wire.extend(segs)
    # Coalescing neither loses nor invents packets.  (Segments with DF may be
    # merged even when their IPv4 IDs do not count up, as RFC 6864 allows;
    # the kernel then renumbers them, so IDs are not compared for those.)
    assert sorted(map(without_atomic_id, wire)) == sorted(map(without_atomic_id, accepted))


def without_atomic_id(packet: bytes) -> bytes:
    if len(packet) >= 20 and packet[0] >> 4 == 4 and packet[6] & 0x40:
        return packet[:4] + bytes(2) + packet[6:10] + bytes(2) + packet[12:]
    return packet


@st.composite
def single_packets(draw: st.DrawFn) -> bytes:
    flow = draw(st.one_of(flows(TCP), flows(UDP)))
    payload = draw(st.binary(max_size=64))
    if flow.proto == TCP:
        flags = draw(st.sampled_from([ACK, ACK | PSH, ACK | FIN, SYN]))
        pkt = tcp_packet(flow, draw(st.integers(0, 0xFFFFFFFF)), payload, flags=flags)
    else:
        pkt = udp_packet(flow, payload)
    return draw(mutated(pkt))


@FUZZ
@given(data=st.one_of(st.binary(max_size=120), single_packets()))
def test_parse_agrees(data: bytes) -> None:
    results = [outcome(impl.parse, data) for impl in IMPLS]
    assert all(r == results[0] for r in results)


@settings(max_examples=N * 2 // 3, deadline=None)
@given(
    first=st.binary(max_size=80),
    ihl=st.sampled_from([0, 19, 20, 24, 40, 60, 70000]),
    thl=st.sampled_from([-1, 0, 7, 8, 12, 20, 32, 60]),
    gso=st.integers(-1, 0x10000),
    psh=st.sampled_from([0, 8, 255, 256, -1]),
    payloads=st.lists(st.binary(max_size=30), max_size=4),
    huge=st.booleans(),
)
def test_build_agrees(
    first: bytes, ihl: int, thl: int, gso: int, psh: int, payloads: list[bytes], huge: bool
) -> None:
    if first:
        first = bytes([0x45 if ihl == 20 else 0x60]) + first[1:]
    if huge:
        payloads = [*payloads, bytes(40000), bytes(40000)]
    results = []
    for impl in IMPLS:
        try:
            results.append(impl.build(first, ihl, ihl + thl, gso, psh, payloads))
        except ValueError:
            results.append(ValueError)
    assert all(r == results[0] for r in results)
