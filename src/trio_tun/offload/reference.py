"""The pure-Python reference implementations, whatever ``implementation`` says.

``from trio_tun.offload import reference`` gives the same names as the package with
the compiled speedups left out, so tests (and the curious) can compare.
"""

from __future__ import annotations

from .batch import batch_sizes
from .checksum import checksum, ones_complement_sum, pseudo_header_sum
from .gro import GroTable, coalesce
from .gso import finish_checksum, split, split_fields, split_with_header
from .udp import gso_runs, split_gro

__all__ = [
    "GroTable",
    "batch_sizes",
    "checksum",
    "coalesce",
    "finish_checksum",
    "gso_runs",
    "ones_complement_sum",
    "pseudo_header_sum",
    "split",
    "split_fields",
    "split_gro",
    "split_with_header",
]
