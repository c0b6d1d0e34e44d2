"""A fake queue stream for the engine's unit tests: no device, every step observable.

Reads come from :meth:`FakeQueue.feed`; writes are recorded packet by packet
and logged per batch; a gate (open unless asked otherwise) holds writes back
so that a test can catch the engine with a batch in hand.
"""

from __future__ import annotations

from collections.abc import Iterable

import anyio

from trio_tun import Statistics


class FakeQueue:
    """What the engine needs of a queue stream, with everything it did kept for checks."""

    def __init__(self, *, max_packet: int = 1500, gate_open: bool = True) -> None:
        self.max_packet = max_packet
        self.counters = Statistics()
        self.inbox: list[list[bytes]] = []
        self.arrived = anyio.Event()
        #: Every packet written, in order, and one line per batch or (de)tach.
        self.written: list[bytes] = []
        self.log: list[str] = []
        self.wrote = anyio.Event()
        self.writing = anyio.Event()
        self.gate = anyio.Event()
        if gate_open:
            self.gate.set()
        # send_batch calls in progress at once, and the most there ever were.
        self.active = 0
        self.most_active = 0

    def open_gate(self) -> None:
        self.gate.set()

    def feed(self, batch: list[bytes]) -> None:
        self.inbox.append(batch)
        self.arrived.set()

    async def receive_batch(self, max_packets: int | None = None) -> list[bytes]:
        while not self.inbox:
            await self.arrived.wait()
            self.arrived = anyio.Event()
        return self.inbox.pop(0)

    async def send_batch(self, batch: Iterable[bytes]) -> None:
        batch = list(batch)
        # As the real stream: sizes are checked before anything is written.
        if any(not 0 < len(packet) <= self.max_packet for packet in batch):
            raise ValueError("a packet is empty or larger than max_packet")
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            self.writing.set()
            await self.gate.wait()
            count = 0
            for packet in batch:
                self.written.append(bytes(packet))
                count += 1
            self.counters.tx_packets += count
            self.log.append(f"wrote {count}")
            self.wrote.set()
        finally:
            self.active -= 1

    def statistics(self) -> Statistics:
        return self.counters.snapshot()

    def detach_queue(self) -> None:
        self.log.append("detached")

    def attach_queue(self) -> None:
        self.log.append("attached")
