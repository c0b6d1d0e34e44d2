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
def test_demo_pings_and_transfers_through_the_toy_vpn() -> None:
    result = run_module("demo")
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "demo: OK" in out
    assert "ping 10.8.0.2: 5/5 replies" in out
    assert "ping fd00:8::2: 5/5 replies" in out
    transfer = re.search(r"tcp: (\d+) bytes in .* sha256 (\w+)", out)
    assert transfer is not None, out
    assert int(transfer.group(1)) == 8 * 1024 * 1024
    assert transfer.group(2) == "match"
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
