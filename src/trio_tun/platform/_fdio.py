"""The POSIX file-descriptor calls of the fd-based packet streams, named once.

On every POSIX system these are ``os``'s own functions (the very same objects,
so the Linux hot path is unchanged).  Windows has no ``readv``/``writev`` and,
before Python 3.12, no ``get_blocking``: the fd streams are never used there
(wintun has its own stream in ``platform/windows.py``), but ``trio_tun`` must
still import and type-check, so Windows gets stand-ins that refuse politely.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["get_blocking", "readv", "set_blocking", "writev"]

if sys.platform == "win32":

    def _no_fds() -> OSError:
        return OSError(
            errno.ENOTSUP, "file-descriptor packet streams do not exist on Windows (use wintun)"
        )

    def readv(fd: int, buffers: Sequence[Any], /) -> int:
        raise _no_fds()

    def writev(fd: int, buffers: Sequence[Any], /) -> int:
        raise _no_fds()

    def get_blocking(fd: int, /) -> bool:
        raise _no_fds()

    def set_blocking(fd: int, blocking: bool, /) -> None:
        raise _no_fds()

else:
    from os import get_blocking, readv, set_blocking, writev
