"""Record the fuzz corpus seeds from the kernel: real TUN reads with offload on.

Run once, as root, from the repository root (``python tests/fuzz/record_corpus.py``);
the files it writes under ``tests/fuzz/corpus/`` are committed.

Everything happens in private network namespaces: the process first moves
into a namespace of its own, then makes two more, A and B, each with a TUN
device (offload on).  A forwarder in this process passes every raw read
(virtio header + super-packet) from one device to the other unchanged and
keeps a copy.  Through it run a TCP transfer over IPv4 and over IPv6 (TSO
super-packets one way, ACKs that still need their checksum the other way) and
UDP sends with ``UDP_SEGMENT`` over both (one read with ``GSO_UDP_L4``).  From
the reads recorded, a few of each kind are written as seeds for every
harness, in that harness's input format (see ``harnesses.py``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import struct
import sys
from collections import defaultdict
from pathlib import Path

import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import trio_tun  # noqa: E402
from fuzz.harnesses import CORPUS, NEWER_OPS, VNET, make_records  # noqa: E402
from trio_tun import TunStream, _framing  # noqa: E402
from trio_tun.offload import reference as py  # noqa: E402
from trio_tun.platform.linux import netns as _netns  # noqa: E402
from trio_tun.testing import NetNamespace  # noqa: E402

SOL_UDP = 17
UDP_SEGMENT = 103
#: Reads of one kind kept (kind: gso type, flags, IP version, size class).
PER_KIND = 2
#: Reads larger than this are cut out of most seeds (the corpus stays small).
BIG = 20000
#: The AF-header numberings the seeds cover; a seed's first byte is its index.
AF_NUMBERINGS = (_framing.DARWIN, _framing.FREEBSD, _framing.OPENBSD, _framing.NETBSD)


def kind_of(read: bytes) -> tuple[int, int, int, int]:
    flags, gso_type, *_ = VNET.unpack_from(read)
    version = read[10] >> 4 if len(read) > 10 else 0
    size_class = 0 if len(read) < 200 else 1 if len(read) < 2000 else 2 if len(read) < BIG else 3
    return gso_type, flags, version, size_class


async def forward(src: TunStream, dst: TunStream, log: list[bytes], limit: int = 20000) -> None:
    while True:
        read = await src.receive_raw()
        if len(log) < limit:
            log.append(read)
        await dst.send_raw(read)


async def tcp_transfer(a_ns: NetNamespace, b_ns: NetNamespace, family: int, server: str) -> None:
    listener = trio.socket.from_stdlib_socket(b_ns.socket(family, socket.SOCK_STREAM))
    with listener:
        await listener.bind((server, 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        client = trio.socket.from_stdlib_socket(a_ns.socket(family, socket.SOCK_STREAM))
        with client:
            await client.connect((server, port))
            conn, _ = await listener.accept()
            with conn:
                payload = os.urandom(2 * 1024 * 1024)
                async with trio.open_nursery() as nursery:

                    async def sink() -> None:
                        while await conn.recv(1 << 16):
                            pass

                    nursery.start_soon(sink)
                    view = memoryview(payload)
                    while view:
                        view = view[await client.send(view[: 1 << 16]) :]
                    client.shutdown(socket.SHUT_WR)


async def udp_gso(a_ns: NetNamespace, b_ns: NetNamespace, family: int, server: str) -> None:
    receiver = trio.socket.from_stdlib_socket(b_ns.socket(family, socket.SOCK_DGRAM))
    sender = trio.socket.from_stdlib_socket(a_ns.socket(family, socket.SOCK_DGRAM))
    with receiver, sender:
        await receiver.bind((server, 0))
        port = receiver.getsockname()[1]
        for gso_size, total in ((1200, 12000), (1000, 3500), (500, 1000)):
            sender.setsockopt(SOL_UDP, UDP_SEGMENT, gso_size)
            await sender.sendto(os.urandom(total), (server, port))
        for _ in range(10 + 4 + 2):
            with trio.move_on_after(2):
                await receiver.recv(65535)


async def record() -> list[bytes]:
    a_ns = NetNamespace.create()
    b_ns = NetNamespace.create()
    log: list[bytes] = []
    try:
        async with (
            trio_tun.open_tun(
                "reca",
                addresses=["10.77.1.1/24", "fd77:1::1/64"],
                netns=a_ns.fileno(),
                offload=True,
            ) as a,
            trio_tun.open_tun(
                "recb",
                addresses=["10.77.2.1/24", "fd77:2::1/64"],
                netns=b_ns.fileno(),
                offload=True,
            ) as b,
        ):
            for dev, prefixes in (
                (a, ("10.77.2.0/24", "fd77:2::/64")),
                (b, ("10.77.1.0/24", "fd77:1::/64")),
            ):
                for prefix in prefixes:
                    await dev.add_route(prefix)
            with trio.fail_after(120):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(forward, a, b, log)
                    nursery.start_soon(forward, b, a, log)
                    await tcp_transfer(a_ns, b_ns, socket.AF_INET, "10.77.2.1")
                    await tcp_transfer(a_ns, b_ns, socket.AF_INET6, "fd77:2::1")
                    await udp_gso(a_ns, b_ns, socket.AF_INET, "10.77.2.1")
                    await udp_gso(a_ns, b_ns, socket.AF_INET6, "fd77:2::1")
                    nursery.cancel_scope.cancel()
    finally:
        b_ns.close()
        a_ns.close()
    return log


def pick(reads: list[bytes]) -> list[bytes]:
    """A few reads of every kind, smallest first within a kind's first sightings."""
    by_kind: dict[tuple[int, int, int, int], list[bytes]] = defaultdict(list)
    for read in reads:
        bucket = by_kind[kind_of(read)]
        if len(bucket) < PER_KIND:
            bucket.append(read)
    return [read for kind in sorted(by_kind) for read in by_kind[kind]]


def write(harness: str, name: str, data: bytes) -> None:
    folder = Path(CORPUS) / harness
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(data).hexdigest()[:10]
    (folder / f"{name}-{digest}").write_bytes(data)


def label(read: bytes) -> str:
    gso_type, flags, version, _ = kind_of(read)
    names = {0: "plain", 1: "tcp4gso", 4: "tcp6gso", 5: "udpgso"}
    csum = "-csum" if flags & 1 else ""
    return f"v{version}-{names.get(gso_type, f'gso{gso_type}')}{csum}-{len(read)}"


def write_gso_runs_seeds() -> None:
    """Datagram lists for the speedups harness's gso_runs (and batch_sizes) check.

    Synthetic, not recorded: a tunnel's typical batch (equal segments, a short
    last one), one with a datagram whose len() empties the list, and one
    with an empty datagram in a tuple; one seed per buffer kind.
    """
    op_gso_runs = 1
    lists = [
        # (buffer kind, mode, datagram sizes)
        (0, 0, [1348] * 20 + [500]),
        (1, 1 | 100 << 1, [1348] * 6 + [700, 1348, 1348]),  # the len()-emptier says 100
        (2, 2, [1348, 1348, 0, 64, 64, 9000, 1]),
    ]
    for kind, mode, sizes in lists:
        selector = NEWER_OPS + kind * 3 + op_gso_runs
        # max_segments 64 (stored + 2), max_bytes 65507 (stored - 8).
        head = bytes([selector, 66]) + (65507 + 8).to_bytes(2, "big") + bytes([mode])
        datagrams = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
        write("speedups", f"gso-runs-kind{kind}-mode{mode}", head + make_records(datagrams))


def write_af_header_seeds(packets: list[bytes]) -> None:
    """The same packets as a BSD/macOS TUN fd would carry them, for each numbering."""
    for index, families in enumerate(AF_NUMBERINGS):
        framing = _framing.AfFraming(families)
        for packet in packets[index::4][:3]:
            frame = framing.encode(packet)
            assert frame is not None
            name = f"{families.platform}-v{packet[0] >> 4}-{len(packet)}"
            write("af_header", name, bytes([index]) + frame)
    write_af_header_mismatches(packets)


def write_af_header_mismatches(packets: list[bytes]) -> None:
    """Frames a reader must refuse: the family contradicts the version nibble, or is
    neither of the numbering's two (such as another system's AF_INET6)."""
    v4 = next(p for p in packets if p[0] >> 4 == 4)
    v6 = next(p for p in packets if p[0] >> 4 == 6)
    for index, families in enumerate(AF_NUMBERINGS):
        other = AF_NUMBERINGS[(index + 1) % len(AF_NUMBERINGS)].inet6
        other = other if other != families.inet6 else 0xFFFF
        for tag, family, packet in (
            ("inet-v6", families.inet, v6),
            ("inet6-v4", families.inet6, v4),
            ("foreign-v6", other, v6),
        ):
            frame = family.to_bytes(4, "big") + packet[:80]
            write("af_header", f"{families.platform}-{tag}", bytes([index]) + frame)


def main() -> int:
    if os.geteuid() != 0:
        print("recording needs root (namespaces and TUN devices)", file=sys.stderr)
        return 2
    _netns.unshare_net()  # before any thread: nothing here can reach the host's interfaces
    reads = trio.run(record)
    chosen = pick(reads)
    small = [r for r in chosen if len(r) <= BIG]
    big = [r for r in chosen if len(r) > BIG][:2]
    print(f"recorded {len(reads)} reads; kinds: {sorted({kind_of(r) for r in reads})}")
    shutil.rmtree(CORPUS, ignore_errors=True)
    for read in [*small, *big]:
        write("virtio", label(read), read[:64] if len(read) > BIG else read)
        write("gso_split", label(read), read)
        write("speedups", "split-" + label(read), bytes([0]) + read)
    for read in small:
        write("stream_decode", label(read), bytes([0]) + make_records([read]))
    # A whole exchange as one stream batch: reads of several kinds back to back.
    mixed = [r for r in small if len(r) < 4000][:12]
    write("stream_decode", "mixed", bytes([0]) + make_records(mixed))
    write("stream_decode", "mixed-batch7", bytes([64 + 6]) + make_records(mixed))
    # GRO seeds: the segments the reads split into, i.e. what a forwarder
    # hands send_batch, plus the short packets (ACKs) between them.
    for read in small:
        if VNET.unpack_from(read)[1] == 0:
            continue
        segments = py.split_with_header(read)
        uso = 1 if VNET.unpack_from(read)[1] == 5 else 0
        write("gro_coalesce", "segments-" + label(read), bytes([uso]) + make_records(segments))
        write("speedups", "coalesce-" + label(read), bytes([2, uso]) + make_records(segments))
        table_input = make_records([*segments[:3], b"\xff", *segments[3:]])
        write("speedups", "table-" + label(read), bytes([3, uso]) + table_input)
        write("speedups", "parse-" + label(read), bytes([5]) + make_records(segments[:4]))
    acks = [py.split_with_header(r)[0] for r in small if len(r) < 200][:8]
    if acks:
        write("gro_coalesce", "acks", bytes([0]) + make_records(acks))
        write("speedups", "checksum", bytes([4]) + struct.pack("!IB", 0, 0) + acks[0])
    write_af_header_seeds([py.split_with_header(r)[0] for r in small if len(r) < 2000])
    write_gso_runs_seeds()
    total = sum(f.stat().st_size for f in Path(CORPUS).rglob("*") if f.is_file())
    count = sum(1 for f in Path(CORPUS).rglob("*") if f.is_file())
    print(f"wrote {count} corpus files, {total} bytes, under {CORPUS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
