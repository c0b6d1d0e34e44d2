"""Framings: how one read or write on a port maps to IP packets (or Ethernet frames).

A framing is sans I/O.  The stream reads a frame from its port and asks the
framing for the packets in it; it asks the framing for the buffers to write for
a packet.  Three framings exist:

* :class:`PlainFraming`: a frame is one packet (Linux without offload, TAP,
  Android's ``VpnService``, wintun).
* :class:`VirtioFraming`: a 10-byte virtio-net header, then a packet that may be
  a 64 KiB super-packet to split into segments; sends coalesce segments back
  (Linux ``IFF_VNET_HDR``).
* :class:`AfFraming`: a 4-byte big-endian address family, then the packet
  (macOS/iOS utun, the BSDs' tun in ``TUNSIFHEAD`` mode).

The AF header's family is the kernel's own ``AF_INET``/``AF_INET6`` number, and
``AF_INET6`` differs between systems (30 on Darwin, 28 on FreeBSD, 24 on OpenBSD
and NetBSD), so :class:`AfFraming` is parametrised by an :class:`AfFamilies`.
Anything that does not fit (too short, unknown family, family and version
disagreeing, a bogus virtio header) is reported as malformed so that the
stream drops and counts it; a framing never raises on bad input.
"""

from __future__ import annotations

import socket
import struct
import sys
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Final, Protocol

import attrs

from . import offload as _offload
from .offload.errors import MalformedPacket
from .offload.virtio import GSO_NONE, VIRTIO_NET_HDR_LEN, ZERO_HDR

Buffer = bytes | bytearray | memoryview


# The compiled run-at-a-time helpers, used while trio_tun.offload is the
# compiled one (split_with_header not replaced, as the tests' pure runs do).
_compiled_split: object = None
_split_frames: Callable[[memoryview, list[int]], tuple[list[bytes], int]] | None = None
_frame_segments: Callable[[Sequence[bytes], int, int], tuple[int, int]] | None = None
if _offload.implementation == "speedups":
    from .offload import _speedups

    _compiled_split = _speedups.split_with_header
    _split_frames = _speedups.split_frames
    _frame_segments = _speedups.frame_segments


def fitting(packets: Iterable[Buffer], limit: int) -> list[Buffer]:
    """The packets a device with *limit*-byte packets takes: 1 to *limit* bytes, in order.

    For callers that drop (and count) the rest, where
    :meth:`~trio_tun.PacketStream.send_batch` would refuse the whole batch.
    """
    return [p for p in packets if 0 < len(p) <= limit]


#: Bytes in the AF header.
AF_HEADER_LEN: Final = 4
#: ``AF_INET`` is 2 on every system concerned.
AF_INET: Final = 2
_AF_HEADER: Final = struct.Struct("!I")
_VNET_HDR: Final = struct.Struct("=BBHHHH")


class Framing(Protocol):
    """What :class:`~trio_tun.PacketStream` needs from a framing."""

    #: Bytes a frame carries in front of its packet.
    header_len: int
    #: Whether :meth:`coalesce` is worth calling for a batch (virtio with TSO).
    coalescing: bool

    def unpack(self, frame: memoryview, out: deque[bytes]) -> bool:
        """Append the packets in *frame* to *out*; False if *frame* is malformed."""
        ...

    def unpack_run(self, frames: memoryview, lengths: list[int], out: deque[bytes]) -> int:
        """:meth:`unpack` each frame of a run packed one after another in *frames*
        (their *lengths* in order); returns how many were malformed."""
        ...

    def count_segments(self, frames: Sequence[bytes], start: int, end: int) -> tuple[int, int]:
        """(packets, frames carrying more than one) in ``frames[start:end]``, made
        by :meth:`coalesce`."""
        ...

    def pack(self, packet: Buffer) -> Sequence[Buffer] | None:
        """The buffers that write *packet* as one frame; ``None`` if it can't be sent."""
        ...

    def coalesce(self, batch: list[Buffer]) -> tuple[list[bytes], int]:
        """Frames carrying *batch* (consecutive segments merged), and how many were refused."""
        ...

    def segments(self, frame: bytes) -> int:
        """How many packets a frame made by :meth:`coalesce` carries."""
        ...

    def split(self, frame: bytes) -> list[bytes] | None:
        """A coalesced frame as single-packet frames again (``None`` if malformed)."""
        ...


def unpack_each(
    unpack: Callable[[memoryview, deque[bytes]], bool],
    frames: memoryview,
    lengths: list[int],
    out: deque[bytes],
) -> int:
    """``Framing.unpack_run`` one frame at a time with *unpack*."""
    malformed = offset = 0
    for n in lengths:
        if not unpack(frames[offset : offset + n], out):
            malformed += 1
        offset += n
    return malformed


class _OneToOne:
    """The part shared by framings in which a frame always holds exactly one packet."""

    coalescing = False

    def unpack(self, frame: memoryview, out: deque[bytes]) -> bool:
        raise NotImplementedError

    def unpack_run(self, frames: memoryview, lengths: list[int], out: deque[bytes]) -> int:
        return unpack_each(self.unpack, frames, lengths, out)

    def count_segments(self, frames: Sequence[bytes], start: int, end: int) -> tuple[int, int]:
        return end - start, 0

    def coalesce(self, batch: list[Buffer]) -> tuple[list[bytes], int]:
        raise NotImplementedError("this framing never coalesces")

    def segments(self, frame: bytes) -> int:
        return 1

    def split(self, frame: bytes) -> list[bytes] | None:
        return [frame]


class PlainFraming(_OneToOne):
    """One frame, one packet, nothing in front (with ``packet_info`` the packet keeps
    the kernel's 4-byte ``tun_pi`` header, which is the application's to read)."""

    header_len = 0

    def unpack(self, frame: memoryview, out: deque[bytes]) -> bool:
        out.append(bytes(frame))
        return True

    def pack(self, packet: Buffer) -> Sequence[Buffer] | None:
        return (packet,)


class VirtioFraming:
    """Linux's virtio-net header: receive splits super-packets, send coalesces batches."""

    header_len = VIRTIO_NET_HDR_LEN

    def __init__(self, *, coalescing: bool, uso: bool) -> None:
        #: Turned off for good when the kernel refuses a coalesced write (EINVAL).
        self.coalescing = coalescing
        self._uso = uso

    def unpack(self, frame: memoryview, out: deque[bytes]) -> bool:
        if len(frame) <= VIRTIO_NET_HDR_LEN:
            return False
        # flags and gso_type both zero: a plain packet, nothing to do.
        if frame[0] == 0 and frame[1] == GSO_NONE:
            out.append(bytes(frame[VIRTIO_NET_HDR_LEN:]))
            return True
        try:
            out.extend(_offload.split_with_header(frame))
        except MalformedPacket:
            return False
        return True

    def pack(self, packet: Buffer) -> Sequence[Buffer] | None:
        return (ZERO_HDR, packet)

    def coalesce(self, batch: list[Buffer]) -> tuple[list[bytes], int]:
        try:
            return _offload.coalesce(batch, uso=self._uso), 0
        except MalformedPacket:
            pass
        # Something in the batch is not an IP packet the kernel could take:
        # find it the slow way so that the rest still coalesces.
        table = _offload.GroTable(uso=self._uso)
        refused = 0
        for packet in batch:
            try:
                table.add(packet)
            except MalformedPacket:
                refused += 1
        return table.flush(), refused

    def unpack_run(self, frames: memoryview, lengths: list[int], out: deque[bytes]) -> int:
        if _split_frames is None or _offload.split_with_header is not _compiled_split:
            # The pure-Python offload (or a stand-in for it): frame by frame.
            return unpack_each(self.unpack, frames, lengths, out)
        # The whole run in one call: a frame at a time cost about a
        # microsecond of Python each, and a run of ACKs has up to 64.
        packets, malformed = _split_frames(frames, lengths)
        out.extend(packets)
        return malformed

    def count_segments(self, frames: Sequence[bytes], start: int, end: int) -> tuple[int, int]:
        if _frame_segments is not None:
            return _frame_segments(frames, start, end)
        packets = coalesced = 0
        for i in range(start, end):
            n = self.segments(frames[i])
            packets += n
            coalesced += n > 1
        return packets, coalesced

    def segments(self, frame: bytes) -> int:
        # Straight from the bytes: building a VirtioNetHdr per write is
        # measurable on this path.
        _, gso_type, hdr_len, gso_size, _, _ = _VNET_HDR.unpack_from(frame)
        if gso_type == GSO_NONE or not gso_size:
            return 1
        payload: int = len(frame) - VIRTIO_NET_HDR_LEN - hdr_len
        return max(1, -(-payload // int(gso_size)))

    def split(self, frame: bytes) -> list[bytes] | None:
        try:
            return _offload.split_with_header(frame)
        except MalformedPacket:
            return None


@attrs.frozen
class AfFamilies:
    """How one kernel numbers the two address families in the AF header."""

    #: Which system this numbering belongs to (for messages).
    platform: str
    #: The kernel's ``AF_INET6``.
    inet6: int
    #: The kernel's ``AF_INET``.
    inet: int = AF_INET


#: xnu ``<sys/socket.h>``: ``AF_INET6 30`` (macOS and iOS).
DARWIN: Final = AfFamilies("darwin", 30)
#: FreeBSD ``<sys/socket.h>``: ``AF_INET6 28``.
FREEBSD: Final = AfFamilies("freebsd", 28)
#: OpenBSD ``<sys/socket.h>``: ``AF_INET6 24``.
OPENBSD: Final = AfFamilies("openbsd", 24)
#: NetBSD ``<sys/socket.h>``: ``AF_INET6 24``.
NETBSD: Final = AfFamilies("netbsd", 24)
#: The running system's numbering: an fd always comes from the local kernel.
HOST: Final = AfFamilies(sys.platform, int(socket.AF_INET6))


class AfFraming(_OneToOne):
    """Adds and strips the AF header for one numbering; the headers are built once."""

    header_len = AF_HEADER_LEN

    def __init__(self, families: AfFamilies = HOST) -> None:
        self.families = families
        self._inet = families.inet
        self._inet6 = families.inet6
        self.v4_header = _AF_HEADER.pack(families.inet)
        self.v6_header = _AF_HEADER.pack(families.inet6)

    def header_for(self, packet: Buffer) -> bytes | None:
        """The header to send *packet* with, from its version nibble; ``None`` if not IP."""
        if not packet:
            return None
        version = packet[0] >> 4
        if version == 4:
            return self.v4_header
        if version == 6:
            return self.v6_header
        return None

    def strip(self, frame: Buffer) -> memoryview | None:
        """The IP packet inside one frame, or ``None`` when the frame is malformed."""
        if len(frame) <= AF_HEADER_LEN:
            return None
        family = _AF_HEADER.unpack_from(frame)[0]
        version = frame[AF_HEADER_LEN] >> 4
        if family == self._inet:
            if version != 4:
                return None
        elif family == self._inet6:
            if version != 6:
                return None
        else:
            return None
        return memoryview(frame)[AF_HEADER_LEN:]

    def unpack(self, frame: memoryview, out: deque[bytes]) -> bool:
        packet = self.strip(frame)
        if packet is None:
            return False
        out.append(bytes(packet))
        return True

    def pack(self, packet: Buffer) -> Sequence[Buffer] | None:
        # Not IPv4 or IPv6: the kernel would refuse it (Linux says EINVAL).
        header = self.header_for(packet)
        return None if header is None else (header, packet)

    def encode(self, packet: Buffer) -> bytes | None:
        """Header and packet as one frame (``None`` if *packet* is not IPv4/IPv6)."""
        header = self.header_for(packet)
        return None if header is None else header + bytes(packet)

    def decode(self, frame: Buffer) -> bytes | None:
        """The packet of one frame as bytes (``None`` if malformed)."""
        packet = self.strip(frame)
        return None if packet is None else bytes(packet)
