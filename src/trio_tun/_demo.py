"""``python -m trio_tun demo``: a toy VPN between two private network namespaces.

Topology (everything lives in namespaces this process creates and removes)::

    ns "left"                                   ns "right"
    tun 10.8.0.1/24, fd00:8::1/64               tun 10.8.0.2/24, fd00:8::2/64
       |  trio-tun stream                          |  trio-tun stream
    UDP 10.99.0.1:51820  <---- veth pair ---->  UDP 10.99.0.2:51820

Each side forwards TUN -> UDP socket and UDP socket -> TUN.  Real ``ping`` and a
TCP transfer then cross the tunnel.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import sys
import time
from typing import Final

import attrs
import trio

from ._open import open_tun
from ._stream import TunStream
from .platform.linux import netns as _netns
from .testing import NetNamespace, link_namespaces

TUNNEL_PORT: Final = 51820
TCP_PORT: Final = 5201
TRANSFER_BYTES: Final = 8 * 1024 * 1024
TUN_MTU: Final = 1400  # leaves room for the outer IPv4 + UDP headers on a 1500 veth
DEADLINE: Final = 60.0


@attrs.define
class _Side:
    ns: NetNamespace
    underlay: str
    peer_underlay: str
    inner4: str
    inner6: str


async def _pump_tun_to_udp(tun: TunStream, sock: trio.socket.SocketType, peer: str) -> None:
    while True:
        for packet in await tun.receive_batch():
            # A tunnel drops what it can't carry, as a network would.
            with contextlib.suppress(OSError):
                await sock.sendto(packet, (peer, TUNNEL_PORT))


async def _pump_udp_to_tun(sock: trio.socket.SocketType, tun: TunStream) -> None:
    while True:
        data = await sock.recv(65535)
        await tun.send(data)


def _ping(ns: NetNamespace, target: str, count: int = 5) -> tuple[int, float | None, str]:
    argv = ["ping", "-c", str(count), "-i", "0.2", "-W", "5", target]
    result = ns.run(argv, timeout=DEADLINE, check=False)
    received = re.search(r"(\d+) (?:packets )?received", result.stdout)
    rtt = re.search(r"= [\d.]+/([\d.]+)/", result.stdout)
    return (
        int(received.group(1)) if received else 0,
        float(rtt.group(1)) if rtt else None,
        result.stdout + result.stderr,
    )


async def _tcp_transfer(
    left: NetNamespace, right: NetNamespace, server_ip: str
) -> tuple[int, str, str, float]:
    listener = trio.socket.from_stdlib_socket(right.socket(socket.AF_INET, socket.SOCK_STREAM))
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    await listener.bind((server_ip, TCP_PORT))
    listener.listen(1)
    client = trio.socket.from_stdlib_socket(left.socket(socket.AF_INET, socket.SOCK_STREAM))
    payload = os.urandom(TRANSFER_BYTES)
    received = hashlib.sha256()
    count = 0

    async def serve() -> None:
        nonlocal count
        conn, _ = await listener.accept()
        with conn:
            while True:
                chunk = await conn.recv(1 << 16)
                if not chunk:
                    return
                received.update(chunk)
                count += len(chunk)

    start = time.perf_counter()
    with listener, client:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            await client.connect((server_ip, TCP_PORT))
            view = memoryview(payload)
            while view:
                sent = await client.send(view[: 1 << 16])
                view = view[sent:]
            client.shutdown(socket.SHUT_WR)
    elapsed = time.perf_counter() - start
    return count, hashlib.sha256(payload).hexdigest(), received.hexdigest(), elapsed


async def _run(out: list[str]) -> bool:
    left = NetNamespace.create()
    right = NetNamespace.create()
    try:
        link_namespaces(
            left, right, names=("under0", "under1"), addresses=(["10.99.0.1/24"], ["10.99.0.2/24"])
        )
        sides = (
            _Side(left, "10.99.0.1", "10.99.0.2", "10.8.0.1/24", "fd00:8::1/64"),
            _Side(right, "10.99.0.2", "10.99.0.1", "10.8.0.2/24", "fd00:8::2/64"),
        )
        async with (
            open_tun(
                "demo%d",
                addresses=[sides[0].inner4, sides[0].inner6],
                mtu=TUN_MTU,
                netns=left.fileno(),
            ) as tun_left,
            open_tun(
                "demo%d",
                addresses=[sides[1].inner4, sides[1].inner6],
                mtu=TUN_MTU,
                netns=right.fileno(),
            ) as tun_right,
            trio.open_nursery() as nursery,
        ):
            out.append(
                f"tunnel up: {tun_left.name} (10.8.0.1) <-> {tun_right.name} (10.8.0.2) "
                f"over UDP 10.99.0.1 <-> 10.99.0.2, offload: {tun_left.offload}"
            )
            for side, tun in zip(sides, (tun_left, tun_right), strict=True):
                sock = trio.socket.from_stdlib_socket(side.ns.socket())
                await sock.bind((side.underlay, TUNNEL_PORT))
                nursery.start_soon(_pump_tun_to_udp, tun, sock, side.peer_underlay)
                nursery.start_soon(_pump_udp_to_tun, sock, tun)

            ok = True
            if shutil.which("ping") is None:
                out.append("ping: not installed (apt-get install iputils-ping); skipped")
            else:
                for target in ("10.8.0.2", "fd00:8::2"):
                    got, rtt, text = await trio.to_thread.run_sync(_ping, left, target)
                    rtt_text = f"{rtt:.3f} ms" if rtt is not None else "n/a"
                    out.append(f"ping {target}: {got}/5 replies, average RTT {rtt_text}")
                    if got == 0:
                        ok = False
                        out.append(text)
            with trio.fail_after(DEADLINE):
                count, sent_hash, got_hash, elapsed = await _tcp_transfer(left, right, "10.8.0.2")
            match = "match" if sent_hash == got_hash else "MISMATCH"
            out.append(
                f"tcp: {count} bytes in {elapsed:.2f} s = {count * 8 / elapsed / 1e6:.1f} Mbit/s, "
                f"sha256 {match}"
            )
            ok = ok and count == TRANSFER_BYTES and sent_hash == got_hash
            for label, tun in (("left", tun_left), ("right", tun_right)):
                s = tun.statistics()
                out.append(
                    f"{label} tun: rx {s.rx_packets} pkts/{s.rx_bytes} B in {s.reads} reads, "
                    f"tx {s.tx_packets} pkts/{s.tx_bytes} B, malformed {s.rx_malformed}"
                )
            nursery.cancel_scope.cancel()
        return ok
    finally:
        right.close()
        left.close()
        out.append("namespaces, veth pair and TUN devices removed")


def _root_on_linux() -> bool:
    return sys.platform == "linux" and os.geteuid() == 0


def main() -> int:
    """Entry point of ``python -m trio_tun demo``; returns the exit status."""
    if not _root_on_linux():
        print(
            "the demo creates network namespaces and TUN devices: run it as root on Linux",
            file=sys.stderr,
        )
        return 2
    # Even the first instant of a device's life stays off the host's own
    # namespace: this process works from a private one.
    _netns.unshare_net()
    out: list[str] = []
    try:
        ok = trio.run(_run, out)
    finally:
        print("\n".join(out))
    print("demo: OK" if ok else "demo: FAILED")
    return 0 if ok else 1
