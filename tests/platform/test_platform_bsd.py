"""FreeBSD/OpenBSD/NetBSD tun and tap, through the system-call seam (no BSD here).

The fake kernel decodes each request with offsets from the systems' headers
(see ``bsd_fakes``), so these tests check the request numbers, the buffers
and the packet framing (AF_INET6 28 on FreeBSD, 24 on OpenBSD and NetBSD).
"""

from __future__ import annotations

import contextlib
import errno
import struct
from collections.abc import Iterator

import anyio
import attrs
import pytest
from bsd_fakes import FREEBSD_REQUESTS, NETBSD_REQUESTS, OPENBSD_REQUESTS, FakeBsdKernel

import trio_tun
from packets_util import udp4, udp6
from trio_tun import Layer, TunConfig
from trio_tun._framing import AfFraming, PlainFraming
from trio_tun._open import open_device, wrap_fd
from trio_tun.platform import FdSpec, bsd
from trio_tun.platform._bsdnet import BsdInterfaceControl

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


def opened(
    system: bsd.System, kernel: FakeBsdKernel, config: TunConfig
) -> contextlib.AbstractAsyncContextManager[trio_tun.PacketStream]:
    """What ``open_tun``/``open_tap`` do on a BSD: refuse what it can't do, then the
    context manager (nothing runs until it is entered)."""
    backend = bsd.BsdBackend(system, syscalls=kernel)
    backend.check(config)
    return open_device(backend, config)


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
    cm = opened(system, kernel, tun(addresses=["10.8.0.1/24", "fd00:8::1/64"], mtu=1400))
    assert kernel.calls == []  # nothing happens before the block is entered
    async with cm as dev:
        assert type(dev) is trio_tun.TunStream
        assert isinstance(dev.framing, AfFraming) and dev.framing.families == system.families
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
    async with opened(bsd.FREEBSD, kernel, tun(name="tun7", persist=True)):
        pass
    assert "tun7" in kernel.interfaces
    assert ("open", "/dev/tun7") in kernel.calls
    # Attaching again without persist deletes it on the way out, as on Linux.
    kernel.busy.discard("/dev/tun7")
    async with opened(bsd.FREEBSD, kernel, tun(name="tun7")):
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
    async with opened(system, kernel, tap(addresses=["10.8.0.1/24"])) as dev:
        assert type(dev) is trio_tun.TapStream
        assert isinstance(dev.framing, PlainFraming)  # Ethernet frames, no AF header
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
        async with opened(bsd.OPENBSD, kernel, tun(name="tun9")):
            pass
    with pytest.raises(trio_tun.DeviceBusyError, match="tun0"):
        async with opened(bsd.OPENBSD, kernel, tun(name="tun0")):
            pass
    kernel.busy.update({"/dev/tun2", "/dev/tun3"})
    # Every node busy, then a missing one: the missing node is the error.
    with pytest.raises(trio_tun.TunUnavailableError):
        async with opened(bsd.OPENBSD, kernel, tun()):
            pass


async def test_failed_setup_destroys_a_cloned_interface(kernels: list[FakeBsdKernel]) -> None:
    kernel = freebsd()
    kernels.append(kernel)
    kernel.fail_ioctl["TUNSIFHEAD"] = errno.EINVAL
    with pytest.raises(OSError, match="Invalid"):
        async with opened(bsd.FREEBSD, kernel, tun()):
            pass
    assert kernel.interfaces == {}
    assert kernel.sockets == {}


async def test_wrap_fd_on_freebsd(kernels: list[FakeBsdKernel]) -> None:
    kernel = freebsd()
    kernels.append(kernel)
    fd = kernel.open_device("/dev/tun")
    spec = FdSpec(fd=fd, owned=True, layer=Layer.L3, header="af4")
    stream = wrap_fd(bsd.BsdBackend(bsd.FREEBSD, syscalls=kernel), spec)
    try:
        assert type(stream) is trio_tun.TunStream
        assert isinstance(stream.framing, AfFraming)
        assert stream.framing.families == bsd.FREEBSD.families
        assert isinstance(stream._control, BsdInterfaceControl)
        assert stream.name == "tun0"
        kernel.peer("tun0").send(struct.pack("!I", 28) + V6)
        with anyio.fail_after(5):
            assert await stream.receive() == V6
    finally:
        await stream.aclose()
    assert "tun0" in kernel.interfaces  # not ours to destroy


def test_refusals_come_before_any_call(kernels: list[FakeBsdKernel]) -> None:
    kernel = freebsd()
    kernels.append(kernel)
    backend = bsd.BsdBackend(bsd.FREEBSD, syscalls=kernel)
    with pytest.raises(ValueError, match="tunN"):
        backend.check(tun(name="vpn0"))
    with pytest.raises(ValueError, match="tapN"):
        backend.check(tap(name="tun0"))
    with pytest.raises(NotImplementedError, match=r"mac=.*FreeBSD"):
        backend.check(tap(mac="02:00:00:00:00:01"))
    with pytest.raises(NotImplementedError, match=r"multi-queue.*FreeBSD"):
        backend.check(tun(queues=2))
    no_tap = bsd.BsdBackend(attrs.evolve(bsd.FREEBSD, has_tap=False), syscalls=kernel)
    with pytest.raises(NotImplementedError, match="TAP"):
        no_tap.check(tap())
    backend.check(tun(name="tun3", persist=True))  # what FreeBSD can do passes
    backend.check(tap(name="tap%d"))
    assert kernel.calls == []
