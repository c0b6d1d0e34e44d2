"""Privilege separation: root makes a persistent device for a user, who then uses it.

The recipe of ``docs/privileges.rst`` and ``docs/security.rst``, end to end:

1. A privileged step (this test, as root) creates a persistent TUN device
   owned by an unprivileged uid/gid, gives it an address and brings it up:
   ``open_tun(name, persist=True, owner=UID, group=GID, addresses=[...])``.
2. The application runs as that uid with no capabilities at all and attaches
   with ``open_tun(name=..., persist=True, up=False)``, then exchanges packets
   with a socket in the namespace.
3. Everything that needs a privilege fails with an error naming the missing
   capability (``TunPermissionError``, a ``PermissionError``).

The child starts as root only to set up what a real deployment gets from its
system: here ``/dev/net/tun`` is mode 0600 and the interpreter lives under
``/root`` (0700).  So the child runs in a private mount namespace
(``unshare --mount``), bind-mounts a 0666 copy of the TUN character device
over ``/dev/net/tun`` *there* (the host's node is never touched), imports
everything, and only then drops to the uid (setgroups/setresgid/setresuid)
and checks that its effective capability set is empty.  Every trio-tun call
happens after the drop.
"""

from __future__ import annotations

import json
import shutil
import sys
from typing import Any

import anyio.to_thread
import pytest

import trio_tun
from packets_util import kernel_links
from trio_tun.testing import NetNamespace

pytestmark = [pytest.mark.kernel, pytest.mark.trio]

UNSHARE = shutil.which("unshare")
NOBODY = 65534
NOGROUP = 65534
DEVICE = "psep0"
ADDRESS = "10.43.0.1"

_CHILD = r"""
import ctypes, json, os, socket, stat, struct, sys, tempfile

uid, gid, name = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
report = {}

# -- as root, inside a private mount namespace: make /dev/net/tun usable ----------
libc = ctypes.CDLL(None, use_errno=True)
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000
# unshare(1) already made propagation private; say it again, so nothing we
# mount can ever propagate to the host's mount namespace.
if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
    raise OSError(ctypes.get_errno(), "making / private")
node_dir = tempfile.mkdtemp()
node = os.path.join(node_dir, "tun")
tun = os.stat("/dev/net/tun")
os.mknod(node, stat.S_IFCHR | 0o666, tun.st_rdev)
os.chmod(node, 0o666)
if libc.mount(node.encode(), b"/dev/net/tun", None, MS_BIND, None) != 0:
    raise OSError(ctypes.get_errno(), "bind-mounting the TUN node")

# Everything is imported while the files under /root can still be read.
import anyio, anyio.to_thread, anyio._backends._trio, trio, trio.socket
import pyroute2, pyroute2.iproute, pyroute2.netlink.rtnl.ifinfmsg
import trio_tun, trio_tun.offload

# -- drop to the unprivileged user ------------------------------------------------
os.setgroups([])
os.setresgid(gid, gid, gid)
os.setresuid(uid, uid, uid)
for line in open("/proc/self/status"):
    if line.startswith("CapEff:"):
        report["cap_eff"] = int(line.split()[1], 16)
report["uid"] = os.getuid()
report["euid"] = os.geteuid()


def udp4(src, dst, sport, dport, payload):
    length = 8 + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 1, 0x4000, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    words = struct.unpack("!10H", ip)
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    ip = ip[:10] + struct.pack("!H", ~total & 0xFFFF) + ip[12:]
    return ip + struct.pack("!HHHH", sport, dport, length, 0) + payload  # no UDP checksum


def failure(exc):
    return {"type": type(exc).__name__, "permission": isinstance(exc, PermissionError),
            "message": str(exc)}


async def attempt(label, fn):
    try:
        await fn()
    except Exception as exc:
        report["denied"][label] = failure(exc)
    else:
        report["denied"][label] = None


async def main():
    report["denied"] = {}
    try:
        opened = trio_tun.open_tun(name=name, persist=True, up=False, offload=False)
        dev = await opened.__aenter__()
    except Exception as exc:
        report["open"] = failure(exc)
        return
    report["open"] = "ok"
    try:
        report["name"] = dev.name
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            await sock.bind((%(address)r, 0))
            port = sock.getsockname()[1]
            exchanged = 0
            with trio.fail_after(20):
                for i in range(5):
                    message = b"from the app %%d" %% i
                    await sock.sendto(message, ("10.43.0.9", 4000))
                    while True:  # skip anything else the kernel sends
                        packet = await dev.receive()
                        if packet[0] >> 4 == 4 and packet[9] == 17 and packet.endswith(message):
                            break
                    reply = b"reply %%d" %% i
                    await dev.send(udp4("10.43.0.9", %(address)r, 4000, port, reply))
                    data, peer = await sock.recvfrom(100)
                    if data == reply and peer == ("10.43.0.9", 4000):
                        exchanged += 1
            report["exchanged"] = exchanged
        report["addresses"] = sorted(str(a) for a in await dev.addresses())
        await attempt("add_address", lambda: dev.add_address("10.44.0.1/24"))
        await attempt("remove_address", lambda: dev.remove_address(%(address)r + "/24"))
        await attempt("set_mtu", lambda: dev.set_mtu(1400))
        await attempt("set_down", dev.set_down)
        await attempt("add_route", lambda: dev.add_route("10.45.0.0/24"))

        async def new_device():
            async with trio_tun.open_tun("other%%d", up=False, offload=False):
                pass

        await attempt("create_device", new_device)
    finally:
        await opened.__aexit__(None, None, None)

    # Attaching again (the device is free now) but asking to configure it.
    async def configure_on_open():
        async with trio_tun.open_tun(name=name, persist=True, addresses=["10.46.0.1/24"]):
            pass

    await attempt("configure_on_open", configure_on_open)


trio.run(main)
print(json.dumps(report))
"""


async def _run_child(netns: NetNamespace, uid: int, gid: int) -> dict[str, Any]:
    assert UNSHARE is not None
    script = _CHILD % {"address": ADDRESS}
    argv = [UNSHARE, "--mount", sys.executable, "-c", script, str(uid), str(gid), DEVICE]
    result = await anyio.to_thread.run_sync(lambda: netns.run(argv, timeout=120, check=False))
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def _names_cap_net_admin(outcome: dict[str, Any] | None) -> None:
    assert outcome is not None, "an unprivileged call succeeded"
    assert outcome["type"] == "TunPermissionError", outcome
    assert outcome["permission"], outcome
    assert "CAP_NET_ADMIN" in outcome["message"], outcome


@pytest.fixture
def persistent_device(netns: NetNamespace) -> Any:
    """The privileged step: a persistent device owned by nobody/nogroup."""

    async def make() -> None:
        async with trio_tun.open_tun(
            DEVICE,
            persist=True,
            owner=NOBODY,
            group=NOGROUP,
            addresses=[f"{ADDRESS}/24"],
            offload=False,
        ):
            pass

    return make


@pytest.mark.skipif(UNSHARE is None, reason="unshare (util-linux) is not installed")
async def test_unprivileged_owner_uses_the_device(
    netns: NetNamespace, persistent_device: Any
) -> None:
    await persistent_device()
    # The device outlived the privileged step.
    assert DEVICE in await kernel_links(netns)

    report = await _run_child(netns, NOBODY, NOGROUP)
    assert report["uid"] == report["euid"] == NOBODY
    assert report["cap_eff"] == 0  # no capability at all, CAP_NET_ADMIN included
    assert report["open"] == "ok", report
    assert report["name"] == DEVICE
    assert report["exchanged"] == 5
    # Reading the configuration needs no privilege.
    assert f"{ADDRESS}/24" in report["addresses"]
    for label, outcome in report["denied"].items():
        assert outcome is not None, f"{label} succeeded without CAP_NET_ADMIN"
        _names_cap_net_admin(outcome)
    assert set(report["denied"]) == {
        "add_address",
        "remove_address",
        "set_mtu",
        "set_down",
        "add_route",
        "create_device",
        "configure_on_open",
    }
    # Neither the app's leaving nor its failed attempts removed the device.
    assert DEVICE in await kernel_links(netns)

    # Root takes it back: attaching without persist=True deletes it on close.
    async with trio_tun.open_tun(DEVICE, offload=False):
        pass
    assert DEVICE not in await kernel_links(netns)


@pytest.mark.skipif(UNSHARE is None, reason="unshare (util-linux) is not installed")
async def test_another_user_cannot_attach(netns: NetNamespace, persistent_device: Any) -> None:
    await persistent_device()
    report = await _run_child(netns, NOBODY - 1, NOGROUP - 1)
    assert report["cap_eff"] == 0
    _names_cap_net_admin(report["open"])
    assert "owner=" in report["open"]["message"]  # says how it could work
    assert DEVICE in await kernel_links(netns)
