"""batch_sizes, compiled and reference: the same answers and the same errors,
for every kind of buffer a batch may hold, and no crash when an item's
``__len__`` changes the list being measured."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzz.harnesses import _Shrinking  # the fuzzers' list-emptying datagram
from trio_tun.offload import reference

from .conftest import PYTHON, SPEEDUPS, needs_speedups

Item = bytes | bytearray | memoryview


@st.composite
def items(draw: st.DrawFn) -> Item:
    data = draw(st.binary(max_size=2000))
    kind = draw(st.sampled_from(["bytes", "bytearray", "memoryview", "slice"]))
    if kind == "bytearray":
        return bytearray(data)
    if kind == "memoryview":
        return memoryview(data)
    if kind == "slice":
        return memoryview(b"\x00" + data)[1:]
    return data


def expected(batch: list[Item]) -> tuple[int, int, int]:
    sizes = [len(item) for item in batch]
    return (min(sizes), max(sizes), sum(sizes)) if sizes else (0, 0, 0)


@given(st.lists(items(), max_size=80))
def test_smallest_largest_total(impl: types.SimpleNamespace, batch: list[Item]) -> None:
    assert impl.batch_sizes(batch) == expected(batch)
    # Any iterable, not only lists: a tuple and a one-shot generator.
    assert impl.batch_sizes(tuple(batch)) == expected(batch)
    assert impl.batch_sizes(item for item in batch) == expected(batch)


@pytest.mark.parametrize(
    ("batch", "want"),
    [
        ([], (0, 0, 0)),
        ([b""], (0, 0, 0)),
        ([b"abc"], (3, 3, 3)),
        # The first item is not special: the smallest may come later, or be empty.
        ([b"abcd", b"ab", b"abc"], (2, 4, 9)),
        ([b"ab", b"", b"abc"], (0, 3, 5)),
        ([b"a" * 70_000, b"b"], (1, 70_000, 70_001)),
    ],
)
def test_known_batches(
    impl: types.SimpleNamespace, batch: list[bytes], want: tuple[int, int, int]
) -> None:
    assert impl.batch_sizes(batch) == want


def test_errors_match(impl: types.SimpleNamespace) -> None:
    with pytest.raises(TypeError):
        impl.batch_sizes([b"ab", 3])
    with pytest.raises(TypeError):
        impl.batch_sizes(5)


class _Huge:
    def __len__(self) -> int:
        return sys.maxsize


def test_a_total_beyond_ssize_t_is_an_overflow_error(impl: types.SimpleNamespace) -> None:
    assert impl.batch_sizes([_Huge()]) == (sys.maxsize, sys.maxsize, sys.maxsize)
    with pytest.raises(OverflowError, match="does not fit"):
        impl.batch_sizes([_Huge(), b"x"])


@needs_speedups
def test_len_that_changes_the_list_is_survived() -> None:
    assert SPEEDUPS is not None
    batch: list[Any] = [b"ab"]
    batch.append(_Shrinking(batch, 7))
    batch.extend(bytes(n) for n in range(1, 50))
    # The compiled loop re-reads the list's size: it stops where the list now
    # ends, having measured what it saw, and frees nothing it still uses.
    assert SPEEDUPS.batch_sizes(batch) == (2, 7, 9)
    assert batch == []


def test_reference_is_what_the_package_exports_without_speedups() -> None:
    assert PYTHON.batch_sizes is reference.batch_sizes
