"""python-pytun forwarder for bench/forward.py: the classic two-thread design.

One thread per direction doing blocking ``read`` -> ``write`` (pytun releases
the GIL while it waits in read), no offload.  This is the baseline a plain
Python VPN gets without an event loop.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from typing import Any

import _fwdcommon
import pytun

from trio_tun.platform.linux import tun as linux

# No offload: a read never brings more than one MTU-sized packet, but be generous.
READ_SIZE = 65535


class _Counters:
    __slots__ = ("read_bytes", "reads", "write_bytes", "write_errors", "writes")

    def __init__(self) -> None:
        self.reads = self.read_bytes = self.writes = self.write_bytes = self.write_errors = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


def _open(dev: str) -> Any:
    device = pytun.TunTapDevice(name=dev, flags=pytun.IFF_TUN | pytun.IFF_NO_PI)
    # The offload mask is device-wide and persists; without a virtio header the
    # kernel must not hand us super-packets.
    linux.set_offload(device.fileno(), linux.NO_OFFLOAD)
    return device


def _pump(src: Any, dst: Any, counters: _Counters) -> None:
    read, write = src.read, dst.write
    while True:
        packet = read(READ_SIZE)
        counters.reads += 1
        counters.read_bytes += len(packet)
        try:
            counters.write_bytes += write(packet)
            counters.writes += 1
        except pytun.Error:
            counters.write_errors += 1


def main() -> None:
    args = _fwdcommon.parse_args(__doc__ or "", lambda _parser: None)
    _run(args)


def _run(args: argparse.Namespace) -> None:
    # Signals are blocked before the workers start so that they inherit the
    # mask and only the main thread's sigwait() ever sees SIGTERM/SIGINT.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    a = _fwdcommon.open_in(args.ns_a, lambda: _open(args.dev_a))
    b = _fwdcommon.open_in(args.ns_b, lambda: _open(args.dev_b))
    a_to_b, b_to_a = _Counters(), _Counters()
    for src, dst, counters in ((a, b, a_to_b), (b, a, b_to_a)):
        threading.Thread(target=_pump, args=(src, dst, counters), daemon=True).start()
    _fwdcommon.announce_ready({"forwarder": "pytun", "version": _pytun_version()})
    signal.sigwait(stop_signals)
    _fwdcommon.report(
        {"forwarder": "pytun", "a_to_b": a_to_b.as_dict(), "b_to_a": b_to_a.as_dict()}
    )
    # The workers sit in blocking reads that nothing can interrupt; leave now.
    os._exit(0)


def _pytun_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("python-pytun")
    except PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    main()
