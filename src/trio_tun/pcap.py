"""Packet capture: write what a stream receives and sends to a pcap file.

Open the file in Wireshark or ``tcpdump -r``::

    async with trio_tun.open_tun("vpn%d", addresses=["10.8.0.1/24"]) as dev:
        with trio_tun.pcap.capture(dev, "vpn.pcap") as dev:
            ...  # use dev as before; every packet in and out is recorded

Two pieces:

* :class:`PcapWriter` writes the classic pcap format with nanosecond
  timestamps (magic ``0xa1b23c4d``): ``LINKTYPE_RAW`` (bare IPv4/IPv6 packets)
  for TUN and ``LINKTYPE_ETHERNET`` for TAP.  It is sans-I/O apart from the
  file it writes to and knows nothing about streams.
* :func:`capture` wraps a stream in a :class:`CaptureStream`: the same packet
  API, and every packet it returns from a receive method or is given to a send
  method is also written to the file, in the order the program saw them.

Capturing costs nothing when it is not used: the stream itself is not
changed, the wrapper is a separate object, and code holding the bare stream
runs exactly the code it ran before.

Why synchronous writes are fine here: records go into an in-memory buffer
(:data:`WRITE_BUFFER` bytes); only a full buffer, a flush or closing makes a
``write()`` system call, and a ``write()`` to a regular local file copies into
the page cache and returns in microseconds.  It blocks for longer only when the
kernel throttles a writer that produces data faster than the disk takes it, and
then slowing the captured program to the disk's pace is the honest outcome
(the alternative is a capture with holes).  A pipe (``-w -`` piped into
``wireshark -k -i -``) blocks while its reader is not reading: keep the reader
running, or capture to a file.
"""

from __future__ import annotations

import io
import os
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, Any, Final, Literal

import attrs
from anyio.abc import UnreliableObjectStream

from ._config import Layer, OffloadFlags
from ._framing import Buffer
from ._stats import Statistics
from ._stream import PI_LEN, PacketStream

__all__ = [
    "DEFAULT_FLUSH_INTERVAL",
    "DEFAULT_SNAPLEN",
    "LINKTYPE_ETHERNET",
    "LINKTYPE_RAW",
    "MAGIC_NANOSECONDS",
    "CaptureStatistics",
    "CaptureStream",
    "PcapWriter",
    "capture",
    "linktype_for",
]

#: The pcap magic number that announces nanosecond timestamps.
MAGIC_NANOSECONDS: Final = 0xA1B23C4D
#: pcap format version 2.4, the only one in use.
VERSION: Final = (2, 4)
#: Bare IPv4 or IPv6 packets, told apart by their version nibble (TUN).
LINKTYPE_RAW: Final = 101
#: Ethernet frames (TAP).
LINKTYPE_ETHERNET: Final = 1
#: Bytes kept of each packet by default (libpcap's own default and maximum),
#: more than the largest super-packet a stream hands out.
DEFAULT_SNAPLEN: Final = 262144
#: The largest snaplen readers accept.
MAX_SNAPLEN: Final = 262144
#: Seconds a record may wait in the buffer before a write flushes it.
DEFAULT_FLUSH_INTERVAL: Final = 1.0
#: Size of the in-memory buffer in front of a file the writer opens itself.
WRITE_BUFFER: Final = 256 * 1024

# Little-endian on every host, so files are byte-identical everywhere; readers
# learn the byte order from the magic number.
_FILE_HEADER: Final = struct.Struct("<IHHiIII")
_RECORD_HEADER: Final = struct.Struct("<IIII")
_NS: Final = 1_000_000_000

FileLike = IO[bytes]
PathLike = str | os.PathLike[str]


def linktype_for(layer: Layer) -> int:
    """The pcap link type of *layer*'s packets: RAW for TUN, ETHERNET for TAP."""
    return LINKTYPE_ETHERNET if layer is Layer.L2 else LINKTYPE_RAW


class PcapWriter:
    """Writes packets to a classic pcap file with nanosecond timestamps.

    Args:
        file: A path (the file is created, truncated, and closed by
            :meth:`close`) or a binary file object opened for writing (flushed
            but left open by :meth:`close`; e.g. ``sys.stdout.buffer``).
        linktype: :data:`LINKTYPE_RAW` (IP packets, for TUN) or
            :data:`LINKTYPE_ETHERNET` (for TAP); any other DLT number is
            written as given.
        snaplen: Bytes kept of each packet (1 to 262144); a longer packet is
            cut, and its record still says how long it was.
        flush_interval: Flush policy.  Records are buffered; a write that
            finds the oldest unflushed record older than this many seconds
            flushes, so a reader following the file is never more than about
            that far behind while packets flow.  ``0`` flushes after every
            write (for a live pipe into Wireshark); ``None`` flushes only
            when the buffer is full, on :meth:`flush` and on :meth:`close`.

    The file header is written at once.  Not thread-safe; one event loop's
    tasks may share a writer because every write is synchronous and whole.
    """

    def __init__(
        self,
        file: PathLike | FileLike,
        *,
        linktype: int = LINKTYPE_RAW,
        snaplen: int = DEFAULT_SNAPLEN,
        flush_interval: float | None = DEFAULT_FLUSH_INTERVAL,
    ) -> None:
        if not 1 <= snaplen <= MAX_SNAPLEN:
            raise ValueError(f"snaplen must be between 1 and {MAX_SNAPLEN}, not {snaplen}")
        if not 0 <= linktype <= 0xFFFF:
            raise ValueError(f"linktype must be a 16-bit DLT number, not {linktype}")
        if flush_interval is not None and flush_interval < 0:
            raise ValueError(f"flush_interval must be >= 0 or None, not {flush_interval}")
        if isinstance(file, io.TextIOBase):
            raise TypeError("a pcap file is binary: pass a path or e.g. sys.stdout.buffer")
        self._owns_file = isinstance(file, (str, os.PathLike))
        if isinstance(file, (str, os.PathLike)):
            self._file: FileLike = open(file, "wb", buffering=WRITE_BUFFER)  # noqa: SIM115
        else:
            self._file = file
        self._linktype = linktype
        self._snaplen = snaplen
        self._flush_interval = flush_interval
        self._closed = False
        # monotonic_ns of the oldest record not flushed yet (None: all flushed).
        self._dirty_since: int | None = None
        #: Packets written so far.
        self.packets = 0
        #: Of those, how many were cut to the snaplen.
        self.truncated = 0
        #: Bytes written to the file so far, headers included.
        self.bytes_written = 0
        try:
            self._put(_FILE_HEADER.pack(MAGIC_NANOSECONDS, *VERSION, 0, 0, snaplen, linktype))
            self.flush()
        except BaseException:
            if self._owns_file:
                self._file.close()
            raise

    @property
    def linktype(self) -> int:
        return self._linktype

    @property
    def snaplen(self) -> int:
        return self._snaplen

    @property
    def closed(self) -> bool:
        return self._closed

    def _put(self, data: bytes) -> None:
        self._file.write(data)
        self.bytes_written += len(data)

    def _record(self, packet: Buffer, sec: int, nsec: int, parts: list[Buffer]) -> None:
        length = len(packet)
        parts.append(_RECORD_HEADER.pack(sec, nsec, min(length, self._snaplen), length))
        if length > self._snaplen:
            self.truncated += 1
            packet = memoryview(packet)[: self._snaplen]
        # No copy here: join() below reads any buffer.
        parts.append(packet)

    def write(self, packet: Buffer, *, timestamp_ns: int | None = None) -> None:
        """Append one packet, stamped *timestamp_ns* (ns since the epoch; default now)."""
        self.write_many((packet,), timestamp_ns=timestamp_ns)

    def write_many(self, packets: Iterable[Buffer], *, timestamp_ns: int | None = None) -> None:
        """Append several packets with one timestamp (they arrived together), in order."""
        if self._closed:
            raise ValueError("write to a closed PcapWriter")
        stamp = time.time_ns() if timestamp_ns is None else timestamp_ns
        if stamp < 0:
            raise ValueError(f"timestamp_ns must not be negative, not {stamp}")
        sec, nsec = divmod(stamp, _NS)
        parts: list[Buffer] = []
        for packet in packets:
            self._record(packet, sec, nsec, parts)
        if not parts:
            return
        self._put(b"".join(parts))
        self.packets += len(parts) // 2
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        interval = self._flush_interval
        if interval is None:
            return
        now = time.monotonic_ns()
        if self._dirty_since is None:
            self._dirty_since = now
        if now - self._dirty_since >= interval * _NS:
            self.flush()

    def flush(self) -> None:
        """Hand everything written so far to the operating system."""
        if not self._closed:
            self._file.flush()
            self._dirty_since = None

    def close(self) -> None:
        """Flush, and close the file if the writer opened it; idempotent."""
        if self._closed:
            return
        try:
            self._file.flush()
        finally:
            self._closed = True
            if self._owns_file:
                self._file.close()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@attrs.frozen
class CaptureStatistics:
    """What a :class:`CaptureStream` has written so far."""

    #: Packets recorded from the receive methods.
    received: int
    #: Packets recorded from the send methods.
    sent: int
    #: Records cut to the snaplen.
    truncated: int
    #: Bytes written to the file, headers included.
    bytes_written: int


class CaptureStream(UnreliableObjectStream[bytes]):
    """A packet stream whose traffic is also written to a pcap file.

    Made by :func:`capture`.  It has the packet API of the stream it wraps
    (:meth:`receive`, :meth:`receive_batch`, :meth:`receive_raw`, :meth:`send`,
    :meth:`send_batch`, :meth:`send_raw`, :meth:`statistics`, typed
    attributes, ``async for``), with the same cancellation semantics: a
    packet is recorded exactly when the wrapped call completed, and nothing
    awaits between the wrapped call and the record.  Device control and
    everything else stay on :attr:`stream`.

    What is recorded: the packets the receive methods return and the packets
    given to the send methods, as the program sees them (after offload
    splitting on the way in, before coalescing on the way out).  Raw frames
    are recorded once each, without the virtio-net or address-family header;
    a raw super-packet is recorded as the single large packet it is, with the
    checksum fields the kernel left partial.  The ``tun_pi`` header of
    ``packet_info=True`` streams is left out.  A packet sent but dropped by
    the kernel (counted in ``statistics().tx_dropped``) is still recorded: the
    program sent it.

    ``with capture(...) as cap:`` ends the capture when the block is left
    (the file is flushed and, if the capture opened it, closed); the stream
    stays open and the wrapper keeps passing packets through, unrecorded.
    :meth:`aclose` ends the capture and closes the stream.
    """

    def __init__(
        self, stream: PacketStream, writer: PcapWriter, *, received: bool, sent: bool
    ) -> None:
        self._stream = stream
        self._writer = writer
        self._record_received = received
        self._record_sent = sent
        self._received = 0
        self._sent = 0
        # Bytes of tun_pi / framing header in front of what the methods carry.
        self._packet_skip = PI_LEN if stream.packet_info else 0
        self._raw_skip = self._packet_skip + stream.framing.header_len

    # -- introspection -------------------------------------------------

    @property
    def stream(self) -> PacketStream:
        """The wrapped stream (device control lives there)."""
        return self._stream

    @property
    def writer(self) -> PcapWriter:
        """The :class:`PcapWriter` the packets go to."""
        return self._writer

    @property
    def capturing(self) -> bool:
        """False once :meth:`close_capture` (or leaving the ``with`` block) ended it."""
        return not self._writer.closed

    @property
    def layer(self) -> Layer:
        return self._stream.layer

    @property
    def name(self) -> str:
        return self._stream.name

    @property
    def offload(self) -> OffloadFlags:
        return self._stream.offload

    @property
    def max_packet(self) -> int:
        return self._stream.max_packet

    @property
    def closed(self) -> bool:
        return self._stream.closed

    def fileno(self) -> int:
        return self._stream.fileno()

    def statistics(self) -> Statistics:
        """The wrapped stream's counters (see :meth:`capture_statistics` for the file's)."""
        return self._stream.statistics()

    def capture_statistics(self) -> CaptureStatistics:
        """How many packets went into the file so far, each way."""
        return CaptureStatistics(
            received=self._received,
            sent=self._sent,
            truncated=self._writer.truncated,
            bytes_written=self._writer.bytes_written,
        )

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._stream.extra_attributes

    def __repr__(self) -> str:
        return f"<CaptureStream of {self._stream!r}>"

    # -- recording -----------------------------------------------------

    def _record(self, packets: Sequence[Buffer], skip: int, received: bool) -> None:
        if not packets or self._writer.closed:
            return
        if received:
            if not self._record_received:
                return
            self._received += len(packets)
        else:
            if not self._record_sent:
                return
            self._sent += len(packets)
        if skip:
            self._writer.write_many([memoryview(p)[skip:] for p in packets])
        else:
            self._writer.write_many(packets)

    # -- the packet API ------------------------------------------------

    async def receive(self) -> bytes:
        """:meth:`PacketStream.receive <trio_tun.PacketStream.receive>`, recorded."""
        packet = await self._stream.receive()
        self._record((packet,), self._packet_skip, True)
        return packet

    async def receive_batch(self, max_packets: int | None = None) -> list[bytes]:
        """:meth:`PacketStream.receive_batch <trio_tun.PacketStream.receive_batch>`, recorded."""
        packets = await self._stream.receive_batch(max_packets)
        self._record(packets, self._packet_skip, True)
        return packets

    async def receive_raw(self) -> bytes:
        """:meth:`PacketStream.receive_raw <trio_tun.PacketStream.receive_raw>`, recorded."""
        frame = await self._stream.receive_raw()
        self._record((frame,), self._raw_skip, True)
        return frame

    async def send(self, item: Buffer) -> None:
        """:meth:`PacketStream.send <trio_tun.PacketStream.send>`, recorded once sent."""
        await self._stream.send(item)
        self._record((item,), self._packet_skip, False)

    async def send_batch(self, packets: Iterable[Buffer]) -> None:
        """:meth:`PacketStream.send_batch <trio_tun.PacketStream.send_batch>`, recorded.

        If cancelled while waiting for room, the prefix of the batch the
        stream handled (written or dropped, by its counters) is recorded.
        """
        batch = list(packets)
        counters = self._stream.counters
        before = counters.tx_packets + counters.tx_dropped
        try:
            await self._stream.send_batch(batch)
        except BaseException:
            done = counters.tx_packets + counters.tx_dropped - before
            self._record(batch[: max(0, min(done, len(batch)))], self._packet_skip, False)
            raise
        self._record(batch, self._packet_skip, False)

    async def send_raw(self, frame: Buffer) -> None:
        """:meth:`PacketStream.send_raw <trio_tun.PacketStream.send_raw>`, recorded once sent."""
        await self._stream.send_raw(frame)
        self._record((frame,), self._raw_skip, False)

    # -- closing -------------------------------------------------------

    def close_capture(self) -> None:
        """End the capture (flush; close the file if the capture opened it); idempotent.

        The stream stays open; packets keep passing through, unrecorded.
        """
        self._writer.close()

    def __enter__(self) -> CaptureStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close_capture()

    async def aclose(self) -> None:
        """End the capture and close the stream."""
        try:
            self.close_capture()
        finally:
            await self._stream.aclose()


def capture(
    stream: PacketStream,
    file: PathLike | FileLike,
    *,
    snaplen: int = DEFAULT_SNAPLEN,
    flush_interval: float | None = DEFAULT_FLUSH_INTERVAL,
    direction: Literal["both", "received", "sent"] = "both",
) -> CaptureStream:
    """Wrap *stream* so that the packets it receives and sends go to a pcap file too.

    Use the returned :class:`CaptureStream` in place of *stream*.  The link
    type follows the stream: ``LINKTYPE_RAW`` for TUN, ``LINKTYPE_ETHERNET``
    for TAP.

    Args:
        stream: A stream from :func:`~trio_tun.open_tun`, :func:`~trio_tun.open_tap`,
            :func:`~trio_tun.from_fd` or :func:`~trio_tun.testing.memory_tun_pair`.
        file: A path (created or truncated) or a binary file object.
        snaplen: Bytes kept of each packet; see :class:`PcapWriter`.
        flush_interval: The flush policy; see :class:`PcapWriter`.
        direction: Record ``"both"`` directions, or only what is ``"received"``
            or ``"sent"``.

    Classic pcap has no direction field: tell the directions apart by the
    addresses, or capture each direction to its own file.
    """
    if direction not in ("both", "received", "sent"):
        raise ValueError(f"direction must be 'both', 'received' or 'sent', not {direction!r}")
    writer = PcapWriter(
        file,
        linktype=linktype_for(stream.layer),
        snaplen=snaplen,
        flush_interval=flush_interval,
    )
    return CaptureStream(stream, writer, received=direction != "sent", sent=direction != "received")
