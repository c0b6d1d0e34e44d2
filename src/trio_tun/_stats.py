"""Packet counters kept by our own code (not the kernel's), and their snapshot."""

from __future__ import annotations

import attrs


@attrs.define(slots=True)
class Statistics:
    """One stream's counters since it was opened.

    The stream bumps its own instance on the hot path; :meth:`~PacketStream.statistics`
    hands out a copy (a snapshot).

    ``rx_*``/``tx_*`` count what crossed the stream's API; ``reads``/``writes``
    count system calls, so ``read_bytes / reads`` shows how well offload batches.
    """

    #: Packets handed to the application, and their bytes.
    rx_packets: int = 0
    rx_bytes: int = 0
    #: Packets the kernel accepted from the application, and their bytes.
    tx_packets: int = 0
    tx_bytes: int = 0
    #: read()/write() system calls that moved data, and the bytes they moved
    #: (with offload: virtio headers and whole super-packets).
    reads: int = 0
    read_bytes: int = 0
    writes: int = 0
    write_bytes: int = 0
    #: Received data that could not be parsed (bad virtio header, truncated
    #: super-packet, impossible lengths): dropped, never raised.
    rx_malformed: int = 0
    #: Packets already read but discarded because the stream was closed.
    rx_dropped: int = 0
    #: Packets the kernel refused (EINVAL: not IP, bad header; EIO: device down).
    tx_dropped: int = 0
    #: Coalesced writes the kernel rejected (EINVAL) and that were re-sent as
    #: segments; after the first, the stream stops coalescing.
    tx_coalesce_fallbacks: int = 0
    #: Super-packets written (more than one segment each).
    tx_coalesced: int = 0

    def snapshot(self) -> Statistics:
        """A copy, so that the caller's view stays still while traffic flows."""
        return attrs.evolve(self)
