"""OffloadEngine against a real kernel: multi-queue forwarding, shutdown, failures.

Topology: namespace A with device ``tfa`` (10.40.1.1, 4 queues), namespace B
with ``tfb`` (10.40.2.1, 4 queues), and an engine-based forwarder between them
in this process.  TCP flows go from A to B.
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import anyio
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trio_tun
from trio_tun import TunStream
from trio_tun.engine import OffloadEngine, flow_hash
from trio_tun.testing import NetNamespace, fd_count

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

pytestmark = [pytest.mark.kernel]

QUEUES = 4
DEADLINE = 120
SERVER = "10.40.2.1"


@asynccontextmanager
async def devices(
    a_ns: NetNamespace, b_ns: NetNamespace, queues: int = QUEUES, *, offload: bool = False
) -> AsyncIterator[tuple[TunStream, TunStream]]:
    """tfa (10.40.1.1) in *a_ns* and tfb (10.40.2.1) in *b_ns*, each routing to the other."""
    async with (
        trio_tun.open_tun(
            "tfa",
            addresses=["10.40.1.1/24"],
            netns=a_ns.fileno(),
            queues=queues,
            offload=offload,
        ) as a,
        trio_tun.open_tun(
            "tfb",
            addresses=["10.40.2.1/24"],
            netns=b_ns.fileno(),
            queues=queues,
            offload=offload,
        ) as b,
    ):
        await a.add_route("10.40.2.0/24")
        await b.add_route("10.40.1.0/24")
        yield a, b


async def pump(src: OffloadEngine, dst: OffloadEngine) -> None:
    async for batch in src:
        try:
            await dst.send_batch(batch)
        except trio.ClosedResourceError:
            return


#: How the forwarder is wired: through the application channel (``async for``
#: plus ``send_batch``), or run to completion (``serve(reply_to=...)``).
MODES = ["channel", "serve"]


def start_forwarding(
    nursery: trio.Nursery, ea: OffloadEngine, eb: OffloadEngine, mode: str
) -> None:
    if mode == "serve":
        nursery.start_soon(functools.partial(ea.serve, reply_to=eb))
        nursery.start_soon(functools.partial(eb.serve, reply_to=ea))
    else:
        nursery.start_soon(pump, ea, eb)
        nursery.start_soon(pump, eb, ea)


@asynccontextmanager
async def forwarding(
    a: TunStream, b: TunStream, mode: str, grace: float = 2.0
) -> AsyncIterator[tuple[OffloadEngine, OffloadEngine]]:
    async with (
        a.engine(grace=grace) as ea,
        b.engine(grace=grace) as eb,
        trio.open_nursery() as nursery,
    ):
        start_forwarding(nursery, ea, eb, mode)
        yield ea, eb
        nursery.cancel_scope.cancel()


async def tcp_flows(
    a_ns: NetNamespace, b_ns: NetNamespace, flows: int, size: int
) -> list[tuple[str, str, int]]:
    """*flows* concurrent TCP transfers A -> B; (sent sha256, received sha256, bytes) each."""
    listener = trio.socket.from_stdlib_socket(b_ns.socket(socket.AF_INET, socket.SOCK_STREAM))
    try:
        # bind() is a checkpoint: a cancellation there must not leak the socket.
        await listener.bind((SERVER, 0))
    except BaseException:
        listener.close()
        raise
    listener.listen(flows)
    port = listener.getsockname()[1]
    results: list[tuple[str, str, int]] = []

    async def serve_one(conn: trio.socket.SocketType, done: list[tuple[str, int]]) -> None:
        digest = hashlib.sha256()
        count = 0
        with conn:
            while chunk := await conn.recv(1 << 16):
                digest.update(chunk)
                count += len(chunk)
        done.append((digest.hexdigest(), count))

    async def client(index: int, received: dict[int, tuple[str, int]]) -> None:
        payload = os.urandom(size)
        sock = trio.socket.from_stdlib_socket(a_ns.socket(socket.AF_INET, socket.SOCK_STREAM))
        with sock:
            await sock.connect((SERVER, port))
            # The first 4 bytes name the flow, so the server side can match it.
            view = memoryview(index.to_bytes(4, "big") + payload)
            while view:
                view = view[await sock.send(view[: 1 << 16]) :]
            sock.shutdown(socket.SHUT_WR)
        results.append((hashlib.sha256(index.to_bytes(4, "big") + payload).hexdigest(), "", 0))

    done: list[tuple[str, int]] = []
    with listener:
        async with trio.open_nursery() as nursery:
            received: dict[int, tuple[str, int]] = {}
            for i in range(flows):
                nursery.start_soon(client, i, received)
            for _ in range(flows):
                conn, _ = await listener.accept()
                nursery.start_soon(serve_one, conn, done)
    sent = sorted(r[0] for r in results)
    got = sorted(d[0] for d in done)
    counts = sorted(d[1] for d in done)
    return [(s, g, c) for s, g, c in zip(sent, got, counts, strict=True)]


def queue_traffic(*engines: OffloadEngine) -> list[int]:
    """Per queue index: reads + writes on that queue across the engines."""
    totals = [0] * QUEUES
    for engine in engines:
        for i, stats in enumerate(engine.statistics().queues):
            totals[i] += stats.reads + stats.writes
    return totals


def _leaves(group: BaseException) -> Iterator[BaseException]:
    if isinstance(group, BaseExceptionGroup):
        for inner in group.exceptions:
            yield from _leaves(inner)
    else:
        yield group


def check_accounting(engine: OffloadEngine) -> None:
    stats = engine.statistics()
    assert stats.in_flight == 0, stats
    assert stats.accepted == stats.written + stats.dropped, stats


@pytest.mark.trio
@pytest.mark.parametrize("mode", MODES)
async def test_eight_flows_over_four_queues_arrive_exact(
    two_namespaces: tuple[NetNamespace, NetNamespace], mode: str
) -> None:
    a_ns, b_ns = two_namespaces
    with trio.fail_after(DEADLINE):
        async with devices(a_ns, b_ns) as (a, b):
            assert len(a.queues) == QUEUES and len(b.queues) == QUEUES
            async with forwarding(a, b, mode) as (ea, eb):
                results = await tcp_flows(a_ns, b_ns, flows=8, size=4 * 1024 * 1024)
            traffic = queue_traffic(ea, eb)
            check_accounting(ea)
            check_accounting(eb)
            assert eb.statistics().written > 8 * 2000
    assert all(count == 4 * 1024 * 1024 + 4 for _, _, count in results)
    # Byte-exact and in order: the digests of what arrived are those that left.
    assert sorted(r[0] for r in results) == sorted(r[1] for r in results)
    # The kernel picks the receiving queue by flow hash (and by the queue that
    # last wrote the flow), so one of four queues may see none of 8 flows; an
    # engine ignoring a queue would have stalled the flows hashed to it above.
    assert sum(t > 0 for t in traffic) >= 2, traffic


def numbered_udp_flows(
    a_ns: NetNamespace, b_ns: NetNamespace, flows: int, count: int
) -> dict[int, list[int]]:
    """*flows* UDP flows A -> B of *count* numbered datagrams; per flow, the numbers read at B."""
    receiver = b_ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
    senders = [a_ns.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(flows)]
    got: dict[int, list[int]] = {i: [] for i in range(flows)}
    try:
        receiver.bind((SERVER, 0))
        receiver.settimeout(5)
        target = (SERVER, receiver.getsockname()[1])
        for sender in senders:
            sender.bind(("10.40.1.1", 0))
        payload = os.urandom(1000)
        deadline = time.monotonic() + 60
        sent = arrived = 0
        while arrived < flows * count and time.monotonic() < deadline:
            # A window of 64 in flight over all flows: nothing may drop for lack
            # of buffer space, so a missing number is the forwarder's doing.
            while sent < flows * count and sent - arrived < 64:
                flow, n = sent % flows, sent // flows
                senders[flow].sendto(
                    flow.to_bytes(2, "big") + n.to_bytes(4, "big") + payload, target
                )
                sent += 1
            try:
                data = receiver.recv(2048)
            except TimeoutError:
                break
            got[int.from_bytes(data[:2], "big")].append(int.from_bytes(data[2:6], "big"))
            arrived += 1
    finally:
        receiver.close()
        for sender in senders:
            sender.close()
    return got


@pytest.mark.trio
@pytest.mark.parametrize("mode", MODES)
async def test_udp_flows_keep_their_order_over_four_queues(
    two_namespaces: tuple[NetNamespace, NetNamespace], mode: str
) -> None:
    a_ns, b_ns = two_namespaces
    flows, count = 8, 500
    with trio.fail_after(DEADLINE):
        async with devices(a_ns, b_ns) as (a, b):
            async with forwarding(a, b, mode) as (ea, eb):
                got = await trio.to_thread.run_sync(numbered_udp_flows, a_ns, b_ns, flows, count)
            check_accounting(ea)
            check_accounting(eb)
    # Read at the receiver, per flow: every number once and in order (UDP:
    # nothing downstream would repair a drop or a swap).
    assert got == {i: list(range(count)) for i in range(flows)}
    # ... and the flows really were spread: more than one queue carried them.
    assert sum(1 for q in ea.statistics().queues if q.rx_packets >= count) >= 2


@pytest.mark.trio
@pytest.mark.parametrize("mode", MODES)
async def test_detaching_a_queue_moves_flows_without_downtime(
    two_namespaces: tuple[NetNamespace, NetNamespace], mode: str
) -> None:
    a_ns, b_ns = two_namespaces
    with trio.fail_after(DEADLINE):
        async with devices(a_ns, b_ns) as (a, b):
            async with forwarding(a, b, mode) as (ea, eb):
                async with trio.open_nursery() as nursery:
                    outcome: list[list[tuple[str, str, int]]] = []

                    async def transfer() -> None:
                        outcome.append(await tcp_flows(a_ns, b_ns, 4, 8 * 1024 * 1024))

                    nursery.start_soon(transfer)
                    # Let the flows start, then take queue 1 away on both sides.
                    while ea.statistics().received < 2000:  # noqa: ASYNC110 - polling a counter
                        await trio.sleep(0.01)
                    await ea.detach_queue(1)
                    await eb.detach_queue(1)
                    assert ea.enabled_queues() == [0, 2, 3]
                    assert not a.queues[1].queue_attached
                    assert await a.is_up() and await b.is_up()
                    reads_at_detach = ea.statistics().queues[1].reads
                # The transfer finished with queue 1 gone.
                assert ea.statistics().queues[1].reads == reads_at_detach
                await ea.attach_queue(1)
                await eb.attach_queue(1)
                assert ea.enabled_queues() == [0, 1, 2, 3]
                assert a.queues[1].queue_attached
            check_accounting(ea)
            check_accounting(eb)
    (results,) = outcome
    assert all(c == 8 * 1024 * 1024 + 4 for _, _, c in results)
    assert sorted(r[0] for r in results) == sorted(r[1] for r in results)


@pytest.mark.trio
async def test_deleting_the_device_ends_the_engine_with_broken_resource(
    two_namespaces: tuple[NetNamespace, NetNamespace],
) -> None:
    a_ns, b_ns = two_namespaces
    with trio.fail_after(DEADLINE):
        async with devices(a_ns, b_ns, queues=2) as (a, _):
            with pytest.raises(BaseExceptionGroup) as caught:
                async with a.engine() as engine, trio.open_nursery() as nursery:
                    nursery.start_soon(engine.serve, lambda batch: None)
                    await trio.sleep(0.1)
                    a_ns.netlink(
                        lambda ipr: ipr.link("del", index=ipr.link_lookup(ifname="tfa")[0])
                    )
                    await trio.sleep_forever()
            # Per Trio's rules the nursery raises a group; every error in it is
            # the device being gone (one per queue that noticed).
            leaves = list(_leaves(caught.value))
            assert leaves and all(isinstance(e, trio_tun.BrokenResourceError) for e in leaves)
            assert all(isinstance(e, trio.BrokenResourceError) for e in leaves)
            check_accounting(engine)


@pytest.mark.trio
async def test_serve_answers_through_the_engine(netns: NetNamespace) -> None:
    """serve(handler): a UDP echo written as a handler, spread over 2 queues."""

    def echo(batch: list[bytes]) -> list[bytes]:
        replies = []
        for packet in batch:
            if packet[0] >> 4 != 4 or packet[9] != socket.IPPROTO_UDP:
                continue
            ihl = (packet[0] & 0x0F) * 4
            src, dst = packet[12:16], packet[16:20]
            sport, dport = packet[ihl : ihl + 2], packet[ihl + 2 : ihl + 4]
            reply = bytearray(packet)
            reply[12:16], reply[16:20] = dst, src
            reply[ihl : ihl + 2], reply[ihl + 2 : ihl + 4] = dport, sport
            reply[ihl + 6 : ihl + 8] = b"\0\0"  # UDP checksum optional over IPv4
            replies.append(bytes(reply))
        return replies

    with trio.fail_after(30):
        async with trio_tun.open_tun(addresses=["10.50.0.1/24"], queues=2) as dev:
            async with dev.engine() as engine, trio.open_nursery() as nursery:
                nursery.start_soon(engine.serve, echo)
                sock = trio.socket.from_stdlib_socket(netns.socket())
                with sock:
                    await sock.bind(("10.50.0.1", 0))
                    for i in range(20):
                        message = b"echo %d" % i
                        await sock.sendto(message, ("10.50.0.7", 7))
                        data, peer = await sock.recvfrom(100)
                        assert data == message and peer == ("10.50.0.7", 7)
                nursery.cancel_scope.cancel()
            check_accounting(engine)
            assert engine.statistics().written >= 20


def test_flow_hash_is_stable_per_flow() -> None:
    base = bytearray(40)
    base[0] = 0x45
    base[9] = 6
    base[12:20] = bytes([10, 0, 0, 1, 10, 0, 0, 2])
    base[20:24] = bytes([0x12, 0x34, 0x00, 0x50])
    other = bytearray(base)
    other[30] = 99  # payload/seq differences don't matter
    assert flow_hash(base) == flow_hash(other)
    moved = bytearray(base)
    moved[21] = 0x35
    assert flow_hash(moved) != flow_hash(base)
    assert flow_hash(b"") == 0 and isinstance(flow_hash(b"\x60"), int)


# -- cancellation at random moments ------------------------------------------------


async def _cancel_during_transfer(
    delay: float, grace: float, mode: str
) -> tuple[float, list[OffloadEngine]]:
    a_ns = NetNamespace.create()
    b_ns = NetNamespace.create()
    engines: list[OffloadEngine] = []
    try:
        async with devices(a_ns, b_ns, queues=2) as (a, b):
            with trio.CancelScope() as scope:
                async with a.engine(grace=grace) as ea, b.engine(grace=grace) as eb:
                    engines[:] = [ea, eb]
                    async with trio.open_nursery() as nursery:
                        start_forwarding(nursery, ea, eb, mode)

                        async def traffic() -> None:
                            with trio.move_on_after(30):
                                await tcp_flows(a_ns, b_ns, 2, 16 * 1024 * 1024)

                        nursery.start_soon(traffic)
                        await trio.sleep(delay)
                        started = time.monotonic()
                        scope.cancel()
            elapsed = time.monotonic() - started
    finally:
        b_ns.close()
        a_ns.close()
    return elapsed, engines


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    delay=st.floats(0.0, 0.4),
    grace=st.sampled_from([0.0, 0.2, 1.0]),
    mode=st.sampled_from(MODES),
)
def test_cancelling_at_random_moments_is_clean_and_bounded(
    delay: float, grace: float, mode: str
) -> None:
    fds_before = fd_count()
    elapsed, engines = trio.run(_cancel_during_transfer, delay, grace, mode)
    # Bounded: the grace period plus a generous allowance for a loaded machine.
    assert elapsed <= grace + 5.0
    for engine in engines:
        check_accounting(engine)
    # No fd left: the devices' queues, the namespaces and the sockets are gone.
    assert fd_count() == fds_before


@pytest.mark.anyio
async def test_engine_on_both_backends_with_aclose(netns: NetNamespace) -> None:
    async with trio_tun.open_tun(addresses=["10.60.0.1/24"], queues=2) as dev:
        async with dev.engine(grace=1.0) as engine:
            sock = netns.socket()
            with sock:
                sock.sendto(b"to the engine", ("10.60.0.9", 9))
                with anyio.fail_after(10):
                    async for batch in engine:
                        if any(p.endswith(b"to the engine") for p in batch):
                            break
            await engine.send_batch(
                [bytes.fromhex("4500001c00004000401100000a3c00090a3c0001") + bytes(8)]
            )
            await engine.aclose(grace=1.0)
            with pytest.raises(trio_tun.ClosedResourceError):
                await engine.send_batch([b"\x45" + bytes(27)])
        check_accounting(engine)
        assert engine.statistics().accepted == 1
