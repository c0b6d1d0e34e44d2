"""ThreadedForwarder: each direction of a TUN <-> TUN forwarder in its own thread."""

from __future__ import annotations

import os
import socket
import threading
import time

import anyio
import pytest
import trio
import trio.lowlevel

from packets_util import udp_flood
from test_engine import SERVER, devices, numbered_udp_flows, tcp_flows
from trio_tun import BusyResourceError, PacketStream, from_fd
from trio_tun._ports import PUMP_STOP
from trio_tun.testing import NetNamespace, fd_count, memory_tun_pair
from trio_tun.threaded import ThreadedForwarder, drive

pytestmark = [pytest.mark.kernel]

DEADLINE = 120


def balanced(forwarder: ThreadedForwarder) -> None:
    stats = forwarder.statistics()
    assert stats.in_flight == 0, stats
    assert stats.accepted == stats.written + stats.dropped, stats


@pytest.mark.trio
@pytest.mark.parametrize("offload", [True, False], ids=["offload", "plain"])
async def test_tcp_and_numbered_udp_cross_both_threads(
    two_namespaces: tuple[NetNamespace, NetNamespace], offload: bool
) -> None:
    a_ns, b_ns = two_namespaces
    with trio.fail_after(DEADLINE):
        async with devices(a_ns, b_ns, 1, offload=offload) as (a, b):
            assert a.vnet_hdr == offload
            forwarder = ThreadedForwarder([(a, b), (b, a)], grace=1.0)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(forwarder.run)
                results = await tcp_flows(a_ns, b_ns, flows=2, size=8 * 1024 * 1024)
                got = await trio.to_thread.run_sync(numbered_udp_flows, a_ns, b_ns, 4, 300)
                nursery.cancel_scope.cancel()
            # The threads are gone: the streams' send sides are free again
            # (a thread still inside send_batch would make this BusyResourceError).
            for stream in (a, b):
                await stream.send_batch([])
    assert all(count == 8 * 1024 * 1024 + 4 for _, _, count in results)
    assert sorted(r[0] for r in results) == sorted(r[1] for r in results)
    # UDP: read at the receiver, every number once and in order per flow.
    assert got == {i: list(range(300)) for i in range(4)}
    balanced(forwarder)
    stats = forwarder.statistics()
    assert stats.written >= 2 * 8 * 1024 * 1024 // 1500 + 1200


@pytest.mark.trio
async def test_a_thread_per_queue_pair_carries_every_flow(
    two_namespaces: tuple[NetNamespace, NetNamespace],
) -> None:
    """Two-queue devices with offload, one pair of lanes per queue pair: a
    thread each.  The kernel hashes each flow to a queue, so with sixteen
    flows (eight TCP, eight UDP) both threads carry some: all sixteen on one
    queue happens once in 32,768 runs."""
    a_ns, b_ns = two_namespaces
    size = 2 * 1024 * 1024
    with trio.fail_after(DEADLINE):
        async with devices(a_ns, b_ns, 2, offload=True) as (a, b):
            lanes = [
                lane
                for qa, qb in zip(a.queues, b.queues, strict=True)
                for lane in ((qa, qb), (qb, qa))
            ]
            forwarder = ThreadedForwarder(lanes, grace=1.0)
            assert [len(group) for group in forwarder._threads] == [2, 2]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(forwarder.run)
                results = await tcp_flows(a_ns, b_ns, flows=8, size=size)
                got = await trio.to_thread.run_sync(numbered_udp_flows, a_ns, b_ns, 8, 200)
                nursery.cancel_scope.cancel()
            per_queue = [q.statistics().rx_packets for q in a.queues]
            written = sum(q.statistics().tx_packets for q in (*a.queues, *b.queues))
    assert all(count == size + 4 for _, _, count in results)
    assert sorted(r[0] for r in results) == sorted(r[1] for r in results)
    assert got == {i: list(range(200)) for i in range(8)}
    balanced(forwarder)
    stats = forwarder.statistics()
    assert stats.dropped == 0 and stats.written == written, (stats, written)
    # Both queue threads forwarded flows (every flow is 200 packets or more).
    assert min(per_queue) >= 200, per_queue


def test_drive_refuses_a_coroutine_that_suspends() -> None:
    async def suspends() -> None:
        await trio.lowlevel.checkpoint()

    with pytest.raises(RuntimeError, match="suspend"):
        drive(suspends())


def test_each_direction_keeps_its_own_thread_backend() -> None:
    """A two-way forwarder's lanes share streams: a stream is one lane's source
    and the other's destination.  The lane that ends first resets only its
    own direction; the other thread still sends through the shared stream.
    (One backend per stream made that send ask a thread with no event loop
    for its backend: AsyncLibraryNotFoundError at shutdown.)"""
    from trio_tun import from_fd
    from trio_tun._wait import StopSignal, blocking_backend

    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    stream = from_fd(left.fileno(), owned=False)
    reader, writer = StopSignal(), StopSignal()
    try:
        stream._use_backend(blocking_backend(reader), receiving=True)
        stream._use_backend(blocking_backend(writer), receiving=False)
        # The sending lane ends; the receiving lane goes on, in a thread.
        stream._use_backend(None, receiving=False)
        got: list[object] = []

        def receiving_lane() -> None:
            right.send(b"\x45" + bytes(27))
            got.extend(drive(stream.receive_batch()))

        thread = threading.Thread(target=receiving_lane)
        thread.start()
        thread.join(DEADLINE)
        assert got == [b"\x45" + bytes(27)]
        # And the other way round: the receiving lane ended first.
        stream._use_backend(blocking_backend(writer), receiving=False)
        stream._use_backend(None, receiving=True)
        errors: list[BaseException] = []

        def sending_lane() -> None:
            try:
                drive(stream.send_batch([b"\x45" + bytes(19)] * 3))
            except BaseException as exc:  # reported below, not lost in the thread
                errors.append(exc)

        thread = threading.Thread(target=sending_lane)
        thread.start()
        thread.join(DEADLINE)
        assert errors == []
        assert [right.recv(100) for _ in range(3)] == [b"\x45" + bytes(19)] * 3
        assert stream.counters.tx_packets == 3
    finally:
        stream.close()
        reader.close()
        writer.close()
        left.close()
        right.close()


def test_arguments_are_checked() -> None:
    a, b = memory_tun_pair()
    with pytest.raises(ValueError, match="file descriptor"):
        ThreadedForwarder([(a, b)])
    with pytest.raises(ValueError, match="file descriptor"):
        ThreadedForwarder([(a, b)], raw=True)
    with pytest.raises(ValueError, match="at least one lane"):
        ThreadedForwarder([])


def test_raw_lanes_need_one_framing_and_no_transform() -> None:
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(2)]
    plain = from_fd(pairs[0][0].fileno(), owned=False)
    plain2 = from_fd(pairs[1][0].fileno(), owned=False)
    virtio = from_fd(pairs[1][1].fileno(), owned=False, vnet_hdr=True)
    try:
        with pytest.raises(ValueError, match="same framing"):
            ThreadedForwarder([(plain, virtio)], raw=True)
        with pytest.raises(ValueError, match="same framing"):
            ThreadedForwarder([(virtio, plain)], raw=True)
        with pytest.raises(ValueError, match="no transform"):
            ThreadedForwarder([(plain, plain2)], raw=True, transform=list)
        ThreadedForwarder([(plain, plain2)], raw=True)
    finally:
        for stream in (plain, plain2, virtio):
            stream.close()
        for left, right in pairs:
            left.close()
            right.close()


@pytest.mark.trio
async def test_raw_lane_counts_refused_and_passes_the_rest_unchanged() -> None:
    """Frames go through byte for byte and in order; one the destination refuses
    (EMSGSIZE: larger than its socket buffer) is dropped and counted, in the
    forwarder's statistics and in the destination stream's, and the lane goes on."""
    src_pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    dst_pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    dst_pair[0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    src = from_fd(src_pair[0].fileno(), owned=False)
    dst = from_fd(dst_pair[0].fileno(), owned=False)
    frames = [bytes([0x45, i]) + bytes(range(i)) for i in range(1, 40)]
    big = b"\x45" + bytes(60_000)
    sent = [*frames[:20], big, *frames[20:]]
    try:
        forwarder = ThreadedForwarder([(src, dst)], raw=True, grace=1.0)
        got: list[bytes] = []
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(forwarder.run)
                for frame in sent:
                    src_pair[1].send(frame)
                while len(got) < len(frames):
                    await trio.lowlevel.wait_readable(dst_pair[1])
                    got.append(dst_pair[1].recv(70_000))
                # The lane holds both directions it uses while it runs.
                with pytest.raises(BusyResourceError):
                    await src.receive()
                with pytest.raises(BusyResourceError):
                    await dst.send(frames[0])
                nursery.cancel_scope.cancel()
        assert got == frames
        stats = forwarder.statistics()
        assert (stats.received, stats.written, stats.dropped) == (40, 39, 1), stats
        balanced(forwarder)
        assert src.statistics().reads == src.statistics().rx_packets == 40
        assert src.statistics().read_bytes == sum(map(len, sent))
        assert dst.statistics().tx_packets == dst.statistics().writes == 39
        assert dst.statistics().tx_bytes == sum(map(len, frames))
        assert dst.statistics().tx_dropped == 1
        # Free again afterwards.
        await dst.send(frames[0])
        assert dst_pair[1].recv(100) == frames[0]
    finally:
        src.close()
        dst.close()
        for sock in (*src_pair, *dst_pair):
            sock.close()


def _seqpacket_streams(
    count: int, *, vnet_hdr: bool
) -> tuple[list[PacketStream], list[socket.socket], list[socket.socket]]:
    """*count* streams over SEQPACKET pairs: (streams, their sockets, the peers)."""
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(count)]
    for pair in pairs:
        for sock in pair:
            sock.setblocking(False)
    streams = [from_fd(mine.fileno(), owned=False, vnet_hdr=vnet_hdr) for mine, _ in pairs]
    return streams, [mine for mine, _ in pairs], [peer for _, peer in pairs]


def test_raw_lanes_with_offload_share_a_thread_per_device_pair() -> None:
    """Both directions between two devices with offload run in one thread (the
    pair pump, or one poll over both sources with a transform); without
    offload, or with pair_lanes=False, each lane keeps its own; a lane with
    no reverse partner runs alone."""
    socks: list[socket.socket] = []
    try:
        (a, b, c, d), mine, peers = _seqpacket_streams(4, vnet_hdr=True)
        socks += mine + peers
        (p, q), mine, peers = _seqpacket_streams(2, vnet_hdr=False)
        socks += mine + peers

        def shape(
            lanes: list[tuple[PacketStream, PacketStream]], raw: bool, pair_lanes: bool = True
        ) -> list[int]:
            forwarder = ThreadedForwarder(lanes, raw=raw, pair_lanes=pair_lanes)
            return [len(group) for group in forwarder._threads]

        assert shape([(a, b), (b, a)], raw=True) == [2]
        assert shape([(c, d), (a, b), (b, a)], raw=True) == [1, 2]
        assert shape([(a, b), (c, d), (d, c), (b, a)], raw=True) == [2, 2]
        assert shape([(a, b), (b, c), (c, a)], raw=True) == [1, 1, 1]
        assert shape([(a, b), (b, a)], raw=False) == [2]
        assert shape([(a, b), (b, a)], raw=False, pair_lanes=False) == [1, 1]
        assert shape([(a, b), (b, a)], raw=True, pair_lanes=False) == [1, 1]
        assert shape([(p, q), (q, p)], raw=False) == [1, 1]
        assert shape([(p, q), (q, p)], raw=True) == [1, 1]
        # The pair is the two lanes themselves, in the order given.
        forwarder = ThreadedForwarder([(b, a), (a, b)], raw=True)
        ((first, second),) = forwarder._threads
        assert (first.src, first.dst, second.src, second.dst) == (b, a, a, b)
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.trio
async def test_a_raw_pair_forwards_both_ways_and_counts_refused() -> None:
    """The pair pump: frames cross both ways byte for byte and in order; one the
    destination refuses (EMSGSIZE) is dropped and counted in the forwarder's
    and the stream's statistics, and both directions go on.  Both streams are
    busy both ways while it runs and free afterwards."""
    (a, b), mine, peers = _seqpacket_streams(2, vnet_hdr=True)
    mine[1].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    to_b = [bytes(10) + bytes([i]) * i for i in range(1, 40)]
    to_a = [bytes(10) + bytes([255 - i]) * (3 * i) for i in range(1, 30)]
    big = bytes(60_000)
    sent_to_b = [*to_b[:20], big, *to_b[20:]]
    try:
        forwarder = ThreadedForwarder([(a, b), (b, a)], raw=True, grace=1.0)
        got_b: list[bytes] = []
        got_a: list[bytes] = []
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(forwarder.run)
                for i in range(max(len(sent_to_b), len(to_a))):
                    if i < len(sent_to_b):
                        peers[0].send(sent_to_b[i])
                    if i < len(to_a):
                        peers[1].send(to_a[i])
                for peer, got, want in ((peers[1], got_b, to_b), (peers[0], got_a, to_a)):
                    while len(got) < len(want):
                        await trio.lowlevel.wait_readable(peer)
                        got.append(peer.recv(70_000))
                for stream in (a, b):
                    with pytest.raises(BusyResourceError):
                        await stream.receive()
                    with pytest.raises(BusyResourceError):
                        await stream.send(to_b[0])
                nursery.cancel_scope.cancel()
        assert got_b == to_b and got_a == to_a
        stats = forwarder.statistics()
        assert (stats.received, stats.written, stats.dropped) == (69, 68, 1), stats
        balanced(forwarder)
        assert a.statistics().rx_packets == 40 and b.statistics().rx_packets == 29
        assert a.statistics().read_bytes == sum(map(len, sent_to_b))
        assert b.statistics().tx_packets == 39 and b.statistics().tx_dropped == 1
        assert b.statistics().tx_bytes == sum(map(len, to_b))
        assert a.statistics().tx_packets == 29 and a.statistics().tx_dropped == 0
        assert a.statistics().tx_bytes == sum(map(len, to_a))
        # Free again afterwards, both ways.
        await b.send_raw(to_b[0])
        assert peers[1].recv(100) == to_b[0]
        await a.send_raw(to_a[0])
        assert peers[0].recv(100) == to_a[0]
    finally:
        a.close()
        b.close()
        for sock in (*mine, *peers):
            sock.close()


@pytest.mark.trio
async def test_a_raw_lane_that_never_waits_still_stops_at_once() -> None:
    """/dev/zero is always readable and /dev/null always writable, so the pump
    never waits where a stop pipe could wake it: only the stop flag, read
    before every frame, ends it.  Its counters are live (the wait below reads
    them while it runs), and no frame read is left unwritten."""
    fds = fd_count()
    zero = from_fd(os.open("/dev/zero", os.O_RDONLY))
    null = from_fd(os.open("/dev/null", os.O_WRONLY))
    # A grace period far longer than any stop should take on a loaded machine.
    forwarder = ThreadedForwarder([(zero, null)], raw=True, grace=30.0)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(forwarder.run)
            for _ in range(DEADLINE * 100):
                if forwarder.statistics().written >= 1000:
                    break
                await trio.sleep(0.01)
            started = time.monotonic()
            nursery.cancel_scope.cancel()
    elapsed = time.monotonic() - started
    stats = forwarder.statistics()
    assert stats.written >= 1000
    assert stats.received == stats.written and stats.dropped == 0, stats
    # Stopped by the flag, long before the grace period could run out.
    assert elapsed < 10, elapsed
    assert zero.statistics().read_bytes == null.statistics().write_bytes == 65535 * stats.written
    zero.close()
    null.close()
    assert fd_count() == fds


@pytest.mark.trio
async def test_a_lane_that_never_runs_dry_reads_no_batch_after_the_stop() -> None:
    """/dev/zero never runs dry, so its lane keeps taking batches in a row
    without polling: the stop flag, read before each batch, must end reading
    right after the batch in hand, not a run of batches later."""
    fds = fd_count()
    zero = from_fd(os.open("/dev/zero", os.O_RDONLY))
    null = from_fd(os.open("/dev/null", os.O_WRONLY))
    token = trio.lowlevel.current_trio_token()
    scope = trio.CancelScope()
    seen: list[int] = []

    def transform(batch: list[bytes]) -> list[bytes]:
        seen.append(len(batch))
        if len(seen) == 3:
            # Cancel, and return only once run() has raised the stop flag.
            trio.from_thread.run_sync(scope.cancel, trio_token=token)
            flag = forwarder._lanes[0].pump
            deadline = time.monotonic() + DEADLINE
            while not flag[PUMP_STOP] and time.monotonic() < deadline:
                time.sleep(0.001)
        return batch

    forwarder = ThreadedForwarder([(zero, null)], transform=transform, grace=30.0)
    with trio.fail_after(DEADLINE):
        with scope:
            await forwarder.run()
    stats = forwarder.statistics()
    assert len(seen) == 3, seen
    assert stats.received == sum(seen) == stats.written, (seen, stats)
    balanced(forwarder)
    assert zero.statistics().read_bytes == null.statistics().write_bytes
    zero.close()
    null.close()
    assert fd_count() == fds


@pytest.mark.trio
@pytest.mark.parametrize("offload", [True, False], ids=["offload", "plain"])
async def test_raw_lanes_carry_tcp_and_numbered_udp(
    two_namespaces: tuple[NetNamespace, NetNamespace], offload: bool
) -> None:
    a_ns, b_ns = two_namespaces
    size = 8 * 1024 * 1024
    with trio.fail_after(DEADLINE):
        async with devices(a_ns, b_ns, 1, offload=offload) as (a, b):
            forwarder = ThreadedForwarder([(a, b), (b, a)], raw=True, grace=1.0)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(forwarder.run)
                results = await tcp_flows(a_ns, b_ns, flows=2, size=size)
                got = await trio.to_thread.run_sync(numbered_udp_flows, a_ns, b_ns, 4, 300)
                nursery.cancel_scope.cancel()
            for stream in (a, b):
                await stream.send_batch([])
            a_stats, b_stats = a.statistics(), b.statistics()
    assert all(count == size + 4 for _, _, count in results)
    assert sorted(r[0] for r in results) == sorted(r[1] for r in results)
    assert got == {i: list(range(300)) for i in range(4)}
    balanced(forwarder)
    stats = forwarder.statistics()
    # Every frame read by a lane was written by it (none refused here), and
    # the streams' own counters say the same as the forwarder's.
    assert stats.dropped == 0
    assert stats.received == a_stats.reads + b_stats.reads == stats.written
    assert stats.written == a_stats.tx_packets + b_stats.tx_packets
    assert a_stats.read_bytes == b_stats.write_bytes
    assert b_stats.read_bytes == a_stats.write_bytes
    # Frames pass unsplit: with offload, TCP's super-packets (far more than an
    # MTU per read); without, one packet per read.
    per_read = a_stats.read_bytes / a_stats.reads
    if offload:
        assert per_read > 3000, per_read
    else:
        assert per_read <= 1500, per_read


@pytest.mark.trio
@pytest.mark.parametrize("raw", [False, True], ids=["batches", "raw"])
async def test_cancelling_under_load_is_bounded_and_leaves_nothing(
    two_namespaces: tuple[NetNamespace, NetNamespace], raw: bool
) -> None:
    a_ns, b_ns = two_namespaces
    fds = fd_count()
    stop = threading.Event()

    with trio.fail_after(DEADLINE):
        async with devices(a_ns, b_ns, 1) as (a, b):
            forwarder = ThreadedForwarder([(a, b), (b, a)], grace=0.5, raw=raw)
            async with trio.open_nursery() as outer:
                outer.start_soon(trio.to_thread.run_sync, udp_flood, a_ns, (SERVER, 9), stop)
                with trio.CancelScope() as scope:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(forwarder.run)
                        while forwarder.statistics().written < 2000:  # noqa: ASYNC110
                            await trio.sleep(0.01)
                        started = time.monotonic()
                        scope.cancel()
                elapsed = time.monotonic() - started
                stop.set()
    assert elapsed < 0.5 + 5
    balanced(forwarder)
    assert forwarder.statistics().received >= 2000
    await anyio.sleep(0.1)
    assert fd_count() == fds
