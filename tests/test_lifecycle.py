"""Leaving ``open_tun`` by any path releases everything; persist, netns= and multi-queue."""

from __future__ import annotations

import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

import trio_tun
from packets_util import (
    disable_ipv6_by_default,
    is_udp_to,
    kernel_addresses,
    kernel_delete_link,
    kernel_link,
    kernel_links,
    parse,
    receive_matching,
    recv_datagram,
    tun_fd_count,
    udp4,
)
from trio_tun.testing import NetNamespace, fd_count

pytestmark = [pytest.mark.kernel, pytest.mark.anyio]


class Boom(Exception):
    pass


@asynccontextmanager
async def no_leaks(netns: NetNamespace) -> AsyncIterator[None]:
    """Assert the body leaves the fd count, the TUN fds and the link list as it found them."""
    # A warm-up cycle first, so lazily created things (worker threads, imports)
    # are not mistaken for leaks.
    async with trio_tun.open_tun(addresses=["10.99.0.1/24"], offload=False):
        pass
    links = await kernel_links(netns)
    fds = fd_count()
    tun_fds = tun_fd_count()
    yield
    assert tun_fd_count() == tun_fds
    assert fd_count() == fds
    assert await kernel_links(netns) == links


async def _use(dev: trio_tun.TunStream, netns: NetNamespace) -> str:
    name = dev.name
    assert name in await kernel_links(netns)
    assert tun_fd_count() == 1
    return name


async def test_normal_exit(netns: NetNamespace) -> None:
    async with no_leaks(netns):
        async with trio_tun.open_tun(addresses=["10.8.0.1/24"], offload=False) as dev:
            await _use(dev, netns)
        assert dev.closed


async def test_exit_by_exception(netns: NetNamespace) -> None:
    async with no_leaks(netns):
        with pytest.raises(Boom):
            async with trio_tun.open_tun(addresses=["10.8.0.1/24"], offload=False) as dev:
                await _use(dev, netns)
                raise Boom
        assert dev.closed


async def test_exit_by_cancellation(netns: NetNamespace) -> None:
    async with no_leaks(netns):
        with anyio.CancelScope() as scope:
            async with trio_tun.open_tun(addresses=["10.8.0.1/24"], offload=False) as dev:
                await _use(dev, netns)
                scope.cancel()
                await anyio.sleep_forever()
        assert scope.cancelled_caught
        assert dev.closed


async def test_exit_by_cancellation_while_receiving(netns: NetNamespace) -> None:
    disable_ipv6_by_default()
    async with no_leaks(netns):
        with anyio.move_on_after(0.5) as scope:
            async with trio_tun.open_tun(addresses=["10.8.0.1/24"], offload=False) as dev:
                await _use(dev, netns)
                await dev.receive()  # nothing will come
        assert scope.cancelled_caught
        assert dev.closed


async def test_exit_by_keyboard_interrupt(netns: NetNamespace) -> None:
    async with no_leaks(netns):
        with pytest.raises(KeyboardInterrupt):
            async with trio_tun.open_tun(addresses=["10.8.0.1/24"], offload=False) as dev:
                await _use(dev, netns)
                raise KeyboardInterrupt
        assert dev.closed


async def test_cancelled_while_opening(netns: NetNamespace) -> None:
    """Cancellation landing anywhere inside open_tun leaves nothing behind."""
    async with no_leaks(netns):
        for delay in (0, 0, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02):
            with anyio.move_on_after(delay):
                async with trio_tun.open_tun(
                    addresses=["10.8.0.1/24", "fd00:8::1/64"], mtu=1400, offload=False
                ):
                    await anyio.sleep_forever()
            assert tun_fd_count() == 0


async def test_many_open_close_cycles(netns: NetNamespace) -> None:
    async with no_leaks(netns):
        with anyio.fail_after(120):
            for i in range(200):
                async with trio_tun.open_tun(
                    addresses=[f"10.{i % 200}.0.1/24"], offload=False
                ) as dev:
                    assert dev.index > 0
            assert tun_fd_count() == 0


# -- persist --------------------------------------------------------------------


async def test_persist_keeps_the_device(netns: NetNamespace) -> None:
    async with no_leaks(netns):
        async with trio_tun.open_tun("keep%d", persist=True, offload=False) as dev:
            assert dev.name == "keep0"
        # Our fd is gone, the device is not.
        assert tun_fd_count() == 0
        assert "keep0" in await kernel_links(netns)
        await kernel_delete_link(netns, "keep0")
        assert "keep0" not in await kernel_links(netns)

        # Attaching to a persistent device without persist=True releases it on exit.
        async with trio_tun.open_tun("keep0", persist=True, offload=False):
            pass
        assert "keep0" in await kernel_links(netns)
        async with trio_tun.open_tun("keep0", addresses=["10.8.0.1/24"], offload=False) as dev:
            assert dev.name == "keep0"
            assert "10.8.0.1/24" in await kernel_addresses(netns, dev.index)
        assert "keep0" not in await kernel_links(netns)


# -- netns= -------------------------------------------------------------------


async def test_device_moved_to_named_namespace(netns: NetNamespace) -> None:
    other = NetNamespace.create(f"trio-tun-test-{secrets.token_hex(4)}")
    try:
        async with no_leaks(netns):
            async with trio_tun.open_tun(
                "moved%d", netns=other.name, addresses=["10.30.0.1/24"], offload=False
            ) as dev:
                assert dev.name == "moved0"
                assert "moved0" in await kernel_links(other)
                assert "moved0" not in await kernel_links(netns)
                assert (await kernel_link(other, dev.index))["name"] == "moved0"
                assert "10.30.0.1/24" in await kernel_addresses(other, dev.index)
                assert dev.mtu == (await kernel_link(other, dev.index))["mtu"]
                await dev.add_address("10.31.0.1/24")
                assert "10.31.0.1/24" in await kernel_addresses(other, dev.index)

                # Packets still flow through our fd, to and from the other namespace.
                with other.socket() as sock:
                    sock.setblocking(False)
                    sock.bind(("10.30.0.1", 7300))
                    sock.sendto(b"from the other side", ("10.30.0.2", 7301))
                    packet = await receive_matching(dev, lambda p: is_udp_to(p, "10.30.0.2", 7301))
                    p = parse(packet)
                    assert p is not None
                    assert p.udp_payload == b"from the other side"
                    assert p.l4_checksum_ok

                    await dev.send(udp4("10.30.0.2", "10.30.0.1", 7301, 7300, b"and back"))
                    assert await recv_datagram(sock) == (b"and back", ("10.30.0.2", 7301))
            assert await kernel_links(other) == ["lo"]
    finally:
        other.close()


async def test_device_moved_to_namespace_fd(netns: NetNamespace) -> None:
    with NetNamespace.create() as other:
        async with trio_tun.open_tun(netns=other.fileno(), offload=False) as dev:
            assert dev.name in await kernel_links(other)
            assert await kernel_links(netns) == ["lo"]
        assert await kernel_links(other) == ["lo"]


# -- multi-queue --------------------------------------------------------------


async def test_multi_queue(netns: NetNamespace) -> None:
    disable_ipv6_by_default()
    count = 32
    async with no_leaks(netns):
        async with trio_tun.open_tun(
            "mq%d", queues=2, addresses=["10.8.0.1/24"], offload=False
        ) as dev:
            queues = dev.queues
            assert len(queues) == 2
            assert queues[0] is dev
            assert queues[0].fileno() != queues[1].fileno()
            assert tun_fd_count() == 2
            assert queues[1].name == "mq0"

            # Both queues carry traffic: flows are spread over them by hash,
            # and every datagram comes out of exactly one queue.
            got: list[bytes] = []
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                for i in range(count):
                    sock.sendto(b"flow %d" % i, ("10.8.0.2", 8000 + i))

            async def drain(queue: trio_tun.PacketStream) -> None:
                for _ in range(count):
                    got.append(await queue.receive())
                    if len(got) == count:
                        tg.cancel_scope.cancel()

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    for queue in queues:
                        tg.start_soon(drain, queue)
            payloads = sorted(p.udp_payload for p in map(parse, got) if p is not None)
            assert payloads == sorted(b"flow %d" % i for i in range(count))
            per_queue = [q.statistics().rx_packets for q in queues]
            assert sum(per_queue) == count
            # 32 flows all hashed onto one queue: a 1 in 2**31 chance.
            assert min(per_queue) > 0, per_queue

            # A packet written on the second queue reaches a socket.
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
                sink.setblocking(False)
                sink.bind(("10.8.0.1", 7400))
                await queues[1].send(udp4("10.8.0.2", "10.8.0.1", 7401, 7400, b"via queue 1"))
                assert await recv_datagram(sink) == (b"via queue 1", ("10.8.0.2", 7401))
        assert all(q.closed for q in queues)
        assert "mq0" not in await kernel_links(netns)
