"""Engine behaviour that mutation testing found unchecked (``nox -s mutants``).

Each test pins an outcome a surviving mutant changed: which header fields the
flow hash reads, which handler replies ``serve`` drops and how they are
counted, and the grace period ``aclose`` uses.  All in memory: a recording fake
queue, no device.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable

import anyio
import anyio.lowlevel
import pytest

from fake_queue import FakeQueue
from trio_tun.engine import OffloadEngine, TunnelPump, _Turn, flow_hash
from trio_tun.testing import memory_tun_pair

pytestmark = pytest.mark.anyio

DEADLINE = 20


def Queue() -> FakeQueue:
    return FakeQueue(max_packet=100)


# -- flow hash ------------------------------------------------------------------


def ipv4(options: bytes = b"", *, proto: int = 17, ports: bytes = b"\x04\xd2\x00\x50") -> bytearray:
    ihl = 5 + len(options) // 4
    header = bytearray(20)
    header[0] = 0x40 | ihl
    header[1] = 0x10  # TOS
    struct.pack_into("!HHHBB", header, 2, 20 + len(options) + 12, 0x1234, 0x4000, 64, proto)
    header[12:20] = bytes([10, 0, 0, 1, 10, 0, 0, 2])
    return header + options + ports + bytes(8)


def ipv6(*, payload: int = 12, proto: int = 17) -> bytearray:
    header = bytearray(40)
    header[0:4] = b"\x60\x0a\xbc\xde"  # version, traffic class, flow label
    struct.pack_into("!HBB", header, 4, payload, proto, 64)
    header[8:24] = bytes(15) + b"\x01"
    header[24:40] = bytes(15) + b"\x02"
    return header + (b"\x04\xd2\x00\x50" + bytes(8))[:payload]


def changed(packet: bytearray, offset: int) -> bytes:
    copy = bytearray(packet)
    copy[offset] ^= 0x5A
    return bytes(copy)


IPV4_OPTIONS = b"\x01\x01\x01\x00" * 2  # NOP NOP NOP EOL, twice: IHL 7

# (name, packet, offsets of flow fields, offsets outside the flow)
LAYOUTS = [
    # addresses 12..20, protocol 9, ports right after the header.
    ("ipv4", ipv4(), [9, 12, 15, 16, 19, 20, 21, 22, 23], [1, 2, 4, 6, 8, 10, 24, 30]),
    (
        "ipv4 options",
        ipv4(IPV4_OPTIONS),
        [9, 12, 19, 28, 29, 30, 31],
        [1, 2, 4, 6, 8, 10, 20, 21, 27, 32, 39],
    ),
    # One option word (IHL 6, the first byte 0x46): ports at 24..28.
    (
        "ipv4 one option",
        ipv4(IPV4_OPTIONS[:4]),
        [9, 12, 19, 24, 25, 26, 27],
        [1, 2, 4, 6, 8, 10, 20, 21, 22, 23, 28, 35],
    ),
    # addresses 8..40, next header 6, ports 40..44.
    ("ipv6", ipv6(), [6, 8, 23, 24, 39, 40, 41, 42, 43], [1, 2, 3, 4, 5, 7, 44, 51]),
    # No transport header: the addresses still decide.
    ("ipv6 bare", ipv6(payload=0), [6, 8, 39], [1, 3, 5, 7]),
]


@pytest.mark.parametrize(
    ("packet", "flow", "other"),
    [pytest.param(p, f, o, id=name) for name, p, f, o in LAYOUTS],
)
def test_flow_hash_reads_the_flow_fields_and_only_them(
    packet: bytearray, flow: list[int], other: list[int]
) -> None:
    base = flow_hash(bytes(packet))
    # A CRC changes with any one changed byte of a fixed-length input, so each
    # flow field must move the hash ...
    for offset in flow:
        assert flow_hash(changed(packet, offset)) != base, offset
    # ... and nothing else may (TTL, IDs, lengths, checksums, options, payload),
    # or one flow would be scattered over queues and reordered.
    for offset in other:
        assert flow_hash(changed(packet, offset)) == base, offset


def test_flow_hash_of_anything_else_reads_what_is_there() -> None:
    # Not IP, or too short to be: still a stable hash, from the first bytes.
    for packet in (b"\x00" * 10, b"\x45" * 19, b"\x60" * 39, bytes(range(30))):
        assert flow_hash(packet) == flow_hash(bytes(packet))
        assert flow_hash(packet) != flow_hash(changed(bytearray(packet), 0))


@pytest.mark.parametrize(
    "make", [ipv4, lambda: ipv4(IPV4_OPTIONS), ipv6], ids=["v4", "v4opt", "v6"]
)
def test_distinct_flows_spread_over_queues(make: object) -> None:
    assert callable(make)
    # 64 flows (source ports) over 4 queues: every queue gets some.
    slots = set()
    for port in range(1000, 1064):
        packet = make()
        offset = len(packet) - 12
        packet[offset : offset + 2] = port.to_bytes(2, "big")
        slots.add(flow_hash(bytes(packet)) % 4)
    assert slots == {0, 1, 2, 3}


# -- serve: replies a device could not take -------------------------------------


async def _serve_once(replies: object, feeds: int = 1) -> tuple[Queue, OffloadEngine]:
    """Serve *feeds* one-packet batches with a handler that returns *replies* each time."""
    queue = Queue()
    engine = OffloadEngine([queue], grace=DEADLINE)  # type: ignore[list-item]
    served = 0

    def handler(batch: list[bytes]) -> list[bytes]:
        nonlocal served
        served += 1
        return replies() if callable(replies) else replies  # type: ignore[return-value]

    with anyio.fail_after(DEADLINE):
        async with engine, anyio.create_task_group() as tg:
            tg.start_soon(engine.serve, handler)
            await anyio.wait_all_tasks_blocked()
            for _ in range(feeds):
                queue.feed([b"in"])
                await anyio.wait_all_tasks_blocked()
            assert served == feeds
            tg.cancel_scope.cancel()
    return queue, engine


def _counts(engine: OffloadEngine) -> tuple[int, int, int]:
    stats = engine.statistics()
    assert stats.accepted == stats.written + stats.dropped + stats.in_flight
    return stats.accepted, stats.written, stats.dropped


@pytest.mark.parametrize(
    ("replies", "kept"),
    [
        # An empty reply among good ones, nothing too long.
        ([b"a", b"", b"bc"], [b"a", b"bc"]),
        # One too long, nothing empty.
        ([b"a", b"x" * 101, b"bc"], [b"a", b"bc"]),
        # The limits themselves are fine: 1 byte and exactly max_packet.
        ([b"1", b"y" * 100, b"z"], [b"1", b"y" * 100, b"z"]),
        # Both kinds at once.
        ([b"", b"q", b"x" * 500, b"r"], [b"q", b"r"]),
    ],
    ids=["empty", "too long", "limits", "both"],
)
async def test_served_replies_outside_the_limits_are_dropped_and_counted(
    replies: list[bytes], kept: list[bytes]
) -> None:
    queue, engine = await _serve_once(tuple(replies))  # not a list: copied by the engine
    assert queue.written == kept
    assert _counts(engine) == (len(replies), len(kept), len(replies) - len(kept))


async def test_dropped_replies_add_up_over_batches() -> None:
    queue, engine = await _serve_once(lambda: [b"ok", b""], feeds=3)
    assert queue.written == [b"ok"] * 3
    assert _counts(engine) == (6, 3, 3)


async def test_an_empty_iterator_of_replies_writes_nothing() -> None:
    # Truthy, yet empty once listed: nothing to check, nothing to write.
    queue, engine = await _serve_once(lambda: iter([]), feeds=2)
    assert queue.written == []
    assert _counts(engine) == (0, 0, 0)


# -- aclose and the grace period ------------------------------------------------


async def test_aclose_grace_overrides_the_engines() -> None:
    queue = Queue()
    queue.gate = anyio.Event()
    # The engine's own grace would drop the blocked write at once ...
    engine = OffloadEngine([queue], grace=0)  # type: ignore[list-item]
    with anyio.fail_after(DEADLINE):
        async with engine, anyio.create_task_group() as tg:
            await engine.send_batch([b"p1", b"p2"])
            await queue.writing.wait()
            # ... but this shutdown gives the writer time: it finishes once the
            # gate opens, while aclose is waiting for it.
            tg.start_soon(engine.aclose, DEADLINE)
            await anyio.wait_all_tasks_blocked()
            queue.gate.set()
    assert queue.written == [b"p1", b"p2"]
    assert _counts(engine) == (2, 2, 0)


@pytest.mark.parametrize("explicit", [False, True], ids=["engine grace", "aclose grace"])
async def test_aclose_ends_a_stuck_write_after_the_grace_period(explicit: bool) -> None:
    queue = Queue()
    queue.gate = anyio.Event()  # never opens
    engine = OffloadEngine([queue], grace=0.01 if not explicit else DEADLINE * 10)  # type: ignore[list-item]
    with anyio.fail_after(DEADLINE):
        async with engine:
            await engine.send_batch([b"p1", b"p2", b"p3"])
            await queue.writing.wait()
            if explicit:
                await engine.aclose(0.01)
            else:
                await engine.aclose()
            # aclose returned: the write was stopped and counted.
            assert _counts(engine) == (3, 0, 3)
    assert queue.written == []


# -- serve: contention and a closed target --------------------------------------


async def test_served_replies_wait_for_a_write_in_progress() -> None:
    queue = Queue()
    queue.gate = anyio.Event()
    engine = OffloadEngine([queue], grace=DEADLINE)  # type: ignore[list-item]
    with anyio.fail_after(DEADLINE):
        async with engine, anyio.create_task_group() as tg:
            # The writer task holds the queue's turn, blocked in a write ...
            await engine.send_batch([b"app1", b"app2"])
            await queue.writing.wait()
            # ... so the reader serving this batch has to wait for its turn.
            tg.start_soon(engine.serve, lambda batch: [b"re:" + p for p in batch])
            await anyio.wait_all_tasks_blocked()
            queue.feed([b"x", b"y"])
            await anyio.wait_all_tasks_blocked()
            assert queue.written == []
            queue.gate.set()
            while len(queue.written) < 4:
                await queue.wrote.wait()
                queue.wrote = anyio.Event()
            tg.cancel_scope.cancel()
    # The write in progress first, then the replies, each packet once; never
    # two writes on the queue at once.
    assert queue.written == [b"app1", b"app2", b"re:x", b"re:y"]
    assert queue.most_active == 1
    assert _counts(engine) == (4, 4, 0)


async def test_replies_to_a_closed_engine_are_dropped_there() -> None:
    here, there = Queue(), Queue()
    engine = OffloadEngine([here], grace=DEADLINE)  # type: ignore[list-item]
    target = OffloadEngine([there], grace=DEADLINE)  # type: ignore[list-item]
    with anyio.fail_after(DEADLINE):
        async with target:
            pass
        async with engine, anyio.create_task_group() as tg:
            tg.start_soon(lambda: engine.serve(lambda batch: [*batch, b"extra"], reply_to=target))
            await anyio.wait_all_tasks_blocked()
            here.feed([b"a", b"b"])
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
    # Nothing reached the closed engine's queue; it counted what it refused.
    assert there.written == []
    assert _counts(target) == (3, 0, 3)
    assert engine.statistics().delivered == 2


# -- arguments and errors -------------------------------------------------------


async def test_engine_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match=r"^an engine needs at least one queue$"):
        OffloadEngine([])
    for grace in (-0.5, float("inf"), float("nan")):
        with pytest.raises(ValueError, match=r"^grace must be a finite number of seconds >= 0"):
            OffloadEngine([Queue()], grace=grace)  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"^channel_batches must be at least 1, not 0$"):
        OffloadEngine([Queue()], channel_batches=0)  # type: ignore[list-item]
    # The limits themselves are fine.
    OffloadEngine([Queue()], grace=0, channel_batches=1)  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ([b"ok", b""], "packet of 0 bytes: packets must be 1..100 bytes long"),
        ([b"ok", b"x" * 101], "packet of 101 bytes: packets must be 1..100 bytes long"),
        # Both: the empty one is named.
        ([b"x" * 101, b""], "packet of 0 bytes: packets must be 1..100 bytes long"),
    ],
    ids=["empty", "too long", "both"],
)
async def test_send_batch_refuses_a_bad_batch_whole(batch: list[bytes], message: str) -> None:
    queue = Queue()
    engine = OffloadEngine([queue])  # type: ignore[list-item]
    with anyio.fail_after(DEADLINE):
        async with engine:
            with pytest.raises(ValueError, match=f"^{message}$".replace(".", r"\.")):
                await engine.send_batch(batch)
            # 1 byte and exactly max_packet are fine.
            await engine.send_batch([b"1", b"m" * 100])
            while len(queue.written) < 2:
                await queue.wrote.wait()
                queue.wrote = anyio.Event()
            assert engine.statistics().accepted == 2
        with pytest.raises(anyio.ClosedResourceError, match=r"^the engine is shutting down$"):
            await engine.send_batch([b"late"])
    assert queue.written == [b"1", b"m" * 100]


async def test_packets_are_spread_by_flow_and_each_written_once() -> None:
    queues = [Queue() for _ in range(3)]
    engine = OffloadEngine(queues, grace=DEADLINE)  # type: ignore[arg-type]
    flows = [ipv4(ports=port.to_bytes(2, "big") + b"\x00\x50") for port in range(2000, 2012)]
    batch = [bytes(flows[n % len(flows)]) + bytes([n]) for n in range(60)]
    with anyio.fail_after(DEADLINE):
        async with engine:
            await engine.send_batch(batch[:30])
            await engine.send_batch(batch[30:])
            for index, queue in enumerate(queues):
                await _written(queue, sum(1 for p in batch if flow_hash(p) % 3 == index))
            stats = engine.statistics()
            assert stats.queues == tuple(q.statistics() for q in queues)
    for index, queue in enumerate(queues):
        # Each queue got exactly its flows' packets, in the order sent.
        assert queue.written == [p for p in batch if flow_hash(p) % 3 == index]
    assert all(q.written for q in queues)
    assert _counts(engine) == (60, 60, 0)


async def test_detached_queues_are_left_out_and_the_last_one_stays() -> None:
    queues = [Queue(), Queue()]
    engine = OffloadEngine(queues)  # type: ignore[arg-type]
    with anyio.fail_after(DEADLINE):
        async with engine:
            assert engine.enabled_queues() == [0, 1]
            await engine.detach_queue(1)
            assert engine.enabled_queues() == [0]
            with pytest.raises(
                ValueError, match=r"^can't detach the last attached queue of an engine$"
            ):
                await engine.detach_queue(0)
            await engine.send_batch([bytes(flow) for flow in LAYOUTS[0][1:2]] * 4)
            await _written(queues[0], 4)
            assert queues[1].written == []
            # Back in service: its reader and writer run again.
            await engine.attach_queue(1)
            assert engine.enabled_queues() == [0, 1]
            queues[1].feed([b"back"])
            assert await engine.receive_batch() == [b"back"]
            flows = [bytes(ipv4(ports=p.to_bytes(2, "big") + b"\x00\x50")) for p in range(40)]
            await engine.send_batch(flows)
            for index, queue in enumerate(queues):
                share = [p for p in flows if flow_hash(p) % 2 == index]
                await _written(queue, len(share) + 4 * (index == 0))
    assert queues[1].written == [p for p in flows if flow_hash(p) % 2 == 1]


# -- serve: state, async handlers, smaller targets ------------------------------


async def test_serve_twice_is_busy_and_serve_can_run_again_after() -> None:
    queue = Queue()
    engine = OffloadEngine([queue], grace=DEADLINE)  # type: ignore[list-item]
    with anyio.fail_after(DEADLINE):
        async with engine, anyio.create_task_group() as tg:
            first = anyio.CancelScope()
            tg.start_soon(lambda: _serve_in(first, engine, lambda b: [b"1:" + p for p in b]))
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(anyio.BusyResourceError, match=r"already serving this"):
                await engine.serve()
            queue.feed([b"a"])
            await _written(queue, 1)
            first.cancel()
            await anyio.wait_all_tasks_blocked()
            # No longer serving: a batch read now waits for the application.
            queue.feed([b"b"])
            assert await engine.receive_batch() == [b"b"]
            second = anyio.CancelScope()
            tg.start_soon(lambda: _serve_in(second, engine, lambda b: [b"2:" + p for p in b]))
            await anyio.wait_all_tasks_blocked()
            queue.feed([b"c"])
            await _written(queue, 2)
            second.cancel()
    assert queue.written == [b"1:a", b"2:c"]


async def _serve_in(scope: anyio.CancelScope, engine: OffloadEngine, handler: object) -> None:
    with scope:
        await engine.serve(handler)  # type: ignore[arg-type]


async def _written(queue: Queue, count: int) -> None:
    while len(queue.written) < count:
        await queue.wrote.wait()
        queue.wrote = anyio.Event()


async def test_batches_read_before_serve_go_through_an_async_handler() -> None:
    queue = Queue()
    engine = OffloadEngine([queue], grace=DEADLINE)  # type: ignore[list-item]

    async def handler(batch: list[bytes]) -> list[bytes]:
        await anyio.lowlevel.checkpoint()
        return [b"r:" + p for p in batch]

    with anyio.fail_after(DEADLINE):
        async with engine, anyio.create_task_group() as tg:
            # Read into the inbound channel while nobody serves.
            queue.feed([b"early1", b"early2"])
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(engine.serve, handler)
            await _written(queue, 2)
            queue.feed([b"late"])
            await _written(queue, 3)
            tg.cancel_scope.cancel()
    assert queue.written == [b"r:early1", b"r:early2", b"r:late"]
    assert _counts(engine) == (3, 3, 0)


async def test_forwarding_to_a_smaller_device_drops_what_it_cannot_take() -> None:
    here, there = Queue(), Queue()
    there.max_packet = 50
    engine = OffloadEngine([here], grace=DEADLINE)  # type: ignore[list-item]
    target = OffloadEngine([there], grace=DEADLINE)  # type: ignore[list-item]
    with anyio.fail_after(DEADLINE):
        async with target, engine, anyio.create_task_group() as tg:
            tg.start_soon(lambda: engine.serve(reply_to=target))
            await anyio.wait_all_tasks_blocked()
            here.feed([b"s" * 10, b"L" * 60, b"t" * 50])
            await _written(there, 2)
            tg.cancel_scope.cancel()
    assert there.written == [b"s" * 10, b"t" * 50]
    assert _counts(target) == (3, 2, 1)


# -- shutdown from outside ------------------------------------------------------


async def test_an_outside_cancellation_still_lets_the_write_finish() -> None:
    queue = Queue()
    queue.gate = anyio.Event()
    engine = OffloadEngine([queue], grace=DEADLINE)  # type: ignore[list-item]

    async def run(scope: anyio.CancelScope) -> None:
        with scope:
            async with engine:
                await engine.send_batch([b"w1", b"w2"])
                await anyio.sleep_forever()

    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            scope = anyio.CancelScope()
            tg.start_soon(run, scope)
            await queue.writing.wait()
            scope.cancel()
            await anyio.wait_all_tasks_blocked()
            # The writer is shielded from the cancellation: the grace period
            # lets it finish once the device takes the packets.
            queue.gate.set()
    assert queue.written == [b"w1", b"w2"]
    assert _counts(engine) == (2, 2, 0)


async def test_cancelling_aclose_stops_at_once_and_still_counts() -> None:
    queue = Queue()
    queue.gate = anyio.Event()  # never opens
    engine = OffloadEngine([queue], grace=DEADLINE * 10)  # type: ignore[list-item]
    with anyio.fail_after(DEADLINE):
        async with engine:
            await engine.send_batch([b"a", b"b", b"c"])
            await queue.writing.wait()
            # Queued in the writer's channel behind the blocked write.
            await engine.send_batch([b"d", b"e"])
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(engine.aclose)
                    await anyio.wait_all_tasks_blocked()
                    scope.cancel()
            # Stopped and accounted for before the async with even ends.
            assert engine.statistics().in_flight == 0
            assert _counts(engine) == (5, 0, 5)
    assert queue.written == []


async def test_a_served_write_in_progress_finishes_despite_an_outside_cancellation() -> None:
    queue = Queue()
    queue.gate = anyio.Event()
    engine = OffloadEngine([queue], grace=DEADLINE)  # type: ignore[list-item]

    async def run(scope: anyio.CancelScope) -> None:
        with scope:
            async with engine, anyio.create_task_group() as tg:
                tg.start_soon(engine.serve, lambda batch: [b"r:" + p for p in batch])
                await anyio.sleep_forever()

    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            scope = anyio.CancelScope()
            tg.start_soon(run, scope)
            await anyio.wait_all_tasks_blocked()
            queue.feed([b"x", b"y"])
            await queue.writing.wait()
            scope.cancel()
            await anyio.wait_all_tasks_blocked()
            # The reader is in the middle of writing the handler's output: it
            # finishes that write within the grace period.
            queue.gate.set()
    assert queue.written == [b"r:x", b"r:y"]
    assert _counts(engine) == (2, 2, 0)


async def test_an_application_batch_waits_for_a_served_write() -> None:
    queue = Queue()
    queue.gate = anyio.Event()
    engine = OffloadEngine([queue], grace=DEADLINE)  # type: ignore[list-item]
    with anyio.fail_after(DEADLINE):
        async with engine, anyio.create_task_group() as tg:
            tg.start_soon(engine.serve, lambda batch: [b"r:" + p for p in batch])
            await anyio.wait_all_tasks_blocked()
            queue.feed([b"x"])
            await queue.writing.wait()
            # The reader holds the queue's turn: the writer task must wait.
            await engine.send_batch([b"app"])
            await anyio.wait_all_tasks_blocked()
            queue.gate.set()
            await _written(queue, 2)
            tg.cancel_scope.cancel()
    assert queue.written == [b"r:x", b"app"]
    assert queue.most_active == 1


async def test_batches_held_by_several_readers_at_shutdown_all_count() -> None:
    queues = [Queue(), Queue()]
    engine = OffloadEngine(queues, channel_batches=1)  # type: ignore[arg-type]
    with anyio.fail_after(DEADLINE):
        async with engine:
            queues[0].feed([b"a"] * 4)
            await anyio.wait_all_tasks_blocked()  # in the channel
            queues[0].feed([b"b"] * 6)
            queues[1].feed([b"c"] * 5)
            await anyio.wait_all_tasks_blocked()
            # One batch fills the channel; each reader holds one more.
            assert engine.statistics().received == 15
    stats = engine.statistics()
    assert (stats.received, stats.delivered, stats.rx_dropped) == (15, 0, 15)


async def test_no_queue_comes_back_once_the_engine_is_shutting_down() -> None:
    queues = [Queue(), Queue()]
    engine = OffloadEngine(queues)  # type: ignore[arg-type]
    with anyio.fail_after(DEADLINE):
        async with engine:
            await engine.detach_queue(1)
        with pytest.raises(anyio.ClosedResourceError, match=r"^the engine is shutting down$"):
            await engine.attach_queue(1)
    assert engine.enabled_queues() == [0]


# -- TunnelPump -------------------------------------------------------------------


class _Socket:
    """A stand-in connected UDP socket: one batch from the peer, then silence;
    sends are recorded."""

    def __init__(self, batch: list[bytes] | None = None) -> None:
        self.batch = batch
        self.tx_datagrams = 0
        self.sent: list[bytes] = []

    async def receive_batch(self) -> list[bytes]:
        if self.batch is None:
            await anyio.sleep_forever()
        batch, self.batch = self.batch, None
        assert batch is not None
        return batch

    async def send_batch(self, datagrams: Iterable[bytes]) -> None:
        for datagram in datagrams:
            self.sent.append(bytes(datagram))
            self.tx_datagrams += 1

    @property
    def counters(self) -> _Socket:
        return self


class _StuckSocket(_Socket):
    """A socket whose sends never finish."""

    def __init__(self) -> None:
        super().__init__()
        self.sending = anyio.Event()

    async def send_batch(self, datagrams: Iterable[bytes]) -> None:
        self.sending.set()
        await anyio.sleep_forever()


async def test_pump_grace_zero_drops_the_batch_in_hand_at_once() -> None:
    app, dev = memory_tun_pair()
    sock = _StuckSocket()
    pump = TunnelPump([dev], [sock], grace=0.0)
    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(pump.run)
            await app.send(b"\x45" + bytes(19))
            await sock.sending.wait()
            tg.cancel_scope.cancel()
    stats = pump.statistics()
    assert (stats.accepted, stats.written, stats.dropped, stats.in_flight) == (1, 0, 1, 0)


def test_pump_grace_may_not_be_negative_or_infinite() -> None:
    _, dev = memory_tun_pair()
    for grace in (-0.5, math.inf, math.nan):
        with pytest.raises(
            ValueError, match=rf"^grace must be a finite number of seconds >= 0, not {grace!r}$"
        ):
            TunnelPump([dev], [_Socket()], grace=grace)


async def test_pump_awaits_an_async_inbound_transform_and_takes_full_size_packets() -> None:
    app, dev = memory_tun_pair()
    largest = b"\x45" + bytes(dev.max_packet - 1)
    sock = _Socket([b"\x45" + b"a" * 19, largest[:-1]])

    async def inbound(batch: list[bytes]) -> list[bytes]:
        await anyio.lowlevel.checkpoint()
        # One byte longer each: the second becomes exactly max_packet bytes;
        # and a 1-byte packet, the shortest a device takes.
        return [p + b"!" for p in batch] + [b"\x45"]

    pump = TunnelPump([dev], [sock], inbound=inbound)
    async with anyio.create_task_group() as tg:
        tg.start_soon(pump.run)
        with anyio.fail_after(DEADLINE):
            got = [await app.receive(), await app.receive(), await app.receive()]
        tg.cancel_scope.cancel()
    assert got == [b"\x45" + b"a" * 19 + b"!", largest[:-1] + b"!", b"\x45"]
    assert len(got[1]) == dev.max_packet
    stats = pump.statistics()
    assert (stats.udp_received, stats.accepted, stats.written, stats.dropped) == (2, 3, 3, 0)


async def test_a_pump_runs_once_at_a_time_and_again_after() -> None:
    app, dev = memory_tun_pair()
    sock = _Socket()
    pump = TunnelPump([dev], [sock])
    for round_ in range(2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(pump.run)
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(RuntimeError, match=r"^this pump is already running$"):
                await pump.run()
            await app.send(b"\x45" + bytes([round_]) * 19)
            with anyio.fail_after(DEADLINE):
                while len(sock.sent) <= round_:  # noqa: ASYNC110 - polling a fake's list
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    assert sock.sent == [b"\x45" + bytes([n]) * 19 for n in range(2)]


async def test_a_bucket_for_a_queue_detached_meanwhile_goes_to_the_others() -> None:
    queues = [Queue(), Queue()]
    engine = OffloadEngine(queues, channel_batches=1)  # type: ignore[arg-type]
    flows = [bytes(ipv4(ports=p.to_bytes(2, "big") + b"\x00\x50")) for p in range(40)]
    to_0 = [p for p in flows if flow_hash(p) % 2 == 0][:3]
    to_1 = [p for p in flows if flow_hash(p) % 2 == 1][:3]
    queues[0].gate = anyio.Event()
    with anyio.fail_after(DEADLINE):
        async with engine, anyio.create_task_group() as tg:
            # Queue 0's writer is stuck on its first batch and its channel is full ...
            await engine.send_batch(to_0[:1])
            await queues[0].writing.wait()
            await engine.send_batch(to_0[1:2])
            # ... so this batch waits on its bucket for queue 0 while queue 1,
            # chosen for its second bucket, is taken out of service.
            tg.start_soon(engine.send_batch, [to_0[2], *to_1])
            await anyio.wait_all_tasks_blocked()
            await engine.detach_queue(1)
            queues[0].gate.set()
            await _written(queues[0], 6)
    assert queues[0].written == to_0 + to_1
    assert queues[1].written == []
    assert _counts(engine) == (6, 6, 0)


async def test_serve_writes_each_readers_output_to_its_own_queue_after_app_reads() -> None:
    # Served output lands on queue i % n for reader i (one reader's flows stay
    # on one queue), also once the application has taken batches itself; a
    # batch sent with send_batch goes by flow hash instead.
    queues = [Queue(), Queue()]
    engine = OffloadEngine(queues, grace=DEADLINE)  # type: ignore[arg-type]
    flows = [bytes(ipv4(ports=p.to_bytes(2, "big") + b"\x00\x50")) for p in range(40)]
    hashed_0 = [p for p in flows if flow_hash(p) % 2 == 0]
    with anyio.fail_after(DEADLINE):
        async with engine, anyio.create_task_group() as tg:
            for packet in hashed_0[:2]:
                queues[1].feed([packet])
                assert await engine.receive_batch() == [packet]
            tg.start_soon(engine.serve)
            await anyio.wait_all_tasks_blocked()
            queues[1].feed(hashed_0[2:4])
            await engine.send_batch(hashed_0[4:5])
            # Wherever they went (a wrong queue fails below, not by timing out).
            while len(queues[0].written) + len(queues[1].written) < 3:  # noqa: ASYNC110
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    assert queues[1].written == hashed_0[2:4]
    assert queues[0].written == hashed_0[4:5]
    stats = engine.statistics()
    assert (stats.received, stats.delivered) == (4, 4)


async def test_bad_replies_to_batches_read_before_serve_are_dropped_and_counted() -> None:
    # Batches that waited in the inbound channel go through serve's own loop,
    # not the readers': the same rule holds there (no ValueError out of serve).
    queue = Queue()
    engine = OffloadEngine([queue], grace=DEADLINE)  # type: ignore[list-item]
    with anyio.fail_after(DEADLINE):
        async with engine, anyio.create_task_group() as tg:
            queue.feed([b"early"])
            await anyio.wait_all_tasks_blocked()
            # Any iterable will do, a generator too.
            tg.start_soon(engine.serve, lambda b: (p for p in [b"", b"r:" + b[0], bytes(101)]))
            await _written(queue, 1)
            queue.feed([b"late"])
            await _written(queue, 2)
            tg.cancel_scope.cancel()
    assert queue.written == [b"r:early", b"r:late"]
    assert _counts(engine) == (6, 2, 4)


async def test_a_cancelled_take_takes_nothing_even_when_the_turn_is_free() -> None:
    turn = _Turn()
    with anyio.CancelScope() as scope:
        scope.cancel()
        await turn.take()
    assert scope.cancelled_caught
    assert not turn.held
    await turn.take()
    assert turn.held
