"""TunnelPump: two trio-tun VPN endpoints joined by UDP, on a real kernel.

Topology (every namespace made here, removed afterwards)::

    left: app 10.60.1.1 -> tp0 (TUN, offload) -> pump -> UDP 10.61.0.1
                                                          || veth
    right: app 10.60.2.1 <- tp1 (TUN, offload) <- pump <- UDP 10.61.0.2

Traffic is generated with blocking sockets on worker threads, so the same
tests run on Trio and on asyncio.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest

import trio_tun
from packets_util import udp_flood
from trio_tun.engine import TunnelPump
from trio_tun.testing import NetNamespace, fd_count, link_namespaces, memory_tun_pair

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

pytestmark = [pytest.mark.kernel, pytest.mark.anyio]

HEAD = struct.Struct("!I")
PORT = 7000


@pytest.fixture
def sites() -> Iterator[tuple[NetNamespace, NetNamespace]]:
    left, right = NetNamespace.create(), NetNamespace.create()
    try:
        link_namespaces(
            left,
            right,
            names=("u0", "u1"),
            addresses=(["10.61.0.1/24", "fd61::1/64"], ["10.61.0.2/24", "fd61::2/64"]),
        )
        yield left, right
    finally:
        right.close()
        left.close()


@contextlib.asynccontextmanager
async def endpoint(
    ns: NetNamespace, side: int, queues: int
) -> AsyncIterator[tuple[trio_tun.TunStream, list[trio_tun.UdpStream]]]:
    """One VPN endpoint: a TUN device with a route to the far site, one UDP socket per queue."""
    here, there = (1, 2) if side == 0 else (2, 1)
    async with contextlib.AsyncExitStack() as stack:
        tun = await stack.enter_async_context(
            trio_tun.open_tun(
                f"tp{side}",
                addresses=[f"10.60.{here}.1/24", f"fd60:{here}::1/64"],
                mtu=1400,
                netns=ns.fileno(),
                offload=True,
                queues=queues,
            )
        )
        await tun.add_route(f"10.60.{there}.0/24")
        await tun.add_route(f"fd60:{there}::/64")
        local, remote = (f"10.61.0.{side + 1}", f"10.61.0.{2 - side}")
        sockets = [
            await stack.enter_async_context(
                trio_tun.open_udp(
                    local, PORT + i, remote_host=remote, remote_port=PORT + i, netns=ns.fileno()
                )
            )
            for i in range(queues)
        ]
        yield tun, sockets


def _udp_sequence(left: NetNamespace, right: NetNamespace, count: int) -> list[int]:
    """*count* numbered datagrams left -> right, paced; the numbers as they arrived."""
    receiver = right.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = left.socket(socket.AF_INET, socket.SOCK_DGRAM)
    got: list[int] = []
    with receiver, sender:
        receiver.bind(("10.60.2.1", 9000))
        receiver.settimeout(5)
        sender.bind(("10.60.1.1", 0))
        payload = os.urandom(996)
        deadline = time.monotonic() + 60
        sent = 0
        while len(got) < count and time.monotonic() < deadline:
            # A window of 64 in flight: nothing may drop for lack of buffer space.
            while sent < count and sent - len(got) < 64:
                sender.sendto(HEAD.pack(sent) + payload, ("10.60.2.1", 9000))
                sent += 1
            try:
                data = receiver.recv(2048)
            except TimeoutError:
                break
            got.append(HEAD.unpack_from(data)[0])
    return got


def _tcp_transfer(
    left: NetNamespace, right: NetNamespace, family: int, size: int
) -> tuple[str, str]:
    """*size* random bytes over TCP left -> right; (sha256 sent, sha256 received)."""
    server_ip, client_ip = (
        ("10.60.2.1", "10.60.1.1")
        if family == socket.AF_INET
        else (
            "fd60:2::1",
            "fd60:1::1",
        )
    )
    listener = right.socket(family, socket.SOCK_STREAM)
    client = left.socket(family, socket.SOCK_STREAM)
    data = os.urandom(size)
    received = hashlib.sha256()
    with listener, client:
        listener.bind((server_ip, 9001))
        listener.listen(1)
        listener.settimeout(30)
        client.settimeout(60)
        client.bind((client_ip, 0))

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(60)
                while chunk := conn.recv(1 << 20):
                    received.update(chunk)

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            client.connect((server_ip, 9001))
            client.sendall(data)
            client.shutdown(socket.SHUT_WR)
        finally:
            thread.join(90)
    return hashlib.sha256(data).hexdigest(), received.hexdigest()


async def test_datagrams_arrive_once_and_in_order(
    sites: tuple[NetNamespace, NetNamespace],
) -> None:
    left, right = sites
    count = 3000
    async with endpoint(left, 0, 1) as (tl, ls), endpoint(right, 1, 1) as (tr, rs):
        pl, pr = TunnelPump(tl.queues, ls), TunnelPump(tr.queues, rs)
        async with anyio.create_task_group() as tg:
            tg.start_soon(pl.run)
            tg.start_soon(pr.run)
            with anyio.fail_after(90):
                got = await anyio.to_thread.run_sync(_udp_sequence, left, right, count)
            tg.cancel_scope.cancel()
    # Read at the receiver: every number once, in order (UDP, so nothing repaired it).
    assert got == list(range(count))
    for pump in (pl, pr):
        stats = pump.statistics()
        assert stats.in_flight == 0
        assert stats.accepted == stats.written + stats.dropped
    left_stats, right_stats = pl.statistics(), pr.statistics()
    # Left read at least our datagrams from its TUN and sent them as UDP; right
    # received them and wrote them into its TUN (router solicitations and the
    # like may add a few packets, never fewer).
    assert left_stats.tun_received >= count
    assert right_stats.udp_received >= count
    assert right_stats.written >= count
    assert right_stats.dropped == 0


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
async def test_tcp_through_the_tunnel_uses_gso_and_gro(
    sites: tuple[NetNamespace, NetNamespace], family: int
) -> None:
    left, right = sites
    size = 200 * 1024 * 1024
    async with endpoint(left, 0, 2) as (tl, ls), endpoint(right, 1, 2) as (tr, rs):
        pl, pr = TunnelPump(tl.queues, ls), TunnelPump(tr.queues, rs)
        async with anyio.create_task_group() as tg:
            tg.start_soon(pl.run)
            tg.start_soon(pr.run)
            with anyio.fail_after(180):
                sent, received = await anyio.to_thread.run_sync(
                    _tcp_transfer, left, right, family, size
                )
            tg.cancel_scope.cancel()
        assert sent == received
        sender_sockets = [s.statistics() for s in ls]
        receiver_sockets = [s.statistics() for s in rs]
        far_queues = [q.statistics() for q in tr.queues]
    # Super-packets from the TUN went out as UDP GSO runs and came in as GRO reads.
    assert sum(s.gso_writes for s in sender_sockets) > 0
    assert sum(s.tx_datagrams for s in sender_sockets) > sum(s.tx_messages for s in sender_sockets)
    assert sum(s.gro_reads for s in receiver_sockets) > 0
    for pump in (pl, pr):
        stats = pump.statistics()
        assert stats.in_flight == 0 and stats.accepted == stats.written + stats.dropped
    # The far TUN coalesced GRO'd datagrams back into super-packets.
    assert sum(q.tx_coalesced for q in far_queues) > 0


def _flood(left: NetNamespace, stop: threading.Event) -> int:
    return udp_flood(left, ("10.60.2.1", 9002), stop, source="10.60.1.1", size=1372)


async def test_cancelling_mid_transfer_is_bounded_and_accounted(
    sites: tuple[NetNamespace, NetNamespace],
) -> None:
    left, right = sites
    before = fd_count()
    grace = 0.5
    stop = threading.Event()
    async with endpoint(left, 0, 2) as (tl, ls), endpoint(right, 1, 2) as (tr, rs):
        pl, pr = TunnelPump(tl.queues, ls, grace=grace), TunnelPump(tr.queues, rs, grace=grace)
        async with anyio.create_task_group() as outer:
            outer.start_soon(anyio.to_thread.run_sync, _flood, left, stop)
            with anyio.CancelScope() as pumps:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(pl.run)
                    tg.start_soon(pr.run)
                    # Cancel once traffic is flowing through both pumps.
                    with anyio.fail_after(30):
                        while pr.statistics().written < 1000:  # noqa: ASYNC110
                            await anyio.sleep(0.01)
                    started = time.monotonic()
                    pumps.cancel()
            elapsed = time.monotonic() - started
            stop.set()
        assert elapsed < grace + 5
        for pump in (pl, pr):
            stats = pump.statistics()
            # Everything accepted was written or counted as dropped.
            assert stats.in_flight == 0
            assert stats.accepted == stats.written + stats.dropped
        assert pl.statistics().tun_received >= pr.statistics().written >= 1000
        # The pumps' counts agree with the streams' own (both directions).
        for pump, tun, socks in ((pl, tl, ls), (pr, tr, rs)):
            tun_written = sum(q.statistics().tx_packets for q in tun.queues)
            udp_written = sum(s.statistics().tx_datagrams for s in socks)
            assert pump.statistics().written == tun_written + udp_written
    assert fd_count() == before


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="one socket per TUN queue"):
        TunnelPump([], [])
    with pytest.raises(ValueError, match="grace"):
        TunnelPump([object()], [object()], grace=-1)  # type: ignore[list-item]


class _SlowSocket:
    """A stand-in socket: each send takes *delay* and the kernel takes *share* of it."""

    def __init__(self, delay: float, share: float = 1.0) -> None:
        self.delay = delay
        self.share = share
        self.tx_datagrams = 0
        self.sends = 0

    async def receive_batch(self) -> list[bytes]:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def send_batch(self, datagrams: Iterable[bytes | bytearray | memoryview]) -> None:
        batch = list(datagrams)
        self.sends += 1
        await anyio.sleep(self.delay)
        self.tx_datagrams += int(len(batch) * self.share)

    @property
    def counters(self) -> _SlowSocket:
        return self


def _packet(n: int) -> bytes:
    return b"\x45" + bytes(19) + n.to_bytes(4, "big")


async def _pump_one_batch(sock: _SlowSocket, grace: float, cancel_after: float) -> TunnelPump:
    app, dev = memory_tun_pair()
    pump = TunnelPump([dev], [sock], grace=grace)
    async with anyio.create_task_group() as tg:
        tg.start_soon(pump.run)
        await app.send_batch([_packet(i) for i in range(10)])
        with anyio.fail_after(10):
            while sock.sends == 0:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        await anyio.sleep(cancel_after)
        tg.cancel_scope.cancel()
    return pump


async def test_refused_items_are_counted_as_dropped() -> None:
    pump = await _pump_one_batch(_SlowSocket(0.0, share=0.5), grace=1.0, cancel_after=0.1)
    stats = pump.statistics()
    assert (stats.tun_received, stats.accepted, stats.written, stats.dropped) == (10, 10, 5, 5)


async def test_a_batch_in_hand_is_finished_within_the_grace_period() -> None:
    # Cancelled 0.1 s into a 0.5 s send: shielded, so it completes ...
    started = time.monotonic()
    pump = await _pump_one_batch(_SlowSocket(0.5), grace=8.0, cancel_after=0.1)
    assert (pump.statistics().written, pump.statistics().dropped) == (10, 0)
    # ... and then the pump ends: it does not read on until the grace runs out.
    assert time.monotonic() - started < 5


async def test_the_grace_period_bounds_a_stuck_send() -> None:
    started = time.monotonic()
    with anyio.fail_after(20):
        pump = await _pump_one_batch(_SlowSocket(600.0), grace=0.3, cancel_after=0.0)
    assert time.monotonic() - started < 10
    stats = pump.statistics()
    assert (stats.accepted, stats.written, stats.dropped, stats.in_flight) == (10, 0, 10, 0)


class _BrokenSocket(_SlowSocket):
    """The socket breaks under the pump's inbound loop (say, its fd was closed)."""

    async def receive_batch(self) -> list[bytes]:
        await anyio.sleep(0.05)
        raise trio_tun.BrokenResourceError("the socket broke")


async def test_a_loop_that_fails_ends_the_pump_with_its_error() -> None:
    """The loops are shielded from outside cancellation (only run() stops
    them): one failing must still stop the others and end run(), not hang."""
    _, dev = memory_tun_pair()
    pump = TunnelPump([dev], [_BrokenSocket(0.0)], grace=5.0)
    started = time.monotonic()
    with anyio.fail_after(20), pytest.raises(BaseExceptionGroup) as caught:
        await pump.run()
    assert caught.group_contains(trio_tun.BrokenResourceError, match="the socket broke")
    # The outbound loop, idle in its read, was stopped at once, not after the grace.
    assert time.monotonic() - started < 4
    assert pump.statistics().in_flight == 0


class _OneBatchSocket(_SlowSocket):
    """Brings one batch from the peer, then nothing."""

    def __init__(self, batch: list[bytes]) -> None:
        super().__init__(0.0)
        self.batch: list[bytes] | None = batch

    async def receive_batch(self) -> list[bytes]:
        if self.batch is None:
            await anyio.sleep_forever()
        batch, self.batch = self.batch, None
        assert batch is not None
        return batch


@pytest.mark.parametrize(
    "bad",
    [[b""], [b"too long"], [b"", b"too long"]],
    ids=["empty", "too long", "both"],
)
async def test_datagrams_no_tun_could_take_are_dropped_and_counted(bad: list[bytes]) -> None:
    """Each kind alone, too: a batch is checked for both limits, not just one of them."""
    app, dev = memory_tun_pair()
    # The limits themselves pass: a packet of exactly max_packet bytes.
    largest = _packet(1) + bytes(dev.max_packet - len(_packet(1)))
    overlong = largest + b"\x00"
    bad = [overlong if item == b"too long" else item for item in bad]
    batch = [bad[0], largest, *bad[1:], _packet(2)]
    sock = _OneBatchSocket(batch)
    pump = TunnelPump([dev], [sock])
    async with anyio.create_task_group() as tg:
        tg.start_soon(pump.run)
        with anyio.fail_after(10):
            got = [await app.receive(), await app.receive()]
        tg.cancel_scope.cancel()
    assert got == [largest, _packet(2)]
    stats = pump.statistics()
    n = len(batch)
    assert (stats.udp_received, stats.accepted, stats.written, stats.dropped) == (n, n, 2, n - 2)


class _ExclusiveSocket(_SlowSocket):
    """Counts sends that overlap: a real stream would raise BusyResourceError."""

    def __init__(self) -> None:
        super().__init__(0.0)
        self.busy = False
        self.overlaps = 0
        self.sent: list[bytes] = []

    async def send_batch(self, datagrams: Iterable[bytes | bytearray | memoryview]) -> None:
        self.overlaps += self.busy
        self.busy = True
        try:
            for datagram in datagrams:
                await anyio.lowlevel.checkpoint()
                self.sent.append(bytes(datagram))
                self.tx_datagrams += 1
        finally:
            self.busy = False


async def test_send_udp_takes_turns_with_the_pump_and_is_counted() -> None:
    app, dev = memory_tun_pair(capacity=4096)
    sock = _ExclusiveSocket()
    pump = TunnelPump([dev], [sock])
    async with anyio.create_task_group() as tg:
        tg.start_soon(pump.run)

        async def timer() -> None:
            for n in range(200):
                await pump.send_udp([b"k" + n.to_bytes(4, "big")])

        tg.start_soon(timer)
        for first in range(0, 1000, 50):
            await app.send_batch([_packet(n) for n in range(first, first + 50)])
            await anyio.lowlevel.checkpoint()
        with anyio.fail_after(20):
            while len(sock.sent) < 1200:  # noqa: ASYNC110 - polling a fake's list
                await anyio.sleep(0.001)
        tg.cancel_scope.cancel()
    assert sock.overlaps == 0
    data = [d for d in sock.sent if d[:1] == b"\x45"]
    keepalives = [d for d in sock.sent if d[:1] == b"k"]
    assert [int.from_bytes(d[20:24], "big") for d in data] == list(range(1000))
    assert [int.from_bytes(d[1:5], "big") for d in keepalives] == list(range(200))
    stats = pump.statistics()
    assert (stats.accepted, stats.written, stats.dropped) == (1200, 1200, 0)


def test_unconnected_sockets_need_both_transforms() -> None:
    class Unconnected(_SlowSocket):
        async def send_many(self, items: Iterable[tuple[bytes, tuple[str, int]]]) -> None: ...

    with pytest.raises(ValueError, match="both an inbound and an outbound"):
        TunnelPump([object()], [Unconnected(0.0)], outbound=list)  # type: ignore[list-item]


async def test_unconnected_sockets_carry_a_tunnel_with_side_traffic(
    sites: tuple[NetNamespace, NetNamespace],
) -> None:
    """One unconnected socket per end (as a VPN with peers has), plus a timer's datagrams."""
    left, right = sites
    count, pings = 3000, 50
    async with contextlib.AsyncExitStack() as stack:
        ends = []
        for side, ns in enumerate((left, right)):
            here, there = (1, 2) if side == 0 else (2, 1)
            tun = await stack.enter_async_context(
                trio_tun.open_tun(
                    f"tp{side}",
                    addresses=[f"10.60.{here}.1/24"],
                    mtu=1400,
                    netns=ns.fileno(),
                    offload=True,
                )
            )
            await tun.add_route(f"10.60.{there}.0/24")
            udp = await stack.enter_async_context(
                trio_tun.open_udp(f"10.61.0.{side + 1}", PORT, netns=ns.fileno())
            )
            ends.append((tun, udp, (f"10.61.0.{2 - side}", PORT)))
        side_traffic: list[list[int]] = [[], []]

        def make(side: int) -> TunnelPump:
            tun, udp, peer = ends[side]

            def outbound(packets: list[bytes]) -> list[tuple[bytes, tuple[str, int]]]:
                return [(p, peer) for p in packets]

            def inbound(items: list[tuple[bytes, tuple[str, int]]]) -> list[bytes]:
                inner = []
                for data, sender in items:
                    assert sender == peer
                    if data[:1] == b"k":  # the timer's datagrams never reach the TUN
                        side_traffic[side].append(int.from_bytes(data[1:5], "big"))
                    else:
                        inner.append(data)
                return inner

            return TunnelPump(tun.queues, [udp], outbound=outbound, inbound=inbound)

        pl, pr = make(0), make(1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(pl.run)
            tg.start_soon(pr.run)

            async def timer() -> None:
                for n in range(pings):
                    await pl.send_udp([(b"k" + n.to_bytes(4, "big"), ends[0][2])])
                    await anyio.sleep(0.005)

            tg.start_soon(timer)
            with anyio.fail_after(90):
                got = await anyio.to_thread.run_sync(_udp_sequence, left, right, count)
                while len(side_traffic[1]) < pings:  # noqa: ASYNC110 - bounded by fail_after
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    # Inner datagrams once and in order, the timer's datagrams all there and in order.
    assert got == list(range(count))
    assert side_traffic == [[], list(range(pings))]
    for pump in (pl, pr):
        stats = pump.statistics()
        assert stats.in_flight == 0 and stats.accepted == stats.written + stats.dropped
    assert pl.statistics().written >= count + pings
