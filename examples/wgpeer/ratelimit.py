"""Per-source rate limiting of handshake messages, for a device under load.

A cookie (mac2) proves that a sender can receive at its source address, but not
that it is gentle: one real address can still ask for a Curve25519 computation
per datagram.  Under load, every source address therefore gets a token bucket:
it may send :data:`BURST` handshake messages back to back, then :data:`RATE` per
second.  IPv4 sources are keyed by address.  IPv6 sources are keyed by their /64
prefix, because one host is routinely handed a whole /64 and could otherwise
spread a flood over as many addresses as it likes.

Arithmetic is on integers (nanoseconds times messages per second), so the bound
"at most ``burst + rate * t`` messages admitted in any window of ``t`` seconds"
holds exactly, with no rounding that could let one extra message through.

Memory stays bounded two ways.  A bucket that has been idle long enough to
refill is indistinguishable from a new one, so sweeping it away (at most once per
:data:`SWEEP_INTERVAL`) changes no decision.  And at most ``max_sources`` buckets
exist: a new source beyond that is refused until a sweep makes room, which keeps
the promise to every source already tracked.
"""

from __future__ import annotations

import socket
from typing import Final

#: Handshake messages per second one source may send once its burst is spent.
RATE: Final = 20
#: Handshake messages one source may send back to back.
BURST: Final = 5
#: Idle buckets are swept away at most this often (seconds).
SWEEP_INTERVAL: Final = 1.0
#: The most sources tracked at once.
MAX_SOURCES: Final = 1 << 16

_NS: Final = 1_000_000_000
_V4_MAPPED: Final = bytes(10) + b"\xff\xff"


def source_key(host: str) -> bytes:
    """The bucket a source address belongs to.

    IPv4: the four address bytes.  IPv6: the first eight (the /64), except that an
    IPv4-mapped address counts as the IPv4 address it carries.  Anything that is not
    an address literal (the caller's own name for a source) is its own bucket.
    """
    try:
        return socket.inet_pton(socket.AF_INET, host)
    except OSError:
        pass
    try:
        # A scope (fe80::1%eth0) names the link, not the address.
        packed = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
    except OSError:
        return b"name:" + host.encode("utf-8", "surrogateescape")
    if packed.startswith(_V4_MAPPED):
        return packed[12:]
    return packed[:8]


def nanoseconds(now: float) -> int:
    """The limiter's integer clock: *now* (seconds, any monotonic scale) in nanoseconds."""
    return int(now * _NS)


class RateLimiter:
    """Token buckets keyed by :func:`source_key`.

    Args:
      rate: messages per second each source may send in the long run.
      burst: messages each source may send at once (the bucket's size).
      max_sources: buckets kept at most; new sources are refused beyond that.
      sweep_interval: how often idle buckets are looked for (seconds).
    """

    def __init__(
        self,
        rate: int = RATE,
        burst: int = BURST,
        *,
        max_sources: int = MAX_SOURCES,
        sweep_interval: float = SWEEP_INTERVAL,
    ) -> None:
        if rate < 1 or burst < 1:
            raise ValueError(f"rate and burst must be at least 1, not {rate} and {burst}")
        if max_sources < 1:
            raise ValueError(f"max_sources must be at least 1, not {max_sources}")
        self.rate: Final = rate
        self.burst: Final = burst
        self.max_sources: Final = max_sources
        self.sweep_interval: Final = sweep_interval
        # A token is worth _NS units; a second adds `rate` tokens.
        self._full: Final = burst * _NS
        #: How long an emptied bucket takes to fill (ns): idle this long, it is new again.
        self._refill_ns: Final = -(-self._full // rate)
        #: key -> [tokens in units of 1/_NS, time of the last update in ns]
        self._buckets: dict[bytes, list[int]] = {}
        self._next_sweep: int | None = None
        #: Sources refused because the table was full (for diagnostics).
        self.refused_new_sources = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, host: str, now: float) -> bool:
        """Take a token from *host*'s bucket at time *now*; ``False`` if there is none."""
        return self.allow_key(source_key(host), now)

    def allow_key(self, key: bytes, now: float) -> bool:
        t = nanoseconds(now)
        if self._next_sweep is None or t >= self._next_sweep:
            self.sweep(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_sources:
                self.refused_new_sources += 1
                return False
            # A new source starts with a full bucket and spends one token now.
            self._buckets[key] = [self._full - _NS, t]
            return True
        tokens, updated = bucket
        # A clock that steps back (it should not) must not mint tokens.
        tokens = min(self._full, tokens + max(0, t - updated) * self.rate)
        bucket[1] = max(t, updated)
        if tokens >= _NS:
            bucket[0] = tokens - _NS
            return True
        bucket[0] = tokens
        return False

    def sweep(self, now: float) -> None:
        """Forget every bucket that has refilled completely (it would act like a new one)."""
        t = nanoseconds(now)
        refill = self._refill_ns
        idle = [key for key, (_, updated) in self._buckets.items() if t - updated >= refill]
        for key in idle:
            del self._buckets[key]
        self._next_sweep = t + nanoseconds(self.sweep_interval)
