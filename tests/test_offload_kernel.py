"""The real kernel agrees with our offload layer.

Two namespaces, a TUN device in each, and a trio-tun forwarder between them
that splits what it reads (GSO) and coalesces what it writes (GRO).  Real TCP
and UDP transfers cross it and must arrive byte-exact.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
import trio

import trio_tun
from packets_util import checksum, refuse_writes
from trio_tun import TunStream
from trio_tun._stream import PacketStream
from trio_tun.platform.linux import tun as linux
from trio_tun.testing import NetNamespace

pytestmark = [pytest.mark.kernel]

TCP_BYTES = 200 * 1024 * 1024
CHUNK = 1 << 16
UDP_SEGMENT = 103  # <linux/udp.h>
DEADLINE = 120


@pytest.fixture(params=["speedups", "python"])
def offload_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the forwarder with the compiled offload code, then the pure-Python reference."""
    impl = str(request.param)
    if impl == "speedups":
        if trio_tun.offload.implementation != "speedups":
            pytest.skip("compiled speedups not built (or TRIO_TUN_PURE_PYTHON=1)")
    else:
        reference = trio_tun.offload.reference
        # Every name the compiled module would have replaced, so that neither
        # the split nor the coalescing path meets the kernel in C.
        for name in (
            "GroTable",
            "checksum",
            "ones_complement_sum",
            "split",
            "split_fields",
        ):
            monkeypatch.setattr(trio_tun.offload, name, getattr(reference, name))
        calls = PYTHON_CALLS
        calls.clear()

        def coalesce(*args: Any, **kwargs: Any) -> list[bytes]:
            calls["coalesce"] = calls.get("coalesce", 0) + 1
            return reference.coalesce(*args, **kwargs)

        def split_with_header(frame: Any) -> list[bytes]:
            calls["split"] = calls.get("split", 0) + 1
            return reference.split_with_header(frame)

        monkeypatch.setattr(trio_tun.offload, "coalesce", coalesce)
        monkeypatch.setattr(trio_tun.offload, "split_with_header", split_with_header)
    return impl


#: Calls of the pure-Python split and coalesce in the current "python" run.
PYTHON_CALLS: dict[str, int] = {}


def python_path_was_used(impl: str) -> None:
    """In the "python" runs, the reference code really did the splitting and coalescing."""
    if impl == "python":
        assert PYTHON_CALLS.get("split", 0) > 0 and PYTHON_CALLS.get("coalesce", 0) > 0, (
            PYTHON_CALLS
        )


@asynccontextmanager
async def forwarder(
    a_ns: NetNamespace, b_ns: NetNamespace, *, offload: bool | str = True
) -> AsyncIterator[tuple[TunStream, TunStream]]:
    """tfa (10.10.1.1, fd00:1::1) in a_ns <-> forwarder <-> tfb (10.10.2.1, fd00:2::1) in b_ns."""
    async with (
        trio_tun.open_tun(
            "tfa", addresses=["10.10.1.1/24", "fd00:1::1/64"], netns=a_ns.fileno(), offload=offload
        ) as a,
        trio_tun.open_tun(
            "tfb", addresses=["10.10.2.1/24", "fd00:2::1/64"], netns=b_ns.fileno(), offload=offload
        ) as b,
    ):
        await a.add_route("10.10.2.0/24")
        await a.add_route("fd00:2::/64")
        await b.add_route("10.10.1.0/24")
        await b.add_route("fd00:1::/64")
        async with anyio.create_task_group() as tg:

            async def pump(src: PacketStream, dst: PacketStream) -> None:
                while True:
                    await dst.send_batch(await src.receive_batch())

            tg.start_soon(pump, a, b)
            tg.start_soon(pump, b, a)
            yield a, b
            tg.cancel_scope.cancel()


async def tcp_transfer(
    client_ns: NetNamespace, server_ns: NetNamespace, family: int, server_ip: str, total: int
) -> tuple[str, str, int]:
    """Send *total* pseudo-random bytes over TCP; return (sent sha256, received sha256, count)."""
    listener = server_ns.socket(family, socket.SOCK_STREAM)
    listener.bind((server_ip, 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    server = anyio_socket(listener)
    block = os.urandom(CHUNK * 4)
    sent = hashlib.sha256()
    received = hashlib.sha256()
    count = 0

    async def serve() -> None:
        nonlocal count
        conn, _ = await server.accept()
        with conn:
            while chunk := await conn.recv(1 << 17):
                received.update(chunk)
                count += len(chunk)

    with listener:
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            client = anyio_socket(client_ns.socket(family, socket.SOCK_STREAM))
            with client:
                await client.connect((server_ip, port))
                left = total
                offset = 0
                while left:
                    piece = block[offset : offset + min(CHUNK, left)]
                    sent.update(piece)
                    view = memoryview(piece)
                    while view:
                        view = view[await client.send(view) :]
                    left -= len(piece)
                    offset = (offset + CHUNK) % len(block)
                client.shutdown(socket.SHUT_WR)
    return sent.hexdigest(), received.hexdigest(), count


def anyio_socket(sock: socket.socket) -> trio.socket.SocketType:
    return trio.socket.from_stdlib_socket(sock)


@pytest.mark.trio
@pytest.mark.parametrize(
    ("family", "server_ip"), [(socket.AF_INET, "10.10.2.1"), (socket.AF_INET6, "fd00:2::1")]
)
async def test_tcp_200mb_through_split_and_coalesce(
    two_namespaces: tuple[NetNamespace, NetNamespace],
    family: int,
    server_ip: str,
    offload_impl: str,
) -> None:
    a_ns, b_ns = two_namespaces
    with trio.fail_after(DEADLINE):
        async with forwarder(a_ns, b_ns) as (a, b):
            assert a.offload.tso4 and a.offload.tso6 and a.vnet_hdr
            sent, got, count = await tcp_transfer(a_ns, b_ns, family, server_ip, TCP_BYTES)
            stats = a.statistics()
            out = b.statistics()
    assert count == TCP_BYTES
    assert sent == got
    # The offload path was really used: reads brought super-packets, and the
    # other side wrote coalesced ones.
    assert stats.read_bytes / stats.reads > 3 * 1500, stats
    assert stats.rx_packets > stats.reads
    assert out.tx_coalesced > 0, out
    assert stats.rx_malformed == 0 and out.tx_dropped == 0
    python_path_was_used(offload_impl)


@pytest.mark.trio
@pytest.mark.parametrize(
    ("family", "client_ip", "server_ip"),
    [(socket.AF_INET, "10.10.1.1", "10.10.2.1"), (socket.AF_INET6, "fd00:1::1", "fd00:2::1")],
)
async def test_udp_gso_through_split_and_coalesce(
    two_namespaces: tuple[NetNamespace, NetNamespace],
    family: int,
    client_ip: str,
    server_ip: str,
    offload_impl: str,
) -> None:
    a_ns, b_ns = two_namespaces
    segment = 1200
    per_send = 16
    sends = 200
    with trio.fail_after(DEADLINE):
        async with forwarder(a_ns, b_ns) as (a, b):
            if not a.offload.uso:
                pytest.skip(f"kernel did not accept USO ({a.offload})")
            receiver = trio.socket.from_stdlib_socket(b_ns.socket(family, socket.SOCK_DGRAM))
            receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            await receiver.bind((server_ip, 0))
            port = receiver.getsockname()[1]
            sender = trio.socket.from_stdlib_socket(a_ns.socket(family, socket.SOCK_DGRAM))
            await sender.bind((client_ip, 0))
            sender.setsockopt(socket.IPPROTO_UDP, UDP_SEGMENT, segment)
            expected: list[bytes] = []
            got: list[bytes] = []
            with receiver, sender:
                for i in range(sends):
                    block = b"".join(
                        (i * per_send + j).to_bytes(4, "big") + os.urandom(segment - 4)
                        for j in range(per_send)
                    )
                    expected.extend(block[k : k + segment] for k in range(0, len(block), segment))
                    await sender.sendto(block, (server_ip, port))
                    # A window of one send: UDP has no flow control, and this
                    # test is about bytes, not speed.
                    while len(got) < len(expected):
                        got.append(await receiver.recv(65535))
            stats = a.statistics()
            out = b.statistics()
    assert got == expected
    assert stats.read_bytes / stats.reads > 3 * segment, stats
    assert out.tx_coalesced > 0, out
    python_path_was_used(offload_impl)


@pytest.mark.anyio
async def test_offload_false_clears_persistent_mask(netns: NetNamespace) -> None:
    name = "tpersist"
    async with trio_tun.open_tun(name, persist=True, offload=True) as dev:
        assert dev.offload.enabled
    try:
        async with trio_tun.open_tun(
            name, persist=True, offload=False, addresses=["10.20.0.1/24"]
        ) as dev:
            assert not dev.vnet_hdr and not dev.offload.enabled
            # A large UDP send through the device: with the old mask still in
            # place the kernel would hand us a super-packet with a header.
            sock = netns.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with sock:
                sock.setsockopt(socket.IPPROTO_UDP, UDP_SEGMENT, 1000)
                sock.sendto(bytes(range(256)) * 16, ("10.20.0.2", 9))
                with anyio.fail_after(10):
                    packets: list[bytes] = []
                    while sum(len(p) - 28 for p in packets) < 4096:
                        pkt = await dev.receive()
                        if pkt[0] >> 4 == 4 and pkt[9] == socket.IPPROTO_UDP:
                            packets.append(pkt)
            payloads = [p[28:] for p in packets]
            assert all(len(p) <= 1000 for p in payloads)
            assert b"".join(payloads) == bytes(range(256)) * 16
            # No virtio header and no super-packet: every read was one whole
            # IPv4 datagram, its total length that of the read, its header
            # checksum valid (the kernel segmented it, not us).
            for p in packets:
                assert int.from_bytes(p[2:4], "big") == len(p) <= 1028
                assert checksum(p[:20]) == 0
    finally:
        # The device outlives both opens; remove it by clearing persistence.
        fd = linux.open_tun_file()
        try:
            linux.set_iff(fd, name, linux.IFF_TUN | linux.IFF_NO_PI)
            linux.set_persist(fd, False)
        finally:
            os.close(fd)
    assert name not in netns.links()


@pytest.mark.trio
async def test_coalesced_write_rejected_falls_back_to_segments(
    two_namespaces: tuple[NetNamespace, NetNamespace], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some kernels refuse coalesced writes with EINVAL: we must resend split up."""
    refused = 0

    def picky(frame: bytes) -> int:
        nonlocal refused
        if len(frame) > 10 and frame[1] != 0:  # gso_type set
            refused += 1
            return errno.EINVAL
        return 0

    refuse_writes(monkeypatch, picky)
    a_ns, b_ns = two_namespaces
    with trio.fail_after(DEADLINE):
        async with forwarder(a_ns, b_ns) as (_, b):
            sent, got, count = await tcp_transfer(
                a_ns, b_ns, socket.AF_INET, "10.10.2.1", 8 * 1024 * 1024
            )
            out = b.statistics()
    assert sent == got and count == 8 * 1024 * 1024
    # Every refused super-packet was counted and resent as segments; once the
    # kernel said no, later batches stop coalescing (only frames already
    # built in the same batch can still be tried).
    assert refused >= 1
    assert out.tx_coalesce_fallbacks == refused
    assert refused <= 64
    assert out.tx_dropped == 0


@pytest.mark.anyio
async def test_auto_falls_back_when_the_driver_lacks_vnet_hdr(
    netns: NetNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_features = linux.features
    monkeypatch.setattr(linux, "features", lambda fd: real_features(fd) & ~linux.IFF_VNET_HDR)
    async with trio_tun.open_tun(offload="auto") as dev:
        assert not dev.vnet_hdr and not dev.offload.enabled
    with pytest.raises(trio_tun.OffloadUnavailableError, match="IFF_VNET_HDR"):
        async with trio_tun.open_tun(offload=True):
            pass  # pragma: no cover
    assert netns.links() == ["lo"]


@pytest.mark.anyio
async def test_auto_falls_back_when_tunsetoffload_is_refused(
    netns: NetNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_set_offload = linux.set_offload

    def refuse(fd: int, flags: linux.OffloadFlags) -> None:
        if flags.enabled:
            raise OSError(errno.EINVAL, "refused for the test")
        real_set_offload(fd, flags)

    monkeypatch.setattr(linux, "set_offload", refuse)
    async with trio_tun.open_tun(offload="auto", addresses=["10.30.0.1/24"]) as dev:
        # The header stays on (it was fixed at TUNSETIFF) but nothing is offloaded,
        # and packets still come through as plain IP.
        assert dev.vnet_hdr and not dev.offload.enabled
        sock = netns.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock, anyio.fail_after(10):
            sock.sendto(b"plain", ("10.30.0.2", 9))
            while True:
                packet = await dev.receive()
                if packet[0] >> 4 == 4 and packet.endswith(b"plain"):
                    break
    with pytest.raises(trio_tun.OffloadUnavailableError, match="TUNSETOFFLOAD"):
        async with trio_tun.open_tun(offload=True):
            pass  # pragma: no cover
    assert netns.links() == ["lo"]
