"""Soak: an engine-based forwarder under iperf3 load, restarted and reshaped at random.

Run as root: ``nox -s soak`` (or ``python bench/soak.py --duration 600``).  Not
part of the test command.

Topology, all in throw-away network namespaces (the process itself first
moves into a private namespace of its own, so nothing here can touch the
machine's interfaces)::

    ns A: iperf3 client -- tun "sa" 10.70.1.1
            ==(engine A <-> engine B)==
    ns B: iperf3 server -- tun "sb" 10.70.2.1

Both devices have ``--queues`` queues and offload.  The forwarder runs in
*cycles*: each cycle opens an :class:`~trio_tun.engine.OffloadEngine` on each
device and pumps batches both ways; every couple of seconds it detaches or
re-attaches a random queue, and after a random few seconds the cycle ends by
cancelling its scope (or by ``aclose`` with a random grace), then a new cycle
starts.  iperf3 runs back to back (TCP both ways, sometimes UDP) in the
meantime; runs that fail while the forwarder is restarting are counted, not
fatal.

Figures are taken between cycles (engines closed, load driver alive) once
after the warm-up and once at the end: RSS, open fds, Trio tasks alive,
threads, packets forwarded and dropped.  The run passes when RSS grew by less
than ``--rss-budget`` (2 MB) after warm-up, fds and tasks are back to their
start values, every engine's accounting identity held, and no unexpected
exception happened.  Exit status 0 = pass, 1 = a target missed.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import attrs
import trio

import trio_tun
from trio_tun import TunStream
from trio_tun.engine import OffloadEngine
from trio_tun.platform.linux import netns as _netns
from trio_tun.testing import NetNamespace, fd_count

A_ADDR = "10.70.1.1"
B_ADDR = "10.70.2.1"
PORTS = itertools.cycle(range(5301, 5399))
#: Longest a single iperf3 run may take before it is killed (on top of its -t).
IPERF_SLACK = 20.0


@attrs.define
class Totals:
    """Counters summed over every engine cycle so far."""

    cycles: int = 0
    forwarded: int = 0
    dropped: int = 0
    rx_dropped: int = 0
    detaches: int = 0
    attaches: int = 0
    cancels: int = 0
    acloses: int = 0
    iperf_runs: int = 0
    iperf_failures: int = 0
    iperf_bytes: int = 0
    iperf_errors: dict[str, int] = attrs.field(factory=dict)
    accounting_errors: list[str] = attrs.field(factory=list)
    unexpected: list[str] = attrs.field(factory=list)


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def _walk(task: trio.lowlevel.Task) -> Iterator[trio.lowlevel.Task]:
    yield task
    for nursery in task.child_nurseries:
        for child in nursery.child_tasks:
            yield from _walk(child)


def tasks_alive() -> int:
    """Trio tasks alive in this run, the root and system tasks included."""
    return sum(1 for _ in _walk(trio.lowlevel.current_root_task()))


def fd_kinds() -> dict[str, int]:
    """Open fds by what they point to (``socket``, ``anon_inode:[eventpoll]``, a path)."""
    kinds: dict[str, int] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the fd listdir itself used
        kind = target.split(":[")[0] if ":[" in target else target
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def snapshot(totals: Totals, elapsed: float) -> dict[str, Any]:
    gc.collect()
    return {
        "t": round(elapsed, 1),
        "rss_kib": rss_kib(),
        "fds": fd_count(),
        "fd_kinds": fd_kinds(),
        "tasks": tasks_alive(),
        "threads": threading.active_count(),
        "cycles": totals.cycles,
        "forwarded": totals.forwarded,
        "dropped": totals.dropped,
        "rx_dropped": totals.rx_dropped,
        "iperf_runs": totals.iperf_runs,
        "iperf_failures": totals.iperf_failures,
        "iperf_gbytes": round(totals.iperf_bytes / 1e9, 2),
    }


# -- load ------------------------------------------------------------------------


async def _run_iperf(
    a_ns: NetNamespace, b_ns: NetNamespace, seconds: int, mode: str, totals: Totals
) -> None:
    port = next(PORTS)
    server = b_ns.popen(
        ["iperf3", "-s", "-1", "-B", B_ADDR, "-p", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client: subprocess.Popen[bytes] | None = None
    try:
        await trio.sleep(0.3)  # let the server listen
        argv = ["iperf3", "-c", B_ADDR, "-p", str(port), "-t", str(seconds), "-J"]
        argv += ["--connect-timeout", "3000"]
        if mode == "reverse":
            argv.append("-R")
        elif mode == "udp":
            argv += ["-u", "-b", "300M", "-l", "1400"]
        else:
            argv += ["-P", "2"]
        # Output goes to a file whose fd is closed at once: an open pipe, file
        # or waiting thread would show up in the counts this soak watches.
        out_path = os.path.join(tempfile.gettempdir(), f"trio-tun-soak-{os.getpid()}-{port}.json")
        try:
            client = _start_client(a_ns, argv, out_path)
            deadline = time.monotonic() + seconds + IPERF_SLACK
            while client.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
                await trio.sleep(0.2)
            if client.poll() is None:
                client.kill()
                client.wait()
            out = _read_and_remove(out_path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(out_path)  # when we were cancelled before reading it
        totals.iperf_runs += 1
        moved, problem = _bytes_moved(out)
        if moved is None:
            totals.iperf_failures += 1
            key = f"{mode}: {problem}"[:80]
            totals.iperf_errors[key] = totals.iperf_errors.get(key, 0) + 1
        else:
            totals.iperf_bytes += moved
    finally:
        for proc in (client, server):
            if proc is not None and proc.poll() is None:
                proc.kill()
            if proc is not None:
                proc.wait()


def _start_client(a_ns: NetNamespace, argv: list[str], out_path: str) -> subprocess.Popen[bytes]:
    with open(out_path, "wb") as out_file:
        return a_ns.popen(argv, stdin=subprocess.DEVNULL, stdout=out_file, stderr=subprocess.STDOUT)


def _read_and_remove(path: str) -> bytes:
    with open(path, "rb") as out_file:
        out = out_file.read()
    os.unlink(path)
    return out


def _bytes_moved(output: bytes) -> tuple[int | None, str]:
    """Bytes an iperf3 run moved (from its JSON), or None and why not."""
    try:
        report = json.loads(output)
    except ValueError:
        return None, "no JSON: " + output[-60:].decode(errors="replace")
    if "error" in report:
        return None, str(report["error"])
    try:
        end = report["end"]
        summary = end.get("sum_received") or end.get("sum")
        return int(summary["bytes"]), ""
    except (KeyError, TypeError):
        return None, "no summary in the JSON"


async def load(a_ns: NetNamespace, b_ns: NetNamespace, totals: Totals) -> None:
    """iperf3 runs back to back until cancelled."""
    rng = random.Random(1)
    while True:
        mode = rng.choice(["tcp", "tcp", "reverse", "udp"])
        await _run_iperf(a_ns, b_ns, rng.randint(5, 15), mode, totals)


# -- the forwarder ---------------------------------------------------------------


async def _pump(src: OffloadEngine, dst: OffloadEngine) -> None:
    async for batch in src:
        try:
            await dst.send_batch(batch)
        except trio.ClosedResourceError:
            return  # the other engine is shutting down


async def _reshape(rng: random.Random, engines: list[OffloadEngine], totals: Totals) -> None:
    """Every 1-3 s detach or re-attach a random queue of a random engine."""
    while True:
        await trio.sleep(rng.uniform(1.0, 3.0))
        engine = rng.choice(engines)
        index = rng.randrange(len(engine.queues))
        if index in engine.enabled_queues():
            if len(engine.enabled_queues()) > 1:
                await engine.detach_queue(index)
                totals.detaches += 1
        else:
            await engine.attach_queue(index)
            totals.attaches += 1


def _account(engine: OffloadEngine, totals: Totals) -> None:
    stats = engine.statistics()
    totals.forwarded += stats.written
    totals.dropped += stats.dropped
    totals.rx_dropped += stats.rx_dropped
    if stats.in_flight != 0 or stats.accepted != stats.written + stats.dropped:
        totals.accounting_errors.append(repr(stats))


async def cycle(a: TunStream, b: TunStream, rng: random.Random, totals: Totals) -> None:
    """One engine lifetime: random length, random way of ending."""
    grace = rng.choice([0.0, 0.1, 0.5, 1.0])
    lifetime = rng.uniform(2.0, 8.0)
    use_aclose = rng.random() < 0.3
    engines: list[OffloadEngine] = []
    with trio.CancelScope() as scope:
        async with a.engine(grace=grace) as ea, b.engine(grace=grace) as eb:
            engines[:] = [ea, eb]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_pump, ea, eb)
                nursery.start_soon(_pump, eb, ea)
                nursery.start_soon(_reshape, rng, engines, totals)
                await trio.sleep(lifetime)
                if use_aclose:
                    # Engines end first; the pumps then see the end of their stream.
                    await ea.aclose(grace=rng.uniform(0.0, 0.5))
                    await eb.aclose(grace=rng.uniform(0.0, 0.5))
                    totals.acloses += 1
                    nursery.cancel_scope.cancel()
                else:
                    totals.cancels += 1
                    scope.cancel()
    for engine in engines:
        _account(engine, totals)
    # A queue left detached by the last engine goes back to the kernel, so the
    # next engine starts with the device whole.
    for stream in (*a.queues, *b.queues):
        if not stream.queue_attached:
            stream.attach_queue()
    totals.cycles += 1


async def soak(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    totals = Totals()
    fds_before = fd_count()
    a_ns = NetNamespace.create()
    b_ns = NetNamespace.create()
    started = time.monotonic()
    start: dict[str, Any] | None = None
    end: dict[str, Any] | None = None
    try:
        async with (
            trio_tun.open_tun(
                "sa", addresses=[f"{A_ADDR}/24"], netns=a_ns.fileno(), queues=args.queues
            ) as a,
            trio_tun.open_tun(
                "sb", addresses=[f"{B_ADDR}/24"], netns=b_ns.fileno(), queues=args.queues
            ) as b,
        ):
            await a.add_route("10.70.2.0/24")
            await b.add_route("10.70.1.0/24")
            print(
                f"devices up: {a.name} (ns A), {b.name} (ns B), {args.queues} queues, "
                f"offload {a.offload}, offload implementation "
                f"{trio_tun.offload.implementation}",
                flush=True,
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(load, a_ns, b_ns, totals)
                last_report = 0.0
                while True:
                    elapsed = time.monotonic() - started
                    if start is None and elapsed >= args.warmup:
                        start = snapshot(totals, elapsed)
                        print("start", json.dumps(start), flush=True)
                    if elapsed >= args.duration:
                        end = snapshot(totals, elapsed)
                        print("end  ", json.dumps(end), flush=True)
                        break
                    if elapsed - last_report >= args.report_every:
                        last_report = elapsed
                        print("  ...", json.dumps(snapshot(totals, elapsed)), flush=True)
                    try:
                        await cycle(a, b, rng, totals)
                    except Exception as exc:  # recorded; the verdict below fails the run
                        totals.unexpected.append(f"{type(exc).__name__}: {exc}")
                        print("UNEXPECTED", repr(exc), flush=True)
                        if len(totals.unexpected) > 5:
                            break
                nursery.cancel_scope.cancel()
    finally:
        b_ns.close()
        a_ns.close()
    fds_after = fd_count()
    return verdict(args, totals, start, end, fds_before, fds_after)


def verdict(
    args: argparse.Namespace,
    totals: Totals,
    start: dict[str, Any] | None,
    end: dict[str, Any] | None,
    fds_before: int,
    fds_after: int,
) -> int:
    problems: list[str] = []
    if start is None or end is None:
        problems.append("the run ended before both figures were taken")
    else:
        growth = end["rss_kib"] - start["rss_kib"]
        print(
            f"RSS growth after warm-up: {growth} KiB (budget {args.rss_budget} KiB); "
            f"fds {start['fds']} -> {end['fds']}; tasks {start['tasks']} -> {end['tasks']}; "
            f"threads {start['threads']} -> {end['threads']}"
        )
        if growth >= args.rss_budget:
            problems.append(f"RSS grew by {growth} KiB")
        if end["fds"] != start["fds"]:
            problems.append(f"fd count {start['fds']} -> {end['fds']}")
        if end["tasks"] != start["tasks"]:
            problems.append(f"task count {start['tasks']} -> {end['tasks']}")
    if fds_after != fds_before:
        problems.append(f"fds before setup {fds_before}, after teardown {fds_after}")
    problems += [f"accounting: {e}" for e in totals.accounting_errors]
    problems += [f"unexpected exception: {e}" for e in totals.unexpected]
    if totals.forwarded == 0:
        problems.append("nothing was forwarded")
    print("totals", json.dumps(attrs.asdict(totals)))
    print(f"fds before setup {fds_before}, after teardown {fds_after}")
    if problems:
        print("FAIL:", "; ".join(problems))
        return 1
    print("PASS")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds before the start figures (default: 150, or a quarter of a shorter run)",
    )
    parser.add_argument("--queues", type=int, default=3, help="queues per device (default 3)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rss-budget", type=int, default=2048, help="KiB (default 2048)")
    parser.add_argument("--report-every", type=float, default=60.0, help="seconds")
    args = parser.parse_args()
    if args.warmup is None:
        # RSS climbs for the first two minutes or so (allocator arenas and
        # buffers reaching their working set as cycles try different queue
        # counts), then stays flat: a 60 s warm-up counted that climb (3.2 MB,
        # then +0.15 MB over the last eight minutes of a 10-minute run).
        args.warmup = min(150.0, args.duration / 4)
    if args.queues < 2:
        parser.error("--queues must be at least 2 (queues are detached and re-attached)")
    if os.geteuid() != 0:
        print("the soak needs root (network namespaces, TUN devices)", file=sys.stderr)
        return 2
    if shutil.which("iperf3") is None:
        print("iperf3 is missing (apt-get install iperf3)", file=sys.stderr)
        return 2
    # Before any thread exists: every later thread inherits this private namespace.
    _netns.unshare_net()
    return trio.run(soak, args)


if __name__ == "__main__":
    sys.exit(main())
