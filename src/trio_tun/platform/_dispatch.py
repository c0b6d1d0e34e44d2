"""Which backend serves ``open_tun``/``open_tap``/``from_fd`` on the running system.

``_open.py`` keeps the Linux code path to itself and hands everything else
here when :data:`OTHER_PLATFORM` is true.  Options a platform cannot honour
are refused with a clear error *before* any system call: configuration
mistakes raise ``ValueError`` (from :class:`~trio_tun.TunConfig`, as on
Linux), features the platform lacks raise ``NotImplementedError`` naming the
platform (``offload=True`` raises ``OffloadUnavailableError``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Iterable
from typing import Any, Final, Literal

import attrs

from .._config import AddressLike, Layer, NetnsLike, OffloadMode, TunConfig
from .._errors import OffloadUnavailableError
from .._stream import PacketStream, TapStream, TunStream
from ._afstream import AfTunStream
from .linux import NO_OFFLOAD, OffloadFlags

#: True everywhere but Linux: ``_open.py`` dispatches here then.
OTHER_PLATFORM: Final = sys.platform != "linux"

HeaderMode = Literal["af4", "none"] | None
BSD_NAMES: Final = ("freebsd", "openbsd", "netbsd")


def backend_name(platform: str | None = None) -> str:
    """``linux``, ``darwin``, ``freebsd``, ``openbsd``, ``netbsd``, ``windows`` or the
    raw ``sys.platform`` of a system without a device backend (``ios``, ``android``...)."""
    platform = sys.platform if platform is None else platform
    if platform == "win32":
        return "windows"
    for name in ("linux", "darwin", *BSD_NAMES):
        if platform.startswith(name):
            return name
    return platform


@attrs.frozen
class Capabilities:
    """What one backend offers, as ``python -m trio_tun info`` and the docs report it."""

    backend: str
    mechanism: str
    tun: bool
    tap: bool
    offload: bool
    multi_queue: bool
    persist: bool
    tested: str


_SEAM = "through its system-call seam only, never on a real system"

CAPABILITIES: Final = {
    "linux": Capabilities(
        "linux",
        "/dev/net/tun ioctls, netlink configuration",
        tun=True,
        tap=True,
        offload=True,
        multi_queue=True,
        persist=True,
        tested="on a real kernel, in network namespaces",
    ),
    "darwin": Capabilities(
        "darwin",
        "utun through a PF_SYSTEM control socket (4-byte AF header), ioctls, PF_ROUTE",
        tun=True,
        tap=False,
        offload=False,
        multi_queue=False,
        persist=False,
        tested=_SEAM,
    ),
    "freebsd": Capabilities(
        "freebsd",
        "/dev/tun and /dev/tap cloning, TUNSIFHEAD (AF header), ioctls, PF_ROUTE",
        tun=True,
        tap=True,
        offload=False,
        multi_queue=False,
        persist=True,
        tested=_SEAM,
    ),
    "openbsd": Capabilities(
        "openbsd",
        "/dev/tunN and /dev/tapN (AF header always on), ioctls, PF_ROUTE",
        tun=True,
        tap=True,
        offload=False,
        multi_queue=False,
        persist=True,
        tested=_SEAM,
    ),
    "netbsd": Capabilities(
        "netbsd",
        "/dev/tunN with TUNSIFHEAD (AF header), cloning /dev/tap, ioctls, PF_ROUTE",
        tun=True,
        tap=True,
        offload=False,
        multi_queue=False,
        persist=True,
        tested=_SEAM,
    ),
    "windows": Capabilities(
        "windows",
        "wintun.dll session rings (ctypes), IP Helper API",
        tun=True,
        tap=False,
        offload=False,
        multi_queue=False,
        persist=False,
        tested=_SEAM,
    ),
}


def describe(platform: str | None = None) -> list[str]:
    """Lines saying which backend runs here and what it supports."""
    name = backend_name(platform)
    caps = CAPABILITIES.get(name)
    if caps is None:
        return [
            f"backend: none for {name!r}: open_tun/open_tap can't create devices here; "
            "wrap an fd from the system's VPN API with trio_tun.from_fd "
            "(header='af4' for an iOS utun fd, none for Android's VpnService)"
        ]

    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    return [
        f"backend: {caps.backend} ({caps.mechanism})",
        f"supports: TUN {yes(caps.tun)}, TAP {yes(caps.tap)}, offload {yes(caps.offload)}, "
        f"multi-queue {yes(caps.multi_queue)}, persist {yes(caps.persist)}",
        f"tested: {caps.tested}",
    ]


def _refuse(platform: str, feature: str) -> NotImplementedError:
    return NotImplementedError(f"{feature} is not available on {_pretty(platform)}")


def _pretty(platform: str) -> str:
    return {
        "darwin": "macOS",
        "windows": "Windows",
        "freebsd": "FreeBSD",
        "openbsd": "OpenBSD",
        "netbsd": "NetBSD",
    }.get(platform, platform)


def open_device(
    layer: Layer,
    name: str | None,
    *,
    addresses: Iterable[AddressLike],
    mtu: int | None,
    up: bool,
    persist: bool,
    owner: int | None,
    group: int | None,
    packet_info: bool,
    netns: NetnsLike,
    offload: OffloadMode,
    queues: int,
    mac: str | bytes | None = None,
    wintun_dll: str | os.PathLike[str] | None = None,
    ring_capacity: int | None = None,
    platform: str | None = None,
) -> contextlib.AbstractAsyncContextManager[Any]:
    """``open_tun``/``open_tap`` on a system other than Linux."""
    backend = backend_name(platform)
    # Everything TunConfig checks on Linux is checked here too (the name and
    # the namespace are the platform's business, see below).
    config = TunConfig(
        layer=layer,
        name=None,
        addresses=addresses,
        mtu=mtu,
        mac=mac,
        up=up,
        persist=persist,
        owner=owner,
        group=group,
        packet_info=packet_info,
        offload=offload,
        queues=queues,
    )
    if backend not in CAPABILITIES or backend == "linux":
        raise NotImplementedError(
            f"open_tun/open_tap can't create devices on {backend!r}: the system hands VPN "
            "apps a ready-made fd (Android VpnService, iOS NEPacketTunnelProvider); wrap it "
            "with trio_tun.from_fd (see the 'Platforms' page of the docs)"
        )
    caps = CAPABILITIES[backend]
    if layer is Layer.L2 and not caps.tap:
        raise _refuse(backend, "TAP (open_tap)")
    if offload is True:
        raise OffloadUnavailableError(
            errno.EOPNOTSUPP, f"offload=True: virtio-net offload is Linux-only ({backend})"
        )
    if queues != 1:
        raise _refuse(backend, f"queues={queues} (multi-queue)")
    if netns is not None:
        raise _refuse(backend, "netns= (network namespaces are Linux's)")
    if owner is not None or group is not None:
        raise _refuse(backend, "owner=/group=")
    if packet_info:
        raise _refuse(backend, "packet_info=True")
    if mac is not None:
        raise _refuse(backend, "mac=")
    if persist and not caps.persist:
        raise _refuse(backend, "persist=True")
    if backend == "darwin":
        from . import darwin

        return darwin.open_device(config, name)
    if backend in BSD_NAMES:
        from . import bsd

        return bsd.open_device(config, name, system=bsd.SYSTEMS[backend])
    if not up:
        raise _refuse(backend, "up=False (a wintun adapter is up while its session runs)")
    from . import windows

    return windows.open_device(config, name, wintun_dll=wintun_dll, ring_capacity=ring_capacity)


def wrap_fd(
    fd: int,
    *,
    owned: bool,
    layer: Layer | str,
    vnet_hdr: bool | None,
    packet_info: bool | None,
    offload: OffloadFlags | None,
    header: HeaderMode,
    platform: str | None = None,
) -> PacketStream:
    """``from_fd`` with an AF header anywhere, or with no header off Linux."""
    kind = Layer(layer) if isinstance(layer, str) else layer
    if header not in (None, "none", "af4"):
        raise ValueError(f"header must be None, 'none' or 'af4', not {header!r}")
    backend = backend_name(platform)
    if header == "af4":
        if kind is Layer.L2:
            raise ValueError("header='af4' is for TUN (layer 3) fds; TAP frames have no AF header")
        if vnet_hdr or packet_info or (offload is not None and offload.enabled):
            raise ValueError("header='af4' can't be combined with vnet_hdr, packet_info or offload")
        if backend == "darwin":
            from . import darwin

            return darwin.wrap_fd(fd, owned=owned)
        if backend in BSD_NAMES:
            from . import bsd

            return bsd.wrap_fd(fd, owned=owned, system=bsd.SYSTEMS[backend])
        return AfTunStream(fd, owned=owned)
    if backend == "windows":
        raise NotImplementedError("from_fd is not available on Windows: wintun has no fd")
    cls = TapStream if kind is Layer.L2 else TunStream
    return cls(
        fd,
        owned=owned,
        vnet_hdr=bool(vnet_hdr),
        packet_info=bool(packet_info),
        offload=NO_OFFLOAD if offload is None else offload,
    )
