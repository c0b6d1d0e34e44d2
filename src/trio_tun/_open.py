"""open_tun / open_tap / from_fd: build the config, pick the backend, assemble the streams.

Every system goes through the same three steps; what differs lives in the
backend (:mod:`trio_tun.platform`).  Leaving ``open_tun`` by any path closes
every queue and releases the device in one shielded clean-up bounded by
:data:`CLEANUP_TIMEOUT`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterable
from typing import Final, TypeVar, cast

import anyio
import anyio.lowlevel

from . import platform as _platform
from ._config import (
    AddressLike,
    AnyAddressLike,
    Layer,
    NetnsLike,
    OffloadFlags,
    OffloadMode,
    TunConfig,
    with_peer,
)
from ._stream import PacketStream, TapStream, TunStream, link_queues, make_stream
from .platform import Backend, Device, FdSpec, HeaderMode

#: Upper bound on the shielded clean-up when leaving ``open_tun``.
CLEANUP_TIMEOUT: Final = 5.0

S = TypeVar("S", bound=PacketStream)


def select_backend(platform: str | None = None) -> Backend:
    """The backend for *platform* (default: the running system)."""
    name = _platform.backend_name(platform)
    if name == "linux":
        from .platform.linux.backend import LinuxBackend

        return LinuxBackend()
    if name == "darwin":
        from .platform.darwin import DarwinBackend

        return DarwinBackend()
    if name in _platform.BSD_NAMES:
        from .platform.bsd import SYSTEMS, BsdBackend

        return BsdBackend(SYSTEMS[name])
    if name == "windows":
        from .platform.windows import WindowsBackend

        return WindowsBackend()
    return _platform.FdOnlyBackend(name)


def _streams(device: Device, *, owns_control: bool) -> list[PacketStream]:
    streams = [
        make_stream(
            device.layer,
            port,
            framing,
            control=device.control,
            owns_control=owns_control,
            offload=device.offload,
            packet_info=device.packet_info,
        )
        for port, framing in zip(device.ports, device.framings, strict=True)
    ]
    link_queues(streams)
    return streams


def _close(streams: Iterable[PacketStream], device: Device) -> None:
    try:
        for stream in streams:
            stream.close()
    finally:
        try:
            # Ports no stream was built around yet (closing twice is harmless).
            for port in device.ports:
                port.close()
        finally:
            if device.control is not None:
                device.control.close()


@contextlib.asynccontextmanager
async def open_device(backend: Backend, config: TunConfig) -> AsyncIterator[PacketStream]:
    """Open *config* with *backend*; yield queue 0; release everything on the way out.

    The backend leaves nothing behind if opening fails; once it succeeded, the
    streams and the control are closed here, shielded from cancellation and
    bounded in time, whichever way the block is left.
    """
    # Cancelled already?  Then do not make a device only to delete it again.
    await anyio.lowlevel.checkpoint()
    device = await backend.open(config)
    streams: list[PacketStream] = []
    try:
        streams = _streams(device, owns_control=False)
        yield streams[0]
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_TIMEOUT):
            _close(streams, device)
            await anyio.lowlevel.checkpoint()


def _open(config: TunConfig, backend: Backend | None) -> contextlib.AbstractAsyncContextManager[S]:
    backend = backend or select_backend()
    # Every refusal (name rules, options this system lacks) happens now, before
    # the caller enters the block and before any system call.
    backend.check(config)
    return cast("contextlib.AbstractAsyncContextManager[S]", open_device(backend, config))


def open_tun(
    name: str | None = None,
    *,
    addresses: Iterable[AnyAddressLike] = (),
    peer: AddressLike | None = None,
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
    ipv6_link_local: bool = True,
) -> contextlib.AbstractAsyncContextManager[TunStream]:
    """Create (or attach to) a TUN device and yield its first queue as a :class:`TunStream`.

    Args:
        name: Interface name, or a pattern such as ``"vpn%d"`` (something before
            the ``%d``); ``None`` lets the kernel pick (``tun0``, ``tun1``, ...).
            :attr:`~PacketStream.name` tells the name the device got.
        addresses: IPv4/IPv6 addresses with prefix, e.g. ``["10.8.0.1/24", "fd00::1/64"]``;
            each IP at most once.  A point-to-point address is written
            ``"10.8.0.1 peer 10.8.0.2"`` (or given as a :class:`PeerAddress`).
        peer: The other end of a point-to-point link (pytun's ``dstaddr``,
            tun-rs's ``destination``), paired with the one address of its IP
            version in *addresses*; a peer without a prefix takes that
            address's prefix length (see :doc:`device-control`).
        mtu: Device MTU (68..65535; at least 1280 with IPv6 addresses).
        up: Bring the device up once configured.
        persist: Keep the device after the last fd is closed (``TUNSETPERSIST``).
        owner: uid allowed to attach to the (persistent) device without privileges.
        group: gid allowed likewise.
        packet_info: Keep the kernel's 4-byte ``tun_pi`` header on every packet.
        netns: Move the device into this network namespace (a name from
            ``ip netns``, a path, or an open fd); the stream keeps working from
            here.  Needs ``CAP_SYS_ADMIN`` too.
        offload: ``"auto"`` (use virtio-net offload when the kernel has it),
            ``True`` (require it) or ``False`` (off; also clears a persistent
            device's offload mask).  With offload on, glibc's malloc is
            hinted once per process to keep up to 8 MiB of freed memory
            instead of returning each batch's to the kernel (see "Memory
            between batches" in the performance docs; a threshold set with
            ``MALLOC_TRIM_THRESHOLD_`` or ``mallopt`` takes precedence).
        queues: Number of queues (``IFF_MULTI_QUEUE`` when more than one).
        wintun_dll: Windows only: path of ``wintun.dll`` (default: next to the
            application, then the DLL search path).  Ignored elsewhere.
        ring_capacity: Windows only: the wintun session ring, a power of two
            from 128 KiB to 64 MiB (default 4 MiB).  Ignored elsewhere.
        ipv6_link_local: ``False``: no ``fe80::`` address and so no router
            solicitations or MLD reports from the kernel reaching the
            application (Linux ``addrgenmode none``, set before the device goes
            up).  Linux only.

    Raises:
        ValueError: bad configuration, raised before any device exists.
        TunPermissionError: missing CAP_NET_ADMIN (or, for ``netns=``,
            CAP_SYS_ADMIN); the message says which.
        DeviceBusyError: the name is held by a device in use, by an interface
            of another kind, or by a device whose mode differs (TUN/TAP,
            ``queues``); the message says which.
        TunUnavailableError: no ``/dev/net/tun`` (the message says how to load it).
        NotImplementedError: an option the platform lacks (see :doc:`platforms`).

    Leaving the block by any path closes every queue and deletes the device
    unless ``persist=True``.  On macOS, the BSDs and Windows the same call
    makes a utun, tun or wintun device (see :doc:`platforms`).
    """
    config = TunConfig(
        layer=Layer.L3,
        name=name,
        addresses=with_peer(addresses, peer),
        mtu=mtu,
        up=up,
        persist=persist,
        owner=owner,
        group=group,
        packet_info=packet_info,
        netns=netns,
        offload=offload,
        queues=queues,
        wintun_dll=wintun_dll,
        ring_capacity=ring_capacity,
        ipv6_link_local=ipv6_link_local,
    )
    return _open(config, None)


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
    ipv6_link_local: bool = True,
) -> contextlib.AbstractAsyncContextManager[TapStream]:
    """Create (or attach to) a TAP device; like :func:`open_tun` but for Ethernet frames.

    Args:
        mac: The device's MAC address (``"02:00:00:00:00:01"``); random when omitted.

    Other arguments are those of :func:`open_tun` (``ipv6_link_local=False``
    included; ``peer=`` is TUN's).  Offload is not offered on TAP.
    TAP exists on Linux and the BSDs; elsewhere this raises ``NotImplementedError``.
    """
    config = TunConfig(
        layer=Layer.L2,
        name=name,
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
        ipv6_link_local=ipv6_link_local,
    )
    return _open(config, None)


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
    spec = FdSpec(
        fd=fd,
        owned=owned,
        layer=Layer(layer) if isinstance(layer, str) else layer,
        vnet_hdr=vnet_hdr,
        packet_info=packet_info,
        offload=offload,
        header=header,
    )
    return wrap_fd(select_backend(), spec)


def wrap_fd(backend: Backend, spec: FdSpec) -> PacketStream:
    """:func:`from_fd` through a given backend."""
    (stream,) = _streams(backend.wrap_fd(spec), owns_control=True)
    return stream
