"""A toy VPN through ``TunnelPump`` that shuts down gracefully on SIGTERM and Ctrl-C.

Like ``toy_vpn.py`` (IP packets from a TUN device carried in UDP datagrams to
a peer; no encryption, a toy), but over all of a multi-queue device's queues,
each with its own UDP socket (``open_udp(..., reuse_port=True)``, all on the
same port), and with the data path run by a :class:`~trio_tun.engine.TunnelPump`:
per queue, one task reads a batch from the TUN queue and sends it with one
``send_batch`` (UDP GSO), another receives a batch (UDP GRO) and writes it to
the queue with one coalescing ``send_batch``.  The program shows the usual
Trio way to stop such a service::

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        ...
        with trio.move_on_after(duration) as scope:    # the scope around the pump
            await pump.run()
        # first signal: scope.cancel()

Catching SIGINT with a signal receiver turns Ctrl-C from a KeyboardInterrupt
(raised wherever the main task happens to be, possibly in the middle of a
clean-up) into an ordinary cancellation.  Cancelling the scope stops the
pump's readers; a batch already in hand is still written, within ``--grace``
seconds, and whatever is not written by then is counted as dropped.  The
program prints its final accounting, in which ``accepted == written +
dropped`` always holds, and exits 0.  A second signal during the flush is
only reported: the flush is shielded and bounded by the grace period anyway.

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
import sys
from collections.abc import AsyncIterator, Sequence

import trio
from toy_vpn import DEFAULT_MTU, endpoint

import trio_tun
from trio_tun.engine import TunnelPump


def drop_empty(batch: list[bytes]) -> list[bytes]:
    """The pump's inbound step: an empty datagram is no packet (a TUN device refuses it)."""
    return batch if all(batch) else [datagram for datagram in batch if datagram]


async def watch_signals(signals: AsyncIterator[int], scope: trio.CancelScope, grace: float) -> None:
    """First signal: cancel *scope* (graceful stop).  Later ones are only reported."""
    first = True
    async for signum in signals:
        name = signal.Signals(signum).name
        if first:
            print(f"{name}: stopping; the pump flushes for at most {grace:g} s", flush=True)
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
        "--grace", type=float, default=2.0, help="seconds the pump gets to flush (default: 2)"
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
    local, peer = args.local, args.peer
    # Installed before anything else: from here on SIGTERM and Ctrl-C arrive
    # as messages on `signals`, never as KeyboardInterrupt or a sudden death.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as watcher, contextlib.AsyncExitStack() as stack:
            duration = math.inf if args.duration is None else args.duration
            pump: TunnelPump | None = None
            with trio.move_on_after(duration) as scope:
                # A signal that comes during set-up cancels right away.
                watcher.start_soon(watch_signals, signals, scope, args.grace)
                dev = await stack.enter_async_context(
                    trio_tun.open_tun(
                        args.name, addresses=args.tun_address, mtu=args.mtu, queues=args.queues
                    )
                )
                # One socket per queue, all bound to the same port: a flow keeps
                # its queue and its socket, so its packets stay in order.
                sockets = [
                    await stack.enter_async_context(
                        trio_tun.open_udp(
                            local[0],
                            local[1],
                            remote_host=peer[0],
                            remote_port=peer[1],
                            reuse_port=True,
                        )
                    )
                    for _ in dev.queues
                ]
                pump = TunnelPump(dev.queues, sockets, inbound=drop_empty, grace=args.grace)
                print(
                    f"{dev.name} up: {', '.join(args.tun_address)} over "
                    f"{len(dev.queues)} queue(s) via UDP {local[0]}:{local[1]} <-> "
                    f"{peer[0]}:{peer[1]} (TUN offload {dev.offload}, UDP GSO "
                    f"{sockets[0].gso}, GRO {sockets[0].gro})",
                    flush=True,
                )
                await pump.run()
            # Here the pump has returned: every item it accepted was written
            # or counted as dropped.  (The device and sockets are still open.)
            # The signal watcher has nothing left to stop.
            watcher.cancel_scope.cancel()
            if pump is None:
                print("stopped during set-up", flush=True)
                return 0
            stats = pump.statistics()
            tx = sum(s.statistics().tx_datagrams for s in sockets)
            rx = sum(s.statistics().rx_datagrams for s in sockets)
            print(f"{dev.name}: {tx} datagrams sent to the peer, {rx} received from it", flush=True)
            print(
                f"accounting: accepted {stats.accepted} = written {stats.written} + "
                f"dropped {stats.dropped} (in flight {stats.in_flight}); read from the "
                f"device {stats.tun_received}, from the peer {stats.udp_received}",
                flush=True,
            )
    return 0 if stats.in_flight == 0 and stats.accepted == stats.written + stats.dropped else 1


def main(argv: Sequence[str] | None = None) -> int:
    return trio.run(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
