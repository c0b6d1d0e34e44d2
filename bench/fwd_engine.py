"""trio-tun engine/worker forwarder for bench/forward.py: every queue of both devices.

Modes (``--queues N``, offload always on):
  engine   one process: an ``OffloadEngine`` over the N attached queues of each
           device, forwarding engine A -> engine B and back
           (``async for batch in ea: await eb.send_batch(batch)``).
  workers  (``--workers``) a ``WorkerPool`` running
           ``trio_tun.workers:forward_pair`` in N worker processes, worker i
           forwarding queue i of A to queue i of B and back; this process is
           the pool's parent and only supervises.

With N > 1 the devices are multi-queue (``IFF_MULTI_QUEUE``, created so by the
harness) and N fds are attached to each, all with the same flags.
"""

from __future__ import annotations

import argparse
import functools
import signal
import sys
from collections.abc import Sequence
from typing import Any

import _fwdcommon
import attrs
import trio

import trio_tun
import trio_tun.offload
from trio_tun import PacketStream
from trio_tun.engine import OffloadEngine
from trio_tun.workers import WorkerPool

#: Seconds the engines get to flush on SIGTERM.
GRACE = 1.0
#: Seconds workers get after SIGTERM before the pool kills them.
WORKER_STOP_GRACE = 3.0
#: Exit status when a worker died during the run.
WORKER_FAILED = 3


def _extra_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queues", type=int, default=1, help="queues per device (default 1)")
    parser.add_argument(
        "--workers", action="store_true", help="one worker process per queue pair (WorkerPool)"
    )


async def _run_engines(
    a: Sequence[PacketStream], b: Sequence[PacketStream], info: dict[str, Any]
) -> list[OffloadEngine]:
    engines: list[OffloadEngine] = []
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with OffloadEngine(a, grace=GRACE) as ea, OffloadEngine(b, grace=GRACE) as eb:
            engines[:] = [ea, eb]
            async with trio.open_nursery() as nursery:
                # Run to completion: each reader writes what it read straight
                # into the other device's queue of the same index.
                nursery.start_soon(functools.partial(ea.serve, reply_to=eb))
                nursery.start_soon(functools.partial(eb.serve, reply_to=ea))
                _fwdcommon.announce_ready(info)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break
    return engines


async def _run_workers(
    a: Sequence[PacketStream], b: Sequence[PacketStream], info: dict[str, Any]
) -> str | None:
    """Run the pool until SIGTERM; a description of the first worker failure, if any."""
    failed: list[str] = []
    assignments = [(a[i], b[i]) for i in range(len(a))]
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with (
            WorkerPool(
                "trio_tun.workers:forward_pair", assignments, stop_grace=WORKER_STOP_GRACE
            ) as pool,
            trio.open_nursery() as nursery,
        ):

            async def watch() -> None:
                failure = await pool.failures()
                failed.append(f"worker {failure.index} exited with {failure.returncode}")
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            info["worker_pids"] = [pool.pid(i) for i in range(pool.size)]
            _fwdcommon.announce_ready(info)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    return failed[0] if failed else None


async def _main(
    a: list[PacketStream], b: list[PacketStream], workers: bool, info: dict[str, Any]
) -> tuple[list[OffloadEngine], str | None]:
    try:
        if workers:
            return [], await _run_workers(a, b, info)
        return await _run_engines(a, b, info), None
    finally:
        # Close while Trio still runs (see fwd_trio.py).
        with trio.CancelScope(shield=True):
            for stream in (*a, *b):
                await stream.aclose()


def main() -> int:
    args = _fwdcommon.parse_args(__doc__ or "", _extra_args)
    if args.queues < 1:
        _fwdcommon.warn("--queues must be at least 1")
        return 2
    fds_a = _fwdcommon.open_in(
        args.ns_a, lambda: _fwdcommon.attach_queues(args.dev_a, True, args.queues)
    )
    fds_b = _fwdcommon.open_in(
        args.ns_b, lambda: _fwdcommon.attach_queues(args.dev_b, True, args.queues)
    )
    a = [trio_tun.from_fd(fd, vnet_hdr=True) for fd in fds_a]
    b = [trio_tun.from_fd(fd, vnet_hdr=True) for fd in fds_b]
    info: dict[str, Any] = {
        "forwarder": "trio-tun " + ("WorkerPool/forward_pair" if args.workers else "OffloadEngine"),
        "queues": args.queues,
        "implementation": trio_tun.offload.implementation,
        "offload": str(a[0].offload),
    }
    engines: list[OffloadEngine] = []
    failure: str | None = None
    try:
        engines, failure = trio.run(_main, a, b, args.workers, info)
    finally:
        if engines:
            ea, eb = (e.statistics() for e in engines)
            sa, sb = _fwdcommon.summed(ea.queues), _fwdcommon.summed(eb.queues)
            info["a_to_b"] = _fwdcommon.direction(sa, sb)
            info["b_to_a"] = _fwdcommon.direction(sb, sa)
            info["engines"] = [
                {k: v for k, v in attrs.asdict(s).items() if k != "queues"} for s in (ea, eb)
            ]
            info["reads_per_queue_a"] = [q.reads for q in ea.queues]
        if failure is not None:
            info["worker_failure"] = failure
        _fwdcommon.report(info)
    if failure is not None:
        _fwdcommon.warn(failure)
        return WORKER_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
