"""Device control for the non-Linux backends, behind the streams' usual methods.

On Linux a stream configures its device through netlink (``_netlink`` and
``_device.DeviceControlMixin``).  The other systems do the same work with
ioctls and routing sockets (macOS, the BSDs) or the IP Helper API (Windows);
each backend provides an :class:`InterfaceControl`, and
:class:`PlatformControlMixin` serves it through exactly the methods and
properties Linux streams have, with the same error conventions.

Like netlink calls, these run in a worker thread (``anyio.to_thread``) and a
call already in flight is not abandoned on cancellation.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

from .._config import Address, AddressLike, TunConfig, parse_address, parse_network, validate_mtu
from .._errors import BrokenResourceError, NoDeviceControlError, TunPermissionError

if TYPE_CHECKING:
    from .._stream import PacketStream

T = TypeVar("T")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Upper bound on the shielded clean-up when leaving ``open_tun``.
CLEANUP_TIMEOUT = 5.0


class InterfaceControl(Protocol):
    """The synchronous device-control operations a backend provides.

    Methods raise the same exceptions as the Linux ones: ``FileExistsError``
    for an address or route that is already there, ``LookupError`` for one
    that is not, ``TunPermissionError`` without privileges,
    ``BrokenResourceError`` when the interface is gone.
    """

    @property
    def name(self) -> str: ...
    @property
    def index(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    def get_mtu(self) -> int: ...
    def set_mtu(self, mtu: int) -> None: ...
    def set_up(self, up: bool) -> None: ...
    def is_up(self) -> bool: ...
    def addresses(self) -> list[Address]: ...
    def add_address(self, address: Address) -> None: ...
    def remove_address(self, address: Address) -> None: ...
    def add_route(self, network: Network, metric: int | None) -> None: ...
    def remove_route(self, network: Network) -> None: ...
    def routes(self) -> list[Network]: ...
    def close(self) -> None: ...


def translate_errno(exc: OSError, what: str) -> Exception:
    """Map an ``OSError`` from an ioctl or routing socket to the Linux conventions."""
    code = exc.errno
    if code is None:
        return exc
    message = f"{what}: {os.strerror(code)}"
    if code in (errno.EPERM, errno.EACCES):
        return TunPermissionError(code, f"{what} needs administrator rights (run as root)")
    if code in (errno.ENXIO, errno.ENODEV):
        return BrokenResourceError(f"{what}: the device no longer exists")
    if code == errno.EEXIST:
        return FileExistsError(code, message)
    if code in (errno.EADDRNOTAVAIL, errno.ESRCH, errno.ENOENT):
        return LookupError(message)
    if code == errno.EINVAL:
        return ValueError(message)
    return OSError(code, message)


class PlatformControlMixin:
    """The device-control API of :class:`~trio_tun.PacketStream`, over an InterfaceControl.

    Mixed in *before* the stream class, so these definitions replace the
    netlink-based ones of the Linux streams.
    """

    _ifcontrol: InterfaceControl | None

    def _require_control_object(self) -> InterfaceControl:
        control = self._ifcontrol
        if control is None or control.closed:
            raise NoDeviceControlError(
                "this stream has no device control (it wraps an fd whose device is unknown, "
                "or the device was closed)"
            )
        return control

    async def _run(self, fn: Callable[[], T]) -> T:
        return await anyio.to_thread.run_sync(fn)

    def _control_attributes(self) -> dict[Any, Callable[[], Any]]:
        from .._stream import TunAttribute

        if self._ifcontrol is None:
            return {}
        return {
            TunAttribute.name: lambda: self.name,
            TunAttribute.index: lambda: self.index,
            TunAttribute.mtu: lambda: self.mtu,
        }

    @property
    def name(self) -> str:
        """The interface name, e.g. ``"utun4"``."""
        return self._require_control_object().name

    @property
    def index(self) -> int:
        """The interface index."""
        return self._require_control_object().index

    @property
    def mtu(self) -> int:
        """The device's current MTU, as the system has it now."""
        return self._require_control_object().get_mtu()

    async def set_mtu(self, mtu: int) -> None:
        """Change the MTU (68..65535; at least 1280 while IPv6 addresses are set)."""
        validate_mtu(mtu)
        control = self._require_control_object()
        await self._run(lambda: control.set_mtu(mtu))

    async def set_up(self) -> None:
        """Bring the device up."""
        control = self._require_control_object()
        await self._run(lambda: control.set_up(True))

    async def set_down(self) -> None:
        """Take the device down."""
        control = self._require_control_object()
        await self._run(lambda: control.set_up(False))

    async def is_up(self) -> bool:
        control = self._require_control_object()
        return await self._run(control.is_up)

    async def addresses(self) -> list[Address]:
        """Every address on the device, IPv4 and IPv6 (link-local ones included)."""
        return await self._run(self._require_control_object().addresses)

    async def add_address(self, address: AddressLike) -> None:
        """Add ``"10.0.0.1/24"``-style *address*; FileExistsError if already there."""
        addr = parse_address(address)
        control = self._require_control_object()
        await self._run(lambda: control.add_address(addr))

    async def remove_address(self, address: AddressLike) -> None:
        """Remove *address*; LookupError if it is not on the device."""
        addr = parse_address(address)
        control = self._require_control_object()
        await self._run(lambda: control.remove_address(addr))

    async def add_route(self, prefix: str | Network, *, metric: int | None = None) -> None:
        """Route *prefix* (e.g. ``"10.9.0.0/16"``) through this device."""
        net = parse_network(prefix)
        control = self._require_control_object()
        await self._run(lambda: control.add_route(net, metric))

    async def remove_route(self, prefix: str | Network) -> None:
        """Remove a route added with :meth:`add_route` (LookupError if absent)."""
        net = parse_network(prefix)
        control = self._require_control_object()
        await self._run(lambda: control.remove_route(net))

    async def routes(self) -> list[Network]:
        """Prefixes routed through this device."""
        return await self._run(self._require_control_object().routes)


def configure(control: InterfaceControl, config: TunConfig) -> None:
    """Apply an ``open_tun`` request's MTU, addresses and link state (synchronously)."""
    if config.mtu is not None:
        control.set_mtu(config.mtu)
    for address in config.addresses:
        control.add_address(address)
    if config.up:
        control.set_up(True)


@contextlib.asynccontextmanager
async def device_context(
    stream: PacketStream, control: InterfaceControl | None, config: TunConfig
) -> AsyncIterator[Any]:
    """Configure *stream*'s device, yield the stream, and close it when the block is left.

    The stream is closed (and with it the device, unless persistent) on every
    way out, shielded and bounded in time, as on Linux.
    """
    try:
        if control is not None:
            await anyio.to_thread.run_sync(lambda: configure(control, config))
    except BaseException:
        stream.close()
        raise
    try:
        yield stream
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_TIMEOUT):
            stream.close()
            await anyio.lowlevel.checkpoint()


__all__ = [
    "CLEANUP_TIMEOUT",
    "InterfaceControl",
    "Network",
    "PlatformControlMixin",
    "configure",
    "device_context",
    "translate_errno",
]
