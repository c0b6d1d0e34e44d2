"""OffloadEngine.serve(): the run-to-completion path, in memory, on both backends.

The engine runs over real ``TunStream`` objects joined in memory
(``memory_tun_pair``): what a test sends into the far end arrives at the
engine's queue like a packet from the kernel, and what the engine writes comes
out of the far end, where the test reads it back.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_tun import TunStream
from trio_tun.engine import EngineStatistics, OffloadEngine
from trio_tun.testing import memory_tun_pair

pytestmark = pytest.mark.anyio

DEADLINE = 30


def numbered(first: int, count: int, flow: int = 0) -> list[bytes]:
    # An IPv4-looking packet (version nibble 4) carrying its flow and number.
    return [b"\x45" + struct.pack("!HI", flow, n) for n in range(first, first + count)]


def number(packet: bytes) -> tuple[int, int]:
    flow, n = struct.unpack_from("!HI", packet, 1)
    return flow, n


async def receive_exactly(stream: TunStream, count: int) -> list[bytes]:
    got: list[bytes] = []
    with anyio.fail_after(DEADLINE):
        while len(got) < count:
            got.extend(await stream.receive_batch())
    return got


def balanced(stats: EngineStatistics) -> None:
    assert stats.in_flight == 0, stats
    assert stats.accepted == stats.written + stats.dropped, stats
    assert stats.received == stats.delivered + stats.rx_dropped, stats


async def test_serve_writes_in_the_readers_task_and_in_order() -> None:
    outside, inside = memory_tun_pair(capacity=4096)
    tasks: set[str] = set()

    def handler(batch: list[bytes]) -> list[bytes]:
        tasks.add(anyio.get_current_task().name)
        return batch

    async with OffloadEngine([inside]) as engine, anyio.create_task_group() as tg:
        tg.start_soon(engine.serve, handler)
        for first in range(0, 2000, 100):
            await outside.send_batch(numbered(first, 100))
        got = await receive_exactly(outside, 2000)
        tg.cancel_scope.cancel()
    assert [number(p)[1] for p in got] == list(range(2000))
    # Run to completion: the handler ran in the queue's reader task, never in
    # the task that called serve() (the channel path's consumer).
    assert tasks and all("_reader" in name for name in tasks), tasks
    stats = engine.statistics()
    balanced(stats)
    assert stats.written == 2000 and stats.delivered == 2000


async def test_batches_read_before_serve_started_keep_their_order() -> None:
    outside, inside = memory_tun_pair(capacity=4096)
    async with OffloadEngine([inside], channel_batches=4) as engine:
        # Read by the engine before anyone serves: these wait in the channel
        # (and a reader waits to put one more in).
        for first in range(0, 600, 100):
            await outside.send_batch(numbered(first, 100))
        await anyio.wait_all_tasks_blocked()
        # The channel is full and the reader holds one more batch it cannot
        # hand over; the rest still waits in the "kernel" queue.
        assert 0 < engine.statistics().received < 600
        async with anyio.create_task_group() as tg:
            tg.start_soon(engine.serve, None)
            await anyio.lowlevel.checkpoint()
            # New packets, read after serve started, must not overtake those.
            await outside.send_batch(numbered(600, 400))
            got = await receive_exactly(outside, 1000)
            tg.cancel_scope.cancel()
    assert [number(p)[1] for p in got] == list(range(1000))
    balanced(engine.statistics())


async def test_serve_forwards_to_another_engine_unchanged() -> None:
    left_out, left_in = memory_tun_pair(capacity=4096)
    right_in, right_out = memory_tun_pair(capacity=4096)
    async with (
        OffloadEngine([left_in]) as a,
        OffloadEngine([right_in]) as b,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(lambda: a.serve(reply_to=b))
        tg.start_soon(lambda: b.serve(reply_to=a))
        await left_out.send_batch(numbered(0, 300, flow=1))
        await right_out.send_batch(numbered(0, 200, flow=2))
        there = await receive_exactly(right_out, 300)
        back = await receive_exactly(left_out, 200)
        tg.cancel_scope.cancel()
    assert [number(p) for p in there] == [(1, n) for n in range(300)]
    assert [number(p) for p in back] == [(2, n) for n in range(200)]
    # The engine written into counts what it wrote for the other's readers.
    assert b.statistics().written == 300 and a.statistics().written == 200
    assert a.statistics().delivered == 300 and b.statistics().delivered == 200
    balanced(a.statistics())
    balanced(b.statistics())


async def test_bad_replies_are_dropped_and_counted() -> None:
    outside, inside = memory_tun_pair()
    limit = inside.max_packet

    def handler(batch: list[bytes]) -> list[bytes]:
        return [b"", b"\x45" * (limit + 1), *batch, b""]

    async with OffloadEngine([inside]) as engine, anyio.create_task_group() as tg:
        tg.start_soon(engine.serve, handler)
        await outside.send_batch(numbered(0, 5))
        got = await receive_exactly(outside, 5)
        tg.cancel_scope.cancel()
    assert [number(p)[1] for p in got] == list(range(5))
    stats = engine.statistics()
    balanced(stats)
    assert stats.written == 5
    # Three bad replies per handler call; the 5 packets may come in 1..5 calls.
    assert stats.dropped > 0 and stats.dropped % 3 == 0
    assert stats.accepted == 5 + stats.dropped


async def test_serving_twice_is_refused() -> None:
    _, inside = memory_tun_pair()
    async with OffloadEngine([inside]) as engine, anyio.create_task_group() as tg:
        tg.start_soon(engine.serve, None)
        await anyio.sleep(0.01)
        with pytest.raises(anyio.BusyResourceError):
            await engine.serve(None)
        tg.cancel_scope.cancel()


async def test_shutdown_lets_a_handler_in_progress_finish_its_write() -> None:
    outside, inside = memory_tun_pair()
    entered, release = anyio.Event(), anyio.Event()

    async def slow(batch: list[bytes]) -> list[bytes]:
        entered.set()
        await release.wait()
        return batch

    with anyio.fail_after(DEADLINE):
        async with (
            anyio.create_task_group() as outer,
            OffloadEngine([inside], grace=DEADLINE) as engine,
        ):
            outer.start_soon(engine.serve, slow)
            await outside.send_batch(numbered(0, 3))
            await entered.wait()
            # Shutdown starts while the handler holds the batch ...
            outer.start_soon(engine.aclose)
            await anyio.sleep(0.05)
            assert engine.statistics().written == 0
            release.set()
    # ... and the reader still wrote what the handler returned.
    assert [number(p)[1] for p in await receive_exactly(outside, 3)] == [0, 1, 2]
    stats = engine.statistics()
    balanced(stats)
    assert stats.written == 3 and stats.dropped == 0


async def test_a_handler_that_never_returns_is_cut_at_the_grace_period() -> None:
    outside, inside = memory_tun_pair()
    entered = anyio.Event()

    async def stuck(batch: list[bytes]) -> list[bytes]:
        entered.set()
        await anyio.sleep_forever()
        raise AssertionError

    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as outer:
            async with OffloadEngine([inside], grace=0.2) as engine:
                outer.start_soon(engine.serve, stuck)
                await outside.send_batch(numbered(0, 3))
                await entered.wait()
                started = anyio.current_time()
            elapsed = anyio.current_time() - started
    # The hard stop came at the grace period, well before the test's deadline;
    # the batch had been handed to the handler, nothing was accepted.
    assert elapsed < DEADLINE / 2
    stats = engine.statistics()
    balanced(stats)
    assert stats.delivered == 3 and stats.accepted == 0


async def test_serve_and_send_batch_share_a_queue_without_conflict() -> None:
    outside, inside = memory_tun_pair(capacity=8192)
    async with OffloadEngine([inside]) as engine, anyio.create_task_group() as tg:
        tg.start_soon(engine.serve, None)

        async def inject() -> None:
            for first in range(0, 1000, 50):
                await engine.send_batch(numbered(first, 50, flow=9))

        tg.start_soon(inject)
        for first in range(0, 1000, 50):
            await outside.send_batch(numbered(first, 50, flow=1))
            await anyio.lowlevel.checkpoint()
        got = await receive_exactly(outside, 2000)
        tg.cancel_scope.cancel()
    flows: dict[int, list[int]] = {1: [], 9: []}
    for packet in got:
        flow, n = number(packet)
        flows[flow].append(n)
    # Two writers on one stream, no BusyResourceError, each flow in order.
    assert flows == {1: list(range(1000)), 9: list(range(1000))}
    balanced(engine.statistics())


@settings(max_examples=20, deadline=None)
@given(sizes=st.lists(st.integers(1, 64), min_size=1, max_size=30))
def test_every_packet_served_exactly_once(sizes: Sequence[int]) -> None:
    async def run() -> list[bytes]:
        outside, inside = memory_tun_pair(capacity=4096)
        async with OffloadEngine([inside]) as engine, anyio.create_task_group() as tg:
            tg.start_soon(engine.serve, None)
            first = 0
            for size in sizes:
                await outside.send_batch(numbered(first, size))
                first += size
            got = await receive_exactly(outside, first)
            tg.cancel_scope.cancel()
        balanced(engine.statistics())
        return got

    got = anyio.run(run, backend="trio")
    assert [number(p)[1] for p in got] == list(range(sum(sizes)))


class SlowQueue:
    """A queue whose writes yield mid-way, and which fails on overlapping writes."""

    max_packet = 1500

    def __init__(self) -> None:
        from trio_tun import Statistics

        self.counters = Statistics()
        self.inbox: list[list[bytes]] = []
        self.arrived = anyio.Event()
        self.written: list[bytes] = []
        self.writing = False
        self.overlaps = 0

    async def receive_batch(self, max_packets: int | None = None) -> list[bytes]:
        while not self.inbox:
            await self.arrived.wait()
            self.arrived = anyio.Event()
        return self.inbox.pop(0)

    def feed(self, batch: list[bytes]) -> None:
        self.inbox.append(batch)
        self.arrived.set()

    async def send_batch(self, packets: Sequence[bytes]) -> None:
        self.overlaps += self.writing
        self.writing = True
        try:
            for packet in packets:
                await anyio.lowlevel.checkpoint()
                self.written.append(packet)
                self.counters.tx_packets += 1
        finally:
            self.writing = False

    def statistics(self) -> object:
        return self.counters

    def detach_queue(self) -> None: ...

    def attach_queue(self) -> None: ...


async def test_writer_and_serving_reader_take_turns_on_a_queue() -> None:
    queue = SlowQueue()
    async with OffloadEngine([queue]) as engine, anyio.create_task_group() as tg:  # type: ignore[list-item]
        tg.start_soon(engine.serve, None)

        async def inject() -> None:
            for first in range(0, 400, 20):
                await engine.send_batch(numbered(first, 20, flow=9))

        tg.start_soon(inject)
        for first in range(0, 400, 20):
            queue.feed(numbered(first, 20, flow=1))
            await anyio.lowlevel.checkpoint()
        with anyio.fail_after(DEADLINE):
            while len(queue.written) < 800:  # noqa: ASYNC110 - polling a fake's list
                await anyio.sleep(0.001)
        tg.cancel_scope.cancel()
    # Never two writes at once on the stream, and each flow in order.
    assert queue.overlaps == 0
    flows: dict[int, list[int]] = {1: [], 9: []}
    for packet in queue.written:
        flow, n = number(packet)
        flows[flow].append(n)
    assert flows == {1: list(range(400)), 9: list(range(400))}
    balanced(engine.statistics())
