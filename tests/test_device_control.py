"""Device control on real devices: peer addresses, routes with every option,
persist/owner/group, a TAP's MAC, and devices without IPv6 link-local.

Every test runs in the fresh namespace of the ``netns`` fixture and reads the
kernel's own view back with pyroute2 inside that namespace.
"""

from __future__ import annotations

import functools
import ipaddress
import shutil
import socket
import subprocess
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import attrs
import pytest

import trio_tun
from packets_util import _iproute, echo_reply, is_udp_to, parse, receive_matching, udp_socket
from trio_tun import PeerAddress, Route, TunStream
from trio_tun.testing import NetNamespace

pytestmark = [pytest.mark.kernel, pytest.mark.anyio]

T = TypeVar("T")
PING = shutil.which("ping")


async def _kernel(ns: NetNamespace, op: Callable[[Any], T]) -> T:
    """Run *op* on a pyroute2 IPRoute made inside *ns*, in a worker thread."""

    def run() -> T:
        ipr = _iproute(ns)
        try:
            return op(ipr)
        finally:
            ipr.close()

    return await anyio.to_thread.run_sync(run)


def _addrs(index: int) -> Callable[[Any], set[tuple[str, str, int]]]:
    """(IFA_LOCAL or IFA_ADDRESS, IFA_ADDRESS, prefixlen) of every address on *index*."""

    def op(ipr: Any) -> set[tuple[str, str, int]]:
        out = set()
        for msg in ipr.get_addr(index=index):
            address = msg.get_attr("IFA_ADDRESS")
            out.add((msg.get_attr("IFA_LOCAL") or address, address, msg["prefixlen"]))
        return out

    return op


def _routes(table: int) -> Callable[[Any], dict[str, dict[str, Any]]]:
    """Every route of *table*, by ``dst/len``, with what the kernel says of it."""

    def op(ipr: Any) -> dict[str, dict[str, Any]]:
        out = {}
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in ipr.get_routes(family=family, table=table):
                dst = msg.get_attr("RTA_DST") or ("0.0.0.0" if family == socket.AF_INET else "::")
                out[f"{dst}/{msg['dst_len']}"] = {
                    "oif": msg.get_attr("RTA_OIF"),
                    "gateway": msg.get_attr("RTA_GATEWAY"),
                    "prefsrc": msg.get_attr("RTA_PREFSRC"),
                    "priority": msg.get_attr("RTA_PRIORITY"),
                    "scope": msg["scope"],
                    "table": msg.get_attr("RTA_TABLE"),
                }
        return out

    return op


def _tun_info(index: int) -> Callable[[Any], dict[str, Any]]:
    def op(ipr: Any) -> dict[str, Any]:
        (link,) = ipr.get_links(index)
        data = link.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
        return dict(data["attrs"])

    return op


# -- point-to-point peers ---------------------------------------------------------------


async def test_peer_addresses(netns: NetNamespace) -> None:
    async with trio_tun.open_tun(
        addresses=["10.8.0.1", "fd00:8::1/64"], peer="10.8.0.2", offload=False
    ) as dev:
        kernel = await _kernel(netns, _addrs(dev.index))
        # IFA_LOCAL is ours, IFA_ADDRESS the peer, as `ip addr add A peer B` makes it.
        assert ("10.8.0.1", "10.8.0.2", 32) in kernel
        assert ("fd00:8::1", "fd00:8::1", 64) in kernel
        addresses = await dev.addresses()
        assert addresses[0] == PeerAddress(
            ipaddress.ip_address("10.8.0.1"), ipaddress.ip_interface("10.8.0.2/32")
        )
        assert str(addresses[0]) == "10.8.0.1 peer 10.8.0.2/32"
        assert ipaddress.ip_interface("fd00:8::1/64") in addresses

        # The peer is reachable through the device, from our address.
        with udp_socket() as sock:
            sock.sendto(b"to the peer", ("10.8.0.2", 9))
            packet = await receive_matching(dev, lambda p: is_udp_to(p, "10.8.0.2", 9))
        parsed = parse(packet)
        assert parsed is not None and parsed.src == "10.8.0.1"
        assert parsed.udp_payload == b"to the peer"

        # add_address(peer=...) with an explicit prefix, and the string form.
        await dev.add_address("10.9.0.1", peer="10.9.0.0/24")
        await dev.add_address("fd00:9::1 peer fd00:9::2/128")
        kernel = await _kernel(netns, _addrs(dev.index))
        assert ("10.9.0.1", "10.9.0.0", 24) in kernel
        assert ("fd00:9::1", "fd00:9::2", 128) in kernel
        assert "10.9.0.0/24" in await _kernel(netns, _routes(254))
        with pytest.raises(FileExistsError):
            await dev.add_address("10.9.0.1", peer="10.9.0.0/24")

        # What addresses() returns removes exactly that address.
        for address in await dev.addresses():
            if isinstance(address, PeerAddress) and address.version == 6:
                await dev.remove_address(address)
        await dev.remove_address("10.9.0.1 peer 10.9.0.0/24")
        kernel = await _kernel(netns, _addrs(dev.index))
        assert not {k for k in kernel if k[0] in ("10.9.0.1", "fd00:9::1")}
        assert ("10.8.0.1", "10.8.0.2", 32) in kernel
        with pytest.raises(LookupError):
            await dev.remove_address("10.9.0.1 peer 10.9.0.0/24")


async def test_peer_mistakes_are_refused_before_any_device(netns: NetNamespace) -> None:
    before = netns.links()
    with pytest.raises(ValueError, match="exactly one IPv4"):
        trio_tun.open_tun(addresses=["10.8.0.1", "10.8.1.1"], peer="10.8.0.2")
    with pytest.raises(ValueError, match="exactly one IPv6"):
        trio_tun.open_tun(addresses=["10.8.0.1"], peer="fd00::2")
    with pytest.raises(ValueError, match="two prefix lengths"):
        trio_tun.open_tun(addresses=["10.8.0.1/24"], peer="10.8.0.2/30")
    with pytest.raises(ValueError, match="itself"):
        trio_tun.open_tun(addresses=["10.8.0.1 peer 10.8.0.1"])
    with pytest.raises(ValueError, match="is IPv6 but"):
        trio_tun.open_tun(addresses=["10.8.0.1 peer fd00::2"])
    # A peer without a prefix takes the address's: 10.8.0.0/24 is routed to it.
    async with trio_tun.open_tun(addresses=["10.8.0.1/24"], peer="10.8.0.2", offload=False) as dev:
        assert ("10.8.0.1", "10.8.0.2", 24) in await _kernel(netns, _addrs(dev.index))
    assert netns.links() == before


# -- routes -------------------------------------------------------------------------------


async def test_routes_with_every_option(netns: NetNamespace) -> None:
    async with trio_tun.open_tun(
        addresses=["10.8.0.1/24", "fd00:8::1/64"], offload=False, ipv6_link_local=False
    ) as dev:
        index = dev.index
        await dev.add_route(
            "10.9.0.0/16", gateway="10.8.0.2", source="10.8.0.1", metric=7, table=100
        )
        await dev.add_route("0.0.0.0/0", table=101, scope="link")
        await dev.add_route("fd09::/48", gateway="fd00:8::2", metric=50, table=1000)

        t100 = await _kernel(netns, _routes(100))
        assert t100["10.9.0.0/16"] == {
            "oif": index,
            "gateway": "10.8.0.2",
            "prefsrc": "10.8.0.1",
            "priority": 7,
            "scope": 0,
            "table": 100,
        }
        t101 = await _kernel(netns, _routes(101))
        assert t101["0.0.0.0/0"]["scope"] == 253 and t101["0.0.0.0/0"]["oif"] == index
        t1000 = await _kernel(netns, _routes(1000))
        assert t1000["fd09::/48"]["gateway"] == "fd00:8::2"
        assert t1000["fd09::/48"]["priority"] == 50
        assert t1000["fd09::/48"]["table"] == 1000

        assert await dev.routes(table=100) == [
            Route(
                prefix="10.9.0.0/16",
                gateway="10.8.0.2",
                source="10.8.0.1",
                metric=7,
                table=100,
                scope="global",
            )
        ]
        assert await dev.routes(table=101) == [Route(prefix="0.0.0.0/0", table=101, scope="link")]
        assert await dev.routes(table=1000) == [
            Route(prefix="fd09::/48", gateway="fd00:8::2", metric=50, table=1000, scope="global")
        ]
        # None of them is in the main table, which routes() lists by default.
        main = {str(r) for r in await dev.routes()}
        assert main == {"10.8.0.0/24", "fd00:8::/64"}

        # A Route from routes() goes back in as it is (here: into the main table).
        (reported,) = await dev.routes(table=100)
        await dev.add_route(attrs.evolve(reported, table=None))
        assert "10.9.0.0/16" in await _kernel(netns, _routes(254))

        # Removal names the table; a metric that doesn't match removes nothing.
        with pytest.raises(LookupError):
            await dev.remove_route("fd09::/48", table=1000, metric=51)
        assert "fd09::/48" in await _kernel(netns, _routes(1000))
        await dev.remove_route("fd09::/48", table=1000, metric=50)
        await dev.remove_route("10.9.0.0/16", table=100)
        await dev.remove_route("0.0.0.0/0", table=101)
        assert "10.9.0.0/16" not in await _kernel(netns, _routes(100))
        assert "0.0.0.0/0" not in await _kernel(netns, _routes(101))
        assert "fd09::/48" not in await _kernel(netns, _routes(1000))
        assert "10.9.0.0/16" in await _kernel(netns, _routes(254))
        with pytest.raises(LookupError):
            await dev.remove_route("10.9.0.0/16", table=100)


async def test_routes_same_prefix_two_metrics(netns: NetNamespace) -> None:
    async with trio_tun.open_tun(addresses=["10.8.0.1/24"], offload=False) as dev:
        await dev.add_route("10.11.0.0/16", metric=5)
        await dev.add_route("10.11.0.0/16", metric=6)
        with pytest.raises(FileExistsError):
            await dev.add_route("10.11.0.0/16", metric=6)
        metrics = sorted(r.metric or 0 for r in await dev.routes() if str(r) == "10.11.0.0/16")
        assert metrics == [5, 6]
        await dev.remove_route("10.11.0.0/16", metric=6)
        metrics = sorted(r.metric or 0 for r in await dev.routes() if str(r) == "10.11.0.0/16")
        assert metrics == [5]
        # A route via a gateway carries traffic through the device.
        await dev.add_route("10.12.0.0/16", gateway="10.8.0.2")
        with udp_socket() as sock:
            sock.sendto(b"via", ("10.12.1.2", 9))
            packet = await receive_matching(dev, lambda p: is_udp_to(p, "10.12.1.2", 9))
        parsed = parse(packet)
        assert parsed is not None and parsed.udp_payload == b"via"


async def test_route_mistakes_are_refused_before_any_call(netns: NetNamespace) -> None:
    async with trio_tun.open_tun(addresses=["10.8.0.1/24"], offload=False) as dev:
        before = await dev.routes()
        with pytest.raises(ValueError, match="IPv6"):
            await dev.add_route("10.13.0.0/16", gateway="fd00::1")
        with pytest.raises(ValueError, match="scope"):
            await dev.add_route("10.13.0.0/16", scope="nowhere")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="gateway"):
            await dev.add_route("10.13.0.0/16", gateway="10.8.0.2", scope="link")
        with pytest.raises(ValueError, match="table"):
            await dev.add_route("10.13.0.0/16", table=0)
        with pytest.raises(ValueError, match="bad route prefix"):
            await dev.add_route("10.13.0.1/16")
        with pytest.raises(TypeError):
            await dev.add_route(Route(prefix="10.13.0.0/16"), metric=3)
        with pytest.raises(TypeError):
            await dev.routes(table="main")  # type: ignore[arg-type]
        assert await dev.routes() == before


# -- persist, owner, group, MAC -------------------------------------------------------------


async def test_persist_owner_group(netns: NetNamespace) -> None:
    async with trio_tun.open_tun("ctl0", offload=False) as dev:
        index = dev.index
        await dev.set_owner(1234)
        await dev.set_group(4321)
        info = await _kernel(netns, _tun_info(index))
        assert info["IFLA_TUN_OWNER"] == 1234
        assert info["IFLA_TUN_GROUP"] == 4321
        await dev.set_owner(4242)
        assert (await _kernel(netns, _tun_info(index)))["IFLA_TUN_OWNER"] == 4242
        await dev.set_persist(True)
        assert (await _kernel(netns, _tun_info(index)))["IFLA_TUN_PERSIST"] == 1
        with pytest.raises(ValueError):
            await dev.set_owner(-1)  # the kernel's "invalid uid", which it refuses
        with pytest.raises(TypeError):
            await dev.set_persist(1)  # type: ignore[arg-type]
    # Persistent: it outlived the stream.
    assert "ctl0" in netns.links()
    async with trio_tun.open_tun("ctl0", offload=False) as dev:
        assert dev.index == index
        # Attached without persist=True: it goes with this stream, as before.
        assert (await _kernel(netns, _tun_info(index)))["IFLA_TUN_PERSIST"] == 0
        await dev.set_persist(True)
        await dev.set_persist(False)
    assert "ctl0" not in netns.links()


async def test_set_mac(netns: NetNamespace) -> None:
    async with trio_tun.open_tap(mac="02:00:00:00:00:01") as dev:
        await dev.set_mac("02:11:22:33:44:55")
        link = await _kernel(netns, lambda ipr: ipr.get_links(dev.index)[0])
        assert link.get_attr("IFLA_ADDRESS") == "02:11:22:33:44:55"
        await dev.set_mac(bytes.fromhex("020000abcdef"))
        link = await _kernel(netns, lambda ipr: ipr.get_links(dev.index)[0])
        assert link.get_attr("IFLA_ADDRESS") == "02:00:00:ab:cd:ef"
        with pytest.raises(ValueError, match="multicast"):
            await dev.set_mac("01:00:5e:00:00:01")
    async with trio_tun.open_tun(offload=False) as tun:
        with pytest.raises(ValueError, match="TAP"):
            await tun.set_mac("02:11:22:33:44:55")


async def test_control_after_close_is_closed(netns: NetNamespace) -> None:
    async with trio_tun.open_tun(offload=False) as dev:
        pass
    for call in (
        lambda: dev.set_persist(True),
        lambda: dev.set_owner(1),
        lambda: dev.set_group(1),
        lambda: dev.routes(table=100),
        lambda: dev.add_route("10.1.0.0/16", gateway="10.2.0.1"),
    ):
        with pytest.raises(trio_tun.ClosedResourceError):
            await call()


# -- no IPv6 link-local -------------------------------------------------------------------


async def _ping_and_collect(netns: NetNamespace, dev: TunStream, count: int) -> list[bytes]:
    """Ping 10.8.0.2 *count* times, answering each; return everything the device read."""
    if PING is None:
        pytest.skip("ping (iputils-ping) is not installed")
    seen: list[bytes] = []

    async def responder() -> None:
        for _ in range(1000):
            packet = await dev.receive()
            seen.append(packet)
            reply = echo_reply(packet)
            if reply is not None:
                await dev.send(reply)

    argv = [PING, "-n", "-c", str(count), "-i", "0.2", "-W", "5", "10.8.0.2"]
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(responder)
            run = functools.partial(netns.run, argv, timeout=20, check=False)
            result: subprocess.CompletedProcess[str] = await anyio.to_thread.run_sync(run)
            # Whatever the kernel would add (a router solicitation, MLD) has had
            # the whole ping run and this moment more to show up.
            await anyio.sleep(0.3)
            tg.cancel_scope.cancel()
    assert result.returncode == 0, result.stdout + result.stderr
    return seen


async def test_no_ipv6_link_local(netns: NetNamespace) -> None:
    async with trio_tun.open_tun(
        addresses=["10.8.0.1/24"], offload=False, ipv6_link_local=False
    ) as dev:
        addresses = await dev.addresses()
        assert addresses == [ipaddress.ip_interface("10.8.0.1/24")]
        link = await _kernel(netns, lambda ipr: ipr.get_links(dev.index)[0])
        inet6 = dict(link.get_attr("IFLA_AF_SPEC")["attrs"])["AF_INET6"]
        assert dict(inet6["attrs"])["IFLA_INET6_ADDR_GEN_MODE"] == 1
        seen = await _ping_and_collect(netns, dev, 3)
    # Exactly the three echo requests: no router solicitation, no MLD report.
    assert len(seen) == 3, [p[:1].hex() for p in seen]
    assert all(echo_reply(p) is not None for p in seen)


async def test_default_device_has_link_local(netns: NetNamespace) -> None:
    """The contrast: by default the kernel adds fe80:: and talks from it."""
    async with trio_tun.open_tun(addresses=["10.8.0.1/24"], offload=False) as dev:
        seen = await _ping_and_collect(netns, dev, 3)
        addresses = await dev.addresses()
    assert any(a.version == 6 and a.ip.is_link_local for a in addresses)
    assert len([p for p in seen if echo_reply(p) is not None]) == 3
    assert any(p[0] >> 4 == 6 for p in seen)  # the kernel's own IPv6 chatter
