"""trio-tun: TUN/TAP devices as Trio-native (and anyio-compatible) packet streams.

Everything public is re-exported here; nothing else lives in this module.
"""

from __future__ import annotations

from . import pcap
from ._config import Layer, OffloadFlags, PeerAddress, Route, TunConfig
from ._errors import (
    BrokenResourceError,
    BusyResourceError,
    ClosedResourceError,
    DeviceBusyError,
    NoDeviceControlError,
    OffloadUnavailableError,
    TunError,
    TunPermissionError,
    TunUnavailableError,
)
from ._open import from_fd, open_tap, open_tun
from ._stats import Statistics
from ._stream import PacketStream, TapStream, TunAttribute, TunStream
from .udp import UdpStatistics, UdpStream, UnconnectedUdpStream, open_udp

__version__ = "0.1.0"

__all__ = [
    "BrokenResourceError",
    "BusyResourceError",
    "ClosedResourceError",
    "DeviceBusyError",
    "Layer",
    "NoDeviceControlError",
    "OffloadFlags",
    "OffloadUnavailableError",
    "PacketStream",
    "PeerAddress",
    "Route",
    "Statistics",
    "TapStream",
    "TunAttribute",
    "TunConfig",
    "TunError",
    "TunPermissionError",
    "TunStream",
    "TunUnavailableError",
    "UdpStatistics",
    "UdpStream",
    "UnconnectedUdpStream",
    "from_fd",
    "open_tap",
    "open_tun",
    "open_udp",
    "pcap",
]
