"""Readiness and checkpoints, for whichever event loop is running.

Under Trio we call ``trio.lowlevel`` directly (no anyio indirection on the hot
path); under any other anyio backend (asyncio) we go through anyio.  The choice
is made once per stream, on first use, from ``sniffio``.
"""

from __future__ import annotations

import os
import select
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import anyio
import anyio.lowlevel
import attrs
import sniffio
import trio


@attrs.frozen
class Backend:
    """The handful of event-loop primitives a packet stream needs."""

    name: str
    wait_readable: Callable[[int], Awaitable[None]]
    wait_writable: Callable[[int], Awaitable[None]]
    notify_closing: Callable[[int], None]
    #: Check for cancellation and yield to the scheduler.
    checkpoint: Callable[[], Awaitable[None]]
    #: Raise if cancelled, otherwise return without yielding.
    checkpoint_if_cancelled: Callable[[], Awaitable[None]]
    #: Yield to the scheduler without being a cancellation point.
    cancel_shielded_checkpoint: Callable[[], Awaitable[None]]


TRIO: Final = Backend(
    name="trio",
    wait_readable=trio.lowlevel.wait_readable,
    wait_writable=trio.lowlevel.wait_writable,
    notify_closing=trio.lowlevel.notify_closing,
    checkpoint=trio.lowlevel.checkpoint,
    checkpoint_if_cancelled=trio.lowlevel.checkpoint_if_cancelled,
    cancel_shielded_checkpoint=trio.lowlevel.cancel_shielded_checkpoint,
)

ANYIO: Final = Backend(
    name="anyio",
    wait_readable=anyio.wait_readable,
    wait_writable=anyio.wait_writable,
    notify_closing=anyio.notify_closing,
    checkpoint=anyio.lowlevel.checkpoint,
    checkpoint_if_cancelled=anyio.lowlevel.checkpoint_if_cancelled,
    cancel_shielded_checkpoint=anyio.lowlevel.cancel_shielded_checkpoint,
)


def current_backend() -> Backend:
    """The primitives for the event loop running the calling task."""
    if sniffio.current_async_library() == "trio":
        return TRIO
    return ANYIO


#: Calls between two real scheduler yields when no waiting was needed.
SCHEDULE_EVERY: Final = 32


class YieldBudget:
    """Amortised scheduler yields for one direction of a stream.

    Every call checks for cancellation; only every ``SCHEDULE_EVERY``-th call
    (or the first after a wait, which went through the scheduler anyway) pays
    for a real trip through it.
    """

    __slots__ = ("remaining",)

    def __init__(self) -> None:
        self.remaining = 0

    def checkpoint(self, backend: Backend) -> Awaitable[None]:
        """The checkpoint this call owes, to be awaited at once.

        A plain function handing back the backend's own awaitable: a call per
        packet batch should not pay for two extra coroutine frames.
        """
        self.remaining -= 1
        if self.remaining > 0:
            return backend.checkpoint_if_cancelled()
        self.remaining = SCHEDULE_EVERY
        return backend.checkpoint()

    def waited(self) -> None:
        """The caller just waited (a scheduler trip): the next yields are paid for."""
        self.remaining = SCHEDULE_EVERY


# -- blocking waits, for a stream driven from a worker thread -------------------


# poll()'s event bits (Linux, the BSDs and macOS agree).
POLLIN: Final = 0x001
POLLOUT: Final = 0x004


class Stopped(Exception):
    """Raised in a worker thread's wait when it was told to stop (its "cancellation")."""


class StopSignal:
    """Two pipes a worker thread's waits watch besides its fd: stop reading, stop writing.

    Set from any thread; each is a byte written once, so a wait that starts
    after the signal sees it too.
    """

    def __init__(self) -> None:
        self.reading_r, self._reading_w = os.pipe()
        self.writing_r, self._writing_w = os.pipe()
        self._closed = False

    def stop_reading(self) -> None:
        os.write(self._reading_w, b"r")

    def stop_writing(self) -> None:
        os.write(self._writing_w, b"w")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            for fd in (self.reading_r, self._reading_w, self.writing_r, self._writing_w):
                os.close(fd)


if sys.platform != "win32":

    def poll_any(waits: Sequence[tuple[int, int]], stop_fd: int) -> bool:
        """Block until one of the ``(fd, events)`` *waits* is ready or *stop_fd* is readable.

        True if *stop_fd* is.  An fd may come twice (read one way, written the other).
        """
        poller = select.poll()
        masks: dict[int, int] = {}
        for fd, events in waits:
            masks[fd] = masks.get(fd, 0) | events
        for fd, events in masks.items():
            poller.register(fd, events)
        poller.register(stop_fd, POLLIN)
        # Blocks with the GIL released; returns when an fd is ready (or errs,
        # which the next read or write reports) or the stop pipe has a byte.
        ready = poller.poll()
        return any(fd == stop_fd for fd, _ in ready)

    def poll_until(fd: int, events: int, stop_fd: int) -> None:
        if poll_any(((fd, events),), stop_fd):
            raise Stopped

    def readable_poller(fds: Sequence[int]) -> select.poll:
        """A poll object watching *fds* for reading, for a thread that waits on them often."""
        poller = select.poll()
        for fd in fds:
            poller.register(fd, POLLIN)
        return poller

else:  # pragma: no cover - Windows streams have no fd to poll (wintun rings)

    def poll_any(waits: Sequence[tuple[int, int]], stop_fd: int) -> bool:
        raise NotImplementedError("blocking waits need poll(), which Windows lacks")

    def poll_until(fd: int, events: int, stop_fd: int) -> None:
        raise NotImplementedError("blocking waits need poll(), which Windows lacks")

    def readable_poller(fds: Sequence[int]) -> Any:
        raise NotImplementedError("blocking waits need poll(), which Windows lacks")


def blocking_backend(stop: StopSignal) -> Backend:
    """Waits that block the calling thread (a ``poll`` that also watches *stop*).

    A stream given this backend runs its ordinary code in a worker thread: its
    coroutines never suspend, so they can be driven to completion there.
    Waiting to read ends with :exc:`Stopped` once ``stop.stop_reading()`` was
    called; waiting to write only once ``stop.stop_writing()`` was, so a batch
    in hand is still written.
    """

    async def wait_readable(fd: int) -> None:
        poll_until(fd, POLLIN, stop.reading_r)

    async def wait_writable(fd: int) -> None:
        poll_until(fd, POLLOUT, stop.writing_r)

    async def nothing() -> None:
        return None

    return Backend(
        name="thread",
        wait_readable=wait_readable,
        wait_writable=wait_writable,
        notify_closing=lambda fd: None,
        checkpoint=nothing,
        checkpoint_if_cancelled=nothing,
        cancel_shielded_checkpoint=nothing,
    )
