"""The exception hierarchy.

Resource errors inherit from *both* Trio's and anyio's classes of the same
name, so ``except trio.ClosedResourceError`` and ``except
anyio.ClosedResourceError`` both work whichever event loop the stream runs on.
"""

from __future__ import annotations

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
