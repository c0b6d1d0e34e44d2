"""WorkerPool: queues handed to worker processes, supervised from a nursery.

Python runs one event loop per process, so to use more than one core a
device's queues can be spread over worker processes.  Each worker receives its
queue fds over a Unix socket (``SCM_RIGHTS``), wraps them with
:func:`trio_tun.from_fd` and runs a target function under Trio.  The parent
keeps its own copies of the fds, which is what lets it act when a worker dies:
it detaches the dead worker's queues (``TUNSETQUEUE``), so the kernel stops
steering flows into queues nobody reads, and reports the failure; the
application decides whether to :meth:`WorkerPool.restart` it.

Workers are started with ``sys.executable -m trio_tun.workers``; the target is
named as ``"package.module:function"`` and called as
``await function(streams, *args)``, where ``streams`` are the worker's queues
in the order they were assigned.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Final

import anyio
import anyio.abc
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._config import Layer, OffloadFlags
from ._errors import ClosedResourceError
from ._lifetime import ScopedLifetime
from ._stream import PacketStream

# Queue fds travel to the workers over Unix sockets (SCM_RIGHTS): POSIX only.
# (This also tells mypy to skip the rest of the module for Windows.)
assert sys.platform != "win32", "trio_tun.workers needs Unix-domain fd passing"

#: Seconds a worker gets to finish after SIGTERM before it is killed.
DEFAULT_STOP_GRACE: Final = 5.0
_ENV_SOCKET: Final = "TRIO_TUN_WORKER_FD"


@attrs.frozen
class WorkerFailure:
    """A worker process that ended while the pool was running."""

    #: Which worker (its position in the assignments).
    index: int
    #: Its exit status: negative for a signal (``-9`` for SIGKILL).
    returncode: int
    #: The queues that were detached because of it.
    detached: tuple[PacketStream, ...]


@attrs.define(eq=False)
class _Worker:
    index: int
    streams: tuple[PacketStream, ...]
    process: anyio.abc.Process | None = None
    stopping: bool = False
    exited: anyio.Event = attrs.field(factory=anyio.Event)


def _describe(stream: PacketStream) -> dict[str, Any]:
    offload = stream.offload
    return {
        "layer": stream.layer.value,
        "vnet_hdr": stream.vnet_hdr,
        "packet_info": stream.packet_info,
        "offload": attrs.asdict(offload),
    }


class WorkerPool(ScopedLifetime):
    """Run *target* in one process per assignment, each owning its queues.

    Args:
        target: ``"module:function"``; called in the worker as
            ``await function(streams, *args)`` under ``trio.run``.  On SIGTERM
            the worker cancels it (so it can shut down gracefully) and exits.
        assignments: For each worker, the queue streams it gets, e.g.
            ``[(a.queues[i], b.queues[i]) for i in range(n)]``.
        args: Extra string arguments passed to the target.
        stop_grace: Seconds workers get after SIGTERM before SIGKILL.

    Use it as ``async with WorkerPool(...) as pool:``; failures arrive on
    :meth:`failures`.  Leaving the block stops every worker.
    """

    def __init__(
        self,
        target: str,
        assignments: Sequence[Sequence[PacketStream]],
        *,
        args: Sequence[str] = (),
        stop_grace: float = DEFAULT_STOP_GRACE,
    ) -> None:
        if ":" not in target:
            raise ValueError(f"target must look like 'package.module:function', not {target!r}")
        if not assignments or any(not streams for streams in assignments):
            raise ValueError("every worker needs at least one stream")
        self._target = target
        self._args = [str(a) for a in args]
        self._stop_grace = stop_grace
        self._workers = [_Worker(i, tuple(streams)) for i, streams in enumerate(assignments)]
        self._task_group: anyio.abc.TaskGroup | None = None
        self._closing = False
        self._failures_send: MemoryObjectSendStream[WorkerFailure]
        self._failures_receive: MemoryObjectReceiveStream[WorkerFailure]
        self._failures_send, self._failures_receive = anyio.create_memory_object_stream[
            WorkerFailure
        ](len(self._workers) * 4)

    @contextlib.asynccontextmanager
    async def _lifetime(self) -> AsyncIterator[None]:
        async with anyio.create_task_group() as task_group:
            self._task_group = task_group
            try:
                for worker in self._workers:
                    await self._spawn(worker)
                yield
            finally:
                self._closing = True
                try:
                    with anyio.CancelScope(shield=True):
                        await self._stop_all()
                finally:
                    # A KeyboardInterrupt gets through the shield: kill what is
                    # left so that no worker outlives the pool.
                    for worker in self._workers:
                        if worker.process is not None and worker.process.returncode is None:
                            worker.process.kill()
                    self._failures_send.close()

    @property
    def size(self) -> int:
        return len(self._workers)

    def pid(self, index: int) -> int | None:
        """The worker's process id while it runs."""
        process = self._workers[index].process
        return None if process is None or process.returncode is not None else process.pid

    async def failures(self) -> WorkerFailure:
        """Wait for the next worker that ended unexpectedly."""
        try:
            return await self._failures_receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise ClosedResourceError("the worker pool is closed") from None

    async def restart(self, index: int) -> None:
        """Re-attach a failed worker's queues and start it again."""
        if self._closing:
            raise ClosedResourceError("the worker pool is closed")
        worker = self._workers[index]
        if worker.process is not None and worker.process.returncode is None:
            raise RuntimeError(f"worker {index} is still running")
        for stream in worker.streams:
            if not stream.queue_attached:
                stream.attach_queue()
        await self._spawn(worker)

    async def _spawn(self, worker: _Worker) -> None:
        assert self._task_group is not None
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with parent_end, child_end:
            env = dict(os.environ)
            env[_ENV_SOCKET] = str(child_end.fileno())
            process = await anyio.open_process(
                [sys.executable, "-m", "trio_tun.workers"],
                stdin=None,
                stdout=None,
                stderr=None,
                pass_fds=(child_end.fileno(),),
                env=env,
            )
            worker.process = process
            worker.stopping = False
            worker.exited = anyio.Event()
            header = json.dumps(
                {
                    "target": self._target,
                    "args": self._args,
                    "index": worker.index,
                    "streams": [_describe(s) for s in worker.streams],
                }
            ).encode()
            fds = [s.fileno() for s in worker.streams]
            socket.send_fds(parent_end, [header], fds)
        self._task_group.start_soon(self._supervise, worker, process)

    async def _supervise(self, worker: _Worker, process: anyio.abc.Process) -> None:
        try:
            returncode = await process.wait()
        finally:
            worker.exited.set()
        if worker.stopping or self._closing:
            return
        # Nobody reads these queues any more: take them away from the kernel
        # before flows pile up in them.
        detached = []
        for stream in worker.streams:
            if stream.queue_attached and not stream.closed:
                stream.detach_queue()
                detached.append(stream)
        failure = WorkerFailure(worker.index, returncode, tuple(detached))
        # If nobody is listening, the detach above is what matters.
        with contextlib.suppress(anyio.WouldBlock, anyio.ClosedResourceError):
            self._failures_send.send_nowait(failure)

    async def stop(self, index: int) -> None:
        """Stop one worker gracefully (SIGTERM, then SIGKILL after the grace)."""
        await self._stop(self._workers[index])

    async def _stop(self, worker: _Worker) -> None:
        process = worker.process
        if process is None or process.returncode is not None:
            return
        worker.stopping = True
        process.send_signal(signal.SIGTERM)
        with anyio.move_on_after(self._stop_grace):
            await worker.exited.wait()
            return
        process.kill()
        await worker.exited.wait()

    async def _stop_all(self) -> None:
        async with anyio.create_task_group() as tg:
            for worker in self._workers:
                tg.start_soon(self._stop, worker)


# -- the worker side ------------------------------------------------------------


def _load(target: str) -> Callable[..., Awaitable[Any]]:
    module_name, _, function_name = target.partition(":")
    function: Callable[..., Awaitable[Any]] = getattr(
        importlib.import_module(module_name), function_name
    )
    return function


def _receive_assignment(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    message, fds, _, _ = socket.recv_fds(sock, 1 << 16, 64)
    return json.loads(message), fds


async def _run_target(
    function: Callable[..., Awaitable[Any]], streams: list[PacketStream], args: list[str]
) -> None:
    import trio

    async with trio.open_nursery() as nursery:

        async def on_sigterm() -> None:
            with trio.open_signal_receiver(signal.SIGTERM) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(on_sigterm)
        try:
            await function(streams, *args)
        finally:
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                for stream in streams:
                    await stream.aclose()


def _worker_main() -> int:
    import trio

    from ._open import from_fd

    sock = socket.socket(fileno=int(os.environ.pop(_ENV_SOCKET)))
    with sock:
        assignment, fds = _receive_assignment(sock)
    streams = [
        from_fd(
            fd,
            layer=Layer(spec["layer"]),
            vnet_hdr=spec["vnet_hdr"],
            packet_info=spec["packet_info"],
            offload=OffloadFlags(**spec["offload"]),
        )
        for fd, spec in zip(fds, assignment["streams"], strict=True)
    ]
    function = _load(assignment["target"])
    trio.run(_run_target, function, streams, assignment["args"])
    return 0


async def forward_pair(streams: Sequence[PacketStream], *args: str) -> None:
    """A ready-made worker target: forward between two queues in both directions.

    ``streams`` must be two queues (of two devices); packets are split and
    coalesced with ``receive_batch``/``send_batch``.
    """
    import trio

    a, b = streams

    async def pump(src: PacketStream, dst: PacketStream) -> None:
        while True:
            await dst.send_batch(await src.receive_batch())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump, a, b)
        nursery.start_soon(pump, b, a)


if __name__ == "__main__":
    sys.exit(_worker_main())
