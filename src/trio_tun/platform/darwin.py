"""macOS: utun devices through a ``PF_SYSTEM`` kernel-control socket.

A utun interface exists while a ``SYSPROTO_CONTROL`` socket is connected to
the ``com.apple.net.utun_control`` kernel control: ``CTLIOCGINFO`` turns the
control's name into its id, ``connect`` with ``sc_unit = N + 1`` asks for
``utunN`` (0 lets the kernel pick), and ``getsockopt(UTUN_OPT_IFNAME)`` says
which one we got.  Closing the socket deletes the interface, so there is no
``persist``.  Every packet carries the 4-byte address-family header, which
:class:`~trio_tun._framing.AfFraming` strips and adds.

Addresses, MTU and link state are ioctls, routes are ``PF_ROUTE`` messages
(``_bsdnet``).  TAP is not offered: macOS has no layer-2 counterpart of utun
without a third-party kernel extension.

Every system call goes through a :class:`~trio_tun.platform._bsdnet.Syscalls`
object, so this module is tested on Linux against the xnu header layouts.
"""

from __future__ import annotations

import errno
import re
import struct
from typing import Final

import anyio.to_thread

from .._config import Layer, TunConfig
from .._control import configure
from .._errors import DeviceBusyError, TunPermissionError, TunUnavailableError
from .._framing import DARWIN, AfFraming
from . import Device, FdSpec, check_supported, default_syscalls, plain_fd_device
from ._bsdnet import (
    DARWIN_FLAVOR,
    IFNAMSIZ,
    BsdInterfaceControl,
    Syscalls,
    iowr,
)

#: xnu ``<sys/socket.h>``: ``AF_SYSTEM 32``, ``PF_SYSTEM AF_SYSTEM``.
AF_SYSTEM: Final = 32
PF_SYSTEM: Final = AF_SYSTEM
SOCK_DGRAM: Final = 2
#: xnu ``<sys/sys_domain.h>``.
SYSPROTO_CONTROL: Final = 2
AF_SYS_CONTROL: Final = 2
#: xnu ``<net/if_utun.h>``.
UTUN_CONTROL_NAME: Final = b"com.apple.net.utun_control"
UTUN_OPT_IFNAME: Final = 2
#: xnu ``<sys/kern_control.h>``.
MAX_KCTL_NAME: Final = 96

#: ``struct ctl_info { u_int32_t ctl_id; char ctl_name[96]; }``: 100 bytes.
CTL_INFO: Final = struct.Struct("=I96s")
#: ``struct sockaddr_ctl { u_char sc_len, sc_family; u_int16_t ss_sysaddr;
#: u_int32_t sc_id, sc_unit, sc_reserved[5]; }``: 32 bytes.
SOCKADDR_CTL: Final = struct.Struct("=BBHII20x")
#: ``CTLIOCGINFO = _IOWR('N', 3, struct ctl_info)``.
CTLIOCGINFO: Final = iowr("N", 3, CTL_INFO.size)

FLAVOR: Final = DARWIN_FLAVOR
PLATFORM: Final = "macOS"
_UTUN_NAME = re.compile(r"utun(\d+)")


def ctl_info(name: bytes) -> bytes:
    """A ``struct ctl_info`` asking for the id of kernel control *name*."""
    if len(name) >= MAX_KCTL_NAME:
        raise ValueError(f"kernel control name {name!r} is too long")
    return CTL_INFO.pack(0, name)


def ctl_id(answer: bytes) -> int:
    """The ``ctl_id`` the kernel filled in."""
    return int(CTL_INFO.unpack(answer)[0])


def sockaddr_ctl(control_id: int, unit: int) -> bytes:
    """The ``struct sockaddr_ctl`` to connect to unit *unit* of control *control_id*."""
    return SOCKADDR_CTL.pack(SOCKADDR_CTL.size, AF_SYSTEM, AF_SYS_CONTROL, control_id, unit)


def utun_unit(name: str | None) -> int:
    """``sc_unit`` for a requested name: ``utunN`` -> N + 1; ``None``/``utun%d`` -> 0 (any)."""
    if name is None or name == "utun%d":
        return 0
    match = _UTUN_NAME.fullmatch(name)
    if match is None:
        raise ValueError(
            f"device name {name!r}: macOS names utun devices utunN (e.g. 'utun7'); "
            "pass name=None or 'utun%d' to let the kernel pick"
        )
    return int(match.group(1)) + 1


def interface_name(syscalls: Syscalls, fd: int) -> str:
    """The utun name of a connected control socket (``UTUN_OPT_IFNAME``)."""
    raw = syscalls.getsockopt(fd, SYSPROTO_CONTROL, UTUN_OPT_IFNAME, IFNAMSIZ)
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def open_utun(syscalls: Syscalls, unit: int) -> tuple[int, str]:
    """Create a utun interface; returns its socket fd and its name."""
    fd = syscalls.socket(PF_SYSTEM, SOCK_DGRAM, SYSPROTO_CONTROL)
    try:
        try:
            answer = syscalls.ioctl(fd, CTLIOCGINFO, ctl_info(UTUN_CONTROL_NAME))
        except OSError as exc:
            raise TunUnavailableError(
                exc.errno or errno.ENOENT,
                f"the utun kernel control ({UTUN_CONTROL_NAME.decode()}) is not available: "
                f"{exc.strerror}",
            ) from None
        try:
            syscalls.connect(fd, sockaddr_ctl(ctl_id(answer), unit))
        except OSError as exc:
            what = f"utun{unit - 1}" if unit else "a utun device"
            if exc.errno in (errno.EPERM, errno.EACCES):
                raise TunPermissionError(
                    exc.errno, f"creating {what} needs root (run with sudo)"
                ) from None
            if exc.errno == errno.EBUSY:
                raise DeviceBusyError(exc.errno, f"{what} is already in use") from None
            raise
        return fd, interface_name(syscalls, fd)
    except BaseException:
        syscalls.close(fd)
        raise


class DarwinBackend:
    """macOS utun devices; every system call goes through *syscalls* (a seam for tests)."""

    name = "darwin"

    def __init__(self, syscalls: Syscalls | None = None) -> None:
        self._sys = syscalls or default_syscalls()

    def check(self, config: TunConfig) -> None:
        check_supported(self.name, config)
        utun_unit(config.name)

    async def open(self, config: TunConfig) -> Device:
        syscalls = self._sys
        fd, actual = open_utun(syscalls, utun_unit(config.name))
        try:
            index = syscalls.if_nametoindex(actual)
            # Closing the socket deletes the interface: nothing to destroy.
            control = BsdInterfaceControl(syscalls, FLAVOR, actual, index, point_to_point=True)
            await anyio.to_thread.run_sync(lambda: configure(control, config))
        except BaseException:
            syscalls.close(fd)
            raise
        spec = FdSpec(fd=fd, layer=Layer.L3, header="af4")
        return plain_fd_device(spec, framing=AfFraming(DARWIN), control=control)

    def wrap_fd(self, spec: FdSpec) -> Device:
        """``from_fd``: with ``header="af4"``, device control when the fd is a utun socket."""
        if not spec.af_header:
            return plain_fd_device(spec)
        control = self._utun_control(spec.fd)
        return plain_fd_device(spec, framing=AfFraming(DARWIN), control=control)

    def _utun_control(self, fd: int) -> BsdInterfaceControl | None:
        syscalls = self._sys
        try:
            name = interface_name(syscalls, fd)
            if name:
                index = syscalls.if_nametoindex(name)
                return BsdInterfaceControl(syscalls, FLAVOR, name, index, point_to_point=True)
        except OSError:
            pass
        return None
