"""Forward IP packets between two TUN devices at full speed: ``ThreadedForwarder(raw=True)``.

The script opens both devices itself, optionally inside the network namespaces
named by ``--netns-a``/``--netns-b`` (as listed by ``ip netns``), gives each its
address and a route to the other side, and passes everything one device reads
to the other, unchanged::

    ip netns add left; ip netns add right
    python examples/passthrough_forwarder.py --netns-a left --netns-b right &
    ip netns exec left ping 10.30.2.1      # crosses pta0 -> forwarder -> ptb0

Each direction runs in its own OS thread, in a compiled loop that holds no GIL
between packets (``read`` a run of frames, ``write`` them, ``poll`` when a side
is not ready).  With offload on (the default where the kernel has it) a whole
64 KiB TCP super-packet crosses in one read and one write, never split;
``--no-offload`` forwards one packet per read, which is what TAP devices and
kernels without virtio-net offload do.  This is the fastest way trio-tun
forwards; use the engine (``multiqueue_forwarder.py``) when the packets must
be looked at or changed.

It stops after ``--duration`` seconds or on SIGTERM/Ctrl-C: the threads stop
reading at once, write what they hold (within ``--grace``), and the script
prints the forwarder's counters and each device's.  Needs root.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import signal
import sys
from collections.abc import Sequence

import trio

import trio_tun
from trio_tun.threaded import ForwarderStatistics, ThreadedForwarder


def describe(stats: ForwarderStatistics) -> str:
    """The forwarder's counters and whether its accounting balances."""
    balanced = stats.accepted == stats.written + stats.dropped
    return (
        f"forwarder: received {stats.received}; accepted {stats.accepted} = written "
        f"{stats.written} + dropped {stats.dropped} (in flight {stats.in_flight}): "
        f"{'balanced' if balanced else 'UNBALANCED'}"
    )


def interface(text: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    try:
        return ipaddress.ip_interface(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name-a", default="pta0", help="device A's name or pattern")
    parser.add_argument("--name-b", default="ptb0", help="device B's name or pattern")
    parser.add_argument(
        "--address-a", type=interface, default="10.30.1.1/24", help="device A's address"
    )
    parser.add_argument(
        "--address-b", type=interface, default="10.30.2.1/24", help="device B's address"
    )
    parser.add_argument("--netns-a", default=None, help="network namespace for device A")
    parser.add_argument("--netns-b", default=None, help="network namespace for device B")
    parser.add_argument("--mtu", type=int, default=1500, help="MTU of both devices")
    parser.add_argument(
        "--no-offload",
        dest="offload",
        action="store_false",
        help="one packet per read (default: virtio-net offload where the kernel has it)",
    )
    parser.add_argument("--grace", type=float, default=2.0, help="flush period on shutdown (s)")
    parser.add_argument(
        "--duration", type=float, default=None, help="stop after this many seconds (default: never)"
    )
    args = parser.parse_args(argv)
    if args.address_a.version != args.address_b.version:
        parser.error("--address-a and --address-b must be of the same IP version")
    if args.address_a.network.overlaps(args.address_b.network):
        parser.error("--address-a and --address-b must be in different subnets")
    return args


async def run(args: argparse.Namespace) -> int:
    # Installed first: a SIGTERM or Ctrl-C from here on is a clean shutdown.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with (
            trio_tun.open_tun(
                args.name_a,
                addresses=[args.address_a],
                mtu=args.mtu,
                netns=args.netns_a,
                offload="auto" if args.offload else False,
            ) as a,
            trio_tun.open_tun(
                args.name_b,
                addresses=[args.address_b],
                mtu=args.mtu,
                netns=args.netns_b,
                offload="auto" if args.offload else False,
            ) as b,
        ):
            # Each side reaches the other's subnet through its device.
            await a.add_route(str(args.address_b.network))
            await b.add_route(str(args.address_a.network))
            # "auto" may give one device offload and not the other (a kernel
            # without it); raw lanes need the same framing on both ends.
            if a.vnet_hdr != b.vnet_hdr:
                print(f"offload differs: {a.offload} against {b.offload}", file=sys.stderr)
                return 1
            forwarder = ThreadedForwarder([(a, b), (b, a)], raw=True, grace=args.grace)
            with trio.move_on_after(math.inf if args.duration is None else args.duration) as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(forwarder.run)
                    print(
                        f"forwarding {a.name} ({args.address_a}) <-> {b.name} ({args.address_b}), "
                        f"offload {a.offload}",
                        flush=True,
                    )
                    async for signum in signals:
                        print(f"{signal.Signals(signum).name}: stopping", flush=True)
                        scope.cancel()
                        break
            print(describe(forwarder.statistics()), flush=True)
            for dev in (a, b):
                stats = dev.statistics()
                print(
                    f"{dev.name}: read {stats.rx_packets} frames ({stats.rx_bytes} bytes), "
                    f"wrote {stats.tx_packets} ({stats.tx_bytes} bytes), "
                    f"dropped {stats.tx_dropped}",
                    flush=True,
                )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return trio.run(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
