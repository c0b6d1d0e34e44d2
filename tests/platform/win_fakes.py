"""In-Python fakes of kernel32 events, the wintun ring and the IP Helper API.

They follow the real semantics (kernel32's documentation; wintun's
``api/session.c`` and ``driver/wintun.c``) closely enough to catch the
mistakes that matter:

* events (``CreateEventW``/``SetEvent``/``WaitForMultipleObjects``): an
  auto-reset event wakes exactly one waiter and is consumed by it; a wait is
  *satisfied at the moment of signalling* (the waiter is removed from every
  handle it waited on), as the Windows kernel does; the lowest signalled
  index wins; a wait on a closed handle fails at once (``WAIT_FAILED``).
  Closing a handle that a thread still waits on is recorded as an error
  (Windows leaves that undefined);
* the read event: the driver sets it after **every** move of the tail of the
  ring it fills (one batch of packets, one ``SetEvent``), whether or not a
  reader waits, and once more when the session terminates.  It is auto-reset,
  so a reader that takes packets without waiting leaves it signalled: its
  next wait returns at once and finds the ring empty (a stale wake-up);
* the rings: a packet takes ``4 + size`` bytes rounded up to 4, and a ring of
  capacity *C* holds at most ``C - 4`` bytes (head and tail never meet when
  full).  ``WintunReceivePacket`` returns ``ERROR_NO_MORE_ITEMS`` on an empty
  ring; received packets must be released, allocated ones sent; a full send
  ring gives ``ERROR_BUFFER_OVERFLOW``; a terminated session gives
  ``ERROR_HANDLE_EOF``.  ``WintunAllocateSendPacket`` checks nothing but room:
  the driver finds a packet it can't take (over 65535 bytes, or not IPv4 of at
  least 20 bytes or IPv6 of at least 40) only when it reads the ring, and then
  stops reading it for good (its head becomes ``MAXULONG``), so every later
  allocation fails with ``ERROR_HANDLE_EOF``.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from trio_tun.platform import _winapi as w


class _Waiter:
    def __init__(self, handles: Sequence[int]) -> None:
        self.handles = list(handles)
        self.result: int | None = None


@dataclass
class _Event:
    manual: bool
    signaled: bool = False
    closed: bool = False


class FakeEvents:
    """kernel32 events with Windows' wait semantics."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._events: dict[int, _Event] = {}
        self._waiters: list[_Waiter] = []
        self._ids = itertools.count(0x100, 4)
        self.max_waiters: dict[int, int] = {}
        self.errors: list[str] = []

    def create_event(self, manual_reset: bool) -> int:
        with self._lock:
            handle = next(self._ids)
            self._events[handle] = _Event(manual=manual_reset)
            return handle

    def set_event(self, handle: int) -> None:
        with self._lock:
            event = self._events[handle]
            if event.closed:
                self.errors.append(f"SetEvent on closed handle {handle:#x}")
                return
            event.signaled = True
            for waiter in list(self._waiters):
                if handle in waiter.handles and waiter.result is None:
                    waiter.result = waiter.handles.index(handle)
                    self._waiters.remove(waiter)
                    if not event.manual:
                        event.signaled = False
                        break
            self._lock.notify_all()

    def close_handle(self, handle: int) -> None:
        with self._lock:
            event = self._events[handle]
            if event.closed:
                self.errors.append(f"handle {handle:#x} closed twice")
            if self.waiters_on(handle):
                self.errors.append(f"handle {handle:#x} closed while a thread waits on it")
            event.closed = True

    def waiters_on(self, handle: int) -> int:
        return sum(handle in waiter.handles for waiter in self._waiters)

    def is_closed(self, handle: int) -> bool:
        return self._events[handle].closed

    def open_handles(self) -> list[int]:
        return [handle for handle, event in self._events.items() if not event.closed]

    def wait_any(
        self, handles: Sequence[int], timeout_ms: int, *, closed_is_error: bool = True
    ) -> int:
        """``WaitForMultipleObjects`` (any one).

        *closed_is_error*: record a wait on a closed handle as a mistake.  Off
        only for the stand-in of Trio's own wait, whose abandoned thread may
        start after Trio closed its cancel handle (Trio's behaviour, not ours:
        the wait fails at once and nobody looks at the result).
        """
        with self._lock:
            for handle in handles:
                if self._events[handle].closed:
                    if closed_is_error:
                        self.errors.append(f"wait on closed handle {handle:#x}")
                    raise w.WinApiError(6, "WaitForMultipleObjects")  # ERROR_INVALID_HANDLE
            for index, handle in enumerate(handles):
                event = self._events[handle]
                if event.signaled:
                    if not event.manual:
                        event.signaled = False
                    return index
            if timeout_ms == 0:
                return w.WAIT_TIMEOUT
            waiter = _Waiter(handles)
            self._waiters.append(waiter)
            for handle in handles:
                self.max_waiters[handle] = max(
                    self.max_waiters.get(handle, 0), self.waiters_on(handle)
                )
            timeout = None if timeout_ms == w.INFINITE else timeout_ms / 1000
            self._lock.wait_for(lambda: waiter.result is not None, timeout)
            if waiter.result is None:
                self._waiters.remove(waiter)
                return w.WAIT_TIMEOUT
            return waiter.result


@dataclass
class FakeSession:
    adapter: int
    capacity: int
    read_event: int
    #: Packets the driver put in the receive ring and the reader has not taken.
    rx: deque[bytes] = field(default_factory=deque)
    #: Bytes of the receive ring in use (taken packets count until released).
    rx_used: int = 0
    #: Packets the driver dropped because the receive ring was full.
    rx_discarded: int = 0
    terminated: bool = False
    ended: bool = False
    outstanding_rx: dict[int, bytes] = field(default_factory=dict)
    allocated: dict[int, bytearray] = field(default_factory=dict)
    #: Packets the driver took from the send ring, in order.
    sent: list[bytes] = field(default_factory=list)
    used: int = 0
    allocations: int = 0
    overflows: int = 0
    #: The driver met a packet it can't take and stopped reading the send ring.
    send_ring_dead: bool = False
    #: Called (under the fake's lock) after each allocation that found no room.
    on_overflow: Callable[[FakeSession], None] | None = None


@dataclass
class FakeAdapter:
    name: str
    luid: int
    created: bool
    closed: bool = False


def _slot(size: int) -> int:
    return 4 + (size + 3) // 4 * 4


def ring_space(capacity: int, used: int) -> int:
    """Free bytes in a wintun ring: head and tail stay 4 bytes apart when full."""
    return capacity - 4 - used


def driver_takes(packet: bytes) -> bool:
    """Whether the driver's ring reader accepts *packet* (else it stops reading)."""
    size = len(packet)
    if size > w.WINTUN_MAX_IP_PACKET_SIZE or not size:
        return False
    version = packet[0] >> 4
    return (version == 4 and size >= 20) or (version == 6 and size >= 40)


class FakeWintun:
    """``wintun.dll`` over an in-memory ring."""

    def __init__(self, events: FakeEvents, *, existing: Sequence[str] = ()) -> None:
        self.events = events
        self.lock = threading.Lock()
        self.adapters: dict[int, FakeAdapter] = {}
        self.sessions: dict[int, FakeSession] = {}
        self.calls: list[tuple[object, ...]] = []
        self.existing = set(existing)  # adapters some other program owns
        self._ids = itertools.count(0x1000, 8)
        self._pointers = itertools.count(0x7F0000, 0x10)
        self.fail_create: int | None = None

    # -- test helpers ("the driver side")

    def session(self) -> FakeSession:
        (session,) = [s for s in self.sessions.values() if not s.ended]
        return session

    def inject(self, *packets: bytes) -> None:
        """The driver puts *packets* in the receive ring as one batch: one tail move.

        What does not fit is dropped (counted in ``rx_discarded``), the way the
        driver drops a batch it has no room for.
        """
        with self.lock:
            session = self.session()
            need = sum(_slot(len(p)) for p in packets)
            if need > ring_space(session.capacity, session.rx_used):
                session.rx_discarded += len(packets)
                return
            session.rx_used += need
            session.rx.extend(packets)
            # Every tail move signals, whoever waits (driver/wintun.c).
            self.events.set_event(session.read_event)

    def drain(self) -> list[bytes]:
        """The driver reads the send ring: everything committed so far leaves it."""
        with self.lock:
            return self._drain(self.session())

    def _drain(self, session: FakeSession) -> list[bytes]:
        sent, session.sent = session.sent, []
        session.used -= sum(_slot(len(p)) for p in sent)
        return sent

    def remove_adapter(self) -> None:
        with self.lock:
            session = self.session()
            session.terminated = True
            self.events.set_event(session.read_event)

    # -- WintunApi

    def create_adapter(self, name: str, tunnel_type: str) -> int:
        self.calls.append(("create", name, tunnel_type))
        if self.fail_create is not None:
            raise w.WinApiError(self.fail_create, "WintunCreateAdapter")
        handle = next(self._ids)
        self.adapters[handle] = FakeAdapter(name, luid=0x6000000 + handle, created=True)
        self.existing.add(name)
        return handle

    def open_adapter(self, name: str) -> int:
        self.calls.append(("open", name))
        if name not in self.existing:
            raise w.WinApiError(w.ERROR_FILE_NOT_FOUND, "WintunOpenAdapter")
        handle = next(self._ids)
        self.adapters[handle] = FakeAdapter(name, luid=0x7000000 + handle, created=False)
        return handle

    def close_adapter(self, adapter: int) -> None:
        self.calls.append(("close", adapter))
        record = self.adapters[adapter]
        assert not record.closed, "adapter closed twice"
        record.closed = True
        if record.created:
            self.existing.discard(record.name)

    def get_adapter_luid(self, adapter: int) -> int:
        return self.adapters[adapter].luid

    def get_running_driver_version(self) -> int:
        return 0x0000000E

    def start_session(self, adapter: int, capacity: int) -> int:
        self.calls.append(("start", adapter, capacity))
        assert w.WINTUN_MIN_RING_CAPACITY <= capacity <= w.WINTUN_MAX_RING_CAPACITY
        assert capacity & (capacity - 1) == 0
        handle = next(self._ids)
        event = self.events.create_event(False)  # the read event is auto-reset
        self.sessions[handle] = FakeSession(adapter, capacity, event)
        return handle

    def end_session(self, session: int) -> None:
        self.calls.append(("end", session))
        record = self.sessions[session]
        assert not record.ended, "session ended twice"
        assert not record.outstanding_rx, "received packets were never released"
        assert not record.allocated, "allocated packets were never sent"
        record.ended = True
        self.events.close_handle(record.read_event)

    def get_read_wait_event(self, session: int) -> int:
        return self.sessions[session].read_event

    def receive_packet(self, session: int) -> tuple[int, int]:
        with self.lock:
            record = self.sessions[session]
            assert not record.ended, "receive after the session ended"
            if record.terminated:
                return 0, w.ERROR_HANDLE_EOF
            if not record.rx:
                return 0, w.ERROR_NO_MORE_ITEMS
            packet = record.rx.popleft()
            pointer = next(self._pointers)
            record.outstanding_rx[pointer] = packet
            return pointer, len(packet)

    def release_receive_packet(self, session: int, packet: int) -> None:
        with self.lock:
            record = self.sessions[session]
            data = record.outstanding_rx.pop(packet)
            record.rx_used -= _slot(len(data))

    def allocate_send_packet(self, session: int, size: int) -> tuple[int, int]:
        with self.lock:
            record = self.sessions[session]
            assert not record.ended, "send after the session ended"
            record.allocations += 1
            if record.terminated or record.send_ring_dead:
                return 0, w.ERROR_HANDLE_EOF
            # No check of the size: session.c only looks for room.
            if _slot(size) > ring_space(record.capacity, record.used):
                record.overflows += 1
                if record.on_overflow is not None:
                    record.on_overflow(record)
                return 0, w.ERROR_BUFFER_OVERFLOW
            record.used += _slot(size)
            pointer = next(self._pointers)
            record.allocated[pointer] = bytearray(size)
            return pointer, 0

    def send_packet(self, session: int, packet: int) -> None:
        with self.lock:
            record = self.sessions[session]
            data = bytes(record.allocated.pop(packet))
            if record.send_ring_dead:
                return  # nobody reads the ring any more
            if not driver_takes(data):
                # The driver's reader stops at this packet for good.
                record.send_ring_dead = True
                record.used -= _slot(len(data))
                return
            record.sent.append(data)

    def copy_from(self, packet: int, size: int) -> bytes:
        for record in self.sessions.values():
            if packet in record.outstanding_rx:
                data = record.outstanding_rx[packet]
                assert len(data) == size
                return data
        raise AssertionError("copy from a pointer that is not a received packet")

    def copy_to(self, packet: int, data: bytes | bytearray | memoryview) -> None:
        for record in self.sessions.values():
            if packet in record.allocated:
                target = record.allocated[packet]
                assert len(target) == len(data)
                target[:] = data
                return
        raise AssertionError("copy to a pointer that was not allocated")


class FakeIpHelper:
    """The IP Helper API over a table of rows (stored as raw bytes)."""

    def __init__(self) -> None:
        self.addresses: list[bytes] = []
        self.interfaces: dict[int, w.MIB_IPINTERFACE_ROW] = {}
        self.routes: list[bytes] = []
        self.set_rows: list[bytes] = []
        self.luid_to_index: dict[int, int] = {}
        self.ipv6 = True
        self.create_address_error = w.NO_ERROR

    def _interface(self, family: int, luid: int) -> w.MIB_IPINTERFACE_ROW:
        key = family << 64 | luid
        if key not in self.interfaces:
            row = w.MIB_IPINTERFACE_ROW()
            row.Family = family
            row.InterfaceLuid = luid
            row.NlMtu = 1500 if family == w.AF_INET else 1280
            row.SitePrefixLength = 64
            self.interfaces[key] = row
        return self.interfaces[key]

    def initialize_unicast_ip_address_entry(self, row: w.MIB_UNICASTIPADDRESS_ROW) -> None:
        # InitializeUnicastIpAddressEntry: infinite lifetimes, "unchanged" origins.
        row.PrefixOrigin = 16
        row.SuffixOrigin = 16
        row.ValidLifetime = 0xFFFFFFFF
        row.PreferredLifetime = 0xFFFFFFFF
        row.OnLinkPrefixLength = 0xFF

    def _key(self, row: w.MIB_UNICASTIPADDRESS_ROW) -> bytes:
        return bytes(row)[:28] + bytes(row)[32:40]  # Address + InterfaceLuid

    def create_unicast_ip_address_entry(self, row: w.MIB_UNICASTIPADDRESS_ROW) -> int:
        if self.create_address_error != w.NO_ERROR:
            return self.create_address_error
        if any(
            self._key(w.MIB_UNICASTIPADDRESS_ROW.from_buffer_copy(r)) == self._key(row)
            for r in self.addresses
        ):
            return w.ERROR_OBJECT_ALREADY_EXISTS
        self.addresses.append(bytes(row))
        return w.NO_ERROR

    def delete_unicast_ip_address_entry(self, row: w.MIB_UNICASTIPADDRESS_ROW) -> int:
        for raw in self.addresses:
            if self._key(w.MIB_UNICASTIPADDRESS_ROW.from_buffer_copy(raw)) == self._key(row):
                self.addresses.remove(raw)
                return w.NO_ERROR
        return w.ERROR_NOT_FOUND

    def unicast_ip_addresses(self, family: int) -> list[w.MIB_UNICASTIPADDRESS_ROW]:
        assert family == w.AF_UNSPEC
        return [w.MIB_UNICASTIPADDRESS_ROW.from_buffer_copy(raw) for raw in self.addresses]

    def get_ip_interface_entry(self, row: w.MIB_IPINTERFACE_ROW) -> int:
        if row.Family == w.AF_INET6 and not self.ipv6:
            return w.ERROR_NOT_FOUND
        stored = self._interface(row.Family, row.InterfaceLuid)
        ctypes_copy(stored, row)
        return w.NO_ERROR

    def set_ip_interface_entry(self, row: w.MIB_IPINTERFACE_ROW) -> int:
        if row.Family == w.AF_INET and row.SitePrefixLength != 0:
            return w.ERROR_INVALID_PARAMETER  # documented quirk of SetIpInterfaceEntry
        self.set_rows.append(bytes(row))
        ctypes_copy(row, self._interface(row.Family, row.InterfaceLuid))
        return w.NO_ERROR

    def initialize_ip_forward_entry(self, row: w.MIB_IPFORWARD_ROW2) -> None:
        row.ValidLifetime = 0xFFFFFFFF
        row.PreferredLifetime = 0xFFFFFFFF
        row.Metric = 0xFFFFFFFF
        row.Protocol = 0
        row.SitePrefixLength = 0xFF

    def _route_key(self, row: w.MIB_IPFORWARD_ROW2) -> bytes:
        raw = bytes(row)
        return raw[0:8] + raw[12:72]  # luid, destination prefix, next hop

    def create_ip_forward_entry2(self, row: w.MIB_IPFORWARD_ROW2) -> int:
        if any(
            self._route_key(w.MIB_IPFORWARD_ROW2.from_buffer_copy(r)) == self._route_key(row)
            for r in self.routes
        ):
            return w.ERROR_OBJECT_ALREADY_EXISTS
        self.routes.append(bytes(row))
        return w.NO_ERROR

    def delete_ip_forward_entry2(self, row: w.MIB_IPFORWARD_ROW2) -> int:
        for raw in self.routes:
            if self._route_key(w.MIB_IPFORWARD_ROW2.from_buffer_copy(raw)) == self._route_key(row):
                self.routes.remove(raw)
                return w.NO_ERROR
        return w.ERROR_NOT_FOUND

    def ip_forward_rows(self, family: int) -> list[w.MIB_IPFORWARD_ROW2]:
        return [w.MIB_IPFORWARD_ROW2.from_buffer_copy(raw) for raw in self.routes]

    def convert_interface_luid_to_index(self, luid: int) -> int:
        return self.luid_to_index.setdefault(luid, 20 + len(self.luid_to_index))


def ctypes_copy(source: object, target: object) -> None:
    import ctypes

    ctypes.memmove(ctypes.addressof(target), ctypes.addressof(source), ctypes.sizeof(source))  # type: ignore[arg-type]
