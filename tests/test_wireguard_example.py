"""examples/wireguard.py for real: two of our peers, and our peer against wireguard-go.

Everything runs inside namespaces made for the test and joined by a veth pair;
every wait is bounded and every process is stopped and reaped.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest

from trio_tun.testing import NetNamespace, link_namespaces

# The protocol core needs `cryptography` (X25519, ChaCha20-Poly1305).
pytest.importorskip("cryptography")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from wgpeer import crypto

pytestmark = [pytest.mark.kernel]

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "wireguard.py"
needs_tools = pytest.mark.skipif(
    shutil.which("ping") is None or shutil.which("ip") is None, reason="needs ping and ip"
)
needs_wireguard_go = pytest.mark.skipif(
    shutil.which("wireguard-go") is None or shutil.which("wg") is None,
    reason="needs wireguard-go and wg (Debian: wireguard-go, wireguard-tools)",
)


class Peer:
    """examples/wireguard.py running in a namespace."""

    def __init__(self, ns: NetNamespace, conf: Path, name: str, *extra: str) -> None:
        self.name = name
        self.proc = ns.popen(
            [sys.executable, str(SCRIPT), str(conf), "--name", name, "--stats", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        self._out = b""

    def output(self) -> str:
        assert self.proc.stdout is not None
        with contextlib.suppress(BlockingIOError, TypeError):
            while chunk := os.read(self.proc.stdout.fileno(), 65536):
                self._out += chunk
        return self._out.decode(errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if f"{self.name} up" in self.output():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        pytest.fail(f"{self.name} not ready:\n{self.output()}")

    def stats(self) -> str:
        """The counters printed on SIGUSR1 (needs ``--stats``), waited for within 10 s."""
        before = self.output().count("interface ")
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while (out := self.output()).count("interface ") == before:
            assert self.proc.poll() is None, f"{self.name} exited:\n{out}"
            assert time.monotonic() < deadline, f"{self.name} printed no stats:\n{out}"
            time.sleep(0.02)
        return out[out.rindex("interface ") :]

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            pytest.fail(f"{self.name} ignored SIGTERM:\n{self.output()}")
        time.sleep(0.05)
        return code, self.output()


@contextlib.contextmanager
def running(ns: NetNamespace, conf: Path, name: str, *extra: str) -> Iterator[Peer]:
    peer = Peer(ns, conf, name, *extra)
    try:
        yield peer
    finally:
        if peer.proc.poll() is None:
            peer.proc.kill()
            peer.proc.wait(timeout=10)
        assert peer.proc.stdout is not None
        peer.proc.stdout.close()


def ping(ns: NetNamespace, target: str) -> None:
    v6 = ["-6"] if ":" in target else []
    result = ns.run(["ping", *v6, "-c", "3", "-i", "0.2", "-W", "5", target], check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b3 received", result.stdout), result.stdout


def keypair() -> tuple[str, str]:
    private = crypto.generate_private_key()
    return crypto.encode_key(private), crypto.encode_key(crypto.public_key(private))


def conf(
    path: Path, private: str, port: int, addresses: str, peer: str, allowed: str, endpoint: str
) -> Path:
    path.write_text(
        f"[Interface]\nPrivateKey = {private}\nListenPort = {port}\nAddress = {addresses}\n"
        f"MTU = 1420\n\n[Peer]\nPublicKey = {peer}\nAllowedIPs = {allowed}\n"
        + (f"Endpoint = {endpoint}\n" if endpoint else "")
    )
    return path


@contextlib.contextmanager
def underlay() -> Iterator[tuple[NetNamespace, NetNamespace]]:
    with NetNamespace.create() as left, NetNamespace.create() as right:
        link_namespaces(
            left,
            right,
            names=("wgu0", "wgu1"),
            addresses=(["10.251.0.1/24"], ["10.251.0.2/24"]),
        )
        yield left, right


@attrs.frozen
class PythonPair:
    a_conf: Path
    b_conf: Path
    a_pub: str
    b_pub: str


def python_pair(tmp_path: Path) -> PythonPair:
    """Configurations of two of our peers: A (10.78.0.1) knows B's endpoint, B learns A's."""
    (a_priv, a_pub), (b_priv, b_pub) = keypair(), keypair()
    a_conf = conf(
        tmp_path / "a.conf", a_priv, 51830, "10.78.0.1/24, fd78::1/64", b_pub,
        "10.78.0.2/32, fd78::2/128", "10.251.0.2:51831",
    )  # fmt: skip
    # B has no Endpoint: it learns A's from A's handshake (roaming).
    b_conf = conf(
        tmp_path / "b.conf", b_priv, 51831, "10.78.0.2/24, fd78::2/64", a_pub,
        "10.78.0.1/32, fd78::1/128", "",
    )  # fmt: skip
    return PythonPair(a_conf, b_conf, a_pub, b_pub)


@attrs.frozen
class PeerCounters:
    """One ``peer`` block of ``--stats`` output."""

    endpoint: str
    handshakes: int
    initiations_sent: int
    responses_sent: int
    rx_packets: int
    tx_packets: int
    drops: dict[str, int]


@attrs.frozen
class Counters:
    """The last complete ``--stats`` report in a peer's output, parsed line by line."""

    rx: dict[str, int]
    rx_drops: dict[str, int]
    tx_drops: dict[str, int]
    cookie_replies_sent: int
    mac2_accepted: int
    rate_limited: int
    peers: dict[str, PeerCounters]

    def peer(self, public_key: str) -> PeerCounters:
        assert public_key in self.peers, f"no peer {public_key} in {sorted(self.peers)}"
        return self.peers[public_key]


_COUNTS = r"(\{[^}]*\})"
_REPORT = re.compile(
    r"interface \S+: public key \S+\n"
    rf"  rx \d+ datagrams {_COUNTS}; dropped {_COUNTS}\n"
    rf"  tx \d+ datagrams; dropped {_COUNTS}\n"
    r"  under load: (\d+) cookie replies sent, (\d+) handshakes with a valid mac2,"
    r" (\d+) rate limited\n"
    r"((?:peer .*\n(?:  .*\n){3})*)"
)
_PEER = re.compile(
    r"peer (\S+)\n"
    r"  endpoint (\S+); handshakes (\d+) \(initiations sent (\d+), responses sent (\d+)\)\n"
    r"  rx (\d+) packets \d+ bytes, \d+ keepalives; tx (\d+) packets \d+ bytes, \d+ keepalives\n"
    rf"  dropped {_COUNTS}\n"
)


def _counts(text: str) -> dict[str, int]:
    value = ast.literal_eval(text)
    assert isinstance(value, dict), text
    return value


def counters(output: str) -> Counters:
    """Parse the last ``--stats`` report in *output*; fails the test if there is none.

    Every line is matched exactly, so a change of the format fails here rather than
    letting a loose substring check pass by accident.
    """
    reports = list(_REPORT.finditer(output + "\n"))
    assert reports, f"no complete stats report in:\n{output}"
    report = reports[-1]
    peers_text = report.group(7)
    peers = {}
    position = 0
    while position < len(peers_text):
        m = _PEER.match(peers_text, position)
        assert m is not None, f"unparsed peer block:\n{peers_text[position:]}"
        key, endpoint, hs, init, resp, rx, tx, drops = m.groups()
        peers[key] = PeerCounters(
            endpoint, int(hs), int(init), int(resp), int(rx), int(tx), _counts(drops)
        )
        position = m.end()
    rx, rx_drops, tx_drops = (_counts(report.group(i)) for i in (1, 2, 3))
    cookies, mac2, limited = (int(report.group(i)) for i in (4, 5, 6))
    return Counters(rx, rx_drops, tx_drops, cookies, mac2, limited, peers)


def only_peer(output: str) -> PeerCounters:
    """The counters of the one peer a configuration has."""
    peers = counters(output).peers
    assert len(peers) == 1, peers
    return next(iter(peers.values()))


def data_path_drops(report: Counters) -> dict[str, int]:
    """Device-wide send drops other than ``no_route``.

    The kernel sends a few packets of its own into the new interface (IPv6 router
    solicitations to ff02::2, from the link-local address it gave the device) that no
    peer's AllowedIPs cover.
    """
    return {k: v for k, v in report.tx_drops.items() if k != "no_route"}


def handshakes(stats: str) -> int:
    """The handshake counter of the one peer in ``--stats`` output."""
    return only_peer(stats).handshakes


@needs_tools
def test_two_python_peers_carry_ping_both_ways(tmp_path: Path) -> None:
    pair = python_pair(tmp_path)
    with underlay() as (left, right), running(left, pair.a_conf, "wgpya0") as a:
        with running(right, pair.b_conf, "wgpyb0") as b:
            a.wait_ready()
            b.wait_ready()
            ping(left, "10.78.0.2")
            ping(right, "10.78.0.1")
            ping(left, "fd78::2")
            code_b, out_b = b.stop()
        code_a, out_a = a.stop()
    assert code_a == 0, out_a
    assert code_b == 0, out_b
    b_seen_by_a = counters(out_a).peer(pair.b_pub)
    a_seen_by_b = counters(out_b).peer(pair.a_pub)
    assert (b_seen_by_a.handshakes, b_seen_by_a.initiations_sent) == (1, 1), out_a
    assert b_seen_by_a.responses_sent == 0, out_a
    assert (a_seen_by_b.handshakes, a_seen_by_b.responses_sent) == (1, 1), out_b
    assert a_seen_by_b.initiations_sent == 0, out_b
    assert a_seen_by_b.endpoint == "10.251.0.1:51830", out_b
    assert b_seen_by_a.drops == {} and a_seen_by_b.drops == {}, out_a + out_b


@contextlib.contextmanager
def wireguard_go(ns: NetNamespace, tmp_path: Path, peer_pub: str, psk: str) -> Iterator[str]:
    """wireguard-go in *ns* as 10.79.0.1, its peer at 10.251.0.2:51841; yields its name."""
    private, public = keypair()
    (tmp_path / "go.key").write_text(private + "\n")
    (tmp_path / "psk").write_text(psk + "\n")
    # wireguard-go's control socket directory is shared by every namespace: a unique name.
    ifname = f"wgtgo{os.getpid() % 10000}"
    env = {**os.environ, "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}
    go = ns.popen(
        ["wireguard-go", "-f", ifname],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not Path(f"/var/run/wireguard/{ifname}.sock").exists():
            assert time.monotonic() < deadline, "wireguard-go did not start"
            time.sleep(0.05)
        ns.run(
            ["wg", "set", ifname, "private-key", str(tmp_path / "go.key"), "listen-port", "51840"]
        )
        ns.run(
            ["wg", "set", ifname, "peer", peer_pub, "preshared-key", str(tmp_path / "psk"),
             "allowed-ips", "10.79.0.2/32", "endpoint", "10.251.0.2:51841"]
        )  # fmt: skip
        ns.run(["ip", "addr", "add", "10.79.0.1/24", "dev", ifname])
        ns.run(["ip", "link", "set", ifname, "up"])
        (tmp_path / "go.pub").write_text(public)
        yield ifname
    finally:
        go.terminate()
        try:
            go.wait(timeout=10)
        except subprocess.TimeoutExpired:
            go.kill()
            go.wait(timeout=10)


def our_side(tmp_path: Path, py_priv: str, psk: str) -> Path:
    go_pub = (tmp_path / "go.pub").read_text()
    path = conf(
        tmp_path / "py.conf", py_priv, 51841, "10.79.0.2/24", go_pub, "10.79.0.1/32",
        "10.251.0.1:51840",
    )  # fmt: skip
    path.write_text(path.read_text() + f"PresharedKey = {psk}\n")
    return path


@needs_tools
@needs_wireguard_go
def test_interop_with_wireguard_go(tmp_path: Path) -> None:
    py_priv, py_pub = keypair()
    psk = crypto.encode_key(os.urandom(32))
    with (
        underlay() as (left, right),
        wireguard_go(left, tmp_path, py_pub, psk) as ifname,
        running(right, our_side(tmp_path, py_priv, psk), "wgpyc0") as py,
    ):
        py.wait_ready()
        ping(right, "10.79.0.1")  # we initiate
        ping(left, "10.79.0.2")
        shown = left.run(["wg", "show", ifname, "latest-handshakes"]).stdout
        code, out = py.stop()
    assert code == 0, out
    assert py_pub in shown and not shown.strip().endswith("\t0"), shown
    go = counters(out).peer((tmp_path / "go.pub").read_text())
    assert (go.handshakes, go.initiations_sent, go.responses_sent) == (1, 1, 0), out
    assert go.drops == {}, out


@needs_tools
@needs_wireguard_go
def test_rekeys_with_wireguard_go_lose_nothing(tmp_path: Path) -> None:
    py_priv, py_pub = keypair()
    psk = crypto.encode_key(os.urandom(32))
    with underlay() as (left, right), wireguard_go(left, tmp_path, py_pub, psk):
        conf_path = our_side(tmp_path, py_priv, psk)
        # Timers divided by 24: a rekey every 5 s of key age, keys rejected after 7.5 s.
        with running(right, conf_path, "wgpyd0", "--shorten-timers", "24") as py:
            py.wait_ready()
            argv = ["ping", "-c", "60", "-i", "0.2", "-W", "5", "10.79.0.1"]
            result = right.run(argv, check=False)
            code, out = py.stop()
    assert code == 0, out
    assert result.returncode == 0 and " 0% packet loss" in result.stdout, result.stdout
    final = counters(out)
    go = final.peer((tmp_path / "go.pub").read_text())
    # Key age 5 s over 12 s of pings: we rekeyed (as initiator) at least twice ...
    assert go.handshakes >= 2 and go.initiations_sent >= go.handshakes, out
    assert go.responses_sent == 0, out
    # ... and every ping and reply crossed on some session: nothing on the data path
    # expired, failed to open, replayed, waited in vain or overflowed, for this peer
    # or anywhere in the device.
    assert go.drops == {}, out
    assert final.rx_drops == {} and data_path_drops(final) == {}, out
    assert go.rx_packets >= 60 and go.tx_packets >= 60, out


# -- bulk TCP through the tunnel -------------------------------------------------------------

CHUNK = 1 << 18
#: No single socket call may block longer than this (a restart is a few seconds at most).
SOCKET_TIMEOUT = 30.0
#: Every transfer ends within this, or the test fails.
TRANSFER_DEADLINE = 120.0


class TcpTransfer:
    """Random bytes over one TCP connection from *client_ns* to *server_ip* in *server_ns*.

    Blocking sockets with timeouts, on two threads; the receiver hashes what it gets.
    With *total* the sender stops after that many bytes; without, after :meth:`finish`
    (still bounded by :data:`TRANSFER_DEADLINE`).
    """

    def __init__(
        self,
        client_ns: NetNamespace,
        server_ns: NetNamespace,
        server_ip: str,
        *,
        total: int | None = None,
    ) -> None:
        self.total = total
        self.sent = hashlib.sha256()
        self.received = hashlib.sha256()
        self.bytes_sent = 0
        self.bytes_received = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._deadline = time.monotonic() + TRANSFER_DEADLINE
        family = socket.AF_INET6 if ":" in server_ip else socket.AF_INET
        self._listener = server_ns.socket(family, socket.SOCK_STREAM)
        self._listener.bind((server_ip, 0))
        self._listener.listen(1)
        self._listener.settimeout(SOCKET_TIMEOUT)
        self._client = client_ns.socket(family, socket.SOCK_STREAM)
        self._client.settimeout(SOCKET_TIMEOUT)
        self._address = (server_ip, self._listener.getsockname()[1])
        self._threads = [
            threading.Thread(target=self._guarded, args=(f,), daemon=True)
            for f in (self._serve, self._send)
        ]
        for thread in self._threads:
            thread.start()

    def _guarded(self, work: Callable[[], None]) -> None:
        try:
            work()
        except BaseException as exc:  # reported by wait()
            self.errors.append(exc)

    def _serve(self) -> None:
        conn, _ = self._listener.accept()
        with conn:
            conn.settimeout(SOCKET_TIMEOUT)
            while chunk := conn.recv(1 << 20):
                if time.monotonic() > self._deadline:
                    raise TimeoutError(f"still receiving after {TRANSFER_DEADLINE} s")
                self.received.update(chunk)
                self.bytes_received += len(chunk)

    def _send(self) -> None:
        self._client.connect(self._address)
        while not self._stop.is_set():
            if time.monotonic() > self._deadline:
                raise TimeoutError(f"still sending after {TRANSFER_DEADLINE} s")
            size = CHUNK if self.total is None else min(CHUNK, self.total - self.bytes_sent)
            if size <= 0:
                break
            data = os.urandom(size)
            self._client.sendall(data)
            self.sent.update(data)
            self.bytes_sent += size
        self._client.shutdown(socket.SHUT_WR)

    def __enter__(self) -> TcpTransfer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # On the way out of a failed test: closing the sockets ends both threads.
        self._stop.set()
        self._client.close()
        self._listener.close()

    def wait_received(self, count: int) -> None:
        """Wait (bounded) until the receiver has *count* bytes; fails the test otherwise."""
        deadline = time.monotonic() + TRANSFER_DEADLINE
        for _ in range(int(TRANSFER_DEADLINE / 0.02)):
            if self.bytes_received >= count or self.errors or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert not self.errors, self.errors
        assert self.bytes_received >= count, f"stuck at {self.bytes_received} bytes"

    def finish(self) -> None:
        """Stop sending (an open-ended transfer) and wait for the receiver to see the end."""
        self._stop.set()

    def wait(self) -> None:
        """Join both threads (bounded) and assert the bytes arrived exactly."""
        for thread in self._threads:
            thread.join(max(0.0, self._deadline - time.monotonic()) + SOCKET_TIMEOUT)
        assert not any(t.is_alive() for t in self._threads), "transfer did not end in time"
        assert not self.errors, self.errors
        assert self.total is None or self.bytes_sent == self.total, self.bytes_sent
        assert self.bytes_received == self.bytes_sent, (self.bytes_received, self.bytes_sent)
        assert self.received.hexdigest() == self.sent.hexdigest()


MB = 1 << 20


@needs_tools
@needs_wireguard_go
def test_100mb_of_tcp_each_way_with_wireguard_go(tmp_path: Path) -> None:
    py_priv, py_pub = keypair()
    psk = crypto.encode_key(os.urandom(32))
    with (
        underlay() as (left, right),
        wireguard_go(left, tmp_path, py_pub, psk),
        running(right, our_side(tmp_path, py_priv, psk), "wgpye0") as py,
    ):
        py.wait_ready()
        # Both directions at once: each side's encrypt and decrypt paths under load together.
        with (
            TcpTransfer(right, left, "10.79.0.1", total=100 * MB) as up,
            TcpTransfer(left, right, "10.79.0.2", total=100 * MB) as down,
        ):
            up.wait()
            down.wait()
        code, out = py.stop()
    assert code == 0, out
    go = counters(out).peer((tmp_path / "go.pub").read_text())
    assert go.handshakes >= 1 and go.drops == {}, out


@needs_tools
def test_100mb_of_tcp_each_way_between_two_python_peers(tmp_path: Path) -> None:
    pair = python_pair(tmp_path)
    with (
        underlay() as (left, right),
        running(left, pair.a_conf, "wgpyf0") as a,
        running(right, pair.b_conf, "wgpyg0") as b,
    ):
        a.wait_ready()
        b.wait_ready()
        # B has no Endpoint for A: until A's first handshake, whatever B sends to A is
        # dropped as no_endpoint (B's SYN, were it first).  The handshake goes first.
        ping(left, "10.78.0.2")
        with (
            TcpTransfer(left, right, "10.78.0.2", total=100 * MB) as a_to_b,
            TcpTransfer(right, left, "10.78.0.1", total=100 * MB) as b_to_a,
        ):
            a_to_b.wait()
            b_to_a.wait()
        code_b, out_b = b.stop()
        code_a, out_a = a.stop()
    assert code_a == 0, out_a
    assert code_b == 0, out_b
    b_seen_by_a = counters(out_a).peer(pair.b_pub)
    a_seen_by_b = counters(out_b).peer(pair.a_pub)
    assert b_seen_by_a.handshakes >= 1 and a_seen_by_b.handshakes >= 1, out_a + out_b
    assert b_seen_by_a.drops == {} and a_seen_by_b.drops == {}, out_a + out_b


@needs_tools
@needs_wireguard_go
def test_restart_mid_transfer_recovers_with_a_new_handshake(tmp_path: Path) -> None:
    py_priv, py_pub = keypair()
    psk = crypto.encode_key(os.urandom(32))
    with (
        underlay() as (left, right),
        wireguard_go(left, tmp_path, py_pub, psk),
        contextlib.ExitStack() as stack,
    ):
        conf_path = our_side(tmp_path, py_priv, psk)
        # We send, wireguard-go's side receives.  The connection outlives both of our
        # processes: the kernel keeps the socket while the TUN device (and its address)
        # is gone, and TCP retransmits into the new one, which must handshake first.
        # (Were we only ACKing, nothing would make the new process initiate; wireguard-go
        # would, after 15 s of silence, and TCP's backed-off retransmits would follow.)
        with running(right, conf_path, "wgpyh0") as first:
            first.wait_ready()
            transfer = stack.enter_context(TcpTransfer(right, left, "10.79.0.1"))
            transfer.wait_received(8 * MB)
            code_1, out_1 = first.stop()
        with running(right, conf_path, "wgpyh0") as second:
            restarted_at = transfer.bytes_received
            second.wait_ready()
            transfer.wait_received(restarted_at + 8 * MB)
            transfer.finish()
            transfer.wait()
            code_2, out_2 = second.stop()
    assert code_1 == 0, out_1
    assert code_2 == 0, out_2
    go_pub = (tmp_path / "go.pub").read_text()
    before, after = counters(out_1).peer(go_pub), counters(out_2).peer(go_pub)
    assert before.handshakes >= 1 and before.drops == {}, out_1
    # The new process knows no session: traffic resumed because it initiated a
    # handshake that wireguard-go accepted (a fresh TAI64N timestamp), not because
    # wireguard-go gave up on the old session (that takes 15 s) and initiated itself.
    assert after.handshakes >= 1 and after.initiations_sent >= 1, out_2
    assert after.responses_sent == 0, out_2
    assert after.drops == {}, out_2


@needs_tools
@needs_wireguard_go
def test_rekey_during_a_tcp_transfer_with_wireguard_go(tmp_path: Path) -> None:
    py_priv, py_pub = keypair()
    psk = crypto.encode_key(os.urandom(32))
    with underlay() as (left, right), wireguard_go(left, tmp_path, py_pub, psk):
        conf_path = our_side(tmp_path, py_priv, psk)
        # Timers divided by 30: we rekey once our key is 4 s old; keys die at 6 s.
        with running(right, conf_path, "wgpyi0", "--shorten-timers", "30") as py:
            py.wait_ready()
            with TcpTransfer(right, left, "10.79.0.1") as transfer:
                transfer.wait_received(1 * MB)
                first = during = handshakes(py.stats())
                deadline = time.monotonic() + 60
                for _ in range(240):  # 4 s of key age needed; at most 60 s
                    if (during := handshakes(py.stats())) > first or time.monotonic() > deadline:
                        break
                    time.sleep(0.25)
                assert during > first, f"no rekey within 60 s:\n{py.output()}"
                # The connection must go on over the new session, too.
                transfer.wait_received(transfer.bytes_received + 8 * MB)
                transfer.finish()
                transfer.wait()
            code, out = py.stop()
    assert code == 0, out
    assert first >= 1 and during > first, out
    final = counters(out)
    go = final.peer((tmp_path / "go.pub").read_text())
    assert go.handshakes >= during and go.responses_sent == 0, out
    # A rekey ahead of time loses nothing: no packet expired, failed to open, was
    # replayed, waited in vain or overflowed, for this peer or anywhere in the device.
    assert go.drops == {}, out
    assert final.rx_drops == {} and data_path_drops(final) == {}, out


@needs_tools
def test_restart_mid_transfer_between_two_python_peers(tmp_path: Path) -> None:
    pair = python_pair(tmp_path)
    with (
        underlay() as (left, right),
        running(right, pair.b_conf, "wgpyk0") as b,
        contextlib.ExitStack() as stack,
    ):
        b.wait_ready()
        # A (the one that knows an endpoint) sends and is restarted; B only ACKs, so
        # traffic resumes only if the new A initiates when TCP retransmits into it.
        with running(left, pair.a_conf, "wgpyj0") as first:
            first.wait_ready()
            transfer = stack.enter_context(TcpTransfer(left, right, "10.78.0.2"))
            transfer.wait_received(8 * MB)
            code_1, out_1 = first.stop()
        with running(left, pair.a_conf, "wgpyj0") as second:
            restarted_at = transfer.bytes_received
            second.wait_ready()
            transfer.wait_received(restarted_at + 8 * MB)
            transfer.finish()
            transfer.wait()
            code_2, out_2 = second.stop()
        code_b, out_b = b.stop()
    assert (code_1, code_2, code_b) == (0, 0, 0), out_1 + out_2 + out_b
    before, after = counters(out_1).peer(pair.b_pub), counters(out_2).peer(pair.b_pub)
    assert before.handshakes >= 1 and before.drops == {}, out_1
    assert after.handshakes >= 1 and after.initiations_sent >= 1, out_2
    assert after.responses_sent == 0 and after.drops == {}, out_2
    # B answered one handshake of each A process (a fresher timestamp each time) and
    # dropped nothing: the new session replaced the old one cleanly.
    report_b = counters(out_b)
    a_seen_by_b = report_b.peer(pair.a_pub)
    assert a_seen_by_b.handshakes >= 2 and a_seen_by_b.responses_sent >= 2, out_b
    assert a_seen_by_b.initiations_sent == 0, out_b
    assert a_seen_by_b.drops == {} and report_b.rx_drops == {}, out_b


@needs_tools
def test_rekey_during_tcp_both_ways_between_two_python_peers(tmp_path: Path) -> None:
    pair = python_pair(tmp_path)
    # Both sides' timers divided by 30: A (the initiator) rekeys once its key is 4 s
    # old, and both sides refuse keys older than 6 s, so the new session must be in use
    # in both directions before the old one dies.
    shorten = ("--shorten-timers", "30")
    with (
        underlay() as (left, right),
        running(left, pair.a_conf, "wgpyl0", *shorten) as a,
        running(right, pair.b_conf, "wgpym0", *shorten) as b,
    ):
        a.wait_ready()
        b.wait_ready()
        ping(left, "10.78.0.2")  # B learns A's endpoint before it has anything to send
        with (
            TcpTransfer(left, right, "10.78.0.2") as a_to_b,
            TcpTransfer(right, left, "10.78.0.1") as b_to_a,
        ):
            a_to_b.wait_received(1 * MB)
            b_to_a.wait_received(1 * MB)
            first = during = handshakes(a.stats())
            deadline = time.monotonic() + 60
            for _ in range(240):  # 4 s of key age needed; at most 60 s
                if (during := handshakes(a.stats())) > first or time.monotonic() > deadline:
                    break
                time.sleep(0.25)
            assert during > first, f"no rekey within 60 s:\n{a.output()}"
            # Both connections go on over the new session.
            a_to_b.wait_received(a_to_b.bytes_received + 8 * MB)
            b_to_a.wait_received(b_to_a.bytes_received + 8 * MB)
            a_to_b.finish()
            b_to_a.finish()
            a_to_b.wait()
            b_to_a.wait()
        code_b, out_b = b.stop()
        code_a, out_a = a.stop()
    assert (code_a, code_b) == (0, 0), out_a + out_b
    report_a, report_b = counters(out_a), counters(out_b)
    b_seen_by_a, a_seen_by_b = report_a.peer(pair.b_pub), report_b.peer(pair.a_pub)
    assert first >= 1 and b_seen_by_a.handshakes >= during > first, out_a
    assert a_seen_by_b.handshakes >= 2, out_b
    # A rekey ahead of time loses nothing on either side: no datagram on an unknown
    # or expired session, no failed open, no replay, no packet waiting in vain.
    assert b_seen_by_a.drops == {} and a_seen_by_b.drops == {}, out_a + out_b
    assert report_a.rx_drops == {} and report_b.rx_drops == {}, out_a + out_b
    assert data_path_drops(report_a) == {} and data_path_drops(report_b) == {}, out_a + out_b


@needs_tools
@needs_wireguard_go
def test_wireguard_go_gets_a_cookie_and_retries_with_mac2(tmp_path: Path) -> None:
    py_priv, py_pub = keypair()
    psk = crypto.encode_key(os.urandom(32))
    with (
        underlay() as (left, right),
        wireguard_go(left, tmp_path, py_pub, psk) as ifname,
        # Always under load: no handshake is answered without a cookie first.
        running(
            right, our_side(tmp_path, py_priv, psk), "wgpyn0", "--under-load-threshold", "0"
        ) as py,
    ):
        py.wait_ready()
        # wireguard-go initiates; it stores our cookie reply and sends its next
        # initiation (REKEY_TIMEOUT, 5 s, later) with mac2.  One ping waits for that.
        first = left.run(["ping", "-c", "1", "-W", "20", "10.79.0.2"], check=False)
        assert first.returncode == 0, first.stdout + first.stderr + py.output()
        ping(left, "10.79.0.2")
        shown = left.run(["wg", "show", ifname, "latest-handshakes"]).stdout
        code, out = py.stop()
    assert code == 0, out
    assert py_pub in shown and not shown.strip().endswith("\t0"), shown
    final = counters(out)
    # Every initiation without mac2 got a cookie reply and nothing else; the one that
    # came back with a valid mac2 (and a token from its source's bucket) was answered.
    assert final.cookie_replies_sent >= 1, out
    assert final.rx.get("cookie_sent") == final.cookie_replies_sent, out
    assert final.mac2_accepted == 1 and final.rate_limited == 0, out
    assert final.rx.get("initiation") == 1, out
    assert final.rx_drops == {}, out
    go = final.peer((tmp_path / "go.pub").read_text())
    assert (go.handshakes, go.initiations_sent, go.responses_sent) == (1, 0, 1), out
    assert go.rx_packets >= 4 and go.tx_packets >= 4 and go.drops == {}, out
