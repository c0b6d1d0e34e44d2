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
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

import attrs

from .._config import Layer, TunConfig
from .._errors import DeviceBusyError, TunPermissionError, TunUnavailableError
from .._stream import PacketStream, TapStream
from ._afheader import AfFamilies
from ._afstream import AfTunStream
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
from ._control import PlatformControlMixin, device_context

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


class _DestroyOnClose:
    """Closing the stream destroys the interface unless it is to persist."""

    _bsd_control: BsdInterfaceControl | None
    _persist: bool

    def _destroy(self) -> None:
        control = self._bsd_control
        if control is None or control.closed:
            return
        try:
            if not self._persist:
                with contextlib.suppress(OSError, LookupError, ValueError):
                    control.destroy()
        finally:
            control.close()


class BsdTunStream(PlatformControlMixin, _DestroyOnClose, AfTunStream):
    """A BSD tun device: bare IP packets, like :class:`~trio_tun.TunStream` on Linux."""

    def __init__(
        self,
        fd: int,
        control: BsdInterfaceControl | None,
        *,
        families: AfFamilies,
        persist: bool = False,
        owned: bool = True,
    ) -> None:
        super().__init__(fd, families=families, owned=owned)
        self._ifcontrol = self._bsd_control = control
        self._persist = persist

    @property
    def extra_attributes(self) -> Mapping[Any, Any]:
        return {**super().extra_attributes, **self._control_attributes()}

    def close(self) -> None:
        """Close the fd, then destroy the interface unless ``persist=True``."""
        super().close()
        self._destroy()


class BsdTapStream(PlatformControlMixin, _DestroyOnClose, TapStream):
    """A BSD tap device: Ethernet frames, like :class:`~trio_tun.TapStream` on Linux."""

    def __init__(
        self,
        fd: int,
        control: BsdInterfaceControl | None,
        *,
        persist: bool = False,
        owned: bool = True,
    ) -> None:
        super().__init__(fd, owned=owned)
        self._ifcontrol = self._bsd_control = control
        self._persist = persist

    @property
    def extra_attributes(self) -> Mapping[Any, Any]:
        return {**super().extra_attributes, **self._control_attributes()}

    def close(self) -> None:
        """Close the fd, then destroy the interface unless ``persist=True``."""
        super().close()
        self._destroy()


def default_syscalls() -> Syscalls:
    if sys.platform == "win32":
        raise NotImplementedError("the BSD backend does not run on Windows")
    else:
        from ._posix import PosixSyscalls

        return PosixSyscalls()


def open_device(
    config: TunConfig,
    name: str | None,
    *,
    system: System | None = None,
    syscalls: Syscalls | None = None,
) -> contextlib.AbstractAsyncContextManager[PacketStream]:
    """``open_tun``/``open_tap`` on a BSD.  The name is checked now, the device made on entry."""
    system = system or current_system()
    if config.layer is Layer.L2 and not system.has_tap:
        raise NotImplementedError(f"TAP devices are not available on {system.name}")
    return _opened(config, requested_unit(config.layer, name), system, syscalls)


@contextlib.asynccontextmanager
async def _opened(
    config: TunConfig, unit: int | None, system: System, syscalls: Syscalls | None
) -> AsyncIterator[PacketStream]:
    syscalls = syscalls or default_syscalls()
    fd, name = open_device_fd(syscalls, system, config.layer, unit)
    stream: PacketStream
    try:
        if config.layer is Layer.L3:
            enable_header(syscalls, system, fd)
        index = syscalls.if_nametoindex(name)
    except BaseException:
        syscalls.close(fd)
        if unit is None:
            # We cloned this interface a moment ago: don't leave it behind.  (A
            # named one may be somebody else's persistent device: left alone.)
            with contextlib.suppress(OSError, LookupError, ValueError):
                BsdInterfaceControl(syscalls, system.flavor, name, 0, point_to_point=True).destroy()
        raise
    if config.layer is Layer.L2:
        control = BsdInterfaceControl(syscalls, system.flavor, name, index, point_to_point=False)
        stream = BsdTapStream(fd, control, persist=config.persist)
    else:
        control = BsdInterfaceControl(syscalls, system.flavor, name, index, point_to_point=True)
        stream = BsdTunStream(fd, control, families=system.families, persist=config.persist)
    async with device_context(stream, control, config) as opened:
        yield opened


def interface_name(syscalls: Syscalls, system: System, fd: int) -> str | None:
    """The name of the tun interface behind *fd*, where the system can say (FreeBSD)."""
    if system.tun_gifname is None:
        return None
    try:
        answer = syscalls.ioctl(fd, system.tun_gifname, bytes(system.flavor.ifreq_size))
    except OSError:
        return None
    return ifreq_get_name(answer) or None


def wrap_fd(
    fd: int,
    *,
    owned: bool,
    system: System | None = None,
    syscalls: Syscalls | None = None,
) -> BsdTunStream:
    """``from_fd(fd, header="af4")`` on a BSD (device control when the name can be found).

    The interface is never destroyed when such a stream closes: it belongs to
    whoever created it.
    """
    system = system or current_system()
    syscalls = syscalls or default_syscalls()
    control: BsdInterfaceControl | None = None
    name = interface_name(syscalls, system, fd)
    if name:
        try:
            index = syscalls.if_nametoindex(name)
            control = BsdInterfaceControl(syscalls, system.flavor, name, index, point_to_point=True)
        except OSError:
            control = None
    return BsdTunStream(fd, control, families=system.families, persist=True, owned=owned)
