"""Stream semantics on a real device: cancellation, closing, breaking, concurrent misuse.

Most tests use an IPv6-free ("quiet") device so that the only packets on it
are the ones the test sends, and exact counts are meaningful.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import anyio
import pytest
import trio

import trio_tun
from packets_util import (
    disable_ipv6_by_default,
    kernel_delete_link,
    kernel_link,
    kernel_links,
    parse,
    recv_datagram,
    udp4,
    udp_socket,
    wait_queued,
)
from trio_tun import TunStream
from trio_tun.testing import NetNamespace

pytestmark = [pytest.mark.kernel, pytest.mark.anyio]


def _payload(packet: bytes) -> bytes:
    p = parse(packet)
    assert p is not None
    assert p.is_udp
    return p.udp_payload


def _receivers(dev: TunStream) -> list[Callable[[], Awaitable[object]]]:
    return [dev.receive, dev.receive_batch, dev.receive_raw]


# -- cancellation -------------------------------------------------------------


async def test_cancelled_blocked_receive_loses_nothing(netns: NetNamespace) -> None:
    disable_ipv6_by_default()
    async with trio_tun.open_tun(addresses=["10.8.0.1/24"], offload=False) as dev:
        with udp_socket() as sock:
            for round_ in range(3):
                # Nothing is queued: the receive blocks until its deadline cancels it.
                with anyio.move_on_after(0.3) as scope:
                    await dev.receive()
                    pytest.fail("received a packet nobody sent")
                assert scope.cancelled_caught
                # The next packet is delivered to the next receive, exactly.
                sock.sendto(b"after cancel %d" % round_, ("10.8.0.2", 9000))
                with anyio.fail_after(10):
                    packet = await dev.receive()
                assert _payload(packet) == b"after cancel %d" % round_
        assert dev.statistics().rx_packets == 3
        assert dev.statistics().rx_dropped == 0


async def test_receive_in_cancelled_scope_leaves_queued_packet(netns: NetNamespace) -> None:
    disable_ipv6_by_default()
    async with trio_tun.open_tun(addresses=["10.8.0.1/24"], offload=False) as dev:
        with udp_socket() as sock:
            for i, receive in enumerate(_receivers(dev)):
                sock.sendto(b"queued %d" % i, ("10.8.0.2", 9000))
                await wait_queued(dev)
                for _ in range(3):
                    with anyio.CancelScope() as scope:
                        scope.cancel()
                        await receive()
                        pytest.fail(f"{receive.__name__} ignored the cancellation")
                    assert scope.cancelled_caught
                with anyio.fail_after(10):
                    packet = await dev.receive()
                assert _payload(packet) == b"queued %d" % i
        assert dev.statistics().rx_packets == 3


async def test_racing_cancellations_lose_nothing(netns: NetNamespace) -> None:
    """Deadlines expiring around packet arrivals: every packet arrives once, in order."""
    disable_ipv6_by_default()
    count = 60
    rng = random.Random(20240601)
    got: list[bytes] = []
    timeouts = 0

    async def sender(sock_sendto: Callable[[bytes], object]) -> None:
        for i in range(count):
            sock_sendto(b"storm %d" % i)
            await anyio.sleep(rng.uniform(0, 0.004))

    async with trio_tun.open_tun(addresses=["10.8.0.1/24"], offload=False) as dev:
        with udp_socket() as sock, anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(sender, lambda data: sock.sendto(data, ("10.8.0.2", 9001)))
                for _ in range(100 * count):
                    if len(got) == count:
                        break
                    with anyio.move_on_after(rng.uniform(0, 0.003)) as scope:
                        got.append(_payload(await dev.receive()))
                    timeouts += scope.cancelled_caught
    assert got == [b"storm %d" % i for i in range(count)], f"after {timeouts} timeouts"


async def test_cancelled_send_writes_all_or_nothing(netns: NetNamespace) -> None:
    disable_ipv6_by_default()
    count = 30
    async with trio_tun.open_tun(addresses=["10.8.0.1/24"], offload=False) as dev:
        with udp_socket(bind=("10.8.0.1", 7200)) as sock:
            written: list[int] = []
            for i in range(count):
                packet = udp4("10.8.0.2", "10.8.0.1", 2000, 7200, b"send %d " % i * 20)
                with anyio.CancelScope() as scope:
                    if i % 3 == 0:
                        scope.cancel()
                    await dev.send(packet)
                if not scope.cancelled_caught:
                    written.append(i)
            # A cancelled batch writes nothing either.
            with anyio.CancelScope() as scope:
                scope.cancel()
                await dev.send_batch(
                    [udp4("10.8.0.2", "10.8.0.1", 2000, 7200, b"batch %d" % i) for i in range(3)]
                )
            assert scope.cancelled_caught
            assert written == [i for i in range(count) if i % 3]

            # The sentinel goes last: everything written before it has arrived
            # by the time it does (one path, in order).
            await dev.send(udp4("10.8.0.2", "10.8.0.1", 2000, 7200, b"sentinel"))
            arrived = []
            for _ in range(count + 5):
                data, _source = await recv_datagram(sock)
                if data == b"sentinel":
                    break
                arrived.append(data)
            assert arrived == [b"send %d " % i * 20 for i in written]

            stats = dev.statistics()
            assert stats.tx_packets == len(written) + 1
            assert stats.tx_dropped == 0
            kernel = (await kernel_link(netns, dev.index))["stats"]
            assert kernel["rx_packets"] == len(written) + 1


# -- closing, breaking, misuse ------------------------------------------------


def _is_closed_error(exc: BaseException) -> bool:
    return (
        isinstance(exc, trio_tun.ClosedResourceError)
        and isinstance(exc, trio.ClosedResourceError)
        and isinstance(exc, anyio.ClosedResourceError)
    )


async def test_use_after_aclose(netns: NetNamespace) -> None:
    before = await kernel_links(netns)
    async with trio_tun.open_tun(addresses=["10.8.0.1/24"], offload=False) as dev:
        name = dev.name
        assert name in await kernel_links(netns)
        await dev.aclose()
        assert dev.closed
        assert dev.fileno() == -1
        await dev.aclose()  # idempotent
        # Closing the only queue released the device.
        assert name not in await kernel_links(netns)
        packet = udp4("10.8.0.2", "10.8.0.1", 1, 2, b"x")
        for operation in (
            dev.receive,
            dev.receive_batch,
            dev.receive_raw,
            lambda: dev.send(packet),
            lambda: dev.send_batch([packet]),
            lambda: dev.send_raw(packet),
        ):
            with pytest.raises(trio.ClosedResourceError) as trio_info:
                await operation()
            assert _is_closed_error(trio_info.value)
            with pytest.raises(anyio.ClosedResourceError):
                await operation()
    assert await kernel_links(netns) == before


async def test_aclose_wakes_blocked_receiver(netns: NetNamespace) -> None:
    disable_ipv6_by_default()
    errors: list[BaseException] = []

    async def receiver(dev: TunStream) -> None:
        try:
            await dev.receive()
        except anyio.ClosedResourceError as exc:
            errors.append(exc)

    async with trio_tun.open_tun(addresses=["10.8.0.1/24"], offload=False) as dev:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(receiver, dev)
                await anyio.wait_all_tasks_blocked()
                await dev.aclose()
        assert len(errors) == 1
        assert _is_closed_error(errors[0])
    assert await kernel_links(netns) == ["lo"]


async def test_device_deleted_underneath_breaks_stream(netns: NetNamespace) -> None:
    disable_ipv6_by_default()
    errors: list[BaseException] = []

    async def receiver(dev: TunStream) -> None:
        try:
            await dev.receive()
        except trio_tun.BrokenResourceError as exc:
            errors.append(exc)

    async with trio_tun.open_tun("gone%d", addresses=["10.8.0.1/24"], offload=False) as dev:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(receiver, dev)
                await anyio.wait_all_tasks_blocked()
                await kernel_delete_link(netns, dev.name)
        assert len(errors) == 1
        assert isinstance(errors[0], trio.BrokenResourceError)
        assert isinstance(errors[0], anyio.BrokenResourceError)
        assert "gone0" not in await kernel_links(netns)
        with pytest.raises(anyio.BrokenResourceError), anyio.fail_after(10):
            await dev.receive()
        with pytest.raises(anyio.BrokenResourceError), anyio.fail_after(10):
            await dev.send(udp4("10.8.0.2", "10.8.0.1", 1, 2, b"into the void"))
    # Leaving the block after that is clean.
    assert await kernel_links(netns) == ["lo"]


async def test_two_receivers_is_busy(netns: NetNamespace) -> None:
    disable_ipv6_by_default()
    got: list[bytes] = []

    async def receiver(dev: TunStream) -> None:
        got.append(await dev.receive())

    async with trio_tun.open_tun(addresses=["10.8.0.1/24"], offload=False) as dev:
        with udp_socket() as sock, anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(receiver, dev)
                await anyio.wait_all_tasks_blocked()
                for receive in _receivers(dev):
                    with pytest.raises(trio.BusyResourceError) as trio_info:
                        await receive()
                    with pytest.raises(anyio.BusyResourceError) as anyio_info:
                        await receive()
                    for error in (trio_info.value, anyio_info.value):
                        assert isinstance(error, trio_tun.BusyResourceError)
                # The first receiver is unaffected and still gets the packet.
                sock.sendto(b"for the first", ("10.8.0.2", 9002))
            assert [_payload(p) for p in got] == [b"for the first"]
