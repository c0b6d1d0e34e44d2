"""trio-tun tunnel endpoints for bench/forward.py: TUN <-> UDP <-> TUN across two processes.

Topology (made by the harness, inside its private namespaces)::

    client ns                                                            server ns
    iperf3 -c -> tfa 10.10.1.1 (TUN, offload, MTU 1400)    tfb 10.10.2.1 (TUN ...) -> iperf3 -s
                  |  endpoint process A                      endpoint process B  |
                  +-- UDP 10.99.0.1:51820 == veth underlay == UDP 10.99.0.2:51820 +

Each end namespace holds its TUN device (the route to the other end's
network points into it) and one end of a veth pair, the underlay.  Endpoint
A (in the client namespace) and endpoint B (in the server namespace) are
separate processes, as two VPN hosts would be; each owns its TUN device and a
connected UDP socket to the other endpoint, and runs two loops:

  outbound  TUN -> UDP: every inner IP packet becomes one UDP datagram
            (bare IP-in-UDP, no tunnel header, no crypto);
  inbound   UDP -> TUN: every datagram is written back as the IP packet it carries.

Modes:
  batched      ``tun.receive_batch()`` (a TSO super-packet split into segments)
               -> ``udp.send_batch(segments)`` (a run of equal-sized segments
               goes out as one ``UDP_SEGMENT`` sendmsg), and
               ``udp.receive_batch()`` (``UDP_GRO``: many datagrams per
               recvmsg) -> ``tun.send_batch(packets)`` (coalesced back into
               super-packets by the TUN stream's GRO).
  perdatagram  What a naive VPN does: ``udp.send(await tun.receive())`` and
               ``tun.send(await udp.receive())``, one packet per call, with
               ``gso=False, gro=False`` on the UDP socket.
  engine       The library's own data path: ``trio_tun.engine.TunnelPump([tun],
               [udp])`` (no handlers), ``await pump.run()`` until cancelled; the
               same batched calls as ``batched``, run by the engine.
  floor        Not trio-tun: bench/tunnel_c.c (built by the harness) in
               each endpoint, "whole": the same system calls with nothing
               between them.  A TUN frame goes out whole as one UDP_SEGMENT
               send and the peer writes back what one UDP_GRO read returns,
               which is that frame again because the veth underlay keeps the
               GSO datagram whole.  Each TUN device's gso_max_size is capped at
               FLOOR_GSO_MAX_SIZE first, so that a frame fits in one UDP send.
               What the kernel alone costs: the reference for the others.
  c            Not trio-tun either: bench/tunnel_c.c "split", the batched
               mode's work compiled.  Super-packets are cut into valid IPv4
               packets (headers, checksums) sent as UDP_SEGMENT runs, and each
               UDP_GRO read is checked and merged back into super-packets.
               What a tunnel that hands the network real packets can keep of
               the floor with no interpreter in it.

This program is started once per measurement, by the harness, as the
"forwarder": it starts the two endpoint processes (itself again, with
``--endpoint a`` / ``--endpoint b``), prints ``READY`` when both are, and on
SIGTERM stops them and prints one JSON line with both endpoints' counters
(``a_to_b``/``b_to_a`` in the shape the harness reads, plus the UDP batching).
The harness sums the CPU time of the whole process tree.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _fwdcommon
import attrs
import pyroute2
import trio

import trio_tun
import trio_tun.offload
from trio_tun import PacketStream, UdpStream
from trio_tun.platform.linux import tun as linux

#: UDP port of both endpoints (each in its own namespace).
PORT = 51820
#: Socket buffers of the UDP sockets (what wireguard-go asks for); FORCE passes rmem_max as root.
SOCKET_BUFFER = 7 << 20
#: How long an endpoint may take to print READY.
ENDPOINT_READY_TIMEOUT = 12.0
#: How long a stopped endpoint may take to print its counters.
ENDPOINT_STOP_TIMEOUT = 5.0
#: Upper bound on the batches one pump loop moves (the time bound is --max-seconds).
MAX_ROUNDS = 10**9
#: Seconds the TunnelPump gets to finish the batches in hand when stopped.
GRACE = 1.0
#: Exit status when an endpoint died during the run.
ENDPOINT_FAILED = 3
#: The floor and c modes' endpoint program (forward.py compiles bench/tunnel_c.c there).
C_ENDPOINT = Path(__file__).resolve().parent / "_build" / "tunnel_c"
#: The floor mode's cap on TUN super-packets: a frame (virtio header included)
#: must fit in one IPv4 UDP send of at most 65,507 bytes.
FLOOR_GSO_MAX_SIZE = 65000


def _extra_args(parser: argparse.ArgumentParser) -> None:
    modes = ["batched", "perdatagram", "engine", "floor", "c"]
    parser.add_argument("--mode", choices=modes, required=True)
    parser.add_argument("--underlay-a", required=True, help="endpoint A's underlay address")
    parser.add_argument("--underlay-b", required=True, help="endpoint B's underlay address")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=600.0,
        help="stop on our own after this long, whatever happens (default 600)",
    )
    parser.add_argument(
        "--gso-max-size",
        type=int,
        default=None,
        help="cap each TUN device's gso_max_size first (the floor mode always caps its own)",
    )
    parser.add_argument(
        "--endpoint", choices=["a", "b"], default=None, help="run one endpoint (internal)"
    )


# -- one endpoint -------------------------------------------------------------------


def _attach(dev: str) -> int:
    """Open *dev* (a persistent TUN device made by the harness) in this thread's netns."""
    fd = linux.open_tun_file()
    try:
        linux.set_iff(fd, dev, linux.IFF_TUN | linux.IFF_NO_PI | linux.IFF_VNET_HDR)
        # from_fd assumes TCP_OFFLOAD whenever there is a virtio header.
        linux.set_offload(fd, linux.TCP_OFFLOAD)
    except BaseException:
        os.close(fd)
        raise
    return fd


async def _outbound_batched(tun: PacketStream, udp: UdpStream) -> None:
    receive_batch = tun.receive_batch
    send_batch = udp.send_batch
    for _ in range(MAX_ROUNDS):
        await send_batch(await receive_batch())


async def _inbound_batched(udp: UdpStream, tun: PacketStream) -> None:
    receive_batch = udp.receive_batch
    send_batch = tun.send_batch
    for _ in range(MAX_ROUNDS):
        await send_batch(await receive_batch())


async def _outbound_perdatagram(tun: PacketStream, udp: UdpStream) -> None:
    receive = tun.receive
    send = udp.send
    for _ in range(MAX_ROUNDS):
        await send(await receive())


async def _inbound_perdatagram(udp: UdpStream, tun: PacketStream) -> None:
    receive = udp.receive
    send = tun.send
    for _ in range(MAX_ROUNDS):
        await send(await receive())


async def _serve(args: argparse.Namespace, tun: PacketStream, info: dict[str, Any]) -> None:
    a = args.endpoint == "a"
    ns = args.ns_a if a else args.ns_b
    local, remote = (args.underlay_a, args.underlay_b) if a else (args.underlay_b, args.underlay_a)
    batched = args.mode != "perdatagram"
    pump: Any = None
    if args.mode == "engine":
        # Imported here: the other modes must not depend on it.
        from trio_tun.engine import TunnelPump
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio_tun.open_udp(
                local,
                PORT,
                remote_host=remote,
                remote_port=PORT,
                netns=ns,
                gso=batched,
                gro=batched,
                buffer_size=SOCKET_BUFFER,
            ) as udp:
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.cancel_scope.deadline = trio.current_time() + args.max_seconds
                        if args.mode == "engine":
                            pump = TunnelPump([tun], [udp], grace=GRACE)
                            nursery.start_soon(pump.run)
                        elif batched:
                            nursery.start_soon(_outbound_batched, tun, udp)
                            nursery.start_soon(_inbound_batched, udp, tun)
                        else:
                            nursery.start_soon(_outbound_perdatagram, tun, udp)
                            nursery.start_soon(_inbound_perdatagram, udp, tun)
                        info["udp_gso"], info["udp_gro"] = udp.gso, udp.gro
                        _fwdcommon.announce_ready(info)
                        async for _ in signals:
                            nursery.cancel_scope.cancel()
                            break
                finally:
                    info["udp"] = attrs.asdict(udp.statistics())
                    if pump is not None:
                        info["pump"] = attrs.asdict(pump.statistics())
    finally:
        # Close while Trio still runs (the stream has waited on its fd).
        with trio.CancelScope(shield=True):
            await tun.aclose()


def _cap_gso(ns: str, dev: str, size: int) -> None:
    """Cap *dev*'s super-packets at *size* bytes (its gso_max_size), inside *ns*."""

    def cap() -> None:
        with pyroute2.IPRoute() as ipr:
            (index,) = ipr.link_lookup(ifname=dev)
            ipr.link("set", index=index, gso_max_size=size)

    _fwdcommon.open_in(ns, cap)


def _run_c_endpoint(args: argparse.Namespace, ns: str, dev: str) -> None:
    """Become bench/tunnel_c.c (prints READY, counters)."""
    a = args.endpoint == "a"
    local, remote = (args.underlay_a, args.underlay_b) if a else (args.underlay_b, args.underlay_a)
    how = "whole" if args.mode == "floor" else "split"
    argv = [str(C_ENDPOINT), how, ns, dev, local, remote, str(PORT), str(int(args.max_seconds))]
    sys.stdout.flush()
    os.execv(argv[0], argv)


def _run_endpoint(args: argparse.Namespace) -> None:
    ns, dev = (args.ns_a, args.dev_a) if args.endpoint == "a" else (args.ns_b, args.dev_b)
    cap = FLOOR_GSO_MAX_SIZE if args.mode == "floor" else args.gso_max_size
    if cap is not None:
        _cap_gso(ns, dev, cap)
    if args.mode in ("floor", "c"):
        _run_c_endpoint(args, ns, dev)
    fd = _fwdcommon.open_in(ns, lambda: _attach(dev))
    tun = trio_tun.from_fd(fd, vnet_hdr=True)
    info: dict[str, Any] = {
        "endpoint": args.endpoint,
        "mode": args.mode,
        "implementation": trio_tun.offload.implementation,
        "offload": str(tun.offload),
    }
    try:
        trio.run(_serve, args, tun, info)
    finally:
        info["tun"] = attrs.asdict(tun.statistics())
        _fwdcommon.report(info)


# -- the launcher -------------------------------------------------------------------


def _final_json(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    """SIGTERM *proc* (an endpoint we started) and return its last JSON line ({} if none)."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=ENDPOINT_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
        return {}
    for line in reversed(out.decode(errors="replace").splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                return dict(json.loads(line))
    return {}


def _direction(src: dict[str, Any], dst: dict[str, Any]) -> dict[str, Any]:
    """One direction (src endpoint's TUN -> UDP -> dst endpoint's TUN), as the harness reads it."""
    tun_in, udp_out = src.get("tun", {}), src.get("udp", {})
    udp_in, tun_out = dst.get("udp", {}), dst.get("tun", {})
    return {
        "reads": tun_in.get("reads", 0),
        "read_bytes": tun_in.get("read_bytes", 0),
        "rx_packets": tun_in.get("rx_packets", 0),
        "udp_tx_datagrams": udp_out.get("tx_datagrams", 0),
        "udp_tx_messages": udp_out.get("tx_messages", 0),
        "udp_writes": udp_out.get("writes", 0),
        "udp_tx_dropped": udp_out.get("tx_dropped", 0),
        "udp_rx_datagrams": udp_in.get("rx_datagrams", 0),
        "udp_rx_messages": udp_in.get("rx_messages", 0),
        "udp_reads": udp_in.get("reads", 0),
        "writes": tun_out.get("writes", 0),
        "write_bytes": tun_out.get("write_bytes", 0),
        "tx_packets": tun_out.get("tx_packets", 0),
        "tx_coalesced": tun_out.get("tx_coalesced", 0),
        "write_errors": tun_out.get("tx_dropped", 0),
    }


def _run_launcher(args: argparse.Namespace) -> int:
    stop: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        stop.append(signum)

    # Installed before anything starts, so a SIGTERM can't hit the default handler.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    info: dict[str, Any] = {"forwarder": "trio-tun tunnel", "mode": args.mode}
    status = 0
    try:
        for side in ("a", "b"):
            # Same process group as we: the harness kills the group if we die.
            procs[side] = subprocess.Popen(
                [sys.executable, *sys.argv, "--endpoint", side], stdout=subprocess.PIPE
            )
        deadline = time.monotonic() + ENDPOINT_READY_TIMEOUT
        for side, proc in procs.items():
            assert proc.stdout is not None
            line = _fwdcommon.read_line(proc.stdout, deadline)
            if line is None or not line.startswith(_fwdcommon.READY_LINE):
                _fwdcommon.warn(f"endpoint {side} did not get ready (exit code {proc.poll()})")
                return ENDPOINT_FAILED
            ready = json.loads(line[len(_fwdcommon.READY_LINE) :].strip() or "{}")
            info[f"endpoint_{side}"] = ready
            info.setdefault("implementation", ready.get("implementation"))
            info.setdefault("offload", ready.get("offload"))
        info["endpoint_pids"] = [proc.pid for proc in procs.values()]
        _fwdcommon.announce_ready(info)
        polls = int(args.max_seconds / 0.1) + 1
        for _ in range(polls):
            if stop:
                break
            dead = [side for side, proc in procs.items() if proc.poll() is not None]
            if dead:
                _fwdcommon.warn(f"endpoint(s) {dead} exited during the run")
                status = ENDPOINT_FAILED
                break
            time.sleep(0.1)
    finally:
        finals = {side: _final_json(proc) for side, proc in procs.items()}
        if finals.get("a") and finals.get("b"):
            info["a_to_b"] = _direction(finals["a"], finals["b"])
            info["b_to_a"] = _direction(finals["b"], finals["a"])
        info["endpoints"] = finals
        _fwdcommon.report(info)
    return status


def main() -> None:
    args = _fwdcommon.parse_args(__doc__ or "", _extra_args)
    if args.endpoint is None:
        sys.exit(_run_launcher(args))
    _run_endpoint(args)


if __name__ == "__main__":
    main()
