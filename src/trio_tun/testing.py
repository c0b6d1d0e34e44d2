"""Helpers for testing code built on trio-tun.

* :func:`memory_tun_pair` gives two connected in-memory packet streams with the
  API of :class:`~trio_tun.TunStream`, so VPN logic can be unit-tested without
  root or a kernel device.
* :class:`NetNamespace` creates throw-away network namespaces (root only), runs
  sockets and processes inside them and joins them with veth pairs, so tests
  with real devices never touch the machine's own interfaces.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final, TypeVar

import attrs

from ._config import (
    MAIN_TABLE,
    NETNS_RUN_DIR,
    AddressLike,
    AnyAddress,
    Layer,
    Route,
    parse_address,
)
from ._control import NamedControl
from ._framing import PlainFraming
from ._ports import MemoryPort
from ._stream import TunStream, make_stream
from .platform.linux import netns as _netns

T = TypeVar("T")

__all__ = [
    "MemoryControl",
    "NetNamespace",
    "fd_count",
    "link_namespaces",
    "memory_tun_pair",
]


class MemoryControl(NamedControl):
    """The device control of a memory pair end: state kept in memory, as a device would.

    It answers as Linux does (point-to-point addresses, routes in numbered
    tables, persist, owner and group); what was set can be read back from
    ``persist``, ``owner``, ``group`` and ``mac``.
    """

    def __init__(self, name: str, index: int, mtu: int) -> None:
        super().__init__(name, index)
        self._mtu = mtu
        self._up = True
        self._addresses: list[AnyAddress] = []
        self._routes: list[Route] = []
        self.persist = False
        self.owner: int | None = None
        self.group: int | None = None
        self.mac: bytes | None = None

    def get_mtu(self) -> int:
        return self._mtu

    def set_mtu(self, mtu: int) -> None:
        self._mtu = mtu

    def set_up(self, up: bool) -> None:
        self._up = up

    def is_up(self) -> bool:
        return self._up

    def addresses(self) -> list[AnyAddress]:
        return list(self._addresses)

    def add_address(self, address: AnyAddress) -> None:
        if any(a.ip == address.ip for a in self._addresses):
            raise FileExistsError(errno.EEXIST, f"{address.ip} is already on {self._name}")
        self._addresses.append(address)

    def remove_address(self, address: AnyAddress) -> None:
        if address not in self._addresses:
            raise LookupError(f"{address} is not on {self._name}")
        self._addresses.remove(address)

    def add_route(self, route: Route) -> None:
        route = attrs.evolve(route, table=route.table or MAIN_TABLE)
        for have in self._routes:
            # The kernel's identity of a route: prefix, table and metric.
            if (have.prefix, have.table, have.metric) == (route.prefix, route.table, route.metric):
                raise FileExistsError(errno.EEXIST, f"a route to {route.prefix} exists")
        self._routes.append(route)

    def remove_route(self, route: Route) -> None:
        table = route.table or MAIN_TABLE
        for have in self._routes:
            if have.prefix != route.prefix or have.table != table:
                continue
            given = ("gateway", "source", "metric", "scope")
            if all(getattr(route, f) in (None, getattr(have, f)) for f in given):
                self._routes.remove(have)
                return
        raise LookupError(f"no route to {route.prefix} via {self._name} in table {table}")

    def routes(self, table: int | None) -> list[Route]:
        wanted = table or MAIN_TABLE
        return [route for route in self._routes if route.table == wanted]

    def set_persist(self, persist: bool, fd: int) -> None:
        self.persist = persist

    def set_owner(self, uid: int, fd: int) -> None:
        self.owner = uid

    def set_group(self, gid: int, fd: int) -> None:
        self.group = gid

    def set_mac(self, mac: bytes) -> None:
        self.mac = mac


def memory_tun_pair(
    *, mtu: int = 1500, capacity: int = 1024, names: tuple[str, str] = ("mem0", "mem1")
) -> tuple[TunStream, TunStream]:
    """Two TUN streams joined back to back in memory (no root, no kernel).

    They are the very :class:`~trio_tun.TunStream` that ``open_tun`` returns,
    over an in-memory port instead of a device, so code tested against them
    meets the shipped semantics (batching, cancellation, Busy/Closed errors,
    statistics, device control).  Like a device, a stream never blocks its
    sender: a packet sent while the peer's queue is full is dropped and counted
    in ``statistics().tx_dropped``.  When one end is closed, the other drains
    what was queued and then ``receive`` raises ``anyio.EndOfStream`` (so
    ``async for`` ends).

    Args:
        mtu: Reported by ``.mtu``; not enforced (a real TUN fd does not either).
        capacity: Packets each direction queues before new ones are dropped.
        names: The two streams' ``.name``.
    """
    ports = MemoryPort.pair(capacity)
    streams = []
    for index, (port, name) in enumerate(zip(ports, names, strict=True), start=1):
        stream = make_stream(
            Layer.L3,
            port,
            PlainFraming(),
            control=MemoryControl(name, index, mtu),
            owns_control=True,
        )
        assert isinstance(stream, TunStream)
        streams.append(stream)
    return streams[0], streams[1]


# -- network namespaces -------------------------------------------------------

_MS_BIND: Final = 0x1000
_MNT_DETACH: Final = 2
_libc = ctypes.CDLL(None, use_errno=True)


class NetNamespace:
    """A network namespace held open by an fd; devices in it die with it.

    ``NetNamespace.create()`` makes an anonymous namespace (gone when closed);
    ``NetNamespace.create("name")`` also publishes it under ``/run/netns/name``
    so ``open_tun(netns="name")`` and ``ip netns exec name`` can find it, and
    removes that name on close.
    """

    def __init__(self, fd: int, name: str | None = None) -> None:
        self._fd = fd
        self.name = name

    @classmethod
    def create(cls, name: str | None = None, *, loopback_up: bool = True) -> NetNamespace:
        fd = _netns.new_namespace()
        ns = cls(fd)
        try:
            if name is not None:
                ns._publish(name)
            if loopback_up:
                ns.set_link_up("lo")
        except BaseException:
            ns.close()
            raise
        return ns

    def _publish(self, name: str) -> None:
        os.makedirs(NETNS_RUN_DIR, exist_ok=True)
        target = os.path.join(NETNS_RUN_DIR, name)
        with open(target, "x"):
            pass
        source = f"/proc/self/fd/{self._fd}".encode()
        if _libc.mount(source, target.encode(), b"none", _MS_BIND, None) != 0:
            err = ctypes.get_errno()
            os.unlink(target)
            raise OSError(err, f"bind-mounting namespace to {target}: {os.strerror(err)}")
        self.name = name

    @property
    def path(self) -> str:
        """A path that names this namespace (valid while it is open)."""
        if self.name is not None:
            return os.path.join(NETNS_RUN_DIR, self.name)
        return f"/proc/{os.getpid()}/fd/{self._fd}"

    def fileno(self) -> int:
        return self._fd

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Switch the calling thread into this namespace for the (await-free) body."""
        with _netns.entered(self._fd):
            yield

    def socket(
        self, family: int = socket.AF_INET, type: int = socket.SOCK_DGRAM, proto: int = 0
    ) -> socket.socket:
        """A socket that lives in this namespace (wrap it with trio/anyio as usual)."""
        with self.entered():
            # Python creates sockets close-on-exec (PEP 446).
            return socket.socket(family, type, proto)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start *argv* inside this namespace (for tools such as ``ping`` in tests)."""
        fd = self._fd
        # preexec_fn is the only way to setns() the child before exec; it runs
        # only async-signal-safe work (one syscall), so threads are no concern.
        return subprocess.Popen(argv, preexec_fn=lambda: _netns.setns(fd), **kwargs)  # noqa: PLW1509

    def run(
        self, argv: Sequence[str], *, timeout: float = 60.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run *argv* inside this namespace to completion, capturing its output."""
        fd = self._fd
        return subprocess.run(
            argv,
            preexec_fn=lambda: _netns.setns(fd),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def netlink(self, op: Callable[[Any], T]) -> T:
        """Run ``op(ipr)`` with a pyroute2 ``IPRoute`` bound to this namespace.

        It runs on a short-lived thread of its own: pyroute2's sync API drives
        an asyncio loop internally and refuses to run inside a running one, so
        this works from synchronous code, Trio and asyncio alike (it blocks
        the caller for the few milliseconds netlink takes).
        """

        def work() -> T:
            from pyroute2 import IPRoute

            with self.entered():
                ipr = IPRoute()
            try:
                return op(ipr)
            finally:
                ipr.close()

        return _on_fresh_thread(work)

    def set_link_up(self, ifname: str) -> None:
        self.netlink(
            lambda ipr: ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="up")
        )

    def links(self) -> list[str]:
        """Names of the interfaces in this namespace."""
        return self.netlink(
            lambda ipr: sorted(str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links())
        )

    def close(self) -> None:
        if self.name is not None:
            target = os.path.join(NETNS_RUN_DIR, self.name)
            _libc.umount2(target.encode(), _MNT_DETACH)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)
            self.name = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> NetNamespace:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def link_namespaces(
    a: NetNamespace,
    b: NetNamespace,
    *,
    names: tuple[str, str] = ("veth0", "veth1"),
    addresses: tuple[Iterable[AddressLike], Iterable[AddressLike]] = ((), ()),
    mtu: int | None = None,
) -> None:
    """Join *a* and *b* with a veth pair, address both ends and bring them up."""

    def create(ipr: Any) -> None:
        ipr.link("add", ifname=names[0], kind="veth", peer=names[1])
        peer = ipr.link_lookup(ifname=names[1])[0]
        ipr.link("set", index=peer, net_ns_fd=b.fileno())

    a.netlink(create)
    for ns, ifname, addrs in ((a, names[0], addresses[0]), (b, names[1], addresses[1])):

        def configure(ipr: Any, ifname: str = ifname, addrs: Iterable[AddressLike] = addrs) -> None:
            index = ipr.link_lookup(ifname=ifname)[0]
            if mtu is not None:
                ipr.link("set", index=index, mtu=mtu)
            for raw in addrs:
                addr = parse_address(raw)
                extra = {"flags": 0x02} if addr.version == 6 else {}  # IFA_F_NODAD
                ipr.addr(
                    "add",
                    index=index,
                    address=str(addr.ip),
                    prefixlen=addr.network.prefixlen,
                    family=socket.AF_INET if addr.version == 4 else socket.AF_INET6,
                    **extra,
                )
            ipr.link("set", index=index, state="up")

        ns.netlink(configure)


def _on_fresh_thread(fn: Callable[[], T]) -> T:
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # re-raised in the caller
            failure.append(exc)

    thread = threading.Thread(target=run, name="trio-tun-testing-netlink")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def fd_count() -> int:
    """Open fds of this process (for leak checks in tests)."""
    return len(os.listdir("/proc/self/fd"))
