"""trio_tun.pcap: the writer read back by dpkt and scapy, the capturing stream on memory
pairs (both backends) and on real TUN and TAP devices answering ping."""

from __future__ import annotations

import functools
import io
import shutil
import struct
import subprocess
import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

import anyio
import anyio.to_thread
import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.utils import RawPcapReader

import trio_tun
from packets_util import (
    ETH_P_ARP,
    ETH_P_IP,
    IPPROTO_ICMP,
    arp_reply,
    arp_request_for,
    echo_reply,
    ethernet,
    ethertype,
    ip_bytes,
    ipv4,
    mac_bytes,
    parse,
)
from trio_tun import Layer, TunAttribute
from trio_tun.pcap import (
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    MAGIC_NANOSECONDS,
    CaptureStream,
    PcapWriter,
    capture,
)
from trio_tun.testing import NetNamespace, memory_tun_pair

PING = shutil.which("ping")

# -- reading files back with two independent readers ---------------------------


def read_dpkt(data: bytes) -> tuple[int, int, list[tuple[Decimal, bytes]]]:
    """(linktype, snaplen, [(timestamp, bytes)]) as dpkt reads them."""
    reader = dpkt.pcap.Reader(io.BytesIO(data))
    return reader.datalink(), reader.snaplen, list(reader)


def read_scapy(data: bytes) -> list[tuple[bytes, int, int, int, int]]:
    """[(bytes, sec, nsec, caplen, wirelen)] as scapy reads them."""
    reader = RawPcapReader(io.BytesIO(data))  # type: ignore[arg-type]
    try:
        assert reader.nano  # scapy saw the nanosecond magic
        return [(pkt, m.sec, m.usec, m.caplen, m.wirelen) for pkt, m in reader]
    finally:
        reader.close()


def ipv4_icmp_echo(seq: int) -> bytes:
    body = struct.pack("!BBHHH", 8, 0, 0, 0x77, seq) + bytes([seq]) * 8
    return ipv4("10.1.0.1", "10.1.0.2", IPPROTO_ICMP, body, ident=seq)


# -- the writer ------------------------------------------------------------------

packets_st = st.lists(
    st.tuples(st.binary(min_size=1, max_size=1600), st.integers(0, 2**32 * 10**9 - 1)),
    max_size=20,
)


@settings(max_examples=150, deadline=None)
@given(
    records=packets_st,
    snaplen=st.one_of(st.integers(1, 2000), st.just(262144)),
    linktype=st.sampled_from([LINKTYPE_RAW, LINKTYPE_ETHERNET]),
)
def test_writer_round_trip(records: list[tuple[bytes, int]], snaplen: int, linktype: int) -> None:
    buffer = io.BytesIO()
    writer = PcapWriter(buffer, linktype=linktype, snaplen=snaplen, flush_interval=None)
    for packet, stamp in records:
        writer.write(packet, timestamp_ns=stamp)
    writer.close()
    data = buffer.getvalue()
    assert not buffer.closed  # a file object given to the writer stays open
    assert struct.unpack_from("<I", data)[0] == MAGIC_NANOSECONDS
    assert len(data) == writer.bytes_written
    assert writer.packets == len(records)
    assert writer.truncated == sum(len(p) > snaplen for p, _ in records)

    dl, snap, got = read_dpkt(data)
    assert (dl, snap) == (linktype, snaplen)
    assert [p for _, p in got] == [p[:snaplen] for p, _ in records]
    # Nanoseconds survive exactly (dpkt divides by a Decimal for this magic).
    assert [ts for ts, _ in got] == [Decimal(s) / Decimal(10**9) for _, s in records]

    scapy_view = read_scapy(data)
    expected = [
        (p[:snaplen], s // 10**9, s % 10**9, min(len(p), snaplen), len(p)) for p, s in records
    ]
    assert scapy_view == expected


def test_writer_flush_policy_and_path(tmp_path: Path) -> None:
    path = tmp_path / "x.pcap"
    packet = ipv4_icmp_echo(1)
    # None: only a full buffer, flush() or close() reach the file.
    writer = PcapWriter(path, flush_interval=None)
    assert path.stat().st_size == 24  # the header is flushed at once
    writer.write(packet)
    assert path.stat().st_size == 24
    writer.flush()
    assert path.stat().st_size == 24 + 16 + len(packet)
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        writer.write(packet)
    # 0: every write is flushed (a live reader sees each packet at once).
    record = 16 + len(packet)
    with PcapWriter(path, flush_interval=0) as live:
        live.write(packet)
        assert path.stat().st_size == 24 + record
        live.write_many([packet, packet])
        assert path.stat().st_size == 24 + 3 * record
    # An interval: the write that finds the oldest record older than it flushes.
    with PcapWriter(path, flush_interval=0.05) as paced:
        paced.write(packet)
        assert path.stat().st_size == 24
        time.sleep(0.1)
        paced.write(packet)
        assert path.stat().st_size == 24 + 2 * record
        paced.write(packet)  # a fresh interval starts with this one
        assert path.stat().st_size == 24 + 2 * record
    assert path.stat().st_size == 24 + 3 * record
    _, _, got = read_dpkt(path.read_bytes())
    assert [p for _, p in got] == [packet] * 3


def test_writer_refuses_a_text_file() -> None:
    with pytest.raises(TypeError, match="binary"):
        PcapWriter(io.StringIO())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"snaplen": 0}, "snaplen"),
        ({"snaplen": 262145}, "snaplen"),
        ({"linktype": -1}, "linktype"),
        ({"flush_interval": -1.0}, "flush_interval"),
    ],
)
def test_writer_rejects_bad_arguments(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PcapWriter(io.BytesIO(), **kwargs)  # type: ignore[arg-type]


# -- the capturing stream on memory pairs -----------------------------------------


@pytest.mark.anyio
async def test_capture_records_every_method_in_order(tmp_path: Path) -> None:
    path = tmp_path / "mem.pcap"
    device, network = memory_tun_pair(names=("dev0", "net0"))
    inbound = [ipv4_icmp_echo(i) for i in range(6)]
    outbound = [ipv4_icmp_echo(100 + i) for i in range(5)]
    with anyio.fail_after(10):
        async with network:
            cap = capture(device, path)
            with cap:
                assert not cap.writer.closed
                await network.send(inbound[0])
                assert await cap.receive() == inbound[0]
                await cap.send(outbound[0])
                for packet in inbound[1:4]:
                    await network.send(packet)
                assert await cap.receive_batch() == inbound[1:4]
                await cap.send_batch(outbound[1:3])
                await network.send(inbound[4])
                assert await cap.receive_raw() == inbound[4]
                await cap.send_raw(outbound[3])
                assert cap.capture_statistics().received == 5
                assert cap.capture_statistics().sent == 4
            # The block ended the capture, not the stream.
            assert not cap.capturing
            assert not device.closed
            await network.send(inbound[5])
            assert await cap.receive() == inbound[5]
            await cap.send(outbound[4])
            # The packets really crossed, captured or not.
            got = [await network.receive() for _ in range(5)]
            assert got == outbound
            # Same packet API: counters and typed attributes are the stream's.
            assert cap.statistics() == device.statistics()
            assert cap.statistics().rx_packets == 6
            assert cap.extra(TunAttribute.name) == "dev0" == cap.name
            assert cap.layer is Layer.L3
            await cap.aclose()
            assert cap.closed  # the stream's own flag
    linktype, _, records = read_dpkt(path.read_bytes())
    assert linktype == LINKTYPE_RAW
    expected = [
        inbound[0],
        outbound[0],
        *inbound[1:4],
        *outbound[1:3],
        inbound[4],
        outbound[3],
    ]
    assert [p for _, p in records] == expected
    stamps = [ts for ts, _ in records]
    assert stamps == sorted(stamps)


@pytest.mark.anyio
@pytest.mark.parametrize("direction", ["received", "sent"])
async def test_capture_one_direction(direction: str) -> None:
    buffer = io.BytesIO()
    device, network = memory_tun_pair()
    a, b = ipv4_icmp_echo(1), ipv4_icmp_echo(2)
    with anyio.fail_after(10):
        async with device, network:
            with capture(device, buffer, direction=direction) as cap:  # type: ignore[arg-type]
                await network.send(a)
                assert await cap.receive() == a
                await cap.send(b)
                assert await network.receive() == b
    _, _, records = read_dpkt(buffer.getvalue())
    assert [p for _, p in records] == ([a] if direction == "received" else [b])


@pytest.mark.anyio
async def test_cancelled_send_batch_records_the_prefix_that_was_sent() -> None:
    buffer = io.BytesIO()
    device, network = memory_tun_pair()
    batch = [ipv4_icmp_echo(i) for i in range(5)]
    original = device.send_batch

    async def stalls_after_two(packets: Sequence[bytes]) -> None:
        # As a device whose queue filled up after two packets would.
        await original(list(packets)[:2])
        await anyio.sleep_forever()

    device.send_batch = stalls_after_two  # type: ignore[method-assign,assignment]
    async with device, network:
        cap = capture(device, buffer, flush_interval=0)
        with anyio.move_on_after(0.2):
            await cap.send_batch(batch)
        assert cap.capture_statistics().sent == 2
        cap.close_capture()
        assert [await network.receive() for _ in range(2)] == batch[:2]
    _, _, records = read_dpkt(buffer.getvalue())
    assert [p for _, p in records] == batch[:2]


@pytest.mark.anyio
async def test_capture_truncates_to_snaplen() -> None:
    buffer = io.BytesIO()
    device, network = memory_tun_pair()
    packet = ipv4_icmp_echo(7) + bytes(500)
    async with device, network:
        with capture(device, buffer, snaplen=40) as cap:
            await network.send(packet)
            assert await cap.receive() == packet  # the program still gets all of it
        assert cap.capture_statistics().truncated == 1
    records = read_scapy(buffer.getvalue())
    assert [(p, caplen, wirelen) for p, _, _, caplen, wirelen in records] == [
        (packet[:40], 40, len(packet))
    ]


@pytest.mark.anyio
async def test_a_send_that_fails_is_not_recorded() -> None:
    buffer = io.BytesIO()
    device, network = memory_tun_pair()
    async with device, network:
        with capture(device, buffer) as cap:
            with pytest.raises(ValueError, match="empty"):
                await cap.send(b"")
            with pytest.raises(ValueError, match="larger"):
                await cap.send_batch([ipv4_icmp_echo(1), bytes(70000)])
            with pytest.raises(ValueError, match="empty"):
                await cap.send_raw(b"")
            await cap.send(ipv4_icmp_echo(2))
    _, _, records = read_dpkt(buffer.getvalue())
    assert [p for _, p in records] == [ipv4_icmp_echo(2)]


def test_capture_rejects_unknown_direction() -> None:
    device, _ = memory_tun_pair()
    with pytest.raises(ValueError, match="direction"):
        capture(device, io.BytesIO(), direction="in")  # type: ignore[arg-type]


# -- real devices: a ping exchange captured --------------------------------------

PEER_MAC = mac_bytes("02:00:00:00:00:02")


async def _tun_responder(cap: CaptureStream) -> None:
    for _ in range(1000):
        reply = echo_reply(await cap.receive())
        if reply is not None:
            await cap.send(reply)


async def _tap_responder(cap: CaptureStream) -> None:
    """Play the peer 10.9.0.2: answer ARP for it, then its echo requests."""
    for _ in range(1000):
        frame = await cap.receive()
        asked = arp_request_for(frame, "10.9.0.2")
        if asked is not None:
            sender_mac, sender_ip = asked
            await cap.send(
                arp_reply(peer_mac=PEER_MAC, peer_ip="10.9.0.2", to_mac=sender_mac, to_ip=sender_ip)
            )
        elif ethertype(frame) == ETH_P_IP:
            reply = echo_reply(frame[14:])
            if reply is not None:
                await cap.send(ethernet(frame[6:12], PEER_MAC, ETH_P_IP, reply))


@pytest.mark.kernel
@pytest.mark.anyio
@pytest.mark.parametrize("layer", [Layer.L3, Layer.L2])
async def test_capture_of_a_real_ping_exchange(
    netns: NetNamespace, tmp_path: Path, layer: Layer
) -> None:
    if PING is None:
        pytest.skip("ping (iputils-ping) is not installed")
    path = tmp_path / "ping.pcap"
    opener = trio_tun.open_tap if layer is Layer.L2 else trio_tun.open_tun
    responder = _tap_responder if layer is Layer.L2 else _tun_responder
    async with opener(addresses=["10.9.0.1/24"], mtu=1400) as dev:
        with anyio.fail_after(60), capture(dev, path) as cap:
            async with anyio.create_task_group() as tg:
                tg.start_soon(responder, cap)
                argv = [PING, "-c", "3", "-i", "0.2", "-W", "5", "10.9.0.2"]
                run = functools.partial(netns.run, argv, timeout=30, check=False)
                result: subprocess.CompletedProcess[str] = await anyio.to_thread.run_sync(run)
                tg.cancel_scope.cancel()
        assert result.returncode == 0, result.stdout + result.stderr
        stats = dev.statistics()
        counted = cap.capture_statistics()
        # Every packet the stream moved is in the file, and nothing else.
        assert (counted.received, counted.sent) == (stats.rx_packets, stats.tx_packets)

    linktype, _, records = read_dpkt(path.read_bytes())
    assert linktype == (LINKTYPE_ETHERNET if layer is Layer.L2 else LINKTYPE_RAW)
    assert len(records) == counted.received + counted.sent
    dev_ip, peer_ip = ip_bytes("10.9.0.1"), ip_bytes("10.9.0.2")
    seen: list[tuple[str, int]] = []
    arp: list[str] = []
    for _, record in records:
        data = record
        if layer is Layer.L2:
            if ethertype(record) == ETH_P_ARP:
                arp.append("request" if record[20:22] == b"\x00\x01" else "reply")
                continue
            if ethertype(record) != ETH_P_IP:
                continue
            data = record[14:]
        p = parse(data)
        if p is None or p.version != 4 or p.proto != IPPROTO_ICMP:
            continue  # the kernel's IPv6 chatter (router solicitations, MLD)
        kind = {8: "request", 0: "reply"}[p.payload[0]]
        sequence = struct.unpack_from("!H", p.payload, 6)[0]
        # Requests come from the device's address (received), replies from the peer (sent).
        assert (ip_bytes(p.src), ip_bytes(p.dst)) == (
            (dev_ip, peer_ip) if kind == "request" else (peer_ip, dev_ip)
        )
        seen.append((kind, sequence))
    assert seen == [
        ("request", 1),
        ("reply", 1),
        ("request", 2),
        ("reply", 2),
        ("request", 3),
        ("reply", 3),
    ]
    if layer is Layer.L2:
        # The neighbour was looked up before the first echo request left.
        assert arp[:2] == ["request", "reply"]
