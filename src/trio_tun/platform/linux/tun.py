"""Linux: ``/dev/net/tun`` and its ioctls.

Every function here is synchronous and quick; nothing here talks netlink
(that is ``netlink.py``) or waits for readiness (that is the port's job).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys
from typing import Any, Final

from ..._config import FULL_OFFLOAD, NO_OFFLOAD, TCP_OFFLOAD, OffloadFlags
from ..._errors import (
    DeviceBusyError,
    OffloadUnavailableError,
    TunPermissionError,
    TunUnavailableError,
)

if sys.platform == "win32":
    # Only Linux calls into this module, but it must import and type-check
    # everywhere (mypy checks every backend as every system).

    class _NoFcntl:
        @staticmethod
        def ioctl(fd: int, request: int, arg: int | bytes = 0, /) -> Any:
            raise OSError(errno.ENOTSUP, "ioctl() does not exist on Windows")

    fcntl = _NoFcntl()
    _OPEN_FLAGS: Final = 0
else:
    import fcntl

    _OPEN_FLAGS: Final = os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC

TUN_PATH: Final = "/dev/net/tun"

# <linux/if_tun.h>
TUNSETIFF: Final = 0x400454CA
TUNSETPERSIST: Final = 0x400454CB
TUNSETOWNER: Final = 0x400454CC
TUNSETGROUP: Final = 0x400454CE
TUNGETFEATURES: Final = 0x800454CF
TUNSETOFFLOAD: Final = 0x400454D0
TUNGETIFF: Final = 0x800454D2
TUNSETQUEUE: Final = 0x400454D9

IFF_TUN: Final = 0x0001
IFF_TAP: Final = 0x0002
IFF_MULTI_QUEUE: Final = 0x0100
IFF_ATTACH_QUEUE: Final = 0x0200
IFF_DETACH_QUEUE: Final = 0x0400
IFF_PERSIST: Final = 0x0800
IFF_NO_PI: Final = 0x1000
IFF_VNET_HDR: Final = 0x4000

_IFREQ: Final = struct.Struct("16sH22x")  # struct ifreq: name + ifr_flags, padded to 40
_INT: Final = struct.Struct("i")

NEEDS_CAP: Final = "needs CAP_NET_ADMIN (run as root or grant the capability)"


def open_tun_file() -> int:
    """Open ``/dev/net/tun`` non-blocking and close-on-exec, with errors a user can act on."""
    try:
        return os.open(TUN_PATH, _OPEN_FLAGS)
    except FileNotFoundError:
        raise TunUnavailableError(
            errno.ENOENT,
            f"{TUN_PATH} is missing: load the TUN/TAP driver with 'modprobe tun' "
            "(in a container, pass the device in, e.g. --device /dev/net/tun)",
        ) from None
    except PermissionError as exc:
        raise TunPermissionError(
            exc.errno,
            f"opening {TUN_PATH} was refused: it needs read/write access to {TUN_PATH} "
            "(root, or a udev rule granting your group access)",
        ) from None


def features(fd: int) -> int:
    """The IFF_* flags this kernel's TUN driver supports."""
    buf = fcntl.ioctl(fd, TUNGETFEATURES, b"\0" * 4)
    return int(_INT.unpack(buf)[0])


def set_iff(fd: int, name: str | None, flags: int) -> str:
    """Create or attach device *name* (``None``: kernel picks) and return its real name."""
    request = _IFREQ.pack((name or "").encode(), flags)
    try:
        answer = fcntl.ioctl(fd, TUNSETIFF, request)
    except OSError as exc:
        what = f"device {name!r}" if name else "a device"
        kind = "TAP" if flags & IFF_TAP else "TUN"
        if exc.errno == errno.EPERM:
            # Fixed wording: without a name this used to read "to TUN a device".
            subject = f"{kind} device {name!r}" if name else f"a {kind} device"
            raise TunPermissionError(
                errno.EPERM,
                f"creating or attaching to {subject} {NEEDS_CAP}; an unprivileged user "
                "can only attach to a persistent device created with owner=/group= for them",
            ) from None
        if exc.errno == errno.EBUSY:
            raise DeviceBusyError(
                errno.EBUSY,
                f"{kind} {what} is already in use (open by another process, or its "
                "multi-queue/offload flags differ from this request)",
            ) from None
        if exc.errno == errno.EINVAL:
            raise DeviceBusyError(
                errno.EINVAL,
                f"{what} exists but is not a {kind} device with compatible flags "
                "(name taken by another kind of interface?)",
            ) from None
        raise
    raw_name = _IFREQ.unpack(answer)[0]
    return str(raw_name.rstrip(b"\0").decode("utf-8", "surrogateescape"))


def get_iff(fd: int) -> tuple[str, int]:
    """Name and IFF_* flags of the device *fd* is attached to."""
    answer = fcntl.ioctl(fd, TUNGETIFF, _IFREQ.pack(b"", 0))
    raw_name, flags = _IFREQ.unpack(answer)
    return raw_name.rstrip(b"\0").decode("utf-8", "surrogateescape"), int(flags)


def set_persist(fd: int, persist: bool) -> None:
    try:
        fcntl.ioctl(fd, TUNSETPERSIST, int(persist))
    except PermissionError:
        raise TunPermissionError(errno.EPERM, f"changing persistence {NEEDS_CAP}") from None


def set_owner(fd: int, uid: int) -> None:
    try:
        fcntl.ioctl(fd, TUNSETOWNER, uid)
    except PermissionError:
        raise TunPermissionError(errno.EPERM, f"setting the owner {NEEDS_CAP}") from None


def set_group(fd: int, gid: int) -> None:
    try:
        fcntl.ioctl(fd, TUNSETGROUP, gid)
    except PermissionError:
        raise TunPermissionError(errno.EPERM, f"setting the group {NEEDS_CAP}") from None


def set_offload(fd: int, flags: OffloadFlags) -> None:
    fcntl.ioctl(fd, TUNSETOFFLOAD, flags.mask())


def negotiate_offload(fd: int, *, required: bool) -> OffloadFlags:
    """Ask for the richest offload set the kernel accepts, best first.

    The mask is device-wide, so every queue of a multi-queue device shares it.
    """
    for candidate in (FULL_OFFLOAD, TCP_OFFLOAD):
        try:
            set_offload(fd, candidate)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
            continue
        return candidate
    if required:
        raise OffloadUnavailableError(
            errno.EINVAL, "offload=True, but the kernel rejected TUNSETOFFLOAD CSUM|TSO4|TSO6"
        )
    set_offload(fd, NO_OFFLOAD)
    return NO_OFFLOAD


def set_queue(fd: int, attach: bool) -> None:
    """Attach or detach one queue of a multi-queue device (``TUNSETQUEUE``)."""
    flags = IFF_ATTACH_QUEUE if attach else IFF_DETACH_QUEUE
    fcntl.ioctl(fd, TUNSETQUEUE, _IFREQ.pack(b"", flags))


SIOCGIFMTU: Final = 0x8921


def get_mtu(name: str) -> int:
    """MTU of *name* in the calling thread's namespace (a quick ioctl, no netlink)."""
    # Python creates sockets close-on-exec (PEP 446) on every platform.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        answer = fcntl.ioctl(sock.fileno(), SIOCGIFMTU, _IFREQ_INT.pack(name.encode(), 0))
    return int(_IFREQ_INT.unpack(answer)[1])


_IFREQ_INT: Final = struct.Struct("16si20x")
