"""Stream behaviour that mutation testing found unchecked (``nox -s mutants``).

A SOCK_SEQPACKET socketpair stands in for a TUN fd (one frame per message), so
the bytes and the counters of ``send_raw``, ``receive_raw`` and the batched
write loop can be checked exactly.  A small send buffer makes the socket refuse
a frame (EMSGSIZE, as a device refuses a packet) or report it full (EAGAIN).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import AsyncIterator

import anyio
import pytest
import trio

import trio_tun
import trio_tun._ports
from offload.packets import Flow, expected_segments, super_packet, tcp_flow, tcp_packet
from packets_util import refuse_writes
from trio_tun import Layer, NoDeviceControlError, PacketStream, Route
from trio_tun._framing import PlainFraming, VirtioFraming
from trio_tun._ports import FdPort, MemoryPort
from trio_tun._stream import make_stream
from trio_tun._wait import SCHEDULE_EVERY
from trio_tun.offload import GSO_TCPV4, VIRTIO_NET_HDR_LEN
from trio_tun.testing import MemoryControl, memory_tun_pair

pytestmark = pytest.mark.anyio

DEADLINE = 20
# SO_SNDBUF is clamped to its minimum (4608 on Linux); a message longer than
# the buffer can never be sent (EMSGSIZE), shorter ones fill it (EAGAIN).
SMALL_BUFFER = 1
TOO_BIG = 20000


def _pair(*, small_buffer: bool = False) -> tuple[socket.socket, PacketStream]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    if small_buffer:
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
    ours.setblocking(False)
    return ours, trio_tun.from_fd(theirs.detach())


@pytest.fixture
async def pair() -> AsyncIterator[tuple[socket.socket, PacketStream]]:
    ours, stream = _pair()
    with ours:
        yield ours, stream
        await stream.aclose()


def _received(sock: socket.socket) -> list[bytes]:
    got = []
    while True:
        try:
            got.append(sock.recv(70000))
        except BlockingIOError:
            return got


async def test_send_raw_writes_frames_and_counts_them(
    pair: tuple[socket.socket, PacketStream],
) -> None:
    ours, stream = pair
    limit = 65535
    frames = [b"\x01", b"\x45" * 100, b"z" * limit]
    with anyio.fail_after(DEADLINE):
        for frame in frames:
            await stream.send_raw(frame)
    assert _received(ours) == frames
    stats = stream.statistics()
    assert (stats.tx_packets, stats.tx_bytes) == (3, sum(map(len, frames)))
    assert (stats.writes, stats.write_bytes) == (3, sum(map(len, frames)))
    assert stats.tx_dropped == 0


@pytest.mark.parametrize("size", [0, 65536])
async def test_send_raw_refuses_frames_it_could_never_read_back(
    pair: tuple[socket.socket, PacketStream], size: int
) -> None:
    ours, stream = pair
    with pytest.raises(ValueError, match="frame"):
        await stream.send_raw(bytes(size))
    assert _received(ours) == []
    assert stream.statistics().writes == 0


async def test_send_raw_counts_a_refused_frame_as_dropped() -> None:
    ours, stream = _pair(small_buffer=True)
    with ours, anyio.fail_after(DEADLINE):
        await stream.send_raw(b"a" * 10)
        await stream.send_raw(b"b" * TOO_BIG)  # EMSGSIZE: refused
        await stream.send_raw(b"c" * 20)
        await stream.send_raw(b"d" * TOO_BIG)
        assert _received(ours) == [b"a" * 10, b"c" * 20]
        stats = stream.statistics()
        assert (stats.tx_packets, stats.tx_bytes, stats.tx_dropped) == (2, 30, 2)
        await stream.aclose()


async def test_receive_raw_returns_each_frame_and_counts_it(
    pair: tuple[socket.socket, PacketStream],
) -> None:
    ours, stream = pair
    frames = [b"\x60" + bytes(39), b"x", b"\x45" * 1500]
    with anyio.fail_after(DEADLINE):
        for frame in frames:
            ours.send(frame)
        got = [await stream.receive_raw() for _ in frames]
    assert got == frames
    stats = stream.statistics()
    total = sum(map(len, frames))
    assert (stats.reads, stats.read_bytes) == (3, total)
    assert (stats.rx_packets, stats.rx_bytes) == (3, total)


async def test_send_batch_counts_every_write_across_batches(
    pair: tuple[socket.socket, PacketStream],
) -> None:
    ours, stream = pair
    first = [b"\x45" + bytes(n) for n in (10, 20, 30)]
    second = [b"\x60" + bytes(n) for n in (40, 50)]
    with anyio.fail_after(DEADLINE):
        await stream.send_batch(first)
        await stream.send_batch(second)
    assert _received(ours) == first + second
    stats = stream.statistics()
    total = sum(map(len, first + second))
    assert (stats.writes, stats.write_bytes) == (5, total)
    assert (stats.tx_packets, stats.tx_bytes) == (5, total)


async def test_send_batch_drops_each_refused_packet_and_sends_the_rest() -> None:
    ours, stream = _pair(small_buffer=True)
    batch = [b"1", b"B" * TOO_BIG, b"22", b"C" * TOO_BIG, b"D" * TOO_BIG, b"333"]
    with ours, anyio.fail_after(DEADLINE):
        await stream.send_batch(batch)
        assert _received(ours) == [b"1", b"22", b"333"]
        stats = stream.statistics()
        assert (stats.tx_packets, stats.tx_bytes, stats.tx_dropped) == (3, 6, 3)
        assert (stats.writes, stats.write_bytes) == (3, 6)
        await stream.aclose()


async def test_send_batch_waits_for_room_and_loses_nothing() -> None:
    ours, stream = _pair(small_buffer=True)
    batch = [bytes([n]) * 1000 for n in range(40)]  # far more than the buffer holds
    got: list[bytes] = []
    with ours, anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:

            async def drain() -> None:
                while len(got) < len(batch):
                    await trio.lowlevel.wait_readable(ours)
                    got.extend(_received(ours))

            tg.start_soon(drain)
            await stream.send_batch(batch)
        await stream.aclose()
    assert got == batch
    stats = stream.statistics()
    assert (stats.tx_packets, stats.tx_dropped, stats.writes) == (40, 0, 40)


@pytest.fixture
def anyio_backend() -> str:
    # trio.lowlevel.wait_readable above: the trio backend only.
    return "trio"


async def test_repr_names_the_device_and_says_closed() -> None:
    left, right = memory_tun_pair(names=("left0", "right0"))
    assert repr(left) == "<TunStream 'left0' fd=-1>"
    await left.aclose()
    assert repr(left) == "<TunStream 'left0' fd=-1 closed>"
    await right.aclose()
    ours, stream = _pair()
    with ours:
        fd = stream.fileno()
        assert repr(stream) == f"<TunStream '?' fd={fd}>"
        await stream.aclose()


async def test_set_down_and_set_up_report_a_bool() -> None:
    left, right = memory_tun_pair()
    async with left, right:
        await left.set_down()
        assert await left.is_up() is False
        await left.set_up()
        assert await left.is_up() is True


async def test_engine_runs_every_queue_of_the_stream() -> None:
    left, right = memory_tun_pair()
    async with left, right:
        engine = left.engine(grace=1.0, channel_batches=2)
        assert engine.queues == left.queues
        with anyio.fail_after(DEADLINE):
            async with engine:
                await engine.send_batch([b"\x45" + bytes(19)])
                assert await right.receive() == b"\x45" + bytes(19)


async def test_receive_batch_counts_reads_across_batches(
    pair: tuple[socket.socket, PacketStream],
) -> None:
    ours, stream = pair
    frames = [bytes([0x45, n]) * (n + 1) for n in range(5)]
    with anyio.fail_after(DEADLINE):
        for frame in frames:
            ours.send(frame)
        got = await stream.receive_batch(3)
        got += await stream.receive_batch(3)
    assert got == frames
    stats = stream.statistics()
    total = sum(map(len, frames))
    assert (stats.reads, stats.read_bytes, stats.rx_packets) == (5, total, 5)


async def test_memory_streams_parse_every_packet() -> None:
    left, right = memory_tun_pair()
    async with left, right:
        packets = [b"\x45" + bytes(n) for n in (19, 30, 40)]
        with anyio.fail_after(DEADLINE):
            for packet in packets:
                await left.send(packet)
            got = [await right.receive() for _ in packets]
        assert got == packets
        stats = right.statistics()
        assert (stats.rx_packets, stats.rx_malformed) == (3, 0)


async def test_coalesced_writes_are_counted_per_super_packet() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    stream = trio_tun.from_fd(theirs.detach(), vnet_hdr=True)
    flow = Flow()
    first = tcp_flow(flow, [100] * 4, seq=1)
    second = tcp_flow(flow, [100] * 3, seq=401, ident=4)
    with ours, anyio.fail_after(DEADLINE):
        await stream.send_batch(first)
        # A lone packet is written as it is, not as a super-packet.
        await stream.send_batch(first[:1])
        await stream.send_batch(second)
        frames = _received(ours)
        await stream.aclose()
    # One frame per batch: two super-packets and one plain packet.
    assert len(frames) == 3
    assert [len(f) - VIRTIO_NET_HDR_LEN for f in frames] == [40 + 400, 40 + 100, 40 + 300]
    stats = stream.statistics()
    assert (stats.tx_coalesced, stats.tx_packets, stats.tx_dropped) == (2, 8, 0)


async def test_device_control_errors_say_why() -> None:
    ours, stream = _pair()
    with ours:
        with pytest.raises(
            NoDeviceControlError,
            match=r"^this stream has no device control \(it wraps an fd whose device is unknown\)$",
        ):
            await stream.set_mtu(1400)
        await stream.aclose()
    left, right = memory_tun_pair()
    await left.aclose()
    with pytest.raises(
        trio_tun.ClosedResourceError,
        match=r"^this stream was closed; its device can't be configured$",
    ):
        await left.set_mtu(1400)
    await right.aclose()


async def test_coalescing_counts_segments_singles_and_refusals_exactly() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    stream = trio_tun.from_fd(theirs.detach(), vnet_hdr=True)
    one, two = Flow(sport=1111), Flow(sport=2222)
    # A flow with a short last segment: 4 segments in 350 bytes.
    short_last = tcp_flow(one, [100, 100, 100, 50], seq=1)
    # Two flows of one segment each: two plain frames, nothing coalesced.
    singles = [tcp_flow(one, [80], seq=351)[0], tcp_flow(two, [80], seq=1)[0]]
    garbage = b"\x00 not an IP packet"
    with ours, anyio.fail_after(DEADLINE):
        await stream.send_batch(short_last)
        await stream.send_batch(singles)
        # Refused packets are counted batch after batch; the rest still goes.
        await stream.send_batch([garbage, *tcp_flow(two, [60, 60], seq=81)])
        await stream.send_batch([*tcp_flow(two, [60, 60], seq=201), garbage])
        frames = _received(ours)
        await stream.aclose()
    assert len(frames) == 1 + 2 + 1 + 1
    stats = stream.statistics()
    assert stats.tx_packets == 4 + 2 + 2 + 2
    assert stats.tx_coalesced == 3
    assert stats.tx_dropped == 2


async def test_size_errors_say_what_the_limit_is(pair: tuple[socket.socket, PacketStream]) -> None:
    _, stream = pair
    with pytest.raises(ValueError, match=r"^can't send an empty packet$"):
        await stream.send(b"")
    with pytest.raises(
        ValueError,
        match=r"^frame of 65536 bytes is larger than the 65535-byte limit "
        r"\(a 65535-byte packet plus 0 header bytes\)$",
    ):
        await stream.send_raw(bytes(65536))


async def test_receive_batch_counts_the_bytes_it_hands_out(
    pair: tuple[socket.socket, PacketStream],
) -> None:
    ours, stream = pair
    frames = [b"\x45" + bytes(n) for n in (19, 99, 1499)]
    with anyio.fail_after(DEADLINE):
        for frame in frames:
            ours.send(frame)
        got = await stream.receive_batch(len(frames))
        ours.send(frames[0])
        got += await stream.receive_batch()
    assert got == [*frames, frames[0]]
    stats = stream.statistics()
    assert (stats.rx_packets, stats.rx_bytes) == (4, sum(map(len, got)))


async def test_busy_errors_name_the_direction(
    pair: tuple[socket.socket, PacketStream],
) -> None:
    ours, stream = pair
    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(stream.receive)
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(
                trio_tun.BusyResourceError,
                match=r"^another task is already receiving on this stream$",
            ):
                await stream.receive()
            ours.send(b"\x45" + bytes(19))
    # Sending: a full socket keeps the first sender waiting.
    ours2, small = _pair(small_buffer=True)
    with ours2, anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(small.send_batch, [bytes(1000)] * 40)
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(
                trio_tun.BusyResourceError,
                match=r"^another task is already sending on this stream$",
            ):
                await small.send(b"\x45" + bytes(19))
            tg.cancel_scope.cancel()
        await small.aclose()


async def test_flags_of_a_fresh_stream_are_true_bools() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours:
        stream = trio_tun.from_fd(theirs.detach(), packet_info=True)
        assert stream.packet_info is True
        assert stream.queue_attached is True
        await stream.aclose()


async def test_a_refused_coalesced_write_is_resent_split_and_coalescing_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Some kernels refuse GSO writes with EINVAL (e.g. a short last segment).
    refusals: list[int] = []

    def picky(frame: bytes) -> int:
        if frame[1] != 0 or frame[VIRTIO_NET_HDR_LEN:].endswith(b"refuse me"):
            refusals.append(frame[1])
            return errno.EINVAL
        return 0

    refuse_writes(monkeypatch, picky)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    stream = trio_tun.from_fd(theirs.detach(), vnet_hdr=True)
    flow, other = Flow(), Flow(sport=2222)
    segments = tcp_flow(flow, [100] * 4, seq=1)
    odd = tcp_packet(other, 1, b"refuse me")
    with ours, anyio.fail_after(DEADLINE):
        # A one-packet frame refused with EINVAL is just dropped: no fallback.
        await stream.send_batch([odd, tcp_flow(other, [10], seq=10)[0]])
        stats = stream.statistics()
        assert (stats.tx_dropped, stats.tx_coalesce_fallbacks, stats.tx_packets) == (1, 0, 1)
        assert stream.framing.coalescing
        _received(ours)
        # A super-packet refused: its segments go one by one, nothing lost.
        await stream.send_batch(segments)
        frames = _received(ours)
        assert [f[VIRTIO_NET_HDR_LEN:] for f in frames] == segments
        stats = stream.statistics()
        assert (stats.tx_dropped, stats.tx_coalesce_fallbacks) == (1, 1)
        assert (stats.tx_packets, stats.tx_coalesced) == (1 + 4, 0)
        # From now on batches are written packet by packet.
        assert not stream.framing.coalescing
        more = tcp_flow(flow, [100] * 3, seq=401, ident=4)
        await stream.send_batch(more)
        assert [f[VIRTIO_NET_HDR_LEN:] for f in _received(ours)] == more
        await stream.aclose()
    assert refusals == [0, GSO_TCPV4]


async def test_receive_into_reads_straight_into_a_big_enough_buffer(
    pair: tuple[socket.socket, PacketStream], monkeypatch: pytest.MonkeyPatch
) -> None:
    ours, stream = pair
    port_type = type(stream._port)
    read_into = port_type.read_into
    # Which memory each read of the fd wrote into: the caller's, or ours.
    into_callers: list[bool] = []

    def spy(port: object, buffer: object) -> int:
        into_callers.append(isinstance(buffer, memoryview) and buffer.obj is buf)
        return int(read_into(port, buffer))  # type: ignore[arg-type]

    monkeypatch.setattr(port_type, "read_into", spy)
    frames = [b"\x45" + bytes([n]) * (20 + n) for n in range(3)]
    buf = bytearray(stream.max_packet)  # exactly one read's worth
    with anyio.fail_after(DEADLINE):
        for frame in frames:
            ours.send(frame)
        got = []
        for _ in frames:
            n = await stream.receive_into(buf)
            got.append(bytes(buf[:n]))
        assert got == frames
        assert into_callers == [True] * 3
        # One byte less than a read: read as receive() reads, then copied.
        ours.send(frames[2])
        small = bytearray(stream.max_packet - 1)
        n = await stream.receive_into(small)
        assert small[:n] == frames[2]
        assert into_callers == [True] * 3
    stats = stream.statistics()
    total = sum(map(len, frames)) + len(frames[2])
    assert (stats.reads, stats.read_bytes) == (4, total)
    assert (stats.rx_packets, stats.rx_bytes) == (4, total)


async def test_receive_into_with_a_virtio_header_strips_it_and_splits() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    stream = trio_tun.from_fd(theirs.detach(), vnet_hdr=True)
    plain = tcp_flow(Flow(sport=9), [30])[0]
    fields, sup = super_packet(Flow(), bytes(range(250)), 100)
    expected = expected_segments(Flow(), bytes(range(250)), 100)
    # Even a buffer of a whole read's size is filled by a copy: the header
    # must come off first.
    buf = bytearray(stream.max_packet + VIRTIO_NET_HDR_LEN)
    with ours, anyio.fail_after(DEADLINE):
        ours.send(bytes(VIRTIO_NET_HDR_LEN) + plain)
        ours.send(struct.pack("=BBHHHH", *fields) + sup)
        n = await stream.receive_into(buf)
        assert buf[:n] == plain
        first = await stream.receive_into(buf)
        assert buf[:first] == expected[0]
        # Too small for the next segment: it stays queued, the message says how long.
        size = len(expected[1])
        with pytest.raises(
            ValueError,
            match=rf"^the next packet is {size} bytes and the buffer {size - 1}; it stays "
            rf"queued: pass a buffer of at least {size} \(max_packet is 65535\)$",
        ):
            await stream.receive_into(bytearray(size - 1))
        exact = bytearray(size)
        assert await stream.receive_into(exact) == size and exact == expected[1]
        assert await stream.receive() == expected[2]
        with pytest.raises(
            TypeError,
            match=r"^receive_into needs a writable buffer \(a bytearray or memoryview\)$",
        ):
            await stream.receive_into(memoryview(bytes(100)))  # type: ignore[arg-type]
        await stream.aclose()
    stats = stream.statistics()
    assert stats.reads == 2
    assert (stats.rx_packets, stats.rx_bytes) == (4, len(plain) + sum(map(len, expected)))


async def test_reads_go_no_further_than_the_call_needs(
    pair: tuple[socket.socket, PacketStream],
) -> None:
    # Frames left in the fd stay the kernel's: another queue, or a later call
    # with a different limit, may take them.
    ours, stream = pair
    frames = [b"\x45" + bytes([n]) * (19 + n) for n in range(7)]
    with anyio.fail_after(DEADLINE):
        for frame in frames:
            ours.send(frame)
        assert await stream.receive() == frames[0]
        assert stream.statistics().reads == 1
        assert await stream.receive_batch(2) == frames[1:3]
        assert stream.statistics().reads == 3
        assert await stream.receive_raw() == frames[3]
        assert stream.statistics().reads == 4
        assert await stream.receive_batch() == frames[4:]
    stats = stream.statistics()
    total = sum(map(len, frames))
    assert (stats.reads, stats.read_bytes, stats.rx_packets, stats.rx_bytes) == (7, total, 7, total)


async def test_virtio_reads_split_count_and_skip_malformed_frames() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    stream = trio_tun.from_fd(theirs.detach(), vnet_hdr=True)
    plain = [tcp_flow(Flow(sport=9), [30 + n])[0] for n in range(2)]
    fields, sup = super_packet(Flow(), bytes(range(250)), 100)
    segments = expected_segments(Flow(), bytes(range(250)), 100)
    hdr = bytes(VIRTIO_NET_HDR_LEN)
    bad = struct.pack("=BBHHHH", 0, 99, 0, 0, 0, 0) + plain[0]  # unknown gso_type
    wire = [hdr + plain[0], hdr + plain[1], struct.pack("=BBHHHH", *fields) + sup, bad, hdr]
    with ours, anyio.fail_after(DEADLINE):
        for frame in wire:
            ours.send(frame)
        assert await stream.receive_batch(1) == plain[:1]
        assert stream.statistics().reads == 1
        # The super-packet's last segment does not fit: it stays queued.
        assert await stream.receive_batch(3) == [plain[1], *segments[:2]]
        assert stream.statistics().reads == 3
        # The rest of the queue first, then whatever reads bring (the two
        # malformed frames bring nothing and are counted).
        ours.send(hdr + plain[0])
        assert await stream.receive_batch() == [segments[2], plain[0]]
        await stream.aclose()
    stats = stream.statistics()
    assert (stats.reads, stats.rx_malformed) == (6, 2)
    assert stats.read_bytes == sum(map(len, wire)) + len(hdr + plain[0])
    assert stats.rx_packets == 2 + 3 + 1


class _Steps(trio.abc.Instrument):
    """Counts how often one task is scheduled: once per yield it made."""

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += task is self.task


async def test_each_direction_yields_once_per_schedule_every_of_its_own_calls(
    pair: tuple[socket.socket, PacketStream],
) -> None:
    # The module docstring's promise: every call checks for cancellation, only
    # every SCHEDULE_EVERY-th call of a direction (or the first after a wait)
    # goes through the scheduler.  Sending and receiving count separately.
    ours, stream = pair
    calls = SCHEDULE_EVERY + 8  # per direction: two yields each
    packet = b"\x45" + bytes(19)
    for _ in range(calls):
        ours.send(packet)
    buf = bytearray(stream.max_packet)
    receivers = [
        stream.receive,
        lambda: stream.receive_batch(1),
        stream.receive_raw,
        lambda: stream.receive_into(buf),
    ]
    senders = [stream.send, lambda p: stream.send_batch([p]), stream.send_raw]
    instrument = _Steps(trio.lowlevel.current_task())
    trio.lowlevel.add_instrument(instrument)
    try:
        for i in range(calls):
            await senders[i % len(senders)](packet)
            await receivers[i % len(receivers)]()
    finally:
        trio.lowlevel.remove_instrument(instrument)
    assert instrument.steps == 2 + 2
    assert len(_received(ours)) == calls
    assert stream.statistics().rx_packets == calls


async def test_device_control_checks_its_arguments_and_says_what_is_wrong() -> None:
    a, b = memory_tun_pair()
    async with a, b:
        control = a._control
        assert isinstance(control, MemoryControl)
        with pytest.raises(TypeError, match=r"^persist must be True or False, not 1$"):
            await a.set_persist(1)  # type: ignore[arg-type]
        # 0xFFFFFFFF is the kernel's "no owner": not a user anyone can be.
        await a.set_owner(0xFFFFFFFE)
        await a.set_group(0)
        assert (control.persist, control.owner, control.group) == (False, 0xFFFFFFFE, 0)
        with pytest.raises(
            ValueError, match=r"^uid must be between 0 and 4294967294, not 4294967295$"
        ):
            await a.set_owner(0xFFFFFFFF)
        with pytest.raises(ValueError, match=r"^gid must be between 0 and 4294967294, not -1$"):
            await a.set_group(-1)
        with pytest.raises(
            ValueError, match=r"^set_mac only applies to TAP devices \(a TUN device has no MAC\)$"
        ):
            await a.set_mac("02:00:00:00:00:01")
        with pytest.raises(
            TypeError, match=r"^pass either a Route or a prefix with keywords, not both$"
        ):
            await a.add_route(Route(prefix="10.9.0.0/16"), metric=3)
        with pytest.raises(ValueError, match=r"^table must be between 1 and 4294967295, not 0$"):
            await a.routes(table=0)
        # A whole Route, with every option, comes back as it went in.
        route = Route(prefix="10.9.0.0/16", gateway="10.8.0.2", table=7, metric=5, scope="global")
        await a.add_route(route)
        assert await a.routes(table=7) == [route]
        await a.remove_route("10.9.0.0/16", table=7, metric=5)
        assert await a.routes(table=7) == []
        # Every keyword reaches the route, and narrows which one goes.
        await a.add_route("10.7.0.0/16", source="10.8.0.1", scope="link", table=9, metric=2)
        linked = Route(prefix="10.7.0.0/16", source="10.8.0.1", scope="link", table=9, metric=2)
        assert await a.routes(table=9) == [linked]
        with pytest.raises(LookupError):
            await a.remove_route("10.7.0.0/16", table=9, scope="host")
        with pytest.raises(LookupError):
            await a.remove_route("10.7.0.0/16", table=9, source="10.8.0.9")
        with pytest.raises(LookupError):
            await a.remove_route("10.7.0.0/16", table=9, gateway="10.8.0.2")
        await a.add_route("10.7.0.0/16", table=9, metric=1)
        await a.remove_route("10.7.0.0/16", table=9, metric=2, scope="link", source="10.8.0.1")
        assert await a.routes(table=9) == [Route(prefix="10.7.0.0/16", table=9, metric=1)]
        assert control.mac is None


async def test_set_mac_on_a_tap_stream_reaches_the_device() -> None:
    ports = MemoryPort.pair(4)
    control = MemoryControl("tap0", 1, 1500)
    tap = make_stream(Layer.L2, ports[0], PlainFraming(), control=control)
    async with tap:
        await tap.set_mac("02-11-22-33-44-55")
        assert control.mac == bytes.fromhex("021122334455")
        await tap.set_mac(bytes.fromhex("0a0000000001"))
        assert control.mac == bytes.fromhex("0a0000000001")
        with pytest.raises(ValueError, match="multicast"):
            await tap.set_mac("03:00:00:00:00:01")
        assert control.mac == bytes.fromhex("0a0000000001")
    ports[1].close()


async def test_fd_zero_is_a_file_descriptor_like_any_other() -> None:
    # A privileged parent may hand the device over as standard input.
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    saved = os.dup(0)
    try:
        os.dup2(theirs.fileno(), 0)
        stream = trio_tun.from_fd(0, owned=False)
        assert stream.extra(trio_tun.TunAttribute.fileno) == 0
        ours.send(b"\x45" + bytes(19))
        with anyio.fail_after(DEADLINE):
            assert await stream.receive() == b"\x45" + bytes(19)
        await stream.aclose()
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        ours.close()
        theirs.close()


async def test_detach_and_attach_tell_the_device_and_say_so() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    calls: list[tuple[int, bool]] = []
    port = FdPort(theirs.detach(), queue_control=lambda fd, attach: calls.append((fd, attach)))
    stream = make_stream(Layer.L3, port, PlainFraming())
    fd = stream.fileno()
    with ours:
        assert stream.queue_attached is True
        stream.detach_queue()
        assert stream.queue_attached is False
        stream.attach_queue()
        assert stream.queue_attached is True
        await stream.aclose()
    assert calls == [(fd, False), (fd, True)]


async def test_closing_one_queue_leaves_the_shared_device_control_alone() -> None:
    # Queues of one device share its control; the opener closes it, not a queue.
    control = MemoryControl("mq0", 1, 1500)
    one, two = MemoryPort.pair(4)
    first = make_stream(Layer.L3, one, PlainFraming(), control=control)
    second = make_stream(Layer.L3, two, PlainFraming(), control=control)
    await first.aclose()
    assert not control.closed
    await second.set_mtu(1400)
    assert second.mtu == 1400
    await second.aclose()
    # A stream that owns its control (from_fd) does close it.
    own = MemoryControl("own0", 2, 1500)
    three, four = MemoryPort.pair(4)
    owner = make_stream(Layer.L3, three, PlainFraming(), control=own, owns_control=True)
    await owner.aclose()
    assert own.closed
    four.close()


async def test_packet_info_makes_room_for_its_header() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours:
        stream = trio_tun.from_fd(theirs.detach(), packet_info=True)
        with pytest.raises(
            ValueError,
            match=r"^frame of 65540 bytes is larger than the 65539-byte limit "
            r"\(a 65535-byte packet plus 4 header bytes\)$",
        ):
            await stream.send_raw(bytes(65540))
        await stream.aclose()


async def test_size_errors_name_the_device_kind_and_the_empty_frame(
    pair: tuple[socket.socket, PacketStream],
) -> None:
    _, stream = pair
    with pytest.raises(
        ValueError,
        match=r"^packet of 65536 bytes is larger than the 65535-byte limit of a TUN device$",
    ):
        await stream.send(bytes(65536))
    with pytest.raises(ValueError, match=r"^can't send an empty frame$"):
        await stream.send_raw(b"")


async def test_a_batch_after_a_refused_receive_into_reads_only_what_it_lacks(
    pair: tuple[socket.socket, PacketStream],
) -> None:
    ours, stream = pair
    frames = [b"\x45" + bytes([n]) * (40 + n) for n in range(6)]
    with anyio.fail_after(DEADLINE):
        for frame in frames:
            ours.send(frame)
        # Too small: the packet is read and stays queued.
        with pytest.raises(ValueError, match="stays queued"):
            await stream.receive_into(bytearray(10))
        assert stream.statistics().reads == 1
        # One queued, two more needed: two reads, not three.
        assert await stream.receive_batch(3) == frames[:3]
        assert stream.statistics().reads == 3
        assert await stream.receive_batch() == frames[3:]
    assert stream.statistics().reads == 6


async def test_a_closed_queue_refuses_control_even_when_the_device_is_still_open() -> None:
    control = MemoryControl("mq1", 1, 1500)
    one, two = MemoryPort.pair(4)
    first = make_stream(Layer.L3, one, PlainFraming(), control=control)
    second = make_stream(Layer.L3, two, PlainFraming(), control=control)
    await first.aclose()
    with pytest.raises(trio_tun.ClosedResourceError, match="this stream was closed"):
        await first.set_mtu(1400)
    with pytest.raises(trio_tun.ClosedResourceError):
        _ = first.name
    assert second.name == "mq1"
    await second.aclose()


async def test_coalesced_frames_are_counted_as_written() -> None:
    # Three frames out of one batch: two super-packets and a lone packet.
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    stream = trio_tun.from_fd(theirs.detach(), vnet_hdr=True)
    first = tcp_flow(Flow(), [100] * 3, seq=1)
    second = tcp_flow(Flow(sport=2222), [50] * 2, seq=7)
    lone = tcp_packet(Flow(sport=3333), 1, b"x")
    with ours, anyio.fail_after(DEADLINE):
        await stream.send_batch([*first, *second, lone])
        frames = _received(ours)
        assert len(frames) == 3
        stats = stream.statistics()
        assert (stats.writes, stats.write_bytes) == (3, sum(map(len, frames)))
        # tx_bytes: what the packets held, virtio headers not included.
        assert stats.tx_bytes == sum(map(len, frames)) - 3 * VIRTIO_NET_HDR_LEN
        assert (stats.tx_packets, stats.tx_coalesced, stats.tx_dropped) == (6, 2, 0)
        await stream.aclose()


async def test_coalesced_frames_wait_for_room_and_go_in_order() -> None:
    # More super-packets than the socket buffer holds: the write loop stops at
    # the first frame that does not fit, waits, and goes on from there.
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    # Room for a few 8 KiB frames (the kernel doubles it), not for forty.
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
    ours.setblocking(False)
    stream = trio_tun.from_fd(theirs.detach(), vnet_hdr=True)
    flows = [tcp_flow(Flow(sport=1000 + i), [1000] * 8, seq=1) for i in range(40)]
    got: list[bytes] = []

    async def drain() -> None:
        for _ in range(10_000):
            got.extend(_received(ours))
            if len(got) == len(flows):
                return
            await anyio.sleep(0.001)

    with ours, anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(drain)
            await stream.send_batch([segment for flow in flows for segment in flow])
    # One frame per flow, in the batch's order (the source port says which).
    sports = [struct.unpack_from("!H", frame, VIRTIO_NET_HDR_LEN + 20)[0] for frame in got]
    assert sports == [1000 + i for i in range(40)]
    stats = stream.statistics()
    assert (stats.writes, stats.tx_packets, stats.tx_coalesced) == (40, 320, 40)
    await stream.aclose()


async def test_coalesced_frames_on_a_port_without_fd_are_written_one_by_one() -> None:
    # A port without an fd (memory here) has no write loop: each coalesced
    # frame is one write, counted the same way; a full queue refuses the rest.
    one, two = MemoryPort.pair(2)
    sender = make_stream(Layer.L3, one, VirtioFraming(coalescing=True, uso=False))
    receiver = make_stream(Layer.L3, two, VirtioFraming(coalescing=True, uso=False))
    flows = [tcp_flow(Flow(sport=4000 + i), [100] * 3, seq=1) for i in range(3)]
    with anyio.fail_after(DEADLINE):
        await sender.send_batch([segment for flow in flows for segment in flow])
        got = await receiver.receive_batch()
    # Two frames fitted the queue (each re-split on receipt), the third was refused.
    assert got == flows[0] + flows[1]
    stats = sender.statistics()
    assert (stats.writes, stats.tx_packets, stats.tx_coalesced, stats.tx_dropped) == (2, 6, 2, 3)
    await sender.aclose()
    await receiver.aclose()


async def test_a_refused_two_segment_super_packet_is_resent_split(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # gso_type set: refused.
    refuse_writes(monkeypatch, lambda frame: errno.EINVAL if frame[1] != 0 else 0)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    stream = trio_tun.from_fd(theirs.detach(), vnet_hdr=True)
    segments = tcp_flow(Flow(), [100, 100], seq=1)
    with ours, anyio.fail_after(DEADLINE):
        await stream.send_batch(segments)
        assert [f[VIRTIO_NET_HDR_LEN:] for f in _received(ours)] == segments
        stats = stream.statistics()
        assert (stats.tx_packets, stats.tx_dropped, stats.tx_coalesce_fallbacks) == (2, 0, 1)
        await stream.aclose()


async def test_a_lone_packet_goes_to_the_device_as_is_even_if_not_ip() -> None:
    # Only the device can say whether it takes a packet; a batch of one is not
    # parsed for coalescing, so nothing is refused on its behalf.
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    stream = trio_tun.from_fd(theirs.detach(), vnet_hdr=True)
    odd = b"\x00 not an IP packet"
    with ours, anyio.fail_after(DEADLINE):
        await stream.send_batch([odd])
        await stream.send(odd)
        assert _received(ours) == [bytes(VIRTIO_NET_HDR_LEN) + odd] * 2
        stats = stream.statistics()
        assert (stats.tx_packets, stats.tx_dropped) == (2, 0)
        await stream.aclose()
