"""trio-tun forwarder for bench/forward.py: two Trio tasks, one per direction.

Modes:
  raw    ``receive_raw`` -> ``send_raw``: whole virtio frames (super-packets)
         passed through without parsing.
  batch  ``receive_batch`` -> ``send_batch``: super-packets split into segments
         on the way in and coalesced again on the way out (or, without
         offload, plain MTU-sized packets in batches).
  packet ``receive`` -> ``send``: one packet per call (checkpoints amortised
         inside the stream, but no batching), for the with/without comparison.
  threads  ``ThreadedForwarder``: receive_batch/send_batch driven in OS
         threads (the GIL released in the system calls), one thread for both
         directions of a device pair with offload, one per direction without.
  threads-raw  ``ThreadedForwarder(raw=True)``: frames passed through by the
         compiled pump, in one OS thread for both directions with offload
         and one per direction without.

With ``--queues N`` (threads modes only) both devices are multi-queue, N queue
fds are attached to each, and queue i of one device is paired with queue i of
the other: N device pairs, so N threads with offload.  The kernel spreads flows
over a device's queues by their hash, so several flows can be forwarded on
several cores at once.

The offload implementation (compiled speedups or pure Python) is chosen at
import time by ``TRIO_TUN_PURE_PYTHON``; the harness sets it per mode.
"""

from __future__ import annotations

import argparse
import functools
import signal
from typing import Any

import _fwdcommon
import trio

import trio_tun
import trio_tun.offload
from trio_tun import PacketStream
from trio_tun.threaded import ThreadedForwarder


def _extra_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mode", choices=["raw", "batch", "packet", "threads", "threads-raw"], required=True
    )
    parser.add_argument("--offload", action="store_true", help="IFF_VNET_HDR + TSO mask")
    parser.add_argument(
        "--batch", type=int, default=None, help="max_packets for receive_batch (library default)"
    )
    parser.add_argument(
        "--queues", type=int, default=1, help="queue fds per device (threads modes; default 1)"
    )


async def _pump_raw(src: PacketStream, dst: PacketStream) -> None:
    # Bound methods in locals: this loop is the whole per-frame cost we measure.
    # (A batched variant that drained the fd per call measured slower: under
    # load it adds an extra EAGAIN read and bursts the receiver's TCP work.)
    receive_raw = src.receive_raw
    send_raw = dst.send_raw
    while True:
        await send_raw(await receive_raw())


async def _pump_packet(src: PacketStream, dst: PacketStream) -> None:
    receive = src.receive
    send = dst.send
    while True:
        await send(await receive())


async def _pump_batch(src: PacketStream, dst: PacketStream, batch: int | None) -> None:
    send_batch = dst.send_batch
    if batch is None:
        receive_batch = src.receive_batch
    else:
        receive_batch = functools.partial(src.receive_batch, batch)
    while True:
        await send_batch(await receive_batch())


async def _forward(
    a: list[PacketStream],
    b: list[PacketStream],
    mode: str,
    batch: int | None,
    info: dict[str, Any],
) -> None:
    # The receiver is installed before READY, so a SIGTERM can never hit the
    # default handler and lose the final statistics.
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                if mode in ("threads", "threads-raw"):
                    pairs = zip(a, b, strict=True)
                    lanes = [lane for qa, qb in pairs for lane in ((qa, qb), (qb, qa))]
                    forwarder = ThreadedForwarder(lanes, grace=1.0, raw=mode == "threads-raw")
                    nursery.start_soon(forwarder.run)
                else:
                    for src, dst in ((a[0], b[0]), (b[0], a[0])):
                        if mode == "raw":
                            nursery.start_soon(_pump_raw, src, dst)
                        elif mode == "packet":
                            nursery.start_soon(_pump_packet, src, dst)
                        else:
                            nursery.start_soon(_pump_batch, src, dst, batch)
                _fwdcommon.announce_ready(info)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break
    finally:
        # Close while Trio still runs: a stream that has waited on its fd must
        # tell Trio's I/O manager, which only works from inside the loop.
        with trio.CancelScope(shield=True):
            for stream in (*a, *b):
                await stream.aclose()


def main() -> None:
    args = _fwdcommon.parse_args(__doc__ or "", _extra_args)
    if args.queues < 1 or (args.queues > 1 and not args.mode.startswith("threads")):
        _fwdcommon.warn("--queues must be at least 1, and above 1 only in the threads modes")
        raise SystemExit(2)
    fds_a = _fwdcommon.open_in(
        args.ns_a, lambda: _fwdcommon.attach_queues(args.dev_a, args.offload, args.queues)
    )
    fds_b = _fwdcommon.open_in(
        args.ns_b, lambda: _fwdcommon.attach_queues(args.dev_b, args.offload, args.queues)
    )
    a = [trio_tun.from_fd(fd, vnet_hdr=args.offload) for fd in fds_a]
    b = [trio_tun.from_fd(fd, vnet_hdr=args.offload) for fd in fds_b]
    info = {
        "forwarder": "trio-tun",
        "mode": args.mode,
        "implementation": trio_tun.offload.implementation,
        "offload": str(a[0].offload),
        "batch": args.batch if args.mode == "batch" else None,
        "queues": args.queues,
    }
    try:
        trio.run(_forward, a, b, args.mode, args.batch, info)
    finally:
        stats_a = _fwdcommon.summed([s.statistics() for s in a])
        stats_b = _fwdcommon.summed([s.statistics() for s in b])
        info["a_to_b"] = _fwdcommon.direction(stats_a, stats_b)
        info["b_to_a"] = _fwdcommon.direction(stats_b, stats_a)
        info["stats_a"] = stats_a
        info["stats_b"] = stats_b
        if args.queues > 1:
            info["reads_per_queue_a"] = [s.statistics().reads for s in a]
        _fwdcommon.report(info)


if __name__ == "__main__":
    main()
