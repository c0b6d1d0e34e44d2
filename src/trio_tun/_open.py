"""open_tun / open_tap / from_fd: where devices are made, configured and torn down."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import AsyncIterator, Iterable
from typing import Any

import anyio
import anyio.to_thread

from . import _netns
from ._config import AddressLike, Layer, NetnsLike, OffloadMode, TunConfig
from ._errors import OffloadUnavailableError
from ._netlink import DeviceControl
from ._stream import PacketStream, TapStream, TunStream
from .platform import _dispatch, linux
from .platform._dispatch import HeaderMode
from .platform.linux import NO_OFFLOAD, OffloadFlags

#: Upper bound on the shielded clean-up when leaving ``open_tun``.
CLEANUP_TIMEOUT = 5.0


def _want_vnet_hdr(config: TunConfig, fd: int) -> bool:
    if config.offload is False:
        return False
    problem = None
    if config.layer is Layer.L2:
        problem = "offload is only implemented for TUN devices"
    elif config.packet_info:
        problem = "offload can't be combined with packet_info=True"
    elif not linux.features(fd) & linux.IFF_VNET_HDR:
        problem = "this kernel's TUN driver has no IFF_VNET_HDR"
    if problem is None:
        return True
    if config.offload is True:
        raise OffloadUnavailableError(errno.EOPNOTSUPP, f"offload=True: {problem}")
    return False


def _iff_flags(config: TunConfig, vnet_hdr: bool) -> int:
    flags = linux.IFF_TAP if config.layer is Layer.L2 else linux.IFF_TUN
    if not config.packet_info:
        flags |= linux.IFF_NO_PI
    if vnet_hdr:
        flags |= linux.IFF_VNET_HDR
    if config.queues > 1:
        flags |= linux.IFF_MULTI_QUEUE
    return flags


def _stream_class(layer: Layer) -> type[PacketStream]:
    return TapStream if layer is Layer.L2 else TunStream


class _Opened:
    """The fds and netlink handle of a device being opened, for unified clean-up."""

    def __init__(self) -> None:
        self.fds: list[int] = []
        self.control: DeviceControl | None = None
        self.streams: list[PacketStream] = []
        self.was_persistent = False
        #: Set once the open succeeded: a persistent device we attached to but
        #: were not asked to keep goes when we leave.  A failed open must never
        #: delete somebody else's device.
        self.clear_persist = False

    def close(self) -> None:
        if self.clear_persist and self.fds:
            # We attached to a persistent device but were not asked to keep it.
            with contextlib.suppress(OSError):
                linux.set_persist(self.fds[0], False)
        for stream in self.streams:
            stream.close()
        for fd in self.fds[len(self.streams) :]:
            os.close(fd)
        self.fds.clear()
        if self.control is not None:
            self.control.close()


def _create_queues(config: TunConfig, opened: _Opened) -> tuple[str, bool, OffloadFlags]:
    """The synchronous part: open the queue fds in the caller's namespace."""
    first = linux.open_tun_file()
    opened.fds.append(first)
    vnet_hdr = _want_vnet_hdr(config, first)
    flags = _iff_flags(config, vnet_hdr)
    name = linux.set_iff(first, config.name, flags)
    _, actual = linux.get_iff(first)
    opened.was_persistent = bool(actual & linux.IFF_PERSIST)
    if config.persist and not actual & linux.IFF_PERSIST:
        linux.set_persist(first, True)
    if config.owner is not None:
        linux.set_owner(first, config.owner)
    if config.group is not None:
        linux.set_group(first, config.group)
    offload = NO_OFFLOAD
    if vnet_hdr:
        offload = linux.negotiate_offload(first, required=config.offload is True)
    else:
        # A persistent device remembers its offload mask; without a virtio
        # header the kernel would then hand us unsplit super-packets.
        with contextlib.suppress(OSError):
            linux.set_offload(first, NO_OFFLOAD)
    for _ in range(config.queues - 1):
        fd = linux.open_tun_file()
        opened.fds.append(fd)
        linux.set_iff(fd, name, flags)
    return name, vnet_hdr, offload


async def _open(config: TunConfig) -> _Opened:
    opened = _Opened()
    try:
        name, vnet_hdr, offload = _create_queues(config, opened)
        # The device was born in this thread's namespace: remember it, since
        # netlink work happens on pooled threads that may be elsewhere.
        here = _netns.open_current()
        try:
            index = socket.if_nametoindex(name)
        except OSError:
            os.close(here)
            raise
        control = opened.control = DeviceControl(name=name, index=index, netns_fd=here)
        if config.netns is not None:
            if isinstance(config.netns, int):
                target = os.dup(config.netns)
            else:
                target = _netns.open_path(config.netns)
            await anyio.to_thread.run_sync(control.move_to, target)
        await anyio.to_thread.run_sync(
            lambda: control.configure(
                mtu=config.mtu, mac=config.mac, addresses=config.addresses, up=config.up
            )
        )
        cls = _stream_class(config.layer)
        for fd in opened.fds:
            opened.streams.append(
                cls(
                    fd,
                    owned=True,
                    offload=offload,
                    vnet_hdr=vnet_hdr,
                    packet_info=config.packet_info,
                    control=control,
                )
            )
        for stream in opened.streams:
            stream._queues = opened.streams
        opened.clear_persist = opened.was_persistent and not config.persist
    except BaseException:
        opened.close()
        raise
    return opened


@contextlib.asynccontextmanager
async def _device(config: TunConfig) -> AsyncIterator[Any]:
    opened = await _open(config)
    try:
        yield opened.streams[0]
    finally:
        # Leaving by any path (exception, cancellation, KeyboardInterrupt) must
        # still release the device; closing fds is synchronous and cannot hang.
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_TIMEOUT):
            opened.close()
            await anyio.lowlevel.checkpoint()


def _open_layer(
    layer: Layer, name: str | None, options: dict[str, Any], platform_options: dict[str, Any]
) -> contextlib.AbstractAsyncContextManager[Any]:
    """Validate and open on Linux; hand everything to another platform's backend elsewhere."""
    if _dispatch.OTHER_PLATFORM:
        return _dispatch.open_device(layer, name, **options, **platform_options)
    return _device(TunConfig(layer=layer, name=name, **options))


def open_tun(
    name: str | None = None,
    *,
    addresses: Iterable[AddressLike] = (),
    mtu: int | None = None,
    up: bool = True,
    persist: bool = False,
    owner: int | None = None,
    group: int | None = None,
    packet_info: bool = False,
    netns: NetnsLike = None,
    offload: OffloadMode = "auto",
    queues: int = 1,
    wintun_dll: str | os.PathLike[str] | None = None,
    ring_capacity: int | None = None,
) -> contextlib.AbstractAsyncContextManager[TunStream]:
    """Create (or attach to) a TUN device and yield its first queue as a :class:`TunStream`.

    Args:
        name: Interface name, or a pattern such as ``"vpn%d"``; ``None`` lets the
            kernel pick (``tun0``, ``tun1``, ...).
        addresses: IPv4/IPv6 addresses with prefix, e.g. ``["10.8.0.1/24", "fd00::1/64"]``.
        mtu: Device MTU (68..65535; at least 1280 with IPv6 addresses).
        up: Bring the device up once configured.
        persist: Keep the device after the last fd is closed (``TUNSETPERSIST``).
        owner: uid allowed to attach to the (persistent) device without privileges.
        group: gid allowed likewise.
        packet_info: Keep the kernel's 4-byte ``tun_pi`` header on every packet.
        netns: Move the device into this network namespace (a name from
            ``ip netns``, a path, or an open fd); the stream keeps working from here.
        offload: ``"auto"`` (use virtio-net offload when the kernel has it),
            ``True`` (require it) or ``False`` (off; also clears a persistent
            device's offload mask).
        queues: Number of queues (``IFF_MULTI_QUEUE`` when more than one).
        wintun_dll: Windows only: path of ``wintun.dll`` (default: next to the
            application, then the DLL search path).  Ignored elsewhere.
        ring_capacity: Windows only: the wintun session ring, a power of two
            from 128 KiB to 64 MiB (default 4 MiB).  Ignored elsewhere.

    Raises:
        ValueError: bad configuration, raised before any system call.
        TunPermissionError: missing CAP_NET_ADMIN (the message says so).
        TunUnavailableError: no ``/dev/net/tun`` (the message says how to load it).
        NotImplementedError: an option the platform lacks (see :doc:`platforms`).

    Leaving the block by any path closes every queue and deletes the device
    unless ``persist=True``.  On macOS, the BSDs and Windows the same call
    makes a utun, tun or wintun device (see :doc:`platforms`).
    """
    options = dict(
        addresses=addresses,
        mtu=mtu,
        up=up,
        persist=persist,
        owner=owner,
        group=group,
        packet_info=packet_info,
        netns=netns,
        offload=offload,
        queues=queues,
    )
    return _open_layer(
        Layer.L3, name, options, {"wintun_dll": wintun_dll, "ring_capacity": ring_capacity}
    )


def open_tap(
    name: str | None = None,
    *,
    addresses: Iterable[AddressLike] = (),
    mac: str | bytes | None = None,
    mtu: int | None = None,
    up: bool = True,
    persist: bool = False,
    owner: int | None = None,
    group: int | None = None,
    packet_info: bool = False,
    netns: NetnsLike = None,
    queues: int = 1,
) -> contextlib.AbstractAsyncContextManager[TapStream]:
    """Create (or attach to) a TAP device; like :func:`open_tun` but for Ethernet frames.

    Args:
        mac: The device's MAC address (``"02:00:00:00:00:01"``); random when omitted.

    Other arguments are those of :func:`open_tun`.  Offload is not offered on TAP.
    TAP exists on Linux and the BSDs; elsewhere this raises ``NotImplementedError``.
    """
    options = dict(
        addresses=addresses,
        mac=mac,
        mtu=mtu,
        up=up,
        persist=persist,
        owner=owner,
        group=group,
        packet_info=packet_info,
        netns=netns,
        offload=False,
        queues=queues,
    )
    return _open_layer(Layer.L2, name, options, {})


def from_fd(
    fd: int,
    *,
    owned: bool = True,
    layer: Layer | str = Layer.L3,
    vnet_hdr: bool | None = None,
    packet_info: bool | None = None,
    offload: OffloadFlags | None = None,
    header: HeaderMode = None,
) -> PacketStream:
    """Wrap a TUN/TAP fd obtained elsewhere (Android ``VpnService``, fd passing, ...).

    Args:
        fd: The file descriptor; it is made non-blocking.
        owned: Close *fd* when the stream is closed.  With ``owned=False`` the
            fd is borrowed: never closed, and its blocking mode is restored.
        layer: ``Layer.L3``/``"tun"`` or ``Layer.L2``/``"tap"``; taken from the
            kernel when the fd is a Linux TUN fd.
        vnet_hdr: Whether reads carry a virtio-net header; taken from the kernel
            when it can say, else ``False``.
        packet_info: Whether packets carry the 4-byte ``tun_pi`` header; likewise.
        offload: The offload mask the device was given (``TUNSETOFFLOAD``), which
            the kernel does not report back.  It decides whether UDP segments
            are coalesced on send (only with USO).  Default: CSUM+TSO4+TSO6
            when the fd has a virtio header, else none.
        header: ``None``/``"none"``: every read is one bare packet (Linux,
            Android's ``VpnService``).  ``"af4"``: packets carry the 4-byte
            big-endian address-family header of macOS/iOS utun and BSD tun fds,
            numbered as this system numbers ``AF_INET6``; the stream strips it
            on receive and adds it on send, so users see bare IP packets.

    On Linux, when the fd is a ``/dev/net/tun`` fd, the stream also gets device
    control (name, MTU, addresses) for the device in the caller's namespace;
    on macOS and FreeBSD an ``"af4"`` fd whose interface can be named gets it
    too.  See :doc:`platforms` for the Android and iOS recipes.
    """
    if header == "af4" or _dispatch.OTHER_PLATFORM or header not in (None, "none"):
        return _dispatch.wrap_fd(
            fd,
            owned=owned,
            layer=layer,
            vnet_hdr=vnet_hdr,
            packet_info=packet_info,
            offload=offload,
            header=header,
        )
    kind = Layer(layer) if isinstance(layer, str) else layer
    control: DeviceControl | None = None
    try:
        name, flags = linux.get_iff(fd)
    except OSError:
        name, flags = "", 0
    if name:
        kind = Layer.L2 if flags & linux.IFF_TAP else Layer.L3
        if vnet_hdr is None:
            vnet_hdr = bool(flags & linux.IFF_VNET_HDR)
        if packet_info is None:
            packet_info = not flags & linux.IFF_NO_PI
        try:
            control = DeviceControl(
                name=name, index=socket.if_nametoindex(name), netns_fd=_netns.open_current()
            )
        except OSError:
            control = None
    if offload is None:
        # The kernel can't tell us the mask; TCP-only is the safe guess, since
        # received segments are split whatever the mask says.
        offload = linux.TCP_OFFLOAD if vnet_hdr else NO_OFFLOAD
    return _stream_class(kind)(
        fd,
        owned=owned,
        offload=offload,
        vnet_hdr=bool(vnet_hdr),
        packet_info=bool(packet_info),
        control=control,
        owns_control=True,
    )
