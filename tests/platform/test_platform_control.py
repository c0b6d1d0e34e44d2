"""Device control parity on macOS, the BSDs, Windows and memory pairs, through their fakes.

Peer addresses, routes with a gateway and a source, persist, a tap's MAC, and
the typed refusals (``NotImplementedError`` naming the system) for what a
system can't do — each refused before any system call.
"""

from __future__ import annotations

import contextlib
import ipaddress
import struct
from collections.abc import Iterator

import anyio
import pytest
from bsd_fakes import (
    DARWIN_REQUESTS,
    FREEBSD_REQUESTS,
    NETBSD_REQUESTS,
    OPENBSD_REQUESTS,
    FakeBsdKernel,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from test_platform_windows import Rig

import trio_tun
from trio_tun import Layer, PeerAddress, Route, TunConfig
from trio_tun._config import make_peer_address, parse_any_address
from trio_tun._open import open_device
from trio_tun.platform import bsd, darwin
from trio_tun.platform._bsdnet import DARWIN_FLAVOR
from trio_tun.testing import MemoryControl, memory_tun_pair

pytestmark = pytest.mark.anyio


def _freebsd() -> FakeBsdKernel:
    return FakeBsdKernel(
        bsd.FREEBSD.flavor,
        requests=FREEBSD_REQUESTS,
        clones={"/dev/tun": "tun", "/dev/tap": "tap"},
    )


def _openbsd() -> FakeBsdKernel:
    return FakeBsdKernel(
        bsd.OPENBSD.flavor,
        requests=OPENBSD_REQUESTS,
        nodes={f"/dev/{kind}{n}" for kind in ("tun", "tap") for n in range(4)},
    )


def _netbsd() -> FakeBsdKernel:
    return FakeBsdKernel(
        bsd.NETBSD.flavor,
        requests=NETBSD_REQUESTS,
        clones={"/dev/tap": "tap"},
        nodes={f"/dev/tun{n}" for n in range(4)},
    )


def _darwin() -> FakeBsdKernel:
    return FakeBsdKernel(DARWIN_FLAVOR, requests=DARWIN_REQUESTS)


SYSTEMS = {
    "freebsd": (_freebsd, lambda k: bsd.BsdBackend(bsd.FREEBSD, syscalls=k)),
    "openbsd": (_openbsd, lambda k: bsd.BsdBackend(bsd.OPENBSD, syscalls=k)),
    "netbsd": (_netbsd, lambda k: bsd.BsdBackend(bsd.NETBSD, syscalls=k)),
    "darwin": (_darwin, lambda k: darwin.DarwinBackend(syscalls=k)),
}


@pytest.fixture(params=list(SYSTEMS))
def system(request: pytest.FixtureRequest) -> Iterator[tuple[str, FakeBsdKernel]]:
    kernel = SYSTEMS[request.param][0]()
    yield request.param, kernel
    kernel.close_all()


def _opened(
    name: str, kernel: FakeBsdKernel, config: TunConfig
) -> contextlib.AbstractAsyncContextManager[trio_tun.PacketStream]:
    backend = SYSTEMS[name][1](kernel)
    backend.check(config)
    return open_device(backend, config)


# -- macOS and the BSDs ---------------------------------------------------------------


async def test_bsd_peer_addresses(system: tuple[str, FakeBsdKernel]) -> None:
    name, kernel = system
    config = TunConfig(layer=Layer.L3, addresses=["10.8.0.1 peer 10.8.0.2/24"])
    async with _opened(name, kernel, config) as dev:
        iface = kernel.interfaces[dev.name]
        # ifaliasreq: the peer as the destination, the mask the peer's prefix.
        assert iface.addresses == [
            (ipaddress.ip_interface("10.8.0.1/24"), ipaddress.IPv4Address("10.8.0.2"))
        ]
        assert {str(r.network) for r in kernel.routes} == {"10.8.0.0/24"}
        await dev.add_address("fd00:8::1", peer="fd00:8::2/64")
        # in6_aliasreq: the destination, with the /128 the kernels insist on; the
        # peer's wider prefix becomes a route.
        assert iface.addresses[1] == (
            ipaddress.ip_interface("fd00:8::1/128"),
            ipaddress.IPv6Address("fd00:8::2"),
        )
        assert {str(r.network) for r in kernel.routes} == {"10.8.0.0/24", "fd00:8::/64"}
        assert await dev.addresses() == [
            PeerAddress(ipaddress.ip_address("10.8.0.1"), ipaddress.ip_interface("10.8.0.2/24")),
            PeerAddress(ipaddress.ip_address("fd00:8::1"), ipaddress.ip_interface("fd00:8::2/128")),
        ]
        # A plain address on a point-to-point interface is its own destination: plain.
        await dev.add_address("10.9.0.1/16")
        assert ipaddress.ip_interface("10.9.0.1/16") in await dev.addresses()
        with pytest.raises(FileExistsError):
            await dev.add_address("10.8.0.1", peer="10.8.0.3")
        await dev.remove_address("fd00:8::1 peer fd00:8::2/64")
        await dev.remove_address("10.8.0.1 peer 10.8.0.2/24")
        assert {str(r.network) for r in kernel.routes} == {"10.9.0.0/16"}
        assert [str(a) for a, _ in iface.addresses] == ["10.9.0.1/16"]


async def test_bsd_routes_with_gateway_and_source(system: tuple[str, FakeBsdKernel]) -> None:
    name, kernel = system
    async with _opened(name, kernel, TunConfig(addresses=["10.8.0.1/24"])) as dev:
        await dev.add_route("10.20.0.0/16", gateway="10.8.0.2", source="10.8.0.1")
        await dev.add_route("192.0.2.7/32")
        route = kernel.routes[-2]
        assert route.gateway == ipaddress.IPv4Address("10.8.0.2")
        assert route.source == ipaddress.IPv4Address("10.8.0.1")
        assert route.flags & 0x2  # RTF_GATEWAY
        assert await dev.routes() == [
            Route(prefix="10.8.0.0/24"),
            Route(prefix="10.20.0.0/16", gateway="10.8.0.2", source="10.8.0.1"),
            Route(prefix="192.0.2.7/32"),
        ]
        with pytest.raises(LookupError):
            await dev.remove_route("10.20.0.0/16", gateway="10.8.0.9")
        await dev.remove_route("10.20.0.0/16", gateway="10.8.0.2")
        assert [str(r) for r in await dev.routes()] == ["10.8.0.0/24", "192.0.2.7/32"]

        writes = len(kernel.calls)
        for option, match in (
            ({"table": 100}, "table"),
            ({"metric": 5}, "metric"),
            ({"scope": "link"}, "scope"),
        ):
            with pytest.raises(NotImplementedError, match=match):
                await dev.add_route("10.30.0.0/16", **option)  # type: ignore[arg-type]
        with pytest.raises(NotImplementedError, match="table"):
            await dev.routes(table=100)
        assert len(kernel.calls) == writes  # refused before any system call


async def test_bsd_persist_owner_group(system: tuple[str, FakeBsdKernel]) -> None:
    name, kernel = system
    async with _opened(name, kernel, TunConfig()) as dev:
        ifname = dev.name
        calls = len(kernel.calls)
        for call, match in (
            (lambda: dev.set_owner(1000), "set_owner"),
            (lambda: dev.set_group(1000), "set_group"),
        ):
            with pytest.raises(NotImplementedError, match=match):
                await call()
        if name == "darwin":
            with pytest.raises(NotImplementedError, match="utun"):
                await dev.set_persist(True)
        else:
            await dev.set_persist(True)
        assert len(kernel.calls) == calls
    if name == "darwin":
        return
    # Persisting on the BSDs: the interface is not destroyed on close ...
    assert ifname in kernel.interfaces
    # ... and set_persist(False) makes close destroy it again.
    kernel.nodes.add(f"/dev/{ifname}")
    kernel.busy.discard(f"/dev/{ifname}")
    async with _opened(name, kernel, TunConfig(name=ifname, persist=True)) as dev:
        await dev.set_persist(False)
    assert ifname not in kernel.interfaces


@pytest.mark.parametrize("name", ["freebsd", "openbsd", "netbsd"])
async def test_bsd_set_mac(name: str) -> None:
    kernel = SYSTEMS[name][0]()
    try:
        async with _opened(name, kernel, TunConfig(layer=Layer.L2)) as dev:
            if name == "netbsd":
                with pytest.raises(NotImplementedError, match="netbsd"):
                    await dev.set_mac("02:11:22:33:44:55")
                return
            await dev.set_mac("02:11:22:33:44:55")
            assert kernel.interfaces[dev.name].mac == bytes.fromhex("021122334455")
            # A peer needs a point-to-point interface.
            with pytest.raises(ValueError, match="point-to-point"):
                await dev.add_address("10.8.0.1", peer="10.8.0.2")
    finally:
        kernel.close_all()


def test_refused_before_any_call(system: tuple[str, FakeBsdKernel]) -> None:
    name, kernel = system
    backend = SYSTEMS[name][1](kernel)
    with pytest.raises(NotImplementedError, match="ipv6_link_local"):
        backend.check(TunConfig(ipv6_link_local=False))
    if name != "darwin":
        tap = TunConfig(layer=Layer.L2, addresses=["10.8.0.1 peer 10.8.0.2"])
        with pytest.raises(NotImplementedError, match="peer address on a TAP"):
            backend.check(tap)
    assert kernel.calls == []


# -- Windows ----------------------------------------------------------------------------


async def test_windows_routes_and_refusals() -> None:
    rig = Rig()
    with pytest.raises(NotImplementedError, match="peer"):
        rig.open(addresses=["10.8.0.1 peer 10.8.0.2"])
    with pytest.raises(NotImplementedError, match="ipv6_link_local"):
        rig.open(ipv6_link_local=False)
    assert rig.wintun.adapters == {}
    async with rig.open() as dev:
        await dev.add_route("10.20.0.0/16", gateway="10.8.0.2", metric=9)
        (row,) = rig.iphelper.routes
        # MIB_IPFORWARD_ROW2: NextHop (SOCKADDR_INET) at 44, Metric 84.
        assert struct.unpack_from("<H", row, 44)[0] == 2
        assert row[48:52] == ipaddress.IPv4Address("10.8.0.2").packed
        assert struct.unpack_from("<I", row, 84)[0] == 9
        assert await dev.routes() == [Route(prefix="10.20.0.0/16", gateway="10.8.0.2", metric=9)]
        with pytest.raises(LookupError):
            await dev.remove_route("10.20.0.0/16")  # the on-link one: not there
        await dev.remove_route("10.20.0.0/16", gateway="10.8.0.2")
        assert rig.iphelper.routes == []
        for option in ({"table": 7}, {"scope": "link"}, {"source": "10.8.0.1"}):
            with pytest.raises(NotImplementedError, match="not available on Windows"):
                await dev.add_route("10.30.0.0/16", **option)
        with pytest.raises(NotImplementedError, match="peer"):
            await dev.add_address("10.8.0.1", peer="10.8.0.2")
        for call in (
            lambda: dev.set_persist(True),
            lambda: dev.set_owner(1),
            lambda: dev.set_group(1),
            lambda: dev.routes(table=5),
        ):
            with pytest.raises(NotImplementedError):
                await call()
        assert rig.iphelper.routes == [] and rig.iphelper.addresses == []
    rig.check_clean()


# -- memory pairs ---------------------------------------------------------------------


async def test_memory_control_parity() -> None:
    a, b = memory_tun_pair()
    async with a, b:
        control = a._control
        assert isinstance(control, MemoryControl)
        await a.add_address("10.8.0.1", peer="10.8.0.2")
        assert [str(x) for x in await a.addresses()] == ["10.8.0.1 peer 10.8.0.2/32"]
        await a.add_route("10.9.0.0/16", gateway="10.8.0.2", table=100, metric=3)
        await a.add_route("10.9.0.0/16", metric=4)
        assert await a.routes() == [Route(prefix="10.9.0.0/16", metric=4, table=254)]
        assert await a.routes(table=100) == [
            Route(prefix="10.9.0.0/16", gateway="10.8.0.2", metric=3, table=100)
        ]
        with pytest.raises(FileExistsError):
            await a.add_route("10.9.0.0/16", table=100, metric=3)
        with pytest.raises(LookupError):
            await a.remove_route("10.9.0.0/16", table=100, gateway="10.8.0.9")
        await a.remove_route("10.9.0.0/16", table=100)
        assert await a.routes(table=100) == []
        await a.set_persist(True)
        await a.set_owner(1000)
        await a.set_group(2000)
        assert (control.persist, control.owner, control.group) == (True, 1000, 2000)
        with pytest.raises(ValueError, match="TAP"):
            await a.set_mac("02:00:00:00:00:01")
        await a.remove_address("10.8.0.1 peer 10.8.0.2")
        assert await a.addresses() == []
    with pytest.raises(trio_tun.ClosedResourceError):
        await a.set_persist(False)
    await anyio.lowlevel.checkpoint()


# -- the address forms (parsers) ------------------------------------------------------

_v4 = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
_v6 = st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1))


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    version=st.sampled_from([4, 6]),
)
def test_peer_address_forms_round_trip(data: st.DataObject, version: int) -> None:
    ips = _v4 if version == 4 else _v6
    local = data.draw(ips)
    peer = data.draw(ips.filter(lambda ip: ip != local))
    prefix = data.draw(st.integers(0, local.max_prefixlen))
    made = PeerAddress(local, ipaddress.ip_interface(f"{peer}/{prefix}"))
    # str() is the form parse takes back, and so is the peer= spelling.
    assert parse_any_address(str(made)) == made
    assert make_peer_address(str(local), f"{peer}/{prefix}") == made
    # A peer without a prefix takes the address's.
    assert make_peer_address(f"{local}/{prefix}", str(peer)) == made
    assert made.ip == local and made.network == ipaddress.ip_interface(f"{peer}/{prefix}").network
    # Two different prefix lengths contradict each other.
    other = data.draw(st.integers(0, local.max_prefixlen - 1))
    if other != prefix:
        with pytest.raises(ValueError, match="two prefix lengths"):
            make_peer_address(f"{local}/{other}", f"{peer}/{prefix}")
    # And the config keeps it as given, among plain addresses.
    config = TunConfig(addresses=[str(made)], mtu=1400 if version == 4 else 1500)
    assert config.addresses == (made,)


@settings(max_examples=200, deadline=None)
@given(
    version=st.sampled_from([4, 6]),
    data=st.data(),
    metric=st.none() | st.integers(0, 2**32 - 1),
    table=st.none() | st.integers(1, 2**32 - 1),
)
def test_route_values(
    version: int, data: st.DataObject, metric: int | None, table: int | None
) -> None:
    ips = _v4 if version == 4 else _v6
    address = data.draw(ips)
    prefixlen = data.draw(st.integers(0, address.max_prefixlen))
    network = ipaddress.ip_interface(f"{address}/{prefixlen}").network
    gateway = data.draw(st.none() | ips)
    route = Route(
        prefix=str(network),
        gateway=None if gateway is None else str(gateway),
        metric=metric,
        table=table,
    )
    assert route.prefix == network and route.gateway == gateway
    assert str(route) == str(network)
    assert Route(prefix=network, gateway=gateway, metric=metric, table=table) == route
    wrong = data.draw(_v6 if version == 4 else _v4)
    with pytest.raises(ValueError, match="IPv"):
        Route(prefix=network, gateway=wrong)
    with pytest.raises(ValueError, match="metric"):
        Route(prefix=network, metric=2**32)
