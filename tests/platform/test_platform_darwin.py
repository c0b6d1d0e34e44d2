"""macOS utun backend, through its system-call seam (no macOS here).

The fake kernel (``bsd_fakes``) decodes every request with offsets taken from
the xnu headers and gives the stream a real datagram socket, so both the
configuration calls and the packet path (AF header 2 / 30) are checked.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import struct
from collections.abc import Iterator

import anyio
import pytest
from bsd_fakes import CTL_ID, DARWIN_REQUESTS, FakeBsdKernel

import trio_tun
from packets_util import udp4, udp6
from trio_tun import Layer, TunAttribute, TunConfig
from trio_tun._framing import DARWIN, AfFraming
from trio_tun._open import open_device, wrap_fd
from trio_tun.platform import FdSpec, darwin
from trio_tun.platform._bsdnet import DARWIN_FLAVOR, BsdInterfaceControl

pytestmark = pytest.mark.anyio

V4 = udp4("10.8.0.2", "10.8.0.1", 1234, 5678, b"to the app")
V6 = udp6("fd00:8::2", "fd00:8::1", 1234, 5678, b"to the app, v6")


@pytest.fixture
def kernel() -> Iterator[FakeBsdKernel]:
    fake = FakeBsdKernel(DARWIN_FLAVOR, requests=DARWIN_REQUESTS)
    yield fake
    fake.close_all()


def config(**kwargs: object) -> TunConfig:
    return TunConfig(layer=Layer.L3, **kwargs)  # type: ignore[arg-type]


def opened(
    kernel: FakeBsdKernel, cfg: TunConfig
) -> contextlib.AbstractAsyncContextManager[trio_tun.PacketStream]:
    """What ``open_tun`` does on macOS: refuse what it can't do, then the context manager."""
    backend = darwin.DarwinBackend(syscalls=kernel)
    backend.check(cfg)
    return open_device(backend, cfg)


def test_utun_unit_from_name() -> None:
    assert darwin.utun_unit(None) == 0
    assert darwin.utun_unit("utun%d") == 0
    assert darwin.utun_unit("utun0") == 1
    assert darwin.utun_unit("utun12") == 13
    for bad in ("tun0", "utun", "utunX", "utun-1"):
        with pytest.raises(ValueError, match="utunN"):
            darwin.utun_unit(bad)


def test_ctl_info_and_sockaddr_ctl_bytes() -> None:
    # <sys/kern_control.h>: struct ctl_info { u_int32_t ctl_id; char ctl_name[96]; }
    info = darwin.ctl_info(b"com.apple.net.utun_control")
    assert len(info) == 100
    assert info[:4] == bytes(4)
    assert info[4:30] == b"com.apple.net.utun_control" and info[30:] == bytes(70)
    assert darwin.ctl_id(struct.pack("=I", 7) + info[4:]) == 7
    # struct sockaddr_ctl { u_char sc_len; u_char sc_family; u_int16_t ss_sysaddr;
    #   u_int32_t sc_id; u_int32_t sc_unit; u_int32_t sc_reserved[5]; }: 32 bytes
    addr = darwin.sockaddr_ctl(0x01020304, 9)
    assert len(addr) == 32
    assert addr[0] == 32 and addr[1] == 32  # sc_len, AF_SYSTEM
    assert struct.unpack_from("=H", addr, 2)[0] == 2  # AF_SYS_CONTROL
    assert struct.unpack_from("=I", addr, 4)[0] == 0x01020304
    assert struct.unpack_from("=I", addr, 8)[0] == 9
    assert addr[12:] == bytes(20)


async def test_open_configures_and_moves_packets(kernel: FakeBsdKernel) -> None:
    cm = opened(kernel, config(name="utun5", addresses=["10.8.0.1/24", "fd00:8::1/64"], mtu=1400))
    assert kernel.calls == []  # nothing happens before the block is entered
    async with cm as dev:
        assert type(dev) is trio_tun.TunStream
        # The 4-byte AF header, numbered as xnu numbers AF_INET6 (30).
        assert isinstance(dev.framing, AfFraming) and dev.framing.families == DARWIN
        assert dev.name == "utun5"
        assert dev.index == kernel.interfaces["utun5"].index
        assert dev.extra(TunAttribute.name) == "utun5"
        assert dev.mtu == 1400
        # socket(PF_SYSTEM, SOCK_DGRAM, SYSPROTO_CONTROL), CTLIOCGINFO, connect(unit 6)
        assert kernel.calls[0] == ("socket", 32, 2, 2)
        assert kernel.calls[1][2] == "CTLIOCGINFO"
        connect = kernel.calls[2]
        assert connect[0] == "connect" and connect[2] == darwin.sockaddr_ctl(CTL_ID, 6)
        assert kernel.calls[3][0] == "getsockopt"
        iface = kernel.interfaces["utun5"]
        assert iface.flags & 0x1  # IFF_UP
        assert [str(a) for a, _ in iface.addresses] == ["10.8.0.1/24", "fd00:8::1/64"]
        # a point-to-point utun: the IPv4 address is its own destination ...
        assert iface.addresses[0][1] == ipaddress.IPv4Address("10.8.0.1")
        # ... and the networks are routed into the device explicitly.
        assert {str(r.network) for r in kernel.routes} == {"10.8.0.0/24", "fd00:8::/64"}
        assert await dev.routes() == [
            trio_tun.Route(prefix="10.8.0.0/24"),
            trio_tun.Route(prefix="fd00:8::/64"),
        ]

        peer = kernel.peer("utun5")
        peer.send(struct.pack("!I", 2) + V4)
        peer.send(struct.pack("!I", 30) + V6)
        with anyio.fail_after(5):
            assert await dev.receive() == V4
            assert await dev.receive() == V6
        await dev.send(V6)
        await dev.send_batch([V4, V6])
        with anyio.fail_after(5):
            frames = []
            while len(frames) < 3:
                await anyio.wait_readable(peer)
                frames.append(peer.recv(70000))
        assert frames == [b"\0\0\0\x1e" + V6, b"\0\0\0\x02" + V4, b"\0\0\0\x1e" + V6]
        stats = dev.statistics()
        assert (stats.rx_packets, stats.tx_packets) == (2, 3)
        assert stats.tx_bytes == len(V6) * 2 + len(V4)
    # Leaving closed the control socket (which deletes a utun device on macOS).
    assert dev.closed
    assert peer.recv(10) == b""
    assert kernel.sockets == {}  # every helper socket was closed too


async def test_kernel_picks_the_unit(kernel: FakeBsdKernel) -> None:
    async with (
        opened(kernel, config(name=None)) as first,
        opened(kernel, config(name="utun%d")) as second,
    ):
        assert (first.name, second.name) == ("utun0", "utun1")
        assert kernel.calls[2][2] == darwin.sockaddr_ctl(CTL_ID, 0)


async def test_device_control_errors(kernel: FakeBsdKernel) -> None:
    async with opened(kernel, config(addresses=["10.8.0.1/24"])) as dev:
        with pytest.raises(FileExistsError):
            await dev.add_address("10.8.0.1/24")
        await dev.add_address("10.9.0.1/16")
        assert set(map(str, await dev.addresses())) == {"10.8.0.1/24", "10.9.0.1/16"}
        await dev.remove_address("10.9.0.1/16")
        assert "10.9.0.0/16" not in {str(r.network) for r in kernel.routes}
        with pytest.raises(LookupError):
            await dev.remove_address("10.9.0.1/16")
        await dev.add_route("192.0.2.0/24")
        with pytest.raises(FileExistsError):
            await dev.add_route("192.0.2.0/24")
        await dev.add_route("192.0.2.77/32")
        assert trio_tun.Route(prefix="192.0.2.77/32") in await dev.routes()
        await dev.remove_route("192.0.2.0/24")
        with pytest.raises(LookupError):
            await dev.remove_route("192.0.2.0/24")
        with pytest.raises(NotImplementedError, match="metric"):
            await dev.add_route("198.51.100.0/24", metric=5)
        await dev.set_mtu(9000)
        assert dev.mtu == 9000
        with pytest.raises(ValueError):
            await dev.set_mtu(20)
        await dev.set_down()
        assert not await dev.is_up()
        await dev.set_up()
        assert await dev.is_up()
        kernel.fail_ioctl["SIOCSIFMTU"] = errno.EPERM
        with pytest.raises(trio_tun.TunPermissionError, match="root"):
            await dev.set_mtu(1500)
    # Closed by this process: ClosedResourceError, as for every later call.
    with pytest.raises(trio_tun.ClosedResourceError):
        _ = dev.name


async def test_connect_errors(kernel: FakeBsdKernel) -> None:
    kernel.fail_connect = errno.EPERM
    with pytest.raises(trio_tun.TunPermissionError, match="root"):
        async with opened(kernel, config()):
            pass
    kernel.fail_connect = None
    async with opened(kernel, config(name="utun2")):
        with pytest.raises(trio_tun.DeviceBusyError, match="utun2"):
            async with opened(kernel, config(name="utun2")):
                pass
    assert kernel.sockets == {}


async def test_failed_configuration_closes_the_device(kernel: FakeBsdKernel) -> None:
    kernel.fail_ioctl["SIOCAIFADDR"] = errno.EINVAL
    with pytest.raises(ValueError, match=r"adding 10\.8\.0\.1/24"):
        async with opened(kernel, config(addresses=["10.8.0.1/24"])):
            pytest.fail("the block must not run")
    assert kernel.peer("utun0").recv(10) == b""  # closed: the utun is gone


async def test_wrap_fd_finds_the_utun(kernel: FakeBsdKernel) -> None:
    fd = kernel.socket(32, 2, 2)
    kernel.connect(fd, darwin.sockaddr_ctl(CTL_ID, 4))
    spec = FdSpec(fd=fd, owned=True, layer=Layer.L3, header="af4")
    stream = wrap_fd(darwin.DarwinBackend(syscalls=kernel), spec)
    try:
        assert type(stream) is trio_tun.TunStream
        assert isinstance(stream.framing, AfFraming) and stream.framing.families == DARWIN
        assert isinstance(stream._control, BsdInterfaceControl)
        assert stream.name == "utun3"
        kernel.peer("utun3").send(b"\0\0\0\x02" + V4)
        with anyio.fail_after(5):
            assert await stream.receive() == V4
    finally:
        await stream.aclose()


def test_platform_refusals(kernel: FakeBsdKernel) -> None:
    backend = darwin.DarwinBackend(syscalls=kernel)
    common: dict[str, object] = {"offload": "auto"}  # open_tun's default
    with pytest.raises(NotImplementedError, match=r"TAP.*macOS"):
        backend.check(TunConfig(layer=Layer.L2))
    for option, value, pattern in (
        ("persist", True, "persist"),
        ("queues", 2, "multi-queue"),
        ("owner", 1000, "owner"),
        ("packet_info", True, "packet_info"),
    ):
        with pytest.raises(NotImplementedError, match=pattern):
            backend.check(config(**{**common, option: value}))
    with pytest.raises(trio_tun.OffloadUnavailableError):
        backend.check(config(offload=True))
    with pytest.raises(ValueError, match="utunN"):
        backend.check(config(**common, name="vpn0"))
    with pytest.raises(ValueError, match="mtu"):
        backend.check(config(**common, mtu=10))
    backend.check(config(**common, name="utun3"))  # what macOS can do passes
    assert kernel.calls == []  # refused before any system call
