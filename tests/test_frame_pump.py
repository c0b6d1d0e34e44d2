"""The frame pump of a forwarding thread: compiled and pure Python agree.

``pump_frames`` reads frames from one non-blocking fd and writes each to
another until it is stopped or something fails.  It is driven here through two
``SOCK_SEQPACKET`` socket pairs (one frame per read or write, like a TUN fd):
the test writes into ``src_peer`` and the pump reads ``src``; the pump writes
``dst`` and the test reads ``dst_peer``.  The pump blocks until stopped, so it
runs in a thread and every wait of the test is bounded by a count and by a
deadline (never by how fast the machine is).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_tun import _ports
from trio_tun._ports import (
    FRAMES_EOF,
    PUMP_DROPPED,
    PUMP_FIELDS,
    PUMP_POOL,
    PUMP_READ_BYTES,
    PUMP_READS,
    PUMP_STOP,
    PUMP_WRITE_BYTES,
    PUMP_WRITES,
)

try:
    from trio_tun.offload import _speedups
except ImportError:  # not built
    _speedups = None  # type: ignore[assignment]

PUMPS: list[Any] = [pytest.param(_ports._pump_frames_py, id="python")]
if _speedups is not None and hasattr(_speedups, "pump_frames"):
    PUMPS.append(pytest.param(_speedups.pump_frames, id="speedups"))

Pump = Callable[..., tuple[int, bool]]

#: How long any wait may take before the test gives up (a slow, noisy machine).
DEADLINE = 10.0
#: The pump's read size: larger than every frame sent here.
SIZE = 65536
#: Upper bound on the iterations of every polling loop.
MAX_ROUNDS = 1_000_000


def new_state(**fields: int) -> array[int]:
    """A pump state buffer, fields given by name (``reads=5``)."""
    state = array("Q", bytes(8 * PUMP_FIELDS))
    for name, value in fields.items():
        state[getattr(_ports, "PUMP_" + name.upper())] = value
    return state


def counters(state: array[int]) -> dict[str, int]:
    return {
        "reads": state[PUMP_READS],
        "read_bytes": state[PUMP_READ_BYTES],
        "writes": state[PUMP_WRITES],
        "write_bytes": state[PUMP_WRITE_BYTES],
        "dropped": state[PUMP_DROPPED],
    }


class PumpThread:
    """One pump call in a daemon thread; its result or exception is kept."""

    def __init__(self, target: Callable[[], tuple[int, bool]]) -> None:
        self._target = target
        self.result: list[tuple[int, bool]] = []
        self.error: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.native_id: int | None = None

    def _run(self) -> None:
        self.native_id = threading.get_native_id()
        try:
            self.result.append(self._target())
        except BaseException as exc:  # reported by join()
            self.error.append(exc)

    def join(self) -> tuple[int, bool]:
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive(), "the pump did not return"
        assert not self.error, self.error
        (result,) = self.result
        return result

    def settle_in_poll(self) -> None:
        """Best effort: wait until the thread sleeps in poll() (Linux's wchan).

        Only makes a wrong pump fail more surely; a right one passes either way.
        Without a readable wchan, a short pause stands in.
        """
        path = f"/proc/self/task/{self.native_id}/wchan"
        end = time.monotonic() + DEADLINE
        for _ in range(MAX_ROUNDS):
            try:
                with open(path) as f:
                    wchan = f.read()
            except OSError:
                wchan = "0"
            if wchan in ("", "0"):
                time.sleep(0.05)
                return
            if "poll" in wchan or time.monotonic() > end:
                return
            time.sleep(0.002)


def seqpacket_pair(stack: contextlib.ExitStack) -> tuple[socket.socket, socket.socket]:
    """A non-blocking SEQPACKET socket pair (one frame per read or write, like a
    TUN fd), closed with *stack*."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stack.enter_context(a)
    stack.enter_context(b)
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def closing_pipe(stack: contextlib.ExitStack) -> tuple[int, int]:
    """A pipe (read end, write end), closed with *stack*."""
    r, w = os.pipe()
    stack.callback(os.close, r)
    stack.callback(os.close, w)
    return r, w


def drain_until(drain: Callable[[], None], condition: Callable[[], bool]) -> bool:
    """Call *drain* until *condition* holds; False at the deadline (bounded by count too)."""
    end = time.monotonic() + DEADLINE
    for _ in range(MAX_ROUNDS):
        drain()
        if condition():
            return True
        if time.monotonic() > end:
            return False
        time.sleep(0.002)
    return False


@contextlib.contextmanager
def gil_watchdog(stop_read_w: int) -> Iterator[Callable[[], None]]:
    """For a test that the compiled pump waits without the GIL.

    Should the pump hold the GIL, the test's thread could not run again until
    the pump returned: a helper process outside Python writes *stop_read_w*
    (the pump's stop pipe) after a while, so the test fails rather than hangs.
    Yields a check that runs some Python in this thread and finds the helper
    still asleep, which proves this thread ran while the pump was waiting.
    (One process, so that killing it leaves no sleeper holding the pipe.)
    """
    helper = subprocess.Popen(
        [sys.executable, "-c", "import os, time; time.sleep(60); os.write(1, b'x')"],
        stdout=stop_read_w,
    )

    def ran_meanwhile() -> None:
        total = 0
        for i in range(10**5):
            total += i
        assert total == 10**5 * (10**5 - 1) // 2
        assert helper.poll() is None

    try:
        yield ran_meanwhile
    finally:
        helper.kill()
        helper.wait()


class Rig:
    """Two non-blocking SEQPACKET pairs, two stop pipes and a state buffer."""

    def __init__(self, stack: contextlib.ExitStack, state: array[int]) -> None:
        self.state = state
        self.src_peer, self.src = seqpacket_pair(stack)
        self.dst, self.dst_peer = seqpacket_pair(stack)
        self.stop_read_r, self.stop_read_w = closing_pipe(stack)
        self.stop_write_r, self.stop_write_w = closing_pipe(stack)
        self.received: list[bytes] = []
        self.runs: list[PumpThread] = []
        # Runs before the fds are closed: no pump is left polling a closed fd.
        stack.callback(self._stop_all)

    def start(
        self,
        pump: Pump,
        limit: int = SIZE,
        size: int = SIZE,
        src: int | None = None,
        *,
        batch: int = 1,
    ) -> PumpThread:
        # batch == 1 is left out: the call of the 7-argument signature.
        extra = () if batch == 1 else (batch,)
        run = PumpThread(
            lambda: pump(
                self.src.fileno() if src is None else src,
                self.dst.fileno(),
                size,
                limit,
                self.stop_read_r,
                self.stop_write_r,
                self.state,
                *extra,
            )
        )
        self.runs.append(run)
        run.thread.start()
        return run

    def stop_reading(self) -> None:
        os.write(self.stop_read_w, b"x")

    def stop_writing(self) -> None:
        os.write(self.stop_write_w, b"x")

    def drain(self) -> None:
        """Move whatever waits in ``dst_peer`` to ``received``."""
        for _ in range(MAX_ROUNDS):
            try:
                self.received.append(self.dst_peer.recv(SIZE))
            except BlockingIOError:
                return

    def wait_until(self, condition: Callable[[], bool]) -> bool:
        """Drain the destination until *condition* holds (False at the deadline)."""
        return drain_until(self.drain, condition)

    def _stop_all(self) -> None:
        live = [run for run in self.runs if run.thread.is_alive()]
        if live:
            self.state[PUMP_STOP] = 1
            os.write(self.stop_read_w, b"x")
            os.write(self.stop_write_w, b"x")
            for run in live:
                run.thread.join(DEADLINE)


@contextlib.contextmanager
def make_rig(state: array[int] | None = None) -> Iterator[Rig]:
    with contextlib.ExitStack() as stack:
        yield Rig(stack, new_state() if state is None else state)


@pytest.fixture
def rig() -> Iterator[Rig]:
    with make_rig() as r:
        yield r


def fill(sock: socket.socket, frame: bytes) -> int:
    """Send *frame* until the socket has no room; how many were sent."""
    for sent in range(MAX_ROUNDS):
        try:
            sock.send(frame)
        except BlockingIOError:
            return sent
    raise AssertionError("the socket never filled up")


def idle_after(rig: Rig, count: int) -> Callable[[], bool]:
    """All *count* frames read and each written (and received) or dropped."""
    state = rig.state

    def done() -> bool:
        return (
            state[PUMP_READS] == count
            and state[PUMP_WRITES] + state[PUMP_DROPPED] == count
            and len(rig.received) == state[PUMP_WRITES]
        )

    return done


@pytest.mark.parametrize("pump", PUMPS)
@settings(max_examples=30, deadline=None)
@given(
    frames=st.lists(st.binary(min_size=1, max_size=3000), max_size=30),
    limit=st.integers(1, 3100),
    # 1: the 7-argument call, one frame at a time; more: runs of frames.
    batch=st.one_of(st.just(1), st.integers(2, 64)),
)
def test_frames_within_the_limit_cross_in_order(
    pump: Pump, frames: list[bytes], limit: int, batch: int
) -> None:
    kept = [f for f in frames if len(f) <= limit]
    with make_rig() as rig:
        rig.src_peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        for frame in frames:
            assert rig.src_peer.send(frame) == len(frame)
        run = rig.start(pump, limit, batch=batch)
        assert rig.wait_until(idle_after(rig, len(frames)))
        rig.stop_reading()
        assert run.join() == (0, False)
        rig.drain()
        assert rig.received == kept
        assert counters(rig.state) == {
            "reads": len(frames),
            "read_bytes": sum(map(len, frames)),
            "writes": len(kept),
            "write_bytes": sum(map(len, kept)),
            "dropped": len(frames) - len(kept),
        }
        assert rig.state[PUMP_STOP] == 0


@pytest.mark.parametrize("pump", PUMPS)
def test_a_frame_of_exactly_the_limit_crosses(pump: Pump, rig: Rig) -> None:
    frames = [b"a" * 99, b"b" * 100, b"c" * 101, b"d" * 100]
    for frame in frames:
        rig.src_peer.send(frame)
    run = rig.start(pump, 100)
    rig.wait_until(idle_after(rig, 4))
    rig.stop_reading()
    assert run.join() == (0, False)
    rig.drain()
    assert rig.received == [b"a" * 99, b"b" * 100, b"d" * 100]
    assert counters(rig.state) == {
        "reads": 4,
        "read_bytes": 400,
        "writes": 3,
        "write_bytes": 299,
        "dropped": 1,
    }


@pytest.mark.parametrize("pump", PUMPS)
def test_stop_flag_set_before_the_call_reads_nothing(pump: Pump, rig: Rig) -> None:
    rig.src_peer.send(b"stay")
    rig.state[PUMP_STOP] = 1
    assert rig.start(pump).join() == (0, False)
    assert counters(rig.state) == dict.fromkeys(counters(rig.state), 0)
    assert rig.state[PUMP_STOP] == 1
    # The frame was left where it was.
    assert rig.src.recv(SIZE) == b"stay"
    rig.drain()
    assert rig.received == []


@pytest.mark.parametrize("pump", PUMPS)
def test_stop_flag_set_under_traffic_loses_no_frame(pump: Pump, rig: Rig) -> None:
    sent: list[bytes] = []

    def feed() -> None:
        # One frame per round when there is room: a pump waiting to read wakes
        # up and sees the flag.
        frame = len(sent).to_bytes(4, "big") * (1 + len(sent) % 50)
        try:
            rig.src_peer.send(frame)
        except BlockingIOError:
            return
        sent.append(frame)

    run = rig.start(pump)
    assert rig.wait_until(lambda: (feed(), rig.state[PUMP_WRITES] >= 20)[1])
    rig.state[PUMP_STOP] = 1
    assert rig.wait_until(lambda: (feed(), not run.thread.is_alive())[1])
    assert run.join() == (0, False)
    rig.drain()
    reads = rig.state[PUMP_READS]
    assert reads == rig.state[PUMP_WRITES] + rig.state[PUMP_DROPPED]
    assert rig.state[PUMP_DROPPED] == 0
    assert rig.received == sent[:reads]
    assert rig.state[PUMP_READ_BYTES] == rig.state[PUMP_WRITE_BYTES] == sum(map(len, sent[:reads]))
    # Every frame the pump did not read is still in the source, in order.
    left = []
    for _ in range(len(sent)):
        try:
            left.append(rig.src.recv(SIZE))
        except BlockingIOError:
            break
    assert left == sent[reads:]


@pytest.mark.parametrize("pump", PUMPS)
def test_stop_pipe_ends_a_waiting_pump(pump: Pump, rig: Rig) -> None:
    run = rig.start(pump)
    rig.src_peer.send(b"one")
    assert rig.wait_until(lambda: rig.received == [b"one"])
    rig.stop_reading()
    assert run.join() == (0, False)
    assert counters(rig.state) == {
        "reads": 1,
        "read_bytes": 3,
        "writes": 1,
        "write_bytes": 3,
        "dropped": 0,
    }


@pytest.mark.parametrize("pump", PUMPS)
def test_end_of_stream_after_the_last_frames(pump: Pump, rig: Rig) -> None:
    frames = [b"first", b"second" * 100, b"third"]
    for frame in frames:
        rig.src_peer.send(frame)
    rig.src_peer.close()
    result = rig.start(pump).join()
    assert result == (FRAMES_EOF, False) == (-1, False)
    rig.drain()
    assert rig.received == frames
    total = sum(map(len, frames))
    assert counters(rig.state) == {
        "reads": 3,
        "read_bytes": total,
        "writes": 3,
        "write_bytes": total,
        "dropped": 0,
    }


@pytest.mark.parametrize("pump", PUMPS)
def test_a_failed_write_drops_that_frame_only(pump: Pump, rig: Rig) -> None:
    rig.src_peer.send(b"lost")
    rig.src_peer.send(b"kept")
    rig.dst_peer.close()
    # Linux: a SEQPACKET socket whose peer has gone refuses with EPIPE.
    assert rig.start(pump).join() == (errno.EPIPE, True)
    assert counters(rig.state) == {
        "reads": 1,
        "read_bytes": 4,
        "writes": 0,
        "write_bytes": 0,
        "dropped": 1,
    }
    assert rig.src.recv(SIZE) == b"kept"


@pytest.mark.parametrize("pump", PUMPS)
def test_a_failed_read_loses_nothing(pump: Pump) -> None:
    # The source is a pipe's write end: reading it fails (EBADF).
    r, w = os.pipe()
    try:
        with make_rig() as rig:
            assert rig.start(pump, src=w).join() == (errno.EBADF, False)
            assert counters(rig.state) == dict.fromkeys(counters(rig.state), 0)
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("pump", PUMPS)
def test_stop_writing_while_the_destination_is_full(pump: Pump, rig: Rig) -> None:
    filler = b"\0" * 1000
    filled = fill(rig.dst, filler)
    assert filled > 0
    rig.src_peer.send(b"late")
    rig.src_peer.send(b"unread")
    run = rig.start(pump)
    end = time.monotonic() + DEADLINE
    while rig.state[PUMP_READS] < 1 and time.monotonic() < end:
        time.sleep(0.002)
    assert rig.state[PUMP_READS] == 1
    rig.stop_writing()
    assert run.join() == (0, True)
    assert counters(rig.state) == {
        "reads": 1,
        "read_bytes": 4,
        "writes": 0,
        "write_bytes": 0,
        "dropped": 1,
    }
    rig.drain()
    assert rig.received == [filler] * filled
    assert rig.src.recv(SIZE) == b"unread"


@pytest.mark.parametrize("pump", PUMPS)
def test_a_full_destination_is_waited_for(pump: Pump, rig: Rig) -> None:
    filler = b"\0" * 1000
    filled = fill(rig.dst, filler)
    frames = [b"after-%d" % i for i in range(5)]
    for frame in frames:
        rig.src_peer.send(frame)
    run = rig.start(pump)
    # Not draining yet: the first frame meets a full destination and waits.
    end = time.monotonic() + DEADLINE
    while rig.state[PUMP_READS] < 1 and time.monotonic() < end:
        time.sleep(0.002)
    assert counters(rig.state) == {
        "reads": 1,
        "read_bytes": len(frames[0]),
        "writes": 0,
        "write_bytes": 0,
        "dropped": 0,
    }
    run.settle_in_poll()
    assert rig.state[PUMP_WRITES] == rig.state[PUMP_DROPPED] == 0
    assert rig.wait_until(lambda: len(rig.received) >= filled + len(frames))
    rig.stop_reading()
    assert run.join() == (0, False)
    rig.drain()
    assert rig.received == [filler] * filled + frames
    assert rig.state[PUMP_WRITES] == len(frames)
    assert rig.state[PUMP_DROPPED] == 0


@pytest.mark.parametrize("pump", PUMPS)
def test_counters_continue_from_the_state(pump: Pump) -> None:
    state = new_state(reads=5, read_bytes=500, writes=4, write_bytes=400, dropped=1)
    frames = [b"x" * 10, b"y" * 2000, b"z" * 30]
    with make_rig(state) as rig:
        for frame in frames:
            rig.src_peer.send(frame)
        run = rig.start(pump, 1000)
        rig.wait_until(lambda: state[PUMP_READS] == 8 and len(rig.received) == 2)
        rig.stop_reading()
        assert run.join() == (0, False)
        rig.drain()
        assert rig.received == [b"x" * 10, b"z" * 30]
    assert counters(state) == {
        "reads": 8,
        "read_bytes": 2540,
        "writes": 6,
        "write_bytes": 440,
        "dropped": 2,
    }


# -- batches: up to ``batch`` frames are read before they are written ----------------


def reads_reach(state: array[int], count: int) -> bool:
    """Wait (bounded) until the pump has read at least *count* frames."""
    end = time.monotonic() + DEADLINE
    for _ in range(MAX_ROUNDS):
        if state[PUMP_READS] >= count:
            return True
        if time.monotonic() > end:
            return False
        time.sleep(0.002)
    return False


def source_left(rig: Rig, size: int = SIZE) -> list[bytes]:
    """Every frame still unread in the source, in order."""
    left = []
    for _ in range(MAX_ROUNDS):
        try:
            left.append(rig.src.recv(size))
        except BlockingIOError:
            return left
    raise AssertionError("the source never ran dry")


#: Linux refuses (EMSGSIZE) a SEQPACKET frame longer than the sender's whole
#: send buffer (less 32 bytes): SO_SNDBUF 4096 counts as 8192, whatever is queued.
SMALL_SNDBUF = 4096
TOO_BIG = b"B" * 20_000


@pytest.mark.parametrize("pump", PUMPS)
def test_a_failed_write_in_a_batch_drops_that_frame_only(pump: Pump) -> None:
    a, c, d = b"A" * 10, b"C" * 20, b"D" * 30
    frames = [a, TOO_BIG, c, d]
    total = sum(map(len, frames))
    # All four are in the source before the pump starts: one batch of four.
    with make_rig() as rig:
        rig.dst.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_SNDBUF)
        for frame in frames:
            rig.src_peer.send(frame)
        run = rig.start(pump, batch=64)
        assert rig.wait_until(lambda: not run.thread.is_alive())
        assert run.join() == (errno.EMSGSIZE, True)
        rig.drain()
        assert rig.received == [a, c, d]
        assert counters(rig.state) == {
            "reads": 4,
            "read_bytes": total,
            "writes": 3,
            "write_bytes": 60,
            "dropped": 1,
        }
        assert source_left(rig) == []
    # One frame at a time: the pump returns right after the refused frame.
    with make_rig() as rig:
        rig.dst.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_SNDBUF)
        for frame in frames:
            rig.src_peer.send(frame)
        run = rig.start(pump, batch=1)
        assert rig.wait_until(lambda: not run.thread.is_alive())
        assert run.join() == (errno.EMSGSIZE, True)
        rig.drain()
        assert rig.received == [a]
        assert counters(rig.state) == {
            "reads": 2,
            "read_bytes": len(a) + len(TOO_BIG),
            "writes": 1,
            "write_bytes": len(a),
            "dropped": 1,
        }
        assert source_left(rig) == [c, d]
    # Two refusals in one batch (EMSGSIZE, then EPIPE): the first is reported.
    with make_rig() as rig:
        rig.dst.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_SNDBUF)
        rig.dst_peer.close()
        for frame in (TOO_BIG, a):
            rig.src_peer.send(frame)
        assert rig.start(pump, batch=64).join() == (errno.EMSGSIZE, True)
        assert counters(rig.state) == {
            "reads": 2,
            "read_bytes": len(TOO_BIG) + len(a),
            "writes": 0,
            "write_bytes": 0,
            "dropped": 2,
        }
        # The second refusal was a different one indeed.
        with pytest.raises(BrokenPipeError):
            rig.dst.send(a)


@pytest.mark.parametrize("pump", PUMPS)
def test_end_of_stream_after_a_batch_in_hand(pump: Pump, rig: Rig) -> None:
    frames = [b"first", b"second" * 100, b"third"]
    for frame in frames:
        rig.src_peer.send(frame)
    rig.src_peer.close()
    assert rig.start(pump, batch=64).join() == (FRAMES_EOF, False)
    rig.drain()
    assert rig.received == frames
    total = sum(map(len, frames))
    assert counters(rig.state) == {
        "reads": 3,
        "read_bytes": total,
        "writes": 3,
        "write_bytes": total,
        "dropped": 0,
    }


def hold_batch(pump: Pump, rig: Rig, frames: list[bytes]) -> tuple[PumpThread, bytes, int]:
    """Fill the destination, queue *frames* and start a pump (batch 64) that
    reads them all and then waits for room: (the run, the filler frame, how
    many fillers the destination took)."""
    filler = b"\0" * 1000
    filled = fill(rig.dst, filler)
    assert filled > 0
    for frame in frames:
        rig.src_peer.send(frame)
    run = rig.start(pump, batch=64)
    assert reads_reach(rig.state, len(frames))
    run.settle_in_poll()
    return run, filler, filled


@pytest.mark.parametrize("pump", PUMPS)
def test_stop_flag_with_a_batch_in_hand_writes_it(pump: Pump, rig: Rig) -> None:
    frames = [b"held-%d" % i for i in range(5)]
    run, filler, filled = hold_batch(pump, rig, frames)
    total = sum(map(len, frames))
    assert counters(rig.state) == {
        "reads": 5,
        "read_bytes": total,
        "writes": 0,
        "write_bytes": 0,
        "dropped": 0,
    }
    rig.state[PUMP_STOP] = 1
    assert rig.wait_until(lambda: not run.thread.is_alive())
    assert run.join() == (0, False)
    rig.drain()
    assert rig.received == [filler] * filled + frames
    assert counters(rig.state) == {
        "reads": 5,
        "read_bytes": total,
        "writes": 5,
        "write_bytes": total,
        "dropped": 0,
    }


@pytest.mark.parametrize("pump", PUMPS)
def test_stop_writing_drops_the_whole_batch_in_hand(pump: Pump, rig: Rig) -> None:
    frames = [b"held-%d" % i for i in range(5)]
    run, filler, filled = hold_batch(pump, rig, frames)
    rig.stop_writing()
    assert run.join() == (0, True)
    assert counters(rig.state) == {
        "reads": 5,
        "read_bytes": sum(map(len, frames)),
        "writes": 0,
        "write_bytes": 0,
        "dropped": 5,
    }
    rig.drain()
    assert rig.received == [filler] * filled
    assert source_left(rig) == []


@pytest.mark.parametrize("pump", PUMPS)
@pytest.mark.parametrize(("batch", "held"), [(64, 4), (1, 1)])
def test_a_batch_reads_only_while_the_pool_has_room_for_a_read(
    pump: Pump, rig: Rig, batch: int, held: int
) -> None:
    size, length = 100_000, 50_000
    if batch > 1:
        # After k frames the room is size + PUMP_POOL - k * length; a read
        # needs size of it: three frames leave room for a fourth, four do not.
        assert (held - 1) * length <= PUMP_POOL < held * length
    frames = [bytes([65 + i]) * length for i in range(held + 2)]
    rig.src_peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    for frame in frames:
        assert rig.src_peer.send(frame) == length
    filler = b"\0" * 1000
    filled = fill(rig.dst, filler)
    assert filled > 0
    run = rig.start(pump, limit=size, size=size, batch=batch)
    assert reads_reach(rig.state, held)
    run.settle_in_poll()
    assert rig.state[PUMP_READS] == held
    rig.stop_writing()
    assert run.join() == (0, True)
    assert counters(rig.state) == {
        "reads": held,
        "read_bytes": held * length,
        "writes": 0,
        "write_bytes": 0,
        "dropped": held,
    }
    rig.drain()
    assert rig.received == [filler] * filled
    assert source_left(rig, size) == frames[held:]


@pytest.mark.skipif(not hasattr(_speedups, "pump_frames"), reason="speedups not built")
def test_bad_arguments_are_refused(rig: Rig) -> None:
    # Should a bad argument be let through, the call must not block this
    # thread: the source is at its end and the stop pipe already readable.
    rig.src_peer.close()
    rig.stop_reading()
    good = [
        rig.src.fileno(),
        rig.dst.fileno(),
        1500,
        1500,
        rig.stop_read_r,
        rig.stop_write_r,
        rig.state,
    ]

    def call(**changes: Any) -> tuple[int, bool]:
        args = list(good)
        for index, value in changes.items():
            args[int(index[1:])] = value
        return _speedups.pump_frames(*args)

    for index in (0, 1, 4, 5):
        for fd in (-1, 2**31):
            with pytest.raises(ValueError):
                call(**{f"a{index}": fd})
    for size in (0, -5, (1 << 20) + 1):
        with pytest.raises(ValueError):
            call(a2=size)
    for limit in (0, -1):
        with pytest.raises(ValueError):
            call(a3=limit)
    too_small = [array("Q", bytes(8)), bytearray(8 * PUMP_FIELDS - 1)]
    misaligned = memoryview(bytearray(8 * PUMP_FIELDS + 8))[1 : 1 + 8 * PUMP_FIELDS]
    for state in (*too_small, misaligned):
        with pytest.raises(ValueError):
            call(a6=state)
    # Read-only buffers: refused by the buffer protocol itself (BufferError).
    for state in (bytes(8 * PUMP_FIELDS), memoryview(bytearray(8 * PUMP_FIELDS)).toreadonly()):
        with pytest.raises(BufferError):
            call(a6=state)
    with pytest.raises(TypeError):
        _speedups.pump_frames(*good[:6])
    with pytest.raises(TypeError):
        _speedups.pump_frames(*good, 1, 0)
    for batch in (0, -1, 65):
        with pytest.raises(ValueError):
            _speedups.pump_frames(*good, batch)
    with pytest.raises(TypeError):
        call(a0="3")
    # The bounds themselves are accepted: the stop flag returns at once, the
    # source at its end is reached once the flag is down.
    rig.state[PUMP_STOP] = 1
    for size, limit in ((1, 1), (1 << 20, 1 << 30)):
        assert call(a2=size, a3=limit) == (0, False)
        for batch in (1, 64):
            assert _speedups.pump_frames(*good[:2], size, limit, *good[4:], batch) == (0, False)
    rig.state[PUMP_STOP] = 0
    assert call(a2=1 << 20, a3=1) == (FRAMES_EOF, False)
    assert counters(rig.state) == dict.fromkeys(counters(rig.state), 0)


@pytest.mark.skipif(not hasattr(_speedups, "pump_frames"), reason="speedups not built")
def test_the_compiled_pump_waits_without_the_gil(rig: Rig) -> None:
    with gil_watchdog(rig.stop_read_w) as ran_meanwhile:
        rig.src_peer.send(b"ping")
        run = rig.start(_speedups.pump_frames)
        assert rig.wait_until(lambda: rig.received == [b"ping"])
        run.settle_in_poll()
        ran_meanwhile()
        assert run.thread.is_alive() and not run.result
        # And it still forwards, with this thread running Python meanwhile.
        rig.src_peer.send(b"pong")
        assert rig.wait_until(lambda: rig.received == [b"ping", b"pong"])
        ran_meanwhile()
        rig.stop_reading()
        assert run.join() == (0, False)
