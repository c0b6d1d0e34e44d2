"""Ports move frames: one read or one write of whatever carries the device's packets.

A port knows nothing of packets (that is the framing's job) nor of batching or
checkpoints (the stream's); it owns its handle, translates its errors into
``ClosedResourceError``/``BrokenResourceError`` in one place, and waits for
readiness the way the running event loop wants.

* :class:`FdPort`: a file descriptor (``/dev/net/tun`` queues, utun sockets,
  BSD ``/dev/tun``, fds from elsewhere), owned like ``trio.lowlevel.FdStream``
  owns its fd.
* :class:`MemoryPort`: two in-memory queues, for :func:`trio_tun.testing.memory_tun_pair`.
* ``WintunPort`` (``platform/windows.py``): the wintun session rings.
"""

from __future__ import annotations

import errno
import os
import sys
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol, TypeVar

import anyio
import anyio.lowlevel
import sniffio
import trio

from ._errors import DROP_ERRNOS, ClosedResourceError, io_error
from ._wait import POLLIN, POLLOUT, Backend, Stopped, current_backend, poll_any, poll_until

Buffer = bytes | bytearray | memoryview

#: ``read_into``/``write`` found nothing to read or no room to write.
WOULD_BLOCK: Final = -1
#: ``write``: the system refused this one frame (see ``refused_errno``).
REFUSED: Final = -2
#: ``read_frames`` status: a read returned 0 (a socket's peer has gone).
FRAMES_EOF: Final = -1


def _read_frames_py(fd: int, count: int, size: int) -> tuple[list[bytes], int]:
    """The pure-Python twin of ``_speedups.read_frames`` (same results)."""
    frames: list[bytes] = []
    while len(frames) < count:
        try:
            frame = os.read(fd, size)
        except BlockingIOError:
            return frames, errno.EAGAIN
        except OSError as exc:
            return frames, exc.errno or errno.EIO
        if not frame:
            return frames, FRAMES_EOF
        frames.append(frame)
    return frames, 0


#: ``read_packed``: the most frames one call reads (the compiled loop's chunk).
PACKED_MAX: Final = 64


def _read_packed_py(
    fd: int, pool: bytearray | memoryview, size: int, count: int
) -> tuple[list[int], int]:
    """The pure-Python twin of ``_speedups.read_packed`` (same results)."""
    view = memoryview(pool)
    lengths: list[int] = []
    used = 0
    while len(lengths) < min(count, PACKED_MAX) and len(view) - used >= size:
        try:
            n = readv(fd, [view[used : used + size]])
        except BlockingIOError:
            return lengths, errno.EAGAIN
        except OSError as exc:
            return lengths, exc.errno or errno.EIO
        if n == 0:
            return lengths, FRAMES_EOF
        lengths.append(n)
        used += n
    return lengths, 0


def _write_frames_py(fd: int, frames: Sequence[Buffer], start: int) -> tuple[int, int, int]:
    """The pure-Python twin of ``_speedups.write_frames`` (same results)."""
    total = 0
    for i in range(start, len(frames)):
        try:
            total += os.write(fd, frames[i])
        except BlockingIOError:
            return i, errno.EAGAIN, total
        except OSError as exc:
            return i, exc.errno or errno.EIO, total
    return len(frames), 0, total


_F = TypeVar("_F", bound=Callable[..., Any])


def _compiled(name: str, twin: _F) -> _F:
    """The speedups' *name*, or its pure-Python *twin* when they are not built
    (or lack it: POSIX only), or when ``TRIO_TUN_PURE_PYTHON=1``."""
    if os.environ.get("TRIO_TUN_PURE_PYTHON", "") == "1":
        return twin
    try:
        from .offload import _speedups
    except ImportError:  # built without the extension
        return twin
    compiled: _F = getattr(_speedups, name, twin)
    return compiled


_read_frames = _compiled("read_frames", _read_frames_py)
_read_packed = _compiled("read_packed", _read_packed_py)
_write_frames = _compiled("write_frames", _write_frames_py)

# -- the frame pump of a forwarding thread ---------------------------------------------

#: Fields of a pump's state buffer (an ``array('Q')`` of ``PUMP_FIELDS``), the
#: same in ``_speedups.pump_frames``: a stop flag the owner sets from any thread,
#: then live counters.
PUMP_STOP: Final = 0
PUMP_READS: Final = 1
PUMP_READ_BYTES: Final = 2
PUMP_WRITES: Final = 3
PUMP_WRITE_BYTES: Final = 4
PUMP_DROPPED: Final = 5
PUMP_FIELDS: Final = 6


#: Frames a pump reads before it writes them (``pump_frames``' *batch*); reads
#: also stop once the pool has less than a read's *size* of room left, so
#: super-packets come a few at a time.  Reading a run of packets and then
#: writing them beats alternating without offload (2.73 against 2.46 Gbit/s,
#: median of five interleaved pairs); with offload it makes no difference.
PUMP_BATCH: Final = 64
#: Room for a batch beyond its first frame, as in ``_speedups.c``.
PUMP_POOL: Final = 192 * 1024
#: ``pump_pair``: write-and-read rounds a lane that keeps moving gets before the
#: other lane's turn (as ``bench/fwd.c`` drains up to 64 frames from a ready fd).
#: With four flows, one round per turn moved 0.89-0.99x the C forwarder, 16
#: moved 0.99-1.02x (interleaved runs).
PAIR_ROUNDS: Final = 16


class _PumpLane:
    """One direction of a pure-Python pump: its fds and the frames it holds."""

    __slots__ = ("dst", "held", "limit", "next", "read_end", "src", "state", "write_err")

    def __init__(self, src: int, dst: int, limit: int, state: array[int]) -> None:
        self.src, self.dst, self.limit, self.state = src, dst, limit, state
        self.held: list[bytes] = []
        self.next = 0
        self.write_err = 0
        self.read_end: int | None = None

    def holding(self) -> bool:
        return self.next < len(self.held)

    def write_held(self) -> bool:
        """Write what is held until done or the destination is full; whether any moved."""
        state, moved = self.state, False
        while self.next < len(self.held):
            try:
                n = os.write(self.dst, self.held[self.next])
            except BlockingIOError:
                break
            except OSError as exc:
                # Refused: this frame is given up, the others still go.
                state[PUMP_DROPPED] += 1
                self.write_err = self.write_err or exc.errno or errno.EIO
            else:
                state[PUMP_WRITES] += 1
                state[PUMP_WRITE_BYTES] += n
            self.next += 1
            moved = True
        return moved

    def drop_held(self) -> bool:
        """Give up what is held (no room before the stop): counted; whether any was."""
        dropped = len(self.held) - self.next
        self.state[PUMP_DROPPED] += dropped
        self.next = len(self.held)
        return dropped > 0

    def read_run(
        self, size: int, room: int, batch: int, flags: tuple[array[int], array[int]]
    ) -> tuple[bool, bool]:
        """Read up to *batch* frames that fit in *room*: (anything happened, stop flag seen).

        A stop flag in either state is read before every read, as the C pump does.
        """
        state, moved, used = self.state, False, 0
        self.held, self.next = [], 0
        while len(self.held) < batch and room - used >= size:
            if flags[0][PUMP_STOP] or flags[1][PUMP_STOP]:
                return moved, True
            try:
                frame = os.read(self.src, size)
            except BlockingIOError:
                break
            except OSError as exc:
                self.read_end = exc.errno or errno.EIO
                return True, False
            moved = True
            if not frame:
                self.read_end = FRAMES_EOF
                break
            state[PUMP_READS] += 1
            state[PUMP_READ_BYTES] += len(frame)
            if len(frame) > self.limit:
                state[PUMP_DROPPED] += 1
                continue
            self.held.append(frame)
            used += len(frame)
        return moved, False


def _pump_frames_py(
    src_fd: int,
    dst_fd: int,
    size: int,
    limit: int,
    stop_read_fd: int,
    stop_write_fd: int,
    state: array[int],
    batch: int = 1,
) -> tuple[int, bool]:
    """The pure-Python twin of ``_speedups.pump_frames`` (same results, GIL held between calls)."""
    room = size if batch == 1 else size + PUMP_POOL
    lane = _PumpLane(src_fd, dst_fd, limit, state)
    flags = (state, state)
    while True:
        _, stopped = lane.read_run(size, room, batch, flags)
        if not lane.holding() and lane.read_end is None:
            if stopped:
                return 0, False
            try:
                poll_until(src_fd, POLLIN, stop_read_fd)
            except Stopped:
                return 0, False
            continue
        lane.write_held()
        while lane.holding():
            try:
                poll_until(dst_fd, POLLOUT, stop_write_fd)
            except Stopped:
                # No room before the stop: what is in hand is given up.
                lane.drop_held()
                return 0, True
            lane.write_held()
        if lane.write_err:
            return lane.write_err, True
        if lane.read_end is not None:
            return lane.read_end, False


def _pump_pair_py(
    a_fd: int,
    b_fd: int,
    size: int,
    limit_ab: int,
    limit_ba: int,
    stop_read_fd: int,
    stop_write_fd: int,
    state_ab: array[int],
    state_ba: array[int],
    batch: int,
) -> tuple[int, int, bool]:
    """The pure-Python twin of ``_speedups.pump_pair`` (same results, GIL held between calls)."""
    room = size if batch == 1 else size + PUMP_POOL
    lanes = (_PumpLane(a_fd, b_fd, limit_ab, state_ab), _PumpLane(b_fd, a_fd, limit_ba, state_ba))
    flags = (state_ab, state_ba)
    stopping = False
    failed: int | None = None
    dropped_lane: int | None = None
    while True:
        progress = False
        for index, lane in enumerate(lanes):
            for _ in range(PAIR_ROUNDS):
                moved = lane.write_held()
                if not lane.holding():
                    if failed is None and (lane.write_err or lane.read_end is not None):
                        failed, stopping = index, True
                    if not stopping:
                        read, stopping = lane.read_run(size, room, batch, flags)
                        moved |= read
                progress |= moved
                if not moved:
                    break
        if progress:
            continue
        if stopping and not any(lane.holding() for lane in lanes):
            if failed is not None:
                lane = lanes[failed]
                if lane.write_err:
                    return failed, lane.write_err, True
                assert lane.read_end is not None
                return failed, lane.read_end, False
            if dropped_lane is not None:
                return dropped_lane, 0, True
            return 0, 0, False
        waits = [
            (lane.dst, POLLOUT) if lane.holding() else (lane.src, POLLIN)
            for lane in lanes
            if lane.holding() or not stopping
        ]
        if poll_any(waits, stop_write_fd if stopping else stop_read_fd):
            if not stopping:
                stopping = True
                continue
            # No room before the stop: what is in hand is given up.
            for index, lane in enumerate(lanes):
                if lane.drop_held() and dropped_lane is None:
                    dropped_lane = index


#: ``pump_frames(src_fd, dst_fd, size, limit, stop_read_fd, stop_write_fd, state,
#: batch=1) -> (status, writing)``: frames from one fd to another until stopped
#: or failed, up to *batch* read before they are written.  Frames longer than
#: *limit* are dropped and counted.  ``(0, False)``: stopped between batches;
#: ``(0, True)``: stopped while frames waited for room (those dropped);
#: ``(errno, False)``: a read failed (``FRAMES_EOF``: it returned 0) and the
#: frames read before it were written, nothing lost; ``(errno, True)``: a write
#: failed, that frame dropped, the rest of its batch written.  The compiled
#: pump runs the whole loop without the GIL.
pump_frames = _compiled("pump_frames", _pump_frames_py)

#: ``pump_pair(a_fd, b_fd, size, limit_ab, limit_ba, stop_read_fd, stop_write_fd,
#: state_ab, state_ba, batch) -> (lane, status, writing)``: both directions
#: between two fds in one thread (lane 0: a to b, 1: b to a), each lane by
#: ``pump_frames``' rules.  A lane's failure stops all reading and is returned
#: once both lanes' frames in hand are written: ``(lane, errno, False)`` for a
#: read (``FRAMES_EOF``: it returned 0), ``(lane, errno, True)`` for a write
#: (that frame dropped).  A stop returns ``(0, 0, False)`` once what is in hand
#: is written, or ``(lane, 0, True)`` when stop_write_fd came first (those
#: frames dropped; *lane* the first that held some).
pump_pair = _compiled("pump_pair", _pump_pair_py)


class Port(Protocol):
    """What :class:`~trio_tun.PacketStream` needs to move frames."""

    #: The errno of the last ``REFUSED`` write.
    refused_errno: int

    def fileno(self) -> int:
        """The file descriptor, or -1 where there is none (or it was closed)."""
        ...

    @property
    def closed(self) -> bool: ...

    def read_into(self, buffer: bytearray) -> int:
        """Read one frame into *buffer*: its length, or ``WOULD_BLOCK``.

        Raises ``ClosedResourceError``, ``BrokenResourceError``, or
        ``anyio.EndOfStream`` when the other side is gone for good.
        """
        ...

    def read(self, size: int) -> bytes | None:
        """Read one frame as a new bytes object (``None``: nothing queued)."""
        ...

    def write(self, buffers: Sequence[Buffer]) -> int:
        """Write *buffers* as one frame: bytes written, ``WOULD_BLOCK`` or ``REFUSED``."""
        ...

    async def wait_readable(self) -> None: ...

    async def wait_writable(self) -> None: ...

    def set_queue(self, attach: bool) -> None:
        """Attach or detach this queue of a multi-queue device."""
        ...

    def close(self) -> None:
        """Release the handle now; tasks waiting on it wake with ``ClosedResourceError``."""
        ...


if sys.platform == "win32":

    def _no_fds(*args: Any) -> Any:
        raise OSError("file-descriptor ports do not exist on Windows (wintun has its own port)")

    readv = writev = get_blocking = set_blocking = _no_fds
else:
    from os import get_blocking, readv, set_blocking, writev


class FdPort:
    """A non-blocking file descriptor, ours to close unless borrowed.

    Args:
        fd: The descriptor; made non-blocking now.
        owned: Close *fd* on :meth:`close`.  A borrowed fd is never closed and
            gets its blocking mode back.
        queue_control: How to attach/detach this fd as a queue (Linux ``TUNSETQUEUE``);
            ``None`` where the device has one queue.
    """

    __slots__ = (
        "_backend",
        "_blocking",
        "_fd",
        "_owned",
        "_queue_control",
        "_read_backend",
        "_write_backend",
        "refused_errno",
    )

    def __init__(
        self,
        fd: int,
        *,
        owned: bool = True,
        queue_control: Callable[[int, bool], None] | None = None,
    ) -> None:
        self._blocking: bool = get_blocking(fd)
        set_blocking(fd, False)
        self._fd = fd
        self._owned = owned
        self._queue_control = queue_control
        self._backend: Backend | None = None
        # Per-direction overrides: a forwarding thread may read this fd while
        # another thread writes it, each waiting with its own stop signal.
        self._read_backend: Backend | None = None
        self._write_backend: Backend | None = None
        self.refused_errno = 0

    def fileno(self) -> int:
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def _open_fd(self) -> int:
        fd = self._fd
        if fd < 0:
            raise ClosedResourceError("this stream was closed")
        return fd

    def _error(self, exc: OSError, doing: str) -> Exception:
        return io_error(exc.errno, doing, closed=self._fd < 0) or exc

    def read_into(self, buffer: bytearray) -> int:
        fd = self._open_fd()
        try:
            n = readv(fd, [buffer])
        except BlockingIOError:
            return WOULD_BLOCK
        except OSError as exc:
            raise self._error(exc, "reading") from None
        if n == 0:
            # A TUN fd never reads empty; a socket handed to from_fd does when
            # its peer has gone, and would otherwise read 0 forever.
            raise anyio.EndOfStream
        return int(n)

    def read(self, size: int) -> bytes | None:
        fd = self._open_fd()
        try:
            # os.read lands the frame straight in its bytes object: no second copy.
            frame = os.read(fd, size)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise self._error(exc, "reading") from None
        if not frame:
            raise anyio.EndOfStream
        return frame

    def read_frames(self, count: int, size: int) -> list[bytes]:
        """Up to *count* frames of at most *size* bytes, read until the fd runs dry.

        Without a virtio header a frame is one packet and each costs a read;
        the loop runs in the compiled speedups where they were built.  Frames
        read before a failure are returned and the failure comes back on the
        next call (a deleted device fails every read).
        """
        frames, status = _read_frames(self._open_fd(), count, size)
        if status and status != errno.EAGAIN and not frames:
            if status == FRAMES_EOF:
                raise anyio.EndOfStream
            raise self._error(OSError(status, os.strerror(status)), "reading")
        return frames

    def read_packed(self, pool: bytearray, size: int, count: int) -> tuple[list[int], bool]:
        """Up to *count* frames of at most *size* bytes, read one after another into *pool*.

        Returns the frames' lengths (frame *k* starts where frame *k - 1*
        ends) and whether reading stopped only for the count or the pool's
        room (``True``: there may be more to read).  Failures are reported as
        by :meth:`read_frames`.
        """
        lengths, status = _read_packed(self._open_fd(), pool, size, count)
        if status and status != errno.EAGAIN and not lengths:
            if status == FRAMES_EOF:
                raise anyio.EndOfStream
            raise self._error(OSError(status, os.strerror(status)), "reading")
        return lengths, status == 0

    def write_frames(
        self, frames: Sequence[Buffer], start: int
    ) -> tuple[int, int, int, Exception | None]:
        """Write ``frames[start:]``, one write each, until one can't be written.

        Returns ``(next, nbytes, status, error)``: *next* is the index of the
        first frame not written (``len(frames)`` when all went), *nbytes* what
        the written ones held, *status* ``WOULD_BLOCK`` or ``REFUSED`` (see
        ``refused_errno``) for the frame at *next*, else 0, and *error* the
        exception to raise once the written frames are counted.
        """
        index, status, nbytes = _write_frames(self._open_fd(), frames, start)
        if status == 0:
            return index, nbytes, 0, None
        if status == errno.EAGAIN:
            return index, nbytes, WOULD_BLOCK, None
        if status in DROP_ERRNOS:
            self.refused_errno = status
            return index, nbytes, REFUSED, None
        return index, nbytes, 0, self._error(OSError(status, os.strerror(status)), "writing")

    def write(self, buffers: Sequence[Buffer]) -> int:
        fd = self._open_fd()
        try:
            return int(writev(fd, buffers))
        except BlockingIOError:
            return WOULD_BLOCK
        except OSError as exc:
            if exc.errno in DROP_ERRNOS:
                self.refused_errno = exc.errno or 0
                return REFUSED
            raise self._error(exc, "writing") from None

    def _get_backend(self) -> Backend:
        backend = self._backend
        if backend is None:
            backend = self._backend = current_backend()
        return backend

    def use_backend(self, backend: Backend | None, *, reading: bool) -> None:
        """Wait to read (or write) with *backend* from now on (``None``: the event loop's)."""
        if reading:
            self._read_backend = backend
        else:
            self._write_backend = backend

    async def wait_readable(self) -> None:
        await self._wait((self._read_backend or self._get_backend()).wait_readable)

    async def wait_writable(self) -> None:
        await self._wait((self._write_backend or self._get_backend()).wait_writable)

    async def _wait(self, wait: Callable[[int], Any]) -> None:
        fd = self._open_fd()
        try:
            await wait(fd)
        except (trio.ClosedResourceError, anyio.ClosedResourceError):
            raise ClosedResourceError("another task closed this stream") from None

    def set_queue(self, attach: bool) -> None:
        if self._queue_control is None:
            raise NotImplementedError("this device has a single queue (open it with queues=N)")
        self._queue_control(self._open_fd(), attach)

    def close(self) -> None:
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
                set_blocking(fd, self._blocking)

    def __del__(self) -> None:
        # An owned fd must not outlive its port; no task can be waiting on it
        # once the port is garbage.
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


class _Link:
    """One direction of a memory pair: a bounded queue and the receiver's wake-up."""

    __slots__ = ("capacity", "frames", "waiter", "writer_closed")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.frames: deque[bytes] = deque()
        self.writer_closed = False
        # Created by the waiting task (an Event needs a running event loop).
        self.waiter: anyio.Event | None = None

    def wake(self) -> None:
        if self.waiter is not None:
            self.waiter.set()
            self.waiter = None


class MemoryPort:
    """One end of two joined in-memory queues; what one end writes, the other reads.

    Like a device it never blocks a writer: a frame written while the peer's
    queue is full, or after the peer closed, is refused (the stream counts it
    as dropped).  Once the peer has closed and its frames are read, reads end
    with ``anyio.EndOfStream``.
    """

    __slots__ = ("_closed", "_inbox", "_outbox", "refused_errno")

    def __init__(self, inbox: _Link, outbox: _Link) -> None:
        self._inbox = inbox
        self._outbox = outbox
        self._closed = False
        self.refused_errno = 0

    @classmethod
    def pair(cls, capacity: int) -> tuple[MemoryPort, MemoryPort]:
        a_to_b, b_to_a = _Link(capacity), _Link(capacity)
        return cls(b_to_a, a_to_b), cls(a_to_b, b_to_a)

    def fileno(self) -> int:
        return -1

    @property
    def closed(self) -> bool:
        return self._closed

    def _check(self) -> None:
        if self._closed:
            raise ClosedResourceError("this stream was closed")

    def read(self, size: int) -> bytes | None:
        self._check()
        frames = self._inbox.frames
        if frames:
            return frames.popleft()[:size]
        if self._inbox.writer_closed:
            raise anyio.EndOfStream
        return None

    def read_into(self, buffer: bytearray) -> int:
        frame = self.read(len(buffer))
        if frame is None:
            return WOULD_BLOCK
        n = len(frame)
        buffer[:n] = frame
        return n

    def write(self, buffers: Sequence[Buffer]) -> int:
        self._check()
        outbox = self._outbox
        if outbox.writer_closed or len(outbox.frames) >= outbox.capacity:
            self.refused_errno = 0
            return REFUSED
        frame = b"".join(buffers)
        outbox.frames.append(frame)
        outbox.wake()
        return len(frame)

    async def wait_readable(self) -> None:
        self._check()
        inbox = self._inbox
        if inbox.frames or inbox.writer_closed:
            await anyio.lowlevel.checkpoint()
            return
        waiter = inbox.waiter = anyio.Event()
        await waiter.wait()
        self._check()

    async def wait_writable(self) -> None:
        # Writes never block (full queues refuse): nothing to wait for.
        self._check()
        await anyio.lowlevel.checkpoint()

    def set_queue(self, attach: bool) -> None:
        raise NotImplementedError("a memory pair has a single queue")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # The peer reads what is queued, then the end; our own waiter wakes
        # and finds us closed.
        self._outbox.writer_closed = True
        self._outbox.wake()
        self._inbox.wake()
