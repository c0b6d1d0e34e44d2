"""ThreadedForwarder: each direction of a forwarder in its own OS thread, for a second core.

One Python process runs one event loop on one core, and a TUN forwarder spends
most of its time in the kernel: two thirds of it inside ``read``/``write``,
where a write into a TUN device runs the receiving side's whole TCP stack.
Those system calls release the GIL, so two threads can be in the kernel at
once while only one runs Python.  :class:`ThreadedForwarder` runs each lane
(one source stream, one destination stream) in a worker thread:

::

    thread per lane:  src.receive_batch() -> transform(batch) -> dst.send_batch()
                      (the streams' own code, driven synchronously; waits are
                      blocking polls that also watch a stop pipe)

The streams are the ordinary :class:`~trio_tun.PacketStream` objects, with
their framing, offload, counters and misuse checks; only their waits change
while a thread drives them (:func:`~trio_tun._wait.blocking_backend`).

Structured concurrency is kept: :meth:`ThreadedForwarder.run` belongs to the
task that awaits it.  When that task is cancelled, every thread stops
reading at once, finishes the batch in hand for at most *grace* seconds, and
is then told to stop writing too; ``run`` returns only when every thread has
ended, and ``accepted == written + dropped`` then holds.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Final, TypeVar

import anyio
import anyio.to_thread
import attrs

from ._framing import Buffer, fitting
from ._stream import PacketStream
from ._wait import Stopped, StopSignal, blocking_backend

#: Default seconds a thread may take to finish its batch in hand once stopped.
DEFAULT_GRACE: Final = 2.0

Transform = Callable[[list[bytes]], Sequence[Buffer]]

_T = TypeVar("_T")


def drive(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine that never suspends (its waits block instead) to its end."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: _T = done.value
        return result
    coroutine.close()
    raise RuntimeError("a stream driven from a thread tried to suspend")


@attrs.frozen
class ForwarderStatistics:
    """Counters of a :class:`ThreadedForwarder`, summed over its lanes."""

    #: Packets the lanes read.
    received: int
    #: Packets the lanes set out to write (what *transform* returned).
    accepted: int
    #: Of those, packets the kernel took.
    written: int
    #: Of those, packets refused, or not written when the grace period ran out.
    dropped: int
    #: Accepted packets not yet written nor dropped (0 once ``run`` returned).
    in_flight: int


@attrs.define(eq=False)
class _Lane:
    src: PacketStream
    dst: PacketStream
    #: Made by each run (two pipes), closed when it ends.
    stop: StopSignal | None = None
    #: Set with the stop signal: a thread that never has to wait (the source
    #: always readable) sees this between batches instead.
    stopping: bool = False
    done: anyio.Event = attrs.field(factory=anyio.Event)
    received: int = 0
    accepted: int = 0
    written: int = 0
    dropped: int = 0


class ThreadedForwarder:
    """Forward packets along *lanes*, each ``(src, dst)`` lane in its own thread.

    For a two-way forwarder between devices A and B, the lanes are ``(a, b)``
    and ``(b, a)`` (and, with several queues, one pair per queue).  Each lane
    reads batches from its source (super-packets split when offload is on, up
    to 64 reads or 512 KiB at a time), passes them through *transform* (default:
    unchanged) and writes the result to its destination (coalesced when
    offload is on).  A stream must belong to one lane and must not be used by
    anything else while :meth:`run` runs (``BusyResourceError`` otherwise).

    Args:
        lanes: ``(source, destination)`` stream pairs; the streams must have
            file descriptors (not memory streams).
        transform: Called in the lane's thread with each batch; it must not
            touch the event loop.  It holds the GIL while it runs, so keep it
            short or use the engine instead.
        grace: Seconds a lane may take, after cancellation, to finish writing
            the batch it has in hand.
    """

    def __init__(
        self,
        lanes: Sequence[tuple[PacketStream, PacketStream]],
        *,
        transform: Transform | None = None,
        grace: float = DEFAULT_GRACE,
    ) -> None:
        if not lanes:
            raise ValueError("a forwarder needs at least one lane")
        if grace < 0 or not math.isfinite(grace):
            raise ValueError(f"grace must be a finite number of seconds >= 0, not {grace!r}")
        if transform is not None and inspect.iscoroutinefunction(transform):
            raise TypeError("transform runs in a thread: it must be a plain function")
        streams = [stream for lane in lanes for stream in lane]
        for stream in streams:
            if stream.fileno() < 0:
                raise ValueError(f"{stream!r} has no file descriptor: it can't run in a thread")
        sources = [src for src, _ in lanes]
        destinations = [dst for _, dst in lanes]
        if len(set(map(id, sources))) != len(sources) or len(set(map(id, destinations))) != len(
            destinations
        ):
            raise ValueError("a stream can be the source (or destination) of one lane only")
        self._lanes = [_Lane(src, dst) for src, dst in lanes]
        self._transform = transform
        self._grace = grace
        self._running = False

    def statistics(self) -> ForwarderStatistics:
        """A snapshot of the counters, summed over the lanes."""
        accepted = sum(lane.accepted for lane in self._lanes)
        written = sum(lane.written for lane in self._lanes)
        dropped = sum(lane.dropped for lane in self._lanes)
        return ForwarderStatistics(
            received=sum(lane.received for lane in self._lanes),
            accepted=accepted,
            written=written,
            dropped=dropped,
            in_flight=accepted - written - dropped,
        )

    async def run(self) -> None:
        """Forward until cancelled; then stop the threads within the grace period."""
        if self._running:
            raise RuntimeError("this forwarder is already running")
        self._running = True
        try:
            for lane in self._lanes:
                lane.done = anyio.Event()
                lane.stop = StopSignal()
                lane.stopping = False
            async with anyio.create_task_group() as task_group:
                for lane in self._lanes:
                    task_group.start_soon(self._run_lane, lane)
                try:
                    await anyio.sleep_forever()
                finally:
                    with anyio.CancelScope(shield=True):
                        await self._stop_lanes()
        finally:
            for lane in self._lanes:
                if lane.stop is not None:
                    lane.stop.close()
                    lane.stop = None
            self._running = False

    async def _stop_lanes(self) -> None:
        signals = [lane.stop for lane in self._lanes if lane.stop is not None]
        for lane in self._lanes:
            lane.stopping = True
        for signal in signals:
            signal.stop_reading()
        # The threads finish the batch in hand; past the grace period they are
        # told to give up writing too (what is unwritten is counted).
        with anyio.move_on_after(self._grace):
            for lane in self._lanes:
                await lane.done.wait()
        for signal in signals:
            signal.stop_writing()

    async def _run_lane(self, lane: _Lane) -> None:
        # Not abandoned on cancellation: run() stops the thread and this waits
        # for it, so no thread outlives the forwarder.
        with anyio.CancelScope(shield=True):
            try:
                await anyio.to_thread.run_sync(self._lane_loop, lane)
            finally:
                lane.done.set()

    def _lane_loop(self, lane: _Lane) -> None:
        assert lane.stop is not None
        backend = blocking_backend(lane.stop)
        src, dst = lane.src, lane.dst
        transform = self._transform
        # Per direction: in a two-way forwarder each stream is also the other
        # lane's destination, driven by that lane's thread at the same time.
        src._use_backend(backend, receiving=True)
        dst._use_backend(backend, receiving=False)
        try:
            while not lane.stopping:
                try:
                    batch = drive(src.receive_batch())
                except Stopped:
                    return
                lane.received += len(batch)
                out = batch if transform is None else list(transform(batch))
                if transform is not None:
                    # What no device could take is the transform's bug: counted.
                    good = fitting(out, dst.max_packet)
                    lane.accepted += len(out) - len(good)
                    lane.dropped += len(out) - len(good)
                    out = good
                if not out:
                    continue
                lane.accepted += len(out)
                before = dst.counters.tx_packets
                try:
                    drive(dst.send_batch(out))
                except Stopped:
                    return
                finally:
                    written = dst.counters.tx_packets - before
                    lane.written += written
                    lane.dropped += len(out) - written
        finally:
            src._use_backend(None, receiving=True)
            dst._use_backend(None, receiving=False)
