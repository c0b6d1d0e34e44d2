"""OffloadEngine bookkeeping, driven step by step through a gated fake queue.

Each test holds the fake's writes or reads at a gate, starts a shutdown or a
detach at a known moment, then opens the gate (or not), and checks the
engine's counters and the order of events directly: no timing decides an
outcome.
"""

from __future__ import annotations

import struct

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fake_queue import FakeQueue
from trio_tun.engine import OffloadEngine, flow_hash

pytestmark = pytest.mark.anyio

DEADLINE = 30


def packets(count: int, flow: int = 0) -> list[bytes]:
    return [b"\x45" + struct.pack("!HI", flow, n) for n in range(count)]


def GatedQueue() -> FakeQueue:
    return FakeQueue(gate_open=False)


def identity_holds(engine: OffloadEngine) -> None:
    stats = engine.statistics()
    assert stats.in_flight == 0, stats
    assert stats.accepted == stats.written + stats.dropped, stats
    assert stats.received == stats.delivered + stats.rx_dropped, stats


async def test_the_grace_period_lets_a_blocked_write_finish() -> None:
    queue = GatedQueue()
    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            engine = OffloadEngine([queue], grace=DEADLINE)  # type: ignore[list-item]
            async with engine:
                await engine.send_batch(packets(10))
                await queue.writing.wait()
                tg.start_soon(engine.aclose)
                await anyio.wait_all_tasks_blocked()
                # Shutdown has begun and is waiting for the writer ...
                assert engine.statistics().written == 0
                queue.open_gate()
    # ... which finished its write inside the grace period.
    identity_holds(engine)
    assert (engine.statistics().written, engine.statistics().dropped) == (10, 0)


async def test_leftovers_when_the_grace_period_ends_are_dropped() -> None:
    queue = GatedQueue()
    engine = OffloadEngine([queue], grace=0.05)  # type: ignore[list-item]
    with anyio.fail_after(DEADLINE):
        async with engine:
            await engine.send_batch(packets(10))
            await queue.writing.wait()
            # Two more batches wait in the writer's channel behind the blocked write.
            await engine.send_batch(packets(7))
            await engine.send_batch(packets(5))
    # The gate never opened: the write in progress and both queued batches
    # are dropped, each packet exactly once.
    identity_holds(engine)
    stats = engine.statistics()
    assert (stats.accepted, stats.written, stats.dropped) == (22, 0, 22)


async def test_a_batch_a_reader_could_not_hand_over_is_rx_dropped() -> None:
    queue = GatedQueue()
    engine = OffloadEngine([queue], channel_batches=1)  # type: ignore[list-item]
    with anyio.fail_after(DEADLINE):
        async with engine:
            queue.feed(packets(4))  # fills the one-batch channel
            queue.feed(packets(6))  # held by the reader, which cannot hand it over
            queue.feed(packets(9))  # never read
            await anyio.wait_all_tasks_blocked()
            assert engine.statistics().received == 10
    stats = engine.statistics()
    identity_holds(engine)
    # Both batches read were never delivered to anyone: counted, not lost.
    assert (stats.received, stats.delivered, stats.rx_dropped) == (10, 0, 10)
    assert queue.inbox == [packets(9)]


async def test_detach_waits_for_the_writer_before_telling_the_kernel() -> None:
    queues = [GatedQueue(), GatedQueue()]
    engine = OffloadEngine(queues)  # type: ignore[arg-type]
    # A TCP flow the engine sends to queue 1.
    sport = next(p for p in range(1000, 2000) if flow_hash(tcp4(0, 0, b"", p)) % 2 == 1)
    with anyio.fail_after(DEADLINE):
        async with engine, anyio.create_task_group() as tg:
            await engine.send_batch([tcp4(n, 0, b"x", sport) for n in range(8)])
            await queues[1].writing.wait()
            # A second batch waits in the writer's channel behind the first.
            await engine.send_batch([tcp4(n, 0, b"x", sport) for n in range(8, 11)])
            tg.start_soon(engine.detach_queue, 1)
            await anyio.wait_all_tasks_blocked()
            # The write is still in progress: the kernel must not hear yet.
            assert "detached" not in queues[1].log
            queues[1].open_gate()
            queues[0].open_gate()
    # Everything accepted for queue 1 was written before the kernel was told.
    assert queues[1].log == ["wrote 8", "wrote 3", "detached"]
    identity_holds(engine)


def tcp4(seq: int, ack: int, payload: bytes, sport: int = 1234) -> bytes:
    header = bytearray(20)
    header[0], header[9] = 0x45, 6
    header[12:20] = bytes([10, 0, 0, 1, 10, 0, 0, 2])
    tcp = struct.pack("!HHII", sport, 80, seq, ack) + bytes(8)
    return bytes(header) + tcp + payload


def tcp6(seq: int, ack: int, payload: bytes, sport: int = 1234) -> bytes:
    header = bytearray(40)
    header[0], header[6] = 0x60, 6
    header[8:24] = bytes(15) + b"\x01"
    header[24:40] = bytes(15) + b"\x02"
    tcp = struct.pack("!HHII", sport, 80, seq, ack) + bytes(8)
    return bytes(header) + tcp + payload


@settings(max_examples=200)
@given(
    seq=st.integers(0, 2**32 - 1),
    ack=st.integers(0, 2**32 - 1),
    payload=st.binary(max_size=64),
    make=st.sampled_from([tcp4, tcp6]),
)
def test_flow_hash_ignores_sequence_numbers_and_payload(
    seq: int, ack: int, payload: bytes, make: object
) -> None:
    assert callable(make)
    # Every packet of one TCP flow lands on one writer, whatever its sequence
    # number: a hash covering it would scatter the flow and reorder it.
    assert flow_hash(make(seq, ack, payload)) == flow_hash(make(0, 0, b""))


@given(sport=st.integers(0, 65535).filter(lambda p: p != 1234), make=st.sampled_from([tcp4, tcp6]))
def test_flow_hash_tells_ports_apart(sport: int, make: object) -> None:
    assert callable(make)
    assert flow_hash(make(0, 0, b"", sport)) != flow_hash(make(0, 0, b""))
