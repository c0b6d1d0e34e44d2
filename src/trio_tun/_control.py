"""The device-control interface every backend implements, synchronously.

:class:`~trio_tun.PacketStream` serves these operations to users as its
``name``/``mtu`` properties and ``set_mtu``/``add_address``/... coroutines,
running each call in a worker thread (``anyio.to_thread``) so that netlink,
ioctls, routing sockets or the IP Helper API never block the event loop.

Adding a control method means: one method here, one in each backend's control
class (``platform/linux/netlink.py``, ``platform/_bsdnet.py``,
``platform/windows.py``, ``testing.MemoryControl``), and the public coroutine on
``PacketStream``.

Every implementation raises the same exceptions (see ``_errors.control_error``):
``FileExistsError`` for an address or route that is already there,
``LookupError`` for one that is not, ``TunPermissionError`` without privileges,
``BrokenResourceError`` when the device is gone.
"""

from __future__ import annotations

import ipaddress
from typing import Protocol

from ._config import Address, TunConfig

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Control(Protocol):
    """Synchronous configuration of one device."""

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
    def close(self) -> None:
        """Release what the control holds (and, where the system ties the two, the device)."""
        ...


class NamedControl:
    """The identity part every control shares: a name, an index, closed or not."""

    def __init__(self, name: str, index: int) -> None:
        self._name = name
        self._index = index
        self._closed = False

    @property
    def name(self) -> str:
        return self._name

    @property
    def index(self) -> int:
        return self._index

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True


def configure(control: Control, config: TunConfig) -> None:
    """Apply an ``open_tun`` request's MTU, addresses and link state, in that order."""
    if config.mtu is not None:
        control.set_mtu(config.mtu)
    for address in config.addresses:
        control.add_address(address)
    if config.up:
        control.set_up(True)
