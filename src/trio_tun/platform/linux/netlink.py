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

from ..._config import Address, parse_address
from ..._errors import BrokenResourceError, control_error
from . import netns as _netns
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


def _family(addr: Address | ipaddress.IPv4Network | ipaddress.IPv6Network) -> int:
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
        self, *, mtu: int | None, mac: bytes | None, addresses: Sequence[Address], up: bool
    ) -> None:
        """Apply a fresh device's settings in one netlink session."""

        def op(ipr: Any) -> None:
            if mtu is not None:
                ipr.link("set", index=self.index, mtu=mtu)
            if mac is not None:
                ipr.link("set", index=self.index, address=mac.hex(":"))
            for addr in addresses:
                self._add_address(ipr, addr)
            if up:
                ipr.link("set", index=self.index, state="up")
                self._wait_ipv6_ready(ipr, addresses)

        self._run("configuring", op)

    def _wait_ipv6_ready(self, ipr: Any, addresses: Sequence[Address]) -> None:
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
    def _routes_as_local(ipr: Any, addr: Address) -> bool:
        try:
            answer = ipr.route("get", family=socket.AF_INET6, dst=str(addr.ip))
        except Exception:  # no route yet (ENETUNREACH): not ready
            return False
        return bool(answer) and answer[0]["type"] == RTN_LOCAL

    def _add_address(self, ipr: Any, addr: Address) -> None:
        extra: dict[str, Any] = {}
        if addr.version == 6:
            # A tunnel endpoint has no neighbours to defend against; waiting for
            # duplicate address detection would only delay the first packet.
            extra["flags"] = IFA_F_NODAD
        ipr.addr(
            "add",
            index=self.index,
            family=_family(addr),
            address=str(addr.ip),
            prefixlen=addr.network.prefixlen,
            **extra,
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

    def _addresses(self, ipr: Any) -> list[Address]:
        out = []
        for msg in ipr.get_addr(index=self.index):
            ip = msg.get_attr("IFA_ADDRESS") or msg.get_attr("IFA_LOCAL")
            out.append(parse_address(f"{ip}/{msg['prefixlen']}"))
        return out

    def _require_link(self, ipr: Any) -> None:
        # A dump filtered on an ifindex that no longer exists is simply empty;
        # asking for the link itself fails with ENODEV (BrokenResourceError).
        ipr.get_links(self.index)

    def addresses(self) -> list[Address]:
        def op(ipr: Any) -> list[Address]:
            self._require_link(ipr)
            return self._addresses(ipr)

        return self._run("listing addresses", op)

    def add_address(self, addr: Address) -> None:
        def op(ipr: Any) -> None:
            self._add_address(ipr, addr)
            self._wait_ipv6_ready(ipr, [addr])

        self._run(f"adding {addr}", op)

    def remove_address(self, addr: Address) -> None:
        self._run(
            f"removing {addr}",
            lambda ipr: ipr.addr(
                "del",
                index=self.index,
                family=_family(addr),
                address=str(addr.ip),
                prefixlen=addr.network.prefixlen,
            ),
        )

    def add_route(
        self, prefix: ipaddress.IPv4Network | ipaddress.IPv6Network, metric: int | None
    ) -> None:
        extra = {} if metric is None else {"priority": metric}
        self._run(
            f"adding route {prefix}",
            lambda ipr: ipr.route(
                "add", dst=str(prefix), family=_family(prefix), oif=self.index, **extra
            ),
        )

    def remove_route(self, prefix: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
        self._run(
            f"removing route {prefix}",
            lambda ipr: ipr.route("del", dst=str(prefix), family=_family(prefix), oif=self.index),
        )

    def routes(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        def op(ipr: Any) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
            self._require_link(ipr)
            out: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
            for family in (socket.AF_INET, socket.AF_INET6):
                for msg in ipr.get_routes(family=family, oif=self.index, table=254):
                    dst = msg.get_attr("RTA_DST")
                    if dst is None:
                        continue
                    out.append(ipaddress.ip_network(f"{dst}/{msg['dst_len']}", strict=False))
            return out

        return self._run("listing routes", op)

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
