"""OffloadEngine: every queue of a device, read and written in batches, in one nursery.

::

                      ┌──────────── engine task group ─────────────┐
    queue 0 fd ──► reader 0 ──┐                      ┌──► writer 0 ──► queue 0 fd
    queue 1 fd ──► reader 1 ──┼─► inbound channel ─► app ─► send_batch ─► (flow hash)
    queue N fd ──► reader N ──┘   (bounded)               └──► writer N ──► queue N fd
                                                           per-writer channels (bounded)

* Readers do batched reads (super-packets split into segments) and push each
  batch into one bounded inbound channel; when the application falls behind
  they block, the kernel queue fills and the kernel drops: memory stays bounded.
* ``send_batch`` hashes each packet's flow to pick a writer, so the packets of
  one flow keep their order and land in the same GRO batch.  Each writer
  gathers what its channel holds and writes it with ``send_batch`` (coalescing).
* Shutdown (cancelling the scope around ``async with dev.engine()``, or
  ``aclose(grace=...)``): readers stop first; writers, which are shielded from
  outside cancellation, write what the engine had accepted within the grace
  period; then everything stops.  Every packet the engine accepted is either
  written or counted as dropped: ``accepted == written + dropped``.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from functools import partial
from typing import Any, Final, Protocol, cast, runtime_checkable

import anyio
import anyio.abc
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._errors import ClosedResourceError
from ._framing import fitting
from ._lifetime import ScopedLifetime
from ._stats import Statistics
from .offload import batch_sizes

#: Default grace period for writers to flush on shutdown, in seconds.
DEFAULT_GRACE: Final = 2.0
#: Batches the inbound channel and each writer channel hold before backpressure.
DEFAULT_CHANNEL_BATCHES: Final = 32
#: Packets one writer gathers from its channel into a single send_batch.
WRITER_GATHER: Final = 1024

Packet = bytes | bytearray | memoryview


class QueueStream(Protocol):
    """What the engine needs of one queue (a :class:`~trio_tun.PacketStream` is one)."""

    @property
    def max_packet(self) -> int: ...

    async def receive_batch(self, max_packets: int | None = None) -> list[bytes]: ...

    async def send_batch(self, packets: Iterable[Packet]) -> None:
        """Write *packets*; ``ValueError``, with nothing written, if one is empty or over
        :attr:`max_packet` bytes (as :meth:`~trio_tun.PacketStream.send_batch` does)."""

    @property
    def counters(self) -> Statistics: ...

    def statistics(self) -> Statistics: ...

    def detach_queue(self) -> None: ...

    def attach_queue(self) -> None: ...


Handler = Callable[[list[bytes]], "Awaitable[Iterable[Packet] | None] | Iterable[Packet] | None"]


def _forward_unchanged(batch: list[bytes]) -> list[bytes]:
    return batch


def flow_hash(packet: Packet) -> int:
    """A hash of the packet's flow (addresses, protocol, ports) that is stable per flow.

    Malformed or non-IP packets hash on what is there; they only need a
    consistent queue, not a correct one.  (crc32 reads the slices in place:
    this runs once per packet.)
    """
    if not packet:
        return 0
    first = packet[0]
    if first == 0x45 and len(packet) >= 24:
        # IPv4 without options: addresses and ports are contiguous at 12..24.
        return zlib.crc32(packet[12:24], packet[9])
    version = first >> 4
    if version == 4 and len(packet) >= 20:
        ihl = (first & 0x0F) * 4
        return zlib.crc32(packet[ihl : ihl + 4], zlib.crc32(packet[12:20], packet[9]))
    if version == 6 and len(packet) >= 40:
        return zlib.crc32(packet[8:44], packet[6])
    return zlib.crc32(packet[:20])


@attrs.frozen
class EngineStatistics:
    """Counters of one engine; see :meth:`OffloadEngine.statistics`."""

    #: Packets :meth:`~OffloadEngine.send_batch` accepted into a writer channel.
    accepted: int
    #: Of those, packets the kernel took.
    written: int
    #: Of those, packets dropped: refused by the kernel, or still queued when
    #: the grace period ran out.  ``accepted == written + dropped + in_flight``.
    dropped: int
    #: Accepted packets not yet written nor dropped (0 once the engine closed).
    in_flight: int
    #: Packets the readers took from the device.
    received: int
    #: Packets handed to the application.
    delivered: int
    #: Packets read but never handed over because the engine shut down.
    rx_dropped: int
    #: Per-queue stream statistics, in queue order.
    queues: tuple[Statistics, ...]


class _Turn:
    """Mutual exclusion for one queue's send side, free when uncontended.

    On the run-to-completion path every batch takes a turn, and even
    ``anyio.Lock(fast_acquire=True)`` costs a noticeable share of a batch's
    budget; here the uncontended case is one attribute test and set.  Not
    fair (a woken waiter retries), which only matters under contention, and
    contention only comes from mixing ``serve`` with ``send_batch``.
    """

    __slots__ = ("_released", "held")

    def __init__(self) -> None:
        self.held = False
        self._released: anyio.Event | None = None

    def try_take(self) -> bool:
        """Take the turn if it is free, without waiting or yielding."""
        if self.held:
            return False
        self.held = True
        return True

    async def take(self) -> None:
        """Wait until the turn is free and take it (a cancellation takes nothing)."""
        if not self.held:
            await anyio.lowlevel.checkpoint()
        while self.held:
            if self._released is None:
                self._released = anyio.Event()
            await self._released.wait()
        self.held = True

    def release(self) -> None:
        self.held = False
        if self._released is not None:
            self._released.set()
            self._released = None


@attrs.define(eq=False)
class _Queue:
    index: int
    stream: QueueStream
    send: MemoryObjectSendStream[list[Packet]]
    receive: MemoryObjectReceiveStream[list[Packet]]
    enabled: bool = True
    reader_scope: anyio.CancelScope = attrs.field(factory=anyio.CancelScope)
    writer_scope: anyio.CancelScope = attrs.field(factory=lambda: anyio.CancelScope(shield=True))
    writer_done: anyio.Event = attrs.field(factory=anyio.Event)
    reader_done: anyio.Event = attrs.field(factory=anyio.Event)
    # The writer task and run-to-completion readers (of this engine or of one
    # serving into it) take turns at the stream's send side.
    turn: _Turn = attrs.field(factory=_Turn)
    # True while this queue's reader runs a handler and writes its output: the
    # start of shutdown leaves it alone until the write is done (or the grace
    # period runs out) instead of cancelling it halfway.
    delivering: bool = False


class OffloadEngine(ScopedLifetime):
    """Moves packets between all queues of a device and the application.

    Use it as ``async with dev.engine() as engine:``; the engine's tasks live in
    a task group that the ``async with`` block owns.

    Args:
        queues: The queue streams (``dev.queues``).
        grace: Seconds writers get to flush on shutdown.
        channel_batches: Capacity, in batches, of the inbound channel and of each
            writer's channel (the engine's memory bound).
    """

    def __init__(
        self,
        queues: Sequence[QueueStream],
        *,
        grace: float | None = None,
        channel_batches: int | None = None,
    ) -> None:
        grace = DEFAULT_GRACE if grace is None else grace
        channel_batches = DEFAULT_CHANNEL_BATCHES if channel_batches is None else channel_batches
        if not queues:
            raise ValueError("an engine needs at least one queue")
        if grace < 0 or not math.isfinite(grace):
            raise ValueError(f"grace must be a finite number of seconds >= 0, not {grace!r}")
        if channel_batches < 1:
            raise ValueError(f"channel_batches must be at least 1, not {channel_batches}")
        self._grace = grace
        self._channel_batches = channel_batches
        self._queues: list[_Queue] = []
        for index, stream in enumerate(queues):
            send, receive = anyio.create_memory_object_stream[list[Packet]](channel_batches)
            self._queues.append(_Queue(index, stream, send, receive))
        self._inbound_send, self._inbound_receive = anyio.create_memory_object_stream[list[bytes]](
            channel_batches
        )
        self._task_group: anyio.abc.TaskGroup | None = None
        # While serve() runs, readers hand each batch to the handler and
        # write its output themselves (run to completion).
        self._serving = False
        self._handler: Handler = _forward_unchanged
        self._reply_to: OffloadEngine = self
        self._check_replies = False
        # Batches in the inbound channel or on their way into it; a reader
        # serves a batch directly only when none is, so order is kept.
        self._inbound_pending = 0
        self._enabled: list[_Queue] = list(self._queues)
        self._closing = False
        self._closed = False
        self._accepted = 0
        self._written = 0
        self._dropped = 0
        self._received = 0
        self._delivered = 0
        self._rx_dropped = 0

    # -- lifecycle -----------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lifetime(self) -> AsyncIterator[None]:
        async with anyio.create_task_group() as task_group:
            self._task_group = task_group
            for queue in self._queues:
                self._start_queue(queue)
            try:
                yield
            finally:
                # The first cancellation is usually why we are leaving: shield
                # the bounded flush from it.  (A KeyboardInterrupt still gets
                # through; _shutdown stops and counts everything even then, and
                # the task group is left by the ``async with``.)
                with anyio.CancelScope(shield=True):
                    await self._shutdown(self._grace)

    async def aclose(self, grace: float | None = None) -> None:
        """Shut down now: stop reading, let writers flush for *grace* seconds, stop.

        Unlike leaving the ``async with`` block, the flush here is not shielded:
        cancelling the task that called ``aclose`` (a second cancellation) makes
        the engine stop at once, still accounting for every accepted packet.
        """
        await self._shutdown(self._grace if grace is None else grace)

    async def _shutdown(self, grace: float) -> None:
        if self._closing:
            await anyio.lowlevel.checkpoint()
            return
        self._closing = True
        try:
            for queue in self._queues:
                # A reader in the middle of a run-to-completion write finishes
                # it (it stops by itself afterwards); any other stops now.
                if not queue.delivering:
                    queue.reader_scope.cancel()
                queue.send.close()
            with anyio.move_on_after(grace):
                for queue in self._queues:
                    await queue.writer_done.wait()
                    await queue.reader_done.wait()
                # Writes into our queues by an engine serving into this one.
                for queue in self._queues:
                    await queue.turn.take()
                    queue.turn.release()
        finally:
            # Past the grace period (or cancelled): stop writers at once and
            # count what they had not written.
            for queue in self._queues:
                queue.writer_scope.cancel()
                queue.reader_scope.cancel()
            with anyio.CancelScope(shield=True):
                for queue in self._queues:
                    await queue.writer_done.wait()
                    await queue.reader_done.wait()
            # Readers held clones; closing the original lets the application
            # drain what was delivered and then see the end of the stream.
            self._inbound_send.close()
            self._drain_leftovers()
            self._closed = True

    def _drain_leftovers(self) -> None:
        for queue in self._queues:
            while True:
                try:
                    batch = queue.receive.receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                    break
                self._dropped += len(batch)
            queue.receive.close()
        while True:
            try:
                delivered = self._inbound_receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
            self._inbound_pending -= 1
            self._rx_dropped += len(delivered)

    def _start_queue(self, queue: _Queue) -> None:
        assert self._task_group is not None
        # Both shielded: an outside cancellation reaches them only through
        # _shutdown, which decides what may finish within the grace period.
        queue.reader_scope = anyio.CancelScope(shield=True)
        queue.delivering = False
        queue.writer_scope = anyio.CancelScope(shield=True)
        queue.reader_done = anyio.Event()
        queue.writer_done = anyio.Event()
        self._task_group.start_soon(self._reader, queue, self._inbound_send.clone())
        self._task_group.start_soon(self._writer, queue)

    # -- tasks ---------------------------------------------------------

    async def _reader(self, queue: _Queue, inbound: MemoryObjectSendStream[list[bytes]]) -> None:
        batch: list[bytes] = []
        receive_batch = queue.stream.receive_batch
        try:
            with inbound, queue.reader_scope:
                while queue.enabled and not self._closing:
                    batch = await receive_batch()
                    self._received += len(batch)
                    if self._serving and not self._inbound_pending:
                        # Handed to the handler: from here on a stop counts
                        # the handler's output, not the batch.
                        self._delivered += len(batch)
                        served, batch = batch, []
                        queue.delivering = True
                        await self._serve_batch(queue, served)
                        queue.delivering = False
                    else:
                        # Counted until the application takes it out.
                        self._inbound_pending += 1
                        try:
                            await inbound.send(batch)
                        except BaseException:
                            self._inbound_pending -= 1
                            raise
                    batch = []
        finally:
            # A batch read but not handed over (cancelled while the application
            # was not keeping up) is counted, not silently lost.
            self._rx_dropped += len(batch)
            queue.reader_done.set()

    async def _serve_batch(self, queue: _Queue, batch: list[bytes]) -> None:
        """Run the handler on *batch* and write its output, all in the reader's task.

        This is the engine's fast path: one call per batch read, no task hop.
        """
        target = self._reply_to
        handler = self._handler
        if handler is _forward_unchanged and not self._check_replies:
            packets = cast("list[Packet]", batch)  # read from a device: valid as is
        else:
            replies = handler(batch) if handler is not None else batch
            if inspect.isawaitable(replies):
                replies = await replies
            if not replies:
                return
            packets = target._valid(replies if isinstance(replies, list) else list(replies))
        enabled = target._enabled
        if target._closed or not enabled or not packets:
            target._refuse(packets)
            return
        # Reader i always writes to the same queue of the target: one flow,
        # one queue, in order.
        out = enabled[queue.index % len(enabled)]
        if not out.turn.try_take():
            await target._write_when_free(queue.index, packets)
            return
        try:
            target._accepted += len(packets)
            await target._write(out.stream, packets)
        finally:
            out.turn.release()

    def _valid(self, packets: list[Packet]) -> list[Packet]:
        # Bad handler output is the handler's bug, not the engine's end:
        # dropped and counted like a packet the kernel refuses.
        limit = self.max_packet
        smallest, largest, _total = batch_sizes(packets)
        if packets and (smallest == 0 or largest > limit):
            good = fitting(packets, limit)
            self._refuse(packets[: len(packets) - len(good)])
            return good
        return packets

    def _refuse(self, packets: Sequence[Packet]) -> None:
        """Count *packets* as accepted and dropped at once (the identity holds)."""
        self._accepted += len(packets)
        self._dropped += len(packets)

    async def _write_when_free(self, hint: int, packets: list[Packet]) -> None:
        """The contended path of :meth:`_serve_batch`: wait for the queue's turn."""
        while not self._closed and self._enabled:
            queue = self._enabled[hint % len(self._enabled)]
            await queue.turn.take()
            try:
                # Detached while we waited: pick again.
                if queue.enabled:
                    self._accepted += len(packets)
                    await self._write(queue.stream, packets)
                    return
            finally:
                queue.turn.release()
        self._refuse(packets)

    async def _writer(self, queue: _Queue) -> None:
        stream = queue.stream
        try:
            with queue.writer_scope:
                async for batch in queue.receive:
                    packets = list(batch)
                    # Gather what else is queued so that GRO sees whole flows.
                    while len(packets) < WRITER_GATHER:
                        try:
                            packets.extend(queue.receive.receive_nowait())
                        except (anyio.WouldBlock, anyio.EndOfStream):
                            break
                    await queue.turn.take()
                    try:
                        await self._write(stream, packets)
                    finally:
                        queue.turn.release()
        finally:
            queue.writer_done.set()

    async def _write(self, stream: QueueStream, packets: list[Packet]) -> None:
        before = stream.counters.tx_packets
        try:
            await stream.send_batch(packets)
        finally:
            # Whatever the kernel did not take (refused, or we were stopped
            # mid-batch) is dropped; tx_packets counts segments exactly.
            written = stream.counters.tx_packets - before
            self._written += written
            self._dropped += len(packets) - written

    # -- application side ----------------------------------------------

    async def receive_batch(self) -> list[bytes]:
        """The next batch of packets read from any queue.

        Raises:
            anyio.EndOfStream: the engine has shut down and every batch was taken.
        """
        try:
            batch = await self._inbound_receive.receive()
        except anyio.ClosedResourceError:
            raise anyio.EndOfStream from None
        self._inbound_pending -= 1
        self._delivered += len(batch)
        return batch

    def __aiter__(self) -> AsyncIterator[list[bytes]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[list[bytes]]:
        while True:
            try:
                yield await self.receive_batch()
            except anyio.EndOfStream:
                return

    async def send_batch(self, packets: Iterable[Packet]) -> None:
        """Hand packets to the writers (one flow always to the same writer).

        Waits while a writer's channel is full (backpressure).  If cancelled
        while waiting, the sub-batches already handed over were accepted and
        will be written or counted; the rest were not accepted.

        Raises:
            ValueError: a packet is empty or larger than the device accepts
                (nothing of the batch was accepted).
            ClosedResourceError: the engine is shutting down or closed.
        """
        batch = list(packets)
        if not batch:
            await anyio.lowlevel.checkpoint()
            return
        limit = self.max_packet
        # One pass in C: this is per packet, on the hot path.
        shortest, longest, _total = batch_sizes(batch)
        if shortest == 0 or longest > limit:
            bad = shortest if shortest == 0 else longest
            raise ValueError(f"packet of {bad} bytes: packets must be 1..{limit} bytes long")
        pending = batch
        while pending:
            if self._closing:
                raise ClosedResourceError("the engine is shutting down")
            queues = self._enabled
            width = len(queues)
            buckets: dict[int, list[Packet]]
            if width == 1:
                buckets = {0: pending}
            else:
                buckets = {}
                for packet in pending:
                    buckets.setdefault(flow_hash(packet) % width, []).append(packet)
            pending = []
            for slot, bucket in buckets.items():
                try:
                    await queues[slot].send.send(bucket)
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    # That queue was detached while we chose it: re-route.
                    pending.extend(bucket)
                    continue
                self._accepted += len(bucket)

    async def serve(
        self, handler: Handler | None = None, *, reply_to: OffloadEngine | None = None
    ) -> None:
        """Run ``replies = handler(batch)`` on every batch read, run to completion.

        While ``serve`` runs, each queue's reader hands the batch it read to
        *handler* and writes the replies itself, to queue ``i % n`` of
        *reply_to* (default: this engine) for reader *i*: no channel and no
        task hop between the read and the write, and one reader's output
        always lands on one queue, so flows keep their order.  *handler* may be
        a plain or an async function and may return ``None`` for no replies;
        ``None`` as the handler forwards every batch unchanged (forward to
        another device with ``a.serve(reply_to=b)``).  Replies that no device
        could take (empty, or longer than ``max_packet``) are counted as
        dropped.

        Batches read before ``serve`` started are served from the inbound
        channel first.  An exception raised by *handler* ends the engine and
        propagates out of its ``async with`` block.  Returns when the engine
        has shut down.

        Raises:
            anyio.BusyResourceError: ``serve`` is already running.
        """
        if self._serving:
            raise anyio.BusyResourceError("serving")
        target = self if reply_to is None else reply_to
        apply = _forward_unchanged if handler is None else handler
        self._handler = apply
        self._reply_to = target
        # Packets read from our queues fit any device at least as large.
        self._check_replies = target.max_packet < self.max_packet
        self._serving = True
        try:
            async for batch in self:
                replies = apply(batch)
                if inspect.isawaitable(replies):
                    replies = await replies
                if replies:
                    # As on the run-to-completion path: a reply no device could
                    # take is dropped and counted, not an error that ends serve.
                    packets = replies if isinstance(replies, list) else list(replies)
                    await target.send_batch(target._valid(packets))
        finally:
            self._serving = False
            self._handler = _forward_unchanged
            self._reply_to = self

    # -- queues --------------------------------------------------------

    @property
    def max_packet(self) -> int:
        """The longest packet the engine's queues accept."""
        return self._queues[0].stream.max_packet

    @property
    def queues(self) -> tuple[QueueStream, ...]:
        return tuple(q.stream for q in self._queues)

    def enabled_queues(self) -> list[int]:
        """Indexes of the queues currently attached and in use."""
        return [q.index for q in self._queues if q.enabled]

    async def detach_queue(self, index: int) -> None:
        """Take queue *index* out of service while traffic flows.

        New packets go to the remaining writers; this queue's writer writes
        what it had accepted, its reader stops, and the kernel is told to stop
        steering flows to it (``TUNSETQUEUE``).  The device stays up.
        """
        queue = self._queues[index]
        if not queue.enabled:
            return
        if len(self._enabled) == 1:
            raise ValueError("can't detach the last attached queue of an engine")
        queue.enabled = False
        # A new list, not removed in place: a send_batch waiting for room holds
        # the old one with its buckets' slots, and must find this queue's
        # channel closed (and re-route), not the slots shifted under it.
        self._enabled = [q for q in self._enabled if q is not queue]
        queue.send.close()
        await queue.writer_done.wait()
        # A reader mid-write for serve() finishes that batch, then stops.
        if not queue.delivering:
            queue.reader_scope.cancel()
        await queue.reader_done.wait()
        await queue.turn.take()
        try:
            queue.stream.detach_queue()
        finally:
            queue.turn.release()

    async def attach_queue(self, index: int) -> None:
        """Put a queue taken out with :meth:`detach_queue` back into service."""
        queue = self._queues[index]
        if queue.enabled:
            return
        if self._closing:
            raise ClosedResourceError("the engine is shutting down")
        queue.stream.attach_queue()
        queue.send, queue.receive = anyio.create_memory_object_stream[list[Packet]](
            self._channel_batches
        )
        queue.enabled = True
        self._enabled = [q for q in self._queues if q.enabled]
        self._start_queue(queue)
        await anyio.lowlevel.checkpoint()

    # -- statistics ----------------------------------------------------

    def statistics(self) -> EngineStatistics:
        """A snapshot of the engine's counters (see :class:`EngineStatistics`)."""
        return EngineStatistics(
            accepted=self._accepted,
            written=self._written,
            dropped=self._dropped,
            in_flight=self._accepted - self._written - self._dropped,
            received=self._received,
            delivered=self._delivered,
            rx_dropped=self._rx_dropped,
            queues=tuple(q.stream.statistics() for q in self._queues),
        )


# -- the data path, run to completion -------------------------------------------


class DatagramSocket(Protocol):
    """What :class:`TunnelPump` needs of any UDP socket: batched receives and counters."""

    async def receive_batch(self) -> list[Any]: ...

    @property
    def counters(self) -> Any:
        """Live counters with ``tx_datagrams`` (what the kernel accepted)."""


class ConnectedSocket(DatagramSocket, Protocol):
    """A connected ``trio_tun.UdpStream``: the items are ``bytes``."""

    async def send_batch(self, datagrams: Iterable[Any], /) -> None: ...


@runtime_checkable
class UnconnectedSocket(DatagramSocket, Protocol):
    """An unconnected ``trio_tun.UnconnectedUdpStream``: the items are
    ``(bytes, (host, port))``, sent with ``send_many``, which still turns each
    run for one destination into one GSO send."""

    async def send_many(self, items: Iterable[Any], /) -> None: ...


Transform = Callable[[list[Any]], "Awaitable[Sequence[Any]] | Sequence[Any]"]


_Send = Callable[[Sequence[Any]], Awaitable[None]]


def _sender(sock: ConnectedSocket | UnconnectedSocket) -> _Send:
    # An unconnected socket takes (data, address) items through send_many.
    if isinstance(sock, UnconnectedSocket):
        return sock.send_many
    return sock.send_batch


@attrs.frozen
class PumpStatistics:
    """Counters of one :class:`TunnelPump`; ``accepted == written + dropped + in_flight``."""

    #: Packets read from the TUN queues.
    tun_received: int
    #: Datagrams read from the sockets.
    udp_received: int
    #: Items the handlers produced and the pump set out to write (both directions).
    accepted: int
    #: Of those, items the kernel took.
    written: int
    #: Of those, items refused by the kernel or left when the grace period ran out.
    dropped: int
    #: Accepted items not yet written nor dropped (0 once ``run`` has returned).
    in_flight: int


@attrs.define(eq=False)
class _PumpLoop:
    """One of a pump's loops: its shielded scope, and whether it is writing."""

    scope: anyio.CancelScope = attrs.field(factory=lambda: anyio.CancelScope(shield=True))
    delivering: bool = False


async def _send_to_tun(tun: QueueStream, packets: Sequence[Packet]) -> None:
    """Write *packets*, leaving out any that no TUN device takes (empty, or too long).

    Those are dropped (the caller counts what was not written), never the end
    of the pump.  The stream checks the sizes before writing anything, so the
    common case costs no pass of our own over the batch.
    """
    try:
        await tun.send_batch(packets)
    except ValueError:
        good = fitting(packets, tun.max_packet)
        if len(good) == len(packets):
            raise  # not about sizes: not ours to swallow
        if good:
            await tun.send_batch(good)


class TunnelPump:
    """A VPN's data path: TUN queues <-> handlers <-> UDP sockets, run to completion.

    For each queue *i* two tasks run: one reads a batch from ``tun_queues[i]``,
    passes it through *outbound* (e.g. encryption; default: unchanged) and
    writes the result to ``sockets[i]`` with one ``send_batch`` (UDP GSO runs);
    the other reads a batch from ``sockets[i]`` (UDP GRO), passes it through
    *inbound* and writes it to ``tun_queues[i]`` with one ``send_batch``
    (coalesced).  There is no channel and no task hop between reading a batch
    and writing what became of it; a flow stays on one queue and one socket, so
    its order is kept.

    :meth:`run` returns only when cancelled.  Shutdown is graceful: a batch in
    hand when the cancellation arrives is still written, for at most *grace*
    seconds, and anything not written by then is counted as dropped, so
    ``accepted == written + dropped`` once :meth:`run` has returned.

    With unconnected sockets (a peer per destination, as in WireGuard) the
    items on the UDP side are ``(bytes, (host, port))``: *inbound* receives
    them and *outbound* returns them, and both must be given.  Other tasks
    (timers, handshakes) and the handlers themselves send on a socket through
    :meth:`send_udp`, which takes turns with the pump's own writes.
    """

    def __init__(
        self,
        tun_queues: Sequence[QueueStream],
        sockets: Sequence[ConnectedSocket | UnconnectedSocket],
        *,
        outbound: Transform | None = None,
        inbound: Transform | None = None,
        grace: float = DEFAULT_GRACE,
    ) -> None:
        if not tun_queues or len(tun_queues) != len(sockets):
            raise ValueError("a pump needs one socket per TUN queue (and at least one queue)")
        if grace < 0 or not math.isfinite(grace):
            raise ValueError(f"grace must be a finite number of seconds >= 0, not {grace!r}")
        if (outbound is None or inbound is None) and any(
            isinstance(sock, UnconnectedSocket) for sock in sockets
        ):
            raise ValueError(
                "unconnected sockets carry (data, address) items: give both an inbound "
                "and an outbound transform"
            )
        self._queues = list(tun_queues)
        self._sockets = list(sockets)
        self._senders = [_sender(sock) for sock in sockets]
        self._turns = [_Turn() for _ in sockets]
        self._outbound = outbound
        self._inbound = inbound
        self._grace = grace
        # Deliveries from other tasks (send_udp), each in its own shielded scope.
        self._deliveries: set[anyio.CancelScope] = set()
        # The pump's own loops: one shielded scope each for the whole run (a
        # scope per batch costs more than a small batch's write), cancelled by
        # run() at shutdown unless a delivery is in progress.
        self._loops: list[_PumpLoop] = []
        self._stopping = False
        self._deadline = math.inf
        self._running = False
        self._tun_received = 0
        self._udp_received = 0
        self._accepted = 0
        self._written = 0
        self._dropped = 0

    def statistics(self) -> PumpStatistics:
        return PumpStatistics(
            tun_received=self._tun_received,
            udp_received=self._udp_received,
            accepted=self._accepted,
            written=self._written,
            dropped=self._dropped,
            in_flight=self._accepted - self._written - self._dropped,
        )

    async def run(self) -> None:
        """Pump until cancelled; then finish the batches in hand within the grace period."""
        if self._running:
            raise RuntimeError("this pump is already running")
        self._running = True
        self._stopping = False
        self._deadline = math.inf
        self._loops = []
        try:
            async with anyio.create_task_group() as task_group:
                for index, (tun, sock) in enumerate(zip(self._queues, self._sockets, strict=True)):
                    outward, inward = _PumpLoop(), _PumpLoop()
                    self._loops += (outward, inward)
                    task_group.start_soon(self._outward, outward, tun, index)
                    task_group.start_soon(self._inward, inward, sock, tun)
                try:
                    await anyio.sleep_forever()
                finally:
                    # Cancelled (or a loop failed): loops stop at once unless
                    # they are writing; writes get the grace period, no more.
                    self._stopping = True
                    self._deadline = anyio.current_time() + self._grace
                    for loop in self._loops:
                        if loop.delivering:
                            loop.scope.deadline = self._deadline
                        else:
                            loop.scope.cancel()
                    for scope in self._deliveries:
                        scope.deadline = min(scope.deadline, self._deadline)
        finally:
            self._running = False

    async def _outward(self, loop: _PumpLoop, tun: QueueStream, index: int) -> None:
        sock, turn, send = self._sockets[index], self._turns[index], self._senders[index]
        outbound = self._outbound
        with loop.scope:
            while True:
                batch = await tun.receive_batch()
                self._tun_received += len(batch)
                # Without a transform the batch goes out as it came: no coroutine for it.
                out = batch if outbound is None else await self._apply(outbound, batch)
                if not out:
                    continue
                if not turn.try_take():
                    await turn.take()
                try:
                    await self._deliver_in(loop, send, out, lambda: sock.counters.tx_datagrams)
                finally:
                    turn.release()

    async def send_udp(self, items: Sequence[Any], index: int = 0) -> None:
        """Send *items* on socket *index* from outside the pump's own loop.

        For what is not a reply to a TUN batch: handshake messages, keepalives,
        cookie replies, from a timer task or from the *inbound* transform.  The
        write takes turns with the pump's (no ``BusyResourceError``), and is
        counted like the pump's own: ``accepted``, then ``written`` or
        ``dropped``.  Like the pump's writes it is shielded and bounded by the
        grace period once the pump is shutting down.
        """
        if items:
            await self._send_udp(index, items)

    async def _send_udp(self, index: int, items: Sequence[Any]) -> None:
        sock, turn = self._sockets[index], self._turns[index]
        # Uncontended (the pump alone on its socket) a turn is one flag.
        if not turn.try_take():
            await turn.take()
        try:
            await self._deliver(self._senders[index], items, lambda: sock.counters.tx_datagrams)
        finally:
            turn.release()

    async def _inward(self, loop: _PumpLoop, sock: DatagramSocket, tun: QueueStream) -> None:
        inbound = self._inbound
        send = partial(_send_to_tun, tun)
        with loop.scope:
            while True:
                batch = await sock.receive_batch()
                self._udp_received += len(batch)
                out = batch if inbound is None else await self._apply(inbound, batch)
                if out:
                    await self._deliver_in(loop, send, out, lambda: tun.counters.tx_packets)

    @staticmethod
    async def _apply(transform: Transform, batch: list[bytes]) -> Sequence[Packet]:
        out = transform(batch)
        if inspect.isawaitable(out):
            out = await out
        return out

    async def _send_counted(
        self,
        send: Callable[[Sequence[Any]], Awaitable[None]],
        items: Sequence[Any],
        sent: Callable[[], int],
    ) -> None:
        # Accepted, then written or (refused, or cut off by the grace period) dropped.
        self._accepted += len(items)
        before = sent()
        try:
            await send(items)
        finally:
            written = sent() - before
            self._written += written
            self._dropped += len(items) - written

    async def _deliver_in(
        self,
        loop: _PumpLoop,
        send: Callable[[Sequence[Any]], Awaitable[None]],
        items: Sequence[Any],
        sent: Callable[[], int],
    ) -> None:
        # The loop's scope is shielded: only run() cancels it, and not while
        # this flag is up (it gets the grace period's deadline instead).
        loop.delivering = True
        try:
            await self._send_counted(send, items, sent)
        finally:
            loop.delivering = False
        if self._stopping:
            loop.scope.cancel()

    async def _deliver(
        self,
        send: Callable[[Sequence[Any]], Awaitable[None]],
        items: Sequence[Any],
        sent: Callable[[], int],
    ) -> None:
        # Shielded: a batch in hand is written whole unless the grace period
        # (set when shutdown starts) runs out first.
        with anyio.CancelScope(shield=True, deadline=self._deadline) as scope:
            self._deliveries.add(scope)
            try:
                await self._send_counted(send, items, sent)
            finally:
                self._deliveries.discard(scope)
