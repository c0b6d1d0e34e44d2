"""The real :class:`~trio_tun.platform._bsdnet.Syscalls`: the calls themselves.

``ioctl`` goes through :mod:`fcntl`, sockets through :mod:`socket`, and the
few calls Python does not wrap (``connect`` with a raw sockaddr, a raw
``getsockopt`` buffer, ``sysctl``, ``getifaddrs``) through the C library with
:mod:`ctypes`, none of them variadic.  Only the macOS and BSD backends use
this module; it is never imported on Windows.
"""

from __future__ import annotations

import ctypes
import functools
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any

from ._bsdnet import IfAddr

assert sys.platform != "win32", "POSIX system calls only"

import fcntl  # noqa: E402  (after the platform assertion, which mypy reads)


class _IfAddrs(ctypes.Structure):
    pass


# <ifaddrs.h>, identical in its first seven members on macOS and the BSDs.
_IfAddrs._fields_ = [
    ("ifa_next", ctypes.POINTER(_IfAddrs)),
    ("ifa_name", ctypes.c_char_p),
    ("ifa_flags", ctypes.c_uint),
    ("ifa_addr", ctypes.c_void_p),
    ("ifa_netmask", ctypes.c_void_p),
    ("ifa_dstaddr", ctypes.c_void_p),
    ("ifa_data", ctypes.c_void_p),
]


@functools.cache
def _function(name: str) -> Any:
    """A C library function with its prototype (looked up on first use, so a libc
    without, say, ``sysctl`` — glibc — still serves the others)."""
    function = getattr(ctypes.CDLL(None, use_errno=True), name)
    restype, argtypes = _PROTOTYPES[name]
    function.restype = restype
    function.argtypes = argtypes
    return function


_PROTOTYPES: dict[str, tuple[Any, list[Any]]] = {
    "connect": (ctypes.c_int, [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]),
    "getsockopt": (
        ctypes.c_int,
        [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_uint32),
        ],
    ),
    "sysctl": (
        ctypes.c_int,
        [
            ctypes.POINTER(ctypes.c_int),
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_size_t),
            ctypes.c_void_p,
            ctypes.c_size_t,
        ],
    ),
    "getifaddrs": (ctypes.c_int, [ctypes.POINTER(ctypes.POINTER(_IfAddrs))]),
    "freeifaddrs": (None, [ctypes.POINTER(_IfAddrs)]),
}


def _errno_error(what: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"{what}: {os.strerror(code)}")


def _sockaddr_at(pointer: int | None) -> bytes | None:
    if not pointer:
        return None
    length = ctypes.string_at(pointer, 1)[0]
    return ctypes.string_at(pointer, max(length, 2))


class PosixSyscalls:
    """The system calls of the macOS and BSD backends, made for real."""

    def open_device(self, path: str) -> int:
        return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)

    def close(self, fd: int) -> None:
        os.close(fd)

    def socket(self, family: int, type: int, proto: int) -> int:
        # Python makes sockets close-on-exec; we keep only the fd.
        return socket.socket(family, type, proto).detach()

    def ioctl(self, fd: int, request: int, arg: bytes) -> bytes:
        return bytes(fcntl.ioctl(fd, request, arg))

    def connect(self, fd: int, address: bytes) -> None:
        if _function("connect")(fd, address, len(address)) != 0:
            raise _errno_error("connect")

    def getsockopt(self, fd: int, level: int, option: int, size: int) -> bytes:
        buffer = ctypes.create_string_buffer(size)
        length = ctypes.c_uint32(size)
        if _function("getsockopt")(fd, level, option, buffer, ctypes.byref(length)) != 0:
            raise _errno_error("getsockopt")
        return buffer.raw[: length.value]

    def write(self, fd: int, data: bytes) -> int:
        return os.write(fd, data)

    def sysctl(self, mib: Sequence[int]) -> bytes:
        name = (ctypes.c_int * len(mib))(*mib)
        sysctl = _function("sysctl")
        for _ in range(8):  # the table may grow between the two calls
            size = ctypes.c_size_t(0)
            if sysctl(name, len(mib), None, ctypes.byref(size), None, 0) != 0:
                raise _errno_error("sysctl")
            size.value += size.value // 8 + 1024
            buffer = ctypes.create_string_buffer(size.value)
            if sysctl(name, len(mib), buffer, ctypes.byref(size), None, 0) == 0:
                return buffer.raw[: size.value]
            if ctypes.get_errno() != 12:  # ENOMEM: grew meanwhile, try again
                raise _errno_error("sysctl")
        raise OSError(12, "sysctl: the routing table keeps growing")

    def getifaddrs(self) -> list[IfAddr]:
        head = ctypes.POINTER(_IfAddrs)()
        if _function("getifaddrs")(ctypes.byref(head)) != 0:
            raise _errno_error("getifaddrs")
        try:
            found: list[IfAddr] = []
            node = head
            while node:
                entry = node.contents
                address = _sockaddr_at(entry.ifa_addr)
                if address is not None and entry.ifa_name:
                    found.append(
                        IfAddr(
                            name=entry.ifa_name.decode("utf-8", "surrogateescape"),
                            address=address,
                            netmask=_sockaddr_at(entry.ifa_netmask),
                        )
                    )
                node = entry.ifa_next
            return found
        finally:
            _function("freeifaddrs")(head)

    def if_nametoindex(self, name: str) -> int:
        return socket.if_nametoindex(name)

    def getpid(self) -> int:
        return os.getpid()
