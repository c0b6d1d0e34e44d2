"""Longest-prefix match against brute force over every inserted prefix."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

# The protocol core needs `cryptography` (X25519, ChaCha20-Poly1305).
pytest.importorskip("cryptography")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from wgpeer import AllowedIPs


def prefixes(version: int) -> st.SearchStrategy[str]:
    bits = 32 if version == 4 else 128
    cls = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    # Few distinct high bits, so prefixes overlap and nest often.
    address = st.integers(0, 7).map(lambda hi: hi << (bits - 3)) | st.integers(0, 2**bits - 1)
    return st.tuples(address, st.integers(0, bits)).map(
        lambda t: str(cls((t[0] >> (bits - t[1]) << (bits - t[1]), t[1])))
    )


def addresses(version: int) -> st.SearchStrategy[str]:
    bits = 32 if version == 4 else 128
    cls = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    hi = st.integers(0, 7).flatmap(
        lambda h: st.integers(0, 2 ** (bits - 3) - 1).map(lambda lo: (h << (bits - 3)) | lo)
    )
    return (hi | st.integers(0, 2**bits - 1)).map(lambda n: str(cls(n)))


def by_bytes(table: AllowedIPs[object], address: str) -> object | None:
    """The lookup the data path uses (packed addresses, cached)."""
    packed = ipaddress.ip_address(address).packed
    return table.lookup_v4(packed) if len(packed) == 4 else table.lookup_v6(packed)


def brute_force(entries: list[tuple[str, int]], address: str) -> int | None:
    ip = ipaddress.ip_address(address)
    best: tuple[int, int] | None = None
    for prefix, owner in entries:  # later inserts of the same prefix win
        net = ipaddress.ip_network(prefix)
        if net.version == ip.version and ip in net and (best is None or net.prefixlen >= best[0]):
            best = (net.prefixlen, owner)
    return None if best is None else best[1]


@settings(deadline=None)
@given(
    st.sampled_from([4, 6]).flatmap(
        lambda v: st.tuples(
            st.lists(st.tuples(prefixes(v), st.integers(0, 5)), max_size=30),
            st.lists(addresses(v), min_size=1, max_size=20),
        )
    )
)
def test_lookup_matches_brute_force(case: tuple[list[tuple[str, int]], list[str]]) -> None:
    entries, probes = case
    owners = [object() for _ in range(6)]
    table: AllowedIPs[object] = AllowedIPs()
    for count, (prefix, owner) in enumerate(entries, start=1):
        table.insert(prefix, owners[owner])
        # Lookups between inserts fill the cache that the next insert must invalidate.
        expected = brute_force(entries[:count], probes[0])
        assert by_bytes(table, probes[0]) is (None if expected is None else owners[expected])
    for address in probes:
        expected = brute_force(entries, address)
        got = table.lookup(address)
        assert got is (None if expected is None else owners[expected])
        assert by_bytes(table, address) is got


def test_remove_owner_and_entries() -> None:
    a, b = object(), object()
    table: AllowedIPs[object] = AllowedIPs()
    table.insert("10.0.0.0/8", a)
    table.insert("10.1.0.0/16", b)
    table.insert("0.0.0.0/0", a)
    table.insert("::/0", b)
    assert table.lookup("10.1.2.3") is b
    table.remove_owner(b)
    assert table.lookup("10.1.2.3") is a and table.lookup("::1") is None
    assert [str(n) for n, _ in table.entries()] == ["10.0.0.0/8", "0.0.0.0/0"]
    table.insert("10.9.9.9/8", b)  # host bits ignored, prefix moves to b
    assert table.lookup("10.200.0.1") is b
