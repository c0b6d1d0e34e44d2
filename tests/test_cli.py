"""``python -m trio_tun``: help, --version, and demo, info and capture run for real
(the demo makes its own namespaces; capture runs in the test's)."""

from __future__ import annotations

import importlib.metadata
import io
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dpkt
import pytest

from packets_util import IPPROTO_ICMP, parse
from trio_tun.testing import NetNamespace

PING = shutil.which("ping")


def run_module(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trio_tun", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# -- help and version (no root needed) ---------------------------------------------


def test_no_command_prints_help() -> None:
    result = run_module(timeout=60)
    assert result.returncode == 2
    for command in ("demo", "info", "capture"):
        assert command in result.stdout


@pytest.mark.parametrize("command", [None, "demo", "info", "capture"])
def test_help_is_plain_text_with_the_options(command: str | None) -> None:
    result = run_module(*([command] if command else []), "--help", timeout=60)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # No reST markup leaks into a terminal.
    for markup in ("``", ":func:", ":class:", ":doc:", ".. "):
        assert markup not in out, out
    expected = {
        None: ["--version", "demo", "info", "capture"],
        "demo": ["--size", "--timeout", "--batched-only", "15 Gbit/s"],
        "info": ["--json"],
        "capture": ["--write", "--count", "--duration", "--snaplen", "--tap", "--address"],
    }[command]
    for word in expected:
        assert word in out, out


def test_version_is_the_installed_one() -> None:
    result = run_module("--version", timeout=60)
    assert result.returncode == 0
    assert result.stdout.strip() == f"trio-tun {importlib.metadata.version('trio-tun')}"


@pytest.mark.parametrize(
    "argv", [["demo", "--size", "0"], ["capture", "x", "--duration", "-1"], ["nope"]]
)
def test_bad_arguments_are_refused_with_a_message(argv: list[str]) -> None:
    result = run_module(*argv, timeout=60)
    assert result.returncode == 2
    assert "error:" in result.stderr


# -- the real thing ----------------------------------------------------------------


@pytest.mark.kernel
@pytest.mark.skipif(PING is None, reason="iputils-ping not installed")
def test_demo_compares_the_batched_and_the_per_datagram_tunnel() -> None:
    # 32 MiB: enough to see batching win, a quarter of the default's time.
    size = 32 * 1024 * 1024
    result = run_module("demo", "--size", "32")
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "demo: OK" in out
    assert "ping 10.8.0.2: 5/5 replies" in out
    assert "ping fd00:8::2: 5/5 replies" in out
    # The two ends have their own names.
    assert "batched tunnel up: left0 (10.8.0.1) <-> right0 (10.8.0.2)" in out, out
    # The same transfer crossed both tunnels, the batched one first.
    transfers = re.findall(r"tcp: (\d+) bytes in .* = ([\d.]+) Mbit/s, sha256 (\w+)", out)
    assert len(transfers) == 2, out
    for count, mbits, match in transfers:
        assert int(count) == size and float(mbits) > 0 and match == "match", out
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
    # It says why these are not the benchmark table's numbers.
    assert "what the numbers mean:" in out and "15 Gbit/s" in out
    assert "namespaces, veth pair and TUN devices removed" in out


@pytest.mark.kernel
def test_info_reports_driver_features() -> None:
    result = run_module("info", timeout=60)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"trio-tun {importlib.metadata.version('trio-tun')} on Linux")
    assert re.search(r"offload code: (speedups|python)", out)
    assert "  TUN (IFF_TUN): yes" in out
    assert "  multi-queue (IFF_MULTI_QUEUE): yes" in out
    assert "TCP offload (TUNSETOFFLOAD CSUM|TSO4|TSO6): yes" in out
    assert "multi-queue (a second queue attaches): yes" in out
    # Each capability is stated once (the driver's answer, not also the backend's claim).
    assert [line for line in out.splitlines() if "TAP" in line] == ["  TAP (IFF_TAP): yes"]
    assert "supports:" not in out


@pytest.mark.kernel
def test_info_json() -> None:
    result = run_module("info", "--json", timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["trio_tun"] == importlib.metadata.version("trio-tun")
    assert report["offload_implementation"] in ("speedups", "python")
    assert report["backend"]["name"] == "linux" and report["backend"]["tap"] is True
    assert report["driver"]["features"]["IFF_TUN"] is True
    assert report["probes"] == {"offload_tcp": True, "offload_tcp_udp": True, "multi_queue": True}


def _start_capture(netns: NetNamespace, *argv: str) -> subprocess.Popen[bytes]:
    proc = netns.popen(
        [sys.executable, "-m", "trio_tun", "capture", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline().decode()  # the device is up once this is printed
    if "is up" not in line:
        proc.kill()
        raise AssertionError(line + proc.stderr.read().decode())
    return proc


def _echo_requests(data: bytes) -> list[int]:
    """Sequence numbers of the ICMP echo requests in a LINKTYPE_RAW pcap, in order."""
    reader = dpkt.pcap.Reader(io.BytesIO(data))
    assert reader.datalink() == 101
    sequences = []
    for _, packet in reader:
        p = parse(packet)
        if p is not None and p.version == 4 and p.proto == IPPROTO_ICMP and p.payload[0] == 8:
            sequences.append(int.from_bytes(p.payload[6:8], "big"))
    return sequences


@pytest.mark.kernel
@pytest.mark.skipif(PING is None, reason="iputils-ping not installed")
def test_capture_writes_what_the_device_receives(netns: NetNamespace, tmp_path: Path) -> None:
    assert PING is not None
    path = tmp_path / "cap.pcap"
    proc = _start_capture(
        netns, "cap%d", "--address", "10.7.0.1/24", "--duration", "3", "-w", str(path)
    )
    try:
        # Nobody answers: the requests only go into the device.
        netns.run([PING, "-c", "3", "-i", "0.2", "-W", "1", "10.7.0.2"], timeout=30, check=False)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert _echo_requests(path.read_bytes()) == [1, 2, 3]
    written = int(re.search(rb"(\d+) packets written", err).group(1))  # type: ignore[union-attr]
    assert written == len(list(dpkt.pcap.Reader(io.BytesIO(path.read_bytes()))))
    assert "cap0" not in netns.links()  # the device went away with the command


@pytest.mark.kernel
@pytest.mark.skipif(PING is None, reason="iputils-ping not installed")
def test_capture_to_stdout_stops_at_count(netns: NetNamespace) -> None:
    assert PING is not None
    proc = _start_capture(
        netns, "cap%d", "--address", "10.7.0.1/24", "--count", "2", "--duration", "20", "-w", "-"
    )
    start = time.monotonic()
    try:
        netns.run([PING, "-c", "5", "-i", "0.2", "-w", "3", "10.7.0.2"], timeout=30, check=False)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert time.monotonic() - start < 15  # ended by the count, not the duration
    assert len(list(dpkt.pcap.Reader(io.BytesIO(out)))) == 2
    assert b"2 packets written" in err
