"""``python -m trio_tun demo | info``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trio_tun", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("demo", help="toy VPN between two private network namespaces (root)")
    sub.add_parser("info", help="what this host's TUN/TAP driver supports")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._demo import main as demo

        return demo()
    if args.command == "info":
        from ._info import main as info

        return info()
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
