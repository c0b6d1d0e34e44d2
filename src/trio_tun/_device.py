"""Device control on a stream: name, MTU, addresses, routes, link state.

The methods run netlink in a worker thread (``anyio.to_thread``), so they
never block the event loop, on Trio or asyncio alike.  A netlink call in
flight is not abandoned on cancellation: the kernel's state and ours must not
disagree about whether an address was added.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Callable
from typing import TypeVar

import anyio.to_thread

from . import _netns
from ._config import Address, AddressLike, parse_address, parse_network, validate_mtu
from ._errors import BrokenResourceError, NoDeviceControlError
from ._netlink import DeviceControl
from .platform import linux

T = TypeVar("T")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class DeviceControlMixin:
    """Mixed into packet streams that know which device they belong to."""

    _control: DeviceControl | None

    def _require_control(self) -> DeviceControl:
        control = self._control
        if control is None or control._closed:
            raise NoDeviceControlError(
                "this stream has no device control (it wraps an fd whose device is unknown, "
                "or the device was closed)"
            )
        return control

    async def _call(self, fn: Callable[[], T]) -> T:
        return await anyio.to_thread.run_sync(fn)

    @property
    def name(self) -> str:
        """The interface name, e.g. ``"tun0"``."""
        return self._require_control().name

    @property
    def index(self) -> int:
        """The interface index in the namespace the device lives in."""
        return self._require_control().index

    @property
    def mtu(self) -> int:
        """The device's current MTU, as the kernel has it now."""
        control = self._require_control()
        try:
            with _netns.entered(control.netns_fd):
                return linux.get_mtu(control.name)
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                raise BrokenResourceError(f"device {control.name!r} no longer exists") from None
            raise

    async def set_mtu(self, mtu: int) -> None:
        """Change the MTU (68..65535; at least 1280 while IPv6 addresses are set)."""
        validate_mtu(mtu)
        control = self._require_control()
        await self._call(lambda: control.set_mtu(mtu))

    async def set_up(self) -> None:
        """Bring the device up."""
        control = self._require_control()
        await self._call(lambda: control.set_up(True))

    async def set_down(self) -> None:
        """Take the device down; queued packets are dropped by the kernel."""
        control = self._require_control()
        await self._call(lambda: control.set_up(False))

    async def is_up(self) -> bool:
        control = self._require_control()
        return await self._call(control.is_up)

    async def addresses(self) -> list[Address]:
        """Every address on the device, IPv4 and IPv6 (link-local ones included)."""
        return await self._call(self._require_control().addresses)

    async def add_address(self, address: AddressLike) -> None:
        """Add ``"10.0.0.1/24"``-style *address*; FileExistsError if already there."""
        addr = parse_address(address)
        control = self._require_control()
        await self._call(lambda: control.add_address(addr))

    async def remove_address(self, address: AddressLike) -> None:
        """Remove *address*; LookupError if it is not on the device."""
        addr = parse_address(address)
        control = self._require_control()
        await self._call(lambda: control.remove_address(addr))

    async def add_route(self, prefix: str | Network, *, metric: int | None = None) -> None:
        """Route *prefix* (e.g. ``"10.9.0.0/16"``) through this device."""
        net = parse_network(prefix)
        control = self._require_control()
        await self._call(lambda: control.add_route(net, metric))

    async def remove_route(self, prefix: str | Network) -> None:
        """Remove a route added with :meth:`add_route` (LookupError if absent)."""
        net = parse_network(prefix)
        control = self._require_control()
        await self._call(lambda: control.remove_route(net))

    async def routes(self) -> list[Network]:
        """Prefixes routed through this device in the main table."""
        return await self._call(self._require_control().routes)
