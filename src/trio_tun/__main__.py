"""``python -m trio_tun``: the demo, a report on this host, and packet capture."""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from typing import Final

from ._info import _version

DESCRIPTION: Final = """\
trio-tun: Trio-native TUN/TAP devices for Python (works with anyio on asyncio).
Run "python -m trio_tun COMMAND --help" for a command's options.
"""

DEMO_DESCRIPTION: Final = """\
Builds a toy VPN in two network namespaces it creates (nothing touches this
host's own interfaces): a TUN device in each, joined by UDP over a veth pair.
It pings across (IPv4 and IPv6), then sends the same TCP transfer through two
builds of the tunnel, one moving packets in batches (TUN offload, UDP GSO/GRO,
TunnelPump) and one moving them one call per packet, and prints both speeds.

About the numbers: everything runs on this machine at once. The TCP sender and
receiver are Python threads of this process, and both tunnel ends share one
Python thread, which wraps every packet in UDP and unwraps it again. Expect
about 0.1-0.3 Gbit/s one packet per call and 1-4 Gbit/s batched, depending on
the machine. The ~15 Gbit/s of the benchmark table is a different
measurement: one forwarder passing 64 KiB super-packets between two TUN
devices, no UDP, with iperf3 (written in C) making the traffic. Compare the
two demo tunnels with each other, not with that table.

Needs root on Linux (it creates namespaces and devices) and ping
(iputils-ping) for the ping part.
"""

INFO_DESCRIPTION: Final = """\
Prints the trio-tun version, whether the compiled offload code is in use, the
device backend for this system and, on Linux, what the kernel's TUN driver
offers. As root it also probes offload and multi-queue on a throw-away device
in a private network namespace. Exits with 1 when the driver can't be opened.
"""

CAPTURE_DESCRIPTION: Final = """\
Opens a TUN (or TAP) device, brings it up and writes every packet the kernel
hands it to a pcap file (nanosecond timestamps; open it with Wireshark or
"tcpdump -r"). The device is this command's: it receives the packets, it does
not watch someone else's. NAME may be a new device ("cap%d" picks a free
name) or an existing persistent one (made with "ip tuntap add"). A device
that another program holds open can't be captured from here: wrap its stream
with trio_tun.pcap.capture() in that program instead.

Stops after --count packets, after --duration seconds, or on Ctrl-C,
whichever comes first; the file is complete in every case.

Example (as root), with a packet sink on 10.7.0.1/24 for 10 seconds:
  python -m trio_tun capture cap%d --address 10.7.0.1/24 --duration 10 -w out.pcap
  ping -c 3 10.7.0.2       # in another terminal, while it runs
"""


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return value


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, width=min(100, _terminal_width()))


def _terminal_width() -> int:
    import shutil

    return shutil.get_terminal_size((80, 24)).columns


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trio_tun", description=DESCRIPTION, formatter_class=_formatter
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"trio-tun {_version()}",
        help="print the installed version and exit",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    demo = sub.add_parser(
        "demo",
        help="toy VPN between two private network namespaces (root, Linux)",
        description=DEMO_DESCRIPTION,
        formatter_class=_formatter,
    )
    demo.add_argument(
        "--size",
        type=_positive_int,
        default=128,
        metavar="MIB",
        help="MiB sent through each tunnel (default: %(default)s)",
    )
    demo.add_argument(
        "--timeout",
        type=_positive_float,
        default=20.0,
        metavar="SECONDS",
        help="give up on a transfer after this long (default: %(default)s)",
    )
    demo.add_argument(
        "--batched-only",
        action="store_true",
        help="skip the slow one-call-per-packet tunnel",
    )

    info = sub.add_parser(
        "info",
        help="what this host's TUN/TAP driver supports",
        description=INFO_DESCRIPTION,
        formatter_class=_formatter,
    )
    info.add_argument("--json", action="store_true", help="print the report as JSON")

    cap = sub.add_parser(
        "capture",
        help="write the packets a TUN/TAP device receives to a pcap file (root)",
        description=CAPTURE_DESCRIPTION,
        formatter_class=_formatter,
    )
    cap.add_argument("name", metavar="NAME", help='device name, e.g. "tun0" or "cap%%d"')
    cap.add_argument(
        "-w",
        "--write",
        metavar="FILE",
        help='pcap file to write; "-" for standard output (default: NAME.pcap)',
    )
    cap.add_argument("--tap", action="store_true", help="a TAP (Ethernet) device instead of TUN")
    cap.add_argument(
        "--address",
        action="append",
        default=[],
        metavar="ADDR/PREFIX",
        help="add this address to the device (repeatable), e.g. 10.7.0.1/24",
    )
    cap.add_argument("--mtu", type=_positive_int, help="set the device's MTU")
    cap.add_argument("-c", "--count", type=_positive_int, help="stop after this many packets")
    cap.add_argument(
        "--duration", type=_positive_float, metavar="SECONDS", help="stop after this long"
    )
    cap.add_argument(
        "--snaplen",
        type=_positive_int,
        default=262144,
        help="bytes kept of each packet (default: %(default)s)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._demo import main as demo

        return demo(
            size=args.size * 1024 * 1024, timeout=args.timeout, per_datagram=not args.batched_only
        )
    if args.command == "info":
        from ._info import main as info

        return info(as_json=args.json)
    if args.command == "capture":
        return _capture(args)
    parser.print_help()
    return 2


def _capture(args: argparse.Namespace) -> int:
    import trio

    from ._errors import TunError

    if args.snaplen > 262144:
        print("capture: --snaplen is at most 262144", file=sys.stderr)
        return 2
    try:
        counted = trio.run(_capture_run, args)
    except KeyboardInterrupt:
        return 130
    except (TunError, OSError) as exc:
        print(f"capture: {exc}", file=sys.stderr)
        return 1
    print(f"capture: {counted} packets written", file=sys.stderr)
    return 0


async def _capture_run(args: argparse.Namespace) -> int:
    import trio

    from . import PacketStream, open_tap, open_tun
    from .pcap import FileLike, capture

    device: contextlib.AbstractAsyncContextManager[PacketStream]
    if args.tap:
        device = open_tap(args.name, addresses=args.address, mtu=args.mtu)
    else:
        # offload=False: whole packets as the kernel routed them, not 64 KiB
        # super-packets split up again.
        device = open_tun(args.name, addresses=args.address, mtu=args.mtu, offload=False)
    async with device as dev:
        target: str | FileLike
        if args.write == "-":
            target = sys.stdout.buffer
            # Every packet reaches a live reader (e.g. "wireshark -k -i -") at once.
            flush_interval: float | None = 0.0
        else:
            target = args.write if args.write is not None else f"{dev.name}.pcap"
            flush_interval = 1.0
        where = "standard output" if args.write == "-" else target
        print(f"capture: {dev.name} is up, writing to {where}", file=sys.stderr, flush=True)
        with capture(dev, target, snaplen=args.snaplen, flush_interval=flush_interval) as cap:
            # Ends by count or by time, whichever comes first (or by Ctrl-C).
            with trio.move_on_after(args.duration if args.duration is not None else math.inf):
                limit = args.count if args.count is not None else math.inf
                while cap.capture_statistics().received < limit:
                    await cap.receive()
            return cap.capture_statistics().received


if __name__ == "__main__":
    sys.exit(main())
