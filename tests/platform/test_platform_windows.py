"""The wintun backend against faithful fakes of the ring, the events and IP Helper.

Every stream test runs on both event loops, and on each with the waiting
strategy Windows would use there: a worker thread with a private cancel
event under asyncio, ``trio.lowlevel.WaitForSingleObject`` under Trio (here
a stand-in built the way Trio builds it, on the fake events).
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import math
import struct
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import anyio
import pytest
import sniffio
import trio
from win_fakes import FakeEvents, FakeIpHelper, FakeSession, FakeWintun

import trio_tun
from packets_util import udp4, udp6
from trio_tun import Layer, TunAttribute, TunConfig, TunStream
from trio_tun._framing import PlainFraming
from trio_tun._open import open_device, select_backend, wrap_fd
from trio_tun._stream import make_stream
from trio_tun.platform import FdSpec, windows
from trio_tun.platform import _winapi as w

pytestmark = pytest.mark.anyio

V4 = udp4("10.8.0.2", "10.8.0.1", 1, 2, b"x" * 100)
V6 = udp6("fd00:8::2", "fd00:8::1", 1, 2, b"y" * 100)
WAIT_DEADLINE = 10.0
POLL_INTERVAL = 0.001
POLLS = 100_000


def fake_wait_for_single_object(events: FakeEvents):  # type: ignore[no-untyped-def]
    """What ``trio.lowlevel.WaitForSingleObject`` does (trio/_wait_for_object.py), on
    the fake events: step for step, and no checkpoint where Trio has none."""

    async def wait(handle: int) -> None:
        # The quick check: an already signalled handle is consumed and the
        # function returns at once, without a checkpoint.
        if events.wait_any([handle], 0) != w.WAIT_TIMEOUT:
            return
        cancel = events.create_event(True)
        try:
            await trio.to_thread.run_sync(
                functools.partial(events.wait_any, closed_is_error=False),
                [handle, cancel],
                w.INFINITE,
                abandon_on_cancel=True,
                limiter=trio.CapacityLimiter(math.inf),
            )
        finally:
            events.set_event(cancel)
            events.close_handle(cancel)

    return wait


class Rig:
    def __init__(self, *, existing: tuple[str, ...] = (), strategy: str = "native") -> None:
        self.events = FakeEvents()
        self.wintun = FakeWintun(self.events, existing=existing)
        self.iphelper = FakeIpHelper()
        self.waiters: list[str] = []
        self.strategy = strategy

    def factory(self, backend: str) -> windows.HandleWaiter:
        self.waiters.append(backend)
        if backend == "trio" and self.strategy == "native":
            return windows.TrioWaiter(fake_wait_for_single_object(self.events))
        return windows.ThreadWaiter(self.events)

    def backend(self) -> windows.WindowsBackend:
        return windows.WindowsBackend(
            api=self.wintun,
            events=self.events,
            iphelper=self.iphelper,
            waiter_factory=self.factory,
        )

    def open(
        self, name: str | None = None, **kwargs: Any
    ) -> contextlib.AbstractAsyncContextManager[TunStream]:
        """What ``open_tun`` does on Windows: refuse what it can't do, then the
        context manager (nothing runs until it is entered)."""
        config = TunConfig(layer=Layer.L3, name=name, **kwargs)
        backend = self.backend()
        backend.check(config)
        return cast(
            "contextlib.AbstractAsyncContextManager[TunStream]", open_device(backend, config)
        )

    @property
    def read_event(self) -> int:
        return self.wintun.session().read_event

    async def until_waiting(self) -> None:
        """Return once a thread waits on the read event (bounded: fails after 10 s).

        The synchronisation point the tests use instead of sleeping and hoping
        the receiver got there first.
        """
        with anyio.fail_after(WAIT_DEADLINE):
            for _ in range(POLLS):
                if self.events.waiters_on(self.read_event):
                    return
                await anyio.sleep(POLL_INTERVAL)
        raise AssertionError("no thread ever waited on the read event")

    async def inject_when_waiting(self, *packets: bytes) -> None:
        await self.until_waiting()
        self.wintun.inject(*packets)

    def check_clean(self) -> None:
        assert self.events.errors == []
        for session in self.wintun.sessions.values():
            assert session.outstanding_rx == {}, "a ring packet leaked"
            assert session.allocated == {}, "an allocated packet was never sent"
            assert self.events.max_waiters.get(session.read_event, 0) <= 1


@pytest.fixture(params=["native", "thread"])
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    """``native``: each loop's Windows strategy; ``thread``: the worker-thread wait
    on both loops (what the asyncio path does, run under Trio as well)."""
    made = Rig(strategy=request.param)
    yield made
    made.check_clean()


@pytest.fixture
async def dev(rig: Rig) -> AsyncIterator[TunStream]:
    async with rig.open() as stream:
        yield stream


# -- opening, configuration, closing -------------------------------------------------


async def test_open_configure_close(rig: Rig) -> None:
    rig.wintun.existing.add("trio-tun0")
    async with rig.open(addresses=["10.8.0.1/24", "fd00:8::1/64"], mtu=1400) as dev:
        assert isinstance(dev, trio_tun.TunStream)
        assert dev.name == "trio-tun1"  # trio-tun0 belongs to someone else
        assert ("create", "trio-tun1", "trio-tun") in rig.wintun.calls
        start = next(c for c in rig.wintun.calls if c[0] == "start")
        assert start[2] == 4 * 1024 * 1024
        assert dev.extra(TunAttribute.name) == "trio-tun1"
        assert dev.extra(TunAttribute.layer) is Layer.L3
        assert dev.fileno() == -1  # no fd: TunAttribute.fileno, see below
        assert dev.mtu == 1400
        assert set(map(str, await dev.addresses())) == {"10.8.0.1/24", "fd00:8::1/64"}
        assert await dev.is_up()
        with pytest.raises(NotImplementedError, match="session"):
            await dev.set_down()
        session = rig.wintun.session()
    assert dev.closed
    names = [c[0] for c in rig.wintun.calls]
    assert names[-2:] == ["end", "close"]  # session ended, then the adapter closed
    assert session.ended
    assert "trio-tun1" not in rig.wintun.existing  # closing a created adapter removes it


async def test_no_fileno_attribute_without_an_fd() -> None:
    rig = Rig()
    async with rig.open() as dev:
        assert dev.fileno() == -1
        # anyio's convention: an attribute the stream does not have is not there.
        with pytest.raises(anyio.TypedAttributeLookupError):
            dev.extra(TunAttribute.fileno)
        assert dev.extra(TunAttribute.fileno, None) is None
    rig.check_clean()


async def test_names_and_ring_are_checked_before_any_call(rig: Rig) -> None:
    for capacity in (3 << 20, 0x10000, 0x8000000, 0):
        with pytest.raises(ValueError, match="power of two"):
            rig.open(ring_capacity=capacity)
    with pytest.raises(TypeError):
        rig.open(ring_capacity=True)
    for name in ("", "x" * 128, "a%sb", "vpn%d%d"):
        with pytest.raises(ValueError):
            rig.open(name)
    assert rig.wintun.calls == []
    async with rig.open("My VPN", ring_capacity=0x20000) as dev:
        assert dev.name == "My VPN"
        assert next(c for c in rig.wintun.calls if c[0] == "start")[2] == 0x20000


async def test_create_errors(rig: Rig) -> None:
    rig.wintun.fail_create = w.ERROR_ACCESS_DENIED
    with pytest.raises(trio_tun.TunPermissionError, match="Administrator"):
        async with rig.open():
            pass


async def test_failed_configuration_removes_the_adapter(rig: Rig) -> None:
    rig.iphelper.create_address_error = w.ERROR_ACCESS_DENIED
    with pytest.raises(trio_tun.TunPermissionError, match="Administrator"):
        async with rig.open(addresses=["10.8.0.1/24"]):
            pytest.fail("the block must not run")
    assert all(a.closed for a in rig.wintun.adapters.values())
    assert all(s.ended for s in rig.wintun.sessions.values())


def test_missing_dll_says_where_to_get_it() -> None:
    def loader(path: str) -> w.WintunApi:
        raise OSError(2, "The specified module could not be found")

    with pytest.raises(trio_tun.TunUnavailableError) as info:
        w.load_wintun(loader=loader)
    message = str(info.value)
    assert "https://www.wintun.net/" in message
    assert "next to your application" in message
    assert "wintun_dll=" in message
    assert "wintun.dll" in message
    with pytest.raises(trio_tun.TunUnavailableError, match=r"C:\\x\\wintun.dll"):
        w.load_wintun("C:\\x\\wintun.dll", loader=loader)
    # The default search: next to the script and the interpreter, then the search path.
    candidates = w.wintun_candidates(None)
    assert candidates[-1] == "wintun.dll"
    assert all(c.endswith("wintun.dll") for c in candidates)
    # Off Windows the real loader refuses cleanly.
    with pytest.raises(trio_tun.TunUnavailableError):
        w.load_wintun("/nonexistent/wintun.dll")


async def test_stream_over_a_wintun_port() -> None:
    """The stream on Windows is the ordinary TunStream over a WintunPort (the
    WintunStream subclass that had to copy every private attribute is gone)."""
    rig = Rig()
    adapter = rig.wintun.create_adapter("parts", windows.TUNNEL_TYPE)
    session = rig.wintun.start_session(adapter, w.WINTUN_MIN_RING_CAPACITY)
    port = windows.WintunPort(
        rig.wintun,
        rig.events,
        adapter=adapter,
        session=session,
        read_event=rig.wintun.get_read_wait_event(session),
        waiter_factory=rig.factory,
    )
    control = windows.WindowsControl(rig.iphelper, 0x1234, "parts", 7)
    stream = make_stream(Layer.L3, port, PlainFraming(), control=control)
    assert type(stream) is trio_tun.TunStream
    assert stream.fileno() == -1 and not stream.vnet_hdr and not stream.packet_info
    assert stream.max_packet == 65535
    assert stream.offload == trio_tun.OffloadFlags()
    assert (stream.name, stream.index) == ("parts", 7)
    rig.wintun.inject(V4)
    with anyio.fail_after(5):
        assert await stream.receive() == V4
    await stream.send(V6)
    assert rig.wintun.drain() == [V6]
    stats = stream.statistics()
    assert (stats.rx_packets, stats.tx_packets, stats.tx_bytes) == (1, 1, len(V6))
    await stream.aclose()
    assert stream.closed and port.closed
    assert rig.wintun.sessions[session].ended  # the session ended, then the adapter closed
    assert rig.wintun.calls[-2:] == [("end", session), ("close", adapter)]
    assert not control.closed  # the control is whoever opened the device's to close
    rig.check_clean()


# -- receiving -------------------------------------------------------------------------


async def test_receive_waits_for_the_read_event(rig: Rig, dev: TunStream) -> None:
    with anyio.fail_after(WAIT_DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(rig.inject_when_waiting, V4)
            assert await dev.receive() == V4
    assert rig.events.max_waiters[rig.read_event] == 1  # it did wait, once
    # Five packets in one batch: one tail move, one signal, one batch read.
    rig.wintun.inject(*[V6] * 5)
    with anyio.fail_after(WAIT_DEADLINE):
        assert await dev.receive_batch() == [V6] * 5
    # The event is still signalled (nobody waited since): the next wait
    # returns at once, finds the ring empty and waits again.
    with anyio.fail_after(WAIT_DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(rig.inject_when_waiting, V4)
            assert await dev.receive_raw() == V4
    stats = dev.statistics()
    assert stats.rx_packets == 7 and stats.reads == 7
    assert rig.events.max_waiters[rig.read_event] == 1
    # The factory is asked once, with the backend's name.
    assert rig.waiters == ["trio" if sniffio.current_async_library() == "trio" else "anyio"]


async def test_stale_signals_are_harmless(rig: Rig, dev: TunStream) -> None:
    """Packets taken without waiting leave the auto-reset event set: each later
    receive may wake for nothing once, and must then wait properly."""
    for round_ in range(10):
        packet = V4[:-1] + bytes([round_])
        rig.wintun.inject(packet)  # signalled; the receive below does not wait
        with anyio.fail_after(WAIT_DEADLINE):
            assert await dev.receive() == packet
    with anyio.fail_after(WAIT_DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(rig.inject_when_waiting, V6)
            assert await dev.receive() == V6
    assert rig.wintun.session().outstanding_rx == {}


async def test_cancelled_receives_never_lose_or_leak(rig: Rig, dev: TunStream) -> None:
    """Cancellation at each point relative to the packet's arrival, in turn.

    0: the packet is queued before the receive (which then must not wait);
    1: the receive is cancelled while waiting, the packet comes after;
    2: the packet arrives and the waiting receive is cancelled in the same
       instant (the wait may or may not have consumed the signal);
    3: the receive is cancelled before it starts, with a packet queued.
    In every case each packet is received exactly once, in order.
    """
    injected: list[bytes] = []
    received: list[bytes] = []

    async def receive_into(scope_box: list[anyio.CancelScope]) -> None:
        with anyio.CancelScope() as scope:
            scope_box.append(scope)
            received.append(await dev.receive())

    with anyio.fail_after(WAIT_DEADLINE * 4):
        for round_ in range(24):
            packet = V4[:-1] + bytes([round_])
            injected.append(packet)
            case = round_ % 4
            if case == 0:
                rig.wintun.inject(packet)
            elif case == 3:
                rig.wintun.inject(packet)
                with anyio.CancelScope() as scope:
                    scope.cancel()
                    received.append(await dev.receive())
                assert packet not in received  # cancelled at entry: nothing taken
            else:
                box: list[anyio.CancelScope] = []
                async with anyio.create_task_group() as tg:
                    tg.start_soon(receive_into, box)
                    await rig.until_waiting()
                    if case == 1:
                        box[0].cancel()
                    else:
                        rig.wintun.inject(packet)
                        box[0].cancel()  # no checkpoint in between
                # The cancelled wait let go of the read event at once: no
                # orphaned waiter is left to swallow the next signal.
                assert rig.events.waiters_on(rig.read_event) == 0
                if case == 1:
                    assert packet not in received
                    rig.wintun.inject(packet)
            # Whatever the cancelled receive left is there for the next one,
            # at once (the stream reads before it waits).
            if len(received) < len(injected):
                received.append(await dev.receive())
            assert received == injected
    assert received == injected  # each exactly once, in order
    session = rig.wintun.session()
    assert not session.rx and session.outstanding_rx == {}
    assert rig.events.max_waiters[rig.read_event] <= 1


async def test_close_wakes_a_blocked_receive(rig: Rig, dev: TunStream) -> None:
    session = rig.wintun.session()

    async def closer() -> None:
        await rig.until_waiting()
        await dev.aclose()

    with anyio.fail_after(WAIT_DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(closer)
            with pytest.raises(trio_tun.ClosedResourceError):
                await dev.receive()
    assert session.ended
    assert rig.events.errors == []  # the read event was not closed under a waiter
    with pytest.raises(trio_tun.ClosedResourceError):
        await dev.send(V4)
    await dev.aclose()  # idempotent


async def test_adapter_removal_is_broken(rig: Rig, dev: TunStream) -> None:
    async def remove() -> None:
        await rig.until_waiting()
        rig.wintun.remove_adapter()

    with anyio.fail_after(WAIT_DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(remove)
            with pytest.raises(trio_tun.BrokenResourceError, match="removed"):
                await dev.receive()
    with pytest.raises(trio_tun.BrokenResourceError):
        await dev.send(V4)


async def test_one_receiver_at_a_time(rig: Rig, dev: TunStream) -> None:
    got: list[bytes] = []

    async def receive() -> None:
        got.append(await dev.receive())

    with anyio.fail_after(WAIT_DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(receive)
            await rig.until_waiting()
            with pytest.raises(trio_tun.BusyResourceError):
                await dev.receive()
            rig.wintun.inject(V4)
    assert got == [V4]
    assert rig.events.max_waiters[rig.read_event] == 1


# -- sending ---------------------------------------------------------------------------


async def test_send_and_batch(rig: Rig, dev: TunStream) -> None:
    await dev.send(V4)
    await dev.send_batch([V6, V4])
    await dev.send_raw(V6)
    assert rig.wintun.drain() == [V4, V6, V4, V6]
    stats = dev.statistics()
    assert stats.tx_packets == 4 and stats.writes == 4
    with pytest.raises(ValueError):
        await dev.send(b"")
    with pytest.raises(ValueError):
        await dev.send(b"\x45" * 70000)


async def test_malformed_packets_are_dropped_not_fatal(rig: Rig, dev: TunStream) -> None:
    """The driver stops reading the send ring for good at a packet it can't take;
    the stream must never hand it one (dropped and counted, as Linux's EINVAL)."""
    bad = [b"\x00" * 64, b"\x45" + bytes(18), V6[:39], b"\x60"]
    for packet in bad:
        await dev.send(packet)
    await dev.send_batch([V4, bad[0], V6])
    assert rig.wintun.drain() == [V4, V6]
    stats = dev.statistics()
    assert (stats.tx_packets, stats.tx_dropped) == (2, len(bad) + 1)
    assert not rig.wintun.session().send_ring_dead
    await dev.send(V4)
    assert rig.wintun.drain() == [V4]


RING = w.WINTUN_MIN_RING_CAPACITY
#: A packet whose ring slot (4 + size, rounded to 4) is exactly 4 KiB, so a ring
#: holds one fewer than capacity / slot: C - 4 bytes are usable, not C.
PACKET_4K = V4 + bytes(4092 - len(V4))
FITS = RING // 4096 - 1
BACKOFF_WAITS = 11


def _backoff_floor(waits: int) -> float:
    """The least time *waits* successive back-offs take (sleeps never end early)."""
    total, delay = 0.0, windows.SEND_BACKOFF_MIN
    for _ in range(waits):
        total += delay
        delay = min(delay * 2, windows.SEND_BACKOFF_MAX)
    return total


async def test_full_ring_waits_without_spinning() -> None:
    rig = Rig()
    async with rig.open(ring_capacity=RING) as dev:
        session = rig.wintun.session()
        for _ in range(FITS):
            await dev.send(PACKET_4K)
        assert session.overflows == 0 and len(session.sent) == FITS
        # The ring is full now: the next send waits.  Cancelled while waiting,
        # it allocated nothing and sent nothing.
        with anyio.fail_after(WAIT_DEADLINE):
            async with anyio.create_task_group() as tg:
                tg.start_soon(dev.send, PACKET_4K)
                for _ in range(POLLS):
                    if session.overflows:
                        break
                    await anyio.sleep(POLL_INTERVAL)
                tg.cancel_scope.cancel()
        assert session.overflows >= 1
        assert session.allocated == {}
        assert dev.statistics().tx_packets == FITS
        # A blocked send backs off between attempts, and goes through once the
        # driver drains the ring: here on the 12th attempt that found no room.
        stamps: list[float] = []

        def overflowed(record: FakeSession) -> None:
            stamps.append(time.monotonic())
            if len(stamps) == BACKOFF_WAITS + 1:
                rig.wintun._drain(record)

        session.on_overflow = overflowed
        before = session.allocations
        with anyio.fail_after(WAIT_DEADLINE):
            await dev.send(PACKET_4K)
        assert session.allocations - before == BACKOFF_WAITS + 2  # 12 refused, 1 taken
        # Not a spin: the refused attempts were spread over at least the back-off.
        assert stamps[-1] - stamps[0] >= _backoff_floor(BACKOFF_WAITS) - 0.001
        assert rig.wintun.drain() == [PACKET_4K]
        assert dev.statistics().tx_packets == FITS + 1
    rig.check_clean()


def test_fake_ring_holds_capacity_minus_four() -> None:
    """The fake's ring rule itself: C - 4 bytes usable, on both rings."""
    rig = Rig()
    adapter = rig.wintun.create_adapter("ring", windows.TUNNEL_TYPE)
    handle = rig.wintun.start_session(adapter, RING)
    fits = [PACKET_4K] * FITS
    rig.wintun.inject(*fits, PACKET_4K)  # one too many: the batch is dropped
    assert rig.wintun.session().rx_discarded == FITS + 1
    rig.wintun.inject(*fits)
    assert list(rig.wintun.session().rx) == fits
    pointers = []
    for _ in range(FITS):
        pointer, code = rig.wintun.allocate_send_packet(handle, len(PACKET_4K))
        assert pointer and code == 0
        pointers.append(pointer)
    overflow = rig.wintun.allocate_send_packet(handle, len(PACKET_4K))
    assert overflow == (0, w.ERROR_BUFFER_OVERFLOW)
    # No size check at allocation (session.c looks only for room).
    rig.wintun._drain(rig.wintun.session())
    for pointer in pointers:
        rig.wintun.copy_to(pointer, PACKET_4K)
        rig.wintun.send_packet(handle, pointer)
    assert rig.wintun.drain() == fits


# -- device control through IP Helper -------------------------------------------------


async def test_ip_helper_rows(rig: Rig, dev: TunStream) -> None:
    control = dev._control
    assert isinstance(control, windows.WindowsControl)
    luid = control.luid
    await dev.add_address("10.8.0.1/24")
    await dev.add_address("fd00:8::1/64")
    with pytest.raises(FileExistsError):
        await dev.add_address("10.8.0.1/24")
    v4, v6 = rig.iphelper.addresses
    # MIB_UNICASTIPADDRESS_ROW (netioapi.h): Address (SOCKADDR_INET) 0, InterfaceLuid 32,
    # ValidLifetime 52, OnLinkPrefixLength 60, DadState 64.
    assert struct.unpack_from("<H", v4, 0)[0] == 2  # AF_INET
    assert v4[4:8] == ipaddress.IPv4Address("10.8.0.1").packed  # SOCKADDR_IN.sin_addr
    assert struct.unpack_from("<Q", v4, 32)[0] == luid
    assert struct.unpack_from("<I", v4, 52)[0] == 0xFFFFFFFF
    assert v4[60] == 24
    assert struct.unpack_from("<i", v4, 64)[0] == 4  # IpDadStatePreferred
    assert struct.unpack_from("<H", v6, 0)[0] == 23  # AF_INET6 (ws2def.h)
    assert v6[8:24] == ipaddress.IPv6Address("fd00:8::1").packed  # SOCKADDR_IN6.sin6_addr
    assert v6[60] == 64
    await dev.remove_address("10.8.0.1/24")
    with pytest.raises(LookupError):
        await dev.remove_address("10.8.0.1/24")

    await dev.set_mtu(1420)
    v4row, v6row = rig.iphelper.set_rows
    # MIB_IPINTERFACE_ROW: Family 0, InterfaceLuid 8, SitePrefixLength 144, NlMtu 152.
    assert struct.unpack_from("<H", v4row, 0)[0] == 2
    assert struct.unpack_from("<Q", v4row, 8)[0] == luid
    assert struct.unpack_from("<I", v4row, 144)[0] == 0
    assert struct.unpack_from("<I", v4row, 152)[0] == 1420
    assert struct.unpack_from("<H", v6row, 0)[0] == 23
    assert dev.mtu == 1420
    rig.iphelper.ipv6 = False
    await dev.set_mtu(1400)  # IPv6 off on the adapter: IPv4 alone
    assert dev.mtu == 1400

    await dev.add_route("192.0.2.0/24", metric=7)
    await dev.add_route("2001:db8::/32")
    with pytest.raises(FileExistsError):
        await dev.add_route("192.0.2.0/24")
    route = rig.iphelper.routes[0]
    # MIB_IPFORWARD_ROW2: InterfaceLuid 0, DestinationPrefix 12 (Prefix 12, PrefixLength 40),
    # NextHop 44, Metric 84, Protocol 88.
    assert struct.unpack_from("<Q", route, 0)[0] == luid
    assert struct.unpack_from("<H", route, 12)[0] == 2
    assert route[16:20] == bytes([192, 0, 2, 0])
    assert route[40] == 24
    assert struct.unpack_from("<H", route, 44)[0] == 2 and route[48:52] == bytes(4)
    assert struct.unpack_from("<I", route, 84)[0] == 7
    assert struct.unpack_from("<i", route, 88)[0] == 3  # MIB_IPPROTO_NETMGMT
    assert await dev.routes() == [
        trio_tun.Route(prefix="192.0.2.0/24", metric=7),
        trio_tun.Route(prefix="2001:db8::/32", metric=0),
    ]
    await dev.remove_route("192.0.2.0/24")
    with pytest.raises(LookupError):
        await dev.remove_route("192.0.2.0/24")


def test_platform_refusals() -> None:
    backend = select_backend("win32")
    assert isinstance(backend, windows.WindowsBackend)
    with pytest.raises(NotImplementedError, match=r"TAP.*Windows"):
        backend.check(TunConfig(layer=Layer.L2))
    with pytest.raises(NotImplementedError, match=r"persist.*Windows"):
        backend.check(TunConfig(persist=True, offload="auto"))
    with pytest.raises(NotImplementedError, match="up=False"):
        backend.check(TunConfig(up=False, offload="auto"))
    with pytest.raises(ValueError, match="power of two"):
        backend.check(TunConfig(ring_capacity=5, offload="auto"))
    backend.check(TunConfig(name="My VPN", offload="auto"))  # what Windows can do passes
    with pytest.raises(NotImplementedError, match="wintun has no fd"):
        wrap_fd(backend, FdSpec(fd=0, owned=False, layer=Layer.L3))


def test_default_strategy_off_windows() -> None:
    # On Windows under Trio the factory returns TrioWaiter(trio.lowlevel.WaitForSingleObject);
    # everywhere else (asyncio, and any system without that function) the thread wait.
    factory = windows.default_waiter_factory(FakeEvents())
    assert isinstance(factory("anyio"), windows.ThreadWaiter)
    if sys.platform != "win32":
        assert isinstance(factory("trio"), windows.ThreadWaiter)
