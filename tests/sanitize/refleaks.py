"""Reference-leak check of the compiled offload speedups.

Every public entry point of ``trio_tun.offload._speedups`` is called
``--calls`` times (default 1,000,000), cycling through valid inputs and
invalid ones (malformed packets, wrong types, out-of-range values, arguments
handed to the Python reference), with bytes, bytearray and memoryview
buffers.  After a warm-up of a tenth of the calls the process takes stock;
at the end it must be back where it was, within small bounds:

* ``sys.getallocatedblocks()`` (pymalloc blocks: every leaked object, and
  every small ``PyMem_Malloc`` that is never freed, is one more);
* ``len(gc.get_objects())`` (leaked containers);
* ``sys.getrefcount`` of every long-lived input object (an INCREF without
  its DECREF leaks no memory when the object lives anyway; this catches it),
  exactly, and of the objects every call may touch (None, small ints, the
  exception class, the Python functions the speedups fall back to), within
  ``MAX_SHARED``;
* the resident set size (leaked large buffers and raw ``malloc``).

A leak of one object per call would show as a growth of the order of the
number of calls; the bounds allow a few hundred blocks for caches that fill
lazily.  ``sys.gettotalrefcount`` would be the direct measure but only a
debug build of CPython has it.

Runs with or without the sanitized build (``nox -s sanitize`` runs it with
it preloaded, pymalloc left on so that its counters mean something).  The
UDP entry points need root for a private network namespace (with a loopback
of its own); without root they use an AF_UNIX socket pair.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

from trio_tun.offload import MalformedPacket, _speedups

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from offload.packets import (
    Flow,
    super_packet,
    tcp_flow,
    tcp_packet,
    udp_packet,
)

#: Growth allowed between the end of the warm-up and the end of the run.
MAX_BLOCKS: Final = 500
MAX_OBJECTS: Final = 50
MAX_RSS: Final = 16 * 1024 * 1024
#: Shared objects (None, small ints, ...): at least this, or a thousandth of the calls.
MAX_SHARED: Final = 100
#: What an invalid input may raise (anything else is a failure of the check).
EXPECTED: Final = (
    MalformedPacket,
    TypeError,
    ValueError,
    OverflowError,
    BufferError,
    OSError,
)

Call = Callable[[], object]


def _views(data: bytes) -> Iterator[Callable[[], object]]:
    """The same bytes as a long-lived bytes object and as fresh buffers of each kind."""
    yield lambda: data
    yield lambda: bytearray(data)
    yield lambda: memoryview(data)
    # Not C-contiguous: the speedups copy it (or hand it to the reference).
    yield lambda: memoryview(data + data)[::2] if data else memoryview(data)


class _Raises:
    """Its truth value and __index__ fail: exercises the error paths of option parsing."""

    def __bool__(self) -> bool:
        raise ValueError("no truth value")

    def __index__(self) -> int:
        raise ValueError("no index")


def _vnet(fields: tuple[int, ...]) -> bytes:
    return struct.pack("=BBHHHH", *fields)


def checksum_calls(name: str) -> list[Call]:
    fn = getattr(_speedups, name)
    data = bytes(range(256)) * 6 + b"\x01"
    calls: list[Call] = [lambda m=m: fn(m()) for m in _views(data)]
    calls += [
        lambda: fn(data, 0x1234),
        lambda: fn(data=bytearray(data), initial=0xFFFFFFFF),
        lambda: fn(b""),
        # invalid
        lambda: fn(data, -1),
        lambda: fn(data, 1 << 70),
        lambda: fn("text"),
        lambda: fn(data, initial="x"),
        fn,  # no arguments
        lambda: fn(data, 1, 2),
    ]
    return calls


def _reads() -> tuple[list[tuple[tuple[int, ...], bytes]], list[tuple[tuple[int, ...], bytes]]]:
    tcp4 = super_packet(Flow(), bytes(range(200)) * 20, 1000)
    tcp6 = super_packet(
        Flow(version=6, src=bytes(15) + b"\1", dst=bytes(15) + b"\2"), bytes(3000), 1200
    )
    udp4 = super_packet(Flow(proto=17), bytes(range(100)) * 30, 1400)
    plain = ((0, 0, 0, 0, 0, 0), tcp_packet(Flow(), 1, b"hello"))
    csum = ((1, 0, 0, 0, 20, 16), super_packet(Flow(), b"x" * 99, 1000)[1])
    valid = [tcp4, tcp6, udp4, plain, csum]
    fields, pkt = tcp4
    invalid = [
        ((fields[0], fields[1], fields[2], fields[3], fields[4], 6), pkt),  # csum_offset
        ((4, *fields[1:]), pkt),  # unknown flag
        ((fields[0], 0x85, *fields[2:]), pkt[:-1]),  # length mismatch
        ((fields[0], 4, *fields[2:]), pkt),  # TCPV6 on IPv4
        ((fields[0], 3, *fields[2:]), pkt),  # UFO
        ((1, 1, 0, 0, 60000, 16), pkt),  # checksum field outside
    ]
    return valid, invalid


def split_calls() -> list[Call]:
    valid, invalid = _reads()
    calls: list[Call] = []
    for fields, pkt in valid + invalid:
        for make in _views(pkt):
            calls.append(lambda f=fields, m=make: _speedups.split(*f, m()))
    fields, pkt = valid[0]
    calls += [
        lambda: _speedups.split(*fields[:5], 1 << 40, pkt),
        lambda: _speedups.split(*fields[:5], -1, pkt),
        lambda: _speedups.split(*fields[:5], "x", pkt),
        lambda: _speedups.split(*fields, object()),
        lambda: _speedups.split(*fields),
    ]
    return calls


def split_with_header_calls() -> list[Call]:
    valid, invalid = _reads()
    calls: list[Call] = []
    for fields, pkt in valid + invalid:
        for make in _views(_vnet(fields) + pkt):
            calls.append(lambda m=make: _speedups.split_with_header(m()))
    buf = _vnet(valid[0][0]) + valid[0][1]
    calls += [
        lambda: _speedups.split_with_header(buf=buf),
        lambda: _speedups.split_with_header(b"\0" * 9),
        lambda: _speedups.split_with_header(list(buf[:200])),  # via the reference
        lambda: _speedups.split_with_header(object()),
        lambda: _speedups.split_with_header(buf, buf),
        lambda: _speedups.split_with_header(buff=buf),
    ]
    return calls


def _gro_packets() -> list[bytes]:
    v6 = Flow(version=6, src=bytes(15) + b"\1", dst=bytes(15) + b"\2")
    frag = bytearray(udp_packet(Flow(proto=17), b"y" * 40))
    frag[6] = 0x20  # more fragments
    return [
        *tcp_flow(Flow(), [1000, 1000, 500]),
        *tcp_flow(v6, [1200, 1200]),
        udp_packet(Flow(proto=17), b"z" * 300),
        udp_packet(Flow(proto=17, version=6, src=v6.src, dst=v6.dst), b"z" * 300),
        tcp_packet(Flow(options=b"\x01\x01\x08\x0a" + bytes(8)), 5, b"opt" * 100),
        bytes(frag),
        bytes.fromhex("4500001c0000400040010000") + bytes(16),  # ICMP
    ]


def _bad_packets() -> list[bytes]:
    good = tcp_packet(Flow(), 1, b"data")
    return [b"", b"\x50" + good[1:], good[:19], good[:2] + b"\xff\xff" + good[4:], b"\x60" * 39]


def gro_parse_calls() -> list[Call]:
    calls: list[Call] = []
    for pkt in _gro_packets() + _bad_packets():
        for make in _views(pkt):
            calls.append(lambda m=make: _speedups.gro_parse(m()))
    calls += [lambda: _speedups.gro_parse(object()), lambda: _speedups.gro_parse(12)]
    return calls


def gro_build_calls() -> list[Call]:
    first = tcp_flow(Flow(), [100])[0]
    v6 = tcp_flow(Flow(version=6, src=bytes(16), dst=bytes(15) + b"\1"), [100])[0]
    udp = udp_packet(Flow(proto=17), b"u" * 100)
    pay = [b"p" * 100, bytearray(b"q" * 100), memoryview(b"r" * 60)]
    build = _speedups.gro_build
    return [
        lambda: build(first, 20, 40, 100, 0, [b"p" * 100, bytearray(b"q" * 100)]),
        lambda: build(bytearray(first), 20, 40, 100, 8, tuple(pay)),
        lambda: build(v6, 40, 60, 100, 0, pay),
        lambda: build(udp, 20, 28, 100, 0, pay),
        lambda: build(first, 20, 40, 100, 0, []),
        # invalid
        lambda: build(first, 20, 39, 100, 0, pay),
        lambda: build(first, 40, 60, 100, 0, pay),
        lambda: build(first, 20, 40, 100, 0, [b"x" * 40000, b"y" * 40000]),
        lambda: build(first, 20, 40, 100, 0, [b"x" * 70000, b"y"]),
        lambda: build(first, 20, 40, 100, 0, [b"ok", object()]),
        lambda: build(first, 20, 40, 100, 0, 5),
        lambda: build(first, -1, 40, 100, 0, pay),
        lambda: build(first, 20, 40, 1 << 17, 0, pay),
        lambda: build(first, 20, 40, 100, 0),
        lambda: build(object(), 20, 40, 100, 0, pay),
        lambda: build(first, 20, 40, 100, 0, _emptied_by_conversion()),
    ]


class _Chunk:
    """A payload that is no buffer: bytes() iterates it, which empties its list."""

    def __init__(self, owner: list[Any]) -> None:
        self.owner = owner

    def __iter__(self) -> Iterator[int]:
        self.owner.clear()
        return iter(b"abc")


def _emptied_by_conversion() -> list[Any]:
    payloads: list[Any] = []
    payloads.extend([_Chunk(payloads), b"x" * 100, bytearray(b"y" * 50)])
    return payloads


def coalesce_calls() -> list[Call]:
    segs = _gro_packets()
    bad = _bad_packets()
    co = _speedups.coalesce
    return [
        lambda: co(segs),
        lambda: co(tuple(segs), uso=True),
        lambda: co([bytearray(s) for s in segs], max_size=9000),
        lambda: co([memoryview(s) for s in segs], allow_short_last=False),
        lambda: co(iter(segs)),
        lambda: co(s for s in segs),
        lambda: co([bytes(s) for s in segs] + [list(segs[0][:60])]),  # copies (non-buffer)
        lambda: co(segs, uso=1.5),  # handed to the reference
        lambda: co([]),
        # invalid
        lambda: co([*segs, bad[1]]),
        lambda: co([segs[0], b""]),
        lambda: co(segs, max_size=0),
        lambda: co(segs, max_size=1 << 80),
        lambda: co(segs, uso=_Raises()),
        lambda: co(5),
        lambda: co(segs, bogus=1),
        lambda: co([segs[0], object()]),
        lambda: co(iter([segs[0], 7])),
    ]


def grotable_calls() -> list[Call]:
    segs = _gro_packets()
    bad = _bad_packets()
    table = _speedups.GroTable(uso=True)
    step = [0]

    def add_flush() -> object:
        step[0] += 1
        table.add(segs[step[0] % len(segs)])
        table.add(bytearray(segs[(step[0] + 1) % len(segs)]))
        table.add(memoryview(segs[(step[0] + 2) % len(segs)]))
        assert len(table) == table.pending_packets
        assert table.pending_buffers <= table.pending_packets
        return table.flush() if step[0] % 3 == 0 else None

    def add_bad() -> object:
        return table.add(bad[step[0] % len(bad)])

    def fresh_table() -> object:
        t = _speedups.GroTable(max_size=9000, allow_short_last=False)
        for s in segs:
            t.add(s)
        return None if step[0] % 2 else t.flush()  # dropped with packets held, or flushed

    return [
        add_flush,
        add_bad,
        fresh_table,
        lambda: table.add(object()),
        lambda: table.add(b"\x45" * 30),
        lambda: _speedups.GroTable(max_size="x"),
        lambda: _speedups.GroTable(max_size=0),
        lambda: _speedups.GroTable(uso=_Raises()),
        lambda: _speedups.GroTable(1),
    ]


def split_gro_calls() -> list[Call]:
    data = bytes(range(256)) * 12 + b"tail"
    sg = _speedups.split_gro
    calls: list[Call] = []
    for make in _views(data):
        for gso in (0, 1, 1400, len(data) - 1, len(data), 1 << 40):
            calls.append(lambda m=make, g=gso: sg(m(), g))
    calls += [
        lambda: sg(b"", 0),
        lambda: sg(bytearray(b"x" * 100), True),
        # invalid
        lambda: sg(data, -1),
        lambda: sg(data, 1 << 70),
        lambda: sg(data, "x"),
        lambda: sg(data, _Raises()),
        lambda: sg(object(), 10),
        lambda: sg([1, 2, 3], 0),
        lambda: sg(data),
        lambda: sg(data, 1, 2),
    ]
    return calls


class _Shrinking:
    """A datagram whose len() empties the list that holds it."""

    def __init__(self, owner: list[Any]) -> None:
        self.owner = owner

    def __len__(self) -> int:
        self.owner.clear()
        return 100


def _shrinking_list() -> list[Any]:
    items: list[Any] = [b"a" * 100, bytearray(b"b" * 100)]
    items.insert(1, _Shrinking(items))
    return items


def gso_runs_calls() -> list[Call]:
    sizes = [1200] * 70 + [700, 1200, 1200, 0, 70000, 5, 5, 9, 1200]
    datagrams = [b"d" * n for n in sizes]
    mixed = [
        (b"e" * n, bytearray(b"f" * n), memoryview(b"g" * n))[i % 3] for i, n in enumerate(sizes)
    ]
    gr = _speedups.gso_runs
    return [
        lambda: gr(datagrams, 64, 65507),
        lambda: gr(tuple(datagrams), 64, 65487),
        lambda: gr([bytes(d) for d in mixed], 10, 9000),
        lambda: gr(mixed, 1, 1),
        lambda: gr(iter(datagrams), 64, 65507),
        lambda: gr((d for d in mixed), 3, 3000),
        lambda: gr([], 64, 65507),
        lambda: gr(_shrinking_list(), 64, 65507),
        lambda: gr(datagrams, True, 1 << 40),
        # invalid
        lambda: gr(datagrams, 0, 100),
        lambda: gr(datagrams, 64, -1),
        lambda: gr(datagrams, 1 << 70, 100),
        lambda: gr(datagrams, "x", 100),
        lambda: gr(datagrams, 64, _Raises()),
        lambda: gr(5, 64, 100),
        lambda: gr([b"x", object(), b"y"], 64, 100),
        lambda: gr([b"x", b"y", 7], 64, 100),
        lambda: gr(datagrams, 64),
    ]


class _Huge:
    """An item that claims the largest length there is (the total overflows)."""

    def __len__(self) -> int:
        return sys.maxsize


def batch_sizes_calls() -> list[Call]:
    sizes = [1200] * 70 + [700, 0, 70000, 5]
    datagrams = [b"d" * n for n in sizes]
    mixed = [
        (b"e" * n, bytearray(b"f" * n), memoryview(b"g" * n))[i % 3] for i, n in enumerate(sizes)
    ]
    bs = _speedups.batch_sizes
    return [
        lambda: bs(datagrams),
        lambda: bs(tuple(mixed)),
        lambda: bs(iter(datagrams)),
        lambda: bs(d for d in mixed),
        lambda: bs([]),
        lambda: bs(_shrinking_list()),
        lambda: bs([_Huge()]),
        # invalid
        lambda: bs([_Huge(), b"x"]),
        lambda: bs(5),
        lambda: bs([b"x", object(), b"y"]),
        lambda: bs([b"x", _Raises()]),
    ]


def frame_loop_calls(name: str) -> list[Call]:
    """read_frames or write_frames over an AF_UNIX datagram pair: the entry under
    test moves the frames, plain socket calls move them the other way, so each
    call leaves the pair as it found it."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    gone_a, gone_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    gone_b.close()  # a peer that has gone: the loops return an errno, no exception
    for s in (a, b, gone_a):
        s.setblocking(False)
    _KEEP.extend([a, b, gone_a])

    def drain() -> int:
        n = 0
        try:
            while True:
                b.recv(65536)
                n += 1
        except BlockingIOError:
            return n

    if name == "write_frames":
        write = _speedups.write_frames
        frames = [b"a" * 100, bytearray(b"b" * 1500), memoryview(b"c" * 60), b""]
        # More than the default datagram queue (10): stops at EAGAIN.
        many = [b"m" * 200] * 14

        def ok(seq: Any, start: int) -> Call:
            def call() -> object:
                try:
                    return write(a.fileno(), seq, start)
                finally:
                    drain()

            return call

        return [
            ok(frames, 0),
            ok(tuple(frames), 2),
            ok(frames, len(frames)),
            ok(many, 0),
            ok(iter(frames), 1),
            lambda: write(gone_a.fileno(), frames, 0),
            # invalid
            lambda: write(-1, frames, 0),
            lambda: write(a.fileno(), frames, 5),
            lambda: write(a.fileno(), frames, -1),
            lambda: write(a.fileno(), 5, 0),
            lambda: write(a.fileno(), [b"x", object()], 0),
            lambda: write(a.fileno(), frames, "x"),
            lambda: write(a.fileno(), [memoryview(b"xy" * 50)[::2]], 0),
            lambda: write(1 << 40, frames, 0),
            lambda: write(a.fileno(), frames),
        ]
    read = _speedups.read_frames

    def ok_read(count: int, max_frames: int, size: int) -> Call:
        def call() -> object:
            for i in range(count):
                a.send(bytes([i]) * (10 + 100 * i))
            try:
                return read(b.fileno(), max_frames, size)
            finally:
                drain()

        return call

    return [
        ok_read(3, 8, 2048),  # runs dry: EAGAIN
        ok_read(5, 2, 100),  # stops at max_frames, frames cut to size
        ok_read(1, 1, 1 << 20),
        ok_read(0, 4, 64),
        ok_read(2, 0, 64),
        lambda: read(gone_a.fileno(), 4, 64),
        # invalid
        lambda: read(-1, 4, 64),
        lambda: read(b.fileno(), -1, 64),
        lambda: read(b.fileno(), 4, 0),
        lambda: read(b.fileno(), 4, (1 << 20) + 1),
        lambda: read(b.fileno(), "x", 64),
        lambda: read(b.fileno(), 4, _Raises()),
        lambda: read(b.fileno(), 4),
    ]


def read_packed_calls() -> list[Call]:
    """read_packed over an AF_UNIX datagram pair, into pools of several sizes;
    each call drains what it did not read, so the pair stays as it was."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for s in (a, b):
        s.setblocking(False)
    gone_a, gone_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    gone_b.close()
    gone_a.setblocking(False)
    _KEEP.extend([a, b, gone_a])
    read = _speedups.read_packed

    def ok(count: int, pool: bytearray, size: int, max_frames: int) -> Call:
        def call() -> object:
            for i in range(count):
                a.send(bytes([i]) * (10 + 100 * i))
            try:
                return read(b.fileno(), pool, size, max_frames)
            finally:
                try:
                    while True:
                        b.recv(65536)
                except BlockingIOError:
                    pass

        return call

    return [
        ok(3, bytearray(8192), 2048, 8),  # runs dry: EAGAIN
        ok(5, bytearray(8192), 100, 2),  # stops at max_frames
        ok(5, bytearray(3000), 2048, 8),  # stops for room
        ok(2, bytearray(4096), 4096, 100),  # max_frames capped at 64
        ok(1, bytearray(8192), 64, 0),
        lambda: read(gone_a.fileno(), bytearray(100), 64, 4),
        # invalid
        lambda: read(-1, bytearray(100), 64, 4),
        lambda: read(b.fileno(), b"read-only", 4, 4),
        lambda: read(b.fileno(), bytearray(100), 0, 4),
        lambda: read(b.fileno(), bytearray(100), 64, -1),
        lambda: read(b.fileno(), bytearray(100), "x", 4),
        lambda: read(b.fileno(), bytearray(100), 64, _Raises()),
        lambda: read(b.fileno(), bytearray(100), 64),
    ]


def _private_netns() -> bool:
    """Enter a new network namespace with its loopback up (root only)."""
    if os.geteuid() != 0:
        return False
    from pyroute2 import IPRoute

    from trio_tun.platform.linux import netns

    netns.unshare_net()
    with IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
    return True


def mmsg_calls(name: str, udp: bool) -> list[Call]:
    """sendmmsg or recvmmsg, with a socket pair to talk over."""
    if udp:
        family = socket.AF_INET6 if name == "recvmmsg" else socket.AF_INET
        host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        a = socket.socket(family, socket.SOCK_DGRAM)
        b = socket.socket(family, socket.SOCK_DGRAM)
        a.bind((host, 0))
        b.bind((host, 0))
        a.connect(b.getsockname())
        raw = _raw_sockaddr(b)
    else:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        raw = None
    a.setblocking(False)
    b.setblocking(False)
    _KEEP.extend([a, b])

    def drain() -> None:
        try:
            while True:
                b.recv(65536)
        except BlockingIOError:
            pass

    if name == "sendmmsg":
        send = _speedups.sendmmsg
        msgs_ok = [([b"abc", bytearray(b"de"), memoryview(b"f")], 0, None), ([b"x" * 100], 0, raw)]
        gso = [([b"y" * 3000], 1000 if udp else 0, None)]

        def ok(messages: list[Any]) -> Call:
            def call() -> object:
                try:
                    return send(a.fileno(), messages)
                finally:
                    drain()

            return call

        def emptied() -> object:
            return ok(_messages_emptied(msgs_ok))()  # a fresh list each time

        return [
            ok(msgs_ok),
            ok(gso),
            ok([([bytearray(b"g" * 10) for _ in range(3)], 0, None)]),
            ok([(iter([b"it"]), 0, None)]),
            emptied,
            lambda: send(a.fileno(), []),
            # invalid
            lambda: send(a.fileno(), [([b"x"], -1, None)]),
            lambda: send(a.fileno(), [([b"x"], 0, "addr")]),
            lambda: send(a.fileno(), [([b"x"], 0)]),
            lambda: send(a.fileno(), [([b"x", object()], 0, None)]),
            lambda: send(a.fileno(), [([b"x"], "gso", None)]),
            lambda: send(a.fileno(), 5),
            lambda: send(-1, msgs_ok),
        ]
    recv = _speedups.recvmmsg
    buf = bytearray(4 * 2048)

    def ok_recv(count: int, anc: int, want: bool) -> Call:
        def call() -> object:
            for i in range(count):
                a.send(b"m" * (10 + i))
            return recv(b.fileno(), buf, 2048, 4, anc, want)

        return call

    return [
        ok_recv(1, 0, False),
        ok_recv(3, 64, True),
        ok_recv(2, 0, True),
        lambda: recv(b.fileno(), memoryview(buf), 2048, 4, 0, False),  # nothing: EAGAIN
        # invalid
        lambda: recv(b.fileno(), bytes(100), 10, 1, 0, False),
        lambda: recv(b.fileno(), buf, 0, 4, 0, False),
        lambda: recv(b.fileno(), buf, 4096, 4, 0, False),
        lambda: recv(b.fileno(), buf, 2048, 4, -1, False),
        lambda: recv(b.fileno(), buf, 2048, 4, 0),
    ]


_KEEP: list[socket.socket] = []


def _messages_emptied(tail: list[Any]) -> list[Any]:
    """Messages whose first buffers empty the list while sendmmsg reads them."""
    messages: list[Any] = []

    def buffers() -> Iterator[bytes]:
        messages.clear()
        yield b"first"

    messages.extend([(buffers(), 0, None), *tail])
    return messages


def _raw_sockaddr(sock: socket.socket) -> bytes:
    host, port = sock.getsockname()[:2]
    if sock.family == socket.AF_INET:
        return (
            struct.pack("=H", socket.AF_INET)
            + struct.pack("!H", port)
            + socket.inet_aton(host)
            + bytes(8)
        )
    return (
        struct.pack("=H", socket.AF_INET6)
        + struct.pack("!HI", port, 0)
        + socket.inet_pton(socket.AF_INET6, host)
        + struct.pack("=I", 0)
    )


def pump_calls() -> list[Call]:
    """pump_frames between two SOCK_SEQPACKET pairs.  The stop-read pipe holds a
    byte from the start, so every call forwards what is queued and returns as
    soon as the source runs dry; the test side drains the destination."""
    import array

    src, src_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    dst, dst_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    eof, eof_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    gone, gone_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    eof_peer.close()  # reads 0: the end of the stream
    gone_peer.close()  # writes fail: EPIPE
    for s in (src, src_peer, dst, dst_peer, eof, gone):
        s.setblocking(False)
    _KEEP.extend([src, src_peer, dst, dst_peer, eof, gone])
    stop_r, stop_w = os.pipe()
    idle_r, _idle_w = os.pipe()
    os.write(stop_w, b"s")
    pump = _speedups.pump_frames
    state = array.array("Q", bytes(48))
    stopped = array.array("Q", [1, 0, 0, 0, 0, 0])

    def drain() -> None:
        try:
            while True:
                dst_peer.recv(70_000)
        except BlockingIOError:
            pass

    def forward(frames: list[bytes], limit: int, batch: int = 1) -> Call:
        def call() -> object:
            for frame in frames:
                src_peer.send(frame)
            try:
                return pump(src.fileno(), dst.fileno(), 4096, limit, stop_r, idle_r, state, batch)
            finally:
                drain()

        return call

    def to_gone(batch: int = 1) -> Call:
        def call() -> object:
            src_peer.send(b"x" * 10)
            src_peer.send(b"y" * 20)
            try:
                return pump(src.fileno(), gone.fileno(), 4096, 4096, stop_r, idle_r, state, batch)
            finally:
                drain_src()

        return call

    def drain_src() -> None:
        try:
            while True:
                src.recv(70_000)
        except BlockingIOError:
            pass

    return [
        forward([b"a" * 100, b"b" * 1500, b"c"], 4096),
        forward([b"d" * 3000, b"e" * 10], 1000),  # the long one dropped
        forward([], 10),
        # a run of frames read before they are written, one of them dropped
        forward([b"f" * 100, b"g" * 3000, b"h" * 1500, b"i"], 2000, 64),
        to_gone(),
        to_gone(64),
        lambda: pump(eof.fileno(), dst.fileno(), 4096, 4096, stop_r, idle_r, state),
        lambda: pump(src.fileno(), dst.fileno(), 4096, 4096, idle_r, idle_r, stopped),
        # invalid
        lambda: pump(-1, dst.fileno(), 4096, 4096, stop_r, idle_r, state),
        lambda: pump(src.fileno(), dst.fileno(), 0, 4096, stop_r, idle_r, state),
        lambda: pump(src.fileno(), dst.fileno(), 4096, 0, stop_r, idle_r, state),
        lambda: pump(src.fileno(), dst.fileno(), 4096, 4096, stop_r, idle_r, bytes(48)),
        lambda: pump(src.fileno(), dst.fileno(), 4096, 4096, stop_r, idle_r, bytearray(8)),
        lambda: pump(src.fileno(), dst.fileno(), "x", 4096, stop_r, idle_r, state),
        lambda: pump(src.fileno(), dst.fileno(), 4096, 4096, stop_r, idle_r),
        lambda: pump(src.fileno(), dst.fileno(), 4096, 4096, stop_r, idle_r, state, 0),
        lambda: pump(src.fileno(), dst.fileno(), 4096, 4096, stop_r, idle_r, state, 65),
    ]


def pump_pair_calls() -> list[Call]:
    """pump_pair between two SOCK_SEQPACKET pairs, both ways.  As in pump_calls,
    the stop-read pipe holds a byte from the start: each call forwards what is
    queued on both sides and returns once both are dry."""
    import array

    a, a_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    b, b_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    eof, eof_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    eof_peer.close()  # reads 0: the end of the stream
    for s in (a, a_peer, b, b_peer, eof):
        s.setblocking(False)
    _KEEP.extend([a, a_peer, b, b_peer, eof])
    stop_r, stop_w = os.pipe()
    idle_r, _idle_w = os.pipe()
    os.write(stop_w, b"s")
    pump = _speedups.pump_pair
    ab = array.array("Q", bytes(48))
    ba = array.array("Q", bytes(48))
    stopped = array.array("Q", [1, 0, 0, 0, 0, 0])

    def drain() -> None:
        for peer in (a_peer, b_peer):
            try:
                while True:
                    peer.recv(70_000)
            except BlockingIOError:
                pass

    def both_ways(to_b: list[bytes], to_a: list[bytes], limit: int, batch: int) -> Call:
        def call() -> object:
            for frame in to_b:
                a_peer.send(frame)
            for frame in to_a:
                b_peer.send(frame)
            try:
                return pump(
                    a.fileno(), b.fileno(), 4096, limit, limit, stop_r, idle_r, ab, ba, batch
                )
            finally:
                drain()

        return call

    args = (4096, 4096, 4096, stop_r, idle_r, ab, ba, 64)
    return [
        both_ways([b"a" * 100, b"b" * 1500], [b"c"], 4096, 64),
        both_ways([b"d" * 3000, b"e" * 10], [b"f" * 2000], 1000, 1),  # long ones dropped
        both_ways([], [], 10, 64),
        lambda: pump(eof.fileno(), b.fileno(), *args),
        lambda: pump(a.fileno(), b.fileno(), 4096, 4096, 4096, stop_r, idle_r, stopped, ba, 64),
        # invalid
        lambda: pump(-1, b.fileno(), *args),
        lambda: pump(a.fileno(), b.fileno(), 0, 4096, 4096, stop_r, idle_r, ab, ba, 64),
        lambda: pump(a.fileno(), b.fileno(), 4096, 4096, 0, stop_r, idle_r, ab, ba, 64),
        lambda: pump(a.fileno(), b.fileno(), 4096, 4096, 4096, stop_r, idle_r, ab, ba, 0),
        lambda: pump(a.fileno(), b.fileno(), 4096, 4096, 4096, stop_r, idle_r, ab, bytes(48), 64),
        lambda: pump(a.fileno(), b.fileno(), 4096, 4096, 4096, stop_r, idle_r, bytearray(8), ba, 1),
        lambda: pump(a.fileno(), b.fileno(), *args[:-1]),
    ]


def entry_points(udp: bool) -> dict[str, list[Call]]:
    points = {
        "ones_complement_sum": checksum_calls("ones_complement_sum"),
        "checksum": checksum_calls("checksum"),
        "split": split_calls(),
        "split_with_header": split_with_header_calls(),
        "gro_parse": gro_parse_calls(),
        "gro_build": gro_build_calls(),
        "coalesce": coalesce_calls(),
        "GroTable": grotable_calls(),
    }
    if hasattr(_speedups, "sendmmsg"):
        points["sendmmsg"] = mmsg_calls("sendmmsg", udp)
        points["recvmmsg"] = mmsg_calls("recvmmsg", udp)
    points["split_gro"] = split_gro_calls()
    points["gso_runs"] = gso_runs_calls()
    points["batch_sizes"] = batch_sizes_calls()
    if hasattr(_speedups, "read_frames"):
        points["write_frames"] = frame_loop_calls("write_frames")
        points["read_frames"] = frame_loop_calls("read_frames")
    if hasattr(_speedups, "read_packed"):
        points["read_packed"] = read_packed_calls()
    if hasattr(_speedups, "pump_frames"):
        points["pump_frames"] = pump_calls()
    if hasattr(_speedups, "pump_pair"):
        points["pump_pair"] = pump_pair_calls()
    return points


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _run(calls: list[Call], count: int) -> tuple[int, int]:
    ok = failed = 0
    n = len(calls)
    for i in range(count):
        try:
            calls[i % n]()
            ok += 1
        except EXPECTED:
            failed += 1
    return ok, failed


def _refcounts(calls: list[Call]) -> list[int]:
    """Reference counts of the long-lived objects the calls use (their closures)."""
    objs: list[object] = []
    for call in calls:
        for cell in getattr(call, "__closure__", None) or ():
            objs.append(cell.cell_contents)
        objs.extend(getattr(call, "__defaults__", None) or ())
    # Cached small ints and singletons are shared by everything: _shared()
    # checks them, within bounds.
    return [sys.getrefcount(o) for o in objs if not _is_shared_constant(o)]


def _is_shared_constant(obj: object) -> bool:
    return obj is None or (type(obj) in (int, bool) and -5 <= obj <= 256)  # type: ignore[operator]


def _shared() -> list[object]:
    """Objects every call may take a reference to: singletons, cached small ints,
    the exception class, the module's own objects, the Python references the
    speedups call into.  Other code moves their counts a little; a leak moves
    them by about the number of calls."""
    from trio_tun.offload import gro, gso

    objs: list[object] = [None, True, False, MalformedPacket, gro, gso, *range(-5, 257)]
    objs += [gso.split_with_header, gso.split_fields, gro.coalesce, gro.parse, gro.build]
    objs += list(vars(_speedups).values())
    return objs


def check(name: str, calls: list[Call], total: int) -> dict[str, Any]:
    warm = max(total // 10, len(calls))
    started = time.monotonic()
    _run(calls, warm)
    shared = _shared()
    refs0 = _refcounts(calls)
    shared0 = [sys.getrefcount(o) for o in shared]
    gc.collect()
    blocks0, objects0, rss0 = sys.getallocatedblocks(), len(gc.get_objects()), _rss()
    ok, failed = _run(calls, total - warm)
    gc.collect()
    blocks1, objects1, rss1 = sys.getallocatedblocks(), len(gc.get_objects()), _rss()
    refs1 = _refcounts(calls)
    shared1 = [sys.getrefcount(o) for o in shared]
    result = {
        "entry": name,
        "calls": total,
        "raised": failed,
        "blocks": blocks1 - blocks0,
        "objects": objects1 - objects0,
        "rss_kib": (rss1 - rss0) // 1024,
        "refcounts": max((b - a for a, b in zip(refs0, refs1, strict=True)), default=0),
        "shared": max(abs(b - a) for a, b in zip(shared0, shared1, strict=True)),
        "seconds": round(time.monotonic() - started, 1),
    }
    result["ok"] = (
        result["blocks"] <= MAX_BLOCKS
        and result["objects"] <= MAX_OBJECTS
        and result["rss_kib"] * 1024 <= MAX_RSS
        and result["refcounts"] == 0
        and result["shared"] <= max(MAX_SHARED, total // 1000)
        and ok > 0
        and failed > 0
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1_000_000, help="calls per entry point")
    parser.add_argument("entry", nargs="*", help="some entry points (default: all)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    udp = _private_netns()
    points = entry_points(udp)
    names = args.entry or list(points)
    print(f"{_speedups.__file__}; UDP entry points over {'UDP' if udp else 'AF_UNIX'}")
    header = f"{'entry point':<21}{'calls':>9}{'raised':>9}{'blocks':>8}{'objects':>8}"
    print(header + f"{'RSS KiB':>9}{'refs':>6}{'shared':>7}{'s':>7}  verdict", flush=True)
    results = []
    for name in names:
        r = check(name, points[name], args.calls)
        results.append(r)
        print(
            f"{name:<21}{r['calls']:>9}{r['raised']:>9}{r['blocks']:>8}{r['objects']:>8}"
            f"{r['rss_kib']:>9}{r['refcounts']:>6}{r['shared']:>7}{r['seconds']:>7}  "
            f"{'flat' if r['ok'] else 'LEAK?'}",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
