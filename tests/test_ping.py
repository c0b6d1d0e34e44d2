"""The real ``ping`` gets its replies from an echo responder written with trio-tun."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess

import anyio
import anyio.to_thread
import pytest

import trio_tun
from packets_util import IPPROTO_ICMP, IPPROTO_ICMPV6, echo_reply, parse
from trio_tun import TunStream
from trio_tun.testing import NetNamespace

pytestmark = [pytest.mark.kernel, pytest.mark.anyio]

PING = shutil.which("ping")


async def _responder(dev: TunStream, requests: list[bytes], replies: list[bytes]) -> None:
    """Answer every echo request; ignore the kernel's own chatter (RS, MLD)."""
    for _ in range(10_000):
        packet = await dev.receive()
        reply = echo_reply(packet)
        if reply is None:
            continue
        requests.append(packet)
        replies.append(reply)
        await dev.send(reply)


async def _ping(netns: NetNamespace, *argv: str) -> tuple[list[bytes], list[bytes], str]:
    if PING is None:
        pytest.skip("ping (iputils-ping) is not installed")
    requests: list[bytes] = []
    replies: list[bytes] = []
    async with trio_tun.open_tun(
        addresses=["10.8.0.1/24", "fd00:8::1/64"], mtu=1400, offload=False
    ) as dev:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(_responder, dev, requests, replies)
                run = functools.partial(netns.run, [PING, *argv], timeout=30, check=False)
                result: subprocess.CompletedProcess[str] = await anyio.to_thread.run_sync(run)
                tg.cancel_scope.cancel()
        assert result.returncode == 0, result.stdout + result.stderr
        assert dev.statistics().tx_packets == len(replies)
    return requests, replies, result.stdout


def _assert_three_received(output: str) -> None:
    match = re.search(r"(\d+) packets transmitted, (\d+) received", output)
    assert match is not None, output
    assert match.groups() == ("3", "3"), output


async def test_ping_ipv4(netns: NetNamespace) -> None:
    requests, replies, output = await _ping(netns, "-c", "3", "-i", "0.2", "-W", "5", "10.8.0.2")
    _assert_three_received(output)
    assert len(requests) == len(replies) == 3
    for request, reply in zip(requests, replies, strict=True):
        req, rep = parse(request), parse(reply)
        assert req is not None
        assert rep is not None
        assert (req.src, req.dst) == ("10.8.0.1", "10.8.0.2")
        assert (rep.src, rep.dst) == ("10.8.0.2", "10.8.0.1")
        assert req.proto == rep.proto == IPPROTO_ICMP
        assert req.header_checksum_ok
        assert req.l4_checksum_ok
        assert rep.header_checksum_ok
        assert rep.l4_checksum_ok
        # Same identifier, sequence number and data; only the type changed.
        assert rep.payload[0] == 0
        assert rep.payload[4:] == req.payload[4:]


async def test_ping_ipv6(netns: NetNamespace) -> None:
    requests, replies, output = await _ping(
        netns, "-6", "-c", "3", "-i", "0.2", "-W", "5", "fd00:8::2"
    )
    _assert_three_received(output)
    assert len(requests) == len(replies) == 3
    for request, reply in zip(requests, replies, strict=True):
        req, rep = parse(request), parse(reply)
        assert req is not None
        assert rep is not None
        assert (req.src, req.dst) == ("fd00:8::1", "fd00:8::2")
        assert (rep.src, rep.dst) == ("fd00:8::2", "fd00:8::1")
        assert req.proto == rep.proto == IPPROTO_ICMPV6
        assert req.l4_checksum_ok  # pseudo-header included
        assert rep.l4_checksum_ok
        assert rep.payload[0] == 129
        assert rep.payload[4:] == req.payload[4:]
