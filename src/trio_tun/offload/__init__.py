"""Sans-I/O offload: virtio headers, checksums, GSO splitting and GRO coalescing.

Bytes in, bytes out: nothing here awaits, makes a syscall or imports the rest of
trio_tun.  The hot paths come from the optional compiled ``_speedups`` module
when it was built, unless ``TRIO_TUN_PURE_PYTHON=1``; ``implementation`` says
which.  The pure-Python modules (:mod:`.checksum`, :mod:`.gso`, :mod:`.gro`,
collected in :mod:`.reference`) are the reference either way.  On x86-64 the
compiled checksum runs an AVX2 loop when the CPU has one (an SSE2 loop with
``TRIO_TUN_NO_AVX2=1`` or without AVX2); ``_speedups.CHECKSUM_LOOP`` says which.
"""

from __future__ import annotations

import os
from typing import Final

from . import reference
from .checksum import pseudo_header_sum
from .errors import MalformedPacket
from .gso import finish_checksum
from .virtio import (
    DATA_VALID,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP,
    GSO_UDP_L4,
    NEEDS_CSUM,
    VIRTIO_NET_HDR_LEN,
    ZERO_HDR,
    VirtioNetHdr,
)

__all__ = [
    "DATA_VALID",
    "GSO_ECN",
    "GSO_NONE",
    "GSO_TCPV4",
    "GSO_TCPV6",
    "GSO_UDP",
    "GSO_UDP_L4",
    "NEEDS_CSUM",
    "VIRTIO_NET_HDR_LEN",
    "ZERO_HDR",
    "GroTable",
    "MalformedPacket",
    "VirtioNetHdr",
    "batch_sizes",
    "checksum",
    "coalesce",
    "finish_checksum",
    "gso_runs",
    "implementation",
    "ones_complement_sum",
    "pseudo_header_sum",
    "reference",
    "split",
    "split_fields",
    "split_gro",
    "split_with_header",
]


# The reference implementations first, so the names are typed by them ...
from .reference import (
    GroTable,
    batch_sizes,
    checksum,
    coalesce,
    gso_runs,
    ones_complement_sum,
    split,
    split_fields,
    split_gro,
    split_with_header,
)

# ... then replaced by the compiled ones when they are there and wanted.
if os.environ.get("TRIO_TUN_PURE_PYTHON", "") != "1":
    try:
        from . import _accel
    except ImportError:
        _accel = None  # type: ignore[assignment]
else:
    _accel = None  # type: ignore[assignment]

if _accel is not None:
    GroTable = _accel.GroTable  # type: ignore[misc]
    checksum = _accel.checksum
    coalesce = _accel.coalesce
    ones_complement_sum = _accel.ones_complement_sum
    split = _accel.split
    split_fields = _accel.split_fields
    split_with_header = _accel.split_with_header
    split_gro = _accel.split_gro
    gso_runs = _accel.gso_runs
    batch_sizes = _accel.batch_sizes

#: ``"speedups"`` when the compiled hot paths are in use, else ``"python"``.
implementation: Final[str] = "python" if _accel is None else "speedups"
