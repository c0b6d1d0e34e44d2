"""``receive_into``: one packet into the caller's buffer, on memory pairs and real devices.

The contract: packets come whole and in order, mixed freely with ``receive``
and ``receive_batch``; a packet longer than the buffer raises ``ValueError``
and stays queued; with offload, a super-packet's segments come one per call.
"""

from __future__ import annotations

import socket
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import trio_tun
from packets_util import is_udp_to, udp4, udp_socket
from trio_tun.testing import NetNamespace, memory_tun_pair

UDP_SEGMENT = 103  # <linux/udp.h>


@pytest.mark.anyio
async def test_memory_pair_buffers_and_counters() -> None:
    a, b = memory_tun_pair()
    async with a, b:
        packets = [udp4("10.0.0.1", "10.0.0.2", 1, 2, bytes([i]) * (10 + i)) for i in range(4)]
        await a.send_batch(packets)
        big = bytearray(70_000)
        n = await b.receive_into(big)
        assert big[:n] == packets[0]
        # A memoryview into the middle of a larger buffer: only its bytes change.
        backing = bytearray(b"\xaa" * 80_000)
        n = await b.receive_into(memoryview(backing)[100:70_100])
        assert backing[100 : 100 + n] == packets[1]
        assert backing[:100] == b"\xaa" * 100 and backing[100 + n :] == b"\xaa" * (80_000 - 100 - n)
        # Too small: ValueError, and the packet stays first in line.
        with pytest.raises(ValueError, match=f"{len(packets[2])} bytes"):
            await b.receive_into(bytearray(10))
        assert await b.receive() == packets[2]
        # Exactly large enough goes through the copy path.
        exact = bytearray(len(packets[3]))
        assert await b.receive_into(exact) == len(packets[3]) and exact == packets[3]
        with pytest.raises(TypeError, match="writable"):
            await b.receive_into(memoryview(b"read only"))  # type: ignore[arg-type]
        stats = b.statistics()
        assert stats.rx_packets == 4
        assert stats.rx_bytes == sum(map(len, packets))


@pytest.mark.anyio
async def test_memory_pair_waits_and_is_cancellable() -> None:
    a, b = memory_tun_pair()
    async with a, b:
        buf = bytearray(70_000)
        with anyio.move_on_after(0.05) as scope:
            await b.receive_into(buf)
        assert scope.cancelled_caught
        packet = udp4("10.0.0.1", "10.0.0.2", 1, 2, b"late")
        async with anyio.create_task_group() as tg:
            got: list[int] = []

            async def reader() -> None:
                got.append(await b.receive_into(buf))

            tg.start_soon(reader)
            await anyio.sleep(0.01)
            await a.send(packet)
        assert buf[: got[0]] == packet


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 3000), min_size=1, max_size=20),
    buffers=st.lists(st.integers(1, 4000), min_size=1, max_size=40),
)
def test_order_and_nothing_lost(sizes: list[int], buffers: list[int]) -> None:
    """Any mix of buffer sizes: packets arrive in order, whole, and a refused one
    is the next one delivered."""

    async def main() -> None:
        a, b = memory_tun_pair()
        async with a, b:
            packets = [bytes([i % 256]) * size for i, size in enumerate(sizes)]
            await a.send_batch(packets)
            got: list[bytes] = []
            i = 0
            for _ in range(len(buffers) + 2 * len(packets)):
                if len(got) == len(packets):
                    break
                size = buffers[i % len(buffers)]
                i += 1
                buf = bytearray(size)
                try:
                    n = await b.receive_into(buf)
                except ValueError:
                    # The refused packet is still next: a big enough buffer gets it.
                    big = bytearray(70_000)
                    n = await b.receive_into(big)
                    got.append(bytes(big[:n]))
                    continue
                got.append(bytes(buf[:n]))
            assert got == packets

    anyio.run(main, backend="trio")


# -- real devices --------------------------------------------------------------------


@pytest.mark.kernel
@pytest.mark.anyio
async def test_straight_read_on_a_plain_device(
    netns: NetNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with trio_tun.open_tun(addresses=["10.8.0.1/24"], offload=False) as dev:
        buf = bytearray(dev.max_packet)
        # Which memory each read of the device's fd wrote into.
        targets: list[bool] = []
        port_type = type(dev._port)
        read_into = port_type.read_into

        def spy(port: Any, buffer: Any) -> int:
            targets.append(isinstance(buffer, memoryview) and buffer.obj is buf)
            return read_into(port, buffer)

        # A buffer of a whole read's size: the kernel writes straight into it.
        monkeypatch.setattr(port_type, "read_into", spy)
        with udp_socket() as sock:
            for i in range(5):
                sock.sendto(b"into %d" % i, ("10.8.0.2", 9))
            got = []
            with anyio.fail_after(10):
                for _ in range(50):
                    n = await dev.receive_into(buf)
                    packet = bytes(buf[:n])
                    if is_udp_to(packet, "10.8.0.2", 9):
                        got.append(packet[28:])
                    if len(got) == 5:
                        break
            assert got == [b"into %d" % i for i in range(5)]
            assert targets and all(targets)  # every read landed in the caller's buffer
            stats = dev.statistics()
            assert stats.reads == stats.rx_packets  # one read per packet, none held back
            # A smaller buffer takes the copy path: no read into it.
            targets.clear()
            sock.sendto(b"copied", ("10.8.0.2", 9))
            small = bytearray(100)
            with anyio.fail_after(10):
                for _ in range(50):
                    n = await dev.receive_into(small)
                    if is_udp_to(bytes(small[:n]), "10.8.0.2", 9):
                        break
        assert small[28:n] == b"copied"
        assert not any(targets)


@pytest.mark.kernel
@pytest.mark.anyio
async def test_offload_segments_one_per_call(netns: NetNamespace) -> None:
    async with trio_tun.open_tun(addresses=["10.8.0.1/24"], offload=True) as dev:
        if not dev.offload.uso:
            pytest.skip(f"kernel did not accept USO ({dev.offload})")
        payload = bytes(range(256)) * 16  # 4096 bytes: 5 segments of at most 1000
        buf = bytearray(dev.max_packet + 100)
        with netns.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setsockopt(socket.IPPROTO_UDP, UDP_SEGMENT, 1000)
            sock.sendto(payload, ("10.8.0.2", 9))
            segments: list[bytes] = []
            with anyio.fail_after(10):
                for _ in range(50):
                    if sum(map(len, segments)) >= len(payload):
                        break
                    if len(segments) == 2:
                        # Mixed with receive(): the next segment, not a new read.
                        packet = await dev.receive()
                    else:
                        n = await dev.receive_into(buf)
                        packet = bytes(buf[:n])
                    if is_udp_to(packet, "10.8.0.2", 9):
                        assert int.from_bytes(packet[2:4], "big") == len(packet) <= 1028
                        segments.append(packet[28:])
        assert b"".join(segments) == payload
        assert [len(s) for s in segments] == [1000, 1000, 1000, 1000, 96]
        stats = dev.statistics()
        # The five segments came from fewer reads: one super-packet, split.
        assert stats.reads < stats.rx_packets
