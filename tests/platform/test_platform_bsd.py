"""FreeBSD/OpenBSD/NetBSD tun and tap, through the system-call seam (no BSD here).

The fake kernel decodes each request with offsets from the systems' headers
(see ``bsd_fakes``), so these tests check the request numbers, the buffers
and the packet framing (AF_INET6 28 on FreeBSD, 24 on OpenBSD and NetBSD).
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterator

import anyio
import pytest
from bsd_fakes import FREEBSD_REQUESTS, NETBSD_REQUESTS, OPENBSD_REQUESTS, FakeBsdKernel

import trio_tun
from packets_util import udp4, udp6
from trio_tun import Layer, TunConfig
from trio_tun.platform import bsd

pytestmark = pytest.mark.anyio

V4 = udp4("10.8.0.2", "10.8.0.1", 1, 2, b"v4")
V6 = udp6("fd00:8::2", "fd00:8::1", 1, 2, b"v6")
FRAME = bytes.fromhex("020000000001") + bytes.fromhex("02000000000a") + b"\x08\x00" + V4


def freebsd() -> FakeBsdKernel:
    return FakeBsdKernel(
        bsd.FREEBSD.flavor,
        requests=FREEBSD_REQUESTS,
        clones={"/dev/tun": "tun", "/dev/tap": "tap"},
        nodes={"/dev/tun7"},
    )


def openbsd() -> FakeBsdKernel:
    return FakeBsdKernel(
        bsd.OPENBSD.flavor,
        requests=OPENBSD_REQUESTS,
        nodes={f"/dev/{kind}{n}" for kind in ("tun", "tap") for n in range(4)},
        busy={"/dev/tun0", "/dev/tun1"},
    )


def netbsd() -> FakeBsdKernel:
    return FakeBsdKernel(
        bsd.NETBSD.flavor,
        requests=NETBSD_REQUESTS,
        clones={"/dev/tap": "tap"},
        nodes={f"/dev/tun{n}" for n in range(4)},
    )


@pytest.fixture
def kernels() -> Iterator[list[FakeBsdKernel]]:
    made: list[FakeBsdKernel] = []
    yield made
    for kernel in made:
        kernel.close_all()


def tun(**kwargs: object) -> TunConfig:
    return TunConfig(layer=Layer.L3, **kwargs)  # type: ignore[arg-type]


def tap(**kwargs: object) -> TunConfig:
    return TunConfig(layer=Layer.L2, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("system", "make", "expected", "inet6"),
    [
        (bsd.FREEBSD, freebsd, "tun0", 28),
        (bsd.OPENBSD, openbsd, "tun2", 24),
        (bsd.NETBSD, netbsd, "tun0", 24),
    ],
    ids=["freebsd", "openbsd", "netbsd"],
)
async def test_tun_open_frame_and_destroy(
    kernels: list[FakeBsdKernel], system: bsd.System, make, expected: str, inet6: int
) -> None:
    kernel = make()
    kernels.append(kernel)
    cm = bsd.open_device(
        tun(addresses=["10.8.0.1/24", "fd00:8::1/64"], mtu=1400),
        None,
        system=system,
        syscalls=kernel,
    )
    async with cm as dev:
        assert dev.name == expected
        iface = kernel.interfaces[expected]
        if system.tunsifhead is not None:
            assert iface.header == 1  # TUNSIFHEAD on: IPv6 needs the AF header
        assert iface.mtu == 1400 and iface.flags & 0x1
        assert {str(r.network) for r in kernel.routes} == {"10.8.0.0/24", "fd00:8::/64"}
        peer = kernel.peer(expected)
        peer.send(struct.pack("!I", 2) + V4)
        peer.send(struct.pack("!I", inet6) + V6)
        peer.send(struct.pack("!I", 30) + V6)  # macOS's AF_INET6: not this system's
        peer.send(b"\0\0")  # shorter than a header
        with anyio.fail_after(5):
            assert await dev.receive_batch() == [V4, V6]
        assert dev.statistics().rx_malformed == 2
        await dev.send(V6)
        await dev.send(b"\x10junk")  # not IP: dropped and counted, as Linux does
        with anyio.fail_after(5):
            await anyio.wait_readable(peer)
        assert peer.recv(100) == struct.pack("!I", inet6) + V6
        assert dev.statistics().tx_dropped == 1
    assert expected not in kernel.interfaces  # SIOCIFDESTROY on close
    assert kernel.sockets == {}


async def test_persist_keeps_the_interface(kernels: list[FakeBsdKernel]) -> None:
    kernel = freebsd()
    kernels.append(kernel)
    async with bsd.open_device(tun(persist=True), "tun7", system=bsd.FREEBSD, syscalls=kernel):
        pass
    assert "tun7" in kernel.interfaces
    assert ("open", "/dev/tun7") in kernel.calls
    # Attaching again without persist deletes it on the way out, as on Linux.
    kernel.busy.discard("/dev/tun7")
    async with bsd.open_device(tun(), "tun7", system=bsd.FREEBSD, syscalls=kernel):
        pass
    assert "tun7" not in kernel.interfaces


@pytest.mark.parametrize(
    ("system", "make", "expected"),
    [(bsd.FREEBSD, freebsd, "tap0"), (bsd.OPENBSD, openbsd, "tap0"), (bsd.NETBSD, netbsd, "tap0")],
    ids=["freebsd", "openbsd", "netbsd"],
)
async def test_tap_carries_bare_frames(
    kernels: list[FakeBsdKernel], system: bsd.System, make, expected: str
) -> None:
    kernel = make()
    kernels.append(kernel)
    async with bsd.open_device(
        tap(addresses=["10.8.0.1/24"]), None, system=system, syscalls=kernel
    ) as dev:
        assert isinstance(dev, trio_tun.TapStream)
        assert dev.name == expected
        iface = kernel.interfaces[expected]
        assert iface.header == 0  # no TUNSIFHEAD on a tap
        # A broadcast interface gets the network's broadcast address, and no
        # explicit route (the kernel adds the connected one).
        assert str(iface.addresses[0][1]) == "10.8.0.255"
        assert kernel.routes == []
        peer = kernel.peer(expected)
        peer.send(FRAME)
        with anyio.fail_after(5):
            assert await dev.receive() == FRAME
        await dev.send(FRAME)
        with anyio.fail_after(5):
            await anyio.wait_readable(peer)
        assert peer.recv(100) == FRAME
    assert expected not in kernel.interfaces


def test_names() -> None:
    assert bsd.requested_unit(Layer.L3, None) is None
    assert bsd.requested_unit(Layer.L3, "tun%d") is None
    assert bsd.requested_unit(Layer.L3, "tun12") == 12
    assert bsd.requested_unit(Layer.L2, "tap3") == 3
    with pytest.raises(ValueError, match="tunN"):
        bsd.requested_unit(Layer.L3, "tap3")
    with pytest.raises(ValueError, match="tapN"):
        bsd.requested_unit(Layer.L2, "vpn0")


async def test_open_errors(kernels: list[FakeBsdKernel]) -> None:
    kernel = openbsd()
    kernels.append(kernel)
    with pytest.raises(trio_tun.TunUnavailableError, match="MAKEDEV"):
        async with bsd.open_device(tun(), "tun9", system=bsd.OPENBSD, syscalls=kernel):
            pass
    with pytest.raises(trio_tun.DeviceBusyError, match="tun0"):
        async with bsd.open_device(tun(), "tun0", system=bsd.OPENBSD, syscalls=kernel):
            pass
    kernel.busy.update({"/dev/tun2", "/dev/tun3"})
    # Every node busy, then a missing one: the missing node is the error.
    with pytest.raises(trio_tun.TunUnavailableError):
        async with bsd.open_device(tun(), None, system=bsd.OPENBSD, syscalls=kernel):
            pass


async def test_failed_setup_destroys_a_cloned_interface(kernels: list[FakeBsdKernel]) -> None:
    kernel = freebsd()
    kernels.append(kernel)
    kernel.fail_ioctl["TUNSIFHEAD"] = errno.EINVAL
    with pytest.raises(OSError, match="Invalid"):
        async with bsd.open_device(tun(), None, system=bsd.FREEBSD, syscalls=kernel):
            pass
    assert kernel.interfaces == {}
    assert kernel.sockets == {}


async def test_wrap_fd_on_freebsd(kernels: list[FakeBsdKernel]) -> None:
    kernel = freebsd()
    kernels.append(kernel)
    fd = kernel.open_device("/dev/tun")
    stream = bsd.wrap_fd(fd, owned=True, system=bsd.FREEBSD, syscalls=kernel)
    try:
        assert stream.name == "tun0"
        kernel.peer("tun0").send(struct.pack("!I", 28) + V6)
        with anyio.fail_after(5):
            assert await stream.receive() == V6
    finally:
        await stream.aclose()
    assert "tun0" in kernel.interfaces  # not ours to destroy
