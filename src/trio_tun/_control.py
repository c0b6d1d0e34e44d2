"""The device-control interface every backend implements, synchronously.

:class:`~trio_tun.PacketStream` serves these operations to users as its
``name``/``mtu`` properties and ``set_mtu``/``add_address``/... coroutines,
running each call in a worker thread (``anyio.to_thread``) so that netlink,
ioctls, routing sockets or the IP Helper API never block the event loop.  The
exceptions are ``set_persist``/``set_owner``/``set_group``, one quick ioctl on
the calling queue's fd (Linux), which run on the event loop's thread so that
the fd can't be closed and reused under them.

Adding a control method means: one method here, one in each backend's control
class (``platform/linux/netlink.py``, ``platform/_bsdnet.py``,
``platform/windows.py``, ``testing.MemoryControl``), and the public coroutine on
``PacketStream``.

Every implementation raises the same exceptions (see ``_errors.control_error``):
``FileExistsError`` for an address or route that is already there,
``LookupError`` for one that is not, ``TunPermissionError`` without privileges,
``BrokenResourceError`` when the device is gone, and ``NotImplementedError``
naming the system for what it can't do (``docs/device-control.rst`` lists which).
"""

from __future__ import annotations

from typing import Protocol

from ._config import AnyAddress, Network, Route, TunConfig

__all__ = ["Control", "NamedControl", "Network", "configure"]


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
    def addresses(self) -> list[AnyAddress]:
        """Every address; point-to-point ones as ``PeerAddress``."""
        ...

    def add_address(self, address: AnyAddress) -> None: ...
    def remove_address(self, address: AnyAddress) -> None: ...
    def add_route(self, route: Route) -> None:
        """Add *route* through this device (``route.table`` ``None``: the main table)."""
        ...

    def remove_route(self, route: Route) -> None:
        """Remove the route matching *route*'s prefix (and, where given, the rest of it)."""
        ...

    def routes(self, table: int | None) -> list[Route]:
        """Routes through this device in *table* (``None``: the main table)."""
        ...

    def set_persist(self, persist: bool, fd: int) -> None:
        """Keep the device after the last handle closes, or not.

        *fd* is the calling queue's descriptor (-1 where there is none); on
        Linux the setting is an ioctl on it, which is quick and never blocks,
        so this one runs on the event loop's thread.
        """
        ...

    def set_owner(self, uid: int, fd: int) -> None:
        """Let *uid* attach to the device without privileges (``TUNSETOWNER``); as above."""
        ...

    def set_group(self, gid: int, fd: int) -> None:
        """Let group *gid* attach likewise (``TUNSETGROUP``); as above."""
        ...

    def set_mac(self, mac: bytes) -> None:
        """Change a TAP device's Ethernet address."""
        ...

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
