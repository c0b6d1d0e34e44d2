"""The 4-byte address-family header: framing properties, and the stream on top.

The numbering comes from each system's ``<sys/socket.h>``: ``AF_INET`` is 2
everywhere; ``AF_INET6`` is 30 on Darwin (xnu), 28 on FreeBSD, 24 on OpenBSD
and NetBSD.  The header is the family as a 32-bit big-endian number (xnu
``utun_output``/``if_utun.c`` prepends ``htonl(protocol)``; FreeBSD, NetBSD
and OpenBSD ``if_tun.c`` do the same in ``TUNSIFHEAD`` mode).
"""

from __future__ import annotations

import socket
import struct

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import trio_tun
from packets_util import udp4, udp6
from trio_tun._framing import (
    AF_HEADER_LEN,
    DARWIN,
    FREEBSD,
    HOST,
    NETBSD,
    OPENBSD,
    AfFamilies,
    AfFraming,
)

ALL = [DARWIN, FREEBSD, OPENBSD, NETBSD, HOST]
EXPECTED_INET6 = {"darwin": 30, "freebsd": 28, "openbsd": 24, "netbsd": 24}

families = st.sampled_from(ALL)
ip_packets = st.tuples(
    st.sampled_from([0x4, 0x6]), st.integers(0, 15), st.binary(max_size=200)
).map(lambda t: bytes([t[0] << 4 | t[1]]) + t[2])


def test_numbering_per_platform() -> None:
    for fams in (DARWIN, FREEBSD, OPENBSD, NETBSD):
        assert fams.inet == 2
        assert fams.inet6 == EXPECTED_INET6[fams.platform]
    assert HOST.inet6 == socket.AF_INET6
    framing = AfFraming(DARWIN)
    assert framing.v4_header == b"\x00\x00\x00\x02"
    assert framing.v6_header == b"\x00\x00\x00\x1e"
    assert AfFraming(FREEBSD).v6_header == b"\x00\x00\x00\x1c"
    assert AfFraming(OPENBSD).v6_header == b"\x00\x00\x00\x18"


@settings(max_examples=300, deadline=None)
@given(fams=families, packet=ip_packets)
def test_round_trip(fams: AfFamilies, packet: bytes) -> None:
    framing = AfFraming(fams)
    frame = framing.encode(packet)
    assert frame is not None
    family = struct.unpack("!I", frame[:4])[0]
    assert family == (fams.inet if packet[0] >> 4 == 4 else fams.inet6)
    assert frame[4:] == packet
    assert framing.decode(frame) == packet


@settings(max_examples=300, deadline=None)
@given(fams=families, frame=st.binary(max_size=64))
def test_anything_is_either_a_packet_or_refused(fams: AfFamilies, frame: bytes) -> None:
    framing = AfFraming(fams)
    packet = framing.decode(frame)  # never raises
    if packet is None:
        return
    family = struct.unpack("!I", frame[:4])[0]
    version = packet[0] >> 4
    assert (family, version) in ((fams.inet, 4), (fams.inet6, 6))
    assert framing.encode(packet) == frame


@settings(max_examples=200, deadline=None)
@given(fams=families, packet=ip_packets, other=st.integers(0, 2**32 - 1))
def test_malformed_frames_are_refused(fams: AfFamilies, packet: bytes, other: int) -> None:
    framing = AfFraming(fams)
    assert framing.decode(b"") is None
    assert framing.decode(framing.encode(packet)[:4]) is None  # type: ignore[index]
    if other not in (fams.inet, fams.inet6):
        assert framing.decode(struct.pack("!I", other) + packet) is None
    # a family that contradicts the version nibble
    wrong = fams.inet6 if packet[0] >> 4 == 4 else fams.inet
    assert framing.decode(struct.pack("!I", wrong) + packet) is None


@given(first=st.integers(0, 255).filter(lambda b: b >> 4 not in (4, 6)), rest=st.binary())
def test_non_ip_is_not_framed(first: int, rest: bytes) -> None:
    assert AfFraming(DARWIN).encode(bytes([first]) + rest) is None
    assert AfFraming(DARWIN).header_for(b"") is None


# -- the stream over a socketpair (both event loops) --------------------------------

V4 = udp4("10.8.0.2", "10.8.0.1", 1, 2, b"hello")
V6 = udp6("fd00:8::2", "fd00:8::1", 1, 2, b"hello six")


@pytest.mark.anyio
async def test_from_fd_with_af_header_strips_and_adds() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with theirs:
        theirs.setblocking(False)
        stream = trio_tun.from_fd(ours.detach(), header="af4")
        try:
            assert type(stream) is trio_tun.TunStream
            assert isinstance(stream.framing, AfFraming)
            assert stream.framing.families == HOST
            assert stream.framing.header_len == AF_HEADER_LEN
            v4_header = struct.pack("!I", 2)
            v6_header = struct.pack("!I", socket.AF_INET6)
            theirs.send(v4_header + V4)
            theirs.send(b"\x00\x00\x00")  # short
            theirs.send(struct.pack("!I", 99) + V4)  # unknown family
            theirs.send(v6_header + V4)  # family contradicts version
            theirs.send(v6_header + V6)
            with anyio.fail_after(5):
                assert await stream.receive() == V4
                assert await stream.receive() == V6
            assert stream.statistics().rx_malformed == 3
            await stream.send(V6)
            await stream.send_batch([V4, b"\x00not ip"])
            with anyio.fail_after(5):
                got = []
                while len(got) < 2:
                    await anyio.wait_readable(theirs)
                    got.append(theirs.recv(1000))
            assert got == [v6_header + V6, v4_header + V4]
            stats = stream.statistics()
            assert stats.tx_packets == 2 and stats.tx_dropped == 1
            assert stats.tx_bytes == len(V6) + len(V4)  # headers not counted
            # Raw access keeps the header: it is what one read/write carries.
            theirs.send(v4_header + V4)
            with anyio.fail_after(5):
                assert await stream.receive_raw() == v4_header + V4
        finally:
            await stream.aclose()


@pytest.mark.anyio
async def test_cancelled_receive_loses_nothing() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with theirs:
        stream = trio_tun.from_fd(ours.detach(), header="af4")
        try:
            with anyio.move_on_after(0.05):
                await stream.receive()
            theirs.send(struct.pack("!I", 2) + V4)
            with anyio.fail_after(5):
                assert await stream.receive() == V4
        finally:
            await stream.aclose()


def test_header_option_is_checked() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        with pytest.raises(ValueError, match="TAP"):
            trio_tun.from_fd(ours.fileno(), owned=False, layer="tap", header="af4")
        with pytest.raises(ValueError, match="header"):
            trio_tun.from_fd(ours.fileno(), owned=False, header="af6")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="vnet_hdr"):
            trio_tun.from_fd(ours.fileno(), owned=False, header="af4", vnet_hdr=True)
        stream = trio_tun.from_fd(ours.fileno(), owned=False, header="none")
        assert type(stream) is trio_tun.TunStream
        assert not isinstance(stream.framing, AfFraming)
        stream.close()
