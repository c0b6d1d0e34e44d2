"""The 4-byte address-family header of BSD and macOS TUN devices, sans I/O.

macOS utun sockets, FreeBSD/NetBSD ``/dev/tun`` in ``TUNSIFHEAD`` mode,
OpenBSD ``/dev/tun`` always, and the utun fd an iOS packet tunnel provider
holds, put a 32-bit big-endian address family in front of every IP packet.
The family is the kernel's own ``AF_INET``/``AF_INET6`` number, and
``AF_INET6`` differs between systems (30 on Darwin, 28 on FreeBSD, 24 on
OpenBSD and NetBSD), so framing is parametrised by the numbering.

Receiving strips the header and checks it against the packet's IP version
nibble; sending derives the header from that nibble.  Anything that does not
fit (too short, unknown family, family and version disagreeing) is refused
with ``None`` so the caller can drop it and count it, never raise.
"""

from __future__ import annotations

import socket
import struct
import sys
from typing import Final

import attrs

#: Bytes in the header.
AF_HEADER_LEN: Final = 4
#: ``AF_INET`` is 2 on every system concerned.
AF_INET: Final = 2
_HEADER: Final = struct.Struct("!I")


@attrs.frozen
class AfFamilies:
    """How one kernel numbers the two address families in the header."""

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


class AfFraming:
    """Adds and strips the header for one numbering; the headers are built once."""

    __slots__ = ("_inet", "_inet6", "families", "v4_header", "v6_header")

    def __init__(self, families: AfFamilies) -> None:
        self.families = families
        self._inet = families.inet
        self._inet6 = families.inet6
        self.v4_header = _HEADER.pack(families.inet)
        self.v6_header = _HEADER.pack(families.inet6)

    def header_for(self, packet: bytes | bytearray | memoryview) -> bytes | None:
        """The header to send *packet* with, from its version nibble; ``None`` if not IP."""
        if not packet:
            return None
        version = packet[0] >> 4
        if version == 4:
            return self.v4_header
        if version == 6:
            return self.v6_header
        return None

    def strip(self, frame: bytes | bytearray | memoryview) -> memoryview | None:
        """The IP packet inside one read, or ``None`` when the frame is malformed."""
        if len(frame) <= AF_HEADER_LEN:
            return None
        family = _HEADER.unpack_from(frame)[0]
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

    def encode(self, packet: bytes | bytearray | memoryview) -> bytes | None:
        """Header and packet as one frame (``None`` if *packet* is not IPv4/IPv6)."""
        header = self.header_for(packet)
        if header is None:
            return None
        return header + bytes(packet)

    def decode(self, frame: bytes | bytearray | memoryview) -> bytes | None:
        """The packet of one frame as bytes (``None`` if malformed)."""
        packet = self.strip(frame)
        return None if packet is None else bytes(packet)
