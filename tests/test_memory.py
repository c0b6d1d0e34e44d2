"""memory_tun_pair(): the same packet API in memory, on both backends, no root."""

from __future__ import annotations

import anyio
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_tun import TunAttribute
from trio_tun.testing import memory_tun_pair

pytestmark = pytest.mark.anyio


async def test_packets_cross_in_both_directions() -> None:
    a, b = memory_tun_pair()
    await a.send(b"\x45ping")
    assert await b.receive() == b"\x45ping"
    await b.send_batch([b"\x45one", b"\x45two"])
    assert await a.receive_batch() == [b"\x45one", b"\x45two"]
    assert a.statistics().tx_packets == 1 and a.statistics().rx_packets == 2
    assert b.extra(TunAttribute.name) == "mem1" and b.extra(TunAttribute.mtu) == 1500


async def test_full_queue_drops_and_counts() -> None:
    a, b = memory_tun_pair(capacity=2)
    await a.send_batch([b"1", b"2", b"3"])
    assert a.statistics().tx_dropped == 1
    assert await b.receive_batch(10) == [b"1", b"2"]


async def test_default_batch_stops_after_its_byte_budget() -> None:
    # 32 KiB packets: the budget (not the 64-read cap) ends each batch, with
    # the read that reaches it exactly; nothing is lost or reordered.
    from trio_tun._stream import DEFAULT_BATCH, DEFAULT_BATCH_BYTES

    size = 32 * 1024
    per_batch, rest = divmod(DEFAULT_BATCH_BYTES, size)
    assert rest == 0 and per_batch < DEFAULT_BATCH
    a, b = memory_tun_pair()
    sent = [bytes([0x45, i]) + bytes(size - 2) for i in range(2 * per_batch + 2)]
    await a.send_batch(sent)
    batches: list[list[bytes]] = []
    with anyio.fail_after(10):
        while sum(map(len, batches)) < len(sent):
            batches.append(await b.receive_batch())
    assert [len(batch) for batch in batches] == [per_batch, per_batch, 2]
    assert [packet for batch in batches for packet in batch] == sent
    assert b.statistics().reads == len(sent)


async def test_default_batch_takes_up_to_64_small_reads() -> None:
    from trio_tun._stream import DEFAULT_BATCH

    a, b = memory_tun_pair()
    sent = [bytes([0x45, i]) + bytes(1398) for i in range(DEFAULT_BATCH + 5)]
    await a.send_batch(sent)
    with anyio.fail_after(10):
        first = await b.receive_batch()
        second = await b.receive_batch() if len(first) < len(sent) else []
    assert (len(first), len(second)) == (DEFAULT_BATCH, 5)
    assert first + second == sent


async def test_peer_close_ends_iteration() -> None:
    a, b = memory_tun_pair()
    await a.send(b"last")
    await a.aclose()
    got = [packet async for packet in b]
    assert got == [b"last"]


async def test_closed_and_busy_errors() -> None:
    a, _ = memory_tun_pair()
    await a.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await a.send(b"x")
    with pytest.raises(anyio.ClosedResourceError):
        await a.receive()

    _, b = memory_tun_pair()
    async with anyio.create_task_group() as tg:
        tg.start_soon(b.receive)
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(anyio.BusyResourceError):
            await b.receive()
        with pytest.raises(trio.BusyResourceError):
            await b.receive()
        tg.cancel_scope.cancel()


async def test_limits() -> None:
    a, _ = memory_tun_pair()
    with pytest.raises(ValueError, match="empty"):
        await a.send(b"")
    with pytest.raises(ValueError, match="65535"):
        await a.send(bytes(65536))
    with pytest.raises(ValueError):
        await a.receive_batch(0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=200), max_size=30))
def test_order_preserved(packets: list[bytes]) -> None:
    async def main() -> list[bytes]:
        a, b = memory_tun_pair(capacity=64)
        await a.send_batch(packets)
        await a.aclose()
        return [p async for p in b]

    assert trio.run(main) == packets
