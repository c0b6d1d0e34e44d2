"""Windows: layer-3 devices through wintun.

wintun (https://www.wintun.net/) is a small signed driver plus ``wintun.dll``.
An adapter is created by name, a *session* on it maps two rings into the
process, and packets move without system calls: ``WintunReceivePacket``
hands out the next received packet in the ring (released with
``WintunReleaseReceivePacket``), ``WintunAllocateSendPacket`` reserves room
for an outgoing one that ``WintunSendPacket`` commits.  When the receive
ring is empty (``ERROR_NO_MORE_ITEMS``) a reader waits on the session's
auto-reset read event; when the send ring is full (``ERROR_BUFFER_OVERFLOW``)
there is nothing to wait on, so a sender backs off and retries.

:class:`WintunPort` carries this under the same :class:`~trio_tun.PacketStream`
as every other system (with device control through the IP Helper API, by
interface LUID), and keeps the same promises:

* a cancelled ``receive`` never loses a packet and never leaks a ring slot:
  a packet is taken, copied and released with no checkpoint in between, and
  waiting happens only while the ring is empty;
* a cancelled ``send`` sent the packet whole or not at all: allocation,
  copy and commit happen together, and cancellation can only strike while
  backing off from a full ring, before anything was allocated;
* a packet the driver would not take (not IPv4 of at least 20 bytes or IPv6
  of at least 40) is dropped and counted, never put in the ring: the driver
  stops reading the ring for good at such a packet.

The driver sets the read event after every move of the ring's tail, whether or
not anyone waits, so a wait can return for packets an earlier receive already
took; the reader then finds the ring empty and simply waits again.

Waiting for the read event is the only part that depends on the event loop.
Under Trio it is ``trio.lowlevel.WaitForSingleObject``; otherwise (asyncio
through anyio) a worker thread waits on the read event *and* a private
cancel event, which a cancelled or closed receive sets so the thread stops
waiting at once — the read event is auto-reset, so there must never be a
second waiter.  The strategy is injectable, which is how the logic above it
is tested on Linux against a faithful fake of the ring and the events.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Protocol

import anyio
import anyio.to_thread
import trio

from .._config import (
    Address,
    AnyAddress,
    IPAddress,
    Layer,
    Route,
    TunConfig,
    check_pattern,
)
from .._control import NamedControl, configure
from .._errors import (
    BrokenResourceError,
    ClosedResourceError,
    DeviceBusyError,
    TunPermissionError,
)
from .._framing import PlainFraming
from .._ports import REFUSED, WOULD_BLOCK
from .._wait import current_backend
from . import Device, FdSpec, check_supported, refuse
from ._winapi import (
    AF_INET,
    AF_INET6,
    AF_UNSPEC,
    ERROR_ACCESS_DENIED,
    ERROR_ALREADY_EXISTS,
    ERROR_BUFFER_OVERFLOW,
    ERROR_FILE_NOT_FOUND,
    ERROR_HANDLE_EOF,
    ERROR_INVALID_DATA,
    ERROR_NO_MORE_ITEMS,
    ERROR_NOT_FOUND,
    ERROR_OBJECT_ALREADY_EXISTS,
    INFINITE,
    IP_DAD_STATE_PREFERRED,
    MAX_ADAPTER_NAME,
    MIB_IPFORWARD_ROW2,
    MIB_IPINTERFACE_ROW,
    MIB_IPPROTO_NETMGMT,
    MIB_UNICASTIPADDRESS_ROW,
    NO_ERROR,
    SOCKADDR_INET,
    WINTUN_MAX_IP_PACKET_SIZE,
    WINTUN_MAX_RING_CAPACITY,
    WINTUN_MIN_RING_CAPACITY,
    EventApi,
    IpHelperApi,
    WinApiError,
    WintunApi,
    default_events,
    default_iphelper,
    load_wintun,
)

PLATFORM: Final = "Windows"
#: Default session ring: 4 MiB (wintun allows powers of two from 128 KiB to 64 MiB).
DEFAULT_RING_CAPACITY: Final = 0x400000
#: Name used when ``open_tun`` gets none: the first free ``trio-tun0``, ``trio-tun1``...
DEFAULT_NAME: Final = "trio-tun%d"
#: The tunnel type wintun shows for our adapters.
TUNNEL_TYPE: Final = "trio-tun"
#: Back-off while the send ring is full: from 50 us doubling to 2 ms.
SEND_BACKOFF_MIN: Final = 0.00005
SEND_BACKOFF_MAX: Final = 0.002
#: How many ``%d`` names are tried before giving up.
MAX_NAME_TRIES: Final = 1000


# -- validation (before any system call) ------------------------------------------


def check_ring_capacity(capacity: int | None) -> int:
    """The session ring size: a power of two from 128 KiB to 64 MiB (default 4 MiB)."""
    if capacity is None:
        return DEFAULT_RING_CAPACITY
    if isinstance(capacity, bool) or not isinstance(capacity, int):
        raise TypeError(f"ring_capacity must be an int, not {capacity!r}")
    if not WINTUN_MIN_RING_CAPACITY <= capacity <= WINTUN_MAX_RING_CAPACITY or capacity & (
        capacity - 1
    ):
        raise ValueError(
            f"ring_capacity {capacity} must be a power of two from {WINTUN_MIN_RING_CAPACITY} "
            f"(128 KiB) to {WINTUN_MAX_RING_CAPACITY} (64 MiB)"
        )
    return capacity


def check_adapter_name(name: str | None) -> str:
    """A wintun adapter name: up to 127 characters, optionally with one ``%d``."""
    if name is None:
        return DEFAULT_NAME
    if not isinstance(name, str):
        raise TypeError(f"device name must be a string, not {name!r}")
    if not name or len(name) >= MAX_ADAPTER_NAME or "\0" in name:
        raise ValueError(
            f"device name {name!r}: a wintun adapter name has 1 to {MAX_ADAPTER_NAME - 1} "
            "characters"
        )
    check_pattern(name)
    return name


# -- waiting for the read event -----------------------------------------------------------


class HandleWaiter(Protocol):
    """Waits for the session's read event; one wait at a time."""

    @property
    def busy(self) -> bool: ...

    async def wait(self, handle: int) -> None:
        """Return once *handle* was signalled, or :meth:`abort` was called."""

    def abort(self) -> None:
        """Make a wait in progress return promptly (synchronous; from any task)."""


class _CancelToken:
    """A private manual-reset event, shared by one waiting thread and its task.

    Whichever side finishes last closes the event, and a thread that starts
    only after its task gave up does not wait at all.  Setting the event
    satisfies the thread's ``WaitForMultipleObjects`` at once, so from then on
    the thread can no longer consume a signal of the read event.
    """

    def __init__(self, events: EventApi) -> None:
        self._events = events
        self._handle: int | None = events.create_event(True)
        self._lock = threading.Lock()
        self._started = False
        self._thread_done = False
        self._task_done = False

    def wait_in_thread(self, handle: int) -> int:
        with self._lock:
            if self._task_done or self._handle is None:
                return -1  # the task gave up before this thread ran
            self._started = True
            cancel = self._handle
        try:
            return self._events.wait_any([handle, cancel], INFINITE)
        finally:
            self._thread_finished()

    def _thread_finished(self) -> None:
        with self._lock:
            self._thread_done = True
            if self._task_done:
                self._close()

    def cancel(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._events.set_event(self._handle)

    def task_done(self) -> None:
        with self._lock:
            self._task_done = True
            if self._handle is None:
                return
            self._events.set_event(self._handle)
            if self._thread_done or not self._started:
                self._close()

    def _close(self) -> None:
        if self._handle is not None:
            self._events.close_handle(self._handle)
            self._handle = None


class ThreadWaiter:
    """Waits in a worker thread (anyio), interruptible through a private cancel event."""

    def __init__(self, events: EventApi) -> None:
        self._events = events
        self._token: _CancelToken | None = None
        self._limiter: anyio.CapacityLimiter | None = None

    @property
    def busy(self) -> bool:
        return self._token is not None

    async def wait(self, handle: int) -> None:
        if self._limiter is None:
            # Our own limiter: a long wait must not hold one of the default
            # pool's tokens that other to_thread work (device control) needs.
            self._limiter = anyio.CapacityLimiter(1)
        token = self._token = _CancelToken(self._events)
        try:
            await anyio.to_thread.run_sync(
                token.wait_in_thread, handle, abandon_on_cancel=True, limiter=self._limiter
            )
        finally:
            self._token = None
            token.task_done()

    def abort(self) -> None:
        token = self._token
        if token is not None:
            token.cancel()


class TrioWaiter:
    """Waits with ``trio.lowlevel.WaitForSingleObject`` (injected, so it can be faked)."""

    def __init__(self, wait_for_single_object: Callable[[int], Awaitable[object]]) -> None:
        self._wait = wait_for_single_object
        self._scope: trio.CancelScope | None = None

    @property
    def busy(self) -> bool:
        return self._scope is not None

    async def wait(self, handle: int) -> None:
        with trio.CancelScope() as scope:
            self._scope = scope
            try:
                await self._wait(handle)
            finally:
                self._scope = None

    def abort(self) -> None:
        scope = self._scope
        if scope is not None:
            scope.cancel()


WaiterFactory = Callable[[str], HandleWaiter]


def default_waiter_factory(events: EventApi) -> WaiterFactory:
    """Trio's own wait under Trio on Windows, a worker-thread wait otherwise."""

    def factory(backend: str) -> HandleWaiter:
        if sys.platform == "win32" and backend == "trio":
            return TrioWaiter(trio.lowlevel.WaitForSingleObject)
        return ThreadWaiter(events)

    return factory


# -- device control through the IP Helper API --------------------------------------------


def _set_sockaddr(
    target: SOCKADDR_INET, address: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> None:
    if isinstance(address, ipaddress.IPv4Address):
        target.Ipv4.sin_family = AF_INET
        target.Ipv4.sin_addr[:] = address.packed
    else:
        target.Ipv6.sin6_family = AF_INET6
        target.Ipv6.sin6_addr[:] = address.packed


def _get_sockaddr(source: SOCKADDR_INET) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if source.si_family == AF_INET:
        return ipaddress.IPv4Address(bytes(source.Ipv4.sin_addr))
    if source.si_family == AF_INET6:
        return ipaddress.IPv6Address(bytes(source.Ipv6.sin6_addr))
    return None


def _check(code: int, what: str) -> None:
    if code == NO_ERROR:
        return
    if code == ERROR_ACCESS_DENIED:
        raise TunPermissionError(errno.EACCES, f"{what} needs Administrator rights")
    if code in (ERROR_OBJECT_ALREADY_EXISTS, ERROR_ALREADY_EXISTS):
        raise FileExistsError(errno.EEXIST, f"{what}: already there")
    if code in (ERROR_NOT_FOUND, ERROR_FILE_NOT_FOUND):
        raise LookupError(f"{what}: not found")
    raise WinApiError(code, what)


class WindowsControl(NamedControl):
    """Addresses, MTU and routes of a wintun adapter, by LUID, through :class:`IpHelperApi`."""

    def __init__(self, iphelper: IpHelperApi, luid: int, name: str, index: int) -> None:
        super().__init__(name, index)
        self._ip = iphelper
        self._luid = luid

    @property
    def luid(self) -> int:
        return self._luid

    def _interface_row(self, family: int) -> tuple[MIB_IPINTERFACE_ROW, int]:
        row = MIB_IPINTERFACE_ROW()
        row.Family = family
        row.InterfaceLuid = self._luid
        return row, self._ip.get_ip_interface_entry(row)

    def get_mtu(self) -> int:
        row, code = self._interface_row(AF_INET)
        _check(code, f"reading the MTU of {self._name}")
        return int(row.NlMtu)

    def set_mtu(self, mtu: int) -> None:
        for family in (AF_INET, AF_INET6):
            row, code = self._interface_row(family)
            if code == ERROR_NOT_FOUND and family == AF_INET6:
                continue  # IPv6 is off on this adapter
            _check(code, f"reading the interface of {self._name}")
            row.NlMtu = mtu
            if family == AF_INET:
                row.SitePrefixLength = 0  # SetIpInterfaceEntry rejects IPv4 rows otherwise
            _check(self._ip.set_ip_interface_entry(row), f"setting the MTU of {self._name}")

    def set_up(self, up: bool) -> None:
        if not up:
            raise NotImplementedError(
                "a wintun adapter is up while its session runs; close the stream to take it down"
            )

    def is_up(self) -> bool:
        return not self._closed

    def addresses(self) -> list[AnyAddress]:
        found: list[AnyAddress] = []
        for row in self._ip.unicast_ip_addresses(AF_UNSPEC):
            if row.InterfaceLuid != self._luid:
                continue
            address = _get_sockaddr(row.Address)
            if address is not None:
                found.append(ipaddress.ip_interface(f"{address}/{row.OnLinkPrefixLength}"))
        return found

    @staticmethod
    def _plain(address: AnyAddress) -> Address:
        if not isinstance(address, (ipaddress.IPv4Interface, ipaddress.IPv6Interface)):
            raise NotImplementedError(
                f"{address}: point-to-point (peer) addresses are not available on Windows, "
                "whose adapters have no destination address; add the local address and "
                "add_route() the peer's network instead"
            )
        return address

    def _address_row(self, address: Address) -> MIB_UNICASTIPADDRESS_ROW:
        row = MIB_UNICASTIPADDRESS_ROW()
        self._ip.initialize_unicast_ip_address_entry(row)
        _set_sockaddr(row.Address, address.ip)
        row.InterfaceLuid = self._luid
        row.OnLinkPrefixLength = address.network.prefixlen
        row.DadState = IP_DAD_STATE_PREFERRED
        return row

    def add_address(self, address: AnyAddress) -> None:
        row = self._address_row(self._plain(address))
        _check(self._ip.create_unicast_ip_address_entry(row), f"adding {address} to {self._name}")

    def remove_address(self, address: AnyAddress) -> None:
        row = self._address_row(self._plain(address))
        code = self._ip.delete_unicast_ip_address_entry(row)
        _check(code, f"removing {address} from {self._name}")

    def _route_row(self, route: Route) -> MIB_IPFORWARD_ROW2:
        for option in ("table", "scope", "source"):
            if getattr(route, option) is not None:
                raise NotImplementedError(
                    f"route option {option}= is not available on Windows (Linux only); "
                    "Windows takes gateway= and metric="
                )
        network = route.prefix
        row = MIB_IPFORWARD_ROW2()
        self._ip.initialize_ip_forward_entry(row)
        row.InterfaceLuid = self._luid
        _set_sockaddr(row.DestinationPrefix.Prefix, network.network_address)
        row.DestinationPrefix.PrefixLength = network.prefixlen
        if route.gateway is None:
            # An unspecified next hop of the right family: the prefix is on-link.
            row.NextHop.si_family = AF_INET if network.version == 4 else AF_INET6
        else:
            _set_sockaddr(row.NextHop, route.gateway)
        row.Protocol = MIB_IPPROTO_NETMGMT
        return row

    def add_route(self, route: Route) -> None:
        row = self._route_row(route)
        row.Metric = 0 if route.metric is None else route.metric
        _check(self._ip.create_ip_forward_entry2(row), f"adding a route to {route.prefix}")

    def remove_route(self, route: Route) -> None:
        row = self._route_row(route)
        _check(self._ip.delete_ip_forward_entry2(row), f"removing the route to {route.prefix}")

    def routes(self, table: int | None) -> list[Route]:
        if table is not None:
            raise NotImplementedError("routing tables (table=) are not available on Windows")
        found: list[Route] = []
        for row in self._ip.ip_forward_rows(AF_UNSPEC):
            if row.InterfaceLuid != self._luid:
                continue
            destination = _get_sockaddr(row.DestinationPrefix.Prefix)
            if destination is None or destination.is_multicast or destination.is_link_local:
                continue
            prefixlen = int(row.DestinationPrefix.PrefixLength)
            if prefixlen == destination.max_prefixlen and row.Protocol != MIB_IPPROTO_NETMGMT:
                continue  # the stack's own host routes (the address, the broadcast)
            gateway: IPAddress | None = _get_sockaddr(row.NextHop)
            if gateway is not None and gateway.is_unspecified:
                gateway = None
            route = Route(
                prefix=ipaddress.ip_network(f"{destination}/{prefixlen}", strict=False),
                gateway=gateway,
                metric=int(row.Metric),
            )
            if route not in found:
                found.append(route)
        return found

    def set_persist(self, persist: bool, fd: int) -> None:
        raise NotImplementedError(
            "persist is not available on Windows: trio-tun's wintun adapter lives as long "
            "as its stream"
        )

    def set_owner(self, uid: int, fd: int) -> None:
        raise NotImplementedError("set_owner is Linux's (TUNSETOWNER); Windows has no such setting")

    def set_group(self, gid: int, fd: int) -> None:
        raise NotImplementedError("set_group is Linux's (TUNSETGROUP); Windows has no such setting")

    def set_mac(self, mac: bytes) -> None:
        raise NotImplementedError("set_mac: wintun adapters are layer 3 and have no MAC address")


# -- the stream -------------------------------------------------------------------------------


def driver_accepts(packet: bytes | bytearray | memoryview) -> bool:
    """Whether the wintun driver takes *packet* from the send ring.

    It reads only IPv4 packets of at least 20 bytes and IPv6 ones of at least
    40, none over 65535 (``driver/wintun.c``); at any other packet it stops
    reading the ring for the rest of the session.
    """
    size = len(packet)
    if not 0 < size <= WINTUN_MAX_IP_PACKET_SIZE:
        return False
    version = packet[0] >> 4
    return (version == 4 and size >= 20) or (version == 6 and size >= 40)


class WintunPort:
    """A wintun session as a port: one ring slot is one bare IP packet.

    There is no file descriptor (``fileno()`` is -1), no offload and one queue.
    A packet is taken, copied and released with no checkpoint in between, and
    allocation, copy and commit of a sent one happen together: that is what
    keeps the stream's cancellation promises.
    """

    def __init__(
        self,
        api: WintunApi,
        events: EventApi,
        *,
        adapter: int,
        session: int,
        read_event: int,
        waiter_factory: WaiterFactory | None = None,
    ) -> None:
        self._api = api
        self._adapter = adapter
        self._session = session
        self._read_event = read_event
        self._waiter_factory = waiter_factory or default_waiter_factory(events)
        self._waiter: HandleWaiter | None = None
        self._closing = False
        self._finalized = False
        self._send_delay = SEND_BACKOFF_MIN
        self.refused_errno = 0

    def fileno(self) -> int:
        """Always -1: a wintun session has no file descriptor."""
        return -1

    @property
    def closed(self) -> bool:
        return self._closing

    def _check_open(self) -> int:
        if self._closing:
            raise ClosedResourceError("this stream was closed")
        return self._session

    # -- ring access (synchronous: no checkpoint between taking and releasing)

    def read(self, size: int) -> bytes | None:
        session = self._check_open()
        api = self._api
        pointer, length = api.receive_packet(session)
        if not pointer:
            code = length
            if code == ERROR_NO_MORE_ITEMS:
                return None
            if code == ERROR_HANDLE_EOF:
                raise BrokenResourceError("receiving failed: the wintun adapter was removed")
            if code == ERROR_INVALID_DATA:
                raise BrokenResourceError("receiving failed: the wintun ring is corrupt")
            raise WinApiError(code, "WintunReceivePacket")
        try:
            return api.copy_from(pointer, min(length, size))
        finally:
            api.release_receive_packet(session, pointer)

    def read_into(self, buffer: bytearray) -> int:
        packet = self.read(len(buffer))
        if packet is None:
            return WOULD_BLOCK
        n = len(packet)
        buffer[:n] = packet
        return n

    def write(self, buffers: Sequence[bytes | bytearray | memoryview]) -> int:
        session = self._check_open()
        data = buffers[0] if len(buffers) == 1 else b"".join(buffers)
        size = len(data)
        if not driver_accepts(data):
            # WintunAllocateSendPacket would take it, but the driver's reader
            # stops at such a packet for good: every later send would fail.
            # Refused here instead, as Linux refuses it (EINVAL): one drop.
            self.refused_errno = errno.EINVAL
            return REFUSED
        api = self._api
        pointer, code = api.allocate_send_packet(session, size)
        if not pointer:
            if code == ERROR_BUFFER_OVERFLOW:
                return WOULD_BLOCK
            if code == ERROR_HANDLE_EOF:
                raise BrokenResourceError("sending failed: the wintun adapter was removed")
            raise WinApiError(code, "WintunAllocateSendPacket")
        # Allocated ring space must be committed, or the ring stalls behind it.
        try:
            api.copy_to(pointer, data)
        finally:
            api.send_packet(session, pointer)
        self._send_delay = SEND_BACKOFF_MIN
        return size

    # -- waiting

    async def wait_writable(self) -> None:
        # A full send ring has no event to wait on: back off, then retry.
        # Cancellation here is safe: nothing was allocated.
        self._check_open()
        delay = self._send_delay
        self._send_delay = min(delay * 2, SEND_BACKOFF_MAX)
        await anyio.sleep(delay)

    async def wait_readable(self) -> None:
        self._check_open()
        waiter = self._waiter
        if waiter is None:
            waiter = self._waiter = self._waiter_factory(current_backend().name)
        try:
            await waiter.wait(self._read_event)
        finally:
            if self._closing:
                self._finalize()
        if self._closing:
            raise ClosedResourceError("another task closed this stream")

    def set_queue(self, attach: bool) -> None:
        raise NotImplementedError("multi-queue devices are Linux-only")

    # -- closing

    def close(self) -> None:
        """End the session and close (which removes) the adapter.

        A task blocked in a receive is woken with ``ClosedResourceError``; if
        one is waiting, it ends the session itself once its wait has returned,
        so the read event is never closed under a waiter.
        """
        if self._closing:
            return
        self._closing = True
        waiter = self._waiter
        if waiter is not None and waiter.busy:
            waiter.abort()
        else:
            self._finalize()

    def _finalize(self) -> None:
        if self._finalized:
            return
        self._finalized = True
        try:
            self._api.end_session(self._session)
        finally:
            self._api.close_adapter(self._adapter)

    def __del__(self) -> None:
        if getattr(self, "_finalized", True):
            return
        with contextlib.suppress(Exception):
            self._finalize()


# -- opening ----------------------------------------------------------------------------------


def create_adapter(api: WintunApi, name: str) -> tuple[int, str]:
    """Create the adapter; with ``%d`` in *name*, the first number not taken."""
    if "%d" not in name:
        return _create(api, name), name
    for number in range(MAX_NAME_TRIES):
        candidate = name.replace("%d", str(number))
        try:
            existing = api.open_adapter(candidate)
        except WinApiError as exc:
            if exc.code not in (ERROR_FILE_NOT_FOUND, ERROR_NOT_FOUND):
                raise
            return _create(api, candidate), candidate
        api.close_adapter(existing)
    raise DeviceBusyError(errno.EBUSY, f"no free adapter name matching {name!r}")


def _create(api: WintunApi, name: str) -> int:
    try:
        return api.create_adapter(name, TUNNEL_TYPE)
    except WinApiError as exc:
        if exc.code == ERROR_ACCESS_DENIED:
            raise TunPermissionError(
                errno.EACCES, f"creating wintun adapter {name!r} needs Administrator rights"
            ) from None
        raise


class WindowsBackend:
    """wintun adapters; the DLL, events, IP Helper and waits are injectable (tests)."""

    name = "windows"

    def __init__(
        self,
        *,
        api: WintunApi | None = None,
        events: EventApi | None = None,
        iphelper: IpHelperApi | None = None,
        waiter_factory: WaiterFactory | None = None,
    ) -> None:
        self._api = api
        self._events = events
        self._iphelper = iphelper
        self._waiter_factory = waiter_factory

    def check(self, config: TunConfig) -> None:
        check_supported(self.name, config)
        if not config.up:
            raise refuse(self.name, "up=False (a wintun adapter is up while its session runs)")
        check_ring_capacity(config.ring_capacity)
        check_adapter_name(config.name)

    async def open(self, config: TunConfig) -> Device:
        capacity = check_ring_capacity(config.ring_capacity)
        api = self._api or load_wintun(config.wintun_dll)
        events = self._events or default_events()
        iphelper = self._iphelper or default_iphelper()
        adapter, actual = create_adapter(api, check_adapter_name(config.name))
        try:
            luid = api.get_adapter_luid(adapter)
            index = iphelper.convert_interface_luid_to_index(luid)
            session = api.start_session(adapter, capacity)
        except BaseException:
            api.close_adapter(adapter)
            raise
        port = WintunPort(
            api,
            events,
            adapter=adapter,
            session=session,
            read_event=api.get_read_wait_event(session),
            waiter_factory=self._waiter_factory,
        )
        control = WindowsControl(iphelper, luid, actual, index)
        try:
            await anyio.to_thread.run_sync(lambda: configure(control, config))
        except BaseException:
            port.close()
            raise
        return Device(layer=Layer.L3, ports=[port], framings=[PlainFraming()], control=control)

    def wrap_fd(self, spec: FdSpec) -> Device:
        raise NotImplementedError("from_fd is not available on Windows: wintun has no fd")
