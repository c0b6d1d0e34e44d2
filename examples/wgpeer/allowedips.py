"""Cryptokey routing: which peer owns an inner address (longest prefix wins).

Used both ways: on send, the destination of a packet picks the peer whose key
encrypts it; on receive, the source of a decrypted packet must map back to the peer
whose key decrypted it, or the packet is dropped.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Final, Generic, TypeVar

Owner = TypeVar("Owner")

_CACHE_LIMIT: Final = 4096
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class _Family(Generic[Owner]):
    """One address family: for each prefix length, a dict from masked address to owner."""

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.by_length: dict[int, dict[int, Owner]] = {}
        # Longest first, so the first hit of a lookup is the answer.
        self.lengths: list[int] = []

    def insert(self, network: int, length: int, owner: Owner) -> None:
        table = self.by_length.get(length)
        if table is None:
            table = self.by_length[length] = {}
            self.lengths = sorted(self.by_length, reverse=True)
        table[network] = owner

    def lookup(self, address: int) -> Owner | None:
        bits = self.bits
        for length in self.lengths:
            owner = self.by_length[length].get(address >> (bits - length) << (bits - length))
            if owner is not None:
                return owner
        return None

    def remove_owner(self, owner: Owner) -> None:
        for length in list(self.by_length):
            table = self.by_length[length]
            for key in [k for k, v in table.items() if v is owner]:
                del table[key]
            if not table:
                del self.by_length[length]
        self.lengths = sorted(self.by_length, reverse=True)


class AllowedIPs(Generic[Owner]):
    """A longest-prefix-match table from IPv4 and IPv6 prefixes to owners (peers).

    Inserting a prefix that is already present moves it to the new owner, as ``wg``
    does when two peers claim the same range.
    """

    def __init__(self) -> None:
        self._v4: _Family[Owner] = _Family(32)
        self._v6: _Family[Owner] = _Family(128)
        # Packets of one flow repeat the same addresses: remember the answers (any
        # change to the table forgets them all).
        self._cache: dict[bytes, Owner | None] = {}

    def insert(self, prefix: str | Network, owner: Owner) -> None:
        """Add *prefix* (``"10.0.0.0/24"``; host bits are ignored) for *owner*."""
        network = ipaddress.ip_network(prefix, strict=False)
        family = self._v4 if network.version == 4 else self._v6
        family.insert(int(network.network_address), network.prefixlen, owner)
        self._cache.clear()

    def remove_owner(self, owner: Owner) -> None:
        """Forget every prefix of *owner*."""
        self._v4.remove_owner(owner)
        self._v6.remove_owner(owner)
        self._cache.clear()

    def lookup_v4(self, address: bytes) -> Owner | None:
        """The owner of a 4-byte address, or ``None``."""
        try:
            return self._cache[address]
        except KeyError:
            pass
        owner = self._v4.lookup(int.from_bytes(address, "big"))
        self._remember(address, owner)
        return owner

    def lookup_v6(self, address: bytes) -> Owner | None:
        """The owner of a 16-byte address, or ``None``."""
        try:
            return self._cache[address]
        except KeyError:
            pass
        owner = self._v6.lookup(int.from_bytes(address, "big"))
        self._remember(address, owner)
        return owner

    def _remember(self, address: bytes, owner: Owner | None) -> None:
        # Bounded: a scan of many addresses must not grow memory without limit.
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[address] = owner

    def lookup(self, address: str) -> Owner | None:
        """The owner of an address given as text."""
        ip = ipaddress.ip_address(address)
        family = self._v4 if ip.version == 4 else self._v6
        return family.lookup(int(ip))

    def entries(self) -> Iterator[tuple[Network, Owner]]:
        """Every (prefix, owner), IPv4 first, longest prefixes first."""
        for family, factory in (
            (self._v4, ipaddress.IPv4Network),
            (self._v6, ipaddress.IPv6Network),
        ):
            for length in family.lengths:
                for network, owner in family.by_length[length].items():
                    yield factory((network, length)), owner
