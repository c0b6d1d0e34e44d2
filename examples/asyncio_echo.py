"""The ping responder again, this time in an asyncio program (through anyio).

Nothing about the device changes: ``trio_tun.open_tun`` and the stream it yields
notice which event loop runs them and wait for the fd through anyio instead of
``trio.lowlevel``.  The packet logic is shared with ``ping_responder.py``::

    python examples/asyncio_echo.py --count 3 &
    ping -6 fd00:8::2

Needs root (CAP_NET_ADMIN); stops after ``--count`` replies or ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

import anyio
from ping_responder import Responder, parse_args, report

import trio_tun


async def serve(args: argparse.Namespace) -> int:
    async with trio_tun.open_tun(args.name, addresses=args.interfaces) as dev:
        subnets = ", ".join(str(iface.network) for iface in args.interfaces)
        print(f"{dev.name}: answering pings to {subnets} (asyncio)", flush=True)
        responder = Responder(args.interfaces)
        with anyio.move_on_after(math.inf if args.timeout is None else args.timeout):
            await responder.run(dev, args.count)
    return report(responder.replies, args)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv, description=__doc__.splitlines()[0])
    return anyio.run(serve, args, backend="asyncio")


if __name__ == "__main__":
    sys.exit(main())
