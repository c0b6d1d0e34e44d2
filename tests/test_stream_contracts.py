"""Stream contracts checked by their outcomes: nothing dropped that was only delayed,
nothing lost at close that was not counted, batches no larger than asked, raw
frames that really cross a device.

The first three run over a Unix datagram socket pair wrapped with
:func:`trio_tun.from_fd` (one datagram per read or write, like a TUN fd), so a
full peer gives real ``EAGAIN`` and a virtio header can be fed by hand; the
last one uses a real TUN device in a namespace the test creates.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import trio_tun
from offload.packets import Flow, super_packet
from packets_util import is_udp_to, parse, recv_datagram, udp4, udp_socket
from trio_tun import PacketStream
from trio_tun._stream import DEFAULT_BATCH, DEFAULT_BATCH_BYTES
from trio_tun.testing import NetNamespace

pytestmark = pytest.mark.anyio

DEADLINE = 30
VNET_LEN = 10


def _pair(sndbuf: int | None = None) -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    if sndbuf is not None:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    theirs.setblocking(False)
    return ours, theirs


@pytest.fixture
def plain() -> Iterator[tuple[PacketStream, socket.socket]]:
    ours, theirs = _pair(sndbuf=4096)
    stream = trio_tun.from_fd(ours.detach(), vnet_hdr=False)
    with theirs:
        yield stream, theirs


@pytest.fixture
def offloaded() -> Iterator[tuple[PacketStream, socket.socket]]:
    ours, theirs = _pair()
    stream = trio_tun.from_fd(ours.detach(), vnet_hdr=True)
    with theirs:
        yield stream, theirs


def numbered(n: int) -> bytes:
    return b"\x45" + struct.pack("!I", n) + bytes(200)


async def test_a_full_peer_delays_writes_and_drops_nothing(
    plain: tuple[PacketStream, socket.socket],
) -> None:
    stream, peer = plain
    async with stream:
        # Fill the socket until the kernel says EAGAIN: the next write must wait.
        filler = 0
        while True:
            try:
                os.write(stream.fileno(), numbered(10_000 + filler))
            except BlockingIOError:
                break
            filler += 1
            assert filler < 10_000
        count = 200
        got: list[int] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(stream.send_batch, [numbered(n) for n in range(count)])
            await anyio.wait_all_tasks_blocked()
            # send_batch is waiting for room, not dropping.
            assert stream.statistics().tx_dropped == 0
            with anyio.fail_after(DEADLINE):
                while len(got) < filler + count:
                    try:
                        data = peer.recv(4096)
                    except BlockingIOError:
                        await anyio.sleep(0.001)
                        continue
                    got.append(struct.unpack_from("!I", data, 1)[0])
        stats = stream.statistics()
    assert got == [10_000 + i for i in range(filler)] + list(range(count))
    assert (stats.tx_packets, stats.tx_dropped) == (count, 0)


@pytest.mark.parametrize("bad", [b"", bytes(65536)], ids=["empty", "too-large"])
async def test_a_batch_with_a_bad_packet_is_refused_whole(
    plain: tuple[PacketStream, socket.socket], bad: bytes
) -> None:
    """Sizes are checked before anything is written: a bad packet anywhere in
    the batch raises ValueError naming the problem, and nothing goes out."""
    stream, theirs = plain
    message = "empty packet" if not bad else "65536 bytes is larger than the 65535-byte limit"
    with pytest.raises(ValueError, match=message):
        await stream.send_batch([numbered(0), numbered(1), bad, numbered(3)])
    assert stream.statistics().tx_packets == 0
    with pytest.raises(BlockingIOError):
        theirs.recv(4096)
    await stream.send_batch([numbered(4)])
    assert theirs.recv(4096) == numbered(4)
    await stream.aclose()


def tso_frame(segments: int, mss: int = 100) -> bytes:
    fields, packet = super_packet(Flow(), bytes(range(256)) * (segments * mss // 256 + 1), mss)
    body = packet[: 40 + segments * mss]
    # Cut the payload to exactly *segments* segments and fix the IPv4 length;
    # the checksums are the kernel's job (NEEDS_CSUM) and split's.
    body = body[:2] + struct.pack("!H", len(body)) + body[4:]
    header = struct.pack("=BBHHHH", *fields)
    return header + body


async def test_close_counts_split_segments_not_yet_received(
    offloaded: tuple[PacketStream, socket.socket],
) -> None:
    stream, peer = offloaded
    peer.send(tso_frame(10))
    async with stream:
        with anyio.fail_after(DEADLINE):
            first = await stream.receive()
        assert parse(first) is not None
    stats = stream.statistics()
    # One read brought 10 segments; one was received, 9 were pending at close.
    assert (stats.reads, stats.rx_packets, stats.rx_dropped) == (1, 1, 9)


@settings(max_examples=25, deadline=None)
@given(segments=st.integers(1, 30), ask=st.integers(1, 12))
def test_receive_batch_never_returns_more_than_asked(segments: int, ask: int) -> None:
    async def run() -> list[int]:
        ours, peer = _pair()
        stream = trio_tun.from_fd(ours.detach(), vnet_hdr=True)
        sizes: list[int] = []
        with peer:
            peer.send(tso_frame(segments))
            async with stream:
                with anyio.fail_after(DEADLINE):
                    while sum(sizes) < segments:
                        sizes.append(len(await stream.receive_batch(ask)))
        return sizes

    sizes = anyio.run(run, backend="trio")
    # Every batch is full but the last, none larger than asked, none lost.
    assert all(size == ask for size in sizes[:-1])
    assert 1 <= sizes[-1] <= ask and sum(sizes) == segments


@pytest.mark.kernel
async def test_raw_frames_cross_a_real_device(netns: NetNamespace) -> None:
    async with trio_tun.open_tun(addresses=["10.71.0.1/24"], offload=True) as dev:
        with udp_socket(bind=("10.71.0.1", 0)) as sock:
            port = sock.getsockname()[1]
            # Kernel -> device: a datagram routed into the TUN comes out of
            # receive_raw behind its virtio header.
            sock.sendto(b"outward", ("10.71.0.2", 9))
            with anyio.fail_after(DEADLINE):
                while True:
                    frame = await dev.receive_raw()
                    if is_udp_to(frame[VNET_LEN:], "10.71.0.2", 9):
                        break
            assert frame[VNET_LEN:].endswith(b"outward")
            # Device -> kernel: a frame written with send_raw reaches the socket.
            reply = udp4("10.71.0.2", "10.71.0.1", 9, port, b"inward")
            await dev.send_raw(bytes(VNET_LEN) + reply)
            data, source = await recv_datagram(sock)
        stats = dev.statistics()
    assert (data, source) == (b"inward", ("10.71.0.2", 9))
    assert stats.tx_packets == 1 and stats.tx_dropped == 0
    assert stats.rx_packets >= 1


async def test_an_offloaded_batch_reads_in_runs_and_keeps_its_limits(
    offloaded: tuple[PacketStream, socket.socket],
) -> None:
    """With offload a batch is read in runs into one pool: more super-packets
    than one run holds still come in order, and the batch's read limit holds."""
    stream, peer = offloaded
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    # Eight super-packets of 40 segments: more than one run of the pool.
    big = [tso_frame(40, 1400) for _ in range(8)]
    for frame in big:
        peer.send(frame)
    with anyio.fail_after(DEADLINE):
        batch = await stream.receive_batch()
    stats = stream.statistics()
    assert (len(batch), stats.reads, stats.read_bytes) == (320, 8, sum(map(len, big)))
    assert [parse(p) is not None for p in batch] == [True] * 320
    # 16 more (900 KB): a batch stops once DEFAULT_BATCH_BYTES have come.
    for frame in big + big:
        peer.send(frame)
    with anyio.fail_after(DEADLINE):
        batch = await stream.receive_batch()
        rest = await stream.receive_batch()
    stats = stream.statistics()
    taken = len(batch) // 40
    assert taken < 16 and taken * len(big[0]) >= DEFAULT_BATCH_BYTES
    assert (len(batch) + len(rest), stats.reads) == (16 * 40, 8 + 16)
    # 100 one-packet frames: a batch is at most DEFAULT_BATCH (64) reads.
    small = [bytes(10) + numbered(n) for n in range(100)]
    for frame in small:
        peer.send(frame)
    with anyio.fail_after(DEADLINE):
        first = await stream.receive_batch()
        second = await stream.receive_batch()
    assert first + second == [numbered(n) for n in range(100)]
    assert (len(first), stream.statistics().reads) == (DEFAULT_BATCH, 24 + 100)
    await stream.aclose()
