"""ThreadedForwarder: a forwarder's lanes in OS threads, off the event loop's core.

One Python process runs one event loop on one core, and a TUN forwarder spends
most of its time in the kernel: two thirds of it inside ``read``/``write``,
where a write into a TUN device runs the receiving side's whole TCP stack.
Those system calls release the GIL, so two threads can be in the kernel at
once while only one runs Python.  :class:`ThreadedForwarder` runs the lanes
(one source stream, one destination stream each) in worker threads, the two
lanes between a pair of devices with offload in one thread:

::

    per thread:  poll(sources, stop pipe) -> for each ready source, up to
                 16 times while it has more:
                 src's batch -> transform(batch) -> dst's batch written
                 (the streams' own receive_batch/send_batch code, driven
                 synchronously; waits are blocking polls that also watch
                 a stop pipe)

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

import contextlib
import inspect
import math
import os
from array import array
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Final, TypeVar

import anyio
import anyio.to_thread
import attrs

from ._errors import DROP_ERRNOS
from ._framing import Buffer, fitting
from ._ports import (
    FRAMES_EOF,
    PAIR_ROUNDS,
    PUMP_BATCH,
    PUMP_DROPPED,
    PUMP_FIELDS,
    PUMP_READ_BYTES,
    PUMP_READS,
    PUMP_STOP,
    PUMP_WRITE_BYTES,
    PUMP_WRITES,
    FdPort,
    pump_frames,
    pump_pair,
)
from ._stream import PacketStream
from ._wait import Stopped, StopSignal, blocking_backend, readable_poller
from .offload import batch_sizes

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
    """Counters of a :class:`ThreadedForwarder`, summed over its lanes.

    A raw forwarder (``raw=True``) counts frames: one per read, a whole
    super-packet with its virtio header when offload is on.
    """

    #: Packets the lanes read.
    received: int
    #: Packets the lanes set out to write (what *transform* returned; for raw
    #: lanes every frame read).
    accepted: int
    #: Of those, packets the kernel took.
    written: int
    #: Of those, packets refused, too long for the destination (raw lanes), or
    #: not written when the grace period ran out.
    dropped: int
    #: Accepted packets not yet written nor dropped (0 once ``run`` returned).
    in_flight: int


@attrs.define(eq=False)
class _Lane:
    src: PacketStream
    dst: PacketStream
    #: Made by each run (two pipes), closed when it ends.
    stop: StopSignal | None = None
    done: anyio.Event = attrs.field(factory=anyio.Event)
    received: int = 0
    accepted: int = 0
    written: int = 0
    dropped: int = 0
    #: The stop flag, read by the lane's thread before each batch or frame, and
    #: (raw lanes) the frame pump's live counters (``_ports.PUMP_*``).
    pump: array[int] = attrs.field(factory=lambda: array("Q", bytes(8 * PUMP_FIELDS)))

    def counts(self) -> tuple[int, int, int, int]:
        """(received, accepted, written, dropped), the pump's frames included."""
        pump = self.pump
        frames = pump[PUMP_READS]
        return (
            self.received + frames,
            self.accepted + frames,
            self.written + pump[PUMP_WRITES],
            self.dropped + pump[PUMP_DROPPED],
        )


class ThreadedForwarder:
    """Forward packets along *lanes*, ``(src, dst)`` pairs, in worker threads.

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
        raw: Pass frames through unparsed (``receive_raw``/``send_raw``
            semantics): each read is written as it came, virtio header and
            super-packet included, by a compiled loop that holds no GIL
            between frames and reads a run of them (up to 64 packets, or a
            few super-packets) before writing it.  With offload, the two
            lanes between a pair of devices, ``(a, b)`` and ``(b, a)``,
            share one thread.  For passthrough between
            devices of the same framing (both with offload, or both
            without); no *transform*.  A frame longer than the destination
            takes is dropped and counted.  This is the fastest way to
            forward, with or without offload.
        pair_lanes: With offload, the two lanes between a pair of devices
            share one thread (``True``, the default), which polls both sources
            and gives a source that keeps delivering up to 16 batches in a
            row: with a transform this moved 0.90-0.93x the C passthrough
            with one flow where a thread per lane moved 0.59-0.76x, the
            threads losing time handing the GIL back and forth; with four
            flows it was ahead too in the rounds that compared them, at less
            CPU.  ``False`` gives every lane its own thread.
        grace: Seconds a lane may take, after cancellation, to finish writing
            the batch it has in hand.
    """

    def __init__(
        self,
        lanes: Sequence[tuple[PacketStream, PacketStream]],
        *,
        transform: Transform | None = None,
        raw: bool = False,
        grace: float = DEFAULT_GRACE,
        pair_lanes: bool = True,
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
        if raw:
            if transform is not None:
                raise ValueError("a raw forwarder passes frames unchanged: it takes no transform")
            for src, dst in lanes:
                _check_raw_lane(src, dst)
        sources = [src for src, _ in lanes]
        destinations = [dst for _, dst in lanes]
        if len(set(map(id, sources))) != len(sources) or len(set(map(id, destinations))) != len(
            destinations
        ):
            raise ValueError("a stream can be the source (or destination) of one lane only")
        self._lanes = [_Lane(src, dst) for src, dst in lanes]
        self._threads = _thread_groups(self._lanes, pair_lanes)
        self._transform = transform
        self._raw = raw
        self._grace = grace
        self._running = False

    def statistics(self) -> ForwarderStatistics:
        """A snapshot of the counters, summed over the lanes."""
        # Column sums over the lanes: (received, accepted, written, dropped).
        received, accepted, written, dropped = (
            sum(column) for column in zip(*(lane.counts() for lane in self._lanes), strict=True)
        )
        return ForwarderStatistics(
            received=received,
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
                lane.pump[PUMP_STOP] = 0
            async with anyio.create_task_group() as task_group:
                for group in self._threads:
                    task_group.start_soon(self._run_thread, group)
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
            lane.pump[PUMP_STOP] = 1
        for signal in signals:
            signal.stop_reading()
        # The threads finish the batch in hand; past the grace period they are
        # told to give up writing too (what is unwritten is counted).
        with anyio.move_on_after(self._grace):
            for lane in self._lanes:
                await lane.done.wait()
        for signal in signals:
            signal.stop_writing()

    async def _run_thread(self, group: tuple[_Lane, ...]) -> None:
        # Not abandoned on cancellation: run() stops the thread and this waits
        # for it, so no thread outlives the forwarder.
        with anyio.CancelScope(shield=True):
            try:
                await anyio.to_thread.run_sync(self._thread_main, group)
            finally:
                for lane in group:
                    lane.done.set()

    def _thread_main(self, group: tuple[_Lane, ...]) -> None:
        if not self._raw:
            self._transform_loop(group)
        elif len(group) == 2:
            self._pump_pair(*group)
        else:
            assert group[0].stop is not None
            self._pump_lane(group[0], group[0].stop)

    def _transform_loop(self, group: tuple[_Lane, ...]) -> None:
        """Forward batches along *group*'s lanes, one ``poll`` over their sources."""
        stop = group[0].stop
        assert stop is not None
        backend = blocking_backend(stop)
        lanes = {lane.src.fileno(): lane for lane in group}
        poller = readable_poller([*lanes, stop.reading_r])
        with contextlib.ExitStack() as held:
            # Held for the whole run, as a raw pump holds them: another task's
            # receive or send on these directions is a BusyResourceError.
            for lane in group:
                held.enter_context(lane.src._receive_guard)
                held.enter_context(lane.dst._send_guard)
            for lane in group:
                # In a two-way forwarder a stream is one lane's source and the
                # other's destination: each direction gets the blocking waits.
                lane.src._use_backend(backend, receiving=True)
                held.callback(lane.src._use_backend, None, receiving=True)
                lane.dst._use_backend(backend, receiving=False)
                held.callback(lane.dst._use_backend, None, receiving=False)
            while True:
                # Every round polls the stop pipe too, so a source that is
                # always readable still sees the stop between batches.
                for fd, _ in poller.poll():
                    ready = lanes.get(fd)
                    if ready is None:
                        return
                    # A lane that keeps moving gets up to PAIR_ROUNDS batches
                    # before the other's turn, as in the raw pair pump: the
                    # receiver's ACKs then wait and go back in runs, which
                    # cost the sender's TCP stack (run inside our writes)
                    # fewer wake-ups.  With four flows that took the ACKs
                    # from 0.80 to 0.61 per super-packet, and throughput up
                    # by a fifth to a third in interleaved rounds.  The stop
                    # flag is checked between batches, so a stop still ends
                    # reading at once.
                    stop_flag = ready.pump
                    try:
                        for _ in range(PAIR_ROUNDS):
                            if stop_flag[PUMP_STOP]:
                                return
                            if not self._forward_ready(ready):
                                break
                    except Stopped:
                        return

    def _forward_ready(self, lane: _Lane) -> bool:
        """Read what *lane*'s source has queued, transform it, write it whole.

        False if the source had nothing queued.
        """
        src, dst = lane.src, lane.dst
        batch = src._receive_ready()
        if not batch:
            return False
        lane.received += len(batch)
        out: list[Buffer] = list(batch if self._transform is None else self._transform(batch))
        if not out:
            return True
        lane.accepted += len(out)
        smallest, largest, _ = batch_sizes(out)
        if smallest == 0 or largest > dst.max_packet:
            # What no device could take (the transform's bug, or a source with
            # larger packets than the destination's): dropped and counted.
            good = fitting(out, dst.max_packet)
            lane.dropped += len(out) - len(good)
            out = good
        counters = dst._counters
        before = counters.tx_packets
        try:
            drive(dst._send_checked(out))
        finally:
            written = counters.tx_packets - before
            lane.written += written
            lane.dropped += len(out) - written
        return True

    def _pump_lane(self, lane: _Lane, stop: StopSignal) -> None:
        src, dst = lane.src, lane.dst
        src_port, dst_port = src._port, dst._port
        assert isinstance(src_port, FdPort) and isinstance(dst_port, FdPort)
        size, limit = len(src._read_buffer), len(dst._read_buffer)
        pump = lane.pump
        # Held for the whole run: another task's receive() or send() on these
        # directions is a BusyResourceError, as with any other user.
        with src._receive_guard, dst._send_guard:
            while True:
                before = pump.tolist()
                try:
                    status, writing = pump_frames(
                        src_port._open_fd(),
                        dst_port._open_fd(),
                        size,
                        limit,
                        stop.reading_r,
                        stop.writing_r,
                        pump,
                        PUMP_BATCH,
                    )
                finally:
                    _count_pumped(src, dst, before, pump)
                if status == 0:
                    return
                _pump_failed(status, writing, src_port, dst_port)

    def _pump_pair(self, ab: _Lane, ba: _Lane) -> None:
        # Both directions between two devices in this thread (see _thread_groups).
        a, b = ab.src, ab.dst
        a_port, b_port = a._port, b._port
        assert isinstance(a_port, FdPort) and isinstance(b_port, FdPort)
        assert ab.stop is not None
        stop = ab.stop
        size = max(len(a._read_buffer), len(b._read_buffer))
        lanes = ((ab, a_port, b_port), (ba, b_port, a_port))
        with a._receive_guard, b._send_guard, b._receive_guard, a._send_guard:
            while True:
                before = (ab.pump.tolist(), ba.pump.tolist())
                try:
                    index, status, writing = pump_pair(
                        a_port._open_fd(),
                        b_port._open_fd(),
                        size,
                        len(b._read_buffer),
                        len(a._read_buffer),
                        stop.reading_r,
                        stop.writing_r,
                        ab.pump,
                        ba.pump,
                        PUMP_BATCH,
                    )
                finally:
                    _count_pumped(a, b, before[0], ab.pump)
                    _count_pumped(b, a, before[1], ba.pump)
                if status == 0:
                    return
                _, src_port, dst_port = lanes[index]
                _pump_failed(status, writing, src_port, dst_port)


def _pump_failed(status: int, writing: bool, src_port: FdPort, dst_port: FdPort) -> None:
    """Act on a pump's failure: a refused frame is counted and the pump goes on
    (this returns); anything else ends the lane with the stream's error."""
    if writing and status in DROP_ERRNOS:
        # Refused like send_raw's frames (not IP, device down): counted.
        dst_port.refused_errno = status
        return
    if status == FRAMES_EOF:
        raise anyio.EndOfStream
    port, doing = (dst_port, "writing") if writing else (src_port, "reading")
    raise port._error(OSError(status, os.strerror(status)), doing)


def _thread_groups(lanes: list[_Lane], pair: bool) -> list[tuple[_Lane, ...]]:
    """The lanes each thread runs: one each, or (with *pair*) the two lanes between
    the same two devices with offload, raw or with a transform.

    With offload, one thread serving both directions of a device pair (the C
    forwarder's loop) is enough: in C, two threads moved 0.89x and 0.95x
    what one loop moved with one and four flows; the pair pump moves 1.00x
    the C loop with one flow and 0.99-1.02x with four (the two-thread pump
    0.96x and 1.01-1.04x), at a thread's less CPU; a thread in ``poll`` on
    both fds wakes once where two threads wake twice.  Without
    offload the kernel's work per packet fills a core, and two threads move
    1.4x what one does, so those lanes keep a thread each.
    """
    groups: list[tuple[_Lane, ...]] = []
    paired: set[int] = set()
    for i, lane in enumerate(lanes):
        if i in paired:
            continue
        partner = None
        if pair and lane.src.vnet_hdr:
            partner = next(
                (
                    j
                    for j in range(i + 1, len(lanes))
                    if j not in paired and lanes[j].src is lane.dst and lanes[j].dst is lane.src
                ),
                None,
            )
        if partner is None:
            groups.append((lane,))
        else:
            paired.add(partner)
            groups.append((lane, lanes[partner]))
    return groups


def _check_raw_lane(src: PacketStream, dst: PacketStream) -> None:
    if not (isinstance(src._port, FdPort) and isinstance(dst._port, FdPort)):
        raise ValueError("a raw forwarder needs streams with file descriptors")
    if (
        type(src._framing) is not type(dst._framing)
        or src._framing.header_len != dst._framing.header_len
        or src._packet_info != dst._packet_info
        or src._layer is not dst._layer
    ):
        raise ValueError(
            f"a raw lane passes frames unchanged, so {src!r} and {dst!r} need the same "
            "framing (both with offload or both without, the same packet_info, TUN to TUN "
            "or TAP to TAP)"
        )


def _count_pumped(
    src: PacketStream, dst: PacketStream, before: list[int], pump: array[int]
) -> None:
    """Add what the pump moved since *before* to the streams' own counters."""
    reads = pump[PUMP_READS] - before[PUMP_READS]
    read_bytes = pump[PUMP_READ_BYTES] - before[PUMP_READ_BYTES]
    writes = pump[PUMP_WRITES] - before[PUMP_WRITES]
    write_bytes = pump[PUMP_WRITE_BYTES] - before[PUMP_WRITE_BYTES]
    # As receive_raw and send_raw count a frame: header included.
    rx, tx = src._counters, dst._counters
    rx.reads += reads
    rx.read_bytes += read_bytes
    rx.rx_packets += reads
    rx.rx_bytes += read_bytes
    tx.writes += writes
    tx.write_bytes += write_bytes
    tx.tx_packets += writes
    tx.tx_bytes += write_bytes
    tx.tx_dropped += pump[PUMP_DROPPED] - before[PUMP_DROPPED]
