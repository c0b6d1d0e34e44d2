"""The scripts under examples/ run for real, each inside private network namespaces.

Every device the examples create and every packet ``ping`` sends lives in a
namespace made for the test (the ``netns`` fixture, or ``NetNamespace.create()``)
and removed afterwards.  Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from trio_tun.testing import NetNamespace, link_namespaces

pytestmark = [pytest.mark.kernel]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
READY_TIMEOUT = 20.0
EXIT_TIMEOUT = 30.0

needs_ping = pytest.mark.skipif(shutil.which("ping") is None, reason="needs ping (iputils-ping)")


class Example:
    """One example script running as a child process inside a namespace."""

    def __init__(self, ns: NetNamespace, script: str, args: Sequence[str]) -> None:
        self.ns = ns
        self.proc = ns.popen(
            [sys.executable, str(EXAMPLES / script), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert self.proc.stdout is not None
        self._fd = self.proc.stdout.fileno()
        os.set_blocking(self._fd, False)
        self._output = b""
        self._finished: str | None = None

    def output(self) -> str:
        """Everything the script printed so far (stdout and stderr), without blocking."""
        if self._finished is None:
            with contextlib.suppress(BlockingIOError):
                while chunk := os.read(self._fd, 65536):
                    self._output += chunk
        return self._output.decode(errors="replace")

    def wait_ready(self, device: str, marker: str) -> None:
        """Poll (bounded) until *device* exists and the script has printed *marker*.

        The device appears as soon as it is created; the line is printed once it
        is configured (addresses, up), which is when pinging it makes sense.
        """
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"example exited early with {self.proc.returncode}:\n{self.finish()}")
            if device in self.ns.links() and marker in self.output():
                return
            time.sleep(0.05)
        pytest.fail(f"{device} not ready within {READY_TIMEOUT} s:\n{self.output()}")

    def wait_exit(self, timeout: float = EXIT_TIMEOUT) -> int:
        """Wait (bounded) for the script to stop by itself; its exit status."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"example still running after {timeout} s:\n{self.finish()}")

    def finish(self) -> str:
        """Make sure the child is gone (killing it if needed); all it printed."""
        if self._finished is None:
            if self.proc.poll() is None:
                self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
            self._finished = self.output()
            assert self.proc.stdout is not None
            self.proc.stdout.close()
        return self._finished


@contextlib.contextmanager
def example(ns: NetNamespace, script: str, *args: str) -> Iterator[Example]:
    ex = Example(ns, script, args)
    try:
        yield ex
    finally:
        ex.finish()


def ping(ns: NetNamespace, target: str, *, count: int = 3, ipv6: bool = False) -> int:
    """Ping *target* from inside *ns*; the number of replies (asserts ping succeeded)."""
    argv = ["ping", *(["-6"] if ipv6 else []), "-c", str(count), "-i", "0.2", "-W", "5", target]
    result = ns.run(argv, timeout=60, check=False)
    text = result.stdout + result.stderr
    assert result.returncode == 0, text
    received = re.search(r"(\d+) (?:packets )?received", result.stdout)
    assert received is not None, text
    return int(received.group(1))


def tcp_send(client_ns: NetNamespace, server_ns: NetNamespace, server: str, size: int) -> bool:
    """*size* random bytes over TCP from *client_ns* to *server*; whether they arrived intact.

    Blocking sockets with timeouts on a thread: bounded, and no event loop needed.
    """
    data = os.urandom(size)
    digest = hashlib.sha256()
    listener = server_ns.socket(socket.AF_INET, socket.SOCK_STREAM)
    client = client_ns.socket(socket.AF_INET, socket.SOCK_STREAM)

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(10)
                while chunk := conn.recv(1 << 20):
                    digest.update(chunk)

    with listener, client:
        listener.bind((server, 0))
        listener.listen(1)
        listener.settimeout(10)
        client.settimeout(10)
        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        client.connect((server, listener.getsockname()[1]))
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)
        thread.join(30)
        assert not thread.is_alive(), "the receiver did not finish within 30 s"
    return digest.hexdigest() == hashlib.sha256(data).hexdigest()


@needs_ping
def test_ping_responder_answers_ipv4(netns: NetNamespace) -> None:
    args = ["--name", "pingex0", "--address", "10.8.0.1/24", "--count", "3", "--timeout", "30"]
    with example(netns, "ping_responder.py", *args) as ex:
        ex.wait_ready("pingex0", "answering pings")
        # Any host of the subnet answers, not just .2.
        assert ping(netns, "10.8.0.42") == 3
        assert ex.wait_exit() == 0, ex.finish()
        assert "sent 3 echo replies" in ex.finish()
    assert "pingex0" not in netns.links()


@needs_ping
def test_ping_responder_answers_ipv6(netns: NetNamespace) -> None:
    args = ["--name", "pingex1", "--address", "fd00:8::1/64", "--count", "3", "--timeout", "30"]
    with example(netns, "ping_responder.py", *args) as ex:
        ex.wait_ready("pingex1", "answering pings")
        assert ping(netns, "fd00:8::2", ipv6=True) == 3
        assert ex.wait_exit() == 0, ex.finish()


@needs_ping
def test_asyncio_echo_answers_ping6(netns: NetNamespace) -> None:
    args = ["--name", "aioex0", "--count", "3", "--timeout", "30"]
    with example(netns, "asyncio_echo.py", *args) as ex:
        ex.wait_ready("aioex0", "(asyncio)")
        assert ping(netns, "fd00:8::2", ipv6=True) == 3
        assert ex.wait_exit() == 0, ex.finish()
        assert "sent 3 echo replies" in ex.finish()
    assert "aioex0" not in netns.links()


def test_ping_responder_timeout_bounds_it(netns: NetNamespace) -> None:
    args = ["--name", "pingex2", "--count", "1", "--timeout", "0.5"]
    with example(netns, "ping_responder.py", *args) as ex:
        assert ex.wait_exit() == 1  # nobody pinged: timed out before --count replies
        assert "timed out" in ex.finish()


@needs_ping
def test_toy_vpn_carries_ping_and_tcp_between_namespaces() -> None:
    duration = "10"
    with NetNamespace.create() as left, NetNamespace.create() as right:
        link_namespaces(
            left,
            right,
            names=("under0", "under1"),
            addresses=(["10.99.0.1/24"], ["10.99.0.2/24"]),
        )
        common = ["--name", "vpnex0", "--duration", duration]
        left_args = ["--local", "10.99.0.1:51820", "--peer", "10.99.0.2:51820"]
        right_args = ["--local", "10.99.0.2:51820", "--peer", "10.99.0.1:51820"]
        with (
            example(left, "toy_vpn.py", *left_args, "--tun-address", "10.8.0.1/24", *common) as a,
            example(right, "toy_vpn.py", *right_args, "--tun-address", "10.8.0.2/24", *common) as b,
        ):
            a.wait_ready("vpnex0", "vpnex0 up")
            b.wait_ready("vpnex0", "vpnex0 up")
            assert ping(left, "10.8.0.2") == 3
            assert ping(right, "10.8.0.1") == 3
            assert tcp_send(left, right, "10.8.0.2", 16 * 1024 * 1024)
            assert a.wait_exit() == 0, a.finish()
            assert b.wait_exit() == 0, b.finish()
            out_a, out_b = a.finish(), b.finish()
        # Each side carried at least the six echo requests or replies it sent.
        for out in (out_a, out_b):
            carried = re.search(r"(\d+) packets into the tunnel, (\d+) out of it", out)
            assert carried is not None, out
            assert int(carried.group(1)) >= 6 and int(carried.group(2)) >= 6, out
            assert "UDP GSO True, GRO True" in out, out
        # The data direction went out batched: many datagrams per system call
        # (UDP GSO), and came in the same way (UDP GRO).
        udp = re.compile(
            r"UDP: (\d+) datagrams sent in (\d+) system calls .*, (\d+) received in (\d+)"
        )
        sent, got = udp.search(out_a), udp.search(out_b)
        assert sent is not None and got is not None, (out_a, out_b)
        assert int(sent.group(1)) >= 16 * 1024 * 1024 // 1400, out_a
        assert int(sent.group(1)) > 4 * int(sent.group(2)), out_a
        assert int(got.group(3)) > 4 * int(got.group(4)), out_b
        assert "vpnex0" not in left.links() and "vpnex0" not in right.links()
