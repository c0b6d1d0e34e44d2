"""Summaries of a batch of packets or datagrams, for the checks and counters of a batch call."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sized

__all__ = ["batch_sizes"]


def batch_sizes(items: Iterable[Sized], /) -> tuple[int, int, int]:
    """``(smallest, largest, total)`` of the items' lengths; ``(0, 0, 0)`` for none.

    One pass gives what a batch call needs before it touches the kernel (is
    any packet empty, is any too long) and what it counts afterwards (bytes).
    ``len()`` over ``map`` builds an int object per item, which is several
    per cent of a tunnel endpoint's time; the compiled twin builds none.

    Raises:
        TypeError: an item has no length.
        OverflowError: the total does not fit in a ``Py_ssize_t`` (only items
            that misreport their length can get there).
    """
    sizes = list(map(len, items))
    if not sizes:
        return (0, 0, 0)
    total = sum(sizes)
    if total > sys.maxsize:
        raise OverflowError("the batch's total size does not fit in a Py_ssize_t")
    return (min(sizes), max(sizes), total)
