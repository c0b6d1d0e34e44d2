"""trio-tun forwarder for bench/forward.py: two Trio tasks, one per direction.

Modes:
  raw    ``receive_raw`` -> ``send_raw``: whole virtio frames (super-packets)
         passed through without parsing.
  batch  ``receive_batch`` -> ``send_batch``: super-packets split into segments
         on the way in and coalesced again on the way out (or, without
         offload, plain MTU-sized packets in batches).
  packet ``receive`` -> ``send``: one packet per call (checkpoints amortised
         inside the stream, but no batching), for the with/without comparison.
  threads  ``ThreadedForwarder``: each direction's receive_batch/send_batch
         loop in its own OS thread (the GIL released in the system calls).
  threads-raw  ``ThreadedForwarder(raw=True)``: frames passed through by the
         compiled pump, in one OS thread for both directions with offload
         and one per direction without.

The offload implementation (compiled speedups or pure Python) is chosen at
import time by ``TRIO_TUN_PURE_PYTHON``; the harness sets it per mode.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
from typing import Any

import _fwdcommon
import attrs
import trio

import trio_tun
import trio_tun.offload
from trio_tun import PacketStream, Statistics
from trio_tun.platform.linux import tun as linux
from trio_tun.threaded import ThreadedForwarder


def _extra_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mode", choices=["raw", "batch", "packet", "threads", "threads-raw"], required=True
    )
    parser.add_argument("--offload", action="store_true", help="IFF_VNET_HDR + TSO mask")
    parser.add_argument(
        "--batch", type=int, default=None, help="max_packets for receive_batch (library default)"
    )


def _attach(dev: str, offload: bool) -> int:
    """Open *dev* (a persistent TUN device) in the current thread's namespace."""
    fd = linux.open_tun_file()
    try:
        flags = linux.IFF_TUN | linux.IFF_NO_PI | (linux.IFF_VNET_HDR if offload else 0)
        linux.set_iff(fd, dev, flags)
        # from_fd assumes TCP_OFFLOAD whenever there is a virtio header, so ask
        # for exactly that; the mask is device-wide and outlives earlier users.
        linux.set_offload(fd, linux.TCP_OFFLOAD if offload else linux.NO_OFFLOAD)
    except BaseException:
        os.close(fd)
        raise
    return fd


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
    a: PacketStream, b: PacketStream, mode: str, batch: int | None, info: dict[str, Any]
) -> None:
    # The receiver is installed before READY, so a SIGTERM can never hit the
    # default handler and lose the final statistics.
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                if mode in ("threads", "threads-raw"):
                    forwarder = ThreadedForwarder(
                        [(a, b), (b, a)], grace=1.0, raw=mode == "threads-raw"
                    )
                    nursery.start_soon(forwarder.run)
                else:
                    for src, dst in ((a, b), (b, a)):
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
            await a.aclose()
            await b.aclose()


def _direction(src: Statistics, dst: Statistics) -> dict[str, int]:
    """The counters of one direction, in the shape every forwarder reports."""
    return {
        "reads": src.reads,
        "read_bytes": src.read_bytes,
        "writes": dst.writes,
        "write_bytes": dst.write_bytes,
        "rx_packets": src.rx_packets,
        "tx_packets": dst.tx_packets,
        "tx_coalesced": dst.tx_coalesced,
        "write_errors": dst.tx_dropped,
    }


def main() -> None:
    args = _fwdcommon.parse_args(__doc__ or "", _extra_args)
    fd_a = _fwdcommon.open_in(args.ns_a, lambda: _attach(args.dev_a, args.offload))
    fd_b = _fwdcommon.open_in(args.ns_b, lambda: _attach(args.dev_b, args.offload))
    a = trio_tun.from_fd(fd_a, vnet_hdr=args.offload)
    b = trio_tun.from_fd(fd_b, vnet_hdr=args.offload)
    info = {
        "forwarder": "trio-tun",
        "mode": args.mode,
        "implementation": trio_tun.offload.implementation,
        "offload": str(a.offload),
        "batch": args.batch if args.mode == "batch" else None,
    }
    try:
        trio.run(_forward, a, b, args.mode, args.batch, info)
    finally:
        stats_a, stats_b = a.statistics(), b.statistics()
        info["a_to_b"] = _direction(stats_a, stats_b)
        info["b_to_a"] = _direction(stats_b, stats_a)
        info["stats_a"] = attrs.asdict(stats_a)
        info["stats_b"] = attrs.asdict(stats_b)
        _fwdcommon.report(info)


if __name__ == "__main__":
    main()
