"""The many-frames-per-call read and write loops: compiled and pure Python agree.

Both are driven through a ``SOCK_SEQPACKET`` socket pair (one frame per read
or write, like a TUN fd): what goes in comes out frame for frame, a full peer
stops the writer with EAGAIN at the same frame, an empty one stops the reader,
and a closed peer reads as the end of the stream.
"""

from __future__ import annotations

import errno
import socket
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
