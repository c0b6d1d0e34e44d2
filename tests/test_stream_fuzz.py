"""Garbage from the kernel side never escapes the stream: it is dropped and counted.

A SOCK_SEQPACKET socketpair stands in for a TUN fd with IFF_VNET_HDR: each
datagram written to one end is one "read" of header + packet at the stream.
No root needed.
"""

from __future__ import annotations

import os
import socket
import struct

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trio_tun
from trio_tun.offload import (
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    NEEDS_CSUM,
    VIRTIO_NET_HDR_LEN,
    ZERO_HDR,
    MalformedPacket,
    reference,
)

HDR = struct.Struct("=BBHHHH")
# A valid IPv4/UDP packet to mark the end of the garbage (checksum 0 = none).
SENTINEL = bytes.fromhex("4500001c00004000401100000a0000010a0000020035003500080000")

headers = st.builds(
    HDR.pack,
    st.sampled_from([0, NEEDS_CSUM, 2, 3, 0x80, 0xFF]),
    st.sampled_from([GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, 3, 0x81, 0xFF]),
    st.integers(0, 0xFFFF),
    st.sampled_from([0, 1, 8, 536, 1448, 0xFFFF]) | st.integers(0, 0xFFFF),
    st.sampled_from([0, 20, 40, 0xFFFF]) | st.integers(0, 0xFFFF),
    st.sampled_from([6, 16, 0xFFFF]) | st.integers(0, 0xFFFF),
)


def ipv4_tcp_prefix(total_len: int, data_offset: int) -> bytes:
    """A plausible IPv4+TCP header whose fields may lie (for GSO paths to chew on)."""
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, total_len & 0xFFFF, 1, 0, 64, 6, 0, b"\n\0\0\1", b"\n\0\0\2"
    )
    tcp = struct.pack("!HHIIBBHHH", 1, 2, 3, 4, (data_offset & 0xF) << 4, 0x10, 100, 0, 0)
    return ip + tcp


bodies = st.binary(max_size=3000) | st.builds(
    lambda total, off, tail: ipv4_tcp_prefix(total, off) + tail,
    st.integers(0, 0xFFFF),
    st.integers(0, 15),
    st.binary(max_size=5000),
)
frames = st.lists(
    st.one_of(st.binary(max_size=12), st.builds(lambda h, b: h + b, headers, bodies)),
    min_size=1,
    max_size=20,
)


async def _drain(frames_: list[bytes], batch: int) -> tuple[list[bytes], trio_tun.Statistics]:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with left:
        stream = trio_tun.from_fd(right.detach(), vnet_hdr=True)
        for frame in [*frames_, ZERO_HDR + SENTINEL]:
            if frame:  # a zero-length SEQPACKET would read as EOF-like 0
                left.send(frame)
        got: list[bytes] = []
        with trio.fail_after(20):
            while SENTINEL not in got:
                got.extend(await stream.receive_batch(batch))
        stats = stream.statistics()
        await stream.aclose()
    return got, stats


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames, st.integers(1, 64))
def test_garbage_is_dropped_and_counted(frames_: list[bytes], batch: int) -> None:
    got, stats = trio.run(_drain, frames_, batch)
    # What each frame should become, by the reference implementation: its
    # packets, or one count of malformed.
    expected: list[bytes] = []
    malformed = 0
    for frame in filter(None, frames_):
        if len(frame) <= VIRTIO_NET_HDR_LEN:
            malformed += 1
        elif frame[0] == 0 and frame[1] == GSO_NONE:
            expected.append(frame[VIRTIO_NET_HDR_LEN:])
        else:
            try:
                expected.extend(reference.split_with_header(frame))
            except MalformedPacket:
                malformed += 1
    assert got == [*expected, SENTINEL]
    sent = sum(1 for f in frames_ if f) + 1
    assert stats.reads == sent
    assert stats.rx_malformed == malformed
    assert stats.rx_packets == len(got)
    # Whatever came out is an IP packet of a size a TUN device could carry.
    for packet in got:
        assert 0 < len(packet) <= 65535


def test_short_reads_are_malformed() -> None:
    got, stats = trio.run(_drain, [b"\x01", b"\0" * 9], 8)
    assert got == [SENTINEL]
    assert stats.rx_malformed == 2


@pytest.mark.parametrize("gso_size", [0, 1])
def test_degenerate_gso_size_does_not_hang(gso_size: int) -> None:
    frame = (
        HDR.pack(NEEDS_CSUM, GSO_TCPV4, 40, gso_size, 20, 16)
        + ipv4_tcp_prefix(40 + 60000, 5)
        + bytes(60000)
    )
    got, stats = trio.run(_drain, [frame], 64)
    assert got[-1] == SENTINEL
    # gso_size 1 is legal and yields 60000 one-byte segments; 0 is malformed.
    assert stats.rx_malformed == (1 if gso_size == 0 else 0)


def test_socket_peer_closing_ends_iteration() -> None:
    async def main() -> list[bytes]:
        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        stream = trio_tun.from_fd(right.detach())
        with left:
            left.send(SENTINEL)
        got = [packet async for packet in stream]
        await stream.aclose()
        return got

    assert trio.run(main) == [SENTINEL]


def test_close_after_the_event_loop_has_gone() -> None:
    """A stream that waited on its fd under Trio can still be closed from sync code."""
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stream = trio_tun.from_fd(right.detach())

    async def main() -> bytes:
        async def send_later() -> None:
            await trio.sleep(0.05)
            left.send(SENTINEL)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_later)
            return await stream.receive()

    with left:
        # The receive had to wait (the datagram comes later), so the fd was
        # registered with Trio's I/O manager.
        assert trio.run(main) == SENTINEL
        fd = stream.fileno()
        stream.close()
        assert stream.fileno() == -1
        with pytest.raises(OSError):
            os.fstat(fd)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=10))
def test_send_batch_with_offload_never_raises_on_garbage(garbage: list[bytes]) -> None:
    """Non-IP bytes in a coalescing send are dropped and counted; the rest is written."""
    garbage = [g for g in garbage if g]

    async def main() -> tuple[list[bytes], trio_tun.Statistics]:
        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        stream = trio_tun.from_fd(right.detach(), vnet_hdr=True)
        with left:
            await stream.send_batch([*garbage, SENTINEL, SENTINEL])
            stats = stream.statistics()
            left.setblocking(False)
            frames = []
            while True:
                try:
                    frames.append(left.recv(70000))
                except BlockingIOError:
                    break
        await stream.aclose()
        return frames, stats

    frames, stats = trio.run(main)
    assert stats.tx_packets + stats.tx_dropped == len(garbage) + 2
    # Both sentinels went out, each whole, behind a virtio header.
    assert sum(f[HDR.size :] == SENTINEL for f in frames) == 2
