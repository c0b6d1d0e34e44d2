"""Missing privileges and a missing driver give errors that say what to do.

The unprivileged attempts run in child processes placed in the test's
namespace by ``netns.run``; the child prints what ``open_tun`` raised as JSON.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
from typing import Any

import anyio
import anyio.to_thread
import pytest

import trio_tun
import trio_tun.platform.linux.tun
from packets_util import kernel_links
from trio_tun.testing import NetNamespace

pytestmark = [pytest.mark.kernel, pytest.mark.anyio]

SETPRIV = shutil.which("setpriv")
CAP_NET_ADMIN = 12
NOBODY = 65534

_REPORT = """
import json, os, sys, trio, trio_tun
{drop}

def capabilities():
    for line in open("/proc/self/status"):
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)

async def main():
    async with trio_tun.open_tun(addresses=["10.8.0.1/24"], offload=False):
        pass

report = {"uid": os.getuid(), "caps": capabilities()}
try:
    trio.run(main)
except BaseException as exc:
    report.update(
        type=type(exc).__name__,
        mro=[cls.__name__ for cls in type(exc).__mro__],
        message=str(exc),
        errno=getattr(exc, "errno", None),
    )
else:
    report["type"] = None
print(json.dumps(report))
"""

# Drops to nobody after the imports: this interpreter lives under /root, which
# uid 65534 can't read, so ``setpriv --reuid`` in front of it could not even
# import the standard library.  The drop is the same set of syscalls setpriv
# makes (setgroups, setresgid, setresuid), and the child checks it has no
# capabilities left.
_DROP_TO_NOBODY = f"""
os.setgroups([])
os.setresgid({NOBODY}, {NOBODY}, {NOBODY})
os.setresuid({NOBODY}, {NOBODY}, {NOBODY})
"""


async def _run_child(netns: NetNamespace, argv: list[str]) -> dict[str, Any]:
    run = functools.partial(netns.run, argv, timeout=60, check=False)
    result = await anyio.to_thread.run_sync(run)
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


async def test_without_cap_net_admin(netns: NetNamespace) -> None:
    if SETPRIV is None:
        pytest.skip("setpriv (util-linux) is not installed")
    argv = [
        SETPRIV,
        "--inh-caps=-net_admin",
        "--bounding-set=-net_admin",
        sys.executable,
        "-c",
        _REPORT.replace("{drop}", ""),
    ]
    report = await _run_child(netns, argv)
    assert report["uid"] == 0
    assert not report["caps"] & (1 << CAP_NET_ADMIN)  # the child really lacks it
    assert report["type"] == "TunPermissionError", report
    assert "PermissionError" in report["mro"]
    assert "CAP_NET_ADMIN" in report["message"]
    assert report["errno"] == 1  # EPERM
    assert await kernel_links(netns) == ["lo"]  # nothing half-made was left


async def test_unprivileged_user(netns: NetNamespace) -> None:
    report = await _run_child(
        netns, [sys.executable, "-c", _REPORT.replace("{drop}", _DROP_TO_NOBODY)]
    )
    assert report["uid"] == NOBODY
    assert report["caps"] == 0
    assert "PermissionError" in report["mro"], report
    assert report["type"] == "TunPermissionError"
    # Where the node is world-accessible (Debian's default 0666) the open works
    # and the kernel refuses TUNSETIFF; otherwise the open itself is refused.
    # Either way the message names what is missing.
    if os.stat("/dev/net/tun").st_mode & 0o006 == 0o006:
        assert "CAP_NET_ADMIN" in report["message"]
    else:
        assert "/dev/net/tun" in report["message"]
    assert await kernel_links(netns) == ["lo"]


async def test_missing_tun_driver(netns: NetNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trio_tun.platform.linux.tun, "TUN_PATH", "/nonexistent/net/tun")
    with pytest.raises(trio_tun.TunUnavailableError) as info:
        async with trio_tun.open_tun(addresses=["10.8.0.1/24"], offload=False):
            pytest.fail("opened a device without a driver")
    assert isinstance(info.value, FileNotFoundError)
    assert "modprobe tun" in str(info.value)
    assert "/nonexistent/net/tun" in str(info.value)
    with pytest.raises(FileNotFoundError):
        async with trio_tun.open_tap():
            pytest.fail("opened a device without a driver")
    assert await kernel_links(netns) == ["lo"]
