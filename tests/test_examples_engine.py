"""The engine examples run for real: multiqueue_forwarder.py and graceful_vpn.py (TunnelPump).

Every device lives in a namespace made for the test and removed afterwards
(``NetNamespace.create``, named ones for ``--netns-a/--netns-b``); every
packet stays inside them; every wait is bounded and every child is killed in
the end (see ``Example`` in test_examples.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
import trio

from test_examples import Example, example, needs_ping, ping
from trio_tun.testing import NetNamespace, link_namespaces

pytestmark = [pytest.mark.kernel]

READY_TIMEOUT = 20.0
#: The --grace given to the examples, and the allowance on top of it for a
#: loaded 2-core VM (trio start-up, netlink clean-up, device deletion).
GRACE = 1.0
EXIT_BOUND = GRACE + 15.0
TRANSFER_TIMEOUT = 60.0

HAVE_PING = shutil.which("ping") is not None

FORWARDER_ENGINE_LINE = re.compile(
    r"(?P<name>\S+): received (?P<received>\d+), delivered (?P<delivered>\d+), "
    r"rx_dropped (?P<rx_dropped>\d+); accepted (?P<accepted>\d+) = written (?P<written>\d+) "
    r"\+ dropped (?P<dropped>\d+) \(in flight (?P<in_flight>\d+)\): (?P<verdict>\w+)"
)
VPN_ACCOUNTING = re.compile(
    r"accounting: accepted (?P<accepted>\d+) = written (?P<written>\d+) \+ "
    r"dropped (?P<dropped>\d+) \(in flight (?P<in_flight>\d+)\); "
    r"read from the device (?P<tun_received>\d+), from the peer (?P<udp_received>\d+)"
)
VPN_DATAGRAMS = re.compile(r"(?P<sent>\d+) datagrams sent to the peer, (?P<received>\d+) received")


@contextlib.contextmanager
def named_namespaces(*roles: str) -> Iterator[list[NetNamespace]]:
    """Namespaces published under /run/netns (unique names), removed afterwards."""
    made: list[NetNamespace] = []
    try:
        for role in roles:
            made.append(NetNamespace.create(f"trio-tun-test-{os.getpid()}-{role}"))
        yield made
    finally:
        for ns in reversed(made):
            ns.close()


def wait_for(ex: Example, marker: str, links: list[tuple[NetNamespace, str]]) -> None:
    """Poll (bounded) until *ex* printed *marker* and every (namespace, device) exists."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if ex.proc.poll() is not None:
            pytest.fail(f"example exited early with {ex.proc.returncode}:\n{ex.finish()}")
        if marker in ex.output() and all(dev in ns.links() for ns, dev in links):
            return
        time.sleep(0.05)
    pytest.fail(f"not ready within {READY_TIMEOUT} s:\n{ex.output()}")


async def tcp_transfer(
    client_ns: NetNamespace, server_ns: NetNamespace, server: str, flows: int, size: int
) -> list[tuple[str, str, int]]:
    """*flows* concurrent TCP transfers; (sha256 sent, sha256 received, bytes received) each."""
    listener = trio.socket.from_stdlib_socket(server_ns.socket(socket.AF_INET, socket.SOCK_STREAM))
    received: dict[int, tuple[str, int]] = {}
    sent: dict[int, str] = {}

    async def serve_one(conn: trio.socket.SocketType) -> None:
        digest, count, flow = hashlib.sha256(), 0, -1
        with conn:
            while chunk := await conn.recv(1 << 16):
                if flow < 0:
                    flow = chunk[0]  # the first byte names the flow
                digest.update(chunk)
                count += len(chunk)
        received[flow] = (digest.hexdigest(), count)

    async def client(flow: int) -> None:
        payload = bytes([flow]) + os.urandom(size - 1)
        sent[flow] = hashlib.sha256(payload).hexdigest()
        sock = trio.socket.from_stdlib_socket(client_ns.socket(socket.AF_INET, socket.SOCK_STREAM))
        with sock:
            await sock.connect((server, port))
            view = memoryview(payload)
            while view:
                view = view[await sock.send(view[: 1 << 16]) :]
            sock.shutdown(socket.SHUT_WR)

    with listener, trio.fail_after(TRANSFER_TIMEOUT):
        await listener.bind((server, 0))
        listener.listen(flows)
        port = listener.getsockname()[1]
        async with trio.open_nursery() as nursery:
            for flow in range(flows):
                nursery.start_soon(client, flow)
            for _ in range(flows):
                conn, _ = await listener.accept()
                nursery.start_soon(serve_one, conn)
    return [(sent[f], *received.get(f, ("", 0))) for f in range(flows)]


def test_multiqueue_forwarder_carries_tcp_and_ping(netns: NetNamespace) -> None:
    flows, size = 4, 4 * 1024 * 1024
    with named_namespaces("mq-a", "mq-b") as (a_ns, b_ns):
        assert a_ns.name is not None and b_ns.name is not None
        args = [
            *("--queues", "2", "--name-a", "mqex-a", "--name-b", "mqex-b"),
            *("--address-a", "10.21.1.1/24", "--address-b", "10.21.2.1/24"),
            *("--netns-a", a_ns.name, "--netns-b", b_ns.name),
            *("--grace", str(GRACE), "--duration", "60"),
        ]
        # The forwarder itself runs in the test's own private namespace; its
        # devices go to the two named ones.
        with example(netns, "multiqueue_forwarder.py", *args) as ex:
            wait_for(ex, "forwarding mqex-a", [(a_ns, "mqex-a"), (b_ns, "mqex-b")])
            results = trio.run(tcp_transfer, a_ns, b_ns, "10.21.2.1", flows, size)
            if HAVE_PING:
                assert ping(a_ns, "10.21.2.1") == 3
            ex.proc.send_signal(signal.SIGTERM)
            assert ex.wait_exit(EXIT_BOUND) == 0, ex.finish()
            out = ex.finish()
        assert "mqex-a" not in a_ns.links() and "mqex-b" not in b_ns.links()
    for sent, got, count in results:
        assert count == size and sent == got
    lines = {m["name"]: m for m in FORWARDER_ENGINE_LINE.finditer(out)}
    assert set(lines) == {"mqex-a", "mqex-b"}, out
    for m in lines.values():
        assert m["verdict"] == "balanced" and int(m["in_flight"]) == 0, out
        assert int(m["accepted"]) == int(m["written"]) + int(m["dropped"]), out
        assert int(m["received"]) == int(m["delivered"]) + int(m["rx_dropped"]), out
    # B's engine wrote the data direction: at least one segment per 1448 bytes.
    assert int(lines["mqex-b"]["written"]) >= flows * size // 1448, out
    assert "q0 " in out and "q1 " in out


PASSTHROUGH_FORWARDER_LINE = re.compile(
    r"forwarder: received (?P<received>\d+); accepted (?P<accepted>\d+) = written "
    r"(?P<written>\d+) \+ dropped (?P<dropped>\d+) \(in flight (?P<in_flight>\d+)\): "
    r"(?P<verdict>\w+)"
)
PASSTHROUGH_DEVICE_LINE = re.compile(
    r"(?P<name>\S+): read (?P<rx>\d+) frames \((?P<rx_bytes>\d+) bytes\), "
    r"wrote (?P<tx>\d+) \((?P<tx_bytes>\d+) bytes\), dropped (?P<dropped>\d+)"
)


@pytest.mark.parametrize("offload", [True, False], ids=["offload", "no-offload"])
def test_passthrough_forwarder_carries_tcp_and_ping(netns: NetNamespace, offload: bool) -> None:
    flows, size = 2, 4 * 1024 * 1024
    suffix = "o" if offload else "p"
    name_a, name_b = f"ptex-a{suffix}", f"ptex-b{suffix}"
    with named_namespaces(f"pt-a{suffix}", f"pt-b{suffix}") as (a_ns, b_ns):
        assert a_ns.name is not None and b_ns.name is not None
        args = [
            *("--name-a", name_a, "--name-b", name_b),
            *("--address-a", "10.31.1.1/24", "--address-b", "10.31.2.1/24"),
            *("--netns-a", a_ns.name, "--netns-b", b_ns.name),
            *("--grace", str(GRACE), "--duration", "60"),
            *(() if offload else ("--no-offload",)),
        ]
        with example(netns, "passthrough_forwarder.py", *args) as ex:
            wait_for(ex, f"forwarding {name_a}", [(a_ns, name_a), (b_ns, name_b)])
            results = trio.run(tcp_transfer, a_ns, b_ns, "10.31.2.1", flows, size)
            if HAVE_PING:
                assert ping(a_ns, "10.31.2.1") == 3
            ex.proc.send_signal(signal.SIGTERM)
            assert ex.wait_exit(EXIT_BOUND) == 0, ex.finish()
            out = ex.finish()
        assert name_a not in a_ns.links() and name_b not in b_ns.links()
    for sent, got, count in results:
        assert count == size and sent == got
    assert ("offload none" in out) is not offload, out
    forwarder = PASSTHROUGH_FORWARDER_LINE.search(out)
    assert forwarder is not None and forwarder["verdict"] == "balanced", out
    assert int(forwarder["in_flight"]) == 0, out
    devices = {m["name"]: m for m in PASSTHROUGH_DEVICE_LINE.finditer(out)}
    assert set(devices) == {name_a, name_b}, out
    a, b = devices[name_a], devices[name_b]
    # Every frame A read was written to B and the other way round; what the
    # forwarder counts is the devices' sum (nothing dropped on a quiet link).
    assert a["rx"] == b["tx"] and b["rx"] == a["tx"], out
    assert a["rx_bytes"] == b["tx_bytes"] and b["rx_bytes"] == a["tx_bytes"], out
    assert int(forwarder["received"]) == int(a["rx"]) + int(b["rx"]), out
    assert int(forwarder["written"]) == int(a["tx"]) + int(b["tx"]), out
    assert int(forwarder["dropped"]) == 0 and int(a["dropped"]) == int(b["dropped"]) == 0, out
    frames_to_b = int(b["tx"])
    bytes_to_b = int(b["tx_bytes"])
    assert bytes_to_b >= flows * size, out
    if offload:
        # Super-packets crossed whole: far fewer frames than 1,448-byte segments.
        assert frames_to_b < flows * size // 1448 // 4, out
    else:
        # One packet per frame: at least one frame per MSS-sized segment.
        assert frames_to_b >= flows * size // 1460, out


def test_multiqueue_forwarder_stops_after_duration(netns: NetNamespace) -> None:
    with named_namespaces("mq-c", "mq-d") as (a_ns, b_ns):
        assert a_ns.name is not None and b_ns.name is not None
        args = [
            *("--queues", "4", "--name-a", "mqex-c", "--name-b", "mqex-d"),
            *("--netns-a", a_ns.name, "--netns-b", b_ns.name),
            *("--grace", "0.5", "--duration", "1"),
        ]
        with example(netns, "multiqueue_forwarder.py", *args) as ex:
            assert ex.wait_exit(EXIT_BOUND) == 0, ex.finish()
            out = ex.finish()
    assert "over 4 queue(s)" in out
    assert out.count("balanced") == 2 and "UNBALANCED" not in out, out


@needs_ping
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_graceful_vpn_flushes_and_exits_0_on_signal(signum: signal.Signals) -> None:
    with NetNamespace.create() as left, NetNamespace.create() as right:
        link_namespaces(
            left, right, names=("gund0", "gund1"), addresses=(["10.98.0.1/24"], ["10.98.0.2/24"])
        )
        common = ["--name", "gvpn0", "--grace", str(GRACE), "--duration", "60"]
        left_args = ["--local", "10.98.0.1:51821", "--peer", "10.98.0.2:51821"]
        right_args = ["--local", "10.98.0.2:51821", "--peer", "10.98.0.1:51821"]
        with (
            example(
                left, "graceful_vpn.py", *left_args, "--tun-address", "10.9.0.1/24", *common
            ) as a,
            example(
                right, "graceful_vpn.py", *right_args, "--tun-address", "10.9.0.2/24", *common
            ) as b,
        ):
            a.wait_ready("gvpn0", "gvpn0 up")
            b.wait_ready("gvpn0", "gvpn0 up")
            assert ping(left, "10.9.0.2") == 3
            assert ping(right, "10.9.0.1") == 3
            # Keep packets in flight through both pumps while the signal lands.
            flood = left.popen(
                ["ping", "-q", "-i", "0.002", "-w", "10", "10.9.0.2"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                time.sleep(0.5)
                started = time.monotonic()
                a.proc.send_signal(signum)
                b.proc.send_signal(signum)
                codes = (a.wait_exit(EXIT_BOUND), b.wait_exit(EXIT_BOUND))
                elapsed = time.monotonic() - started
            finally:
                if flood.poll() is None:
                    flood.kill()
                flood.wait(timeout=10)
            outputs = (a.finish(), b.finish())
        assert codes == (0, 0), outputs
        assert elapsed < EXIT_BOUND
        assert "gvpn0" not in left.links() and "gvpn0" not in right.links()
    for out in outputs:
        assert f"{signum.name}: stopping" in out, out
        m = VPN_ACCOUNTING.search(out)
        assert m is not None, out
        counts = {k: int(v) for k, v in m.groupdict().items()}
        assert counts["in_flight"] == 0, out
        assert counts["accepted"] == counts["written"] + counts["dropped"], out
        # At least the six pings each side carried went through its pump, both ways
        # (written counts TUN and UDP writes: at least 12).
        assert counts["tun_received"] >= 6 and counts["udp_received"] >= 6, out
        assert counts["written"] >= 12, out
        # The batched transport carried them: the sockets' counters agree.
        d = VPN_DATAGRAMS.search(out)
        assert d is not None, out
        assert int(d["sent"]) >= 6 and int(d["received"]) >= 6, out
        assert "UDP GSO True, GRO True" in out, out
