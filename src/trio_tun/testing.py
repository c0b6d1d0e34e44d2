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
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final, TypeVar

import anyio
import anyio.lowlevel
from anyio.abc import UnreliableObjectStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from . import _netns
from ._config import AddressLike, Layer, parse_address
from ._errors import BusyResourceError, ClosedResourceError
from ._stats import Counters, Statistics
from ._stream import DEFAULT_BATCH, MAX_PACKET, TunAttribute
from .platform.linux import NO_OFFLOAD

T = TypeVar("T")

__all__ = [
    "MemoryTunStream",
    "NetNamespace",
    "fd_count",
    "link_namespaces",
    "memory_tun_pair",
]


class MemoryTunStream(UnreliableObjectStream[bytes]):
    """One end of :func:`memory_tun_pair`; what it sends, the other end receives.

    Like a device, it never blocks a sender: a packet sent while the peer's
    queue is full is dropped and counted in ``statistics().tx_dropped``.  When
    the peer is closed, ``receive`` drains what was queued and then raises
    ``anyio.EndOfStream`` (so ``async for`` ends).
    """

    def __init__(
        self,
        name: str,
        mtu: int,
        send: MemoryObjectSendStream[bytes],
        receive: MemoryObjectReceiveStream[bytes],
    ) -> None:
        self._name = name
        self._mtu = mtu
        self._send = send
        self._receive = receive
        self._counters = Counters()
        self._closed = False
        self._receiving = False

    @property
    def name(self) -> str:
        return self._name

    @property
    def mtu(self) -> int:
        return self._mtu

    @property
    def layer(self) -> Layer:
        return Layer.L3

    def statistics(self) -> Statistics:
        return self._counters.snapshot()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {
            TunAttribute.name: lambda: self._name,
            TunAttribute.mtu: lambda: self._mtu,
            TunAttribute.layer: lambda: Layer.L3,
            TunAttribute.offload: lambda: NO_OFFLOAD,
        }

    def _check(self) -> None:
        if self._closed:
            raise ClosedResourceError("this stream was closed")

    async def receive(self) -> bytes:
        self._check()
        if self._receiving:
            raise BusyResourceError("receiving")
        self._receiving = True
        try:
            packet = await self._receive.receive()
        except anyio.ClosedResourceError:
            raise ClosedResourceError("this stream was closed") from None
        finally:
            self._receiving = False
        self._counters.rx_packets += 1
        self._counters.rx_bytes += len(packet)
        return packet

    async def receive_batch(self, max_packets: int | None = None) -> list[bytes]:
        """Up to *max_packets* queued packets (default ``DEFAULT_BATCH``, 64), at least one."""
        if max_packets is None:
            max_packets = DEFAULT_BATCH
        if max_packets < 1:
            raise ValueError(f"max_packets must be at least 1, not {max_packets}")
        batch = [await self.receive()]
        while len(batch) < max_packets:
            try:
                packet = self._receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream):
                break
            self._counters.rx_packets += 1
            self._counters.rx_bytes += len(packet)
            batch.append(packet)
        return batch

    def _send_one(self, packet: bytes | bytearray | memoryview) -> None:
        size = len(packet)
        if size == 0:
            raise ValueError("can't send an empty packet")
        if size > MAX_PACKET:
            raise ValueError(f"packet of {size} bytes is larger than the {MAX_PACKET}-byte limit")
        try:
            self._send.send_nowait(bytes(packet))
        except (anyio.WouldBlock, anyio.BrokenResourceError):
            self._counters.tx_dropped += 1
            return
        self._counters.tx_packets += 1
        self._counters.tx_bytes += size

    async def send(self, item: bytes | bytearray | memoryview) -> None:
        await anyio.lowlevel.checkpoint()
        self._check()
        self._send_one(item)

    async def send_batch(self, packets: Iterable[bytes | bytearray | memoryview]) -> None:
        await anyio.lowlevel.checkpoint()
        self._check()
        for packet in packets:
            self._send_one(packet)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._send.close()
            self._receive.close()
        await anyio.lowlevel.checkpoint()


def memory_tun_pair(
    *, mtu: int = 1500, capacity: int = 1024, names: tuple[str, str] = ("mem0", "mem1")
) -> tuple[MemoryTunStream, MemoryTunStream]:
    """Two in-memory TUN-like streams joined back to back (no root needed).

    Args:
        mtu: Reported by ``.mtu``; not enforced (a real TUN fd does not either).
        capacity: Packets each direction queues before new ones are dropped.
        names: The two streams' ``.name``.
    """
    a_to_b_send, a_to_b_receive = anyio.create_memory_object_stream[bytes](capacity)
    b_to_a_send, b_to_a_receive = anyio.create_memory_object_stream[bytes](capacity)
    a = MemoryTunStream(names[0], mtu, a_to_b_send, b_to_a_receive)
    b = MemoryTunStream(names[1], mtu, b_to_a_send, a_to_b_receive)
    return a, b


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
        os.makedirs(_netns.NETNS_RUN_DIR, exist_ok=True)
        target = os.path.join(_netns.NETNS_RUN_DIR, name)
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
            return os.path.join(_netns.NETNS_RUN_DIR, self.name)
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
            target = os.path.join(_netns.NETNS_RUN_DIR, self.name)
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
