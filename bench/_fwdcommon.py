"""What the Python forwarders share: argument parsing, namespace switching, reporting.

A forwarder is started by ``bench/forward.py`` in the harness's private
namespace and is told two (namespace path, device name) pairs.  It opens each
device from inside that device's namespace (a TUN fd is bound to the namespace
it was opened in), prints ``READY``, forwards until SIGTERM/SIGINT, then prints
exactly one JSON line of counters.  Anything else goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Any, TypeVar

import attrs

from trio_tun import Statistics
from trio_tun.platform.linux import netns as _netns
from trio_tun.platform.linux import tun as _tun

T = TypeVar("T")

#: What the harness waits for on stdout before it starts iperf3.
READY_LINE = "READY"


def parse_args(description: str, extra: Callable[[argparse.ArgumentParser], None]) -> Any:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("ns_a", help="namespace path of device A")
    parser.add_argument("dev_a", help="device A's name")
    parser.add_argument("ns_b", help="namespace path of device B")
    parser.add_argument("dev_b", help="device B's name")
    extra(parser)
    return parser.parse_args()


@contextlib.contextmanager
def _inside(ns_path: str) -> Iterator[None]:
    ns_fd = _netns.open_path(ns_path)
    try:
        with _netns.entered(ns_fd):
            yield
    finally:
        os.close(ns_fd)


def open_in(ns_path: str, opener: Callable[[], T]) -> T:
    """Run *opener* with this thread inside *ns_path*; call before starting threads."""
    with _inside(ns_path):
        return opener()


def announce_ready(info: dict[str, Any]) -> None:
    print(READY_LINE, json.dumps(info), flush=True)


def report(result: dict[str, Any]) -> None:
    print(json.dumps(result), flush=True)


def warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def read_line(stream: IO[bytes], deadline: float) -> str | None:
    """One line from a pipe, or None on EOF or when *deadline* passes."""
    fd = stream.fileno()
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            return None
        data += chunk
    return data.decode(errors="replace")


def attach_queues(dev: str, offload: bool, queues: int) -> list[int]:
    """Open *queues* fds on *dev* (a persistent TUN device) in this thread's namespace."""
    flags = _tun.IFF_TUN | _tun.IFF_NO_PI | (_tun.IFF_VNET_HDR if offload else 0)
    if queues > 1:
        # Every queue of a multi-queue device must ask for IFF_MULTI_QUEUE.
        flags |= _tun.IFF_MULTI_QUEUE
    fds: list[int] = []
    try:
        for _ in range(queues):
            fds.append(_tun.open_tun_file())
            _tun.set_iff(fds[-1], dev, flags)
        # from_fd assumes TCP_OFFLOAD whenever there is a virtio header, so ask
        # for exactly that; the mask is device-wide (one call covers every
        # queue) and outlives earlier users.
        _tun.set_offload(fds[0], _tun.TCP_OFFLOAD if offload else _tun.NO_OFFLOAD)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def summed(stats: Sequence[Statistics]) -> dict[str, int]:
    """One device's counters: the sum over its queues."""
    return {f: sum(getattr(s, f) for s in stats) for f in attrs.fields_dict(Statistics)}


def direction(src: Mapping[str, int], dst: Mapping[str, int]) -> dict[str, int]:
    """The counters of one direction, in the shape every forwarder reports."""
    return {
        "reads": src["reads"],
        "read_bytes": src["read_bytes"],
        "writes": dst["writes"],
        "write_bytes": dst["write_bytes"],
        "rx_packets": src["rx_packets"],
        "tx_packets": dst["tx_packets"],
        "tx_coalesced": dst["tx_coalesced"],
        "write_errors": dst["tx_dropped"],
    }
