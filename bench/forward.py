"""Forwarding benchmark: trio-tun against a C forwarder and python-pytun.

Topology (built fresh for every measurement, entirely inside namespaces this
script creates and removes):

    client ns                        forwarder process                 server ns
    iperf3 -c --> tfa 10.10.1.1 ==fd==> [ tfa <-> tfb ] <==fd== tfb 10.10.2.1 --> iperf3 -s

The harness first moves itself into a private network namespace, so nothing it
makes ever lands in the machine's own namespace.  Both devices are created as
persistent TUN devices by the harness; each forwarder (its own process)
attaches to them by name from inside their namespaces, with the same flags.
For the multi-queue modes the devices are created with IFF_MULTI_QUEUE and the
forwarder attaches N queue fds to each (the engine modes spread them over an
OffloadEngine per device, ``workers-2`` hands queue pairs to worker processes,
whose CPU time and memory are added to the forwarder's).

The tunnel modes (issue 11) replace the single forwarder by a VPN-shaped data
path between the same two end namespaces, and measure it with the same iperf3
run, in the same table::

    client ns                                                        server ns
    iperf3 -c -> tfa (TUN) <-fd-> endpoint A    endpoint B <-fd-> tfb (TUN) -> iperf3 -s
                                  UDP 10.99.0.1 == veth == UDP 10.99.0.2
                                  (ula)          underlay      (ulb)

``tunnel-batched``, ``tunnel-perdatagram`` and ``tunnel-engine`` run two
trio-tun endpoint processes (bench/fwd_tunnel.py, which says what each mode's
loops do), each owning one TUN device (offload on, MTU 1400) and a UDP socket
connected to the other over a veth pair that joins the two end namespaces
directly (the underlay, 10.99.0.0/24, also inside the harness's namespaces).
``vxlan`` is the kernel's own UDP encapsulation over the same underlay, a VXLAN
device in each end namespace, no Python in the path: the reference for what
the tunnel could reach.  ``tunnel-floor`` is the kernel's share of our own
tunnel: a C program (bench/tunnel_c.c) in each endpoint makes the same
system calls per super-packet as ``tunnel-batched`` with nothing between them.
``tunnel-c`` is the same program doing the batched tunnel's work (GSO split,
checksums, GRO merge) in C: between the floor and it lies what handing the
network real packets costs, between it and ``tunnel-batched`` what Python costs.

The WireGuard modes (issue 12) run two WireGuard peers over the same underlay
(bench/fwd_wireguard.py): each peer creates its own interface in its end
namespace (MTU 1420, addressed like tfa/tfb, routed to the other end's
network) and speaks WireGuard over UDP 10.99.0.1:51820 <-> 10.99.0.2:51820.
``wg-go`` is wireguard-go on both ends, ``wg-trio`` examples/wireguard.py (our
trio-tun peer) on both, ``wg-mixed`` ours in the client namespace (it encrypts
iperf3's data) and wireguard-go in the server namespace (it decrypts).  CPU is
summed over the launcher and both peers.

Run as root:  python bench/forward.py [--duration 10] [--streams 1 4] [--modes ...]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.util
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NoReturn

import _fwdcommon
import chart

from trio_tun._config import NETNS_RUN_DIR
from trio_tun.platform.linux import netns as _netns
from trio_tun.platform.linux import tun as linux
from trio_tun.testing import NetNamespace, link_namespaces

BENCH_DIR = Path(__file__).resolve().parent
BUILD_DIR = BENCH_DIR / "_build"
C_SOURCE = BENCH_DIR / "fwd.c"
C_BINARY = BUILD_DIR / "fwd"
# tunnel-floor's and tunnel-c's endpoint program; fwd_tunnel.py runs it from there.
TUNNEL_C_SOURCE = BENCH_DIR / "tunnel_c.c"
TUNNEL_C_BINARY = BUILD_DIR / "tunnel_c"
RESULTS = BENCH_DIR / "results.md"

NS_PREFIX = "trio-tun-bench"
MTU = 1500
CLIENT_DEV, CLIENT_ADDR, CLIENT_NET = "tfa", "10.10.1.1", "10.10.1.0/24"
SERVER_DEV, SERVER_ADDR, SERVER_NET = "tfb", "10.10.2.1", "10.10.2.0/24"
PREFIX_LEN = 24
# The tunnel modes: TUN MTU (a VPN leaves room for its headers on a 1500-byte
# underlay: 28 bytes of IPv4+UDP here, 50 for VXLAN) and the underlay veth pair
# between the two end namespaces.
TUNNEL_MTU = 1400
UNDERLAY_DEVS = ("ula", "ulb")
UNDERLAY_ADDRS = ("10.99.0.1", "10.99.0.2")
UNDERLAY_PREFIX_LEN = 24
VXLAN_DEVS = ("vxa", "vxb")
VXLAN_ID = 11
VXLAN_PORT = 4789

READY_TIMEOUT = 15.0
LISTEN_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
STDERR_TAIL_LINES = 15

# Target checks: (mode, reference mode, minimum ratio, stream counts it applies
# to; empty: every count measured).
TARGETS: tuple[tuple[str, str, float, tuple[int, ...]], ...] = (
    ("trio-raw", "c-offload", 0.9, ()),
    ("trio-speedups", "c-offload", 0.6, ()),
    ("trio-raw", "pytun", 3.0, ()),
    ("trio-speedups", "pytun", 3.0, ()),
    ("trio-pure", "pytun", 3.0, ()),
    ("c-offload", "pytun", 3.0, ()),
    # Issue 11, the tunnel data path: batching must pay, and cost little
    # against forwarding the same TUN traffic raw within one process.
    ("tunnel-batched", "tunnel-perdatagram", 10.0, ()),
    ("tunnel-batched", "trio-raw", 0.8, ()),
    # ... and the engine, run to completion, must cost little over the plain
    # batched loops it replaces (TUN <-> TUN and TUN <-> UDP).
    ("engine-q1", "trio-speedups", 0.9, ()),
    ("tunnel-engine", "tunnel-batched", 0.9, ()),
    # Issue 15: without offload, batched calls and a second core must beat
    # pytun's two threads and come near the C forwarder ...
    ("trio-nooffload", "pytun", 1.5, (1,)),
    ("trio-nooffload", "c-plain", 0.8, (1,)),
    ("threads-nooffload", "pytun", 1.5, (1,)),
    ("threads-nooffload", "c-plain", 0.8, (1,)),
    ("threads-raw-nooffload", "pytun", 1.5, (1,)),
    ("threads-raw-nooffload", "c-plain", 0.8, (1,)),
    # ... and with offload, the documented full-speed way (worker threads) keeps
    # near the C passthrough: closer with one flow than with four.
    ("threads-raw", "c-offload", 0.95, (1,)),
    ("threads-raw", "c-offload", 0.9, (4,)),
    ("threads-offload", "c-offload", 0.9, (1,)),
    ("threads-offload", "c-offload", 0.8, (4,)),
    # Issue 12: our WireGuard peer at least as fast as wireguard-go.
    ("wg-trio", "wg-go", 1.0, ()),
)
# A target (mode, reference) -> the same work compiled, whose ratio to the same
# reference is printed next to the verdict: how far C itself gets.
TARGET_COMPILED: dict[tuple[str, str], str] = {
    ("tunnel-batched", "trio-raw"): "tunnel-c",
    ("trio-speedups", "c-offload"): "c-transform",
    ("threads-offload", "c-offload"): "c-transform",
}
# Reported against the tunnel modes, without a target: the kernel's own UDP tunnel,
# and the kernel's share of ours (the same system calls, nothing between them).
TUNNEL_REFERENCE = "vxlan"
TUNNEL_FLOOR = "tunnel-floor"
# The batched tunnel's work in C: what the tunnel keeps without an interpreter.
TUNNEL_C = "tunnel-c"
TUNNEL_MODES: tuple[str, ...] = (
    "tunnel-batched",
    "tunnel-perdatagram",
    "tunnel-engine",
    TUNNEL_C,
    TUNNEL_FLOOR,
)
# The WireGuard modes: interface MTU (1500 minus WireGuard's 60 bytes over IPv4,
# wireguard-go's default) and their reference, wireguard-go on both ends.
WG_MTU = 1420
WG_MODES: tuple[str, ...] = ("wg-go", "wg-trio", "wg-mixed")
WG_REFERENCE = "wg-go"
# wireguard-go's control sockets: one directory, shared by every namespace.
WG_SOCKET_DIR = Path("/var/run/wireguard")


# -- modes ----------------------------------------------------------------------


@dataclass(frozen=True)
class Mode:
    name: str
    description: str
    # Which forwarder program: "trio", "engine", "c", "pytun", "tunnel" (two
    # endpoint processes over a UDP underlay), "wireguard" (two WireGuard peers
    # over the underlay) or "kernel" (none: VXLAN devices).
    kind: str
    offload: bool  # IFF_VNET_HDR + TSO mask on both devices
    trio_mode: str = ""  # "raw", "batch" or "packet" for the trio forwarder
    implementation: str = ""  # offload implementation the trio forwarder must report
    env: dict[str, str] = field(default_factory=dict)
    queues: int = 1  # queues per device; > 1 means IFF_MULTI_QUEUE
    workers: bool = False  # engine kind: one WorkerPool process per queue pair
    tunnel_mode: str = ""  # tunnel kind: fwd_tunnel.py --mode (batched, perdatagram, engine, ...)
    mtu: int = MTU  # of the devices iperf3's traffic is routed into
    wg_peers: tuple[str, str] = ("", "")  # wireguard kind: "trio" or "go", client and server end
    c_split: bool = False  # c kind: cut every frame into packets and merge them back


MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode("trio-raw", "trio-tun receive_raw/send_raw passthrough", "trio", True, "raw"),
        Mode(
            "trio-speedups",
            "trio-tun receive_batch/send_batch, split+coalesce in C",
            "trio",
            True,
            "batch",
            implementation="speedups",
        ),
        Mode(
            "trio-pure",
            "trio-tun receive_batch/send_batch, split+coalesce in pure Python",
            "trio",
            True,
            "batch",
            implementation="python",
            env={"TRIO_TUN_PURE_PYTHON": "1"},
        ),
        Mode(
            "trio-nooffload",
            "trio-tun receive_batch/send_batch, no offload",
            "trio",
            False,
            "batch",
        ),
        Mode(
            "threads-nooffload",
            "trio-tun ThreadedForwarder: one thread per direction, no offload",
            "trio",
            False,
            "threads",
        ),
        Mode(
            "threads-offload",
            "trio-tun ThreadedForwarder: one thread for both directions, split+coalesce in C",
            "trio",
            True,
            "threads",
            implementation="speedups",
        ),
        Mode(
            "threads-offload-q2",
            "trio-tun ThreadedForwarder over 2-queue devices: one thread per queue pair "
            "(both directions), split+coalesce in C",
            "trio",
            True,
            "threads",
            implementation="speedups",
            queues=2,
        ),
        Mode(
            "threads-raw",
            "trio-tun ThreadedForwarder(raw=True): one thread for both directions, virtio "
            "frames passed through by the compiled pair pump (no GIL held between frames)",
            "trio",
            True,
            "threads-raw",
        ),
        Mode(
            "threads-raw-q2",
            "trio-tun ThreadedForwarder(raw=True) over 2-queue devices: one thread per queue "
            "pair (both directions), frames passed through by the compiled pair pump",
            "trio",
            True,
            "threads-raw",
            queues=2,
        ),
        Mode(
            "threads-raw-nooffload",
            "trio-tun ThreadedForwarder(raw=True) without offload: one thread per direction, "
            "packets passed through by the compiled pump in runs of up to 64 (no GIL held)",
            "trio",
            False,
            "threads-raw",
        ),
        Mode(
            "trio-perpacket",
            "trio-tun receive/send one packet per call, no offload",
            "trio",
            False,
            "packet",
        ),
        *(
            Mode(
                f"engine-q{n}",
                f"OffloadEngine over {n} queue(s) per device, one process (split+coalesce in C)",
                "engine",
                True,
                implementation="speedups",
                queues=n,
            )
            for n in (1, 2, 4)
        ),
        Mode(
            "workers-2",
            "WorkerPool: 2 worker processes running forward_pair, one queue pair each "
            "(2-queue devices); CPU and RSS summed over parent and workers",
            "engine",
            True,
            implementation="speedups",
            queues=2,
            workers=True,
        ),
        Mode("c-offload", "C poll/read/write, virtio frames passed through", "c", True),
        Mode("c-plain", "C poll/read/write, no offload", "c", False),
        Mode(
            "c-transform",
            "C poll/read/write with offload, every super-packet cut into packets (headers, "
            "checksums) and merged back (checksums checked, written with writev; "
            "bench/bench_gso.h, no copies): trio-speedups' work compiled",
            "c",
            True,
            c_split=True,
        ),
        Mode("pytun", "python-pytun, one blocking thread per direction", "pytun", False),
        Mode(
            "tunnel-batched",
            "two trio-tun endpoint processes, TUN (offload, MTU 1400) <-> UDP over a veth "
            "underlay: TUN receive_batch -> UDP send_batch (UDP_SEGMENT), UDP receive_batch "
            "(UDP_GRO) -> TUN send_batch (GRO); CPU and RSS summed over both endpoints",
            "tunnel",
            True,
            implementation="speedups",
            tunnel_mode="batched",
            mtu=TUNNEL_MTU,
        ),
        Mode(
            "tunnel-perdatagram",
            "the same tunnel, naively: one TUN receive -> one UDP send per packet and one UDP "
            "receive -> one TUN send per datagram (gso=False, gro=False)",
            "tunnel",
            True,
            implementation="speedups",
            tunnel_mode="perdatagram",
            mtu=TUNNEL_MTU,
        ),
        Mode(
            "tunnel-engine",
            "the same tunnel, run by trio_tun.engine.TunnelPump([tun], [udp]) (batched calls, "
            "no handlers) in each endpoint",
            "tunnel",
            True,
            implementation="speedups",
            tunnel_mode="engine",
            mtu=TUNNEL_MTU,
        ),
        Mode(
            "tunnel-floor",
            "the tunnel's kernel share: a C endpoint (bench/tunnel_c.c whole) sends each TUN "
            "frame whole as one UDP_SEGMENT run and writes back what one UDP_GRO read returns "
            "(the same system calls as tunnel-batched, no GSO/GRO work in user space; TUN "
            "gso_max_size capped at 65,000 so a frame fits one UDP send)",
            "tunnel",
            True,
            tunnel_mode="floor",
            mtu=TUNNEL_MTU,
        ),
        Mode(
            TUNNEL_C,
            "the batched tunnel compiled: a C endpoint (bench/tunnel_c.c split) cuts each "
            "TCP/IPv4 super-packet into valid packets (headers, checksums) sent as "
            "UDP_SEGMENT runs, checks each packet of a UDP_GRO read and merges in-order "
            "segments back into super-packets (writev); no interpreter, no TUN gso cap",
            "tunnel",
            True,
            tunnel_mode="c",
            mtu=TUNNEL_MTU,
        ),
        Mode(
            "wg-go",
            "WireGuard: wireguard-go <-> wireguard-go (MTU 1420) over the veth underlay; "
            "CPU and RSS summed over both peers",
            "wireguard",
            False,
            mtu=WG_MTU,
            wg_peers=("go", "go"),
        ),
        Mode(
            "wg-trio",
            "WireGuard: examples/wireguard.py (our trio-tun peer) on both ends",
            "wireguard",
            False,
            mtu=WG_MTU,
            wg_peers=("trio", "trio"),
        ),
        Mode(
            "wg-mixed",
            "WireGuard: our peer in the client namespace (encrypts the iperf3 data) <-> "
            "wireguard-go in the server namespace (decrypts it)",
            "wireguard",
            False,
            mtu=WG_MTU,
            wg_peers=("trio", "go"),
        ),
        Mode(
            "vxlan",
            "kernel VXLAN devices (MTU 1400) over the same veth underlay, no Python in the "
            "path: the reference (no forwarder process, so no CPU/RSS)",
            "kernel",
            False,
            mtu=TUNNEL_MTU,
        ),
    )
}


# -- results ----------------------------------------------------------------------


@dataclass
class Measurement:
    gbps: float
    cpu_percent: float
    rss_mib: float
    bytes_per_read: float | None  # client -> server direction (the data direction)
    forwarder: dict[str, Any]
    repeat: int = 0  # which round of --repeat measured it (0: not known)


@dataclass
class Failure:
    reason: str
    stderr_tail: str = ""
    skipped: bool = False  # never attempted (missing tool), as opposed to failed


class BenchError(Exception):
    """A measurement could not be completed; carries what the user needs to see."""

    def __init__(self, reason: str, stderr_tail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.stderr_tail = stderr_tail


# -- namespaces and devices -------------------------------------------------------------


@dataclass
class Topology:
    client: NetNamespace
    server: NetNamespace

    @property
    def pairs(self) -> tuple[tuple[NetNamespace, str, str, str], ...]:
        """(namespace, device, own address, peer network) for both ends."""
        return (
            (self.client, CLIENT_DEV, CLIENT_ADDR, SERVER_NET),
            (self.server, SERVER_DEV, SERVER_ADDR, CLIENT_NET),
        )


def _remove_stale_namespaces() -> None:
    """Unpublish namespaces left behind by an earlier run that was SIGKILLed."""
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(NETNS_RUN_DIR):
            if not entry.startswith(NS_PREFIX + "-"):
                continue
            pid = entry.removeprefix(NS_PREFIX + "-").split("-")[0]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                NetNamespace(-1, entry).close()


@contextlib.contextmanager
def topology() -> Iterator[Topology]:
    prefix = f"{NS_PREFIX}-{os.getpid()}"
    client = NetNamespace.create(f"{prefix}-client")
    try:
        server = NetNamespace.create(f"{prefix}-server")
        try:
            yield Topology(client, server)
        finally:
            server.close()
    finally:
        client.close()


def _iproute(ns: NetNamespace) -> Any:
    from pyroute2 import IPRoute

    # The netlink socket belongs to the namespace it was opened in.
    with ns.entered():
        return IPRoute()


def _create_device(ns: NetNamespace, name: str, offload: bool, queues: int) -> None:
    """A persistent TUN device in *ns*, with the flags and offload mask of the mode.

    A multi-queue device (``queues`` > 1) must be created with IFF_MULTI_QUEUE:
    the flag can't be changed later, and every queue attached must carry it.
    """
    with ns.entered():
        fd = linux.open_tun_file()
        try:
            flags = linux.IFF_TUN | linux.IFF_NO_PI | (linux.IFF_VNET_HDR if offload else 0)
            if queues > 1:
                flags |= linux.IFF_MULTI_QUEUE
            linux.set_iff(fd, name, flags)
            linux.set_persist(fd, True)
            if offload:
                linux.negotiate_offload(fd, required=True)
            else:
                linux.set_offload(fd, linux.NO_OFFLOAD)
        finally:
            os.close(fd)


def _configure_device(
    ns: NetNamespace, name: str, address: str, peer_net: str, mtu: int = MTU
) -> None:
    ipr = _iproute(ns)
    try:
        index = ipr.link_lookup(ifname=name)[0]
        ipr.link("set", index=index, mtu=mtu, state="up")
        ipr.addr("add", index=index, address=address, prefixlen=PREFIX_LEN)
        ipr.route("add", dst=peer_net, oif=index)
    finally:
        ipr.close()


def _delete_device(ns: NetNamespace, name: str) -> None:
    ipr = _iproute(ns)
    try:
        for index in ipr.link_lookup(ifname=name):
            ipr.link("del", index=index)
    finally:
        ipr.close()


@contextlib.contextmanager
def devices(topo: Topology, offload: bool, queues: int = 1, mtu: int = MTU) -> Iterator[None]:
    """Fresh tfa/tfb for one measurement, so no state (offload mask, queues) carries over."""
    try:
        for ns, name, address, peer_net in topo.pairs:
            _create_device(ns, name, offload, queues)
            _configure_device(ns, name, address, peer_net, mtu)
        yield
    finally:
        for ns, name, *_ in topo.pairs:
            with contextlib.suppress(Exception):
                _delete_device(ns, name)


@contextlib.contextmanager
def underlay(topo: Topology) -> Iterator[None]:
    """A veth pair joining the two end namespaces directly: the tunnel modes' "internet".

    ula (10.99.0.1) in the client namespace, ulb (10.99.0.2) in the server
    namespace; deleting one end deletes the pair.
    """
    try:
        link_namespaces(
            topo.client,
            topo.server,
            names=UNDERLAY_DEVS,
            addresses=(
                [f"{UNDERLAY_ADDRS[0]}/{UNDERLAY_PREFIX_LEN}"],
                [f"{UNDERLAY_ADDRS[1]}/{UNDERLAY_PREFIX_LEN}"],
            ),
        )
        yield
    finally:
        for ns, name in zip((topo.client, topo.server), UNDERLAY_DEVS, strict=True):
            with contextlib.suppress(Exception):
                _delete_device(ns, name)


@contextlib.contextmanager
def vxlan_devices(topo: Topology, mtu: int) -> Iterator[None]:
    """A VXLAN device in each end namespace over the underlay, addressed like tfa/tfb.

    Unicast VXLAN: each device sends to the other's underlay address (so ARP
    for the peer's 10.10.x.1 goes there too); the routes to the other end's
    network point into it, exactly as with the TUN devices.
    """
    try:
        for i, (ns, _tun, address, peer_net) in enumerate(topo.pairs):
            spec = {
                "ifname": VXLAN_DEVS[i],
                "kind": "vxlan",
                "vxlan_id": VXLAN_ID,
                "vxlan_local": UNDERLAY_ADDRS[i],
                # A unicast "group" is what iproute2 calls "remote".
                "vxlan_group": UNDERLAY_ADDRS[1 - i],
                "vxlan_port": VXLAN_PORT,
            }

            def create(ipr: Any, spec: dict[str, Any] = spec, link: str = UNDERLAY_DEVS[i]) -> None:
                ipr.link("add", vxlan_link=ipr.link_lookup(ifname=link)[0], **spec)

            ns.netlink(create)
            _configure_device(ns, VXLAN_DEVS[i], address, peer_net, mtu)
        yield
    finally:
        for ns, name in zip((topo.client, topo.server), VXLAN_DEVS, strict=True):
            with contextlib.suppress(Exception):
                _delete_device(ns, name)


def _wg_names() -> tuple[str, str]:
    """The WireGuard modes' interface names: unique on this machine while we run.

    wireguard-go names its control socket after the interface, in a directory
    every namespace shares; our pid keeps them apart from anyone else's.
    """
    return f"wgb{os.getpid()}a", f"wgb{os.getpid()}b"


@contextlib.contextmanager
def wireguard_leftovers(topo: Topology) -> Iterator[None]:
    """Remove what killed WireGuard peers may leave: interfaces and (new) control sockets."""
    names = _wg_names()
    sockets = [WG_SOCKET_DIR / f"{name}.sock" for name in names]
    existing = {path for path in sockets if path.exists()}
    try:
        yield
    finally:
        for ns, name in zip((topo.client, topo.server), names, strict=True):
            with contextlib.suppress(Exception):
                _delete_device(ns, name)
        for path in sockets:
            if path not in existing:  # never one that was there before this cell
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


@contextlib.contextmanager
def network(topo: Topology, mode: Mode) -> Iterator[None]:
    """Everything one measurement of *mode* routes iperf3's traffic through; removed after."""
    if mode.kind == "wireguard":
        # The peers make their own interfaces; only the underlay is ours.
        with underlay(topo), wireguard_leftovers(topo):
            yield
    elif mode.kind == "kernel":
        with underlay(topo), vxlan_devices(topo, mode.mtu):
            yield
    elif mode.kind == "tunnel":
        with underlay(topo), devices(topo, mode.offload, mode.queues, mode.mtu):
            yield
    else:
        with devices(topo, mode.offload, mode.queues, mode.mtu):
            yield


# -- processes ---------------------------------------------------------------------


def _tail(path: Path, lines: int = STDERR_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _kill(proc: subprocess.Popen[Any] | None) -> None:
    """Make sure *proc* (one we started) is gone; bounded."""
    if proc is None or proc.poll() is not None:
        return
    proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _kill_group(proc: subprocess.Popen[Any] | None) -> None:
    """Kill the session *proc* leads (one we started with start_new_session), then reap it.

    A forwarder's worker processes live in its process group; if the forwarder
    itself was killed they must not outlive the measurement.
    """
    if proc is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    _kill(proc)


def _forwarder_argv(mode: Mode, topo: Topology, config: RunConfig) -> list[str]:
    ends = [topo.client.path, CLIENT_DEV, topo.server.path, SERVER_DEV]
    trio_batch = config.trio_batch
    if mode.kind == "wireguard":
        dev_a, dev_b = _wg_names()
        script = str(BENCH_DIR / "fwd_wireguard.py")
        peers = ["--peer-a", mode.wg_peers[0], "--peer-b", mode.wg_peers[1]]
        underlay = ["--underlay-a", UNDERLAY_ADDRS[0], "--underlay-b", UNDERLAY_ADDRS[1]]
        inner = [
            f"--inner-a={CLIENT_ADDR}/{PREFIX_LEN}",
            f"--inner-b={SERVER_ADDR}/{PREFIX_LEN}",
        ]
        bound = ["--max-seconds", str(config.timeout + READY_TIMEOUT + STOP_TIMEOUT)]
        wg_ends = [topo.client.path, dev_a, topo.server.path, dev_b]
        return [sys.executable, script, *wg_ends, *peers, *underlay, *inner, *bound]
    if mode.kind == "tunnel":
        script = str(BENCH_DIR / "fwd_tunnel.py")
        underlay = ["--underlay-a", UNDERLAY_ADDRS[0], "--underlay-b", UNDERLAY_ADDRS[1]]
        # Its own time bound: long enough for the run and the harness's clean-up.
        bound = ["--max-seconds", str(config.timeout + READY_TIMEOUT + STOP_TIMEOUT)]
        # fwd_tunnel.py's floor mode keeps its own cap whatever this says.
        cap = config.tunnel_gso_max_size
        capped = ["--gso-max-size", str(cap)] if cap else []
        mode_args = ["--mode", mode.tunnel_mode]
        return [sys.executable, script, *ends, *mode_args, *underlay, *bound, *capped]
    if mode.kind == "c":
        return [str(C_BINARY), *ends, "2" if mode.c_split else "1" if mode.offload else "0"]
    if mode.kind == "pytun":
        return [sys.executable, str(BENCH_DIR / "fwd_pytun.py"), *ends]
    if mode.kind == "engine":
        workers = ["--workers"] if mode.workers else []
        script = str(BENCH_DIR / "fwd_engine.py")
        return [sys.executable, script, *ends, "--queues", str(mode.queues), *workers]
    extra = ["--offload"] if mode.offload else []
    if mode.queues > 1:
        extra += ["--queues", str(mode.queues)]
    if trio_batch is not None and mode.trio_mode == "batch":
        extra += ["--batch", str(trio_batch)]
    return [sys.executable, str(BENCH_DIR / "fwd_trio.py"), *ends, "--mode", mode.trio_mode, *extra]


def _forwarder_env(mode: Mode) -> dict[str, str]:
    env = dict(os.environ)
    # A TRIO_TUN_PURE_PYTHON left in the caller's environment would silently
    # turn the speedups mode into a second pure-Python run.
    env.pop("TRIO_TUN_PURE_PYTHON", None)
    env.update(mode.env)
    return env


def _start_forwarder(
    mode: Mode, topo: Topology, stderr: IO[bytes], config: RunConfig
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    # Its own session: a Ctrl-C reaches only the harness, which stops it in order.
    proc = subprocess.Popen(
        _forwarder_argv(mode, topo, config),
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=_forwarder_env(mode),
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = _fwdcommon.read_line(proc.stdout, time.monotonic() + READY_TIMEOUT)
    if line is None or not line.startswith("READY"):
        _kill_group(proc)
        raise BenchError(f"forwarder did not get ready (exit code {proc.returncode})")
    payload = line[len("READY") :].strip()
    return proc, json.loads(payload) if payload else {}


def _check_implementation(mode: Mode, info: dict[str, Any]) -> None:
    if not mode.implementation:
        return
    got = info.get("implementation")
    if got == mode.implementation:
        return
    if mode.implementation == "speedups":
        raise BenchError(
            "the compiled offload speedups are NOT built (trio_tun.offload.implementation is "
            f"{got!r}); build them with 'pip install -e .' -- not measured as speedups"
        )
    raise BenchError(
        f"forwarder reports offload implementation {got!r}, wanted {mode.implementation!r}"
    )


def _start_iperf_server(topo: Topology, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = topo.server.popen(
            ["iperf3", "-s", "-1", "-B", SERVER_ADDR, "--forceflush"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + LISTEN_TIMEOUT
    while "listening" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            _kill(proc)
            raise BenchError(f"iperf3 server did not start: {_tail(log)}")
        time.sleep(0.05)
    return proc


def _run_iperf_client(
    topo: Topology,
    config: RunConfig,
    streams: int,
    forwarder: subprocess.Popen[bytes] | None,
    tmp: Path,
) -> Any:
    """Run the iperf3 client to completion and return its JSON report.

    Its output goes to a file (the JSON of a long multi-stream run can outgrow a
    pipe), and the forwarder is watched meanwhile: if it dies, TCP would just
    stall until the timeout, so the cell fails at once instead.
    """
    argv = ["iperf3", "-c", SERVER_ADDR, "-t", str(config.duration), "-P", str(streams), "-J"]
    out_path, err_path = tmp / "client.json", tmp / "client.stderr"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = topo.client.popen(
            [*argv, "--connect-timeout", "5000"], stdout=out, stderr=err, start_new_session=True
        )
    try:
        deadline = time.monotonic() + config.timeout
        while proc.poll() is None:
            if forwarder is not None and forwarder.poll() is not None:
                raise BenchError(
                    f"forwarder died during the run (exit code {forwarder.returncode})"
                )
            if time.monotonic() > deadline:
                raise BenchError(f"iperf3 client did not finish within {config.timeout:.0f} s")
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.2)
    finally:
        _kill(proc)
    try:
        result = json.loads(out_path.read_bytes())
    except json.JSONDecodeError:
        raise BenchError(f"iperf3 client printed no JSON: {_tail(err_path, 5)}") from None
    if "error" in result:
        raise BenchError(f"iperf3: {result['error']}")
    return result


# -- /proc sampling -------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat from field 3 (state) on; the command name may hold spaces."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rfind(")") + 2 :].split()


def _cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of *pid* so far."""
    fields = _stat_fields(pid)
    # fields[0] is field 3 (state) of proc(5); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    """Live child processes of *pid* (found by their parent pid: /proc/N/stat field 4)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(_stat_fields(int(entry))[1]) == pid:
                found.append(int(entry))
    return found


def _tree(pid: int) -> list[int]:
    """*pid* and its descendants (a WorkerPool forwarder's workers)."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        todo.extend(_children(current))
    return pids


def _tree_cpu_seconds(pids: Sequence[int]) -> dict[int, float]:
    """CPU seconds so far of each of *pids* that still exists."""
    seconds = {}
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            seconds[pid] = _cpu_seconds(pid)
    return seconds


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _tree_peak_rss_mib(pids: Sequence[int]) -> float:
    """Sum of the peak RSS of *pids* (shared pages count once per process)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += _peak_rss_mib(pid)
    return total


# -- one measurement ------------------------------------------------------------------


def _stop_forwarder(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    """SIGTERM, then the forwarder's final JSON line (empty dict if it printed none)."""
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        return {}
    for line in reversed(out.decode(errors="replace").splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                return dict(json.loads(line))
    return {}


def _bytes_per_read(report: dict[str, Any]) -> float | None:
    direction = report.get("a_to_b") or {}
    reads = direction.get("reads")
    return direction["read_bytes"] / reads if reads else None


@dataclass(frozen=True)
class RunConfig:
    duration: int  # iperf3 -t
    timeout: float  # upper bound on one iperf3 client run
    trio_batch: int | None  # receive_batch(max_packets) in the trio batch modes; None: default
    tunnel_gso_max_size: int | None = None  # tunnel modes but the floor: TUN gso_max_size cap


def measure(mode: Mode, topo: Topology, streams: int, config: RunConfig) -> Measurement:
    with tempfile.TemporaryDirectory(prefix="trio-tun-bench-") as tmp:
        stderr_path = Path(tmp) / "forwarder.stderr"
        forwarder = server = None
        try:
            with network(topo, mode), stderr_path.open("wb") as stderr:
                try:
                    if mode.kind == "kernel":
                        # Nothing to start: the kernel's devices carry the traffic.
                        info: dict[str, Any] = {"forwarder": "kernel"}
                    else:
                        forwarder, info = _start_forwarder(mode, topo, stderr, config)
                        _check_implementation(mode, info)
                    server = _start_iperf_server(topo, Path(tmp) / "server.log")
                    # The forwarder and, for workers-2 and the tunnel modes, its
                    # child processes: all started before READY, so the same set
                    # is alive at both samples.
                    pids = [] if forwarder is None else _tree(forwarder.pid)
                    cpu0, t0 = _tree_cpu_seconds(pids), time.monotonic()
                    result = _run_iperf_client(topo, config, streams, forwarder, Path(tmp))
                    gbps = result["end"]["sum_received"]["bits_per_second"] / 1e9
                    cpu1, t1 = _tree_cpu_seconds(pids), time.monotonic()
                    rss = _tree_peak_rss_mib(pids) if pids else math.nan
                    if forwarder is not None and forwarder.poll() is not None:
                        raise BenchError(f"forwarder died (exit code {forwarder.returncode})")
                    vanished = sorted(cpu0.keys() - cpu1.keys())
                    cpu = sum(cpu1[pid] - cpu0[pid] for pid in cpu0.keys() & cpu1.keys())
                    final = {} if forwarder is None else _stop_forwarder(forwarder)
                    if vanished or len(cpu0) != len(pids):
                        # Stopped first, so its own report (and any worker's
                        # traceback on the shared stderr) is there to show.
                        why = final.get("worker_failure", "the forwarder reported no failure")
                        raise BenchError(
                            f"process(es) of the forwarder's tree {pids} gone during the "
                            f"run: {vanished or 'before the first sample'} ({why})"
                        )
                    if forwarder is not None and not final:
                        # The throughput still counts; only the counters are missing.
                        print(f"(no final counters from the forwarder: {_tail(stderr_path, 3)})")
                    report = {**info, **final}
                finally:
                    _kill_group(forwarder)
                    _kill(server)
        except BenchError as exc:
            raise BenchError(exc.reason, _tail(stderr_path)) from None
        except Exception as exc:  # pyroute2, /proc, JSON: any surprise fails this cell only
            raise BenchError(f"{type(exc).__name__}: {exc}", _tail(stderr_path)) from None
    return Measurement(
        gbps=gbps,
        # No forwarder (vxlan): the work is the kernel's, in softirq and the iperf3 processes.
        cpu_percent=100 * cpu / (t1 - t0) if pids else math.nan,
        rss_mib=rss,
        bytes_per_read=_bytes_per_read(report),
        forwarder=report,
    )


# -- preflight ----------------------------------------------------------------------


def _build_c_program(source: Path, binary: Path) -> str | None:
    """Compile *source* (fwd.c, tunnel_c.c) to *binary*; None on success, else why not."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return "no C compiler (cc) on PATH: install gcc (nox -s bench does)"
    BUILD_DIR.mkdir(exist_ok=True)
    argv = [cc, "-O2", "-Wall", "-Wextra", "-o", str(binary), str(source)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        return f"compiling {source.name} failed:\n{done.stderr}"
    return None


def _offload_implementation(pure: bool) -> str:
    env = _forwarder_env(MODES["trio-pure" if pure else "trio-speedups"])
    code = "import trio_tun.offload as o; print(o.implementation)"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout.strip() or f"error: {done.stderr.strip()[-300:]}"


def _tunnel_pump() -> str | None:
    """None if trio_tun.engine.TunnelPump is importable, else why not."""
    code = "from trio_tun.engine import TunnelPump"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode == 0:
        return None
    return f"trio_tun.engine.TunnelPump is not available: {done.stderr.strip()[-300:]}"


def _wireguard_problem(mode: Mode) -> str | None:
    """None if *mode*'s WireGuard peers can run here, else why not."""
    missing = [tool for tool in ("ping",) if shutil.which(tool) is None]
    if "go" in mode.wg_peers:
        missing += [tool for tool in ("wireguard-go", "wg") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (Debian: wireguard-go, wireguard-tools)"
    if "trio" in mode.wg_peers and importlib.util.find_spec("cryptography") is None:
        return "examples/wireguard.py needs 'cryptography' (pip install cryptography)"
    return None


def preflight(modes: Sequence[Mode]) -> dict[str, str]:
    """Why each unrunnable mode is skipped ({mode name: reason}); prints what it finds."""
    skipped: dict[str, str] = {}
    if shutil.which("iperf3") is None:
        return {m.name: "iperf3 is not installed (apt-get install iperf3)" for m in modes}
    for mode in modes:
        if mode.kind == "wireguard" and (problem := _wireguard_problem(mode)) is not None:
            print(f"{mode.name}: {problem}")
            skipped[mode.name] = problem
    kinds = {m.kind for m in modes}
    if "c" in kinds and (problem := _build_c_program(C_SOURCE, C_BINARY)) is not None:
        print(f"C forwarder: {problem}")
        skipped.update({m.name: problem for m in modes if m.kind == "c"})
    if "pytun" in kinds:
        try:
            importlib.import_module("pytun")
        except ImportError:
            problem = "python-pytun is not installed (pip install python-pytun): skipping pytun"
            print(problem)
            skipped["pytun"] = problem
    c_tunnels = [m.name for m in modes if m.name in (TUNNEL_FLOOR, TUNNEL_C)]
    if c_tunnels and (problem := _build_c_program(TUNNEL_C_SOURCE, TUNNEL_C_BINARY)) is not None:
        print(f"{', '.join(c_tunnels)}: {problem}")
        skipped.update(dict.fromkeys(c_tunnels, problem))
    if any(m.name == "tunnel-engine" for m in modes) and (problem := _tunnel_pump()) is not None:
        print(f"tunnel-engine: {problem}")
        skipped["tunnel-engine"] = problem
    if any(m.name == "trio-speedups" for m in modes):
        impl = _offload_implementation(pure=False)
        print(f"trio_tun.offload.implementation (speedups mode): {impl}")
        if impl != "speedups":
            print("  !! the C offload speedups are NOT built: build them with 'pip install -e .'")
    if any(m.name == "trio-pure" for m in modes):
        impl = _offload_implementation(pure=True)
        print(f"trio_tun.offload.implementation (TRIO_TUN_PURE_PYTHON=1): {impl}")
    return skipped


# -- reporting ------------------------------------------------------------------------

Cell = tuple[str, int]  # (mode name, iperf3 streams)


@dataclass
class Outcome:
    """Everything one invocation measured, including what failed or was skipped."""

    runs: dict[Cell, list[Measurement]] = field(default_factory=dict)
    failures: list[tuple[Cell, Failure]] = field(default_factory=list)
    interrupted: bool = False

    def medians(self) -> dict[Cell, Measurement]:
        return {cell: _median(runs) for cell, runs in self.runs.items()}


def _median(runs: list[Measurement]) -> Measurement:
    """Median of each metric separately over repeats; the forwarder report of the median run."""
    middle = sorted(runs, key=lambda m: m.gbps)[len(runs) // 2]
    per_read = [m.bytes_per_read for m in runs if m.bytes_per_read is not None]
    return Measurement(
        gbps=statistics.median(m.gbps for m in runs),
        cpu_percent=statistics.median(m.cpu_percent for m in runs),
        rss_mib=statistics.median(m.rss_mib for m in runs),
        bytes_per_read=statistics.median(per_read) if per_read else None,
        forwarder=middle.forwarder,
    )


def _ratio(medians: dict[Cell, Measurement], mode: str, reference: str, n: int) -> float | None:
    a, b = medians.get((mode, n)), medians.get((reference, n))
    if a is None or b is None or b.gbps <= 0:
        return None
    return a.gbps / b.gbps


def round_ratios(outcome: Outcome, mode: str, reference: str, n: int) -> list[float]:
    """*mode* over *reference* within each round both measured, in round order.

    Modes interleave within a round, so this pairs each run with the reference
    measured minutes from it, where the ratio of medians may pair runs from
    rounds far apart on a VM whose load drifts.
    """
    ours = {m.repeat: m.gbps for m in outcome.runs.get((mode, n), []) if m.repeat}
    theirs = {m.repeat: m.gbps for m in outcome.runs.get((reference, n), []) if m.repeat}
    return [ours[r] / theirs[r] for r in sorted(ours.keys() & theirs.keys()) if theirs[r] > 0]


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table(outcome: Outcome, modes: Sequence[Mode], streams: Sequence[int]) -> list[str]:
    medians = outcome.medians()
    status = {cell: "SKIPPED" if f.skipped else "FAILED" for cell, f in outcome.failures}
    lines = [
        "| mode | streams | Gbit/s | CPU % | CPU % per Gbit/s | RSS MiB | vs C passthrough "
        "| vs pytun | bytes/read |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode in modes:
        for n in streams:
            m = medians.get((mode.name, n))
            if m is None:
                cell = status.get((mode.name, n), "not run")
                lines.append(f"| {mode.name} | {n} | {cell} | - | - | - | - | - | - |")
                continue
            per_read = "-" if m.bytes_per_read is None else f"{m.bytes_per_read:,.0f}"
            vs_c = _fmt_ratio(_ratio(medians, mode.name, "c-offload", n))
            vs_pytun = _fmt_ratio(_ratio(medians, mode.name, "pytun", n))
            cpu = "-" if math.isnan(m.cpu_percent) else f"{m.cpu_percent:.0f}"
            # What a Gbit/s costs in CPU: compares forwarders that are not CPU-bound.
            per_gbit = (
                "-" if math.isnan(m.cpu_percent) or m.gbps <= 0 else f"{m.cpu_percent / m.gbps:.0f}"
            )
            rss = "-" if math.isnan(m.rss_mib) else f"{m.rss_mib:.1f}"
            lines.append(
                f"| {mode.name} | {n} | {m.gbps:.2f} | {cpu} | {per_gbit} | {rss} "
                f"| {vs_c} | {vs_pytun} | {per_read} |"
            )
    return lines


def target_checks(outcome: Outcome, modes: Sequence[Mode], streams: Sequence[int]) -> list[str]:
    medians = outcome.medians()
    selected = {m.name for m in modes}
    lines = []
    for mode, reference, minimum, counts in TARGETS:
        if not {mode, reference} <= selected:
            continue
        for n in streams:
            if counts and n not in counts:
                continue
            ratio = _ratio(medians, mode, reference, n)
            if ratio is None:
                verdict = "SKIP (one side not measured, failed or skipped)"
            else:
                verdict = f"{'PASS' if ratio >= minimum else 'MISS'} ({ratio:.2f}x)"
            rounds = round_ratios(outcome, mode, reference, n)
            if len(rounds) > 1:
                listed = ", ".join(f"{r:.2f}x" for r in rounds)
                verdict += f"; round by round {listed} (median {statistics.median(rounds):.2f}x)"
            compiled = TARGET_COMPILED.get((mode, reference))
            if compiled and (c_ratio := _ratio(medians, compiled, reference, n)) is not None:
                verdict += f"; {compiled}, the same work in C: {c_ratio:.2f}x"
            lines.append(f"- {mode} >= {minimum}x {reference}, {n} stream(s): {verdict}")
    return lines


SCALING_MODES: tuple[str, ...] = ("engine-q2", "engine-q4", "workers-2")
SCALING_BASE = "engine-q1"
WORKERS_BASE = "trio-speedups"


def _scaling_verdict(ratios: Sequence[float]) -> str:
    low, high = min(ratios), max(ratios)
    span = f"{low:.2f}x" if low == high else f"{low:.2f}-{high:.2f}x"
    if low >= 1.1:
        return f"faster ({span})"
    if high <= 0.9:
        return f"slower ({span})"
    if low >= 0.9 and high <= 1.1:
        return f"no clear difference ({span}, within the +-10 % noise)"
    return f"mixed ({span})"


def scaling_lines(outcome: Outcome, modes: Sequence[Mode], streams: Sequence[int]) -> list[str]:
    """Multi-queue engine and worker modes against the 1-queue engine, with the caveat."""
    selected = {m.name for m in modes}
    shown = [name for name in SCALING_MODES if name in selected]
    if not shown:
        return []
    medians = outcome.medians()
    cpus = os.cpu_count() or 0
    lines = [
        f"This machine has {cpus} CPU(s).  The iperf3 client and server, the kernel's TCP "
        "work for both ends and the forwarder (with its workers) all share them, so more "
        "queues or worker processes can only help while a core is left idle; on a 2-core VM "
        "they may well give no gain, or cost throughput (more tasks, more processes, more "
        "cross-core traffic).",
        "",
    ]
    verdicts, details = [], []
    # Each mode against the 1-queue engine; the worker processes also against
    # trio-speedups, which runs the same receive_batch/send_batch loop as
    # forward_pair, but in a single process.
    comparisons = [(name, SCALING_BASE) for name in shown]
    if "workers-2" in shown and WORKERS_BASE in selected:
        comparisons.append(("workers-2", WORKERS_BASE))
    for name, reference in comparisons:
        ratios = []
        for n in streams:
            m, base = medians.get((name, n)), medians.get((reference, n))
            if m is None or base is None or base.gbps <= 0:
                continue
            ratios.append(m.gbps / base.gbps)
            details.append(
                f"{name} {m.gbps / base.gbps:.2f}x {reference} at {n} stream(s) "
                f"({m.gbps:.2f} vs {base.gbps:.2f} Gbit/s, CPU {m.cpu_percent:.0f} % vs "
                f"{base.cpu_percent:.0f} %)"
            )
        if ratios:
            verdicts.append(f"{name} against {reference}: {_scaling_verdict(ratios)}")
    if verdicts:
        lines.append(
            f"Observed in this run: {'; '.join(verdicts)}.  "
            "Single runs swing by up to 30 %: repeat (--repeat 3) before concluding."
        )
        lines += ["", *(f"- {line}" for line in details)]
    else:
        lines.append("Observed in this run: nothing to compare (no reference mode measured).")
    return lines


def _per(numerator: Any, denominator: Any) -> str:
    return f"{numerator / denominator:.1f}" if numerator and denominator else "-"


def tunnel_lines(outcome: Outcome, modes: Sequence[Mode], streams: Sequence[int]) -> list[str]:
    """The tunnel modes against the kernel's VXLAN and our floor, and how the UDP side batches."""
    selected = {m.name for m in modes}
    shown = [name for name in (*TUNNEL_MODES, TUNNEL_REFERENCE) if name in selected]
    if not shown:
        return []
    medians = outcome.medians()
    lines = [
        f"References, no targets: the kernel's own UDP encapsulation (`{TUNNEL_REFERENCE}`), "
        f"the kernel's share of our tunnel (`{TUNNEL_FLOOR}`: the same TUN and UDP "
        "system calls per super-packet as tunnel-batched, with no GSO/GRO work between "
        f"them), and the batched tunnel's work compiled (`{TUNNEL_C}`: the split, the "
        "checksums and the merge in C).  vs the floor is what a tunnel keeps of it once "
        f"user space splits and coalesces; vs {TUNNEL_C} is what Python keeps of C.  "
        "The UDP columns are the client -> server direction (endpoint A's sends, "
        "endpoint B's receives) of the median run: datagrams per message is what "
        "UDP_SEGMENT / UDP_GRO achieved (a message is one sendmsg/recvmsg's worth; "
        "sendmmsg/recvmmsg put several messages in one system call, counted in the "
        "per-syscall columns); packets per TUN write is the receiving TUN's GRO coalescing.",
        "",
        f"| mode | streams | Gbit/s | vs {TUNNEL_REFERENCE} | vs {TUNNEL_C} | vs {TUNNEL_FLOOR} | "
        "datagrams/sendmsg | datagrams/send syscall | datagrams/recvmsg | "
        "datagrams/recv syscall | packets/TUN write |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in shown:
        for n in streams:
            m = medians.get((name, n))
            if m is None:
                continue
            d = m.forwarder.get("a_to_b") or {}
            lines.append(
                f"| {name} | {n} | {m.gbps:.2f} "
                f"| {_fmt_ratio(_ratio(medians, name, TUNNEL_REFERENCE, n))} "
                f"| {_fmt_ratio(_ratio(medians, name, TUNNEL_C, n))} "
                f"| {_fmt_ratio(_ratio(medians, name, TUNNEL_FLOOR, n))} "
                f"| {_per(d.get('udp_tx_datagrams'), d.get('udp_tx_messages'))} "
                f"| {_per(d.get('udp_tx_datagrams'), d.get('udp_writes'))} "
                f"| {_per(d.get('udp_rx_datagrams'), d.get('udp_rx_messages'))} "
                f"| {_per(d.get('udp_rx_datagrams'), d.get('udp_reads'))} "
                f"| {_per(d.get('tx_packets'), d.get('writes'))} |"
            )
    return lines


def _cpu_per_gbps(m: Measurement) -> str:
    if math.isnan(m.cpu_percent) or m.gbps <= 0:
        return "-"
    return f"{m.cpu_percent / m.gbps:.0f}"


def wireguard_lines(outcome: Outcome, modes: Sequence[Mode], streams: Sequence[int]) -> list[str]:
    """The WireGuard modes against wireguard-go: throughput and CPU per Gbit/s."""
    selected = {m.name for m in modes}
    shown = [name for name in WG_MODES if name in selected]
    if not shown:
        return []
    medians = outcome.medians()
    if not any((name, n) in medians for name in shown for n in streams):
        return []
    lines = [
        f"Reference: wireguard-go on both ends (`{WG_REFERENCE}`).  CPU is summed over both "
        "peers (and the idle launcher), so it covers encryption and decryption of the data "
        "direction and the ACKs; CPU per Gbit/s is CPU % (of one core) divided by Gbit/s: "
        "lower is cheaper.",
        "",
        f"| mode | streams | Gbit/s | vs {WG_REFERENCE} | CPU % | CPU % per Gbit/s "
        f"| CPU per Gbit/s vs {WG_REFERENCE} |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in shown:
        for n in streams:
            m = medians.get((name, n))
            if m is None:
                continue
            ref = medians.get((WG_REFERENCE, n))
            cost = "-"
            if ref is not None and ref.gbps > 0 and m.gbps > 0 and ref.cpu_percent > 0:
                cost = f"{(m.cpu_percent / m.gbps) / (ref.cpu_percent / ref.gbps):.2f}x"
            lines.append(
                f"| {name} | {n} | {m.gbps:.2f} "
                f"| {_fmt_ratio(_ratio(medians, name, WG_REFERENCE, n))} "
                f"| {m.cpu_percent:.0f} | {_cpu_per_gbps(m)} | {cost} |"
            )
    return lines


def failure_lines(outcome: Outcome) -> list[str]:
    lines = []
    for (mode, n), failure in outcome.failures:
        lines.append(f"- {mode}, {n} stream(s): {failure.reason}")
        if failure.stderr_tail:
            lines += ["  ```", *(f"  {x}" for x in failure.stderr_tail.splitlines()), "  ```"]
    return lines


def forwarder_details(outcome: Outcome) -> list[str]:
    keys = (
        "implementation",
        "offload",
        "batch",
        "queues",
        "reads_per_queue_a",
        "a_to_b",
        "b_to_a",
        "engines",
        "peers",
        "peer_exit_codes",
    )
    lines = []
    for (mode, n), m in outcome.medians().items():
        shown = {k: m.forwarder[k] for k in keys if m.forwarder.get(k) is not None}
        lines.append(f"- {mode}, {n} stream(s): `{json.dumps(shown)}`")
    return lines


def render(
    outcome: Outcome, modes: Sequence[Mode], args: argparse.Namespace, elapsed: float
) -> str:
    batch = args.trio_batch or "library default"
    lines = [
        "# trio-tun forwarding benchmark",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}, Linux {platform.release()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}; iperf3 TCP "
        f"{args.duration} s, MTU {MTU} (tunnel and vxlan modes: {TUNNEL_MTU}, WireGuard "
        f"modes: {WG_MTU}, over a {MTU} veth underlay), median of {args.repeat} run(s), "
        f"receive_batch max_packets: {batch}"
        f"{f'; tunnel TUN gso_max_size: {cap}' if (cap := args.tunnel_gso_max_size) else ''}"
        f"; total runtime {elapsed:.0f} s"
        f"{' (INTERRUPTED: partial results)' if outcome.interrupted else ''}.",
        "",
        "CPU % is the forwarder's utime+stime over the iperf3 run in % of one core (it "
        "includes kernel work done in the forwarder's context, such as the receiving "
        "side's TCP stack after a TUN write), and CPU % per Gbit/s what each Gbit/s cost "
        "it (lower is cheaper; it compares forwarders that are not CPU-bound); RSS is "
        "its VmHWM; for workers-2 both are "
        "summed over the parent and its worker processes, for the tunnel modes over the "
        "launcher and both endpoint processes, for the WireGuard modes over the launcher "
        "and both peers (read from their /proc entries; "
        "shared pages, such as the interpreter's, count once per process, so the RSS sum "
        "overstates the real footprint); vxlan has no forwarder process, hence '-'.  "
        "bytes/read is the mean "
        "size of one read from tfa (client -> server, virtio header included), from the "
        "forwarder's own counters (not available for workers-2: the counters live in the "
        "workers).  Single runs on a small shared VM can swing by 30 %: "
        "judge targets on --repeat 3 or more.",
        "",
        *(f"- `{m.name}`: {m.description}" for m in modes),
        "",
        *table(outcome, modes, args.streams),
        "",
        "## Target checks",
        "",
        "Verdicts are on the ratio of the two medians; with several rounds, 'round by "
        "round' gives each round's run over the reference's run of the same round.",
        "",
        *(target_checks(outcome, modes, args.streams) or ["(none among the selected modes)"]),
    ]
    if tunnel := tunnel_lines(outcome, modes, args.streams):
        lines += ["", "## Tunnel data path (issue 11)", "", *tunnel]
    if wireguard := wireguard_lines(outcome, modes, args.streams):
        lines += ["", "## WireGuard (issue 12)", "", *wireguard]
    if scaling := scaling_lines(outcome, modes, args.streams):
        lines += ["", "## Multi-queue engine and worker processes", "", *scaling]
    if failed := failure_lines(outcome):
        lines += ["", "## Failures and skips", "", *failed]
    if details := forwarder_details(outcome):
        lines += ["", "## Forwarder counters (median run)", "", *details]
    return "\n".join(lines) + "\n"


# -- main ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=10, help="iperf3 seconds per run")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4], help="iperf3 -P values")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell; the median counts")
    parser.add_argument(
        "--timeout", type=float, default=None, help="iperf3 client limit (default duration + 30 s)"
    )
    parser.add_argument(
        "--trio-batch",
        type=int,
        default=None,
        metavar="N",
        help="receive_batch(max_packets=N) in the trio batch modes (default: the library's)",
    )
    parser.add_argument(
        "--tunnel-gso-max-size",
        type=int,
        default=None,
        metavar="BYTES",
        help="cap the TUN devices' gso_max_size in the tunnel modes (not tunnel-floor, which "
        "caps its own): a super-packet small enough that its segments fit one UDP send",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="Markdown results file")
    parser.add_argument(
        "--chart", type=Path, default=None, help="SVG bar chart (default: OUTPUT with .svg)"
    )
    args = parser.parse_args(argv)
    positive = [args.duration, args.repeat, *args.streams, args.trio_batch or 1]
    if min(positive) < 1:
        parser.error("--duration, --repeat, --streams and --trio-batch must be positive")
    return args


def _raise_interrupt(signum: int, frame: object) -> NoReturn:
    # SIGTERM (e.g. nox being stopped) takes the same clean-up path as Ctrl-C.
    raise KeyboardInterrupt


def _run_cell(
    mode: Mode, topo: Topology, n: int, config: RunConfig, outcome: Outcome, repeat: int
) -> None:
    """One measurement; a failure is recorded and printed, never raised."""
    try:
        m = dataclasses.replace(measure(mode, topo, n, config), repeat=repeat)
    except BenchError as exc:
        print(f"FAILED: {exc.reason}", flush=True)
        if exc.stderr_tail:
            print(exc.stderr_tail, flush=True)
        outcome.failures.append(((mode.name, n), Failure(exc.reason, exc.stderr_tail)))
        return
    cpu = "no forwarder" if math.isnan(m.cpu_percent) else f"CPU {m.cpu_percent:.0f} %"
    print(f"{m.gbps:.2f} Gbit/s, {cpu}", flush=True)
    outcome.runs.setdefault((mode.name, n), []).append(m)


def run_all(modes: Sequence[Mode], args: argparse.Namespace, skipped: dict[str, str]) -> Outcome:
    outcome = Outcome()
    for mode in modes:
        if mode.name in skipped:
            for n in args.streams:
                failure = Failure(f"skipped: {skipped[mode.name]}", skipped=True)
                outcome.failures.append(((mode.name, n), failure))
    config = RunConfig(
        duration=args.duration,
        timeout=args.timeout or args.duration + 30.0,
        trio_batch=args.trio_batch,
        tunnel_gso_max_size=args.tunnel_gso_max_size,
    )
    runnable = [m for m in modes if m.name not in skipped]
    try:
        with topology() as topo:
            # Modes interleave within each repeat, so slow drift on a noisy VM
            # spreads over all of them instead of hitting one.
            for repeat in range(1, args.repeat + 1):
                for mode in runnable:
                    for n in args.streams:
                        print(f"[{repeat}/{args.repeat}] {mode.name}, {n} stream(s) ...", end=" ")
                        sys.stdout.flush()
                        _run_cell(mode, topo, n, config, outcome, repeat)
    except KeyboardInterrupt:
        outcome.interrupted = True
        print("\ninterrupted: namespaces removed, reporting what was measured", flush=True)
    return outcome


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("the forwarding benchmark needs root (network namespaces, TUN devices)")
        return 2
    # First thing, while single-threaded: everything from here on (and every
    # child process) lives in a private namespace, never the machine's own.
    _netns.unshare_net()
    signal.signal(signal.SIGTERM, _raise_interrupt)
    # Also when started with SIGINT ignored (a background job of a script):
    # Ctrl-C must always take the clean-up path.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _remove_stale_namespaces()
    started = time.monotonic()
    modes = [MODES[name] for name in dict.fromkeys(args.modes)]
    skipped = preflight(modes)
    outcome = run_all(modes, args, skipped)
    report = render(outcome, modes, args, time.monotonic() - started)
    print()
    print(report)
    args.output.write_text(report)
    print(f"written to {args.output}")
    chart_path = args.chart or args.output.with_suffix(".svg")
    cells = chart.cells_from_outcome(outcome, modes, args.streams)
    chart_path.write_text(chart.render_svg(cells, note=chart.subtitle(report)), encoding="utf-8")
    print(f"chart written to {chart_path}")
    return 130 if outcome.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
