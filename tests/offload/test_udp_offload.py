"""The sans-I/O UDP offload helpers: run planning, GRO splitting, cmsg parsing."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_tun.offload import udp
from trio_tun.offload.udp import GRO_MALFORMED, SOL_UDP, UDP_GRO, gso_runs, split_gro

MSG_TRUNC = 0x20
MSG_CTRUNC = 0x08

# Sizes drawn from a few values so that runs of equal sizes actually happen.
datagram = st.one_of(
    st.sampled_from([0, 1, 7, 100, 1400]).map(
        lambda n: bytes(range(256)) * (n // 256) + b"x" * (n % 256)
    ),
    st.binary(max_size=300),
)


@settings(max_examples=300)
@given(
    st.lists(datagram, max_size=200),
    st.integers(min_value=1, max_value=70),
    st.integers(min_value=1, max_value=70_000),
)
def test_split_gro_inverts_gso_runs(
    datagrams: list[bytes], max_segments: int, max_bytes: int
) -> None:
    runs = gso_runs(datagrams, max_segments, max_bytes)
    rebuilt: list[bytes] = []
    for gso_size, run in runs:
        assert run
        assert len(run) <= max_segments
        if len(run) > 1:
            # What one UDP_SEGMENT send may carry: all gso_size but a shorter last.
            assert sum(map(len, run)) <= max_bytes
            assert all(len(d) == gso_size for d in run[:-1])
            assert 0 < len(run[-1]) <= gso_size
        pieces = split_gro(b"".join(run), gso_size)
        assert pieces == [bytes(d) for d in run]
        rebuilt.extend(pieces)
    assert rebuilt == datagrams


def test_gso_runs_merges_what_it_can() -> None:
    a, b = b"a" * 100, b"b" * 40
    assert gso_runs([a, a, a, b, a, a]) == [(100, [a, a, a, b]), (100, [a, a])]
    # A larger datagram starts a new run; an empty one is always alone.
    assert gso_runs([b, a, b"", b"", a]) == [
        (40, [b]),
        (100, [a]),
        (0, [b""]),
        (0, [b""]),
        (100, [a]),
    ]
    # Limits: segments and bytes.
    assert [len(r) for _, r in gso_runs([a] * 130)] == [64, 64, 2]
    assert [len(r) for _, r in gso_runs([a] * 10, max_bytes=350)] == [3, 3, 3, 1]
    assert gso_runs([b"x" * 70_000, b"x"]) == [(70_000, [b"x" * 70_000]), (1, [b"x"])]
    with pytest.raises(ValueError, match="at least 1"):
        gso_runs([a], max_segments=0)


def test_max_gso_bytes() -> None:
    assert udp.max_gso_bytes(ipv6=False) == 65535 - 8 - 20
    assert udp.max_gso_bytes(ipv6=True) == 65535 - 8 - 40


def test_split_gro_edges() -> None:
    assert split_gro(b"abcdefg", 3) == [b"abc", b"def", b"g"]
    assert split_gro(b"abcdef", 3) == [b"abc", b"def"]
    assert split_gro(b"abc", 0) == [b"abc"]
    assert split_gro(b"abc", 10) == [b"abc"]
    assert split_gro(memoryview(bytearray(b"abcd")), 2) == [b"ab", b"cd"]
    with pytest.raises(ValueError, match="negative"):
        split_gro(b"abc", -1)


def _gro(value: int) -> tuple[int, int, bytes]:
    return (SOL_UDP, UDP_GRO, struct.pack("=i", value))


def test_parse_gro_cmsgs_cases() -> None:
    parse = udp.parse_gro_cmsgs
    assert parse([], 0) == (0, 0)
    assert parse([_gro(1400)], 0) == (1400, 0)
    # An unknown item is counted but doesn't spoil a good segment size.
    assert parse([(0, 8, b"\0" * 4), _gro(1400)], 0) == (1400, 1)
    # Anything that makes the cut points untrustworthy drops the message.
    assert parse([_gro(0)], 0) == (GRO_MALFORMED, 1)
    assert parse([_gro(-5)], 0) == (GRO_MALFORMED, 1)
    assert parse([(SOL_UDP, UDP_GRO, b"\x01\x02")], 0) == (GRO_MALFORMED, 1)
    assert parse([_gro(1400), _gro(1400)], 0) == (GRO_MALFORMED, 1)
    assert parse([_gro(1400)], MSG_CTRUNC) == (GRO_MALFORMED, 1)
    assert parse([], MSG_TRUNC) == (GRO_MALFORMED, 1)
    # Other flags (e.g. MSG_EOR, MSG_CONFIRM) mean nothing here.
    assert parse([], 0x80) == (0, 0)


cmsg = st.tuples(
    st.sampled_from([SOL_UDP, 0, 41, 1]),
    st.sampled_from([UDP_GRO, 103, 8, 1]),
    st.one_of(
        st.binary(max_size=12), st.integers(-(2**31), 2**31 - 1).map(lambda v: struct.pack("=i", v))
    ),
)


@given(st.lists(cmsg, max_size=5), st.integers(0, 0xFFFF))
def test_parse_gro_cmsgs_counts_never_raises(
    ancdata: list[tuple[int, int, bytes]], flags: int
) -> None:
    gso_size, bad = udp.parse_gro_cmsgs(ancdata, flags)
    assert gso_size == GRO_MALFORMED or gso_size >= 0
    assert 0 <= bad <= len(ancdata) + 1
    good = [item for item in ancdata if item[:2] == (SOL_UDP, UDP_GRO)]
    clean = (
        not flags & (MSG_TRUNC | MSG_CTRUNC)
        and len(good) <= 1
        and all(len(d) == 4 and struct.unpack("=i", d)[0] > 0 for _, _, d in good)
    )
    if clean:
        assert bad == len(ancdata) - len(good)
        assert gso_size == (struct.unpack("=i", good[0][2])[0] if good else 0)
    else:
        assert gso_size == GRO_MALFORMED
        assert bad >= 1


try:
    from trio_tun.offload import _accel
except ImportError:  # not built
    _accel = None  # type: ignore[assignment]

needs_speedups = pytest.mark.skipif(_accel is None, reason="_speedups extension not built")


@needs_speedups
@settings(max_examples=300)
@given(
    st.lists(datagram | st.builds(bytearray, datagram), max_size=200),
    st.integers(min_value=1, max_value=70),
    st.integers(min_value=1, max_value=70_000),
)
def test_compiled_gso_runs_groups_exactly_as_the_reference(
    datagrams: list[bytes | bytearray], max_segments: int, max_bytes: int
) -> None:
    ours = _accel.gso_runs(datagrams, max_segments, max_bytes)
    assert ours == gso_runs(datagrams, max_segments, max_bytes)
    # The very objects are grouped, never copies.
    flat = [d for _, run in ours for d in run]
    assert all(a is b for a, b in zip(flat, datagrams, strict=True))


@needs_speedups
@settings(max_examples=300)
@given(st.binary(max_size=5000), st.integers(min_value=0, max_value=6000))
def test_compiled_split_gro_cuts_exactly_as_the_reference(data: bytes, gso_size: int) -> None:
    for buffer in (data, bytearray(data), memoryview(data)):
        assert _accel.split_gro(buffer, gso_size) == split_gro(buffer, gso_size)


@needs_speedups
def test_compiled_helpers_refuse_what_the_reference_refuses() -> None:
    for impl in (udp, _accel):
        with pytest.raises(ValueError):
            impl.split_gro(b"abc", -1)
        with pytest.raises(ValueError):
            impl.gso_runs([b"a"], 0, 10)
        with pytest.raises(ValueError):
            impl.gso_runs([b"a"], 1, 0)
        with pytest.raises(TypeError):
            impl.gso_runs([b"a", 3], 4, 100)
