"""The two-way frame pump of a forwarding thread: compiled and pure Python agree.

``pump_pair`` moves frames both ways between two non-blocking fds in one
thread: lane 0 reads ``a`` and writes ``b``, lane 1 reads ``b`` and writes
``a``.  It is driven here through two ``SOCK_SEQPACKET`` socket pairs (one
frame per read or write, like a TUN fd): the test sends into ``a_peer`` and
receives lane 0's frames on ``b_peer``, sends into ``b_peer`` and receives
lane 1's frames on ``a_peer``.  The pump blocks until stopped, so it runs in a
thread and every wait of the test is bounded by a count and by a deadline
(never by how fast the machine is).  The one-way ``pump_frames`` is tested in
``test_frame_pump``, whose helpers are reused.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from array import array
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from test_frame_pump import (
    DEADLINE,
    MAX_ROUNDS,
    SIZE,
    SMALL_SNDBUF,
    TOO_BIG,
    PumpThread,
    closing_pipe,
    counters,
    drain_until,
    fill,
    gil_watchdog,
    new_state,
    reads_reach,
    seqpacket_pair,
)
from trio_tun import _ports
from trio_tun._ports import (
    FRAMES_EOF,
    PUMP_DROPPED,
    PUMP_FIELDS,
    PUMP_POOL,
    PUMP_READS,
    PUMP_STOP,
    PUMP_WRITES,
)

try:
    from trio_tun.offload import _speedups
except ImportError:  # not built
    _speedups = None  # type: ignore[assignment]

HAVE_C = hasattr(_speedups, "pump_pair")

PAIR_PUMPS: list[Any] = [pytest.param(_ports._pump_pair_py, id="python")]
if HAVE_C:
    PAIR_PUMPS.append(pytest.param(_speedups.pump_pair, id="speedups"))
else:
    PAIR_PUMPS.append(
        pytest.param(None, id="speedups", marks=pytest.mark.skip(reason="no compiled pump_pair"))
    )

Pump = Callable[..., tuple[int, int, bool]]

FILLER = b"\0" * 1000


def zeros() -> dict[str, int]:
    return dict.fromkeys(counters(new_state()), 0)


def in_hand(frames: Sequence[bytes]) -> dict[str, int]:
    """A lane's counters while it holds *frames*, read but neither written nor dropped."""
    return {**exact(frames, []), "dropped": 0}


def exact(frames: Sequence[bytes], kept: Sequence[bytes]) -> dict[str, int]:
    """A lane's counters after *frames* were read and *kept* of them written."""
    return {
        "reads": len(frames),
        "read_bytes": sum(map(len, frames)),
        "writes": len(kept),
        "write_bytes": sum(map(len, kept)),
        "dropped": len(frames) - len(kept),
    }


class Lane:
    """One direction as the test sees it: where it sends, where it receives."""

    def __init__(
        self,
        src_peer: socket.socket,
        src: socket.socket,
        dst: socket.socket,
        dst_peer: socket.socket,
        state: array[int],
    ) -> None:
        # The test sends into src_peer, the pump reads src and writes dst,
        # the test receives on dst_peer.
        self.src_peer, self.src, self.dst, self.dst_peer = src_peer, src, dst, dst_peer
        self.state = state
        self.received: list[bytes] = []
        #: What the state counted as written before this test.
        self.base_writes = state[PUMP_WRITES]

    def drain(self) -> None:
        for _ in range(MAX_ROUNDS):
            try:
                self.received.append(self.dst_peer.recv(SIZE))
            except BlockingIOError:
                return

    def source_left(self, size: int = SIZE) -> list[bytes]:
        """Every frame the pump left unread in the source, in order."""
        left = []
        for _ in range(MAX_ROUNDS):
            try:
                left.append(self.src.recv(size))
            except BlockingIOError:
                return left
        raise AssertionError("the source never ran dry")


class PairRig:
    """Two non-blocking SEQPACKET pairs ``a``/``a_peer`` and ``b``/``b_peer``,
    two stop pipes and a state buffer per lane."""

    def __init__(
        self,
        stack: contextlib.ExitStack,
        state_ab: array[int] | None = None,
        state_ba: array[int] | None = None,
    ) -> None:
        self.a, self.a_peer = seqpacket_pair(stack)
        self.b, self.b_peer = seqpacket_pair(stack)
        self.states = (
            new_state() if state_ab is None else state_ab,
            new_state() if state_ba is None else state_ba,
        )
        self.lanes = (
            Lane(self.a_peer, self.a, self.b, self.b_peer, self.states[0]),
            Lane(self.b_peer, self.b, self.a, self.a_peer, self.states[1]),
        )
        self.stop_read_r, self.stop_read_w = closing_pipe(stack)
        self.stop_write_r, self.stop_write_w = closing_pipe(stack)
        self.runs: list[PumpThread] = []
        # Runs before the fds are closed: no pump is left polling a closed fd.
        stack.callback(self._stop_all)

    def start(
        self,
        pump: Pump,
        *,
        limits: tuple[int, int] = (SIZE, SIZE),
        size: int = SIZE,
        batch: int = 1,
    ) -> PumpThread:
        run = PumpThread(
            lambda: pump(
                self.a.fileno(),
                self.b.fileno(),
                size,
                limits[0],
                limits[1],
                self.stop_read_r,
                self.stop_write_r,
                self.states[0],
                self.states[1],
                batch,
            )
        )
        self.runs.append(run)  # type: ignore[arg-type]
        run.thread.start()
        return run  # type: ignore[return-value]

    def stop_reading(self) -> None:
        os.write(self.stop_read_w, b"x")

    def stop_writing(self) -> None:
        os.write(self.stop_write_w, b"x")

    def drain(self, lanes: Sequence[int] = (0, 1)) -> None:
        for index in lanes:
            self.lanes[index].drain()

    def wait_until(self, condition: Callable[[], bool], drain: Sequence[int] = (0, 1)) -> bool:
        """Drain the *drain* lanes until *condition* holds (False at the deadline)."""
        return drain_until(lambda: self.drain(drain), condition)

    def _stop_all(self) -> None:
        live = [run for run in self.runs if run.thread.is_alive()]
        if live:
            for state in self.states:
                state[PUMP_STOP] = 1
            os.write(self.stop_read_w, b"x")
            os.write(self.stop_write_w, b"x")
            for run in live:
                run.thread.join(DEADLINE)


@contextlib.contextmanager
def make_rig(
    state_ab: array[int] | None = None, state_ba: array[int] | None = None
) -> Iterator[PairRig]:
    with contextlib.ExitStack() as stack:
        yield PairRig(stack, state_ab, state_ba)


@pytest.fixture
def rig() -> Iterator[PairRig]:
    with make_rig() as r:
        yield r


def idle_after(rig: PairRig, counts: tuple[int, int]) -> Callable[[], bool]:
    """Each lane read its count, wrote (and the test received) or dropped each."""

    def done() -> bool:
        return all(
            lane.state[PUMP_READS] == count
            and lane.state[PUMP_WRITES] + lane.state[PUMP_DROPPED] == count
            and len(lane.received) == lane.state[PUMP_WRITES] - lane.base_writes
            for lane, count in zip(rig.lanes, counts, strict=True)
        )

    return done


def finished(run: PumpThread) -> Callable[[], bool]:
    return lambda: not run.thread.is_alive()


frame_lists = st.lists(st.binary(min_size=1, max_size=3000), max_size=30)


@pytest.mark.parametrize("pump", PAIR_PUMPS)
@settings(max_examples=30, deadline=None)
@given(
    ab=frame_lists,
    ba=frame_lists,
    limit_ab=st.integers(1, 3100),
    limit_ba=st.integers(1, 3100),
    batch=st.integers(1, 64),
)
def test_frames_within_each_limit_cross_both_ways_in_order(
    pump: Pump, ab: list[bytes], ba: list[bytes], limit_ab: int, limit_ba: int, batch: int
) -> None:
    sent = (ab, ba)
    limits = (limit_ab, limit_ba)
    with make_rig() as rig:
        for lane, frames in zip(rig.lanes, sent, strict=True):
            lane.src_peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            for frame in frames:
                assert lane.src_peer.send(frame) == len(frame)
        run = rig.start(pump, limits=limits, batch=batch)
        assert rig.wait_until(idle_after(rig, (len(ab), len(ba))))
        rig.stop_reading()
        assert run.join() == (0, 0, False)
        rig.drain()
        for lane, frames, limit in zip(rig.lanes, sent, limits, strict=True):
            kept = [f for f in frames if len(f) <= limit]
            assert lane.received == kept
            assert counters(lane.state) == exact(frames, kept)
            assert lane.state[PUMP_STOP] == 0


@pytest.mark.parametrize("pump", PAIR_PUMPS)
@pytest.mark.parametrize("batch", [1, 64])
def test_traffic_both_ways_while_it_runs(pump: Pump, rig: PairRig, batch: int) -> None:
    count = 300
    sent: tuple[list[bytes], list[bytes]] = ([], [])

    def feed() -> None:
        # Interleaved: one frame per lane per round, when there is room.
        for index, lane in enumerate(rig.lanes):
            n = len(sent[index])
            if n == count:
                continue
            frame = bytes([index]) + n.to_bytes(4, "big") * (1 + n % 50)
            try:
                lane.src_peer.send(frame)
            except BlockingIOError:
                continue
            sent[index].append(frame)

    run = rig.start(pump, batch=batch)
    assert rig.wait_until(
        lambda: (feed(), all(len(lane.received) == count for lane in rig.lanes))[1]
    )
    rig.stop_reading()
    assert run.join() == (0, 0, False)
    rig.drain()
    for lane, frames in zip(rig.lanes, sent, strict=True):
        assert lane.received == frames
        assert counters(lane.state) == exact(frames, frames)


@pytest.mark.parametrize("pump", PAIR_PUMPS)
@pytest.mark.parametrize("flag", [0, 1], ids=["flag_ab", "flag_ba"])
def test_a_stop_flag_set_before_the_call_reads_nothing(pump: Pump, rig: PairRig, flag: int) -> None:
    for lane in rig.lanes:
        lane.src_peer.send(b"stay")
    rig.states[flag][PUMP_STOP] = 1
    assert rig.start(pump, batch=64).join() == (0, 0, False)
    for index, lane in enumerate(rig.lanes):
        assert counters(lane.state) == zeros()
        assert lane.state[PUMP_STOP] == (index == flag)
        assert lane.source_left() == [b"stay"]
    rig.drain()
    assert [lane.received for lane in rig.lanes] == [[], []]


@pytest.mark.parametrize("pump", PAIR_PUMPS)
@pytest.mark.parametrize("flag", [0, 1], ids=["flag_ab", "flag_ba"])
@pytest.mark.parametrize("wake", [0, 1], ids=["wake_ab", "wake_ba"])
def test_a_stop_flag_ends_a_running_pump(pump: Pump, rig: PairRig, flag: int, wake: int) -> None:
    run = rig.start(pump)
    for lane in rig.lanes:
        lane.src_peer.send(b"one")
    assert rig.wait_until(lambda: all(lane.received == [b"one"] for lane in rig.lanes))
    run.settle_in_poll()
    rig.states[flag][PUMP_STOP] = 1
    # The flag is read before a read: the frame that wakes the pump stays.
    rig.lanes[wake].src_peer.send(b"wake")
    assert rig.wait_until(finished(run))
    assert run.join() == (0, 0, False)
    for index, lane in enumerate(rig.lanes):
        assert counters(lane.state) == exact([b"one"], [b"one"])
        assert lane.source_left() == ([b"wake"] if index == wake else [])


@pytest.mark.parametrize("pump", PAIR_PUMPS)
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("ended", [0, 1], ids=["a_ends", "b_ends"])
def test_end_of_stream_on_one_side_after_both_lanes_frames(
    pump: Pump, rig: PairRig, ended: int, batch: int
) -> None:
    # shutdown(SHUT_WR), not close(): the peer that ends its stream must still
    # receive the other lane's frames (writing to a closed peer is EPIPE).
    sent = {ended: [b"end-1", b"end-2" * 100, b"end-3"], 1 - ended: [b"other-1", b"other-2"]}
    for index, lane in enumerate(rig.lanes):
        for frame in sent[index]:
            lane.src_peer.send(frame)
    rig.lanes[ended].src_peer.shutdown(socket.SHUT_WR)
    run = rig.start(pump, batch=batch)
    assert rig.wait_until(finished(run))
    assert run.join() == (ended, FRAMES_EOF, False)
    rig.drain()
    lane = rig.lanes[ended]
    assert lane.received == sent[ended]
    assert counters(lane.state) == exact(sent[ended], sent[ended])
    # The end stops all reading: the other lane's frames were read and
    # written, or are still in its source, whichever lane went first; none
    # is lost or reordered.
    other = rig.lanes[1 - ended]
    got = other.received
    assert got + other.source_left() == sent[1 - ended]
    assert counters(other.state) == exact(got, got)


@pytest.mark.parametrize("pump", PAIR_PUMPS)
@pytest.mark.parametrize("refusing", [0, 1], ids=["ab_refuses", "ba_refuses"])
def test_a_refused_write_on_one_lane_while_the_other_has_traffic(
    pump: Pump, rig: PairRig, refusing: int
) -> None:
    bad, good = rig.lanes[refusing], rig.lanes[1 - refusing]
    bad.dst.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_SNDBUF)
    small = [b"s1" * 10, b"s2" * 20, b"s3" * 30]
    bad_frames = [small[0], TOO_BIG, small[1], small[2]]
    good_frames = [b"g1", b"g2" * 500, b"g3"]
    for frame in bad_frames:
        bad.src_peer.send(frame)
    for frame in good_frames:
        good.src_peer.send(frame)
    # Everything is in the sources before the start: one batch per lane.
    run = rig.start(pump, batch=64)
    assert rig.wait_until(finished(run))
    assert run.join() == (refusing, errno.EMSGSIZE, True)
    rig.drain()
    assert bad.received == small
    assert counters(bad.state) == exact(bad_frames, small)
    assert bad.state[PUMP_DROPPED] == 1
    assert bad.source_left() == []
    # The failure stops all reading: the other lane's frames were read and
    # written, or are still in its source (whichever lane went first).
    got = good.received
    assert got + good.source_left() == good_frames
    assert counters(good.state) == exact(got, got)


@pytest.mark.parametrize("pump", PAIR_PUMPS)
@pytest.mark.parametrize(("batch", "held"), [(64, 3), (1, 1)])
def test_a_failure_waits_for_the_frames_the_other_lane_holds(
    pump: Pump, rig: PairRig, batch: int, held: int
) -> None:
    fails, holds = rig.lanes
    fails.dst.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_SNDBUF)
    # Lane 1's destination is full: nobody reads a_peer yet.
    filled = fill(holds.dst, FILLER)
    assert filled > 0
    frames = [b"held-%d" % i for i in range(3)]
    for frame in frames:
        holds.src_peer.send(frame)
    run = rig.start(pump, batch=batch)
    assert reads_reach(holds.state, held)
    fails.src_peer.send(TOO_BIG)
    assert rig.wait_until(lambda: fails.state[PUMP_DROPPED] == 1, drain=(0,))
    run.settle_in_poll()
    # Lane 0 failed, lane 1 still holds its frames: the pump waits for room.
    assert run.thread.is_alive() and not run.result
    assert counters(holds.state) == in_hand(frames[:held])
    assert counters(fails.state) == exact([TOO_BIG], [])
    assert rig.wait_until(finished(run), drain=(1,))
    assert run.join() == (0, errno.EMSGSIZE, True)
    rig.drain()
    assert holds.received == [FILLER] * filled + frames[:held]
    assert counters(holds.state) == exact(frames[:held], frames[:held])
    assert fails.received == []
    # No more reads once lane 0 failed.
    assert holds.source_left() == frames[held:]


@pytest.mark.parametrize("pump", PAIR_PUMPS)
@pytest.mark.parametrize(("batch", "held"), [(64, 2), (1, 1)])
@pytest.mark.parametrize(
    ("holding", "first"), [((0, 1), 0), ((1,), 1), ((0,), 0)], ids=["both", "ba", "ab"]
)
def test_stop_writing_drops_what_both_lanes_hold(
    pump: Pump, rig: PairRig, batch: int, held: int, holding: tuple[int, ...], first: int
) -> None:
    filled = {}
    for index in holding:
        lane = rig.lanes[index]
        filled[index] = fill(lane.dst, FILLER)
        assert filled[index] > 0
        for i in range(2):
            lane.src_peer.send(b"lane%d-%d" % (index, i))
    run = rig.start(pump, batch=batch)
    for index in holding:
        assert reads_reach(rig.states[index], held)
    run.settle_in_poll()
    rig.stop_reading()
    rig.stop_writing()
    assert rig.wait_until(finished(run), drain=())
    assert run.join() == (first, 0, True)
    rig.drain()
    for index, lane in enumerate(rig.lanes):
        if index in holding:
            frames = [b"lane%d-%d" % (index, i) for i in range(2)]
            assert counters(lane.state) == exact(frames[:held], [])
            assert lane.state[PUMP_DROPPED] == held
            assert lane.received == [FILLER] * filled[index]
            assert lane.source_left() == frames[held:]
        else:
            assert counters(lane.state) == zeros()
            assert lane.received == []


@pytest.mark.parametrize("pump", PAIR_PUMPS)
@pytest.mark.parametrize("cause", ["eof", "refused"])
def test_a_failure_pending_behind_held_frames_outlives_stop_writing(
    pump: Pump, rig: PairRig, cause: str
) -> None:
    """Lane 0 fails (end of stream, or a refused frame) while it still holds a
    frame waiting for room; the stop then drops that frame, and the failure is
    what the pump reports, not the stop.  (The compiled pump once reported
    (0, 0, True) here: the two pumps disagreed.)"""
    lane = rig.lanes[0]
    if cause == "refused":
        lane.dst.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_SNDBUF)
    assert fill(lane.dst, FILLER) > 0
    if cause == "refused":
        lane.src_peer.send(TOO_BIG)
    else:
        lane.src_peer.send(b"x")
    lane.src_peer.send(b"y")
    if cause == "eof":
        lane.src_peer.shutdown(socket.SHUT_WR)
    run = rig.start(pump, batch=64)
    assert reads_reach(lane.state, 2)
    run.settle_in_poll()
    assert run.thread.is_alive()
    rig.stop_reading()
    run.settle_in_poll()
    rig.stop_writing()
    assert rig.wait_until(finished(run), drain=())
    if cause == "refused":
        assert run.join() == (0, errno.EMSGSIZE, True)
    else:
        assert run.join() == (0, FRAMES_EOF, False)
    assert lane.state[PUMP_READS] == 2 and lane.state[PUMP_WRITES] == 0
    assert lane.state[PUMP_DROPPED] == 2
    assert counters(rig.states[1]) == zeros()


@pytest.mark.parametrize("pump", PAIR_PUMPS)
@pytest.mark.parametrize("index", [0, 1], ids=["ab", "ba"])
@pytest.mark.parametrize(
    ("batch", "size", "length", "count", "held"),
    [
        (1, SIZE, 100, 3, 1),
        (3, SIZE, 100, 5, 3),
        # After k frames the room is size + PUMP_POOL - k * length; a read
        # needs size of it: three frames leave room for a fourth, four do not.
        (64, 100_000, 50_000, 6, 4),
    ],
    ids=["one", "batch", "pool"],
)
def test_stop_reading_waits_for_the_frames_in_hand(
    pump: Pump,
    rig: PairRig,
    index: int,
    batch: int,
    size: int,
    length: int,
    count: int,
    held: int,
) -> None:
    if batch == 64:
        assert (held - 1) * length <= PUMP_POOL < held * length
    lane, other = rig.lanes[index], rig.lanes[1 - index]
    lane.src_peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    frames = [bytes([65 + i]) * length for i in range(count)]
    for frame in frames:
        assert lane.src_peer.send(frame) == length
    filled = fill(lane.dst, FILLER)
    assert filled > 0
    run = rig.start(pump, limits=(size, size), size=size, batch=batch)
    assert reads_reach(lane.state, held)
    run.settle_in_poll()
    assert counters(lane.state) == in_hand(frames[:held])
    rig.stop_reading()
    run.settle_in_poll()
    assert run.thread.is_alive() and not run.result
    assert lane.state[PUMP_WRITES] == lane.state[PUMP_DROPPED] == 0
    assert rig.wait_until(finished(run))
    assert run.join() == (0, 0, False)
    rig.drain()
    assert lane.received == [FILLER] * filled + frames[:held]
    assert counters(lane.state) == exact(frames[:held], frames[:held])
    assert lane.source_left(size) == frames[held:]
    assert counters(other.state) == zeros()
    assert other.received == []


@pytest.mark.parametrize("pump", PAIR_PUMPS)
def test_counters_continue_from_both_states(pump: Pump) -> None:
    state_ab = new_state(reads=5, read_bytes=500, writes=4, write_bytes=400, dropped=1)
    state_ba = new_state(reads=70, read_bytes=7000, writes=60, write_bytes=6000, dropped=10)
    sent = ([b"x" * 10, b"y" * 2000, b"z" * 30], [b"p" * 7, b"q" * 700])
    with make_rig(state_ab, state_ba) as rig:
        for lane, frames in zip(rig.lanes, sent, strict=True):
            for frame in frames:
                lane.src_peer.send(frame)
        run = rig.start(pump, limits=(1000, 500), batch=64)
        assert rig.wait_until(idle_after(rig, (8, 72)))
        rig.stop_reading()
        assert run.join() == (0, 0, False)
        rig.drain()
        assert rig.lanes[0].received == [b"x" * 10, b"z" * 30]
        assert rig.lanes[1].received == [b"p" * 7]
    assert counters(state_ab) == {
        "reads": 8,
        "read_bytes": 2540,
        "writes": 6,
        "write_bytes": 440,
        "dropped": 2,
    }
    assert counters(state_ba) == {
        "reads": 72,
        "read_bytes": 7707,
        "writes": 61,
        "write_bytes": 6007,
        "dropped": 11,
    }


@pytest.mark.skipif(not HAVE_C, reason="no compiled pump_pair")
def test_bad_arguments_are_refused(rig: PairRig) -> None:
    # Should a bad argument be let through, the call must not block this
    # thread: both sources are at their end and the stop pipe is readable.
    rig.a_peer.shutdown(socket.SHUT_WR)
    rig.b_peer.shutdown(socket.SHUT_WR)
    rig.stop_reading()
    good = [
        rig.a.fileno(),
        rig.b.fileno(),
        1500,
        1500,
        1500,
        rig.stop_read_r,
        rig.stop_write_r,
        rig.states[0],
        rig.states[1],
        1,
    ]

    def call(**changes: Any) -> tuple[int, int, bool]:
        args = list(good)
        for index, value in changes.items():
            args[int(index[1:])] = value
        return _speedups.pump_pair(*args)

    for count in (0, 9, 11):
        with pytest.raises(TypeError):
            _speedups.pump_pair(*(good * 2)[:count])
    for index in (0, 1, 5, 6):
        for fd in (-1, 2**31):
            with pytest.raises(ValueError):
                call(**{f"a{index}": fd})
        with pytest.raises(TypeError):
            call(**{f"a{index}": "3"})
    for size in (0, -5, (1 << 20) + 1):
        with pytest.raises(ValueError):
            call(a2=size)
    for index in (3, 4):
        for limit in (0, -1):
            with pytest.raises(ValueError):
                call(**{f"a{index}": limit})
    for batch in (0, -1, 65):
        with pytest.raises(ValueError):
            call(a9=batch)
    too_small = [array("Q", bytes(8)), bytearray(8 * PUMP_FIELDS - 1)]
    misaligned = memoryview(bytearray(8 * PUMP_FIELDS + 8))[1 : 1 + 8 * PUMP_FIELDS]
    read_only = [bytes(8 * PUMP_FIELDS), memoryview(bytearray(8 * PUMP_FIELDS)).toreadonly()]
    for index in (7, 8):
        for state in (*too_small, misaligned):
            with pytest.raises(ValueError):
                call(**{f"a{index}": state})
        # Refused by the buffer protocol itself.
        for state in read_only:
            with pytest.raises(BufferError):
                call(**{f"a{index}": state})
    # The bounds themselves are accepted: a stop flag returns at once, the
    # sources at their end are reached once the flags are down.
    for flag in (0, 1):
        rig.states[flag][PUMP_STOP] = 1
        for size, limit in ((1, 1), (1 << 20, 1 << 30)):
            for batch in (1, 64):
                assert call(a2=size, a3=limit, a4=limit, a9=batch) == (0, 0, False)
        rig.states[flag][PUMP_STOP] = 0
    assert call(a2=1 << 20, a3=1, a4=1, a9=64) == (0, FRAMES_EOF, False)
    for state in rig.states:
        assert counters(state) == zeros()


@pytest.mark.skipif(not HAVE_C, reason="no compiled pump_pair")
def test_the_compiled_pump_waits_without_the_gil(rig: PairRig) -> None:
    with gil_watchdog(rig.stop_read_w) as ran_meanwhile:
        ab, ba = rig.lanes
        ab.src_peer.send(b"ping")
        run = rig.start(_speedups.pump_pair, batch=64)
        assert rig.wait_until(lambda: ab.received == [b"ping"])
        run.settle_in_poll()
        ran_meanwhile()
        assert run.thread.is_alive() and not run.result
        # And it still forwards, the other way too, with this thread running
        # Python meanwhile.
        ba.src_peer.send(b"pong")
        assert rig.wait_until(lambda: ba.received == [b"pong"])
        ran_meanwhile()
        rig.stop_reading()
        assert run.join() == (0, 0, False)
