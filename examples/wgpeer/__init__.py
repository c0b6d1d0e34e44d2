"""A sans-I/O WireGuard peer: the protocol core, no sockets, no awaits, no clocks.

The modules, lowest first: :mod:`.crypto` (primitives), :mod:`.messages` (wire
formats), :mod:`.noise` (the handshake), :mod:`.cookie` (mac1/mac2 and cookie
replies), :mod:`.ratelimit` (handshakes per source under load), :mod:`.replay`
(the counter window), :mod:`.allowedips` (cryptokey routing), :mod:`.timers`
(constants), :mod:`.peer` (per-peer state), :mod:`.device` (everything together)
and :mod:`.config` (wg-quick files).
"""

from .allowedips import AllowedIPs
from .config import Config, InterfaceConfig, PeerConfig, parse_config, parse_endpoint
from .crypto import decode_key, encode_key, generate_private_key, public_key
from .device import DeviceStats, Drop, Outgoing, Received, WireGuardDevice
from .peer import Keypair, Peer, PeerStats
from .ratelimit import RateLimiter
from .replay import REJECT_AFTER_MESSAGES, WINDOW_SIZE, ReplayFilter
from .timers import TimerConfig, shortened

__all__ = [
    "REJECT_AFTER_MESSAGES",
    "WINDOW_SIZE",
    "AllowedIPs",
    "Config",
    "DeviceStats",
    "Drop",
    "InterfaceConfig",
    "Keypair",
    "Outgoing",
    "Peer",
    "PeerConfig",
    "PeerStats",
    "RateLimiter",
    "Received",
    "ReplayFilter",
    "TimerConfig",
    "WireGuardDevice",
    "decode_key",
    "encode_key",
    "generate_private_key",
    "parse_config",
    "parse_endpoint",
    "public_key",
    "shortened",
]
