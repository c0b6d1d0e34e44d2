"""A TUN stream over an fd whose packets carry the 4-byte address-family header.

Used for macOS utun sockets, FreeBSD/OpenBSD/NetBSD ``/dev/tun``, and
``from_fd(..., header="af4")`` (an iOS packet-tunnel fd, say).  Users see bare
IP packets, as on Linux: the header is stripped on receive and added on send.

Only the two steps that touch the header differ from
:class:`~trio_tun.TunStream`: turning one read into a packet (``_decode``)
and writing one packet (``_send_plain``).  Everything else — readiness
waits, cancellation safety, batching, statistics, closing — is the Linux
stream's own code.  ``receive_raw``/``send_raw`` keep their meaning: what one
read brings and what one write takes, header included.
"""

from __future__ import annotations

from .._netlink import DeviceControl
from .._stream import MAX_PACKET, TunStream
from ._afheader import AF_HEADER_LEN, HOST, AfFamilies, AfFraming


class AfTunStream(TunStream):
    """A :class:`~trio_tun.TunStream` whose fd frames packets with an AF header."""

    def __init__(
        self,
        fd: int,
        *,
        families: AfFamilies = HOST,
        owned: bool = True,
        control: DeviceControl | None = None,
        owns_control: bool = False,
    ) -> None:
        super().__init__(fd, owned=owned, control=control, owns_control=owns_control)
        self._framing = AfFraming(families)
        # Room for the largest IP packet behind its header.
        self._read_buffer = bytearray(MAX_PACKET + AF_HEADER_LEN)
        self._read_view = memoryview(self._read_buffer)

    @property
    def families(self) -> AfFamilies:
        """The address-family numbering of the header."""
        return self._framing.families

    def _decode(self, n: int) -> None:
        packet = self._framing.strip(self._read_view[:n])
        if packet is None:
            # Too short, an unknown family, or a family that contradicts the
            # packet's version: dropped and counted, never raised.
            self._counters.rx_malformed += 1
            return
        self._pending.append(bytes(packet))

    async def _send_plain(self, packet: bytes | bytearray | memoryview) -> None:
        header = self._framing.header_for(packet)
        if header is None:
            # Not IPv4 or IPv6: the kernel would refuse it (Linux: EINVAL).
            self._counters.tx_dropped += 1
            return
        n = await self._write([header, packet])
        if n >= 0:
            self._sent(n - AF_HEADER_LEN, 1)
            return
        self._counters.tx_dropped += 1

    def __repr__(self) -> str:
        return f"<{type(self).__name__} fd={self._fd} families={self._framing.families.platform}>"
