"""WorkerPool: queues in worker processes, supervised; a SIGKILLed worker is survived."""

from __future__ import annotations

import hashlib
import os
import signal
import socket

import pytest
import trio

import trio_tun
from trio_tun.testing import NetNamespace
from trio_tun.workers import WorkerPool

pytestmark = [pytest.mark.kernel]

DEADLINE = 120


def bytes_read(pid: int | None) -> int:
    """What process *pid* has read through read-like system calls so far (/proc/PID/io)."""
    assert pid is not None
    with open(f"/proc/{pid}/io") as io:
        for line in io:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise AssertionError("no rchar in /proc/PID/io")


async def transfer(a_ns: NetNamespace, b_ns: NetNamespace, size: int) -> tuple[str, str]:
    listener = trio.socket.from_stdlib_socket(b_ns.socket(socket.AF_INET, socket.SOCK_STREAM))
    await listener.bind(("10.70.2.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    payload = os.urandom(size)
    got = hashlib.sha256()

    async def serve() -> None:
        conn, _ = await listener.accept()
        with conn:
            while chunk := await conn.recv(1 << 16):
                got.update(chunk)

    with listener:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            client = trio.socket.from_stdlib_socket(a_ns.socket(socket.AF_INET, socket.SOCK_STREAM))
            with client:
                await client.connect(("10.70.2.1", port))
                view = memoryview(payload)
                while view:
                    view = view[await client.send(view[: 1 << 16]) :]
                client.shutdown(socket.SHUT_WR)
    return hashlib.sha256(payload).hexdigest(), got.hexdigest()


@pytest.mark.trio
async def test_sigkilled_worker_is_detected_detached_and_survived(
    two_namespaces: tuple[NetNamespace, NetNamespace],
) -> None:
    a_ns, b_ns = two_namespaces
    with trio.fail_after(DEADLINE):
        async with (
            trio_tun.open_tun("wa", addresses=["10.70.1.1/24"], netns=a_ns.fileno(), queues=2) as a,
            trio_tun.open_tun("wb", addresses=["10.70.2.1/24"], netns=b_ns.fileno(), queues=2) as b,
        ):
            await a.add_route("10.70.2.0/24")
            await b.add_route("10.70.1.0/24")
            assignments = [(a.queues[i], b.queues[i]) for i in range(2)]
            async with WorkerPool("trio_tun.workers:forward_pair", assignments) as pool:
                # One TCP flow: the kernel steers it to one queue, so one
                # worker reads it all from device A.
                before = [bytes_read(pool.pid(i)) for i in range(2)]
                sent, got = await transfer(a_ns, b_ns, 4 * 1024 * 1024)
                assert sent == got
                read = [bytes_read(pool.pid(i)) - before[i] for i in range(2)]
                assert max(read) >= 4 * 1024 * 1024, read
                victim = pool.pid(0)
                assert victim is not None
                os.kill(victim, signal.SIGKILL)
                failure = await pool.failures()
                assert failure.index == 0
                assert failure.returncode == -signal.SIGKILL
                assert set(failure.detached) == {a.queues[0], b.queues[0]}
                assert not a.queues[0].queue_attached and not b.queues[0].queue_attached
                # The device is still up and the surviving worker carries the
                # flows the kernel now steers to queue 1.
                assert await a.is_up() and await b.is_up()
                survivor = bytes_read(pool.pid(1))
                sent, got = await transfer(a_ns, b_ns, 8 * 1024 * 1024)
                assert sent == got
                # Every byte of it crossed the surviving worker.
                assert bytes_read(pool.pid(1)) - survivor >= 8 * 1024 * 1024
                # The application decides to restart it; both queues come back.
                await pool.restart(0)
                assert a.queues[0].queue_attached and pool.pid(0) is not None
                sent, got = await transfer(a_ns, b_ns, 4 * 1024 * 1024)
                assert sent == got
            # Leaving the pool stopped the workers gracefully (no failure left).
            assert pool.pid(0) is None and pool.pid(1) is None
    assert a_ns.links() == ["lo"] and b_ns.links() == ["lo"]


def test_bad_target_rejected() -> None:
    with pytest.raises(ValueError, match="module:function"):
        WorkerPool("no_colon", [[object()]])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="at least one"):
        WorkerPool("a:b", [[]])
