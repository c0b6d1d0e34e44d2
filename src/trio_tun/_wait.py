"""Readiness and checkpoints, for whichever event loop is running.

Under Trio we call ``trio.lowlevel`` directly (no anyio indirection on the hot
path); under any other anyio backend (asyncio) we go through anyio.  The choice
is made once per stream, on first use, from ``sniffio``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

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

    async def checkpoint(self, backend: Backend) -> None:
        self.remaining -= 1
        if self.remaining > 0:
            await backend.checkpoint_if_cancelled()
            return
        self.remaining = SCHEDULE_EVERY
        await backend.checkpoint()

    def waited(self) -> None:
        """The caller just waited (a scheduler trip): the next yields are paid for."""
        self.remaining = SCHEDULE_EVERY
