"""No side doors: no processes spawned, no fd leaked across exec, no raw errors for size.

* A child process installs a ``sys.addaudithook`` that records every attempt
  to start a process (``subprocess.Popen``, ``os.exec*``, ``os.system``,
  ``os.posix_spawn``, ``os.spawn*``, ``os.fork``/``forkpty``) and then opens,
  configures, uses and closes devices; the library must attempt none.
  (Audit hooks can't be removed, hence the child.)
* Every fd the library holds is close-on-exec: a child forked and exec'd
  while devices are open, with Python's own fd closing turned off, lists its
  fds and finds no ``/dev/net/tun`` and no network-namespace fd.
* Sends larger than the device accepts raise ``ValueError`` naming the limit,
  never a raw ``OSError``.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
from typing import Any

import anyio.to_thread
import pytest

import trio_tun
from packets_util import udp4
from trio_tun.testing import NetNamespace

pytestmark = [pytest.mark.kernel]

_SPAWN_EVENTS = (
    "subprocess.Popen",
    "os.exec",
    "os.system",
    "os.posix_spawn",
    "os.spawn",
    "os.fork",
    "os.forkpty",
    "pty.spawn",
)

_AUDITED = r"""
import json, socket, struct, sys

ARMED = [False]
violations = []
phases = []
SPAWN = %(events)r


def hook(event, args):
    if ARMED[0] and event.startswith(SPAWN):
        violations.append({"event": event, "args": repr(args)[:200], "phase": phases[-1]})
        raise RuntimeError(f"trio-tun tried to start a process: {event}")


sys.addaudithook(hook)  # from here to the end of this process, for good

import trio
import trio_tun

%(udp4)s


async def main():
    ARMED[0] = True
    phases.append("open")
    async with trio_tun.open_tun(
        "sec%%d", addresses=["10.47.0.1/24", "fd47::1/64"], mtu=1400, queues=2
    ) as dev:
        phases.append("configure")
        await dev.add_address("10.48.0.1/24")
        await dev.set_mtu(1500)
        await dev.add_route("10.49.0.0/24")
        await dev.routes()
        await dev.addresses()
        await dev.set_down()
        await dev.set_up()
        await dev.remove_address("10.48.0.1/24")
        phases.append("traffic")
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock, trio.fail_after(30):
            await sock.bind(("10.47.0.1", 0))
            port = sock.getsockname()[1]
            # The kernel may steer the flow to either queue: the engine reads both.
            async with dev.engine(grace=0.5) as engine:
                for i in range(5):
                    await sock.sendto(b"ping %%d" %% i, ("10.47.0.9", 7))
                    async for batch in engine:
                        if any(p.endswith(b"ping %%d" %% i) for p in batch):
                            break
                    pong = udp4("10.47.0.9", "10.47.0.1", 7, port, b"pong %%d" %% i)
                    await engine.send_batch([pong])
                    await sock.recvfrom(100)
            await dev.send(udp4("10.47.0.9", "10.47.0.1", 7, port, b"direct"))
            await dev.send_batch([udp4("10.47.0.9", "10.47.0.1", 7, port, b"batch")])
            await sock.recvfrom(100)
            await sock.recvfrom(100)
        phases.append("close")
    async with trio_tun.open_tap("sectap%%d") as tap:
        phases.append("tap")
        await tap.set_mtu(1400)
    phases.append("done")


error = None
try:
    trio.run(main)
except BaseException as exc:
    error = repr(exc)[:2000]
ARMED[0] = False
print(json.dumps({"violations": violations, "phases": phases, "error": error}))
"""

_UDP4 = """
def udp4(src, dst, sport, dport, payload):
    length = 8 + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 1, 0x4000, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    total = sum(struct.unpack("!10H", ip))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    ip = ip[:10] + struct.pack("!H", ~total & 0xFFFF) + ip[12:]
    return ip + struct.pack("!HHHH", sport, dport, length, 0) + payload
"""


def test_no_process_is_started_during_the_device_lifecycle(netns: NetNamespace) -> None:
    script = _AUDITED % {"events": _SPAWN_EVENTS, "udp4": _UDP4}
    result = netns.run([sys.executable, "-c", script], timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["violations"] == []
    assert report["error"] is None, report["error"]
    assert report["phases"] == ["open", "configure", "traffic", "close", "tap", "done"]


def test_the_audit_hook_would_catch_a_spawn(netns: NetNamespace) -> None:
    """The watcher itself works: a deliberate subprocess.run under it is caught."""
    script = (
        "import sys, subprocess\n"
        f"SPAWN = {_SPAWN_EVENTS!r}\n"
        "seen = []\n"
        "sys.addaudithook(lambda e, a: seen.append(e) if e.startswith(SPAWN) else None)\n"
        "subprocess.run(['true'])\n"
        "print(','.join(seen))\n"
    )
    result = netns.run([sys.executable, "-c", script], timeout=60)
    assert "subprocess.Popen" in result.stdout


def test_importing_the_library_starts_no_process(netns: NetNamespace) -> None:
    # Our dependencies first: Trio's own import looks up libpthread with
    # ctypes.util.find_library, which runs ldconfig; that is Trio's business.
    script = (
        "import sys\n"
        "import anyio, attrs, pyroute2, sniffio, trio\n"
        f"SPAWN = {_SPAWN_EVENTS!r}\n"
        "seen = []\n"
        "sys.addaudithook(lambda e, a: seen.append(e) if e.startswith(SPAWN) else None)\n"
        "import trio_tun, trio_tun.testing, trio_tun.engine, trio_tun.offload\n"
        "print(','.join(seen))\n"
    )
    result = netns.run([sys.executable, "-c", script], timeout=60)
    assert result.stdout.strip() == ""


# -- close-on-exec --------------------------------------------------------------------


def _fd_targets_after_exec() -> list[str]:
    """What a freshly exec'd child has open, with Python's fd closing turned off.

    ``close_fds=False`` leaves every fd to the kernel's close-on-exec flag,
    which is exactly what an application's own fork/exec (or a library that
    forks behind its back) would get.
    """
    lister = "import os\nfor n in os.listdir('/proc/self/fd'):\n" + (
        "    try: print(os.readlink('/proc/self/fd/' + n))\n    except OSError: pass\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", lister], close_fds=False, capture_output=True, text=True, check=True
    )
    return result.stdout.splitlines()


def _library_fds() -> list[int]:
    fds = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target == "/dev/net/tun" or target.startswith("net:["):
            fds.append(int(name))
    return fds


@pytest.mark.anyio
async def test_no_tun_fd_survives_exec(netns: NetNamespace) -> None:
    other = NetNamespace.create()
    try:
        async with (
            trio_tun.open_tun("cloexec%d", addresses=["10.50.1.1/24"], queues=3) as tun,
            trio_tun.open_tap("cloexec%d", netns=other.fileno()) as tap,
        ):
            held = _library_fds()
            # 3 TUN queues + 1 TAP queue, and the namespace fds the streams keep.
            assert sum(os.readlink(f"/proc/self/fd/{fd}") == "/dev/net/tun" for fd in held) >= 4
            for fd in held:
                assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC, fd
                assert not os.get_inheritable(fd)
            targets = await anyio.to_thread.run_sync(_fd_targets_after_exec)
            assert "/dev/net/tun" not in targets
            assert not any(t.startswith("net:[") for t in targets), targets
            # The devices still work after the fork.
            assert tun.mtu > 0 and tap.mtu > 0
    finally:
        other.close()


def test_a_wrapped_fd_is_made_non_inheritable_or_left_alone() -> None:
    """from_fd leaves the inheritability of an fd it did not open to its owner."""
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with left, right:
        right.set_inheritable(True)
        stream = trio_tun.from_fd(right.fileno(), owned=False)
        assert os.get_inheritable(right.fileno())  # the caller's choice, not ours
        stream.close()


# -- oversized sends ------------------------------------------------------------------


@pytest.mark.anyio
async def test_oversized_sends_raise_value_error_naming_the_limit(netns: NetNamespace) -> None:
    async with trio_tun.open_tun(addresses=["10.51.0.1/24"], queues=2) as dev:
        small = udp4("10.51.0.9", "10.51.0.1", 1, 2, b"x")
        too_big = small + bytes(65536 - len(small))  # an IP header, then too much
        assert len(too_big) == 65536
        for send in (dev.send, lambda p: dev.send_batch([p])):
            with pytest.raises(ValueError, match="65535"):
                await send(too_big)
        # A raw frame: the packet limit plus the 10-byte virtio header.
        with pytest.raises(ValueError, match="65545-byte limit"):
            await dev.send_raw(bytes(10) + too_big)
        async with dev.engine() as engine:
            with pytest.raises(ValueError, match="65535"):
                await engine.send_batch([too_big])
            assert engine.statistics().accepted == 0
        # Right at the limit is not an error (what the kernel does with it is its business).
        await dev.send(bytes(65535))
    async with trio_tun.open_tap() as tap:
        with pytest.raises(ValueError, match="65549"):
            await tap.send(bytes(65550))
        with pytest.raises(ValueError, match="empty"):
            await tap.send(b"")
