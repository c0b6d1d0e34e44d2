"""``from_fd``: wrapping an fd obtained elsewhere, owned or borrowed."""

from __future__ import annotations

import os
import socket

import anyio
import pytest

import trio_tun
from packets_util import (
    disable_ipv6_by_default,
    kernel_addresses,
    kernel_link,
    kernel_links,
    parse,
    recv_datagram,
    tun_fd_count,
    udp4,
    udp_socket,
)
from trio_tun import Layer, TunAttribute
from trio_tun.platform.linux import tun as linux
from trio_tun.testing import NetNamespace, fd_count

pytestmark = [pytest.mark.anyio]

IFF_UP = 0x1


async def _exchange(stream: trio_tun.PacketStream) -> None:
    """One packet each way through a device at 10.8.0.1/24, checked byte for byte."""
    with udp_socket(bind=("10.8.0.1", 7500)) as sock:
        sock.sendto(b"to the fd", ("10.8.0.2", 7501))
        with anyio.fail_after(10):
            packet = await stream.receive()  # quiet device: nothing else comes
        p = parse(packet)
        assert p is not None
        assert (p.src, p.dst, p.dport) == ("10.8.0.1", "10.8.0.2", 7501)
        assert p.udp_payload == b"to the fd"
        assert p.l4_checksum_ok
        await stream.send(udp4("10.8.0.2", "10.8.0.1", 7501, 7500, b"from the fd"))
        assert await recv_datagram(sock) == (b"from the fd", ("10.8.0.2", 7501))


@pytest.mark.kernel
async def test_borrowed_fd_stays_open_and_blocking(netns: NetNamespace) -> None:
    disable_ipv6_by_default()
    fds = fd_count()
    fd = os.open(linux.TUN_PATH, os.O_RDWR | os.O_CLOEXEC)  # blocking, as a caller might
    try:
        name = linux.set_iff(fd, "raw%d", linux.IFF_TUN | linux.IFF_NO_PI)
        assert name == "raw0"
        stream = trio_tun.from_fd(fd, owned=False)
        assert isinstance(stream, trio_tun.TunStream)
        assert stream.layer is Layer.L3
        assert not stream.vnet_hdr
        assert not os.get_blocking(fd)  # the stream needs it non-blocking meanwhile
        # The stream found its device and can configure it.
        assert stream.name == "raw0"
        assert stream.index == socket.if_nametoindex("raw0")
        await stream.add_address("10.8.0.1/24")
        await stream.set_up()
        assert "10.8.0.1/24" in await kernel_addresses(netns, stream.index)
        assert (await kernel_link(netns, stream.index))["flags"] & IFF_UP

        await _exchange(stream)

        await stream.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            await stream.receive()
        # Borrowed: still open, still attached, blocking mode given back.
        assert os.get_blocking(fd)
        assert linux.get_iff(fd)[0] == "raw0"
        assert "raw0" in await kernel_links(netns)
    finally:
        os.close(fd)
    assert "raw0" not in await kernel_links(netns)
    assert fd_count() == fds


@pytest.mark.kernel
async def test_owned_fd_is_closed(netns: NetNamespace) -> None:
    disable_ipv6_by_default()
    fds = fd_count()
    fd = linux.open_tun_file()
    name = linux.set_iff(fd, "own%d", linux.IFF_TUN | linux.IFF_NO_PI)
    stream = trio_tun.from_fd(fd)  # owned=True is the default
    assert stream.name == name == "own0"
    assert stream.extra(TunAttribute.name) == "own0"
    assert stream.extra(TunAttribute.fileno) == fd
    await stream.add_address("10.8.0.1/24")
    await stream.set_up()
    await _exchange(stream)
    assert tun_fd_count() == 1
    await stream.aclose()
    assert stream.fileno() == -1
    assert tun_fd_count() == 0
    assert fd_count() == fds  # the TUN fd and the stream's namespace handle
    assert "own0" not in await kernel_links(netns)


@pytest.mark.kernel
async def test_tap_fd_is_recognised(netns: NetNamespace) -> None:
    fd = linux.open_tun_file()
    linux.set_iff(fd, "rawtap%d", linux.IFF_TAP | linux.IFF_NO_PI)
    stream = trio_tun.from_fd(fd, layer="tun")  # the kernel knows better
    try:
        assert isinstance(stream, trio_tun.TapStream)
        assert stream.layer is Layer.L2
        assert stream.name == "rawtap0"
    finally:
        await stream.aclose()
    assert "rawtap0" not in await kernel_links(netns)


# -- no device at all: a socketpair (no root needed) ---------------------------


async def test_socketpair_is_a_datagram_stream() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    fds = fd_count()
    with theirs:
        theirs.setblocking(False)
        stream = trio_tun.from_fd(ours.detach())
        try:
            assert isinstance(stream, trio_tun.TunStream)
            assert stream.layer is Layer.L3
            with pytest.raises(trio_tun.NoDeviceControlError):
                _ = stream.name
            with pytest.raises(trio_tun.NoDeviceControlError):
                await stream.add_address("10.0.0.1/24")
            with pytest.raises(anyio.TypedAttributeLookupError):
                stream.extra(TunAttribute.name)
            assert stream.extra(TunAttribute.layer) is Layer.L3

            # Our side to theirs: datagram boundaries are kept.
            packets = [udp4("10.0.0.1", "10.0.0.2", 1, 2, b"p%d" % i * i) for i in range(1, 6)]
            await stream.send(packets[0])
            await stream.send_batch(packets[1:])
            with anyio.fail_after(10):
                for expected in packets:
                    await anyio.wait_readable(theirs)
                    assert theirs.recv(65536) == expected

            # Theirs to ours, one by one and as a batch.
            theirs.send(b"\x45first")
            with anyio.fail_after(10):
                assert await stream.receive() == b"\x45first"
            for i in range(10):
                theirs.send(b"\x45batch %d" % i)
            with anyio.fail_after(10):
                batch = await stream.receive_batch(64)
            assert batch == [b"\x45batch %d" % i for i in range(10)]

            stats = stream.statistics()
            assert stats.tx_packets == 5
            assert stats.rx_packets == 11
        finally:
            await stream.aclose()
        assert fd_count() == fds - 1  # our end was owned, so it was closed
        assert theirs.recv_into(bytearray(1)) == 0  # and the peer saw it close


async def test_socketpair_borrowed() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        theirs.settimeout(10)
        stream = trio_tun.from_fd(ours.fileno(), owned=False, layer="tap")
        assert isinstance(stream, trio_tun.TapStream)
        frame = b"\x02" * 12 + b"\x08\x00" + b"payload"
        await stream.send(frame)
        assert theirs.recv(100) == frame
        await stream.aclose()
        assert ours.getblocking()  # given back as it was
        ours.send(b"still mine")
        assert theirs.recv(100) == b"still mine"
