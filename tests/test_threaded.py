"""ThreadedForwarder: each direction of a TUN <-> TUN forwarder in its own thread."""

from __future__ import annotations

import socket
import threading
import time

import anyio
import pytest
import trio
import trio.lowlevel

from packets_util import udp_flood
from test_engine import SERVER, devices, numbered_udp_flows, tcp_flows
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
    with pytest.raises(ValueError, match="at least one lane"):
        ThreadedForwarder([])


@pytest.mark.trio
async def test_cancelling_under_load_is_bounded_and_leaves_nothing(
    two_namespaces: tuple[NetNamespace, NetNamespace],
) -> None:
    a_ns, b_ns = two_namespaces
    fds = fd_count()
    stop = threading.Event()

    with trio.fail_after(DEADLINE):
        async with devices(a_ns, b_ns, 1) as (a, b):
            forwarder = ThreadedForwarder([(a, b), (b, a)], grace=0.5)
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
