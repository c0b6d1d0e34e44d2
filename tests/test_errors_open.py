"""Mistakes a newcomer makes get a typed error that says what to do.

Wherever the input can be checked before a device exists, it is: the tests
that claim so count the ``/dev/net/tun`` opens and ``TUNSETIFF`` calls and
assert there were none.  The privilege cases run in child processes whose
capabilities were dropped (as in ``test_privileges.py``).
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import sys
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import anyio.to_thread
import pytest

import trio_tun
from packets_util import kernel_delete_link, kernel_links
from trio_tun.platform.linux import tun
from trio_tun.testing import NetNamespace, fd_count

pytestmark = [pytest.mark.kernel, pytest.mark.anyio]

SETPRIV = shutil.which("setpriv")
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
NOBODY = 65534


@pytest.fixture
def tun_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every ``/dev/net/tun`` open and ``TUNSETIFF`` the test makes, in order."""
    calls: list[str] = []

    def spy(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(tun, "open_tun_file", spy("open", tun.open_tun_file))
    monkeypatch.setattr(tun, "set_iff", spy("set_iff", tun.set_iff))
    yield calls


# -- netns= -------------------------------------------------------------------


async def test_bad_netns_fd_refused_before_any_device(
    netns: NetNamespace, tun_calls: list[str]
) -> None:
    r, w = os.pipe()
    os.close(w)
    closed_fd = r
    os.close(r)
    fds = fd_count()
    with pytest.raises(ValueError, match="not an open file descriptor") as info:
        async with trio_tun.open_tun(netns=closed_fd, offload=False):
            pytest.fail("opened a device with a closed netns fd")
    assert str(closed_fd) in str(info.value)
    # An open fd that is not a network namespace (a pipe) is refused as well.
    r, w = os.pipe()
    try:
        with pytest.raises(ValueError, match="not a network namespace"):
            async with trio_tun.open_tun(netns=r, offload=False):
                pytest.fail("opened a device with a pipe as its namespace")
    finally:
        os.close(r)
        os.close(w)
    assert tun_calls == []
    assert fd_count() == fds
    assert await kernel_links(netns) == ["lo"]


async def test_pre_cancelled_open_with_netns_leaves_nothing(
    netns: NetNamespace, tun_calls: list[str]
) -> None:
    with NetNamespace.create() as other:
        fds = fd_count()
        for _ in range(5):
            with anyio.CancelScope() as scope:
                scope.cancel()
                async with trio_tun.open_tun(netns=other.fileno(), offload=False):
                    pytest.fail("a cancelled open yielded a device")
        assert tun_calls == []
        assert fd_count() == fds
        assert await kernel_links(other) == ["lo"]


async def test_name_taken_in_target_refused_before_any_device(
    netns: NetNamespace, tun_calls: list[str]
) -> None:
    with NetNamespace.create() as other:
        other.netlink(lambda ipr: ipr.link("add", ifname="taken0", kind="veth", peer="taken1"))
        with pytest.raises(trio_tun.DeviceBusyError) as info:
            async with trio_tun.open_tun("taken0", netns=other.fileno(), offload=False):
                pytest.fail("opened a device over a veth interface")
        assert "'taken0'" in str(info.value) and "netns=" in str(info.value)
        assert not isinstance(info.value, FileExistsError)
        assert tun_calls == []  # refused before /dev/net/tun was opened
        assert await kernel_links(netns) == ["lo"]
        assert sorted(await kernel_links(other)) == ["lo", "taken0", "taken1"]


async def test_kernel_chosen_name_taken_in_target(netns: NetNamespace) -> None:
    """name=None twice into one namespace: the second tun0 can't move there."""
    with NetNamespace.create() as other:
        async with trio_tun.open_tun(netns=other.fileno(), offload=False) as first:
            with pytest.raises(trio_tun.DeviceBusyError) as info:
                async with trio_tun.open_tun(netns=other.fileno(), offload=False):
                    pytest.fail("two devices of one name in one namespace")
            assert repr(first.name) in str(info.value)
            assert "name free there" in str(info.value)
            assert not isinstance(info.value, FileExistsError)
            assert sorted(await kernel_links(other)) == sorted(["lo", first.name])
            assert await kernel_links(netns) == ["lo"]  # the second one was removed
        assert await kernel_links(other) == ["lo"]


# -- attaching with the wrong flags -------------------------------------------


async def test_queues_mismatch_says_so(netns: NetNamespace) -> None:
    async with trio_tun.open_tun("single%d", persist=True, up=False, offload=False) as dev:
        name = dev.name
    try:
        with pytest.raises(trio_tun.DeviceBusyError) as info:
            async with trio_tun.open_tun(name, queues=2, offload=False):
                pytest.fail("attached a second queue to a single-queue device")
        message = str(info.value)
        assert "single-queue" in message and "queues=1" in message, message
        assert "not a TUN" not in message
        with pytest.raises(trio_tun.DeviceBusyError, match="open_tun") as info:
            async with trio_tun.open_tap(name):
                pytest.fail("opened a TUN device as TAP")
        assert "is a TUN device" in str(info.value)
        assert name in await kernel_links(netns)  # a failed attach leaves it alone
    finally:
        await kernel_delete_link(netns, name)

    async with trio_tun.open_tun("multi%d", persist=True, up=False, queues=2) as dev:
        name = dev.name
    try:
        with pytest.raises(trio_tun.DeviceBusyError) as info:
            async with trio_tun.open_tun(name, offload=False):
                pytest.fail("attached one queue to a multi-queue device")
        assert "multi-queue" in str(info.value) and "queues=2" in str(info.value)
    finally:
        await kernel_delete_link(netns, name)


# -- device control after close / after deletion ------------------------------


async def test_control_after_aclose_is_closed(netns: NetNamespace) -> None:
    async with trio_tun.open_tun(addresses=["10.8.0.1/24"], offload=False) as dev:
        await dev.aclose()
        await _all_control_raises(dev, trio_tun.ClosedResourceError)
    await _all_control_raises(dev, trio_tun.ClosedResourceError)


async def test_control_after_device_deleted_is_broken(netns: NetNamespace) -> None:
    async with trio_tun.open_tun(addresses=["10.8.0.1/24"], offload=False) as dev:
        await dev.add_route("10.9.0.0/16")
        assert await dev.routes() != []
        await kernel_delete_link(netns, dev.name)
        await _all_control_raises(dev, trio_tun.BrokenResourceError)


async def _all_control_raises(dev: trio_tun.TunStream, error: type[Exception]) -> None:
    with pytest.raises(error):
        await dev.addresses()
    with pytest.raises(error):
        await dev.routes()
    with pytest.raises(error):
        await dev.is_up()
    with pytest.raises(error):
        await dev.set_mtu(1400)
    with pytest.raises(error):
        await dev.add_address("10.8.1.1/24")
    with pytest.raises(error):
        await dev.remove_address("10.8.0.1/24")
    with pytest.raises(error):
        await dev.add_route("10.10.0.0/16")
    with pytest.raises(error):
        _ = dev.mtu


# -- privileges ---------------------------------------------------------------

_REPORT = """
import json, os, sys, trio, trio_tun
{drop}

def capabilities():
    for line in open("/proc/self/status"):
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)

async def main():
    async with trio_tun.open_tun({args}):
        pass

report = {{"uid": os.getuid(), "caps": capabilities()}}
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

# pyroute2 loads its modules lazily, and uid 65534 can't read this interpreter's
# tree: load them before the drop.
_DROP_TO_NOBODY = f"""
from pyroute2 import IPRoute
IPRoute().close()
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


async def test_netns_without_cap_sys_admin(netns: NetNamespace) -> None:
    if SETPRIV is None:
        pytest.skip("setpriv (util-linux) is not installed")
    other = NetNamespace.create(f"trio-tun-test-{secrets.token_hex(4)}")
    try:
        args = f"addresses=['10.8.0.1/24'], offload=False, netns={other.name!r}"
        argv = [
            SETPRIV,
            "--inh-caps=-sys_admin",
            "--bounding-set=-sys_admin",
            sys.executable,
            "-c",
            _REPORT.format(drop="", args=args),
        ]
        report = await _run_child(netns, argv)
        assert report["uid"] == 0
        assert report["caps"] & (1 << CAP_NET_ADMIN)  # it has the one...
        assert not report["caps"] & (1 << CAP_SYS_ADMIN)  # ...but not the other
        assert report["type"] == "TunPermissionError", report
        assert "PermissionError" in report["mro"]
        assert "CAP_SYS_ADMIN" in report["message"]
        assert "netns=" in report["message"]
        assert await kernel_links(netns) == ["lo"]
        assert await kernel_links(other) == ["lo"]
    finally:
        other.close()


async def test_unprivileged_attach_hints_up_false(netns: NetNamespace) -> None:
    if os.stat("/dev/net/tun").st_mode & 0o006 != 0o006:
        pytest.skip("/dev/net/tun is not world read/writable here")
    async with trio_tun.open_tun(
        "owned%d", persist=True, owner=NOBODY, addresses=["10.8.0.1/24"], offload=False
    ) as dev:
        name = dev.name
    try:
        args = f"{name!r}, persist=True, offload=False"
        report = await _run_child(
            netns,
            [sys.executable, "-c", _REPORT.format(drop=_DROP_TO_NOBODY, args=args)],
        )
        assert report["uid"] == NOBODY
        assert report["type"] == "TunPermissionError", report
        assert "up=False" in report["message"]
        assert name in report["message"]
        assert name in await kernel_links(netns)  # the administrator's device stays

        ok_args = f"{name!r}, persist=True, offload=False, up=False"
        report = await _run_child(
            netns,
            [sys.executable, "-c", _REPORT.format(drop=_DROP_TO_NOBODY, args=ok_args)],
        )
        assert report["type"] is None, report
    finally:
        await kernel_delete_link(netns, name)
