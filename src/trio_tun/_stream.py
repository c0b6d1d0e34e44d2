"""TunStream / TapStream: one queue fd of a device as a packet stream.

Fd ownership, close semantics and misuse errors follow ``trio.lowlevel.FdStream``:

* the fd is non-blocking and ours to close (unless borrowed);
* ``aclose()`` wakes any task blocked on the fd with ``ClosedResourceError``;
* the device vanishing underneath turns into ``BrokenResourceError``;
* two tasks receiving (or sending) at once get ``BusyResourceError``.

Cancellation safety: every read happens only after readiness, with no
checkpoint between the read and the return, so a cancelled ``receive`` never
loses a packet; a TUN write is atomic, so a cancelled ``send`` wrote the whole
packet or nothing.

Throughput: a Trio checkpoint is a trip through the scheduler.  Every call of
every receive/send method checks for cancellation, but only *yields* to the
scheduler every ``SCHEDULE_EVERY`` calls or whenever it had to wait for the fd;
the ``*_batch`` methods move many packets per call on top of that.
"""

from __future__ import annotations

import errno
import os
import struct
import sys
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final

import anyio
import sniffio
import trio
from anyio import TypedAttributeSet, typed_attribute
from anyio.abc import UnreliableObjectStream

from . import offload as _offload
from ._config import Layer
from ._device import DeviceControlMixin
from ._errors import BrokenResourceError, BusyResourceError, ClosedResourceError
from ._netlink import DeviceControl
from ._stats import Counters, Statistics
from ._wait import Backend, current_backend
from .offload.errors import MalformedPacket
from .offload.virtio import GSO_NONE, VIRTIO_NET_HDR_LEN, ZERO_HDR
from .platform import linux
from .platform._fdio import get_blocking, readv, set_blocking, writev
from .platform.linux import NO_OFFLOAD, OffloadFlags

if TYPE_CHECKING:
    from .engine import OffloadEngine

#: Calls of receive()/send() between two real scheduler yields when no waiting was needed.
SCHEDULE_EVERY: Final = 32
#: Reads one receive_batch() does at most by default.
DEFAULT_BATCH: Final = 64
#: Largest IP packet; a TUN read never brings more (plus headers).
MAX_PACKET: Final = 65535
#: An Ethernet header on top, for TAP.
MAX_FRAME: Final = MAX_PACKET + 14
PI_LEN: Final = 4

# errno values with which a read/write says the device is gone for good.
if sys.platform == "linux":
    _BROKEN_ERRNOS: Final = frozenset({errno.EBADFD, errno.ENODEV, errno.ENXIO, errno.EPIPE})
else:  # EBADFD is Linux's own; the BSDs and macOS report ENXIO, ENODEV or EPIPE
    _BROKEN_ERRNOS: Final = frozenset({errno.ENODEV, errno.ENXIO, errno.EPIPE})
# errno values with which a write says "this packet was refused", not "the device is gone".
_DROP_ERRNOS: Final = frozenset({errno.EINVAL, errno.EIO, errno.ENOBUFS, errno.EMSGSIZE})
_VNET_HDR: Final = struct.Struct("=BBHHHH")
_WOULD_BLOCK: Final = -1
_REFUSED: Final = -2


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
    #: The queue's file descriptor.
    fileno: int = typed_attribute()


class _Guard:
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


class PacketStream(DeviceControlMixin, UnreliableObjectStream[bytes]):
    """Base of :class:`TunStream` and :class:`TapStream`: a datagram stream over one fd.

    Not instantiated directly: use :func:`trio_tun.open_tun`, :func:`trio_tun.open_tap`
    or :func:`trio_tun.from_fd`.
    """

    layer: ClassVar[Layer]

    def __init__(
        self,
        fd: int,
        *,
        owned: bool = True,
        offload: OffloadFlags = NO_OFFLOAD,
        vnet_hdr: bool = False,
        packet_info: bool = False,
        control: DeviceControl | None = None,
        owns_control: bool = False,
    ) -> None:
        self._fd = fd
        self._owned = owned
        self._original_blocking = get_blocking(fd)
        set_blocking(fd, False)
        self._vnet_hdr = vnet_hdr
        self._offload = offload
        self._packet_info = packet_info
        self._control = control
        self._owns_control = owns_control
        self._queues: list[PacketStream] = [self]
        self._backend: Backend | None = None
        self._receive_guard = _Guard("receiving")
        self._send_guard = _Guard("sending")
        self._receive_budget = 0
        self._send_budget = 0
        self._pending: deque[bytes] = deque()
        self._counters = Counters()
        self._coalesce = offload.enabled
        self._refused_errno = 0
        self._attached = True
        limit = MAX_FRAME if self.layer is Layer.L2 else MAX_PACKET
        self._max_packet = limit
        extra = (VIRTIO_NET_HDR_LEN if vnet_hdr else 0) + (PI_LEN if packet_info else 0)
        self._read_buffer = bytearray(limit + extra)
        self._read_view = memoryview(self._read_buffer)

    # -- introspection -------------------------------------------------

    def fileno(self) -> int:
        """The queue's file descriptor (-1 once closed)."""
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    @property
    def offload(self) -> OffloadFlags:
        """The offload features negotiated with the kernel (``none`` when off)."""
        return self._offload

    @property
    def vnet_hdr(self) -> bool:
        """Whether raw reads/writes on this fd carry a 10-byte virtio-net header."""
        return self._vnet_hdr

    def statistics(self) -> Statistics:
        """Counters kept by trio-tun for this stream (see :class:`Statistics`)."""
        return self._counters.snapshot()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        attrs: dict[Any, Callable[[], Any]] = {
            TunAttribute.layer: lambda: self.layer,
            TunAttribute.offload: lambda: self._offload,
            TunAttribute.fileno: lambda: self._fd,
        }
        if self._control is not None:
            attrs[TunAttribute.name] = lambda: self.name
            attrs[TunAttribute.index] = lambda: self.index
            attrs[TunAttribute.mtu] = lambda: self.mtu
        return attrs

    @property
    def queues(self) -> tuple[PacketStream, ...]:
        """Every queue of the device, this one first (one entry unless ``queues=N``)."""
        return tuple(self._queues)

    # -- plumbing ------------------------------------------------------

    def _get_backend(self) -> Backend:
        backend = self._backend
        if backend is None:
            backend = self._backend = current_backend()
        return backend

    def _check_open(self) -> int:
        fd = self._fd
        if fd < 0:
            raise ClosedResourceError("this stream was closed")
        return fd

    def _io_error(self, exc: OSError, doing: str) -> Exception:
        if self._fd < 0 or exc.errno == errno.EBADF:
            return ClosedResourceError("this stream was closed")
        if exc.errno in _BROKEN_ERRNOS:
            return BrokenResourceError(
                f"{doing} failed: the device is gone ({os.strerror(exc.errno or 0)})"
            )
        return exc

    async def _wait(self, readable: bool) -> None:
        backend = self._get_backend()
        fd = self._check_open()
        try:
            if readable:
                await backend.wait_readable(fd)
            else:
                await backend.wait_writable(fd)
        except (trio.ClosedResourceError, anyio.ClosedResourceError):
            raise ClosedResourceError("another task closed this stream") from None
        # Waiting went through the scheduler: the amortised yield is paid.
        if readable:
            self._receive_budget = SCHEDULE_EVERY
        else:
            self._send_budget = SCHEDULE_EVERY

    async def _entry_checkpoint(self, receiving: bool) -> None:
        backend = self._get_backend()
        if receiving:
            self._receive_budget -= 1
            budget = self._receive_budget
        else:
            self._send_budget -= 1
            budget = self._send_budget
        if budget > 0:
            await backend.checkpoint_if_cancelled()
            return
        if receiving:
            self._receive_budget = SCHEDULE_EVERY
        else:
            self._send_budget = SCHEDULE_EVERY
        await backend.checkpoint()

    # -- reading -------------------------------------------------------

    def _read_once(self) -> int:
        """One non-blocking read into the buffer: its length, or -1 when nothing is queued."""
        fd = self._check_open()
        try:
            n = readv(fd, [self._read_buffer])
        except BlockingIOError:
            return -1
        except OSError as exc:
            raise self._io_error(exc, "reading") from None
        if n == 0:
            # A TUN fd never reads empty; a socket handed to from_fd does when
            # its peer has gone, and would otherwise read 0 forever.
            raise anyio.EndOfStream
        counters = self._counters
        counters.reads += 1
        counters.read_bytes += n
        return n

    def _decode(self, n: int) -> None:
        """Turn the n bytes just read into packets on the pending queue."""
        view = self._read_view
        if self._vnet_hdr:
            if n <= VIRTIO_NET_HDR_LEN:
                self._counters.rx_malformed += 1
                return
            # flags and gso_type both zero: a plain packet, nothing to do.
            if view[0] == 0 and view[1] == GSO_NONE:
                self._pending.append(bytes(view[VIRTIO_NET_HDR_LEN:n]))
                return
            try:
                self._pending.extend(_offload.split_with_header(view[:n]))
            except MalformedPacket:
                self._counters.rx_malformed += 1
            return
        self._pending.append(bytes(view[:n]))

    def _fill(self, wanted: int) -> None:
        """Read until *wanted* packets are pending or the kernel queue is empty."""
        pending = self._pending
        while len(pending) < wanted:
            n = self._read_once()
            if n < 0:
                return
            self._decode(n)

    def _fill_reads(self, reads: int) -> None:
        """Do up to *reads* reads, stopping early when the kernel queue is empty."""
        for _ in range(reads):
            n = self._read_once()
            if n < 0:
                return
            self._decode(n)

    def _take(self, count: int) -> list[bytes]:
        pending = self._pending
        if count >= len(pending):
            # The common case (whole reads): one C-level copy, no per-item pops.
            out = list(pending)
            pending.clear()
            count = len(out)
        else:
            out = [pending.popleft() for _ in range(count)]
        counters = self._counters
        counters.rx_packets += count
        counters.rx_bytes += sum(map(len, out))
        return out

    async def receive(self) -> bytes:
        """Receive one packet (an IP packet for TUN, an Ethernet frame for TAP).

        With offload on, a super-packet read from the kernel is split and its
        segments are returned one per call.

        Raises:
            ClosedResourceError: the stream was closed.
            BrokenResourceError: the device was deleted.
            BusyResourceError: another task is receiving on this stream.
            anyio.EndOfStream: only for a socket wrapped with :func:`from_fd`
                whose peer has closed; a TUN device never ends.
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

        Waits for the first packet, then takes whatever else the kernel has
        queued.  With *max_packets* the batch holds at most that many packets;
        segments of a super-packet that do not fit stay queued for the next
        call, none are lost.  By default (``None``) the batch is the packets of
        up to ``DEFAULT_BATCH`` (64) whole reads: with offload on, every
        super-packet's segments then stay together, so a forwarder's
        :meth:`send_batch` can coalesce them back into one write.
        """
        if max_packets is not None and max_packets < 1:
            raise ValueError(f"max_packets must be at least 1, not {max_packets}")
        with self._receive_guard:
            await self._entry_checkpoint(True)
            while True:
                if max_packets is None:
                    self._fill_reads(DEFAULT_BATCH)
                    count = len(self._pending)
                else:
                    self._fill(max_packets)
                    count = max_packets
                if self._pending:
                    return self._take(count)
                await self._wait(readable=True)

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
                fd = self._check_open()
                try:
                    # os.read lands the frame straight in its bytes object: no
                    # second copy out of our read buffer on this hot path.
                    frame = os.read(fd, size)
                except BlockingIOError:
                    await self._wait(readable=True)
                    continue
                except OSError as exc:
                    raise self._io_error(exc, "reading") from None
                n = len(frame)
                if n == 0:
                    raise anyio.EndOfStream
                counters = self._counters
                counters.reads += 1
                counters.read_bytes += n
                counters.rx_packets += 1
                counters.rx_bytes += n
                return frame

    # -- writing -------------------------------------------------------

    def _check_packet(self, packet: bytes | bytearray | memoryview) -> int:
        size = len(packet)
        if size == 0:
            raise ValueError("can't send an empty packet")
        if size > self._max_packet:
            raise ValueError(
                f"packet of {size} bytes is larger than the {self._max_packet}-byte limit "
                f"of a {self.layer.value.upper()} device"
            )
        return size

    def _write_once(self, buffers: Sequence[bytes | bytearray | memoryview]) -> int:
        """One write: bytes written, _WOULD_BLOCK, or _REFUSED (errno in ``_refused_errno``)."""
        fd = self._check_open()
        try:
            n = writev(fd, buffers)
        except BlockingIOError:
            return _WOULD_BLOCK
        except OSError as exc:
            if exc.errno in _DROP_ERRNOS:
                self._refused_errno = exc.errno or 0
                return _REFUSED
            raise self._io_error(exc, "writing") from None
        self._counters.writes += 1
        self._counters.write_bytes += n
        return n

    async def _write(self, buffers: Sequence[bytes | bytearray | memoryview]) -> int:
        """Write *buffers* as one datagram, waiting for room; returns the write's result."""
        while True:
            n = self._write_once(buffers)
            if n != _WOULD_BLOCK:
                return n
            await self._wait(readable=False)

    def _sent(self, n: int, packets: int) -> None:
        counters = self._counters
        counters.tx_packets += packets
        counters.tx_bytes += n

    async def _send_plain(self, packet: bytes | bytearray | memoryview) -> None:
        buffers: list[bytes | bytearray | memoryview]
        if self._vnet_hdr:
            buffers = [ZERO_HDR, packet]
            n = await self._write(buffers)
            if n >= 0:
                self._sent(n - VIRTIO_NET_HDR_LEN, 1)
                return
        else:
            n = await self._write([packet])
            if n >= 0:
                self._sent(n, 1)
                return
        self._counters.tx_dropped += 1

    async def send(self, item: bytes | bytearray | memoryview) -> None:
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
            await self._send_plain(item)

    async def send_batch(self, packets: Iterable[bytes | bytearray | memoryview]) -> None:
        """Send several packets for the price of one checkpoint.

        With offload on, consecutive segments of a flow are coalesced into
        super-packets first, so the kernel gets fewer, larger writes.  Each
        packet is written whole or not at all; if cancelled while waiting for
        room, a prefix of the batch has been written.
        """
        batch = list(packets)
        for packet in batch:
            self._check_packet(packet)
        with self._send_guard:
            await self._entry_checkpoint(False)
            if not batch:
                return
            if self._coalesce and len(batch) > 1:
                await self._send_coalesced(batch)
                return
            for packet in batch:
                await self._send_plain(packet)

    async def _send_coalesced(self, batch: list[bytes | bytearray | memoryview]) -> None:
        try:
            frames = _offload.coalesce(batch, uso=self._offload.uso)
        except MalformedPacket:
            # Something in the batch is not an IP packet the kernel could take;
            # find it the slow way so the rest still coalesces.
            table = _offload.GroTable(uso=self._offload.uso)
            for packet in batch:
                try:
                    table.add(packet)
                except MalformedPacket:
                    self._counters.tx_dropped += 1
            frames = table.flush()
        for frame in frames:
            await self._send_frame(frame)

    async def _send_frame(self, frame: bytes) -> None:
        """Write one virtio-header frame from the GRO table."""
        # The header fields straight from the bytes: building a VirtioNetHdr per
        # write is measurable on this path.
        _, gso_type, hdr_len, gso_size, _, _ = _VNET_HDR.unpack_from(frame)
        segments = 1
        if gso_type != GSO_NONE and gso_size:
            payload = len(frame) - VIRTIO_NET_HDR_LEN - hdr_len
            segments = max(1, -(-payload // gso_size))
        n = await self._write((frame,))
        if n >= 0:
            self._sent(n - VIRTIO_NET_HDR_LEN, segments)
            if segments > 1:
                self._counters.tx_coalesced += 1
            return
        if segments > 1 and self._refused_errno == errno.EINVAL:
            # Some kernels refuse coalesced writes (e.g. a short last segment):
            # stop coalescing on this device and resend this one split up.
            self._coalesce = False
            self._counters.tx_coalesce_fallbacks += 1
            try:
                parts = _offload.split_with_header(frame)
            except MalformedPacket:
                self._counters.tx_dropped += segments
                return
            for part in parts:
                await self._send_plain(part)
            return
        self._counters.tx_dropped += segments

    async def send_raw(self, frame: bytes | bytearray | memoryview) -> None:
        """Write one frame exactly as given (with its virtio header when offload is on)."""
        if len(frame) == 0:
            raise ValueError("can't send an empty frame")
        # Fix (issue 7, tests/test_security.py): an oversized frame used to go
        # to the kernel and come back as a silent drop; like send(), say so.
        # The limit is one read's worth: the largest packet plus the headers.
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
                self._sent(n, 1)
            else:
                self._counters.tx_dropped += 1

    # -- multi-queue ---------------------------------------------------

    def engine(
        self, *, grace: float | None = None, channel_batches: int | None = None
    ) -> OffloadEngine:
        """An :class:`~trio_tun.engine.OffloadEngine` over every queue of this device.

        Use it as ``async with dev.engine() as engine:``.
        """
        from .engine import DEFAULT_CHANNEL_BATCHES, DEFAULT_GRACE, OffloadEngine

        return OffloadEngine(
            self.queues,
            grace=DEFAULT_GRACE if grace is None else grace,
            channel_batches=DEFAULT_CHANNEL_BATCHES if channel_batches is None else channel_batches,
        )

    @property
    def queue_attached(self) -> bool:
        """False after :meth:`detach_queue`: the kernel steers no packets here."""
        return self._attached

    def detach_queue(self) -> None:
        """Stop the kernel from using this queue (``TUNSETQUEUE`` detach).

        The fd stays open and the device stays up; flows move to the other
        queues.  Packets still queued here are discarded by the kernel, reads
        find nothing and writes are refused (counted as ``tx_dropped``).
        Only for devices opened with ``queues`` > 1.
        """
        linux.set_queue(self._check_open(), attach=False)
        self._attached = False

    def attach_queue(self) -> None:
        """Give a detached queue back to the kernel (``TUNSETQUEUE`` attach)."""
        linux.set_queue(self._check_open(), attach=True)
        self._attached = True

    # -- closing -------------------------------------------------------

    def close(self) -> None:
        """Close the fd now (synchronous twin of :meth:`aclose`).

        Tasks blocked on this stream are woken with ``ClosedResourceError``.
        Closing the last fd of a non-persistent device deletes the device.
        """
        fd = self._fd
        if fd < 0:
            return
        self._fd = -1
        try:
            _notify_closing(fd)
        finally:
            if self._owned:
                os.close(fd)
            else:
                set_blocking(fd, self._original_blocking)
            self._counters.rx_dropped += len(self._pending)
            self._pending.clear()
            if self._owns_control and self._control is not None:
                self._control.close()

    async def aclose(self) -> None:
        """Close the stream; idempotent.  Always a checkpoint."""
        self.close()
        await self._get_backend().checkpoint()

    def __del__(self) -> None:
        # An owned fd must not outlive its stream; tasks can't be waiting on it
        # any more if the stream is garbage.
        fd = getattr(self, "_fd", -1)
        if fd >= 0 and getattr(self, "_owned", False):
            self._fd = -1
            os.close(fd)


def _notify_closing(fd: int) -> None:
    """Wake tasks blocked on *fd* before it is closed, if an event loop is running."""
    try:
        backend = current_backend()
    except sniffio.AsyncLibraryNotFoundError:
        # Closing from synchronous code (e.g. after trio.run returned): no task
        # can be waiting on the fd, and the loop's registration died with it.
        return
    backend.notify_closing(fd)


class TunStream(PacketStream):
    """A TUN (layer 3) queue: ``receive`` and ``send`` carry bare IP packets."""

    layer = Layer.L3


class TapStream(PacketStream):
    """A TAP (layer 2) queue: ``receive`` and ``send`` carry Ethernet frames."""

    layer = Layer.L2
