"""A toy VPN through ``dev.engine()`` that shuts down gracefully on SIGTERM and Ctrl-C.

Like ``toy_vpn.py`` (IP packets from a TUN device carried in UDP datagrams to
a peer; no encryption, a toy), but the device side is an
:class:`~trio_tun.engine.OffloadEngine` over all of the device's queues, and the
program shows the usual Trio way to stop such a service::

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        ...
        with trio.move_on_after(duration) as scope:          # the scope around the engine
            async with dev.engine(grace=...) as engine:
                ...                                          # the tunnel's tasks
        # first signal: scope.cancel()

Catching SIGINT with a signal receiver turns Ctrl-C from a KeyboardInterrupt
(raised wherever the main task happens to be, possibly in the middle of a
clean-up) into an ordinary cancellation.  Cancelling the scope stops the
tunnel's tasks; leaving ``async with dev.engine()`` then stops the engine's
readers and lets its writers write, within ``--grace`` seconds, every packet
the engine had accepted.  The program prints its final accounting, in which
``accepted == written + dropped`` always holds, and exits 0.  A second signal
during the flush is only reported: the flush is shielded and bounded by the
grace period anyway.

Run one copy on each end (root needed)::

    python examples/graceful_vpn.py --local 192.0.2.1:51820 --peer 192.0.2.2:51820 \\
        --tun-address 10.8.0.1/24
    python examples/graceful_vpn.py --local 192.0.2.2:51820 --peer 192.0.2.1:51820 \\
        --tun-address 10.8.0.2/24
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import math
import signal
import socket
import sys
from collections.abc import AsyncIterator, Sequence

import trio
from toy_vpn import DEFAULT_MTU, Endpoint, endpoint

import trio_tun
from trio_tun.engine import OffloadEngine

#: Leaves room for the outer IPv4 (20 bytes) and UDP (8 bytes) headers on a 1500-byte link.


class Tunnel:
    """The two directions of the tunnel, with their own counters."""

    def __init__(self, engine: OffloadEngine, sock: trio.socket.SocketType, peer: Endpoint) -> None:
        self.engine = engine
        self.sock = sock
        self.peer = peer
        self.sent_datagrams = 0
        self.received_datagrams = 0

    async def tun_to_udp(self) -> None:
        """Every packet the kernel routes into the device goes to the peer as one datagram."""
        async for batch in self.engine:
            for packet in batch:
                # A tunnel drops what it can't carry, as a network would.
                with contextlib.suppress(OSError):
                    await self.sock.sendto(packet, self.peer)
                    self.sent_datagrams += 1

    async def udp_to_tun(self) -> None:
        """Every datagram from the peer goes to the engine, which writes it to the device."""
        while True:
            data, sender = await self.sock.recvfrom(65535)
            if sender[:2] != self.peer or not data:
                continue  # not from our peer (or empty): ignore it
            self.received_datagrams += 1
            try:
                await self.engine.send_batch([data])
            except ValueError:
                continue  # larger than a device takes: drop it
            except trio.ClosedResourceError:
                return  # the engine is shutting down


async def watch_signals(signals: AsyncIterator[int], scope: trio.CancelScope, grace: float) -> None:
    """First signal: cancel *scope* (graceful stop).  Later ones are only reported."""
    first = True
    async for signum in signals:
        name = signal.Signals(signum).name
        if first:
            print(f"{name}: stopping; the engine flushes for at most {grace:g} s", flush=True)
            scope.cancel()
            first = False
        else:
            print(f"{name} again: the flush is already bounded by the grace period", flush=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--local", type=endpoint, required=True, help="UDP ADDRESS:PORT to bind")
    parser.add_argument("--peer", type=endpoint, required=True, help="the peer's ADDRESS:PORT")
    parser.add_argument(
        "--tun-address",
        action="append",
        required=True,
        metavar="ADDR/PREFIX",
        help="address of the tunnel device, e.g. 10.8.0.1/24 (repeatable)",
    )
    parser.add_argument("--name", default="vpn%d", help="device name or pattern (default: vpn%%d)")
    parser.add_argument("--mtu", type=int, default=DEFAULT_MTU, help="tunnel MTU (default: 1400)")
    parser.add_argument("--queues", type=int, default=2, help="device queues (default: 2)")
    parser.add_argument(
        "--grace", type=float, default=2.0, help="seconds the engine gets to flush (default: 2)"
    )
    parser.add_argument(
        "--duration", type=float, default=None, help="stop after this many seconds (default: never)"
    )
    args = parser.parse_args(argv)
    if ipaddress.ip_address(args.local[0]).version != ipaddress.ip_address(args.peer[0]).version:
        parser.error("--local and --peer must both be IPv4 or both IPv6")
    if not 1 <= args.queues <= 256:
        parser.error("--queues must be between 1 and 256")
    return args


async def run(args: argparse.Namespace) -> int:
    family = socket.AF_INET6 if ":" in args.local[0] else socket.AF_INET
    # Installed before anything else: from here on SIGTERM and Ctrl-C arrive
    # as messages on `signals`, never as KeyboardInterrupt or a sudden death.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as watcher:
            with trio.socket.socket(family, socket.SOCK_DGRAM) as sock:
                await sock.bind(args.local)
                async with trio_tun.open_tun(
                    args.name, addresses=args.tun_address, mtu=args.mtu, queues=args.queues
                ) as dev:
                    duration = math.inf if args.duration is None else args.duration
                    with trio.move_on_after(duration) as scope:
                        # A signal that came during set-up cancels right away.
                        watcher.start_soon(watch_signals, signals, scope, args.grace)
                        async with (
                            dev.engine(grace=args.grace) as engine,
                            trio.open_nursery() as nursery,
                        ):
                            tunnel = Tunnel(engine, sock, args.peer)
                            nursery.start_soon(tunnel.tun_to_udp)
                            nursery.start_soon(tunnel.udp_to_tun)
                            print(
                                f"{dev.name} up: {', '.join(args.tun_address)} over "
                                f"{len(dev.queues)} queue(s) via UDP {args.local[0]}:"
                                f"{args.local[1]} <-> {args.peer[0]}:{args.peer[1]}",
                                flush=True,
                            )
                    # Here the engine has shut down: every packet it accepted
                    # was written or counted as dropped.
                    stats = engine.statistics()
                    print(
                        f"{dev.name}: {tunnel.sent_datagrams} datagrams sent to the peer, "
                        f"{tunnel.received_datagrams} received from it",
                        flush=True,
                    )
                    print(
                        f"accounting: accepted {stats.accepted} = written {stats.written} + "
                        f"dropped {stats.dropped} (in flight {stats.in_flight}); "
                        f"received {stats.received} = delivered {stats.delivered} + "
                        f"rx_dropped {stats.rx_dropped}",
                        flush=True,
                    )
            # The signal watcher has nothing left to stop.
            watcher.cancel_scope.cancel()
    return 0 if stats.accepted == stats.written + stats.dropped else 1


def main(argv: Sequence[str] | None = None) -> int:
    return trio.run(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
