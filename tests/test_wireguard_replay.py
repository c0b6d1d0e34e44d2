"""The replay window against a plain set-based reference model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

# The protocol core needs `cryptography` (X25519, ChaCha20-Poly1305).
pytest.importorskip("cryptography")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from wgpeer import REJECT_AFTER_MESSAGES, WINDOW_SIZE, ReplayFilter


class Reference:
    """Accept a counter once, below the limit, and no more than WINDOW_SIZE-1 behind the max."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[int] = set()

    def accept(self, counter: int) -> bool:
        if counter >= self.limit or counter in self.seen:
            return False
        if self.seen and max(self.seen) - counter >= WINDOW_SIZE:
            return False
        self.seen.add(counter)
        return True


def counters(limit: int) -> st.SearchStrategy[list[int]]:
    near = st.integers(0, 3 * WINDOW_SIZE)
    edges = st.sampled_from([0, 1, WINDOW_SIZE - 1, WINDOW_SIZE, WINDOW_SIZE + 1, limit - 1, limit])
    far = st.integers(0, limit + 5)
    return st.lists(st.one_of(near, edges, far), max_size=200)


@settings(deadline=None)
@given(st.data(), st.sampled_from([REJECT_AFTER_MESSAGES, 3 * WINDOW_SIZE, 100]))
def test_filter_matches_reference(data: st.DataObject, limit: int) -> None:
    seq = data.draw(counters(limit))
    ours, ref = ReplayFilter(limit), Reference(limit)
    for counter in seq:
        expected = ref.accept(counter)
        assert ours.check(counter) == expected
        assert ours.update(counter) == expected


@settings(deadline=None)
@given(st.lists(st.integers(0, 5 * WINDOW_SIZE), max_size=100))
def test_check_alone_changes_nothing(seq: list[int]) -> None:
    f = ReplayFilter()
    for counter in seq:
        f.check(counter)
    assert f.highest == -1
    assert f.update(0)


def test_window_edges() -> None:
    f = ReplayFilter()
    assert f.update(WINDOW_SIZE)
    assert f.check(1)  # exactly WINDOW_SIZE - 1 behind
    assert not f.check(0)  # WINDOW_SIZE behind
    assert not f.update(0)
    assert f.update(1) and not f.update(1)
    assert not f.update(REJECT_AFTER_MESSAGES)
    assert f.update(REJECT_AFTER_MESSAGES - 1)
    assert not f.check(WINDOW_SIZE)


def test_ring_slots_are_reused_exactly() -> None:
    # Strides around the ring's size make later counters land on slots that earlier
    # ones used; each slot must be cleared as the window passes over it.
    for stride in (1, 7, 8, 9, 63, 64, 1000, 4095, 8000, 8191, 8192, 8193, 9000):
        ours, ref = ReplayFilter(), Reference(REJECT_AFTER_MESSAGES)
        for step in range(40):
            for counter in (step * stride, step * stride - 3, step * stride + 5, step * stride):
                if counter >= 0:
                    assert ours.update(counter) == ref.accept(counter), (stride, counter)
