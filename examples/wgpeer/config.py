"""Parse the wg-quick configuration format (``[Interface]`` and ``[Peer]`` sections).

Only what a userspace peer needs is interpreted; wg-quick's own keys that act on
the host (DNS, Table, Pre/PostUp/Down, SaveConfig, FwMark) are collected in
:attr:`Config.ignored` so the caller can say they were not applied.  Every error is
a :exc:`ValueError` naming the line.
"""

from __future__ import annotations

import ipaddress
from typing import Final

import attrs

from .crypto import decode_key

Endpoint = tuple[str, int]

_HOST_KEYS: Final = frozenset(
    {"dns", "table", "preup", "postup", "predown", "postdown", "saveconfig", "fwmark"}
)


@attrs.frozen
class InterfaceConfig:
    private_key: bytes = attrs.field(repr=False)
    listen_port: int | None = None
    addresses: tuple[str, ...] = ()
    mtu: int | None = None


@attrs.frozen
class PeerConfig:
    public_key: bytes
    preshared_key: bytes | None = attrs.field(default=None, repr=False)
    allowed_ips: tuple[str, ...] = ()
    endpoint: Endpoint | None = None
    persistent_keepalive: int = 0


@attrs.frozen
class Config:
    interface: InterfaceConfig
    peers: tuple[PeerConfig, ...]
    #: (line number, key) of wg-quick settings that were read but not applied.
    ignored: tuple[tuple[int, str], ...] = ()


class _Error(ValueError):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")


def parse_endpoint(text: str) -> Endpoint:
    """``host:port`` or ``[v6address]:port``; raises :exc:`ValueError`."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"bad endpoint {text!r}: expected [address]:port")
        ipaddress.IPv6Address(host.split("%")[0])
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"bad endpoint {text!r}: expected host:port")
        if ":" in host:
            raise ValueError(f"bad endpoint {text!r}: an IPv6 address needs [brackets]")
    return host, _port(port_text, "endpoint port", minimum=1)


def _port(text: str, what: str, *, minimum: int = 0) -> int:
    try:
        value = int(text.strip(), 10)
    except ValueError:
        raise ValueError(f"{what} must be a number, not {text.strip()!r}") from None
    if not minimum <= value <= 65535:
        raise ValueError(f"{what} must be {minimum}..65535, not {value}")
    return value


def _list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def parse_config(text: str) -> Config:
    """Parse the text of a wg-quick ``.conf`` file."""
    sections: list[tuple[str, int, list[tuple[int, str, str]]]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            name = line.strip("[]").strip().lower()
            if not line.endswith("]") or name not in ("interface", "peer"):
                raise _Error(number, f"unknown section {line!r}")
            sections.append((name, number, []))
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise _Error(number, f"expected 'Key = value', got {line!r}")
        if not sections:
            raise _Error(number, "a setting before any [Interface] or [Peer] section")
        key = key.strip().lower()
        sections[-1][2].append((number, key, value.strip()))

    interfaces = [s for s in sections if s[0] == "interface"]
    if len(interfaces) != 1:
        where = interfaces[1][1] if interfaces else 1
        raise _Error(where, "there must be exactly one [Interface] section")
    ignored: list[tuple[int, str]] = []
    interface = _interface(interfaces[0][1], interfaces[0][2], ignored)
    peers: list[PeerConfig] = []
    seen: dict[bytes, int] = {}
    for name, start, items in sections:
        if name != "peer":
            continue
        peer = _peer(start, items)
        if peer.public_key in seen:
            raise _Error(start, f"peer repeats the public key of line {seen[peer.public_key]}")
        seen[peer.public_key] = start
        peers.append(peer)
    return Config(interface, tuple(peers), tuple(ignored))


def _interface(
    start: int, items: list[tuple[int, str, str]], ignored: list[tuple[int, str]]
) -> InterfaceConfig:
    private_key: bytes | None = None
    listen_port: int | None = None
    addresses: list[str] = []
    mtu: int | None = None
    for number, key, value in items:
        try:
            if key == "privatekey":
                private_key = decode_key(value)
            elif key == "listenport":
                listen_port = _port(value, "ListenPort")
            elif key == "address":
                addresses += [str(ipaddress.ip_interface(a)) for a in _list(value)]
            elif key == "mtu":
                mtu = int(value, 10)
                if not 576 <= mtu <= 65535:
                    raise ValueError(f"MTU must be 576..65535, not {mtu}")
            elif key in _HOST_KEYS:
                ignored.append((number, key))
            else:
                raise ValueError(f"unknown [Interface] key {key!r}")
        except ValueError as exc:
            raise _Error(number, str(exc)) from None
    if private_key is None:
        raise _Error(start, "[Interface] needs a PrivateKey")
    return InterfaceConfig(private_key, listen_port, tuple(addresses), mtu)


def _peer(start: int, items: list[tuple[int, str, str]]) -> PeerConfig:
    public_key: bytes | None = None
    preshared_key: bytes | None = None
    allowed: list[str] = []
    endpoint: Endpoint | None = None
    keepalive = 0
    for number, key, value in items:
        try:
            if key == "publickey":
                public_key = decode_key(value)
            elif key == "presharedkey":
                preshared_key = decode_key(value)
            elif key == "allowedips":
                allowed += [str(ipaddress.ip_network(a, strict=False)) for a in _list(value)]
            elif key == "endpoint":
                endpoint = parse_endpoint(value)
            elif key == "persistentkeepalive":
                keepalive = 0 if value.lower() == "off" else _port(value, "PersistentKeepalive")
            else:
                raise ValueError(f"unknown [Peer] key {key!r}")
        except ValueError as exc:
            raise _Error(number, str(exc)) from None
    if public_key is None:
        raise _Error(start, "[Peer] needs a PublicKey")
    return PeerConfig(public_key, preshared_key, tuple(allowed), endpoint, keepalive)
