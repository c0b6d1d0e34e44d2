"""open_udp on a real kernel: two namespaces joined by a veth pair, nothing else.

Every socket is created inside the test's own namespaces (``netns=``) and
only ever sends to addresses on that veth pair.
"""

from __future__ import annotations

import errno
import hashlib
import socket
import struct
from collections.abc import Iterator, Sequence
from typing import Any

import anyio
import pytest
from anyio.abc import SocketAttribute

import trio_tun
from trio_tun import udp as udp_module
from trio_tun.offload.udp import UDP_GRO, UDP_SEGMENT
from trio_tun.testing import NetNamespace, fd_count, link_namespaces
from trio_tun.udp import (
    COMPILED_SYSCALLS,
    MAX_DATAGRAM,
    PYTHON_SYSCALLS,
    Message,
    Syscalls,
    UdpStream,
    UnconnectedUdpStream,
    open_udp,
)

pytestmark = [pytest.mark.kernel, pytest.mark.anyio]

V4 = ("10.98.0.1", "10.98.0.2")
V6 = ("fd98::1", "fd98::2")
SO_RCVBUFFORCE = 33
SIZE = 1400
HEAD = struct.Struct("!I")


def _static_neighbours(
    here: NetNamespace, there: NetNamespace, ifname: str, peer_ifname: str, *peer_ips: str
) -> None:
    mac = there.netlink(
        lambda ipr: ipr.get_links(ipr.link_lookup(ifname=peer_ifname)[0])[0].get_attr(
            "IFLA_ADDRESS"
        )
    )

    def add(ipr: Any) -> None:
        index = ipr.link_lookup(ifname=ifname)[0]
        for ip in peer_ips:
            family = socket.AF_INET6 if ":" in ip else socket.AF_INET
            ipr.neigh("replace", dst=ip, lladdr=mac, ifindex=index, state=0x80, family=family)

    here.netlink(add)


@pytest.fixture
def pair() -> Iterator[tuple[NetNamespace, NetNamespace]]:
    """Two namespaces, A = 10.98.0.1 / fd98::1 and B = 10.98.0.2 / fd98::2."""
    a = NetNamespace.create()
    b = NetNamespace.create()
    try:
        link_namespaces(
            a, b, addresses=([f"{V4[0]}/24", f"{V6[0]}/64"], [f"{V4[1]}/24", f"{V6[1]}/64"])
        )
        # Permanent neighbour entries: without them the first burst waits for
        # ARP/NDP in a queue of ~100 packets, and on a loaded machine a burst of
        # unsegmented datagrams overflows it (dropped before the wire).
        _static_neighbours(a, b, "veth0", "veth1", V4[1], V6[1])
        _static_neighbours(b, a, "veth1", "veth0", V4[0], V6[0])
        yield a, b
    finally:
        b.close()
        a.close()


@pytest.fixture(
    params=[
        pytest.param(COMPILED_SYSCALLS, id="compiled"),
        pytest.param(PYTHON_SYSCALLS, id="python"),
    ]
)
def syscalls(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Syscalls:
    if request.param is None:
        pytest.skip("the _speedups extension (sendmmsg/recvmmsg) is not built")
    monkeypatch.setattr(udp_module, "_SYSCALLS", request.param)
    return request.param  # type: ignore[no-any-return]


def payload(seq: int, size: int = SIZE) -> bytes:
    """seq, filler derived from seq, then sha256 of both: any corruption shows."""
    head = HEAD.pack(seq)
    filler = (head * (size // 4 + 1))[: size - 4 - 32]
    return head + filler + hashlib.sha256(head + filler).digest()


def check(data: bytes) -> int:
    assert hashlib.sha256(data[:-32]).digest() == data[-32:], "corrupted datagram"
    return int(HEAD.unpack_from(data)[0])


def big_rcvbuf(stream: UdpStream | UnconnectedUdpStream) -> None:
    sock = stream.extra(SocketAttribute.raw_socket)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)


async def transfer(
    tx: UdpStream, rx: UdpStream, count: int, *, batch: int = 64, window: int = 2048
) -> list[int]:
    """Send *count* checkable datagrams from tx to rx with flow control; what arrived."""
    got: list[int] = []
    done = anyio.Event()

    async def receiver() -> None:
        while len(got) < count:
            for data in await rx.receive_batch():
                got.append(check(data))
        done.set()

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(receiver)
            sent = 0
            while sent < count:
                # Stay within what the receiver's buffer holds, so nothing drops.
                while sent - len(got) > window:  # noqa: ASYNC110 - polling a counter is simplest
                    await anyio.sleep(0.001)
                n = min(batch, count - sent)
                await tx.send_batch([payload(seq) for seq in range(sent, sent + n)])
                sent += n
            await done.wait()
    return got


@pytest.mark.parametrize("hosts", [V4, V6], ids=["ipv4", "ipv6"])
async def test_bulk_transfer_with_gso_and_gro(
    pair: tuple[NetNamespace, NetNamespace], hosts: tuple[str, str], syscalls: Syscalls
) -> None:
    a, b = pair
    count = 20_000
    async with (
        open_udp(hosts[0], 5000, remote_host=hosts[1], remote_port=5000, netns=a.fileno()) as tx,
        open_udp(hosts[1], 5000, remote_host=hosts[0], remote_port=5000, netns=b.path) as rx,
    ):
        assert tx.gso and rx.gro
        assert tx.batched_syscalls == syscalls.batched
        big_rcvbuf(rx)
        got = await transfer(tx, rx, count)
        assert got == list(range(count))
        txs, rxs = tx.statistics(), rx.statistics()
    assert txs.tx_datagrams == count
    assert txs.tx_bytes == count * SIZE
    assert txs.tx_dropped == txs.soft_errors == txs.gso_fallbacks == 0
    # GSO seen: several datagrams per sendmsg.
    assert txs.gso_writes > 0
    assert txs.tx_datagrams / txs.tx_messages > 1
    if syscalls.batched:
        assert txs.writes <= txs.tx_messages
    else:
        assert txs.writes == txs.tx_messages
    # GRO seen: several datagrams per recvmsg.
    assert rxs.rx_datagrams == count
    assert rxs.rx_bytes == count * SIZE
    assert rxs.gro_reads > 0
    assert rxs.rx_datagrams / rxs.rx_messages > 1
    assert rxs.rx_malformed == rxs.gro_fallbacks == 0


async def test_mixed_sizes_arrive_exactly(
    pair: tuple[NetNamespace, NetNamespace], syscalls: Syscalls
) -> None:
    """Runs broken by size changes and empty datagrams: still every datagram, in order."""
    a, b = pair
    sizes = [1400, 1400, 1400, 300, 1400, 0, 0, 64, 64, 64, 2000, 9000, 1, 1400] * 30
    datagrams = [bytes([i % 256]) * n for i, n in enumerate(sizes)]
    async with (
        open_udp(V4[0], 5000, remote_host=V4[1], remote_port=5000, netns=a.fileno()) as tx,
        open_udp(V4[1], 5000, remote_host=V4[0], remote_port=5000, netns=b.fileno()) as rx,
    ):
        big_rcvbuf(rx)
        await tx.send_batch(datagrams)
        got: list[bytes] = []
        with anyio.move_on_after(20):
            for i in range(10 * len(datagrams)):
                if len(got) >= len(datagrams):
                    break
                # Whole queues and partial takes: both count bytes, at once.
                got.extend(await rx.receive_batch(None if i % 2 else 5))
                assert rx.statistics().rx_bytes == sum(map(len, got))
        stats = tx.statistics()
        assert got == datagrams, (stats, rx.statistics())
        assert stats.tx_datagrams == len(datagrams)
        assert stats.gso_writes > 0
        assert stats.tx_dropped == 0
        # Runs whose last datagram is shorter count exactly.
        assert stats.tx_bytes == sum(sizes)
        rxs = rx.statistics()
        assert rxs.rx_datagrams == len(datagrams)
        assert rxs.rx_bytes == sum(sizes)


@pytest.mark.parametrize("where", [0, 1, 2], ids=["first", "middle", "last"])
async def test_oversized_datagram_refuses_the_whole_batch(
    pair: tuple[NetNamespace, NetNamespace], where: int
) -> None:
    """One datagram over the limit anywhere in the batch: ValueError naming it, nothing sent."""
    a, b = pair
    batch = [b"x" * 100, b"y" * 200, b"z" * 300]
    batch[where] = bytes(MAX_DATAGRAM + 1)
    async with (
        open_udp(V4[0], 5000, remote_host=V4[1], remote_port=5000, netns=a.fileno()) as tx,
        open_udp(V4[1], 5000, remote_host=V4[0], remote_port=5000, netns=b.fileno()) as rx,
        open_udp(V4[0], 5002, netns=a.fileno()) as unconnected,
    ):
        with pytest.raises(ValueError, match=f"datagram of {MAX_DATAGRAM + 1} bytes"):
            await tx.send_batch(batch)
        with pytest.raises(ValueError, match=f"datagram of {MAX_DATAGRAM + 1} bytes"):
            await unconnected.send_batch(batch, (V4[1], 5000))
        # What follows arrives first: nothing of the refused batches went out.
        await tx.send_batch([b"next" * 100, b"after"])
        with anyio.fail_after(10):
            got = [await rx.receive(), await rx.receive()]
        assert got == [b"next" * 100, b"after"]
        assert tx.statistics().tx_datagrams == 2
        assert unconnected.statistics().tx_datagrams == 0


async def test_socket_attributes(pair: tuple[NetNamespace, NetNamespace]) -> None:
    a, b = pair
    async with (
        open_udp(V4[0], 0, remote_host=V4[1], remote_port=5001, netns=a.fileno()) as conn,
        open_udp(V6[1], 5001, netns=b.fileno()) as unconn,
    ):
        port = conn.extra(SocketAttribute.local_port)
        assert port != 0
        assert conn.extra(SocketAttribute.local_address) == (V4[0], port)
        assert conn.extra(SocketAttribute.remote_address) == (V4[1], 5001)
        assert conn.extra(SocketAttribute.remote_port) == 5001
        assert conn.extra(SocketAttribute.family) == socket.AF_INET
        raw = conn.extra(SocketAttribute.raw_socket)
        assert isinstance(raw, socket.socket)
        assert raw.fileno() == conn.fileno()

        assert unconn.extra(SocketAttribute.family) == socket.AF_INET6
        assert unconn.extra(SocketAttribute.local_address) == (V6[1], 5001)
        assert unconn.extra(SocketAttribute.local_port) == 5001
        assert unconn.extra(SocketAttribute.remote_address, None) is None
        assert unconn.extra(SocketAttribute.remote_port, None) is None
        assert isinstance(conn, UdpStream)
        assert isinstance(unconn, UnconnectedUdpStream)


async def test_unconnected_to_several_destinations(
    pair: tuple[NetNamespace, NetNamespace], syscalls: Syscalls
) -> None:
    """send_many: interleaved destinations and sizes, one batched call; receive reports senders."""
    a, b = pair
    ports = (6001, 6002, 6003)
    items = [
        (payload(i, 200 + 100 * (i % 3 == 0)), (V4[1], ports[(i // 4) % 3])) for i in range(90)
    ]
    async with (
        open_udp(V4[0], 6000, netns=a.fileno()) as tx,
        open_udp(V4[1], ports[0], netns=b.fileno()) as r0,
        open_udp(V4[1], ports[1], netns=b.fileno()) as r1,
        open_udp(V4[1], ports[2], remote_host=V4[0], remote_port=6000, netns=b.fileno()) as r2,
    ):
        await tx.send_many(items)
        stats = tx.statistics()
        assert stats.tx_datagrams == len(items)
        if syscalls.batched:
            assert stats.writes == 1  # every message in one sendmmsg
        assert stats.gso_writes > 0

        with anyio.fail_after(20):
            for stream, port in ((r0, ports[0]), (r1, ports[1])):
                expected = [data for data, (_, p) in items if p == port]
                got: list[tuple[bytes, tuple[str, int]]] = []
                # r1 takes a few at a time: partial takes count bytes too.
                limit = None if stream is r0 else 4
                while len(got) < len(expected):
                    got.extend(await stream.receive_batch(limit))
                    # Right after each take, not only once all is drained.
                    assert stream.statistics().rx_bytes == sum(len(data) for data, _ in got)
                assert [data for data, _ in got] == expected
                assert {sender for _, sender in got} == {(V4[0], 6000)}
                received = stream.statistics()
                assert received.rx_datagrams == len(expected)
                assert received.rx_bytes == sum(map(len, expected))
            expected = [data for data, (_, p) in items if p == ports[2]]
            got2: list[bytes] = []
            while len(got2) < len(expected):
                got2.extend(await r2.receive_batch())
            assert got2 == expected

        # send() and send_batch() with a destination; replies come back through
        # the unconnected receiver's own address reports.
        await tx.send((b"one", (V4[1], ports[0])))
        await tx.send_batch([b"two", b"three"], (V4[1], ports[0]))
        with anyio.fail_after(20):
            data, sender = await r0.receive()
            assert (data, sender) == (b"one", (V4[0], 6000))
            await r0.send_many([(b"reply", sender)])
            rest = []
            while len(rest) < 2:
                rest.extend(await r0.receive_batch())
            assert [d for d, _ in rest] == [b"two", b"three"]
            assert await tx.receive() == (b"reply", (V4[1], ports[0]))
        with pytest.raises(ValueError, match="IPv4 socket"):
            await tx.send((b"x", (V6[1], 1)))
        with pytest.raises(ValueError, match="IP address"):
            await tx.send((b"x", ("localhost", 1)))
        assert tx.statistics().tx_datagrams == len(items) + 3


async def test_dual_stack(pair: tuple[NetNamespace, NetNamespace]) -> None:
    a, b = pair
    async with (
        open_udp("::", 7000, netns=b.fileno()) as server,
        open_udp(V4[0], 7001, remote_host=V4[1], remote_port=7000, netns=a.fileno()) as c4,
        open_udp(V6[0], 7002, remote_host=V6[1], remote_port=7000, netns=a.fileno()) as c6,
    ):
        assert server.extra(SocketAttribute.family) == socket.AF_INET6
        await c4.send_batch([b"v4 a", b"v4 b"])
        await c6.send(b"v6")
        got: list[tuple[bytes, tuple[str, int]]] = []
        with anyio.fail_after(20):
            while len(got) < 3:
                got.extend(await server.receive_batch())
        senders = {data: sender for data, sender in got}
        assert senders[b"v4 a"] == ("::ffff:10.98.0.1", 7001)
        assert senders[b"v6"] == (V6[0], 7002)
        # Replies: to the mapped form, to a plain IPv4 address, to IPv6.
        await server.send_many(
            [
                (b"r1", ("::ffff:10.98.0.1", 7001)),
                (b"r2", (V4[0], 7001)),
                (b"r3", (V6[0], 7002)),
            ]
        )
        with anyio.fail_after(20):
            assert [await c4.receive(), await c4.receive()] == [b"r1", b"r2"]
            assert await c6.receive() == b"r3"


# -- fallbacks, forced through the syscall seam ---------------------------------


class RefuseGso(Syscalls):
    """An egress device that can't segment: EIO for any message with a segment size."""

    def __init__(self, inner: Syscalls) -> None:
        self.inner = inner
        self.batched = inner.batched  # type: ignore[misc]
        self.refused = 0

    def setsockopt(self, sock: socket.socket, level: int, option: int, value: int) -> None:
        self.inner.setsockopt(sock, level, option, value)

    def send_messages(self, sock: socket.socket, messages: Sequence[Message]) -> int:
        for i, (_buffers, gso_size, _dest) in enumerate(messages):
            if gso_size:
                if i == 0:
                    self.refused += 1
                    raise OSError(errno.EIO, "refused")
                return self.inner.send_messages(sock, messages[:i])
        return self.inner.send_messages(sock, messages)

    def receive_messages(self, *args: Any) -> Any:
        return self.inner.receive_messages(*args)


class NoOption(RefuseGso):
    """A kernel without the given UDP socket options."""

    def __init__(self, inner: Syscalls, missing: set[int]) -> None:
        super().__init__(inner)
        self.missing = missing

    def setsockopt(self, sock: socket.socket, level: int, option: int, value: int) -> None:
        if option in self.missing:
            raise OSError(errno.ENOPROTOOPT, "Protocol not available")
        self.inner.setsockopt(sock, level, option, value)

    def send_messages(self, sock: socket.socket, messages: Sequence[Message]) -> int:
        return self.inner.send_messages(sock, messages)


async def test_gso_refused_with_eio_falls_back(
    pair: tuple[NetNamespace, NetNamespace], syscalls: Syscalls, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = pair
    seam = RefuseGso(syscalls)
    monkeypatch.setattr(udp_module, "_SYSCALLS", seam)
    async with (
        open_udp(V4[0], 5000, remote_host=V4[1], remote_port=5000, netns=a.fileno()) as tx,
        open_udp(V4[1], 5000, remote_host=V4[0], remote_port=5000, netns=b.fileno()) as rx,
    ):
        assert tx.gso
        big_rcvbuf(rx)
        got = await transfer(tx, rx, 2000, window=1024)
        assert got == list(range(2000))
        stats = tx.statistics()
        assert not tx.gso
        assert seam.refused == 1
        assert stats.gso_fallbacks == 1
        assert stats.gso_writes == 0
        # Later sends went out one datagram per message.
        assert stats.tx_messages == stats.tx_datagrams == 2000
        assert stats.tx_dropped == 0


async def test_without_udp_gro_and_udp_segment(
    pair: tuple[NetNamespace, NetNamespace], syscalls: Syscalls, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = pair
    monkeypatch.setattr(udp_module, "_SYSCALLS", NoOption(syscalls, {UDP_GRO, UDP_SEGMENT}))
    async with (
        open_udp(V6[0], 5000, remote_host=V6[1], remote_port=5000, netns=a.fileno()) as tx,
        open_udp(V6[1], 5000, remote_host=V6[0], remote_port=5000, netns=b.fileno()) as rx,
    ):
        assert not tx.gso and not rx.gro
        assert tx.statistics().gso_fallbacks == 1
        assert rx.statistics().gro_fallbacks == 1
        big_rcvbuf(rx)
        got = await transfer(tx, rx, 2000, window=1024)
        assert got == list(range(2000))
        txs, rxs = tx.statistics(), rx.statistics()
    assert txs.gso_writes == 0
    assert txs.tx_messages == 2000
    assert rxs.gro_reads == 0
    assert rxs.rx_messages == rxs.rx_datagrams == 2000
    assert rxs.gro_fallbacks == 1


async def test_insisting_on_missing_offload_raises(
    pair: tuple[NetNamespace, NetNamespace], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(udp_module, "_SYSCALLS", NoOption(PYTHON_SYSCALLS, {UDP_GRO}))
    before = fd_count()
    with pytest.raises(OSError, match="UDP_GRO"):
        async with open_udp(V4[0], 0, netns=pair[0].fileno(), gro=True):
            pass
    async with open_udp(V4[0], 0, netns=pair[0].fileno(), gso=False, gro=False) as plain:
        assert not plain.gso and not plain.gro
        assert plain.statistics().gro_fallbacks == 0
    assert fd_count() == before


# -- contracts ------------------------------------------------------------------


async def test_cancelled_receive_loses_nothing(pair: tuple[NetNamespace, NetNamespace]) -> None:
    a, b = pair
    async with (
        open_udp(V4[0], 5000, remote_host=V4[1], remote_port=5000, netns=a.fileno()) as tx,
        open_udp(V4[1], 5000, remote_host=V4[0], remote_port=5000, netns=b.fileno()) as rx,
    ):
        # Nothing queued: a blocked receive is cancelled by its deadline...
        with anyio.move_on_after(0.3) as scope:
            await rx.receive()
            pytest.fail("received a datagram nobody sent")
        assert scope.cancelled_caught
        # ...one GSO send, one GRO read: 40 datagrams, one at a time.
        datagrams = [payload(i) for i in range(40)]
        await tx.send_batch(datagrams)
        got: list[bytes] = []
        with anyio.fail_after(20):
            got.append(await rx.receive())
            while len(got) < 40:
                # Cancelled calls, already-cancelled or expiring, take nothing.
                for receive in (rx.receive, rx.receive_batch):
                    with anyio.CancelScope() as cancelled:
                        cancelled.cancel()
                        await receive()
                        pytest.fail("ignored the cancellation")
                got.extend(await rx.receive_batch(max_datagrams=3))
        assert got == datagrams
        stats = rx.statistics()
        assert stats.gro_reads >= 1
        assert stats.rx_datagrams == 40
        assert stats.rx_dropped == 0


async def test_cancelled_send_batch_sent_a_prefix(
    pair: tuple[NetNamespace, NetNamespace], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The socket fills up after 5 messages; the batch is cancelled while waiting."""

    class FillsUp(RefuseGso):
        def send_messages(self, sock: socket.socket, messages: Sequence[Message]) -> int:
            room = 5 - self.refused
            if room <= 0:
                raise BlockingIOError(errno.EAGAIN, "full")
            sent = self.inner.send_messages(sock, messages[:room])
            self.refused += sent
            return sent

    monkeypatch.setattr(udp_module, "_SYSCALLS", FillsUp(PYTHON_SYSCALLS))
    a, b = pair
    async with (
        open_udp(
            V4[0], 5000, remote_host=V4[1], remote_port=5000, netns=a.fileno(), gso=False
        ) as tx,
        open_udp(V4[1], 5000, remote_host=V4[0], remote_port=5000, netns=b.fileno()) as rx,
    ):
        with anyio.move_on_after(0.5) as scope:
            await tx.send_batch([payload(i) for i in range(20)])
        assert scope.cancelled_caught
        assert tx.statistics().tx_datagrams == 5
        got: list[bytes] = []
        with anyio.fail_after(20):
            while len(got) < 5:
                got.extend(await rx.receive_batch())
        assert got == [payload(i) for i in range(5)]


async def test_busy_and_closed(pair: tuple[NetNamespace, NetNamespace]) -> None:
    a, _ = pair
    async with open_udp(V4[0], 5000, remote_host=V4[1], remote_port=5000, netns=a.fileno()) as s:
        outcome: list[BaseException] = []

        async def blocked() -> None:
            try:
                await s.receive_batch()
            except trio_tun.ClosedResourceError as exc:
                outcome.append(exc)

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(blocked)
                await anyio.sleep(0.2)
                with pytest.raises(trio_tun.BusyResourceError):
                    await s.receive()
                # Closing from here wakes the blocked receiver.
                await s.aclose()
        assert len(outcome) == 1
        assert isinstance(outcome[0], trio_tun.ClosedResourceError)
        assert isinstance(outcome[0], anyio.ClosedResourceError)
        assert s.closed and s.fileno() == -1
        with pytest.raises(trio_tun.ClosedResourceError):
            await s.receive()
        with pytest.raises(trio_tun.ClosedResourceError):
            await s.send(b"x")
        await s.aclose()  # idempotent


async def test_refused_is_soft_until_the_peer_listens(
    pair: tuple[NetNamespace, NetNamespace], syscalls: Syscalls
) -> None:
    a, b = pair
    async with open_udp(V4[0], 5000, remote_host=V4[1], remote_port=5000, netns=a.fileno()) as tx:
        # Nobody listens on B yet: ICMP port unreachable comes back and the
        # kernel reports ECONNREFUSED on the next send, which drops its datagram.
        sends = 0
        with anyio.fail_after(20):
            while tx.statistics().soft_errors == 0:
                await tx.send(b"early")
                sends += 1
                await anyio.sleep(0.1)
        stats = tx.statistics()
        assert stats.tx_dropped == stats.soft_errors >= 1
        assert stats.tx_datagrams + stats.tx_dropped == sends
        async with open_udp(
            V4[1], 5000, remote_host=V4[0], remote_port=5000, netns=b.fileno()
        ) as rx:
            with anyio.fail_after(20):
                while True:
                    await tx.send(b"hello")
                    with anyio.move_on_after(0.1):
                        data = await rx.receive()
                        break
            assert data in (b"hello", b"early")
            await rx.send(b"back")
            with anyio.fail_after(20):
                assert await tx.receive() == b"back"
        assert not tx.closed


async def test_no_fd_leaks(pair: tuple[NetNamespace, NetNamespace]) -> None:
    a, b = pair
    before = fd_count()
    for _ in range(5):
        async with (
            open_udp(V4[0], 5000, remote_host=V4[1], remote_port=5000, netns=a.path) as x,
            open_udp(V4[1], 5000, remote_host=V4[0], remote_port=5000, netns=b.fileno()) as y,
        ):
            await x.send(b"ping")
            with anyio.fail_after(20):
                assert await y.receive() == b"ping"
        # An error while opening (the port is taken) closes the socket too.
        async with open_udp(V4[0], 5005, netns=a.fileno()):
            with pytest.raises(OSError, match="in use"):
                async with open_udp(V4[0], 5005, netns=a.fileno()):
                    pass
        with pytest.raises(ValueError, match="does not exist"):
            async with open_udp(V4[0], 0, netns="/nonexistent/netns"):
                pass
    assert fd_count() == before


async def test_reuse_port(pair: tuple[NetNamespace, NetNamespace]) -> None:
    a, _ = pair
    async with (
        open_udp(V4[0], 5100, netns=a.fileno(), reuse_port=True) as x,
        open_udp(V4[0], 5100, netns=a.fileno(), reuse_port=True) as y,
    ):
        assert x.extra(SocketAttribute.local_port) == y.extra(SocketAttribute.local_port) == 5100


async def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="go together"):
        open_udp(V4[0], remote_host=V4[1])
    with pytest.raises(ValueError, match="local_port"):
        open_udp(V4[0], 70000)
    with pytest.raises(ValueError, match="can't bind"):
        async with open_udp(V6[0], family=socket.AF_INET):
            pass


async def test_buffer_size_sets_both_buffers(pair: tuple[NetNamespace, NetNamespace]) -> None:
    size = 7 << 20
    async with open_udp(V4[0], 0, netns=pair[0].fileno(), buffer_size=size) as udp:
        raw = udp.extra(SocketAttribute.raw_socket)
        # Linux doubles what it is given (bookkeeping); as root FORCE lifts the cap.
        assert raw.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= size
        assert raw.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= size
    with pytest.raises(ValueError, match="buffer_size"):
        open_udp(V4[0], 0, buffer_size=0)
