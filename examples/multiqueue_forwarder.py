"""Forward IP packets between two multi-queue TUN devices with two OffloadEngines.

The script opens both devices itself, each with ``--queues`` queues, optionally
inside the network namespaces named by ``--netns-a``/``--netns-b`` (as listed
by ``ip netns``), gives each its address and a route to the other side, and
forwards everything one device reads to the other::

    ip netns add left; ip netns add right
    python examples/multiqueue_forwarder.py --queues 2 --netns-a left --netns-b right &
    ip netns exec left ping 10.20.2.1      # crosses mqa0 -> forwarder -> mqb0

The forwarder is ``ea.serve(reply_to=eb)`` and ``eb.serve(reply_to=ea)``:
each engine reads every queue of its device (the kernel spreads flows over the
queues), and each queue's reader writes what it read straight into the other
device's queue of the same index (run to completion: no channel, no task
hop), so every flow keeps its order.  It stops after ``--duration`` seconds or on
SIGTERM/Ctrl-C; the engines then flush what they accepted (within
``--grace``) and the script prints their statistics.  Needs root.
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import math
import signal
import sys
from collections.abc import Sequence

import trio

import trio_tun
from trio_tun.engine import EngineStatistics, OffloadEngine


def describe(name: str, stats: EngineStatistics) -> str:
    """Engine counters and the accounting identity, plus per-queue reads/writes."""
    balanced = stats.accepted == stats.written + stats.dropped
    queues = ", ".join(
        f"q{i} {q.reads} reads/{q.writes} writes" for i, q in enumerate(stats.queues)
    )
    return (
        f"{name}: received {stats.received}, delivered {stats.delivered}, "
        f"rx_dropped {stats.rx_dropped}; accepted {stats.accepted} = written {stats.written} "
        f"+ dropped {stats.dropped} (in flight {stats.in_flight}): "
        f"{'balanced' if balanced else 'UNBALANCED'}\n  {queues}"
    )


def interface(text: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    try:
        return ipaddress.ip_interface(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queues", type=int, default=2, help="queues per device (default 2)")
    parser.add_argument("--name-a", default="mqa%d", help="device A's name or pattern")
    parser.add_argument("--name-b", default="mqb%d", help="device B's name or pattern")
    parser.add_argument(
        "--address-a", type=interface, default="10.20.1.1/24", help="device A's address"
    )
    parser.add_argument(
        "--address-b", type=interface, default="10.20.2.1/24", help="device B's address"
    )
    parser.add_argument("--netns-a", default=None, help="network namespace for device A")
    parser.add_argument("--netns-b", default=None, help="network namespace for device B")
    parser.add_argument("--mtu", type=int, default=1500, help="MTU of both devices")
    parser.add_argument("--grace", type=float, default=2.0, help="flush period on shutdown (s)")
    parser.add_argument(
        "--duration", type=float, default=None, help="stop after this many seconds (default: never)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.queues <= 256:
        parser.error("--queues must be between 1 and 256")
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
                queues=args.queues,
            ) as a,
            trio_tun.open_tun(
                args.name_b,
                addresses=[args.address_b],
                mtu=args.mtu,
                netns=args.netns_b,
                queues=args.queues,
            ) as b,
        ):
            # Each side reaches the other's subnet through its device.
            await a.add_route(str(args.address_b.network))
            await b.add_route(str(args.address_a.network))
            engines: list[OffloadEngine] = []
            with trio.move_on_after(math.inf if args.duration is None else args.duration) as scope:
                async with (
                    a.engine(grace=args.grace) as ea,
                    b.engine(grace=args.grace) as eb,
                    trio.open_nursery() as nursery,
                ):
                    engines[:] = [ea, eb]
                    nursery.start_soon(functools.partial(ea.serve, reply_to=eb))
                    nursery.start_soon(functools.partial(eb.serve, reply_to=ea))
                    print(
                        f"forwarding {a.name} ({args.address_a}) <-> {b.name} ({args.address_b}) "
                        f"over {len(a.queues)} queue(s) each, offload {a.offload}",
                        flush=True,
                    )
                    async for signum in signals:
                        print(f"{signal.Signals(signum).name}: stopping", flush=True)
                        scope.cancel()
                        break
            for name, engine in zip((a.name, b.name), engines, strict=True):
                print(describe(name, engine.statistics()), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return trio.run(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
