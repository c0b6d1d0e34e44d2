"""Fault injection with a real kernel, while traffic flows through an engine forwarder.

Topology (``test_engine.devices``): namespace A with ``tfa`` (10.40.1.1/24),
namespace B with ``tfb`` (10.40.2.1/24), two queues each, and an
:class:`~trio_tun.engine.OffloadEngine` per device in this process pumping
batches both ways.  TCP flows go from A to B.

For each fault the documented behaviour must hold, and whatever happens the
engine's accounting identity stays true: every packet it accepted was
written or counted as dropped (``accepted == written + dropped``, nothing in
flight once it has closed).

* link down/up, MTU changes, address removed and re-added: the engine keeps
  running; what the kernel refused meanwhile is counted as dropped; TCP
  recovers and delivers every byte in order;
* the namespace the device lives in is destroyed: the device dies with it and
  the engine ends with ``BrokenResourceError`` (in an exception group, per
  Trio's rules);
* a queue's fd closed by another task: the engine ends with
  ``ClosedResourceError``;
* queue exhaustion in both directions: the kernel drops (and counts) what
  does not fit, the engine's memory stays bounded, and the packets delivered
  plus the kernel's drop counters add up to what was sent.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trio

import trio_tun
from packets_util import udp4
from test_engine import SERVER, _leaves, check_accounting, devices, pump, tcp_flows
from trio_tun import TunStream
from trio_tun.engine import OffloadEngine
from trio_tun.testing import NetNamespace

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

pytestmark = [pytest.mark.kernel]

DEADLINE = 120
FLOW_BYTES = 4 * 1024 * 1024
A_ROUTE = "10.40.2.0/24"


async def wait_for_traffic(engine: OffloadEngine, packets: int = 300) -> None:
    """Until *engine* has read *packets* more packets than it had (bounded by the caller)."""
    start = engine.statistics().received
    while engine.statistics().received < start + packets:  # noqa: ASYNC110 - polling a counter
        await trio.sleep(0.01)


async def wait_settled(engine: OffloadEngine) -> None:
    """Until every packet the engine accepted was written or dropped."""
    while engine.statistics().in_flight:  # noqa: ASYNC110 - polling a counter
        await trio.sleep(0.01)


async def readd_route(dev: TunStream, prefix: str) -> None:
    """Put back a route the kernel flushed (a link going down takes its routes along)."""
    with contextlib.suppress(FileExistsError):
        await dev.add_route(prefix)


def probe_packets(count: int) -> list[bytes]:
    """Well-formed UDP packets from B's side to A's address (A answers: port unreachable)."""
    return [udp4("10.40.2.9", "10.40.1.1", 40000, 9, b"probe %d" % i) for i in range(count)]


@asynccontextmanager
async def engines(a: TunStream, b: TunStream) -> AsyncIterator[tuple[OffloadEngine, OffloadEngine]]:
    async with (
        a.engine(grace=2.0) as ea,
        b.engine(grace=2.0) as eb,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(pump, ea, eb)
        nursery.start_soon(pump, eb, ea)
        yield ea, eb
        nursery.cancel_scope.cancel()


async def tcp_until(
    a_ns: NetNamespace, b_ns: NetNamespace, stop: trio.Event, flows: int = 2
) -> list[tuple[str, int, str, int]]:
    """*flows* TCP streams A -> B that keep sending until *stop* is set.

    Returns (sent sha256, bytes sent, received sha256, bytes received) per flow.
    """
    listener = trio.socket.from_stdlib_socket(b_ns.socket(socket.AF_INET, socket.SOCK_STREAM))
    await listener.bind((SERVER, 0))
    listener.listen(flows)
    port = listener.getsockname()[1]
    sent: dict[int, tuple[str, int]] = {}
    received: dict[int, tuple[str, int]] = {}

    async def serve_one(conn: trio.socket.SocketType) -> None:
        digest = hashlib.sha256()
        count = 0
        with conn:
            index = int.from_bytes(await conn.recv(1), "big")
            while chunk := await conn.recv(1 << 16):
                digest.update(chunk)
                count += len(chunk)
        received[index] = (digest.hexdigest(), count)

    async def client(index: int) -> None:
        digest = hashlib.sha256()
        count = 0
        sock = trio.socket.from_stdlib_socket(a_ns.socket(socket.AF_INET, socket.SOCK_STREAM))
        with sock:
            await sock.connect((SERVER, port))
            await sock.send(bytes([index]))
            while not stop.is_set():
                block = os.urandom(1 << 16)
                digest.update(block)
                count += len(block)
                view = memoryview(block)
                while view:
                    view = view[await sock.send(view) :]
            sock.shutdown(socket.SHUT_WR)
            # Wait for the server's close, so the flow has really ended.
            await sock.recv(1)
        sent[index] = (digest.hexdigest(), count)

    with listener:
        async with trio.open_nursery() as nursery:
            for i in range(flows):
                nursery.start_soon(client, i)
            for _ in range(flows):
                conn, _ = await listener.accept()
                nursery.start_soon(serve_one, conn)
    return [(*sent[i], *received[i]) for i in range(flows)]


async def transfer_through_fault(
    a_ns: NetNamespace,
    b_ns: NetNamespace,
    fault: Callable[[TunStream, TunStream, OffloadEngine, OffloadEngine], Awaitable[None]],
) -> tuple[OffloadEngine, OffloadEngine]:
    """Two TCP flows A -> B; *fault* is injected while they run, then the flows
    must carry on (recovery) and finally deliver every byte, in order.
    Returns the (closed) engines for more checks."""
    outcome: list[list[tuple[str, int, str, int]]] = []
    stop = trio.Event()
    with trio.fail_after(DEADLINE):
        async with devices(a_ns, b_ns, queues=2) as (a, b):
            async with engines(a, b) as (ea, eb), trio.open_nursery() as nursery:

                async def transfer() -> None:
                    outcome.append(await tcp_until(a_ns, b_ns, stop))

                nursery.start_soon(transfer)
                await wait_for_traffic(ea)
                await fault(a, b, ea, eb)
                # Recovered: the flows move again after the fault.
                await wait_for_traffic(eb, 1000)
                stop.set()
            check_accounting(ea)
            check_accounting(eb)
    (results,) = outcome
    for sent_digest, sent_bytes, got_digest, got_bytes in results:
        assert got_bytes == sent_bytes > 0
        # Byte-exact and in order.
        assert got_digest == sent_digest
    return ea, eb


def refused_are_counted(engine: OffloadEngine) -> None:
    """Whatever a queue's kernel write refused is part of the engine's dropped count."""
    stats = engine.statistics()
    # The engine is the queues' only writer: what they wrote is what it wrote,
    # and what they refused is part of what it dropped (the rest of its drops
    # never reached a write: still queued when it closed).
    assert stats.written == sum(q.tx_packets for q in stats.queues), stats
    assert stats.dropped >= sum(q.tx_dropped for q in stats.queues), stats
    assert stats.accepted == stats.written + stats.dropped + stats.in_flight, stats


@pytest.mark.trio
async def test_link_down_and_up_recovers_with_drops_counted(
    two_namespaces: tuple[NetNamespace, NetNamespace],
) -> None:
    a_ns, b_ns = two_namespaces
    dropped_while_down: list[int] = []

    async def fault(a: TunStream, b: TunStream, ea: OffloadEngine, eb: OffloadEngine) -> None:
        await a.set_down()
        # Packets for a down device are refused by the kernel (EIO/EINVAL):
        # dropped and counted, the engine carries on.
        before = ea.statistics().dropped
        await ea.send_batch(probe_packets(20))
        await wait_settled(ea)
        dropped_while_down.append(ea.statistics().dropped - before)
        await trio.sleep(0.3)
        await a.set_up()
        assert await a.is_up()
        await readd_route(a, A_ROUTE)

    ea, eb = await transfer_through_fault(a_ns, b_ns, fault)
    # At least the 20 probes (and any ACK that came in meanwhile).
    assert dropped_while_down[0] >= 20
    refused_are_counted(ea)
    refused_are_counted(eb)


@pytest.mark.trio
async def test_mtu_changes_under_load(
    two_namespaces: tuple[NetNamespace, NetNamespace],
) -> None:
    a_ns, b_ns = two_namespaces

    async def fault(a: TunStream, b: TunStream, ea: OffloadEngine, eb: OffloadEngine) -> None:
        for mtu in (1280, 9000, 576, 1500):
            await a.set_mtu(mtu)
            await b.set_mtu(max(mtu, 1280))
            assert a.mtu == mtu
            await wait_for_traffic(ea, 100)

    ea, eb = await transfer_through_fault(a_ns, b_ns, fault)
    refused_are_counted(ea)
    refused_are_counted(eb)


@pytest.mark.trio
async def test_address_removed_and_readded(
    two_namespaces: tuple[NetNamespace, NetNamespace],
) -> None:
    a_ns, b_ns = two_namespaces

    async def fault(a: TunStream, b: TunStream, ea: OffloadEngine, eb: OffloadEngine) -> None:
        await a.remove_address("10.40.1.1/24")
        assert "10.40.1.1/24" not in {str(x) for x in await a.addresses()}
        # Meanwhile A's kernel drops what B sends to the address it no longer
        # has; TCP retransmits once it is back.
        await trio.sleep(0.3)
        await a.add_address("10.40.1.1/24")
        await readd_route(a, A_ROUTE)

    ea, eb = await transfer_through_fault(a_ns, b_ns, fault)
    refused_are_counted(ea)
    refused_are_counted(eb)


@pytest.mark.trio
async def test_closing_a_queue_from_another_task(
    two_namespaces: tuple[NetNamespace, NetNamespace],
) -> None:
    a_ns, b_ns = two_namespaces
    engines_seen: list[OffloadEngine] = []
    with trio.fail_after(DEADLINE):
        async with devices(a_ns, b_ns, queues=2) as (a, b):
            with pytest.raises(BaseExceptionGroup) as caught:
                async with engines(a, b) as (ea, eb), trio.open_nursery() as nursery:
                    engines_seen[:] = [ea, eb]

                    async def traffic() -> None:
                        with trio.move_on_after(60):
                            await tcp_flows(a_ns, b_ns, 2, FLOW_BYTES)

                    nursery.start_soon(traffic)
                    await wait_for_traffic(ea)
                    # Another task closes queue 1 of A under the engine's feet.
                    async with trio.open_nursery() as closer:
                        closer.start_soon(a.queues[1].aclose)
                    await trio.sleep_forever()
            leaves = list(_leaves(caught.value))
            assert leaves and all(isinstance(e, trio_tun.ClosedResourceError) for e in leaves), (
                leaves
            )
            assert all(isinstance(e, trio.ClosedResourceError) for e in leaves)
            for engine in engines_seen:
                check_accounting(engine)


@pytest.mark.trio
async def test_namespace_destroyed_under_the_engine(
    two_namespaces: tuple[NetNamespace, NetNamespace],
) -> None:
    """The namespace A's device lives in loses its last reference while traffic flows.

    ``open_tun`` keeps a reference to the device's namespace for as long as
    the device is open (so it can still configure it), so here A's queues are
    held as plain fds, the way a process gets them from a privileged helper:
    duplicated, then wrapped with ``from_fd`` outside A, which holds no
    reference to A.  Then the last process in A is killed and the last fd on
    A closed: the kernel tears A down, deleting the device with it.
    """
    a_ns, b_ns = two_namespaces
    with trio.fail_after(DEADLINE):
        async with trio_tun.open_tun(
            "tfa", addresses=["10.40.1.1/24"], netns=a_ns.fileno(), queues=2
        ) as a_setup:
            await a_setup.add_route(A_ROUTE)
            fds = [os.dup(q.fileno()) for q in a_setup.queues]
        a_queues = [trio_tun.from_fd(fd, vnet_hdr=True) for fd in fds]
        with pytest.raises(trio_tun.NoDeviceControlError):
            _ = a_queues[0].name  # no handle on A: it can't be found from here
        resident = a_ns.popen(["sleep", "600"])
        try:
            async with trio_tun.open_tun(
                "tfb", addresses=["10.40.2.1/24"], netns=b_ns.fileno(), queues=2
            ) as b:
                await b.add_route("10.40.1.0/24")
                sender = trio.socket.from_stdlib_socket(b_ns.socket())
                engines_seen: list[OffloadEngine] = []
                with sender, pytest.raises(BaseExceptionGroup) as caught:
                    async with (
                        OffloadEngine(a_queues, grace=1.0) as ea,
                        b.engine(grace=1.0) as eb,
                        trio.open_nursery() as nursery,
                    ):
                        engines_seen[:] = [ea, eb]
                        nursery.start_soon(pump, ea, eb)
                        nursery.start_soon(pump, eb, ea)

                        async def flood() -> None:
                            # B -> A (A's kernel answers some with port unreachable).
                            for i in range(1_000_000):
                                await sender.sendto(b"to A %d" % i, ("10.40.1.1", 9))
                                if i % 50 == 0:
                                    await trio.sleep(0.001)

                        nursery.start_soon(flood)
                        # A rate-limits its ICMP errors, so count what A's engine
                        # writes rather than what it reads.
                        while ea.statistics().written < 200:  # noqa: ASYNC110
                            await trio.sleep(0.01)
                        resident.kill()
                        resident.wait()
                        a_ns.close()  # the last reference: A goes, and tfa with it
                        await trio.sleep_forever()
                leaves = list(_leaves(caught.value))
                assert leaves and all(
                    isinstance(e, trio_tun.BrokenResourceError) for e in leaves
                ), leaves
                for engine in engines_seen:
                    check_accounting(engine)
        finally:
            if resident.poll() is None:
                resident.kill()
                resident.wait()
            for queue in a_queues:
                await queue.aclose()


def _udp_counters() -> dict[str, int]:
    """The calling thread's namespace's UDP counters (``/proc/thread-self/net/snmp``)."""
    with open("/proc/thread-self/net/snmp") as snmp:
        rows = [line.split() for line in snmp if line.startswith("Udp:")]
    names, values = rows[0][1:], rows[1][1:]
    return dict(zip(names, map(int, values), strict=True))


def _tx_dropped(ns: NetNamespace, name: str) -> int:
    return int(
        ns.netlink(lambda ipr: ipr.get_links(ifname=name)[0].get_attr("IFLA_STATS64")["tx_dropped"])
    )


@pytest.mark.trio
async def test_kernel_queue_full_when_the_application_stalls(netns: NetNamespace) -> None:
    """Senders outpace an application that stopped reading: the engine blocks,
    the kernel's queue for the device fills and the kernel drops, counting it."""
    sent = 4000
    channel_batches = 2
    queues = 2
    with trio.fail_after(DEADLINE):
        async with trio_tun.open_tun("tfq", addresses=["10.41.0.1/24"], queues=queues) as dev:
            async with dev.engine(channel_batches=channel_batches) as engine:
                dropped_before = await trio.to_thread.run_sync(_tx_dropped, netns, "tfq")
                sock = netns.socket()
                with sock:
                    for i in range(sent):
                        sock.sendto(b"flood %05d" % i, ("10.41.0.9", 9))
                await trio.sleep(0.5)  # let the readers fill what they can
                stats = engine.statistics()
                # Bounded: the inbound channel plus one batch per reader, no more.
                held = stats.received - stats.delivered
                assert held <= (channel_batches + queues) * 64, stats
                dropped = await trio.to_thread.run_sync(_tx_dropped, netns, "tfq") - dropped_before
                assert dropped > 0
                # The application resumes and takes everything that was kept.
                ours: set[bytes] = set()
                while True:
                    with trio.move_on_after(1.0):
                        batch = await engine.receive_batch()
                        ours.update(p[28:] for p in batch if p[28:].startswith(b"flood "))
                        continue
                    break
                await engine.aclose()
            check_accounting(engine)
    assert 0 < len(ours) < sent
    # Every datagram was either delivered (once) or counted by the kernel as
    # dropped; the device's counter may also hold a few packets of its own.
    assert len(ours) + dropped >= sent
    assert len(ours) + dropped <= sent + 10


@pytest.mark.trio
async def test_engine_writes_faster_than_the_peer_reads(netns: NetNamespace) -> None:
    """The engine writes a burst to a socket that does not read: the kernel takes
    every write, the socket keeps what fits and the kernel counts the rest."""
    sent = 3000
    with trio.fail_after(DEADLINE):
        async with trio_tun.open_tun("tfw", addresses=["10.42.0.1/24"], queues=2) as dev:
            sink = netns.socket()
            with sink:
                sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
                sink.bind(("10.42.0.1", 9999))
                before = _udp_counters()
                async with dev.engine() as engine:
                    packets = [
                        udp4("10.42.0.7", "10.42.0.1", 5000 + i % 7, 9999, b"burst %05d" % i)
                        for i in range(sent)
                    ]
                    for start in range(0, sent, 500):
                        await engine.send_batch(packets[start : start + 500])
                    await wait_settled(engine)
                check_accounting(engine)
                stats = engine.statistics()
                assert stats.accepted == sent
                after = _udp_counters()
                got = 0
                sink.setblocking(False)
                while True:
                    try:
                        sink.recv(2048)
                    except BlockingIOError:
                        break
                    got += 1
    overflowed = after["RcvbufErrors"] - before["RcvbufErrors"]
    assert overflowed > 0, (got, after)
    # Written by the engine = read by the socket + dropped by the kernel, exactly.
    assert got + overflowed + stats.dropped == sent
    assert got + overflowed == stats.written
