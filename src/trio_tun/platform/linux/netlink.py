"""Linux device control through rtnetlink (pyroute2), never by running ``ip``.

Everything in ``NetlinkControl`` is synchronous and is meant to run in a worker
thread (``anyio.to_thread.run_sync``): pyroute2's sync ``IPRoute`` blocks, and
its async flavour only works under asyncio.  Each call opens its netlink
socket *inside* the device's namespace (see ``netns.py``), so it does not matter
which namespace the pooled worker thread happens to be in.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final, TypeVar

import attrs

from ..._config import (
    MAIN_TABLE,
    ROUTE_SCOPES,
    AnyAddress,
    IPAddress,
    Network,
    PeerAddress,
    Route,
    parse_address,
)
from ..._errors import BrokenResourceError, control_error
from . import netns as _netns
from . import tun as _tun
from .tun import get_mtu

IFA_F_NODAD: Final = 0x02
# Even with IFA_F_NODAD the kernel installs an IPv6 address's local route from
# its addrconf work queue, a moment *after* the netlink call returns; a packet
# for the address arriving in between is dropped (Ip6InAddrErrors).  So adding
# IPv6 addresses to an up device waits, bounded, until each one routes as local.
RTN_LOCAL: Final = 2
IFF_UP: Final = 0x1
IFF_LOWER_UP: Final = 0x10000
IPV6_READY_TIMEOUT: Final = 2.0
IPV6_READY_POLL: Final = 0.002
#: ``IFLA_INET6_ADDR_GEN_MODE`` values (<linux/if_link.h>): ``NONE`` makes no
#: link-local address, so the kernel has no source for router solicitations.
IN6_ADDR_GEN_MODE_NONE: Final = 1
#: ``RT_SCOPE_LINK``: the scope of IPv6 link-local addresses in an address dump.
RT_SCOPE_LINK: Final = 253
#: ``RT_SCOPE_NOWHERE``: in a delete request, "whatever scope the route has".
RT_SCOPE_NOWHERE: Final = 255
RTN_UNICAST: Final = 1
_SCOPE_NAMES: Final = {number: name for name, number in ROUTE_SCOPES.items()}
T = TypeVar("T")
NEEDS_CAP: Final = "CAP_NET_ADMIN (run as root or grant it)"


def _load_iproute() -> Any:
    from pyroute2 import IPRoute

    return IPRoute


def _translate(exc: Exception, what: str) -> Exception:
    code = getattr(exc, "code", None)
    if not isinstance(code, int):
        return exc
    return control_error(code, what, privilege=NEEDS_CAP) or exc


@contextmanager
def _iproute(netns_fd: int | None, what: str) -> Iterator[Any]:
    iproute_cls = _load_iproute()
    with _netns.entered(netns_fd):
        ipr = iproute_cls()
    try:
        yield ipr
    except Exception as exc:
        translated = _translate(exc, what)
        if translated is exc:
            raise
        raise translated from None
    finally:
        ipr.close()


def _family(addr: AnyAddress | Network) -> int:
    return socket.AF_INET if addr.version == 4 else socket.AF_INET6


@attrs.define
class NetlinkControl:
    """Netlink handle on one device, addressed by ifindex in its namespace.

    Owns ``netns_fd`` (the namespace the device lives in) and closes it in
    ``close()``; holding the fd keeps that namespace reachable for reconfiguration.
    Every call on a device that no longer exists raises ``BrokenResourceError``,
    listings included.
    """

    name: str
    index: int
    netns_fd: int
    _closed: bool = attrs.field(default=False, init=False)

    @property
    def closed(self) -> bool:
        return self._closed

    def _run(self, what: str, op: Callable[[Any], T]) -> T:
        with _iproute(self.netns_fd, f"{what} on {self.name}") as ipr:
            return op(ipr)

    def configure(
        self,
        *,
        mtu: int | None,
        mac: bytes | None,
        addresses: Sequence[AnyAddress],
        up: bool,
        ipv6_link_local: bool = True,
    ) -> None:
        """Apply a fresh device's settings in one netlink session."""

        def op(ipr: Any) -> None:
            if mtu is not None:
                ipr.link("set", index=self.index, mtu=mtu)
            if mac is not None:
                ipr.link("set", index=self.index, address=mac.hex(":"))
            if not ipv6_link_local:
                # Before the link goes up: that is when the kernel would make
                # the fe80:: address and start soliciting routers from it.
                self._no_link_local(ipr)
            for addr in addresses:
                self._add_address(ipr, addr)
            if up:
                ipr.link("set", index=self.index, state="up")
                self._wait_ipv6_ready(ipr, addresses)

        self._run("configuring", op)

    def _no_link_local(self, ipr: Any) -> None:
        """``addrgenmode none``, and drop a link-local address the device already has."""
        spec = {"attrs": [("AF_INET6", {"attrs": [("IFLA_INET6_ADDR_GEN_MODE", 1)]})]}
        try:
            ipr.link("set", index=self.index, IFLA_AF_SPEC=spec)
        except Exception as exc:
            if getattr(exc, "code", None) == errno.EAFNOSUPPORT:
                return  # IPv6 is off in this kernel: there is no link-local to avoid
            raise
        # A device that was up already (attached, not created) keeps what it made.
        for msg in ipr.get_addr(family=socket.AF_INET6, index=self.index):
            if msg["scope"] == RT_SCOPE_LINK:
                ipr.addr(
                    "del",
                    index=self.index,
                    family=socket.AF_INET6,
                    address=msg.get_attr("IFA_ADDRESS"),
                    prefixlen=msg["prefixlen"],
                )

    def _wait_ipv6_ready(self, ipr: Any, addresses: Sequence[AnyAddress]) -> None:
        """Return once every IPv6 address in *addresses* routes as local (bounded; see top)."""
        pending = [addr for addr in addresses if addr.version == 6]
        if not pending:
            return
        (link,) = ipr.get_links(self.index)
        if link["flags"] & (IFF_UP | IFF_LOWER_UP) != IFF_UP | IFF_LOWER_UP:
            return  # not running: the kernel finishes the addresses when it is
        deadline = time.monotonic() + IPV6_READY_TIMEOUT
        while True:
            pending = [addr for addr in pending if not self._routes_as_local(ipr, addr)]
            if not pending or time.monotonic() >= deadline:
                return
            time.sleep(IPV6_READY_POLL)

    @staticmethod
    def _routes_as_local(ipr: Any, addr: AnyAddress) -> bool:
        try:
            answer = ipr.route("get", family=socket.AF_INET6, dst=str(addr.ip))
        except Exception:  # no route yet (ENETUNREACH): not ready
            return False
        return bool(answer) and answer[0]["type"] == RTN_LOCAL

    @staticmethod
    def _address_fields(addr: AnyAddress) -> dict[str, Any]:
        """The ``ipr.addr`` arguments naming *addr* (IFA_LOCAL/IFA_ADDRESS, prefix)."""
        if isinstance(addr, PeerAddress):
            # The kernel's point-to-point form: IFA_LOCAL is ours, IFA_ADDRESS
            # the peer, and the prefix length is the peer's.
            return {
                "local": str(addr.local),
                "address": str(addr.peer.ip),
                "prefixlen": addr.peer.network.prefixlen,
            }
        return {"address": str(addr.ip), "prefixlen": addr.network.prefixlen}

    def _add_address(self, ipr: Any, addr: AnyAddress) -> None:
        extra: dict[str, Any] = {}
        if addr.version == 6:
            # A tunnel endpoint has no neighbours to defend against; waiting for
            # duplicate address detection would only delay the first packet.
            extra["flags"] = IFA_F_NODAD
        ipr.addr(
            "add", index=self.index, family=_family(addr), **self._address_fields(addr), **extra
        )

    def get_mtu(self) -> int:
        """The MTU as the kernel has it now (a quick ioctl in the device's namespace)."""
        try:
            with _netns.entered(self.netns_fd):
                return get_mtu(self.name)
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                raise BrokenResourceError(f"device {self.name!r} no longer exists") from None
            raise

    def set_mtu(self, mtu: int) -> None:
        self._run("setting the MTU", lambda ipr: ipr.link("set", index=self.index, mtu=mtu))

    def set_up(self, up: bool) -> None:
        state = "up" if up else "down"

        def op(ipr: Any) -> None:
            ipr.link("set", index=self.index, state=state)
            if up:
                # Same gap as in configure(): addresses added while down get
                # their local routes only now.
                self._wait_ipv6_ready(ipr, self._addresses(ipr))

        self._run(f"setting {state}", op)

    def is_up(self) -> bool:
        links = self._run("reading flags", lambda ipr: ipr.get_links(self.index))
        return bool(links[0]["flags"] & 1)

    def _addresses(self, ipr: Any) -> list[AnyAddress]:
        out: list[AnyAddress] = []
        for msg in ipr.get_addr(index=self.index):
            # IPv4 always has both (equal unless point-to-point); IPv6 has
            # IFA_LOCAL only for a point-to-point address, IFA_ADDRESS the peer.
            local = msg.get_attr("IFA_LOCAL")
            address = msg.get_attr("IFA_ADDRESS")
            prefix = msg["prefixlen"]
            if local is not None and address is not None and local != address:
                out.append(
                    PeerAddress(ipaddress.ip_address(local), parse_address(f"{address}/{prefix}"))
                )
            else:
                out.append(parse_address(f"{local or address}/{prefix}"))
        return out

    def _require_link(self, ipr: Any) -> None:
        # A dump filtered on an ifindex that no longer exists is simply empty;
        # asking for the link itself fails with ENODEV (BrokenResourceError).
        ipr.get_links(self.index)

    def addresses(self) -> list[AnyAddress]:
        def op(ipr: Any) -> list[AnyAddress]:
            self._require_link(ipr)
            return self._addresses(ipr)

        return self._run("listing addresses", op)

    def add_address(self, addr: AnyAddress) -> None:
        def op(ipr: Any) -> None:
            self._add_address(ipr, addr)
            self._wait_ipv6_ready(ipr, [addr])

        self._run(f"adding {addr}", op)

    def remove_address(self, addr: AnyAddress) -> None:
        self._run(
            f"removing {addr}",
            lambda ipr: ipr.addr(
                "del", index=self.index, family=_family(addr), **self._address_fields(addr)
            ),
        )

    def _route_fields(self, route: Route, *, deleting: bool) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "dst": str(route.prefix),
            "family": _family(route.prefix),
            "oif": self.index,
            "table": MAIN_TABLE if route.table is None else route.table,
        }
        if route.gateway is not None:
            fields["gateway"] = str(route.gateway)
        if route.source is not None:
            fields["prefsrc"] = str(route.source)
        if route.metric is not None:
            fields["priority"] = route.metric
        if route.scope is not None:
            fields["scope"] = ROUTE_SCOPES[route.scope]
        elif deleting:
            # As ``ip route del`` does: match the route whatever its scope
            # (the kernel compares the scope of IPv4 routes otherwise).
            fields["scope"] = RT_SCOPE_NOWHERE
        return fields

    def add_route(self, route: Route) -> None:
        fields = self._route_fields(route, deleting=False)
        self._run(f"adding route {route.prefix}", lambda ipr: ipr.route("add", **fields))

    def remove_route(self, route: Route) -> None:
        fields = self._route_fields(route, deleting=True)
        self._run(f"removing route {route.prefix}", lambda ipr: ipr.route("del", **fields))

    def routes(self, table: int | None = None) -> list[Route]:
        wanted = MAIN_TABLE if table is None else table

        def op(ipr: Any) -> list[Route]:
            self._require_link(ipr)
            out: list[Route] = []
            for family in (socket.AF_INET, socket.AF_INET6):
                for msg in ipr.get_routes(family=family, oif=self.index, table=wanted):
                    route = _route_from(msg, family)
                    if route is not None:
                        out.append(route)
            return out

        return self._run("listing routes", op)

    def set_persist(self, persist: bool, fd: int) -> None:
        self._ioctl(lambda: _tun.set_persist(fd, persist), "changing persistence")

    def set_owner(self, uid: int, fd: int) -> None:
        self._ioctl(lambda: _tun.set_owner(fd, uid), "setting the owner")

    def set_group(self, gid: int, fd: int) -> None:
        self._ioctl(lambda: _tun.set_group(fd, gid), "setting the group")

    def _ioctl(self, op: Callable[[], None], what: str) -> None:
        try:
            op()
        except OSError as exc:
            if exc.errno == getattr(errno, "EBADFD", -1):
                raise BrokenResourceError(
                    f"{what} on {self.name}: this queue is detached or the device is gone"
                ) from None
            translated = _translate(exc, f"{what} on {self.name}")
            if translated is exc:
                raise
            raise translated from None

    def set_mac(self, mac: bytes) -> None:
        self._run(
            "setting the MAC address",
            lambda ipr: ipr.link("set", index=self.index, address=mac.hex(":")),
        )

    def move_to(self, target_fd: int) -> None:
        """Move the device into namespace *target_fd* and follow it there.

        *target_fd* is taken over once the device is there (``netns_fd`` is then
        it); if the move itself fails it stays the caller's.
        """

        def op(ipr: Any) -> None:
            ipr.link("set", index=self.index, net_ns_fd=target_fd)

        self._run("moving to another namespace", op)
        os.close(self.netns_fd)
        self.netns_fd = target_fd
        # The ifindex usually survives a move but is not guaranteed to.
        with _iproute(target_fd, f"finding {self.name} after the move") as ipr:
            found = ipr.link_lookup(ifname=self.name)
        if not found:
            raise BrokenResourceError(f"device {self.name!r} vanished while being moved")
        self.index = int(found[0])

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self.netns_fd)


def _route_from(msg: Any, family: int) -> Route | None:
    """A :class:`Route` from one route dump message, or ``None`` for what isn't one of ours:
    local, broadcast, multicast and blackhole entries, multipath routes."""
    if msg["type"] != RTN_UNICAST:
        return None
    dst = msg.get_attr("RTA_DST")
    if dst is None:
        dst = "0.0.0.0" if family == socket.AF_INET else "::"
    gateway = msg.get_attr("RTA_GATEWAY")
    source = msg.get_attr("RTA_PREFSRC")
    table = msg.get_attr("RTA_TABLE")
    return Route(
        prefix=ipaddress.ip_network(f"{dst}/{msg['dst_len']}", strict=False),
        gateway=_ip(gateway),
        source=_ip(source),
        metric=msg.get_attr("RTA_PRIORITY"),
        table=msg["table"] if table is None else table,
        scope=_SCOPE_NAMES.get(msg["scope"]),
    )


def _ip(value: str | None) -> IPAddress | None:
    return None if value is None else ipaddress.ip_address(value)
