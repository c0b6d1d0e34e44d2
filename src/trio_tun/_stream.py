"""PacketStream: a port, a framing and a control, as one packet stream.

Every stream trio-tun hands out is this one class (``TunStream`` and
``TapStream`` are its two faces, fixing the layer); what differs between Linux,
macOS, the BSDs, Windows and the in-memory pair is only the parts it is built
from (see :mod:`trio_tun._ports`, :mod:`trio_tun._framing`,
:mod:`trio_tun._control`).

Close semantics and misuse errors follow ``trio.lowlevel.FdStream``:

* ``aclose()`` wakes any task blocked on the stream with ``ClosedResourceError``;
* the device vanishing underneath turns into ``BrokenResourceError``;
* two tasks receiving (or sending) at once get ``BusyResourceError``.

Cancellation safety: every read happens only after readiness, with no
checkpoint between the read and the return, so a cancelled ``receive`` never
loses a packet; a write is one frame, so a cancelled ``send`` wrote the whole
packet or nothing.

Throughput: a Trio checkpoint is a trip through the scheduler.  Every call of
every receive/send method checks for cancellation, but only *yields* to the
scheduler every ``SCHEDULE_EVERY`` calls or whenever it had to wait;
the ``*_batch`` methods move many packets per call on top of that.
"""

from __future__ import annotations

import errno
import ipaddress
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar, final

import anyio.to_thread
from anyio import TypedAttributeSet, typed_attribute
from anyio.abc import UnreliableObjectStream

from ._config import (
    NO_OFFLOAD,
    AddressLike,
    AnyAddress,
    AnyAddressLike,
    IPAddress,
    Layer,
    OffloadFlags,
    Route,
    RouteScope,
    check_uint32,
    make_peer_address,
    parse_any_address,
    parse_mac,
    validate_mtu,
)
from ._control import Control
from ._errors import BusyResourceError, ClosedResourceError, NoDeviceControlError
from ._framing import Buffer, Framing, PlainFraming, VirtioFraming
from ._ports import REFUSED, WOULD_BLOCK, FdPort, Port
from ._stats import Statistics
from ._wait import Backend, YieldBudget, current_backend
from .offload import batch_sizes

if TYPE_CHECKING:
    from .engine import OffloadEngine

#: Reads one receive_batch() does at most by default.
DEFAULT_BATCH: Final = 64
#: Bytes after which a default receive_batch() stops reading (it still reads
#: at least once).  A forwarder splits, hands over and writes back one batch
#: before it reads the next, so this bounds what it holds at once: with
#: offload on, 64 super-packets were up to 8 MiB with their coalesced copies.
#: Without the malloc hint (_malloc.py) such batches were also handed back to
#: the kernel each time, and a 4-flow forwarder was about 1.45x slower than
#: with batches of up to 8 (bench/forward.py trio-speedups, 4 x 4 interleaved
#: runs); with the hint the batch size made no measurable difference, and the
#: budget stays for the memory (peak RSS 30 MiB against 37).
DEFAULT_BATCH_BYTES: Final = 512 * 1024
#: Largest IP packet; a TUN read never brings more (plus headers).
MAX_PACKET: Final = 65535
#: An Ethernet header on top, for TAP.
MAX_FRAME: Final = MAX_PACKET + 14
#: The kernel's ``struct tun_pi`` in front of every packet with ``packet_info=True``.
PI_LEN: Final = 4

T = TypeVar("T")
#: Room for a batch's reads beyond its first frame in the read pool: three
#: more super-packets, or a few hundred small frames.
READ_POOL_EXTRA: Final = 192 * 1024
#: A frame handed to the port's write loop: bytes when coalesced, any buffer otherwise.
_Frame = TypeVar("_Frame", bound=Buffer)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TunAttribute(TypedAttributeSet):
    """Typed attributes of a packet stream, for code written against anyio's ABCs.

    ``stream.extra(TunAttribute.name)`` works on any trio-tun stream, on both
    backends, without knowing its class.
    """

    #: Interface name, e.g. ``"tun0"``.
    name: str = typed_attribute()
    #: Interface index in the device's namespace.
    index: int = typed_attribute()
    #: :class:`Layer.L3` (TUN) or :class:`Layer.L2` (TAP).
    layer: Layer = typed_attribute()
    #: Current MTU (asks the kernel).
    mtu: int = typed_attribute()
    #: Offload features negotiated with the kernel.
    offload: OffloadFlags = typed_attribute()
    #: The queue's file descriptor (absent where there is none: wintun, memory pairs).
    fileno: int = typed_attribute()


class ConflictGuard:
    """One task at a time per direction, like Trio's ConflictDetector."""

    __slots__ = ("_action", "_busy")

    def __init__(self, action: str) -> None:
        self._action = action
        self._busy = False

    def __enter__(self) -> None:
        if self._busy:
            raise BusyResourceError(self._action)
        self._busy = True

    def __exit__(self, *exc_info: object) -> None:
        self._busy = False


class PacketStream(UnreliableObjectStream[bytes]):
    """One queue of a device as a stream of packets (IP packets, or Ethernet frames for TAP).

    Not instantiated directly: use :func:`trio_tun.open_tun`, :func:`trio_tun.open_tap`,
    :func:`trio_tun.from_fd` or :func:`trio_tun.testing.memory_tun_pair`.

    Args:
        port: Moves frames (and owns the handle).
        framing: Turns frames into packets and back.
        layer: Which layer the packets are.
        control: The device's configuration, if it can be reached from here.
        owns_control: Close *control* with the stream (``from_fd``); otherwise
            whoever opened the device closes it.
        offload: The offload features negotiated with the kernel.
        packet_info: Whether packets carry the kernel's 4-byte ``tun_pi`` header.
    """

    def __init__(
        self,
        port: Port,
        framing: Framing,
        *,
        layer: Layer,
        control: Control | None = None,
        owns_control: bool = False,
        offload: OffloadFlags = NO_OFFLOAD,
        packet_info: bool = False,
    ) -> None:
        self._port = port
        # Ports without a file descriptor (wintun, memory) offer no fileno attribute.
        self._has_fd = port.fileno() >= 0
        self._framing = framing
        self._layer = layer
        self._control = control
        self._owns_control = owns_control
        self._offload = offload
        self._packet_info = packet_info
        self._queues: tuple[PacketStream, ...] = (self,)
        self._backend: Backend | None = None
        # Set while a forwarding thread drives one direction (see threaded.py);
        # the other direction may be driven by another thread at the same time.
        self._receive_backend: Backend | None = None
        self._send_backend: Backend | None = None
        self._receive_guard = ConflictGuard("receiving")
        self._send_guard = ConflictGuard("sending")
        self._receive_budget = YieldBudget()
        self._send_budget = YieldBudget()
        self._pending: deque[bytes] = deque()
        self._counters = Statistics()
        self._attached = True
        self._max_packet = MAX_FRAME if layer is Layer.L2 else MAX_PACKET
        extra = framing.header_len + (PI_LEN if packet_info else 0)
        self._read_buffer = bytearray(self._max_packet + extra)
        self._read_view = memoryview(self._read_buffer)
        # One frame is one packet on an fd: batches move through the port's
        # read/write loops (compiled where built), not a Python call each.
        self._frame_port = (
            port if isinstance(port, FdPort) and isinstance(framing, PlainFraming) else None
        )
        # Frames with a virtio header on an fd: batches are read as runs into a
        # pool (made on first use), and coalesced frames go out through the
        # same write loop as one-packet frames.
        self._fd_port = (
            port if isinstance(port, FdPort) and isinstance(framing, VirtioFraming) else None
        )
        self._read_pool: bytearray | None = None

    # -- introspection -------------------------------------------------

    @property
    def layer(self) -> Layer:
        """:class:`Layer.L3` for TUN, :class:`Layer.L2` for TAP."""
        return self._layer

    def fileno(self) -> int:
        """The queue's file descriptor (-1 once closed, or where there is none)."""
        return self._port.fileno()

    @property
    def closed(self) -> bool:
        return self._port.closed

    @property
    def offload(self) -> OffloadFlags:
        """The offload features negotiated with the kernel (``none`` when off)."""
        return self._offload

    @property
    def vnet_hdr(self) -> bool:
        """Whether raw reads/writes carry a 10-byte virtio-net header."""
        return isinstance(self._framing, VirtioFraming)

    @property
    def packet_info(self) -> bool:
        """Whether packets carry the kernel's 4-byte ``tun_pi`` header."""
        return self._packet_info

    @property
    def max_packet(self) -> int:
        """The largest packet :meth:`send` takes (65535 for TUN, 65549 for TAP)."""
        return self._max_packet

    @property
    def framing(self) -> Framing:
        """How frames on the wire map to packets (see :mod:`trio_tun._framing`)."""
        return self._framing

    @property
    def counters(self) -> Statistics:
        """The live counters (read-only by convention); :meth:`statistics` for a snapshot.

        For code that reads a counter per batch (the engine): no copy is made.
        """
        return self._counters

    def statistics(self) -> Statistics:
        """A snapshot of the counters trio-tun keeps for this stream (see :class:`Statistics`)."""
        return self._counters.snapshot()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        attributes: dict[Any, Callable[[], Any]] = {
            TunAttribute.layer: lambda: self._layer,
            TunAttribute.offload: lambda: self._offload,
        }
        if self._has_fd:
            attributes[TunAttribute.fileno] = self.fileno
        if self._control is not None:
            attributes[TunAttribute.name] = lambda: self.name
            attributes[TunAttribute.index] = lambda: self.index
            attributes[TunAttribute.mtu] = lambda: self.mtu
        return attributes

    @property
    def queues(self) -> tuple[PacketStream, ...]:
        """Every queue of the device, this one first (one entry unless ``queues=N``)."""
        return self._queues

    def __repr__(self) -> str:
        name = self._control.name if self._control is not None else "?"
        state = " closed" if self.closed else ""
        return f"<{type(self).__name__} {name!r} fd={self.fileno()}{state}>"

    # -- plumbing ------------------------------------------------------

    def _get_backend(self) -> Backend:
        backend = self._backend
        if backend is None:
            backend = self._backend = current_backend()
        return backend

    def _use_backend(self, backend: Backend | None, *, receiving: bool) -> None:
        """Receive (or send) on *backend*, e.g. blocking waits in a forwarding thread.

        ``None`` goes back to the running event loop's.
        """
        if not isinstance(self._port, FdPort):
            raise TypeError(f"{self!r} has no file descriptor to wait on")
        if receiving:
            self._receive_backend = backend
        else:
            self._send_backend = backend
        self._port.use_backend(backend, reading=receiving)

    async def _wait(self, readable: bool) -> None:
        if readable:
            await self._port.wait_readable()
            # Waiting went through the scheduler: the amortised yield is paid.
            self._receive_budget.waited()
        else:
            await self._port.wait_writable()
            self._send_budget.waited()

    def _entry_checkpoint(self, receiving: bool) -> Awaitable[None]:
        # Not a coroutine: the caller awaits the backend's checkpoint directly.
        if receiving:
            budget, backend = self._receive_budget, self._receive_backend
        else:
            budget, backend = self._send_budget, self._send_backend
        return budget.checkpoint(backend or self._get_backend())

    # -- reading -------------------------------------------------------

    def _read_one(self) -> bool:
        """One read, its packets onto the pending queue; False when nothing was queued."""
        n = self._port.read_into(self._read_buffer)
        if n == WOULD_BLOCK:
            return False
        counters = self._counters
        counters.reads += 1
        counters.read_bytes += n
        if not self._framing.unpack(self._read_view[:n], self._pending):
            counters.rx_malformed += 1
        return True

    def _read_frames(self, count: int) -> None:
        """Up to *count* one-packet frames onto the pending queue, in one port call."""
        assert self._frame_port is not None
        frames = self._frame_port.read_frames(count, len(self._read_buffer))
        if frames:
            counters = self._counters
            counters.reads += len(frames)
            counters.read_bytes += batch_sizes(frames)[2]
            self._pending.extend(frames)

    def _fill(self, wanted: int) -> None:
        """Read until *wanted* packets are pending or the queue is empty."""
        pending = self._pending
        if self._frame_port is not None:
            if len(pending) < wanted:
                self._read_frames(wanted - len(pending))
            return
        while len(pending) < wanted and self._read_one():
            pass

    def _fill_reads(self, reads: int, budget: int) -> None:
        """Do up to *reads* reads, stopping early when the queue is empty or *budget* bytes came."""
        if self._frame_port is not None:
            # One-packet frames: *reads* of them stay far below any byte budget.
            self._read_frames(reads)
            return
        counters = self._counters
        stop_at = counters.read_bytes + budget
        if self._fd_port is not None:
            self._read_packed(self._fd_port, reads, stop_at)
            return
        for _ in range(reads):
            if not self._read_one() or counters.read_bytes >= stop_at:
                return

    def _read_packed(self, port: FdPort, reads: int, stop_at: int) -> None:
        """_fill_reads on an fd: runs of reads into the pool, one port call each."""
        pool = self._read_pool
        if pool is None:
            pool = self._read_pool = bytearray(len(self._read_buffer) + READ_POOL_EXTRA)
        view = memoryview(pool)
        size = len(self._read_buffer)
        counters, unpack_run, pending = self._counters, self._framing.unpack_run, self._pending
        while reads > 0 and counters.read_bytes < stop_at:
            lengths, more = port.read_packed(pool, size, reads)
            counters.reads += len(lengths)
            counters.read_bytes += sum(lengths)
            counters.rx_malformed += unpack_run(view, lengths, pending)
            if not more or not lengths:
                return
            reads -= len(lengths)

    def _take(self, count: int) -> list[bytes]:
        pending = self._pending
        if count >= len(pending):
            # The common case (whole reads): one C-level copy, no per-item pops.
            out = list(pending)
            pending.clear()
        else:
            out = [pending.popleft() for _ in range(count)]
        counters = self._counters
        counters.rx_packets += len(out)
        counters.rx_bytes += batch_sizes(out)[2]
        return out

    async def receive(self) -> bytes:
        """Receive one packet (an IP packet for TUN, an Ethernet frame for TAP).

        With offload on, a super-packet read from the kernel is split and its
        segments are returned one per call.

        Raises:
            ClosedResourceError: the stream was closed.
            BrokenResourceError: the device was deleted.
            BusyResourceError: another task is receiving on this stream.
            anyio.EndOfStream: only when the other side can end (a socket
                wrapped with :func:`from_fd` whose peer has closed, the closed
                peer of a memory pair); a TUN device never ends.
        """
        with self._receive_guard:
            await self._entry_checkpoint(True)
            while True:
                if not self._pending:
                    self._fill(1)
                if self._pending:
                    return self._take(1)[0]
                await self._wait(readable=True)

    async def receive_batch(self, max_packets: int | None = None) -> list[bytes]:
        """Receive a batch of packets for the price of one checkpoint.

        Waits for the first packet, then takes whatever else is queued.  With
        *max_packets* the batch holds at most that many packets; segments of a
        super-packet that do not fit stay queued for the next call, none are
        lost.  By default (``None``) the batch is the packets of up to
        ``DEFAULT_BATCH`` (64) whole reads, fewer once ``DEFAULT_BATCH_BYTES``
        (512 KiB) have been read: with offload on, every super-packet's
        segments then stay together, so a forwarder's :meth:`send_batch` can
        coalesce them back into one write, and a batch stays small enough to
        be cache-hot when it is written.  (With offload on an fd the reads
        come in runs of up to four super-packets, and the byte limit is
        checked after each run.)
        """
        if max_packets is not None and max_packets < 1:
            raise ValueError(f"max_packets must be at least 1, not {max_packets}")
        with self._receive_guard:
            await self._entry_checkpoint(True)
            while True:
                if max_packets is None:
                    batch = self._receive_ready()
                    if batch:
                        return batch
                else:
                    self._fill(max_packets)
                    if self._pending:
                        return self._take(max_packets)
                await self._wait(readable=True)

    def _receive_ready(self) -> list[bytes]:
        """receive_batch's default batch from what is queued now ([] if nothing is),
        for a caller holding the receive guard."""
        self._fill_reads(DEFAULT_BATCH, DEFAULT_BATCH_BYTES)
        pending = self._pending
        return self._take(len(pending)) if pending else []

    async def receive_raw(self) -> bytes:
        """Receive what one read brings, unparsed.

        With a virtio header (offload) that is the 10-byte header followed by a
        possibly 64 KiB super-packet; forwarders that pass it on with
        :meth:`send_raw` never split or copy the payload.  Packets already
        split for :meth:`receive` are not returned here.
        """
        with self._receive_guard:
            await self._entry_checkpoint(True)
            size = len(self._read_buffer)
            while True:
                frame = self._port.read(size)
                if frame is None:
                    await self._wait(readable=True)
                    continue
                n = len(frame)
                counters = self._counters
                counters.reads += 1
                counters.read_bytes += n
                counters.rx_packets += 1
                counters.rx_bytes += n
                return frame

    async def receive_into(self, buffer: bytearray | memoryview) -> int:
        """Receive one packet into *buffer*; returns its length.

        For readers that keep one buffer and parse in place: with no header to
        strip (no offload, no AF header) and a *buffer* of at least one read's
        worth (:attr:`max_packet`, plus 4 with ``packet_info``) the system
        writes the packet straight into *buffer*, with no copy in between.
        Otherwise the packet is read as :meth:`receive` reads it and copied in.

        With offload on, a super-packet is split first and its segments are
        returned one per call, from the same queue :meth:`receive` and
        :meth:`receive_batch` take from, so the three can be mixed freely.

        Raises:
            ValueError: the next packet is longer than *buffer*; it stays
                queued (nothing is lost), the message says how long it is.
            TypeError: *buffer* is read-only.
            ClosedResourceError, BrokenResourceError, BusyResourceError: as
                :meth:`receive`.
        """
        view = memoryview(buffer)
        if view.readonly:
            raise TypeError("receive_into needs a writable buffer (a bytearray or memoryview)")
        view = view.cast("B")
        size = len(view)
        # A straight read needs every frame to be a whole packet that fits.
        direct = self._framing.header_len == 0 and size >= len(self._read_buffer)
        with self._receive_guard:
            await self._entry_checkpoint(True)
            pending = self._pending
            while True:
                if not pending:
                    if direct:
                        # Every port's read_into fills any writable buffer (readv,
                        # slice assignment); the Port protocol says bytearray only.
                        n = self._port.read_into(view)  # type: ignore[arg-type]
                        if n != WOULD_BLOCK:
                            counters = self._counters
                            counters.reads += 1
                            counters.read_bytes += n
                            counters.rx_packets += 1
                            counters.rx_bytes += n
                            return n
                    else:
                        self._fill(1)
                if pending:
                    packet = pending[0]
                    n = len(packet)
                    if n > size:
                        raise ValueError(
                            f"the next packet is {n} bytes and the buffer {size}; it stays "
                            f"queued: pass a buffer of at least {n} (max_packet is "
                            f"{self._max_packet})"
                        )
                    view[:n] = packet
                    pending.popleft()
                    self._counters.rx_packets += 1
                    self._counters.rx_bytes += n
                    return n
                await self._wait(readable=True)

    # -- writing -------------------------------------------------------

    def _check_packet(self, packet: Buffer) -> None:
        size = len(packet)
        if size == 0:
            raise ValueError("can't send an empty packet")
        if size > self._max_packet:
            raise ValueError(
                f"packet of {size} bytes is larger than the {self._max_packet}-byte limit "
                f"of a {self._layer.value.upper()} device"
            )

    async def _write(self, buffers: Sequence[Buffer]) -> int:
        """Write *buffers* as one frame, waiting for room: bytes written, or ``REFUSED``."""
        while True:
            n = self._port.write(buffers)
            if n != WOULD_BLOCK:
                break
            await self._wait(readable=False)
        if n >= 0:
            counters = self._counters
            counters.writes += 1
            counters.write_bytes += n
        return n

    async def _write_frame(self, buffers: Sequence[Buffer], packets: int) -> bool:
        """Write one frame carrying *packets* packets; count it either way."""
        n = await self._write(buffers)
        counters = self._counters
        if n < 0:
            counters.tx_dropped += packets
            return False
        counters.tx_packets += packets
        counters.tx_bytes += n - self._framing.header_len
        return True

    async def _send_one(self, packet: Buffer) -> None:
        buffers = self._framing.pack(packet)
        if buffers is None:
            # The framing can't carry it (e.g. not IP behind an AF header):
            # the kernel would refuse it too.
            self._counters.tx_dropped += 1
            return
        await self._write_frame(buffers, 1)

    async def send(self, item: Buffer) -> None:
        """Send one packet.  It is written whole or, if cancelled, not at all.

        A packet the kernel refuses (not IP, or the device is down) is dropped
        and counted in :meth:`statistics`, as a network would drop it.

        Raises:
            ValueError: the packet is empty or larger than the device accepts.
            ClosedResourceError: the stream was closed.
            BrokenResourceError: the device was deleted.
            BusyResourceError: another task is sending on this stream.
        """
        self._check_packet(item)
        with self._send_guard:
            await self._entry_checkpoint(False)
            await self._send_one(item)

    async def send_batch(self, packets: Iterable[Buffer]) -> None:
        """Send several packets for the price of one checkpoint.

        With offload on, consecutive segments of a flow are coalesced into
        super-packets first, so the kernel gets fewer, larger writes.  Each
        packet is written whole or not at all; if cancelled while waiting for
        room, a prefix of the batch has been written.
        """
        batch = list(packets)
        if batch:
            # One pass in C over the sizes; the per-packet check (with its
            # message) only when something is off.
            smallest, largest, _total = batch_sizes(batch)
            if smallest == 0 or largest > self._max_packet:
                for packet in batch:
                    self._check_packet(packet)
        with self._send_guard:
            await self._entry_checkpoint(False)
            await self._send_checked(batch)

    async def _send_checked(self, batch: list[Buffer]) -> None:
        """send_batch's writing, for a caller holding the send guard (packets checked)."""
        if self._framing.coalescing and len(batch) > 1:
            await self._send_coalesced(batch)
            return
        if self._frame_port is not None:
            await self._send_frames(self._frame_port, batch)
            return
        for packet in batch:
            await self._send_one(packet)

    async def _send_frames(self, port: FdPort, batch: list[Buffer]) -> None:
        """Write one-packet frames with the port's write loop."""
        await self._write_run(port, batch, self._count_frames, self._drop_frame)

    def _count_frames(self, frames: Sequence[Buffer], start: int, end: int, nbytes: int) -> None:
        counters = self._counters
        counters.writes += end - start
        counters.write_bytes += nbytes
        counters.tx_packets += end - start
        counters.tx_bytes += nbytes

    async def _drop_frame(self, frame: Buffer) -> None:
        # Refused (not IP, device down): dropped and counted, the rest goes on.
        self._counters.tx_dropped += 1

    async def _write_run(
        self,
        port: FdPort,
        frames: Sequence[_Frame],
        count: Callable[[Sequence[_Frame], int, int, int], None],
        refused: Callable[[_Frame], Awaitable[None]],
    ) -> None:
        """Write *frames* in order through the port's loop, waiting where it is full.

        *count* is told each run of frames written whole (start, end, bytes);
        each frame the system refuses goes to *refused*, and the rest go on.
        """
        index, end = 0, len(frames)
        while index < end:
            after, nbytes, status, error = port.write_frames(frames, index)
            if after > index:
                count(frames, index, after, nbytes)
            if error is not None:
                raise error
            index = after
            if status == WOULD_BLOCK:
                await self._wait(readable=False)
            elif status == REFUSED:
                index += 1
                await refused(frames[index - 1])

    async def _send_coalesced(self, batch: list[Buffer]) -> None:
        framing = self._framing
        frames, refused = framing.coalesce(batch)
        self._counters.tx_dropped += refused
        port = self._fd_port
        if port is not None:
            # One call, one release of the GIL, for all the frames of a batch.
            await self._write_run(port, frames, self._count_coalesced, self._drop_coalesced)
            return
        for frame in frames:
            segments = framing.segments(frame)
            if not await self._write_frame((frame,), segments):
                await self._refused_coalesced(frame)
            elif segments > 1:
                self._counters.tx_coalesced += 1

    def _count_coalesced(self, frames: Sequence[bytes], start: int, end: int, nbytes: int) -> None:
        """Count ``frames[start:end]``, written whole (*nbytes* in all, headers included)."""
        counters, framing = self._counters, self._framing
        counters.writes += end - start
        counters.write_bytes += nbytes
        counters.tx_bytes += nbytes - (end - start) * framing.header_len
        packets, coalesced = framing.count_segments(frames, start, end)
        counters.tx_packets += packets
        counters.tx_coalesced += coalesced

    async def _drop_coalesced(self, frame: bytes) -> None:
        self._counters.tx_dropped += self._framing.segments(frame)
        await self._refused_coalesced(frame)

    async def _refused_coalesced(self, frame: bytes) -> None:
        """*frame* was refused and counted as dropped; resend it split if that is why."""
        framing = self._framing
        segments = framing.segments(frame)
        if segments > 1 and self._port.refused_errno == errno.EINVAL:
            # Some kernels refuse coalesced writes (e.g. a short last
            # segment): stop coalescing here and resend this one split up.
            framing.coalescing = False
            self._counters.tx_coalesce_fallbacks += 1
            self._counters.tx_dropped -= segments
            parts = framing.split(frame)
            if parts is None:
                self._counters.tx_dropped += segments
                return
            for part in parts:
                await self._send_one(part)

    async def send_raw(self, frame: Buffer) -> None:
        """Write one frame exactly as given (with its virtio header when offload is on)."""
        if len(frame) == 0:
            raise ValueError("can't send an empty frame")
        # One read's worth at most: the largest packet plus the headers.
        limit = len(self._read_buffer)
        if len(frame) > limit:
            raise ValueError(
                f"frame of {len(frame)} bytes is larger than the {limit}-byte limit "
                f"(a {self._max_packet}-byte packet plus {limit - self._max_packet} header bytes)"
            )
        with self._send_guard:
            await self._entry_checkpoint(False)
            n = await self._write((frame,))
            if n >= 0:
                self._counters.tx_packets += 1
                self._counters.tx_bytes += n
            else:
                self._counters.tx_dropped += 1

    # -- device control ------------------------------------------------

    def _require_control(self) -> Control:
        control = self._control
        if control is None:
            raise NoDeviceControlError(
                "this stream has no device control (it wraps an fd whose device is unknown)"
            )
        if control.closed or self._port.closed:
            # Checked here, not left to the system: once our fd is closed the
            # device may be gone, and a listing would come back empty.
            raise ClosedResourceError("this stream was closed; its device can't be configured")
        return control

    async def _in_thread(self, op: Callable[[Control], T]) -> T:
        # A call in flight is not abandoned on cancellation: the system's
        # state and ours must not disagree about whether an address was added.
        control = self._require_control()
        return await anyio.to_thread.run_sync(lambda: op(control))

    @property
    def name(self) -> str:
        """The interface name, e.g. ``"tun0"``."""
        return self._require_control().name

    @property
    def index(self) -> int:
        """The interface index (in the namespace the device lives in, on Linux)."""
        return self._require_control().index

    @property
    def mtu(self) -> int:
        """The device's current MTU, as the system has it now."""
        return self._require_control().get_mtu()

    async def set_mtu(self, mtu: int) -> None:
        """Change the MTU (68..65535; at least 1280 while IPv6 addresses are set)."""
        validate_mtu(mtu)
        await self._in_thread(lambda c: c.set_mtu(mtu))

    async def set_up(self) -> None:
        """Bring the device up."""
        await self._in_thread(lambda c: c.set_up(True))

    async def set_down(self) -> None:
        """Take the device down; queued packets are dropped by the system."""
        await self._in_thread(lambda c: c.set_up(False))

    async def is_up(self) -> bool:
        """Whether the device is administratively up."""
        return await self._in_thread(lambda c: c.is_up())

    async def addresses(self) -> list[AnyAddress]:
        """Every address on the device, IPv4 and IPv6 (link-local ones included).

        Point-to-point addresses come as :class:`~trio_tun.PeerAddress`
        (our end and the peer), the others as ``ipaddress`` interfaces.
        """
        return await self._in_thread(lambda c: c.addresses())

    async def add_address(
        self, address: AnyAddressLike, *, peer: AddressLike | None = None
    ) -> None:
        """Add ``"10.0.0.1/24"``-style *address*; FileExistsError if already there.

        With *peer* (``"10.8.0.2"``, pytun's ``dstaddr``, tun-rs's ``destination``)
        the address is point-to-point: the peer without a prefix takes
        *address*'s prefix length, which then says what is routed to it (see
        :class:`~trio_tun.PeerAddress`).  ``"10.8.0.1 peer 10.8.0.2"`` says the same.
        """
        addr = parse_any_address(address) if peer is None else make_peer_address(address, peer)
        await self._in_thread(lambda c: c.add_address(addr))

    async def remove_address(self, address: AnyAddressLike) -> None:
        """Remove *address* (a point-to-point one as returned by :meth:`addresses`);
        LookupError if it is not on the device."""
        addr = parse_any_address(address)
        await self._in_thread(lambda c: c.remove_address(addr))

    @staticmethod
    def _route(
        prefix: str | Network | Route,
        gateway: str | IPAddress | None,
        table: int | None,
        source: str | IPAddress | None,
        metric: int | None,
        scope: RouteScope | None,
    ) -> Route:
        if isinstance(prefix, Route):
            if (gateway, table, source, metric, scope) != (None,) * 5:
                raise TypeError("pass either a Route or a prefix with keywords, not both")
            return prefix
        return Route(
            prefix=prefix, gateway=gateway, table=table, source=source, metric=metric, scope=scope
        )

    async def add_route(
        self,
        prefix: str | Network | Route,
        *,
        gateway: str | IPAddress | None = None,
        table: int | None = None,
        source: str | IPAddress | None = None,
        metric: int | None = None,
        scope: RouteScope | None = None,
    ) -> None:
        """Route *prefix* (e.g. ``"10.9.0.0/16"``) through this device.

        Args:
            prefix: The destination network, or a whole :class:`~trio_tun.Route`
                (then no keywords).
            gateway: Next hop, reached through this device (``ip route ... via``).
            table: Routing table number (Linux; default the main table, 254).
            source: Preferred source address for the route's traffic (``src``).
            metric: Route metric (Linux's priority; on Windows added to the
                interface metric).
            scope: ``"global"``, ``"site"``, ``"link"`` or ``"host"`` (Linux).

        Raises ``FileExistsError`` if the route is there already, and
        ``NotImplementedError`` naming the system for an option it lacks (see
        :doc:`device-control`); everything is checked before any system call.
        """
        route = self._route(prefix, gateway, table, source, metric, scope)
        await self._in_thread(lambda c: c.add_route(route))

    async def remove_route(
        self,
        prefix: str | Network | Route,
        *,
        gateway: str | IPAddress | None = None,
        table: int | None = None,
        source: str | IPAddress | None = None,
        metric: int | None = None,
        scope: RouteScope | None = None,
    ) -> None:
        """Remove a route added with :meth:`add_route` (LookupError if absent).

        The keywords narrow which route goes when several share the prefix
        (say, two metrics); left out, they match any value.  *table* is the
        main table unless given.
        """
        route = self._route(prefix, gateway, table, source, metric, scope)
        await self._in_thread(lambda c: c.remove_route(route))

    async def routes(self, *, table: int | None = None) -> list[Route]:
        """Routes through this device, as :class:`~trio_tun.Route` values.

        *table* (Linux) picks the routing table, the main one (254) by default.
        The system's own routes are included (on Linux those for the device's
        prefixes and ``fe80::/64``).  ``str(route)`` is the prefix, as the
        networks this method returned before.
        """
        if table is not None:
            check_uint32(table, "table", low=1)
        return await self._in_thread(lambda c: c.routes(table))

    async def _quick(self, op: Callable[[Control, int], None]) -> None:
        """A control call that is one quick ioctl on this queue's fd: no thread."""
        await self._get_backend().checkpoint()
        control = self._require_control()
        op(control, self._port.fileno())

    async def set_persist(self, persist: bool) -> None:
        """Keep the device after its last queue closes (``True``), or let it go.

        Linux ``TUNSETPERSIST`` (the other queues see it too); on the BSDs it
        decides whether closing destroys the interface; macOS and Windows have
        no persistent devices (``NotImplementedError``).
        """
        if not isinstance(persist, bool):
            raise TypeError(f"persist must be True or False, not {persist!r}")
        await self._quick(lambda c, fd: c.set_persist(persist, fd))

    async def set_owner(self, uid: int) -> None:
        """Let user *uid* attach to the device without privileges (Linux
        ``TUNSETOWNER``; the kernel has no way back to "no owner").
        ``NotImplementedError`` elsewhere."""
        value = check_uint32(uid, "uid", high=0xFFFFFFFE)
        await self._quick(lambda c, fd: c.set_owner(value, fd))

    async def set_group(self, gid: int) -> None:
        """Let group *gid* attach to the device without privileges (Linux
        ``TUNSETGROUP``); ``NotImplementedError`` elsewhere."""
        value = check_uint32(gid, "gid", high=0xFFFFFFFE)
        await self._quick(lambda c, fd: c.set_group(value, fd))

    async def set_mac(self, mac: str | bytes) -> None:
        """Change a TAP device's Ethernet address (``"02:00:00:00:00:01"`` or 6 bytes)."""
        if self._layer is not Layer.L2:
            raise ValueError("set_mac only applies to TAP devices (a TUN device has no MAC)")
        raw = parse_mac(mac)
        assert raw is not None
        await self._in_thread(lambda c: c.set_mac(raw))

    # -- multi-queue ---------------------------------------------------

    def engine(
        self, *, grace: float | None = None, channel_batches: int | None = None
    ) -> OffloadEngine:
        """An :class:`~trio_tun.engine.OffloadEngine` over every queue of this device.

        Use it as ``async with dev.engine() as engine:``.
        """
        # Imported here: the engine is a layer above the stream.
        from .engine import OffloadEngine

        return OffloadEngine(self.queues, grace=grace, channel_batches=channel_batches)

    @property
    def queue_attached(self) -> bool:
        """Whether the kernel steers packets to this queue (not after :meth:`detach_queue`)."""
        return self._attached

    def detach_queue(self) -> None:
        """Stop the kernel from using this queue (Linux ``TUNSETQUEUE`` detach).

        The fd stays open and the device stays up; flows move to the other
        queues.  Packets still queued here are discarded by the kernel, reads
        find nothing and writes are refused (counted as ``tx_dropped``).
        Only for devices opened with ``queues`` > 1.
        """
        self._port.set_queue(False)
        self._attached = False

    def attach_queue(self) -> None:
        """Give a detached queue back to the kernel (``TUNSETQUEUE`` attach)."""
        self._port.set_queue(True)
        self._attached = True

    # -- closing -------------------------------------------------------

    def close(self) -> None:
        """Close the stream now (synchronous twin of :meth:`aclose`).

        Tasks blocked on this stream are woken with ``ClosedResourceError``.
        Closing the last queue of a non-persistent device deletes the device.
        """
        if self._port.closed:
            return
        try:
            self._port.close()
        finally:
            self._counters.rx_dropped += len(self._pending)
            self._pending.clear()
            if self._owns_control and self._control is not None:
                self._control.close()

    async def aclose(self) -> None:
        """Close the stream; idempotent.  Always a checkpoint."""
        self.close()
        await self._get_backend().checkpoint()


def link_queues(streams: Sequence[PacketStream]) -> None:
    """Tell each queue of one device about its siblings (for :attr:`PacketStream.queues`)."""
    queues = tuple(streams)
    for stream in queues:
        stream._queues = queues


@final
class TunStream(PacketStream):
    """A TUN (layer 3) queue: ``receive`` and ``send`` carry bare IP packets."""


@final
class TapStream(PacketStream):
    """A TAP (layer 2) queue: ``receive`` and ``send`` carry Ethernet frames."""


def make_stream(layer: Layer, port: Port, framing: Framing, **parts: Any) -> PacketStream:
    """The public face for *layer*, built from *port*, *framing* and the other parts."""
    cls = TapStream if layer is Layer.L2 else TunStream
    return cls(port, framing, layer=layer, **parts)
