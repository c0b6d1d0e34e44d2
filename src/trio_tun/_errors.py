"""The exception hierarchy.

Resource errors inherit from *both* Trio's and anyio's classes of the same
name, so ``except trio.ClosedResourceError`` and ``except
anyio.ClosedResourceError`` both work whichever event loop the stream runs on.
"""

from __future__ import annotations

import errno
import os
from typing import Final

import anyio
import trio


class TunError(Exception):
    """Base class of the errors that only trio-tun raises."""


class ClosedResourceError(TunError, trio.ClosedResourceError, anyio.ClosedResourceError):
    """The stream was closed by this process (``aclose()``) and can't be used."""


class BrokenResourceError(TunError, trio.BrokenResourceError, anyio.BrokenResourceError):
    """The device went away underneath the stream (deleted, or its namespace removed)."""


class BusyResourceError(TunError, trio.BusyResourceError, anyio.BusyResourceError):
    """Two tasks used the same direction of one stream at the same time."""

    def __init__(self, action: str) -> None:
        # anyio's class takes the action; Trio's takes a free-form message.
        Exception.__init__(self, f"another task is already {action} on this stream")


class TunPermissionError(TunError, PermissionError):
    """The process lacks a privilege; the message names which one."""


class TunUnavailableError(TunError, FileNotFoundError):
    """The kernel offers no TUN/TAP driver (``/dev/net/tun`` missing)."""


class DeviceBusyError(TunError, OSError):
    """The requested device name is taken by a device this process can't attach to."""


class OffloadUnavailableError(TunError, OSError):
    """``offload=True`` was asked for but the kernel refused the offload setup."""


class NoDeviceControlError(TunError, RuntimeError):
    """The stream wraps an fd whose device can't be configured from here."""


# -- errno translation, in one place ------------------------------------------

# A read or write failing with one of these says the device is gone for good
# (EBADFD is Linux's own; the BSDs and macOS report ENXIO, ENODEV or EPIPE).
BROKEN_ERRNOS: Final = frozenset(
    code
    for code in (
        getattr(errno, "EBADFD", None),
        errno.ENODEV,
        errno.ENXIO,
        errno.EPIPE,
    )
    if code is not None
)
# A write failing with one of these refused that one packet; the device is fine.
DROP_ERRNOS: Final = frozenset({errno.EINVAL, errno.EIO, errno.ENOBUFS, errno.EMSGSIZE})


def io_error(code: int | None, doing: str, *, closed: bool = False) -> Exception | None:
    """The resource error a failed read or write means, or ``None`` to re-raise as is."""
    if closed or code == errno.EBADF:
        return ClosedResourceError("this stream was closed")
    if code in BROKEN_ERRNOS:
        return BrokenResourceError(f"{doing} failed: the device is gone ({os.strerror(code or 0)})")
    return None


def control_error(code: int | None, what: str, *, privilege: str) -> Exception | None:
    """The exception a failed device-control call means (netlink, ioctl, routing socket,
    IP Helper alike), or ``None`` when *code* says nothing more than the OSError did.

    *privilege* names what the caller lacks on EPERM/EACCES, in the system's own terms.
    """
    if code is None:
        return None
    message = f"{what}: {os.strerror(code)}"
    if code in (errno.EPERM, errno.EACCES):
        return TunPermissionError(code, f"{what} needs {privilege}")
    if code in (errno.ENODEV, errno.ENXIO):
        return BrokenResourceError(f"{what}: the device no longer exists")
    if code == errno.EEXIST:
        return FileExistsError(code, message)
    if code in (errno.EADDRNOTAVAIL, errno.ESRCH, errno.ENOENT):
        return LookupError(message)
    if code == errno.EINVAL:
        return ValueError(message)
    return OSError(code, message)
