"""``python -m trio_tun demo`` and ``info`` run for real (the demo makes its own namespaces)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.kernel]


def run_module(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trio_tun", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.skipif(shutil.which("ping") is None, reason="iputils-ping not installed")
def test_demo_compares_the_batched_and_the_per_datagram_tunnel() -> None:
    result = run_module("demo")
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "demo: OK" in out
    assert "ping 10.8.0.2: 5/5 replies" in out
    assert "ping fd00:8::2: 5/5 replies" in out
    # The same transfer crossed both tunnels, the batched one first.
    transfers = re.findall(r"tcp: (\d+) bytes in .* = ([\d.]+) Mbit/s, sha256 (\w+)", out)
    assert len(transfers) == 2, out
    for count, mbits, match in transfers:
        assert int(count) == 128 * 1024 * 1024 and float(mbits) > 0 and match == "match", out
    assert out.index("batched tunnel up") < out.index("per-datagram tunnel up"), out
    # Batching was really in use in the first tunnel and really off in the second.
    batched, single = out.split("per-datagram tunnel up")
    sends = re.compile(r"tx (\d+) datagrams in (\d+) sends \([\d.]+ per call, (\d+) with GSO\)")
    fast = [tuple(map(int, m)) for m in sends.findall(batched)]
    slow = [tuple(map(int, m)) for m in sends.findall(single)]
    assert len(fast) == len(slow) == 2, out
    assert fast[0][2] > 0 and fast[0][0] > 4 * fast[0][1], out  # the data direction, left
    assert all(gso == 0 and datagrams == calls for datagrams, calls, gso in slow), out
    assert "UDP GSO True, GRO True" in batched and "UDP GSO False, GRO False" in single, out
    ratio = re.search(
        r"throughput: batched ([\d.]+) Mbit/s, per-datagram ([\d.]+) Mbit/s: "
        r"batching is ([\d.]+|inf)x faster",
        out,
    )
    assert ratio is not None, out
    assert "why: " in out
    assert "namespaces, veth pair and TUN devices removed" in out


def test_info_reports_driver_features() -> None:
    result = run_module("info", timeout=60)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "TUN (IFF_TUN): yes" in out
    assert "multi-queue (IFF_MULTI_QUEUE): yes" in out
    assert re.search(r"offload implementation: (speedups|python)", out)
    assert "TUNSETOFFLOAD CSUM|TSO4|TSO6: yes" in out
    assert "multi-queue: second queue attached" in out


def test_no_command_prints_help() -> None:
    result = run_module(timeout=60)
    assert result.returncode == 2
    assert "demo" in result.stdout and "info" in result.stdout
