"""A WireGuard peer on trio-tun: the sans-I/O ``wgpeer`` core between a TUN device and UDP.

Usage::

    python examples/wireguard.py wg0.conf [--name IFNAME] [--stats]
        [--shorten-timers FACTOR] [--under-load-threshold N]

The configuration is a wg-quick file (``[Interface]`` PrivateKey, ListenPort,
Address, MTU; ``[Peer]`` PublicKey, PresharedKey, AllowedIPs, Endpoint,
PersistentKeepalive).  A ``trio_tun.engine.TunnelPump`` runs the data path to
completion until SIGINT or SIGTERM, and a timer task runs beside it:

* TUN -> ``device.encrypt`` -> UDP: a batch of inner packets becomes, per peer, one
  run of datagrams, which the socket sends as one GSO ``sendmsg``;
* UDP -> ``device.decrypt`` -> TUN: datagrams are opened in order and the inner
  packets written with ``send_batch``, which coalesces TCP segments again;
  handshake replies go out through ``pump.send_udp``;
* timers: sleeps until the device's next deadline (or until new traffic may have
  armed an earlier one) and sends what ``device.tick`` returns.

On SIGINT/SIGTERM a batch in hand is still written (for at most a second), the
device is removed and the process exits 0.

``--stats`` prints per-peer counters on exit and whenever SIGUSR1 arrives.
``--under-load-threshold N`` sets how many handshake messages in one receive
batch put the device under load (cookies demanded, handshakes rate limited per
source) for the next second; 0 means always under load.  Routes
are added for AllowedIPs outside the interface's own prefixes, except default
routes (which would capture the tunnel's own UDP traffic; use policy routing for
those).  Needs root (CAP_NET_ADMIN).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import math
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

import trio

import trio_tun
from trio_tun.engine import QueueStream, TunnelPump

sys.path.insert(0, str(Path(__file__).resolve().parent))

from wgpeer import (
    Drop,
    Outgoing,
    Received,
    WireGuardDevice,
    encode_key,
    parse_config,
    shortened,
)
from wgpeer.config import Config

Endpoint = tuple[str, int]

DEFAULT_MTU: Final = 1420
SOCKET_BUFFER: Final = 7 << 20
#: Handshake messages in one receive batch that make us ask for cookies (mac2) ...
UNDER_LOAD_BATCH: Final = 16
#: ... for this long afterwards (wireguard-go's UnderLoadAfterTime).
UNDER_LOAD_FOR: Final = 1.0
#: Seconds a batch in hand may still take to be written once shutdown starts.
GRACE: Final = 1.0


class DatagramTransport(Protocol):
    """What the pump needs from the UDP socket: an unconnected ``trio_tun.open_udp`` stream."""

    async def receive_batch(self) -> list[tuple[bytes, tuple[Any, ...]]]: ...

    async def send_many(self, items: Iterable[tuple[bytes, Endpoint]]) -> None: ...

    @property
    def counters(self) -> Any: ...


@contextlib.asynccontextmanager
async def open_udp(port: int) -> AsyncIterator[trio_tun.UnconnectedUdpStream]:
    """The UDP side: one dual-stack ``trio_tun.open_udp`` socket (GSO/GRO where it can)."""
    # A burst from a fast peer overflows the default buffer long before Python
    # reads it (wireguard-go asks for 7 MiB too).
    async with trio_tun.open_udp(
        local_host="::", local_port=port, buffer_size=SOCKET_BUFFER
    ) as stream:
        yield stream


def _unmapped(address: tuple[Any, ...]) -> Endpoint:
    """IPv4 peers named plainly (not ``::ffff:a.b.c.d``) on the dual-stack socket."""
    host = str(address[0])
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, int(address[1])


def _items(outgoing: list[Outgoing]) -> list[tuple[bytes, Endpoint]]:
    """Per-peer runs as ``(datagram, endpoint)`` items; a run stays one GSO send."""
    return [(datagram, out.endpoint) for out in outgoing for datagram in out.datagrams]


# -- the data path -------------------------------------------------------------------------


class Tunnel:
    """The protocol core between a TUN stream and a UDP socket, on a ``TunnelPump``.

    The pump runs the data path to completion: a batch read from the TUN is
    sealed by :meth:`_seal` and goes out as per-peer GSO runs in the same task;
    a batch of datagrams is opened by :meth:`_open` and its inner packets
    written to the TUN (coalesced) in the same task.  Handshake replies,
    cookies and timer traffic go through ``pump.send_udp``, which takes turns
    with the pump's own sends.  Cancelling :meth:`run` lets a batch in hand be
    written for up to *grace* seconds (nothing is half-written), then stops.

    *under_load_batch* handshake messages in one received batch put the device under
    load for :data:`UNDER_LOAD_FOR` seconds; 0 keeps it under load all the time
    (every handshake needs a cookie first), which tests the cookie path for real.
    """

    def __init__(
        self,
        device: WireGuardDevice,
        tun: QueueStream,
        udp: DatagramTransport,
        *,
        under_load_batch: int = UNDER_LOAD_BATCH,
        grace: float = GRACE,
    ) -> None:
        if under_load_batch < 0:
            raise ValueError(f"under_load_batch must not be negative, not {under_load_batch}")
        self.device = device
        self.under_load_batch = under_load_batch
        self.pump = TunnelPump([tun], [udp], outbound=self._seal, inbound=self._open, grace=grace)
        self._rearm = trio.Event()
        self._under_load_until = -math.inf

    def _seal(self, packets: list[bytes]) -> list[tuple[bytes, Endpoint]]:
        items = _items(self.device.encrypt(packets, trio.current_time()))
        # New traffic may have armed a timer earlier than the one being waited for.
        self._rearm.set()
        return items

    async def _open(self, received: list[tuple[bytes, tuple[Any, ...]]]) -> list[bytes]:
        now = trio.current_time()
        datagrams = [(data, _unmapped(sender)) for data, sender in received]
        handshakes = sum(1 for d, _ in datagrams if d[:1] in (b"\x01", b"\x02"))
        if handshakes >= self.under_load_batch:
            self._under_load_until = now + UNDER_LOAD_FOR
        inner, replies = self.device.decrypt(
            datagrams, now, under_load=now < self._under_load_until
        )
        await self.pump.send_udp(_items(replies))
        # Receiving arms timers too (a keepalive owed, a rekey due).
        self._rearm.set()
        return inner

    async def timers(self) -> None:
        while True:
            self._rearm = trio.Event()
            deadline = self.device.next_deadline()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._rearm.wait()
            await self.pump.send_udp(_items(self.device.tick(trio.current_time())))

    async def run(self) -> None:
        """Move packets and run the protocol's timers until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.pump.run)
            nursery.start_soon(self.timers)


def format_stats(device: WireGuardDevice, name: str) -> str:
    s = device.stats
    lines = [
        f"interface {name}: public key {encode_key(device.public_key)}",
        f"  rx {s.rx_datagrams} datagrams {dict(s.rx)}; dropped {dict(s.rx_drops)}",
        f"  tx {s.tx_datagrams} datagrams; dropped {dict(s.tx_drops)}",
        f"  under load: {s.rx[Received.COOKIE_SENT]} cookie replies sent,"
        f" {s.mac2_accepted} handshakes with a valid mac2,"
        f" {s.rx_drops[Drop.HANDSHAKE_RATE_LIMITED]} rate limited",
    ]
    for peer in device.peers.values():
        p = peer.stats
        endpoint = "(none)" if peer.endpoint is None else f"{peer.endpoint[0]}:{peer.endpoint[1]}"
        lines += [
            f"peer {encode_key(peer.public_key)}",
            f"  endpoint {endpoint}; handshakes {p.handshakes_completed}"
            f" (initiations sent {p.initiations_sent}, responses sent {p.responses_sent})",
            f"  rx {p.rx_packets} packets {p.rx_bytes} bytes, {p.keepalives_received} keepalives;"
            f" tx {p.tx_packets} packets {p.tx_bytes} bytes, {p.keepalives_sent} keepalives",
            f"  dropped {dict(p.drops)}",
        ]
    return "\n".join(lines)


async def resolve_endpoints(config: Config, device: WireGuardDevice) -> None:
    """Turn host names in Endpoint lines into addresses (the protocol core never resolves)."""
    for peer_config in config.peers:
        if peer_config.endpoint is None:
            continue
        host, port = peer_config.endpoint
        try:
            ipaddress.ip_address(host.split("%")[0])
            continue
        except ValueError:
            pass
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        address = str(infos[0][4][0])
        device.peers[peer_config.public_key].endpoint = (address, port)


async def add_routes(tun: trio_tun.TunStream, config: Config) -> None:
    """Routes for AllowedIPs that the interface's own prefixes do not cover."""
    on_link = [ipaddress.ip_interface(a).network for a in config.interface.addresses]
    for peer in config.peers:
        for prefix in peer.allowed_ips:
            network = ipaddress.ip_network(prefix)
            if network.prefixlen == 0:
                print(f"not routing {network}: a default route would capture the tunnel itself")
                continue
            if any(network.version == n.version and network.subnet_of(n) for n in on_link):  # type: ignore[arg-type]
                continue
            try:
                await tun.add_route(network)
            except OSError as exc:
                if exc.errno != errno.EEXIST:
                    print(f"could not route {network}: {exc}")


async def run(args: argparse.Namespace, config: Config) -> int:
    timers = None if args.shorten_timers is None else shortened(args.shorten_timers)
    device = WireGuardDevice.from_config(config, timers=timers)
    await resolve_endpoints(config, device)
    mtu = config.interface.mtu or DEFAULT_MTU
    async with (
        trio_tun.open_tun(
            args.name, addresses=config.interface.addresses, mtu=mtu, offload=True
        ) as tun,
        open_udp(config.interface.listen_port or 0) as udp,
    ):
        await add_routes(tun, config)
        tunnel = Tunnel(device, tun, udp, under_load_batch=args.under_load_threshold)
        print(
            f"{tun.name} up: {', '.join(config.interface.addresses)}, "
            f"UDP port {config.interface.listen_port or 'any'}, {len(device.peers)} peer(s)",
            flush=True,
        )
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGUSR1) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(tunnel.run)
                async for signum in signals:
                    if signum == signal.SIGUSR1:
                        if args.stats:
                            print(format_stats(device, tun.name), flush=True)
                        continue
                    nursery.cancel_scope.cancel()
                    break
        if args.stats:
            print(format_stats(device, tun.name), flush=True)
    return 0


def _factor(text: str) -> float:
    value = float(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a positive number, not {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, not {value}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="wg-quick style configuration file")
    parser.add_argument("--name", default="wg%d", help="interface name or pattern (default wg%%d)")
    parser.add_argument(
        "--stats", action="store_true", help="print counters on exit and on SIGUSR1"
    )
    parser.add_argument(
        "--shorten-timers",
        type=_factor,
        metavar="FACTOR",
        help="divide every protocol time (rekey, reject, keepalive, retry) by FACTOR, "
        "to watch rekeys happen in seconds; for testing",
    )
    parser.add_argument(
        "--under-load-threshold",
        type=_count,
        default=UNDER_LOAD_BATCH,
        metavar="N",
        help="handshake messages in one received batch that put the device under load "
        "for a second: handshakes then need a cookie (mac2) and are rate limited per "
        f"source (default {UNDER_LOAD_BATCH}; 0: always under load)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = parse_config(Path(args.config).read_text())
    except (OSError, ValueError) as exc:
        print(f"{args.config}: {exc}", file=sys.stderr)
        return 2
    for line, key in config.ignored:
        print(f"{args.config}:{line}: {key} is a wg-quick setting; not applied")
    return trio.run(run, args, config)


if __name__ == "__main__":
    sys.exit(main())
