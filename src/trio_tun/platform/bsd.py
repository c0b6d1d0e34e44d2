"""FreeBSD, OpenBSD and NetBSD: ``/dev/tun`` and ``/dev/tap`` character devices.

How each system hands out a device:

* **FreeBSD**: opening the cloning device ``/dev/tun`` (``/dev/tap``) creates
  the next free ``tunN`` (``tapN``), and ``TUNGIFNAME`` (``TAPGIFNAME``, the
  same number) says which; ``/dev/tunN`` creates or attaches to that one.
  ``TUNSIFHEAD`` turns on the 4-byte address-family header (``AF_INET6`` is
  28), without which the device only carries IPv4.
* **OpenBSD**: no cloning device; ``/dev/tunN`` (``/dev/tapN``) is opened for
  the first N not in use.  The header is always there (``AF_INET6`` is 24).
* **NetBSD**: ``/dev/tunN`` as on OpenBSD plus ``TUNSIFHEAD``; TAP through the
  cloning ``/dev/tap`` and ``TAPGIFNAME``.  ``AF_INET6`` is 24.

A tun or tap interface outlives its fd on these systems, so closing the
stream also destroys it (``SIOCIFDESTROY``) unless ``persist=True``.  TAP
devices carry bare Ethernet frames (no header).  Addresses, MTU, link state
and routes are ioctls and ``PF_ROUTE`` messages (``_bsdnet``).

Every system call goes through a :class:`~trio_tun.platform._bsdnet.Syscalls`
object, so this module is tested on Linux against the systems' header layouts.
"""

from __future__ import annotations

import contextlib
import errno
import re
import struct
import sys
from typing import Final

import anyio.to_thread
import attrs

from .._config import Layer, TunConfig
from .._control import configure
from .._errors import DeviceBusyError, TunPermissionError, TunUnavailableError
from .._framing import AfFamilies, AfFraming, PlainFraming
from . import Device, FdSpec, check_supported, default_syscalls, plain_fd_device
from ._bsdnet import (
    FREEBSD_FLAVOR,
    NETBSD_FLAVOR,
    OPENBSD_FLAVOR,
    BsdInterfaceControl,
    Flavor,
    Syscalls,
    ifreq_get_name,
    ior,
    iow,
)

_INT: Final = struct.Struct("=i")
#: Highest unit tried when looking for a free ``/dev/tunN``.
MAX_UNIT: Final = 255


@attrs.frozen
class System:
    """How one BSD hands out tun/tap devices."""

    flavor: Flavor
    #: Cloning device per layer (``None``: probe ``/dev/<kind>N`` instead).
    tun_clone: str | None
    tap_clone: str | None
    #: ioctl asking a cloned fd for its interface's name (per layer).
    tun_gifname: int | None
    tap_gifname: int | None
    #: ``TUNSIFHEAD``, or ``None`` when the header is always on.
    tunsifhead: int | None
    #: Whether the system has TAP devices at all.
    has_tap: bool = True

    @property
    def name(self) -> str:
        return self.flavor.name

    @property
    def families(self) -> AfFamilies:
        return self.flavor.families


#: FreeBSD ``<net/if_tun.h>``: ``TUNSIFHEAD _IOW('t', 96, int)``;
#: ``TUNGIFNAME _IOR('t', 93, struct ifreq)``, ``<net/if_tap.h>``: ``TAPGIFNAME TUNGIFNAME``.
FREEBSD: Final = System(
    flavor=FREEBSD_FLAVOR,
    tun_clone="/dev/tun",
    tap_clone="/dev/tap",
    tun_gifname=ior("t", 93, FREEBSD_FLAVOR.ifreq_size),
    tap_gifname=ior("t", 93, FREEBSD_FLAVOR.ifreq_size),
    tunsifhead=iow("t", 96, _INT.size),
)
#: OpenBSD: ``/dev/tunN`` and ``/dev/tapN``; the header is part of the tun protocol.
OPENBSD: Final = System(
    flavor=OPENBSD_FLAVOR,
    tun_clone=None,
    tap_clone=None,
    tun_gifname=None,
    tap_gifname=None,
    tunsifhead=None,
)
#: NetBSD ``<net/if_tun.h>``: ``TUNSIFHEAD _IOW('t', 66, int)``;
#: ``<net/if_tap.h>``: ``TAPGIFNAME _IOR('e', 0, struct ifreq)`` (a 144-byte ifreq).
NETBSD: Final = System(
    flavor=NETBSD_FLAVOR,
    tun_clone=None,
    tap_clone="/dev/tap",
    tun_gifname=None,
    tap_gifname=ior("e", 0, NETBSD_FLAVOR.ifreq_size),
    tunsifhead=iow("t", 66, _INT.size),
)

SYSTEMS: Final = {"freebsd": FREEBSD, "openbsd": OPENBSD, "netbsd": NETBSD}


def current_system() -> System:
    for prefix, system in SYSTEMS.items():
        if sys.platform.startswith(prefix):
            return system
    raise NotImplementedError(f"no BSD backend for {sys.platform!r}")


def _kind(layer: Layer) -> str:
    return "tap" if layer is Layer.L2 else "tun"


def requested_unit(layer: Layer, name: str | None) -> int | None:
    """The unit of a requested name (``tun3`` -> 3), or ``None`` for "any"."""
    kind = _kind(layer)
    if name is None or name == f"{kind}%d":
        return None
    match = re.fullmatch(rf"{kind}(\d+)", name)
    if match is None:
        raise ValueError(
            f"device name {name!r}: {kind.upper()} devices on the BSDs are named {kind}N "
            f"(e.g. '{kind}3'); pass name=None or '{kind}%d' to take a free one"
        )
    return int(match.group(1))


def _open(syscalls: Syscalls, path: str) -> int:
    try:
        return syscalls.open_device(path)
    except FileNotFoundError:
        raise TunUnavailableError(
            errno.ENOENT,
            f"{path} is missing: load the tun/tap driver (FreeBSD: 'kldload if_tuntap') "
            "or create the node (OpenBSD/NetBSD: 'cd /dev && sh MAKEDEV tun4')",
        ) from None
    except PermissionError as exc:
        raise TunPermissionError(
            exc.errno, f"opening {path} was refused: it needs root (or read/write access)"
        ) from None


def open_device_fd(
    syscalls: Syscalls, system: System, layer: Layer, unit: int | None
) -> tuple[int, str]:
    """Open a tun/tap fd; returns it and the interface's name."""
    kind = _kind(layer)
    clone = system.tap_clone if layer is Layer.L2 else system.tun_clone
    gifname = system.tap_gifname if layer is Layer.L2 else system.tun_gifname
    if unit is not None:
        path = f"/dev/{kind}{unit}"
        try:
            return _open(syscalls, path), f"{kind}{unit}"
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise DeviceBusyError(exc.errno, f"{kind}{unit} is already in use") from None
            raise
    if clone is not None and gifname is not None:
        fd = _open(syscalls, clone)
        try:
            answer = syscalls.ioctl(fd, gifname, bytes(system.flavor.ifreq_size))
        except BaseException:
            syscalls.close(fd)
            raise
        return fd, ifreq_get_name(answer)
    for candidate in range(MAX_UNIT + 1):
        path = f"/dev/{kind}{candidate}"
        try:
            return _open(syscalls, path), f"{kind}{candidate}"
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                continue
            raise
    raise DeviceBusyError(errno.EBUSY, f"every {kind} device up to {kind}{MAX_UNIT} is in use")


def enable_header(syscalls: Syscalls, system: System, fd: int) -> None:
    """Turn the 4-byte address-family header on (``TUNSIFHEAD``) where it is optional."""
    if system.tunsifhead is not None:
        syscalls.ioctl(fd, system.tunsifhead, _INT.pack(1))


def interface_name(syscalls: Syscalls, system: System, fd: int) -> str | None:
    """The name of the tun interface behind *fd*, where the system can say (FreeBSD)."""
    if system.tun_gifname is None:
        return None
    try:
        answer = syscalls.ioctl(fd, system.tun_gifname, bytes(system.flavor.ifreq_size))
    except OSError:
        return None
    return ifreq_get_name(answer) or None


class BsdBackend:
    """FreeBSD, OpenBSD and NetBSD tun/tap; every system call goes through *syscalls*."""

    def __init__(self, system: System | None = None, syscalls: Syscalls | None = None) -> None:
        self._system = system or current_system()
        self._sys = syscalls or default_syscalls()
        self.name = self._system.name

    def check(self, config: TunConfig) -> None:
        check_supported(self.name, config)
        if config.layer is Layer.L2 and not self._system.has_tap:
            raise NotImplementedError(f"TAP devices are not available on {self._system.name}")
        requested_unit(config.layer, config.name)

    async def open(self, config: TunConfig) -> Device:
        system, syscalls = self._system, self._sys
        unit = requested_unit(config.layer, config.name)
        fd, name = open_device_fd(syscalls, system, config.layer, unit)
        tun = config.layer is Layer.L3
        control: BsdInterfaceControl | None = None
        try:
            if tun:
                enable_header(syscalls, system, fd)
            index = syscalls.if_nametoindex(name)
            control = BsdInterfaceControl(
                syscalls,
                system.flavor,
                name,
                index,
                point_to_point=tun,
                destroy_on_close=not config.persist,
            )
            await anyio.to_thread.run_sync(lambda: configure(control, config))
        except BaseException:
            syscalls.close(fd)
            if unit is None:
                # We cloned this interface a moment ago: don't leave it behind.  (A
                # named one may be somebody else's persistent device: left alone.)
                with contextlib.suppress(OSError, LookupError, ValueError):
                    BsdInterfaceControl(
                        syscalls, system.flavor, name, 0, point_to_point=tun
                    ).destroy()
            elif control is not None:
                control.close()
            raise
        framing = AfFraming(system.families) if tun else PlainFraming()
        spec = FdSpec(fd=fd, layer=config.layer, header="af4" if tun else None)
        return plain_fd_device(spec, framing=framing, control=control)

    def wrap_fd(self, spec: FdSpec) -> Device:
        """``from_fd``: with ``header="af4"``, device control when the name can be found.

        The interface is never destroyed when such a stream closes: it belongs to
        whoever created it.
        """
        if not spec.af_header:
            return plain_fd_device(spec)
        framing = AfFraming(self._system.families)
        return plain_fd_device(spec, framing=framing, control=self._tun_control(spec.fd))

    def _tun_control(self, fd: int) -> BsdInterfaceControl | None:
        system, syscalls = self._system, self._sys
        name = interface_name(syscalls, system, fd)
        if not name:
            return None
        try:
            index = syscalls.if_nametoindex(name)
        except OSError:
            return None
        return BsdInterfaceControl(syscalls, system.flavor, name, index, point_to_point=True)
