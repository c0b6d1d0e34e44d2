"""coalesce() then split() gives back the original segments, byte for byte."""

from __future__ import annotations

from collections import defaultdict

from hypothesis import given, settings

from trio_tun.offload import GSO_NONE, VirtioNetHdr

from .conftest import PYTHON, SPEEDUPS
from .packets import dpkt_check, flow_key_of, kernel_receive, tcp_batches, udp_batches

IMPLS = [PYTHON] if SPEEDUPS is None else [PYTHON, SPEEDUPS]


def by_flow(packets: list[bytes]) -> dict[object, list[bytes]]:
    flows: dict[object, list[bytes]] = defaultdict(list)
    for p in packets:
        flows[flow_key_of(p)].append(p)
    return flows


def check_roundtrip(batch: list[bytes], *, uso: bool) -> None:
    outputs = [impl.coalesce(batch, uso=uso) for impl in IMPLS]
    # The compiled table must make exactly the same buffers.
    assert all(out == outputs[0] for out in outputs)
    out = outputs[0]
    for impl in IMPLS:
        wire: list[bytes] = []
        for buf in out:
            hdr = VirtioNetHdr.unpack(buf)
            segs = impl.split(hdr, buf[10:])
            # The kernel would accept the write and make the same packets.
            assert kernel_receive(buf) == segs
            if hdr.gso_type != GSO_NONE:
                assert len(segs) >= 2
                for seg in segs:
                    dpkt_check(seg)
            wire.extend(segs)
        assert sorted(wire) == sorted(batch)
        # Nothing is reordered within a flow (ICMP has no flow: key None).
        got, want = by_flow(wire), by_flow(batch)
        assert got.keys() == want.keys()
        for key in want:
            if key is not None:
                assert got[key] == want[key]


@settings(max_examples=150, deadline=None)
@given(batch=tcp_batches())
def test_tcp_roundtrip(batch: list[bytes]) -> None:
    check_roundtrip(batch, uso=False)


@settings(max_examples=100, deadline=None)
@given(batch=udp_batches())
def test_udp_roundtrip(batch: list[bytes]) -> None:
    check_roundtrip(batch, uso=True)
    check_roundtrip(batch, uso=False)
