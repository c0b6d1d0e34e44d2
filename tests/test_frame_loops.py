"""The many-frames-per-call read and write loops: compiled and pure Python agree.

Both are driven through a ``SOCK_SEQPACKET`` socket pair (one frame per read
or write, like a TUN fd): what goes in comes out frame for frame, a full peer
stops the writer with EAGAIN at the same frame, an empty one stops the reader,
and a closed peer reads as the end of the stream.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_tun import _ports

try:
    from trio_tun.offload import _speedups
except ImportError:  # not built
    _speedups = None  # type: ignore[assignment]

LOOPS: list[Any] = [pytest.param((_ports._read_frames_py, _ports._write_frames_py), id="python")]
if _speedups is not None and hasattr(_speedups, "read_frames"):
    LOOPS.append(pytest.param((_speedups.read_frames, _speedups.write_frames), id="speedups"))

Loops = tuple[Callable[..., tuple[list[bytes], int]], Callable[..., tuple[int, int, int]]]


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.setblocking(False)
    b.setblocking(False)
    with a, b:
        yield a, b


@pytest.mark.parametrize("loops", LOOPS)
@settings(max_examples=50, deadline=None)
@given(frames=st.lists(st.binary(min_size=1, max_size=2000), max_size=40), count=st.integers(0, 50))
def test_frames_cross_one_for_one(loops: Loops, frames: list[bytes], count: int) -> None:
    read_frames, write_frames = loops
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        a.setblocking(False)
        b.setblocking(False)
        index, status, nbytes = write_frames(a.fileno(), frames, 0)
        assert (index, status, nbytes) == (len(frames), 0, sum(map(len, frames)))
        got, status = read_frames(b.fileno(), count, 4096)
        assert got == frames[:count]
        # Stopped because it had all it asked for, or because the fd ran dry.
        assert status == (0 if count <= len(frames) else errno.EAGAIN)


@pytest.mark.parametrize("loops", LOOPS)
def test_a_full_peer_stops_the_writer_at_a_frame(
    loops: Loops, pair: tuple[socket.socket, socket.socket]
) -> None:
    read_frames, write_frames = loops
    a, b = pair
    frames = [bytes([i % 256]) * 1000 for i in range(5000)]
    index, status, nbytes = write_frames(a.fileno(), frames, 0)
    assert 0 < index < len(frames) and status == errno.EAGAIN and nbytes == 1000 * index
    # Drain, then the rest goes from where it stopped.
    got, _ = read_frames(b.fileno(), 10_000, 4096)
    again, status, _ = write_frames(a.fileno(), frames[: index + 3], index)
    assert (again, status) == (index + 3, 0)
    got += read_frames(b.fileno(), 10_000, 4096)[0]
    assert got == frames[: index + 3]


@pytest.mark.parametrize("loops", LOOPS)
def test_end_of_stream_and_errors(loops: Loops, pair: tuple[socket.socket, socket.socket]) -> None:
    read_frames, write_frames = loops
    a, b = pair
    a.send(b"last")
    a.close()
    assert read_frames(b.fileno(), 10, 100) == ([b"last"], _ports.FRAMES_EOF)
    assert read_frames(b.fileno(), 10, 100) == ([], _ports.FRAMES_EOF)
    # Writing to a peer that has gone: EPIPE at the first frame, nothing written.
    assert write_frames(b.fileno(), [b"x", b"y"], 0) == (0, errno.EPIPE, 0)


def test_bad_arguments_are_refused() -> None:
    if _speedups is None:
        pytest.skip("speedups not built")
    with pytest.raises(ValueError):
        _speedups.read_frames(-1, 1, 100)
    with pytest.raises(ValueError):
        _speedups.read_frames(0, 1, 0)
    with pytest.raises(TypeError):
        _speedups.write_frames(0, 5, 0)
    with pytest.raises(ValueError):
        _speedups.write_frames(0, [b"x"], 2)


@pytest.mark.parametrize("loops", LOOPS)
@pytest.mark.parametrize("size", [1500, 70_000], ids=["mtu", "large"])
def test_many_frames_cross_chunk_boundaries(
    loops: Loops, pair: tuple[socket.socket, socket.socket], size: int
) -> None:
    """The C loops move frames in chunks (64, or 1 MiB of buffer) per GIL release:
    more frames than a chunk, and frames large enough to shrink it, keep order."""
    read_frames, write_frames = loops
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    frames = [bytes([i % 251]) * (1 + i % 97) for i in range(150)]
    index, status, nbytes = write_frames(a.fileno(), frames, 0)
    assert (index, status, nbytes) == (150, 0, sum(map(len, frames)))
    got, status = read_frames(b.fileno(), 130, size)
    assert (got, status) == (frames[:130], 0)
    got, status = read_frames(b.fileno(), 130, size)
    assert (got, status) == (frames[130:], errno.EAGAIN)


@pytest.mark.parametrize("loops", LOOPS)
def test_a_frame_that_is_not_bytes_raises_after_those_before_it(
    loops: Loops, pair: tuple[socket.socket, socket.socket]
) -> None:
    _, write_frames = loops
    a, b = pair
    with pytest.raises(TypeError):
        write_frames(a.fileno(), [b"one", b"two", 5, b"four"], 0)
    assert [b.recv(100), b.recv(100)] == [b"one", b"two"]
    with pytest.raises(BlockingIOError):
        b.recv(100)


def test_a_list_emptied_by_another_thread_is_written_as_it_was() -> None:
    """write_frames releases the GIL between chunks; another thread emptying the
    list meanwhile must not make it read past the list's end (it snapshots)."""
    if _speedups is None:
        pytest.skip("speedups not built")
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        a.setblocking(False)
        for _ in range(20):
            frames = [bytes(16)] * 300
            clearer = threading.Thread(target=lambda f=frames: [f.clear() for _ in range(50)])
            clearer.start()
            index, status, _ = _speedups.write_frames(a.fileno(), frames, 0)
            clearer.join(10)
            # The list as it was when the call took it: all 300, or none if the
            # other thread emptied it first (or the fd filled up at some frame).
            assert index in (0, 300) or status == errno.EAGAIN
            b.setblocking(False)
            assert [len(b.recv(64)) for _ in range(index)] == [16] * index
            with pytest.raises(BlockingIOError):
                b.recv(64)


# -- read_packed: runs of frames into one pool ----------------------------------------

PACKED: list[Any] = [pytest.param(_ports._read_packed_py, id="python")]
if _speedups is not None and hasattr(_speedups, "read_packed"):
    PACKED.append(pytest.param(_speedups.read_packed, id="speedups"))


def _unpacked(pool: bytearray, lengths: list[int]) -> list[bytes]:
    frames, offset = [], 0
    for n in lengths:
        frames.append(bytes(pool[offset : offset + n]))
        offset += n
    return frames


@pytest.mark.parametrize("read_packed", PACKED)
@settings(max_examples=50, deadline=None)
@given(
    frames=st.lists(st.binary(min_size=1, max_size=3000), max_size=80),
    count=st.integers(0, 80),
    size=st.integers(3000, 5000),
    room=st.integers(0, 20_000),
)
def test_packed_frames_cross_in_order_within_count_and_room(
    read_packed: Callable[..., tuple[list[int], int]],
    frames: list[bytes],
    count: int,
    size: int,
    room: int,
) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        a.setblocking(False)
        b.setblocking(False)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        for frame in frames:
            a.send(frame)
        pool = bytearray(size + room)
        lengths, status = read_packed(b.fileno(), pool, size, count)
        got = _unpacked(pool, lengths)
        assert got == frames[: len(got)]
        # It stops at the count (64 at most), when a read might not fit, or dry.
        expected = 0
        used = 0
        while expected < min(count, 64) and len(pool) - used >= size and expected < len(frames):
            used += len(frames[expected])
            expected += 1
        assert len(got) == expected
        dry = expected == len(frames) and expected < min(count, 64) and len(pool) - used >= size
        assert status == (errno.EAGAIN if dry else 0)


@pytest.mark.parametrize("read_packed", PACKED)
def test_packed_reads_report_end_of_stream_and_errors(
    read_packed: Callable[..., tuple[list[int], int]], pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    a.send(b"last")
    a.close()
    pool = bytearray(1000)
    assert read_packed(b.fileno(), pool, 100, 10) == ([4], _ports.FRAMES_EOF)
    assert pool[:4] == b"last"
    assert read_packed(b.fileno(), pool, 100, 10) == ([], _ports.FRAMES_EOF)
    r, w = os.pipe()
    os.close(r)
    try:
        # A write-only fd: reading it fails with EBADF, nothing read.
        assert read_packed(w, pool, 100, 10) == ([], errno.EBADF)
    finally:
        os.close(w)


def test_packed_bad_arguments_are_refused() -> None:
    if _speedups is None:
        pytest.skip("speedups not built")
    with pytest.raises(ValueError):
        _speedups.read_packed(-1, bytearray(10), 10, 1)
    with pytest.raises(ValueError):
        _speedups.read_packed(0, bytearray(10), 0, 1)
    with pytest.raises(ValueError):
        _speedups.read_packed(0, bytearray(10), 10, -1)
    with pytest.raises(BufferError):
        _speedups.read_packed(0, b"read-only", 10, 1)
    with pytest.raises(TypeError):
        _speedups.read_packed(0, bytearray(10), 10)  # type: ignore[call-arg]


def test_a_packed_pool_in_use_cannot_be_resized(pair: tuple[socket.socket, socket.socket]) -> None:
    """The compiled loop holds the pool while the GIL is released: another thread
    resizing the bytearray gets BufferError instead of moving the memory being
    read into.  (The twin holds the GIL between reads.)"""
    if _speedups is None:
        pytest.skip("speedups not built")
    read_packed = _speedups.read_packed
    a, b = pair
    pool = bytearray(2000)
    b.setblocking(True)
    errors: list[BaseException] = []

    def resize() -> None:
        try:
            pool.extend(b"x")
        except BufferError as exc:
            errors.append(exc)

    b.settimeout(None)
    thread = threading.Thread(target=lambda: read_packed(b.fileno(), pool, 100, 1))
    thread.start()
    for _ in range(200):
        if thread.is_alive():
            resize()
            if errors:
                break
        threading.Event().wait(0.01)
    a.send(b"wake")
    thread.join(10)
    assert errors and not thread.is_alive()
