"""A hint to glibc's malloc: keep a forwarder's working set instead of returning it per batch.

glibc gives the free memory at the top of its heap back to the kernel as soon
as more than ``M_TRIM_THRESHOLD`` of it (128 KiB until glibc adapts it) is
free there.  A forwarder with offload on frees more than that after almost
every batch: the segments of a few 64 KiB super-packets and their coalesced
copies.  Each batch then went back to the kernel (``brk``) and the next one
faulted it in again, a zeroed page at a time: with 4 TCP flows through one
forwarder, 1,000-4,000 ``brk`` calls and 45,000-90,000 page faults a second.
With the hint, the same ``trio-speedups`` forwarder (bench/forward.py) moved
9.13 Gbit/s against 5.44 without it (three interleaved pairs).

glibc adapts the threshold itself (mallopt(3)): when it frees a block that was
big enough to get its own ``mmap`` (over ``M_MMAP_THRESHOLD``), it raises
``M_MMAP_THRESHOLD`` to that block's size and ``M_TRIM_THRESHOLD`` to twice
that.  :func:`adapt_malloc` lets it do so once, with a block of
:data:`HINT_BYTES`, as if the program had used such a buffer.  Nothing is
switched off: glibc keeps adapting upwards as before, and a threshold that the
program or its environment fixed (``mallopt``, ``MALLOC_TRIM_THRESHOLD_``,
``GLIBC_TUNABLES``) stays as it is, because glibc stops adapting once one is
set.  The cost is that up to twice :data:`HINT_BYTES` of freed memory may stay
with the process instead of going back to the kernel.

Other C libraries (musl, macOS, Windows) have no such thresholds; the hint is
not given there.
"""

from __future__ import annotations

import os
import sys
from typing import Final

#: Size of the block freed once: glibc's thresholds become 4 MiB (mmap) and
#: 8 MiB (trim), far above a default batch's 1 MiB or so.
HINT_BYTES: Final = 4 * 1024 * 1024

_given = False


if sys.platform == "linux":

    def _is_glibc() -> bool:
        try:
            version = os.confstr("CS_GNU_LIBC_VERSION")
        except (ValueError, OSError):
            return False
        return version is not None and version.startswith("glibc")

else:

    def _is_glibc() -> bool:
        return False


def adapt_malloc() -> bool:
    """Give glibc the hint, once per process; return whether it has been given.

    Called when a device with offload or a socket with ``UDP_GRO`` is opened.
    False where the C library is not glibc (or cannot be reached).
    """
    global _given
    if _given:
        return True
    if not _is_glibc():
        return False
    import ctypes  # here: most programs never get this far

    try:
        libc = ctypes.CDLL(None)
        malloc, free = libc.malloc, libc.free
    except (OSError, AttributeError):
        return False
    malloc.restype = ctypes.c_void_p
    malloc.argtypes = [ctypes.c_size_t]
    free.restype = None
    free.argtypes = [ctypes.c_void_p]
    # Never touched, so never faulted in: the mmap and munmap are all it costs.
    block = malloc(HINT_BYTES)
    if not block:
        return False
    free(block)
    _given = True
    return True
