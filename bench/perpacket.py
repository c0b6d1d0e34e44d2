"""Where a forwarded packet's time goes without offload: a cost ladder.

One TUN device without offload in a private network namespace, IP
forwarding on: every IPv4 packet written into the device is routed by the
kernel straight back out of it, so a *round* (write N packets, read the N
forwarded copies back) is a forwarder's work for N packets, with the
kernel's own forwarding in place of the other device.  The same round is
timed at each rung of the ladder, from the bare system-call loops up to the
library's per-packet API, so that the difference between two rungs is what
that layer costs per packet:

``c-loops``          the compiled ``write_frames``/``read_frames`` loops on the fd
``py-syscalls``      ``os.write``/``os.read`` per packet, as python-pytun does
``port``             the stream's port (``FdPort.write_frames``/``read_frames``)
``batch-trio``       ``send_batch``/``receive_batch`` under Trio (the library)
``batch-asyncio``    the same under anyio on asyncio
``packet-trio``      ``send``/``receive``, one packet per call, under Trio

For each rung: nanoseconds per packet (wall, median over rounds), the
thread's CPU time per packet over all rounds, and the share of it spent in
the kernel (``getrusage``'s system time): that is the kernel's
write path (which also forwards the packet) and read path; user time is
Python and the library.  Compare rungs within one run, not across runs
(the machine is shared).

    python bench/perpacket.py [--packets 64] [--rounds 200] [--repeat 5] [--size 1400]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import select
import statistics
import struct
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Final

import anyio
import trio

import trio_tun
from trio_tun import PacketStream
from trio_tun.platform.linux import netns as _netns

try:
    from trio_tun.offload import _speedups
except ImportError:  # built without the extension: the c-loops rung is skipped
    _speedups = None  # type: ignore[assignment]

LOCAL: Final = "10.77.0.1"
SOURCE: Final = "10.77.0.2"
TARGET: Final = "10.77.0.3"
#: Bound on one round's wait for the forwarded copies (never reached when well).
ROUND_DEADLINE: Final = 5.0


def _sysctl(path: str, value: str) -> None:
    Path("/proc/sys", path).write_text(value)


def _ones_complement(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp4(index: int, size: int) -> bytes:
    """An IPv4/UDP packet of *size* bytes from SOURCE to TARGET (UDP checksum 0)."""
    payload = index.to_bytes(4, "big") * ((size - 28) // 4)
    payload += bytes(size - 28 - len(payload))
    udp = struct.pack("!HHHH", 40000, 9, 8 + len(payload), 0) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(udp),
        index & 0xFFFF,
        0,
        64,
        17,
        0,
        bytes(map(int, SOURCE.split("."))),
        bytes(map(int, TARGET.split("."))),
    )
    header = header[:10] + _ones_complement(header).to_bytes(2, "big") + header[12:]
    return header + udp


class Rung:
    """Wall and CPU time of rounds, per packet."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.wall: list[float] = []
        self.packets = 0
        self.cpu_ns = 0
        self.user = 0.0
        self.system = 0.0

    def add_cpu(
        self, packets: int, before: tuple[int, float, float], after: tuple[int, float, float]
    ) -> None:
        # The thread's CPU clock is exact; getrusage's user/system split ticks
        # by the jiffy, so it is only taken over whole measurements.
        self.packets += packets
        self.cpu_ns += after[0] - before[0]
        self.user += after[1] - before[1]
        self.system += after[2] - before[2]

    @property
    def cpu(self) -> float:
        return self.cpu_ns / self.packets if self.packets else 0.0

    @property
    def system_share(self) -> float:
        total = self.user + self.system
        return self.system / total if total > 0 else 0.0


def _cpu() -> tuple[int, float, float]:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return time.thread_time_ns(), usage.ru_utime, usage.ru_stime


def _wait(fd: int, events: int, deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("the round did not finish in time (packets lost or fd stuck)")
    poller = select.poll()
    poller.register(fd, events)
    poller.poll(remaining * 1000)


def sync_round(fd: int, frames: list[bytes], how: str, size: int) -> int:
    """Write *frames*, read as many back; returns packets read (bounded by time)."""
    n = len(frames)
    got = 0
    deadline = time.monotonic() + ROUND_DEADLINE
    if how == "c-loops":
        index = 0
        while index < n:
            index, status, _ = _speedups.write_frames(fd, frames, index)
            if status and index < n:
                _wait(fd, select.POLLOUT, deadline)
        while got < n:
            read, _ = _speedups.read_frames(fd, n - got, size)
            got += len(read)
            if got < n and not read:
                _wait(fd, select.POLLIN, deadline)
    else:
        for frame in frames:
            os.write(fd, frame)
        while got < n:
            try:
                os.read(fd, size)
            except BlockingIOError:
                _wait(fd, select.POLLIN, deadline)
                continue
            got += 1
    return got


async def port_round(dev: PacketStream, frames: list[bytes], size: int) -> int:
    port = dev._port  # the layer under the stream, on purpose
    n = len(frames)
    index = 0
    while index < n:
        index, _, status, error = port.write_frames(frames, index)  # type: ignore[attr-defined]
        if error is not None:
            raise error
        if status and index < n:
            await port.wait_writable()
    got = 0
    with anyio.fail_after(ROUND_DEADLINE):
        while got < n:
            read = port.read_frames(n - got, size)  # type: ignore[attr-defined]
            got += len(read)
            if got < n and not read:
                await port.wait_readable()
    return got


async def batch_round(dev: PacketStream, frames: list[bytes]) -> int:
    await dev.send_batch(frames)
    got = 0
    with anyio.fail_after(ROUND_DEADLINE):
        while got < len(frames):
            got += len(await dev.receive_batch(len(frames) - got))
    return got


async def packet_round(dev: PacketStream, frames: list[bytes]) -> int:
    for frame in frames:
        await dev.send(frame)
    with anyio.fail_after(ROUND_DEADLINE):
        for _ in frames:
            await dev.receive()
    return len(frames)


async def measure(
    rung: Rung, frames: list[bytes], rounds: int, one_round: Callable[[], Awaitable[int]]
) -> None:
    for _ in range(max(1, rounds // 10)):  # warm-up
        await one_round()
    before = _cpu()
    for _ in range(rounds):
        started = time.perf_counter_ns()
        got = await one_round()
        rung.wall.append((time.perf_counter_ns() - started) / len(frames))
        if got != len(frames):
            raise RuntimeError(f"{rung.name}: {got} of {len(frames)} packets came back")
    rung.add_cpu(rounds * len(frames), before, _cpu())


async def run_rungs(args: argparse.Namespace, backend: str, rungs: dict[str, Rung]) -> None:
    frames = [udp4(i, args.size) for i in range(args.packets)]
    size = args.size + 64
    async with trio_tun.open_tun(
        "pp%d", addresses=[f"{LOCAL}/24"], offload=False, mtu=1500, ipv6_link_local=False
    ) as dev:
        fd = dev.fileno()
        if backend == "trio":
            for how in ("c-loops", "py-syscalls"):
                if how == "c-loops" and _speedups is None:
                    continue
                rung = rungs.setdefault(how, Rung(how))

                async def sync(how: str = how) -> int:
                    return sync_round(fd, frames, how, size)

                await measure(rung, frames, args.rounds, sync)
            await measure(
                rungs.setdefault("port", Rung("port")),
                frames,
                args.rounds,
                lambda: port_round(dev, frames, size),
            )
        name = f"batch-{backend}"
        await measure(
            rungs.setdefault(name, Rung(name)),
            frames,
            args.rounds,
            lambda: batch_round(dev, frames),
        )
        if backend == "trio":
            await measure(
                rungs.setdefault("packet-trio", Rung("packet-trio")),
                frames,
                args.rounds,
                lambda: packet_round(dev, frames),
            )


def report(rungs: dict[str, Rung], args: argparse.Namespace) -> str:
    floor = statistics.median(rungs["c-loops"].wall) if "c-loops" in rungs else None
    lines = [
        "# Cost per forwarded packet without offload",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')}, Linux {platform.release()}, "
        f"Python {platform.python_version()}; {args.packets} packets of {args.size} bytes "
        f"per round, {args.rounds} rounds per rung, the ladder run {args.repeat} times "
        "over; ns/packet is the median round's.",
        "",
        "| rung | ns/packet | CPU ns/packet | of it in the kernel | vs c-loops |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for rung in rungs.values():
        wall = statistics.median(rung.wall)
        ratio = f"{wall / floor:.2f}x" if floor else "-"
        lines.append(
            f"| {rung.name} | {wall:,.0f} | {rung.cpu:,.0f} | {rung.system_share:.0%} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--packets", type=int, default=64, help="packets per round")
    parser.add_argument("--rounds", type=int, default=200, help="timed rounds per rung")
    parser.add_argument("--repeat", type=int, default=5, help="times the whole ladder runs")
    parser.add_argument("--size", type=int, default=1400, help="bytes per packet")
    parser.add_argument("--output", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("this benchmark needs root (a network namespace and a TUN device)")
        return 2
    if not 64 <= args.size <= 1500 or not 1 <= args.packets <= 256 or args.rounds < 1:
        parser.error("--size 64..1500, --packets 1..256, --rounds >= 1")
    if not 1 <= args.repeat <= 100:
        parser.error("--repeat 1..100")
    # Everything below lives in a private namespace, never the machine's own.
    _netns.unshare_net()
    _sysctl("net/ipv4/ip_forward", "1")
    for scope in ("all", "default"):
        # Routed back out of the device it came in on: no ICMP redirects.
        _sysctl(f"net/ipv4/conf/{scope}/send_redirects", "0")
    rungs: dict[str, Rung] = {}
    # The ladder several times over, so that a neighbour's burst of load hits
    # every rung alike rather than one of them.
    for _ in range(args.repeat):
        trio.run(run_rungs, args, "trio", rungs)
        anyio.run(run_rungs, args, "asyncio", rungs, backend="asyncio")
    table = report(rungs, args)
    print(table)
    if args.output is not None:
        args.output.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
