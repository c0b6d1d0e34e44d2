from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import types
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_tun import offload
from trio_tun.offload import pseudo_header_sum
from trio_tun.offload.checksum import fold

from .conftest import needs_speedups
from .packets import naive_checksum, naive_sum, pseudo


def test_rfc1071_example(impl: types.SimpleNamespace) -> None:
    # RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert impl.ones_complement_sum(data) == 0xDDF2
    assert impl.checksum(data) == 0x220D


def test_ipv4_header_vector(impl: types.SimpleNamespace) -> None:
    # A captured IPv4 header whose checksum is b861.
    hdr = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert impl.checksum(hdr) == 0xB861
    with_sum = hdr[:10] + b"\xb8\x61" + hdr[12:]
    assert impl.ones_complement_sum(with_sum) == 0xFFFF
    assert impl.checksum(with_sum) == 0


@pytest.mark.parametrize(
    "data,expected",
    [
        (b"", 0),
        (b"\x00", 0),
        (b"\x01", 0x0100),  # odd byte is the high byte of a padded word
        (b"\x00\x01", 0x0001),
        (b"\xff\xff", 0xFFFF),
        (b"\xff\xff\x00\x01", 0x0001),  # end-around carry
        (b"\xff\xff" * 1000, 0xFFFF),  # non-zero never folds to zero
        (b"\x80\x00\x80\x00", 0x0001),
        (b"\x12\x34\x56", 0x6834),
    ],
)
def test_small_vectors(impl: types.SimpleNamespace, data: bytes, expected: int) -> None:
    assert impl.ones_complement_sum(data) == expected
    assert impl.checksum(data) == ~expected & 0xFFFF


def test_initial_chains_sums(impl: types.SimpleNamespace) -> None:
    a, b = bytes(range(40)), bytes(range(100, 180))
    assert impl.ones_complement_sum(b, impl.ones_complement_sum(a)) == naive_sum(a + b)
    assert impl.ones_complement_sum(b"", 0x1FFFE) == 0xFFFF
    assert impl.ones_complement_sum(b"", 0xFFFFFFFF) == 0xFFFF
    assert impl.ones_complement_sum(data=b"\x00\x01", initial=1) == 2


@pytest.mark.parametrize("initial", [-1, 1 << 32, 1 << 80])
def test_initial_out_of_range(impl: types.SimpleNamespace, initial: int) -> None:
    with pytest.raises(ValueError):
        impl.ones_complement_sum(b"ab", initial)


def test_buffer_types(impl: types.SimpleNamespace) -> None:
    data = bytes(range(256)) * 3 + b"\x07"
    want = naive_sum(data)
    assert impl.ones_complement_sum(bytearray(data)) == want
    assert impl.ones_complement_sum(memoryview(data)) == want
    assert impl.ones_complement_sum(memoryview(data)[1:]) == naive_sum(data[1:])
    even = data[:-1]
    # A wide-format memoryview is summed by its bytes, not its items.
    assert impl.ones_complement_sum(memoryview(even).cast("H")) == naive_sum(even)
    # Non-contiguous views are read the way bytes() reads them.
    assert impl.ones_complement_sum(memoryview(data)[::2]) == naive_sum(data[::2])


def test_rejects_non_buffers(impl: types.SimpleNamespace) -> None:
    with pytest.raises(TypeError):
        impl.checksum("text")


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300), initial=st.integers(0, 0xFFFFFFFF))
def test_against_naive(data: bytes, initial: int) -> None:
    want = naive_sum(data)
    # naive_sum folds as it goes; fold the initial in the same way.
    want = fold(want + initial)
    for impl in (offload.reference, offload):
        assert impl.ones_complement_sum(data, initial) == want
        assert impl.checksum(data, initial) == ~want & 0xFFFF
    if not initial:
        assert offload.checksum(data) == naive_checksum(data)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=2000), initial=st.integers(0, 0xFFFFFFFF))
def test_speedups_identical(speedups: types.SimpleNamespace, data: bytes, initial: int) -> None:
    assert speedups.ones_complement_sum(data, initial) == offload.reference.ones_complement_sum(
        data, initial
    )
    assert speedups.checksum(data, initial) == offload.reference.checksum(data, initial)


@settings(max_examples=100, deadline=None)
@given(
    v6=st.booleans(),
    addrs=st.binary(min_size=32, max_size=32),
    proto=st.integers(0, 255),
    length=st.integers(0, 0xFFFF),
)
def test_pseudo_header_sum(v6: bool, addrs: bytes, proto: int, length: int) -> None:
    n = 16 if v6 else 4
    src, dst = addrs[:n], addrs[16 : 16 + n]
    assert pseudo_header_sum(src, dst, proto, length) == naive_sum(pseudo(src, dst, proto, length))


def test_pseudo_header_sum_rejects_bad_addresses() -> None:
    with pytest.raises(ValueError):
        pseudo_header_sum(bytes(4), bytes(16), 6, 20)
    with pytest.raises(ValueError):
        pseudo_header_sum(bytes(5), bytes(5), 6, 20)
    with pytest.raises(ValueError):
        pseudo_header_sum(bytes(4), bytes(4), 256, 20)


def test_implementation_flag() -> None:
    from trio_tun.offload import _accel  # noqa: F401  (only to know whether it exists)

    assert offload.implementation in ("python", "speedups")


# Every length up to 300 (each tail of the 64-, 16- and 4-byte loops, odd
# and even), a segment and a super-packet, at every alignment up to 31.
_LOOP_LENGTHS = [*range(301), 1348, 1349, 65535, 65536]
_LOOP_CHECK = """
import json, os, sys
from trio_tun.offload import _speedups
data = bytes(range(256)) * 300
out = {"loop": _speedups.CHECKSUM_LOOP, "sums": []}
for n in json.loads(sys.argv[1]):
    for align in range(0, 32, 3):
        view = memoryview(data)[align : align + n]
        out["sums"].append(_speedups.ones_complement_sum(view))
print(json.dumps(out))
"""


def _loop_sums(env: dict[str, str]) -> tuple[str, list[int]]:
    done = subprocess.run(
        [sys.executable, "-c", _LOOP_CHECK, json.dumps(_LOOP_LENGTHS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    out = json.loads(done.stdout)
    return out["loop"], out["sums"]


@needs_speedups
@pytest.mark.skipif(platform.machine() != "x86_64", reason="the SIMD loops are x86-64's")
def test_each_checksum_loop_matches_the_naive_sum() -> None:
    data = bytes(range(256)) * 300
    expected = [
        naive_sum(data[align : align + n]) for n in _LOOP_LENGTHS for align in range(0, 32, 3)
    ]
    env = {k: v for k, v in os.environ.items() if k != "TRIO_TUN_NO_AVX2"}
    loop, sums = _loop_sums(env)
    assert sums == expected, loop
    has_avx2 = "avx2" in Path("/proc/cpuinfo").read_text().split()
    assert loop == ("avx2" if has_avx2 else "sse2")
    # The SSE2 loop, which CPUs without AVX2 run: forced, and checked too.
    loop, sums = _loop_sums({**env, "TRIO_TUN_NO_AVX2": "1"})
    assert (loop, sums == expected) == ("sse2", True)
