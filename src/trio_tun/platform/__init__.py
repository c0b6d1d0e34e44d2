"""One backend per system, each behind the same small interface.

A backend turns a :class:`~trio_tun.TunConfig` into a :class:`Device` (open a
device and configure it) or wraps an fd obtained elsewhere; a device is its
*ports* (one per queue), a *framing* for each, and a *control*.  Backends never
build streams: :mod:`trio_tun._open` assembles those from the parts, so every
system gets the very same :class:`~trio_tun.PacketStream`.

=========  ==========================================================
linux      ``platform/linux/``: ``/dev/net/tun`` ioctls, netlink, namespaces
darwin     ``darwin.py``: utun kernel-control sockets, ioctls, PF_ROUTE
freebsd,   ``bsd.py``: ``/dev/tun``/``/dev/tap``, ioctls, PF_ROUTE
openbsd,
netbsd
windows    ``windows.py``: wintun session rings, IP Helper API
=========  ==========================================================

Options a platform cannot honour are refused with a clear error before any
system call: configuration mistakes raise ``ValueError``, features the platform
lacks raise ``NotImplementedError`` naming the platform (``offload=True`` raises
``OffloadUnavailableError``).
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, Literal, Protocol

import attrs

from .._config import NO_OFFLOAD, Layer, OffloadFlags, PeerAddress, TunConfig
from .._control import Control
from .._errors import OffloadUnavailableError
from .._framing import AfFraming, Framing, PlainFraming
from .._ports import FdPort, Port

if TYPE_CHECKING:
    from ._bsdnet import Syscalls

HeaderMode = Literal["af4", "none"] | None
BSD_NAMES: Final = ("freebsd", "openbsd", "netbsd")


@attrs.define(eq=False)
class Device:
    """An opened (or wrapped) device, in parts; :mod:`trio_tun._open` builds the streams."""

    layer: Layer
    #: One port per queue, queue 0 first.
    ports: Sequence[Port]
    #: The framing of each port, in the same order.
    framings: Sequence[Framing]
    control: Control | None = None
    offload: OffloadFlags = NO_OFFLOAD
    packet_info: bool = False


@attrs.frozen(kw_only=True)
class FdSpec:
    """What :func:`~trio_tun.from_fd` was told about an fd obtained elsewhere.

    Contradictions (an AF header on a TAP fd, an AF header with a virtio
    header) are refused at construction, before anything touches the fd.
    """

    fd: int
    owned: bool = True
    layer: Layer = Layer.L3
    vnet_hdr: bool | None = None
    packet_info: bool | None = None
    offload: OffloadFlags | None = None
    header: HeaderMode = None

    def __attrs_post_init__(self) -> None:
        if self.header not in (None, "none", "af4"):
            raise ValueError(f"header must be None, 'none' or 'af4', not {self.header!r}")
        if not self.af_header:
            return
        if self.layer is Layer.L2:
            raise ValueError("header='af4' is for TUN (layer 3) fds; TAP frames have no AF header")
        offload = self.offload is not None and self.offload.enabled
        if self.vnet_hdr or self.packet_info or offload:
            raise ValueError("header='af4' can't be combined with vnet_hdr, packet_info or offload")

    @property
    def af_header(self) -> bool:
        """Whether packets on the fd carry the 4-byte address-family header."""
        return self.header == "af4"


class Backend(Protocol):
    """What each system's backend offers."""

    #: ``linux``, ``darwin``, ``freebsd``, ``openbsd``, ``netbsd`` or ``windows``.
    name: str

    def check(self, config: TunConfig) -> None:
        """Refuse what this system can't do (name rules, options), before any syscall."""
        ...

    async def open(self, config: TunConfig) -> Device:
        """Create or attach the device and configure it; on failure leave nothing behind."""
        ...

    def wrap_fd(self, spec: FdSpec) -> Device:
        """A device around an fd obtained elsewhere (``from_fd``)."""
        ...


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


def pretty(backend: str) -> str:
    """The system's name as people write it."""
    return {
        "darwin": "macOS",
        "windows": "Windows",
        "freebsd": "FreeBSD",
        "openbsd": "OpenBSD",
        "netbsd": "NetBSD",
        "linux": "Linux",
    }.get(backend, backend)


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


def _seam_tested(name: str, mechanism: str, *, tap: bool, persist: bool) -> Capabilities:
    """A backend that runs TUN without offload or multi-queue, tested through its seam."""
    return Capabilities(
        name,
        mechanism,
        tun=True,
        tap=tap,
        offload=False,
        multi_queue=False,
        persist=persist,
        tested=_SEAM,
    )


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
    "darwin": _seam_tested(
        "darwin",
        "utun through a PF_SYSTEM control socket (4-byte AF header), ioctls, PF_ROUTE",
        tap=False,
        persist=False,
    ),
    "freebsd": _seam_tested(
        "freebsd",
        "/dev/tun and /dev/tap cloning, TUNSIFHEAD (AF header), ioctls, PF_ROUTE",
        tap=True,
        persist=True,
    ),
    "openbsd": _seam_tested(
        "openbsd",
        "/dev/tunN and /dev/tapN (AF header always on), ioctls, PF_ROUTE",
        tap=True,
        persist=True,
    ),
    "netbsd": _seam_tested(
        "netbsd",
        "/dev/tunN with TUNSIFHEAD (AF header), cloning /dev/tap, ioctls, PF_ROUTE",
        tap=True,
        persist=True,
    ),
    "windows": _seam_tested(
        "windows", "wintun.dll session rings (ctypes), IP Helper API", tap=False, persist=False
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


def refuse(backend: str, feature: str) -> NotImplementedError:
    return NotImplementedError(f"{feature} is not available on {pretty(backend)}")


def check_supported(backend: str, config: TunConfig) -> None:
    """Refuse, by the capability table, the options a non-Linux backend lacks."""
    caps = CAPABILITIES[backend]
    if config.layer is Layer.L2 and not caps.tap:
        raise refuse(backend, "TAP (open_tap)")
    if config.offload is True:
        raise OffloadUnavailableError(
            errno.EOPNOTSUPP, f"offload=True: virtio-net offload is Linux-only ({backend})"
        )
    if config.queues != 1:
        raise refuse(backend, f"queues={config.queues} (multi-queue)")
    if config.netns is not None:
        raise refuse(backend, "netns= (network namespaces are Linux's)")
    if config.owner is not None or config.group is not None:
        raise refuse(backend, "owner=/group=")
    if config.packet_info:
        raise refuse(backend, "packet_info=True")
    if config.mac is not None:
        raise refuse(backend, "mac=")
    if config.persist and not caps.persist:
        raise refuse(backend, "persist=True")
    if not config.ipv6_link_local:
        raise refuse(
            backend, "ipv6_link_local=False (turning off IPv6 link-local autoconfiguration)"
        )
    peers = any(isinstance(a, PeerAddress) for a in config.addresses)
    if peers and config.layer is Layer.L2:
        raise refuse(backend, "a peer address on a TAP device (only tun is point-to-point)")
    if peers and backend == "windows":
        raise refuse(
            backend,
            "a point-to-point peer address (adapters have no destination address; add the "
            "local address and route the peer's network with add_route)",
        )


def plain_fd_device(
    spec: FdSpec,
    *,
    framing: Framing | None = None,
    control: Control | None = None,
    packet_info: bool = False,
) -> Device:
    """An fd whose device needs nothing but reads and writes (plain or AF-header framing)."""
    if framing is None:
        framing = AfFraming() if spec.af_header else PlainFraming()
    return Device(
        layer=spec.layer,
        ports=[FdPort(spec.fd, owned=spec.owned)],
        framings=[framing],
        control=control,
        packet_info=packet_info,
    )


def default_syscalls() -> Syscalls:
    """The running system's own calls, for the macOS and BSD backends (tests pass fakes)."""
    if sys.platform == "win32":
        raise NotImplementedError("the macOS and BSD backends do not run on Windows")
    else:
        from ._posix import PosixSyscalls

        return PosixSyscalls()


class FdOnlyBackend:
    """Systems that hand VPN apps a ready-made fd (Android, iOS): ``from_fd`` only."""

    def __init__(self, name: str) -> None:
        self.name = name

    def check(self, config: TunConfig) -> None:
        raise NotImplementedError(
            f"open_tun/open_tap can't create devices on {self.name!r}: the system hands VPN "
            "apps a ready-made fd (Android VpnService, iOS NEPacketTunnelProvider); wrap it "
            "with trio_tun.from_fd (see the 'Platforms' page of the docs)"
        )

    async def open(self, config: TunConfig) -> Device:
        self.check(config)
        raise AssertionError("unreachable")

    def wrap_fd(self, spec: FdSpec) -> Device:
        return plain_fd_device(spec)
