"""examples/wireguard.py for real: two of our peers, and our peer against wireguard-go.

Everything runs inside namespaces made for the test and joined by a veth pair;
every wait is bounded and every process is stopped and reaped.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

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


@needs_tools
def test_two_python_peers_carry_ping_both_ways(tmp_path: Path) -> None:
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
    with underlay() as (left, right), running(left, a_conf, "wgpya0") as a:
        with running(right, b_conf, "wgpyb0") as b:
            a.wait_ready()
            b.wait_ready()
            ping(left, "10.78.0.2")
            ping(right, "10.78.0.1")
            ping(left, "fd78::2")
            code_b, out_b = b.stop()
        code_a, out_a = a.stop()
    assert code_a == 0, out_a
    assert code_b == 0, out_b
    assert "handshakes 1 (initiations sent 1, responses sent 0)" in out_a, out_a
    assert "handshakes 1 (initiations sent 0, responses sent 1)" in out_b, out_b
    assert "endpoint 10.251.0.1:51830" in out_b, out_b


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
    assert "handshakes 1 (initiations sent 1" in out, out


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
    handshakes = re.search(r"handshakes (\d+)", out)
    assert handshakes is not None and int(handshakes.group(1)) >= 2, out
    assert "dropped {}" in out, out
