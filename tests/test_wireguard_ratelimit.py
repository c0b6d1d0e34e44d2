"""The per-source token buckets that limit handshakes under load, on an injected clock."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from wgpeer.ratelimit import BURST, RATE, RateLimiter, nanoseconds, source_key

NS = 1_000_000_000


def test_defaults_are_a_burst_of_5_then_20_per_second() -> None:
    limiter = RateLimiter()
    assert (RATE, BURST) == (20, 5)
    assert [limiter.allow("192.0.2.1", 100.0) for _ in range(7)] == [True] * 5 + [False] * 2
    # One token every 50 ms: not a moment sooner.
    assert not limiter.allow("192.0.2.1", 100.049)
    assert limiter.allow("192.0.2.1", 100.05)
    assert not limiter.allow("192.0.2.1", 100.05)
    # A second of silence refills the bucket to its burst, no further.
    assert [limiter.allow("192.0.2.1", 101.5) for _ in range(6)] == [True] * 5 + [False]


def test_sources_are_ipv4_addresses_and_ipv6_slash_64s() -> None:
    assert source_key("192.0.2.1") == bytes([192, 0, 2, 1])
    assert source_key("2001:db8:1:2:aaaa::1") == source_key("2001:db8:1:2::ffff")
    assert source_key("2001:db8:1:2::1") != source_key("2001:db8:1:3::1")
    # A v4-mapped address is the IPv4 host, not one /64 shared by all of IPv4.
    assert source_key("::ffff:192.0.2.1") == source_key("192.0.2.1")
    assert source_key("::ffff:192.0.2.1") != source_key("::ffff:192.0.2.2")
    assert source_key("fe80::1%eth0") == source_key("fe80::2")
    assert source_key("peer.example") == b"name:peer.example"

    limiter = RateLimiter(rate=1, burst=1)
    assert limiter.allow("2001:db8:1:2::1", 0.0)
    assert not limiter.allow("2001:db8:1:2::99", 0.0)  # the same /64
    assert limiter.allow("2001:db8:1:3::1", 0.0)
    assert limiter.allow("192.0.2.1", 0.0)
    assert not limiter.allow("::ffff:192.0.2.1", 0.0)
    assert limiter.allow("192.0.2.2", 0.0)


def test_idle_buckets_are_swept_and_the_table_is_bounded() -> None:
    limiter = RateLimiter(rate=10, burst=2, max_sources=3, sweep_interval=1.0)
    for i in range(3):
        assert limiter.allow(f"192.0.2.{i}", 0.0)
    # Full: a fourth source is refused (the three tracked keep their promise) ...
    assert not limiter.allow("192.0.2.9", 0.1)
    assert limiter.refused_new_sources == 1 and len(limiter) == 3
    # ... until the next sweep finds buckets that have refilled (0.2 s) and drops them.
    assert limiter.allow("192.0.2.0", 0.9)  # busy again: not refilled at the sweep
    assert not limiter.allow("192.0.2.9", 0.99)  # no sweep before 1.0
    assert limiter.allow("192.0.2.9", 1.0)
    assert len(limiter) == 2  # 192.0.2.0 (used at 0.9) and 192.0.2.9
    limiter.sweep(5.0)
    assert len(limiter) == 0


def test_a_clock_that_steps_back_mints_no_tokens() -> None:
    limiter = RateLimiter(rate=1, burst=1)
    assert limiter.allow("192.0.2.1", 10.0)
    assert not limiter.allow("192.0.2.1", 5.0)
    assert not limiter.allow("192.0.2.1", 10.5)
    assert limiter.allow("192.0.2.1", 11.0)


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RateLimiter(rate=0)
    with pytest.raises(ValueError, match="at least 1"):
        RateLimiter(burst=0)
    with pytest.raises(ValueError, match="max_sources"):
        RateLimiter(max_sources=0)


# Arrival times in nanoseconds-ish floats: up to 3 s of traffic from up to 3 sources.
_arrivals = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 3 * NS)), min_size=1, max_size=120
).map(sorted)
_params = st.tuples(st.integers(1, 50), st.integers(1, 8))


@settings(max_examples=300, deadline=None)
@given(_params, _arrivals)
def test_never_more_than_burst_plus_rate_times_t_in_any_window(
    params: tuple[int, int], arrivals: list[tuple[int, int]]
) -> None:
    rate, burst = params
    limiter = RateLimiter(rate=rate, burst=burst)
    admitted: dict[int, list[int]] = {}
    last_seen: dict[int, int] = {}
    for source, t in sorted(arrivals, key=lambda a: a[1]):
        now = t / NS
        ns = nanoseconds(now)
        ok = limiter.allow(f"192.0.2.{source}", now)
        # Liveness: one token's worth of silence since the source's last message
        # (admitted or not) always earns the next one.
        if source not in last_seen or (ns - last_seen[source]) * rate >= NS:
            assert ok, (source, ns, last_seen.get(source))
        last_seen[source] = ns
        if ok:
            admitted.setdefault(source, []).append(ns)
    # Safety, exactly on the limiter's own integer clock: between any two admitted
    # messages of one source (inclusive), count <= burst + rate * span.
    for times in admitted.values():
        for i in range(len(times)):
            for j in range(i, len(times)):
                assert (j - i + 1) * NS <= burst * NS + rate * (times[j] - times[i]), (i, j)


@settings(max_examples=200, deadline=None)
@given(_params, _arrivals, st.integers(1, 4))
def test_sweeping_changes_no_decision_and_bounds_memory(
    params: tuple[int, int], arrivals: list[tuple[int, int]], max_sources: int
) -> None:
    rate, burst = params
    eager = RateLimiter(rate=rate, burst=burst, sweep_interval=0.0)
    lazy = RateLimiter(rate=rate, burst=burst, sweep_interval=1e9)
    small = RateLimiter(rate=rate, burst=burst, max_sources=max_sources, sweep_interval=0.0)
    for source, t in sorted(arrivals, key=lambda a: a[1]):
        host = f"2001:db8:{source}::1"
        eager_ok, lazy_ok = eager.allow(host, t / NS), lazy.allow(host, t / NS)
        assert eager_ok == lazy_ok
        small_ok = small.allow(host, t / NS)
        # A bounded table only ever refuses more, never admits what the others refuse.
        assert not small_ok or eager_ok
        assert len(small) <= max_sources
        # Sweeping every time leaves only buckets that have not refilled yet.
        assert len(eager) <= len(lazy)
