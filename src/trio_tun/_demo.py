"""``python -m trio_tun demo``: a toy VPN between two private network namespaces.

Topology (everything lives in namespaces this process creates and removes)::

    ns "left"                                   ns "right"
    tun 10.8.0.1/24, fd00:8::1/64               tun 10.8.0.2/24, fd00:8::2/64
       |  TunnelPump (or a per-datagram loop)      |
    UDP 10.99.0.1:51820  <---- veth pair ---->  UDP 10.99.0.2:51820

The tunnel is built twice, one after the other, over the same veth pair:

* **batched**: TUN offload on (64 KiB super-packets per read), ``open_udp``
  with UDP GSO/GRO, and a :class:`~trio_tun.engine.TunnelPump` moving whole
  batches with ``receive_batch``/``send_batch``;
* **per-datagram**: TUN offload off, ``open_udp(gso=False, gro=False)``, and a
  loop of one ``receive()`` and one ``send()`` per packet.

Real ``ping`` (IPv4 and IPv6) and a TCP transfer cross the batched tunnel; the
same transfer then crosses the per-datagram one, and both throughputs are
printed side by side.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator
from typing import Final

import attrs
import trio

from ._open import open_tun
from ._stream import TunStream
from .engine import TunnelPump
from .platform.linux import netns as _netns
from .testing import NetNamespace, link_namespaces
from .udp import UdpStream, open_udp

TUNNEL_PORT: Final = 51820
TCP_PORT: Final = 5201
#: The same transfer crosses both tunnels: long enough to leave TCP's slow
#: start behind on the fast one, short enough for the slow one.
TRANSFER_BYTES: Final = 128 * 1024 * 1024
TUN_MTU: Final = 1400  # leaves room for the outer IPv4 + UDP headers on a 1500 veth
#: Bound on one transfer (every socket call times out well before it).
TRANSFER_DEADLINE: Final = 20.0
PING_DEADLINE: Final = 15.0
CHUNK: Final = 1 << 20
SOCKET_BUFFER: Final = 7 << 20

WHY: Final = (
    "why: Python pays a fixed cost per call; the batched tunnel pays it once per batch "
    "(one TUN read brings a 64 KiB super-packet, one UDP sendmsg carries up to 64 "
    "datagrams with GSO and one recvmsg brings as many back with GRO), the "
    "per-datagram tunnel once for every 1400-byte packet."
)
#: Why these are not the benchmark's numbers (printed after them).
MEANING: Final = (
    "what the numbers mean: a whole VPN runs on this machine at once. The TCP sender "
    "and receiver are Python threads of this process, both tunnel ends share one "
    "Python thread, and every packet is wrapped in UDP and unwrapped again, so expect "
    "about 0.1-0.3 Gbit/s one packet per call and 1-4 Gbit/s batched. The ~15 Gbit/s "
    "of the README's benchmark table is another measurement: one forwarder passing "
    "64 KiB super-packets between two TUN devices, no UDP, with iperf3 (in C) making "
    "the traffic. Compare the two tunnels here with each other, not with that table."
)


@attrs.define
class _Side:
    ns: NetNamespace
    #: The TUN device's name: different on each side, so the output tells them apart.
    tun_name: str
    underlay: str
    peer_underlay: str
    inner4: str
    inner6: str


@attrs.define
class _Endpoint:
    tun: TunStream
    udp: UdpStream


@attrs.frozen
class _Transfer:
    expected: int
    count: int
    sent_hash: str
    got_hash: str
    elapsed: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return (
            self.error is None and self.count == self.expected and self.sent_hash == self.got_hash
        )

    @property
    def mbits(self) -> float:
        return self.count * 8 / self.elapsed / 1e6 if self.elapsed > 0 else 0.0

    def line(self) -> str:
        match = "match" if self.sent_hash == self.got_hash else "MISMATCH"
        text = (
            f"tcp: {self.count} bytes in {self.elapsed:.2f} s = {self.mbits:.1f} Mbit/s, "
            f"sha256 {match}"
        )
        return text if self.error is None else f"{text} ({self.error})"


# -- the per-datagram tunnel: one call per packet, for comparison -----------------


async def _one_by_one_out(tun: TunStream, udp: UdpStream) -> None:
    while True:
        await udp.send(await tun.receive())


async def _one_by_one_in(udp: UdpStream, tun: TunStream) -> None:
    while True:
        packet = await udp.receive()
        if packet:  # an empty datagram is no packet
            await tun.send(packet)


@contextlib.asynccontextmanager
async def _tunnel(sides: tuple[_Side, _Side], *, batched: bool) -> AsyncIterator[list[_Endpoint]]:
    """Both endpoints of the tunnel, forwarding until the block is left."""
    async with contextlib.AsyncExitStack() as stack:
        endpoints = []
        for side in sides:
            tun = await stack.enter_async_context(
                open_tun(
                    side.tun_name,
                    addresses=[side.inner4, side.inner6],
                    mtu=TUN_MTU,
                    netns=side.ns.fileno(),
                    offload="auto" if batched else False,
                )
            )
            udp = await stack.enter_async_context(
                open_udp(
                    side.underlay,
                    TUNNEL_PORT,
                    remote_host=side.peer_underlay,
                    remote_port=TUNNEL_PORT,
                    netns=side.ns.fileno(),
                    gso="auto" if batched else False,
                    gro="auto" if batched else False,
                    # Without room for a burst, the fast tunnel's receiver
                    # drops and TCP spends the transfer retransmitting.
                    buffer_size=SOCKET_BUFFER,
                )
            )
            endpoints.append(_Endpoint(tun, udp))
        nursery = await stack.enter_async_context(trio.open_nursery())
        # Runs first on the way out: the forwarders stop before anything closes.
        stack.callback(nursery.cancel_scope.cancel)
        for end in endpoints:
            if batched:
                nursery.start_soon(TunnelPump(end.tun.queues, [end.udp]).run)
            else:
                nursery.start_soon(_one_by_one_out, end.tun, end.udp)
                nursery.start_soon(_one_by_one_in, end.udp, end.tun)
        yield endpoints


# -- traffic ------------------------------------------------------------------------


def _ping(ns: NetNamespace, target: str, count: int = 5) -> tuple[int, float | None, str]:
    argv = ["ping", "-c", str(count), "-i", "0.2", "-W", "2", "-w", "10", target]
    result = ns.run(argv, timeout=PING_DEADLINE, check=False)
    received = re.search(r"(\d+) (?:packets )?received", result.stdout)
    rtt = re.search(r"= [\d.]+/([\d.]+)/", result.stdout)
    return (
        int(received.group(1)) if received else 0,
        float(rtt.group(1)) if rtt else None,
        result.stdout + result.stderr,
    )


def _tcp_transfer(
    left: NetNamespace,
    right: NetNamespace,
    server_ip: str,
    size: int = TRANSFER_BYTES,
    timeout: float = TRANSFER_DEADLINE,
) -> _Transfer:
    """*size* bytes of random data over TCP, left -> right, with blocking sockets.

    Run in a worker thread: the sender and the receiver spend their time in
    the kernel (and in hashlib, which releases the GIL), so the Trio thread
    that forwards the packets keeps the interpreter.  Every socket call times
    out and the loops end by the *timeout* deadline.
    """
    payload = os.urandom(size)
    received = hashlib.sha256()
    count = 0
    errors: list[str] = []
    deadline = time.monotonic() + timeout
    listener = right.socket(socket.AF_INET, socket.SOCK_STREAM)
    client = left.socket(socket.AF_INET, socket.SOCK_STREAM)

    def serve() -> None:
        nonlocal count
        buffer = bytearray(CHUNK)
        try:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(5)
                while time.monotonic() < deadline:
                    n = conn.recv_into(buffer)
                    if not n:
                        return
                    received.update(memoryview(buffer)[:n])
                    count += n
                errors.append("receiver: deadline")
        except OSError as exc:
            errors.append(f"receiver: {exc!r}")

    with listener, client:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((server_ip, TCP_PORT))
        listener.listen(1)
        listener.settimeout(5)
        client.settimeout(5)
        server = threading.Thread(target=serve, daemon=True)
        start = time.perf_counter()
        server.start()
        try:
            client.connect((server_ip, TCP_PORT))
            view = memoryview(payload)
            while view and time.monotonic() < deadline:
                view = view[client.send(view[:CHUNK]) :]
            client.shutdown(socket.SHUT_WR)
        except OSError as exc:
            errors.append(f"sender: {exc!r}")
        server.join(max(0.0, deadline - time.monotonic()) + 6)
        elapsed = time.perf_counter() - start
    error = "; ".join(errors) if errors else None
    if server.is_alive():
        error = "receiver still running at the deadline"
    return _Transfer(
        size, count, hashlib.sha256(payload).hexdigest(), received.hexdigest(), elapsed, error
    )


def _udp_line(label: str, udp: UdpStream) -> str:
    s = udp.statistics()
    per_send = s.tx_datagrams / s.writes if s.writes else 0.0
    per_read = s.rx_datagrams / s.reads if s.reads else 0.0
    return (
        f"  {label} udp: tx {s.tx_datagrams} datagrams in {s.writes} sends "
        f"({per_send:.1f} per call, {s.gso_writes} with GSO), rx {s.rx_datagrams} in "
        f"{s.reads} reads ({per_read:.1f} per call, {s.gro_reads} with GRO)"
    )


def _tun_line(label: str, tun: TunStream) -> str:
    s = tun.statistics()
    return (
        f"  {label} tun: rx {s.rx_packets} pkts/{s.rx_bytes} B in {s.reads} reads, "
        f"tx {s.tx_packets} pkts/{s.tx_bytes} B in {s.writes} writes, malformed {s.rx_malformed}"
    )


@attrs.frozen
class _Options:
    size: int = TRANSFER_BYTES
    timeout: float = TRANSFER_DEADLINE
    per_datagram: bool = True


async def _measure(
    sides: tuple[_Side, _Side], out: list[str], options: _Options, *, batched: bool, pings: bool
) -> tuple[_Transfer, bool]:
    """Build a tunnel and send traffic through it: (the transfer, whether pings came back)."""
    left, right = sides[0].ns, sides[1].ns
    pings_ok = True
    async with _tunnel(sides, batched=batched) as (a, b):
        if batched:
            out.append(
                f"batched tunnel up: {a.tun.name} (10.8.0.1) <-> {b.tun.name} (10.8.0.2) over "
                f"UDP 10.99.0.1 <-> 10.99.0.2; TUN offload {a.tun.offload}, UDP GSO "
                f"{a.udp.gso}, GRO {a.udp.gro}; TunnelPump, receive_batch/send_batch"
            )
        else:
            out.append(
                f"per-datagram tunnel up: {a.tun.name} <-> {b.tun.name}; TUN offload "
                f"{a.tun.offload}, UDP GSO {a.udp.gso}, GRO {a.udp.gro}; one receive()/send() "
                "per packet"
            )
        if pings:
            if shutil.which("ping") is None:
                out.append("ping: not installed (apt-get install iputils-ping); skipped")
            else:
                for target in ("10.8.0.2", "fd00:8::2"):
                    got, rtt, text = await trio.to_thread.run_sync(_ping, left, target)
                    rtt_text = f"{rtt:.3f} ms" if rtt is not None else "n/a"
                    out.append(f"ping {target}: {got}/5 replies, average RTT {rtt_text}")
                    if got == 0:
                        pings_ok = False
                        out.append(text)
        transfer = await trio.to_thread.run_sync(
            _tcp_transfer, left, right, "10.8.0.2", options.size, options.timeout
        )
        out.append(transfer.line())
        for label, end in (("left", a), ("right", b)):
            out.append(_tun_line(label, end.tun))
            out.append(_udp_line(label, end.udp))
    return transfer, pings_ok


async def _run(out: list[str], options: _Options) -> bool:
    left = NetNamespace.create()
    right = NetNamespace.create()
    try:
        link_namespaces(
            left, right, names=("under0", "under1"), addresses=(["10.99.0.1/24"], ["10.99.0.2/24"])
        )
        sides = (
            _Side(left, "left%d", "10.99.0.1", "10.99.0.2", "10.8.0.1/24", "fd00:8::1/64"),
            _Side(right, "right%d", "10.99.0.2", "10.99.0.1", "10.8.0.2/24", "fd00:8::2/64"),
        )
        batched, pings_ok = await _measure(sides, out, options, batched=True, pings=True)
        if not options.per_datagram:
            out.append(f"throughput: batched {batched.mbits:.1f} Mbit/s")
            out.append(MEANING)
            return pings_ok and batched.ok
        single, _ = await _measure(sides, out, options, batched=False, pings=False)
        ratio = batched.mbits / single.mbits if single.mbits > 0 else float("inf")
        out.append(
            f"throughput: batched {batched.mbits:.1f} Mbit/s, per-datagram {single.mbits:.1f} "
            f"Mbit/s: batching is {ratio:.1f}x faster"
        )
        out.append(WHY)
        out.append(MEANING)
        return pings_ok and batched.ok and single.ok
    finally:
        right.close()
        left.close()
        out.append("namespaces, veth pair and TUN devices removed")


def _root_on_linux() -> bool:
    return sys.platform == "linux" and os.geteuid() == 0


def main(
    *, size: int = TRANSFER_BYTES, timeout: float = TRANSFER_DEADLINE, per_datagram: bool = True
) -> int:
    """Entry point of ``python -m trio_tun demo``; returns the exit status.

    Args:
        size: Bytes of the TCP transfer through each tunnel.
        timeout: Seconds after which a transfer gives up.
        per_datagram: Also build the one-call-per-packet tunnel and compare.
    """
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
        ok = trio.run(_run, out, _Options(size, timeout, per_datagram))
    finally:
        print("\n".join(out))
    print("demo: OK" if ok else "demo: FAILED")
    return 0 if ok else 1
