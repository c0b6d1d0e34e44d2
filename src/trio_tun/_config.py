"""TunConfig: everything ``open_tun``/``open_tap`` were asked for, checked up front.

All validation happens at construction, before any syscall, so a typo can
never leave a half-configured device behind.
"""

from __future__ import annotations

import enum
import ipaddress
import os
from collections.abc import Iterable
from typing import Final, Literal

import attrs

IFNAMSIZ: Final = 16  # includes the terminating NUL
MIN_MTU: Final = 68  # RFC 791: every IPv4 host must take 68-byte datagrams
MIN_MTU_IPV6: Final = 1280  # RFC 8200
MAX_MTU: Final = 65535  # the TUN driver's own ceiling
MAX_QUEUES: Final = 256  # the TUN driver's MAX_TAP_QUEUES
#: Where ``ip netns add NAME`` publishes a namespace.
NETNS_RUN_DIR: Final = "/run/netns"

# TUNSETOFFLOAD feature bits, <linux/if_tun.h>.
TUN_F_CSUM: Final = 0x01
TUN_F_TSO4: Final = 0x02
TUN_F_TSO6: Final = 0x04
TUN_F_USO4: Final = 0x20
TUN_F_USO6: Final = 0x40

Address = ipaddress.IPv4Interface | ipaddress.IPv6Interface
AddressLike = str | ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: How a route's reach is named (``ip route``'s ``scope``): the kernel's
#: ``RT_SCOPE_UNIVERSE`` (0), ``RT_SCOPE_SITE`` (200), ``RT_SCOPE_LINK`` (253)
#: and ``RT_SCOPE_HOST`` (254).
RouteScope = Literal["global", "site", "link", "host"]
ROUTE_SCOPES: Final[dict[str, int]] = {"global": 0, "site": 200, "link": 253, "host": 254}
#: Linux's main routing table (``RT_TABLE_MAIN``), the one ``ip route`` shows.
MAIN_TABLE: Final = 254
OffloadMode = Literal["auto"] | bool
NetnsLike = str | os.PathLike[str] | int | None


class Layer(enum.Enum):
    """Which layer a device works at."""

    #: IP packets (a TUN device).
    L3 = "tun"
    #: Ethernet frames (a TAP device).
    L2 = "tap"


@attrs.frozen
class OffloadFlags:
    """What the kernel agreed to hand us as super-packets (Linux ``TUNSETOFFLOAD``)."""

    csum: bool = False
    tso4: bool = False
    tso6: bool = False
    uso4: bool = False
    uso6: bool = False

    @property
    def enabled(self) -> bool:
        """True when reads may bring segments that still need splitting."""
        return self.tso4 or self.tso6 or self.uso4 or self.uso6

    @property
    def uso(self) -> bool:
        return self.uso4 and self.uso6

    def mask(self) -> int:
        return (
            (TUN_F_CSUM if self.csum else 0)
            | (TUN_F_TSO4 if self.tso4 else 0)
            | (TUN_F_TSO6 if self.tso6 else 0)
            | (TUN_F_USO4 if self.uso4 else 0)
            | (TUN_F_USO6 if self.uso6 else 0)
        )

    def __str__(self) -> str:
        names = [f.name for f in attrs.fields(OffloadFlags) if getattr(self, f.name)]
        return "+".join(names) if names else "none"


NO_OFFLOAD: Final = OffloadFlags()
TCP_OFFLOAD: Final = OffloadFlags(csum=True, tso4=True, tso6=True)
FULL_OFFLOAD: Final = OffloadFlags(csum=True, tso4=True, tso6=True, uso4=True, uso6=True)


def parse_address(value: AddressLike) -> Address:
    """Parse ``"10.0.0.1/24"`` or ``"fd00::1/64"``; a bare address means a host prefix."""
    if isinstance(value, (ipaddress.IPv4Interface, ipaddress.IPv6Interface)):
        return value
    if not isinstance(value, str):
        raise TypeError(f"address must be a string like '10.0.0.1/24', not {value!r}")
    try:
        return ipaddress.ip_interface(value.strip())
    except ValueError:
        raise ValueError(
            f"bad address {value!r}: expected an IPv4 or IPv6 address with an optional "
            "prefix length, like '10.8.0.1/24' or 'fd00:8::1/64'"
        ) from None


@attrs.frozen
class PeerAddress:
    """A point-to-point address: our end (*local*) and the other end (*peer*).

    What ``ip addr add 10.8.0.1 peer 10.8.0.2/32`` sets, pytun's ``addr`` +
    ``dstaddr``, tun-rs's ``address`` + ``destination``.  The prefix length
    belongs to the peer: ``peer`` ``10.8.0.2/24`` routes 10.8.0.0/24 into the
    device, ``10.8.0.2/32`` only the peer itself.

    ``ip``, ``network`` and ``version`` answer as an ``ip_interface`` would
    (our address, the network routed to the peer), so code that only reads
    those works with both.  ``str()`` is ``"10.8.0.1 peer 10.8.0.2/32"``,
    which :func:`parse_address` (and so ``addresses=``/``add_address``) takes.
    """

    local: IPAddress
    peer: Address

    def __attrs_post_init__(self) -> None:
        if self.local.version != self.peer.version:
            raise ValueError(
                f"point-to-point address {self.local} and its peer {self.peer.ip} are of "
                "different IP versions"
            )
        if self.local == self.peer.ip:
            raise ValueError(f"the peer of {self.local} can't be {self.local} itself")

    @property
    def ip(self) -> IPAddress:
        """Our own address (as ``IPv4Interface.ip``)."""
        return self.local

    @property
    def network(self) -> Network:
        """The network routed to the peer."""
        return self.peer.network

    @property
    def version(self) -> int:
        return self.local.version

    def __str__(self) -> str:
        return f"{self.local} peer {self.peer.with_prefixlen}"


AnyAddress = Address | PeerAddress
AnyAddressLike = AddressLike | PeerAddress


def make_peer_address(address: AnyAddressLike, peer: AddressLike) -> PeerAddress:
    """*address* with *peer* as its other end.

    A peer without a prefix takes the address's prefix length (pytun's
    ``netmask`` + ``dstaddr``): ``"10.8.0.1/24"`` with peer ``"10.8.0.2"`` routes
    10.8.0.0/24 into the device; ``"10.8.0.1"`` with ``"10.8.0.2"`` only the
    peer.  Two different prefix lengths are refused as a contradiction.
    """
    if isinstance(address, PeerAddress):
        raise ValueError(f"{address} already names its peer; pass peer= only with a plain address")
    local = parse_address(address)
    if isinstance(peer, PeerAddress):
        raise TypeError(f"peer= takes one address, not {peer}")
    explicit = isinstance(peer, str) and "/" in peer
    other = parse_address(peer)
    if other.version != local.version:
        raise ValueError(
            f"peer {other.ip} is IPv{other.version} but address {local} is IPv{local.version}"
        )
    prefixlen = local.network.prefixlen
    if isinstance(peer, (ipaddress.IPv4Interface, ipaddress.IPv6Interface)):
        explicit = True
    if explicit and local.network.prefixlen not in (local.max_prefixlen, other.network.prefixlen):
        raise ValueError(
            f"address {local} and peer {other} give two prefix lengths; the prefix belongs "
            f"to the peer: write address {local.ip} with peer {other}"
        )
    if explicit:
        prefixlen = other.network.prefixlen
    return PeerAddress(local.ip, ipaddress.ip_interface(f"{other.ip}/{prefixlen}"))


def parse_any_address(value: AnyAddressLike) -> AnyAddress:
    """:func:`parse_address`, also taking ``PeerAddress`` and ``"A peer B[/N]"``."""
    if isinstance(value, PeerAddress):
        return value
    if isinstance(value, str) and " peer " in f" {value.strip()} ":
        local, _, peer = value.strip().partition(" peer ")
        if not local.strip() or not peer.strip():
            raise ValueError(
                f"bad address {value!r}: expected 'LOCAL peer PEER[/PREFIX]', "
                "like '10.8.0.1 peer 10.8.0.2'"
            )
        return make_peer_address(local.strip(), peer.strip())
    return parse_address(value)


def parse_ip(value: object, what: str) -> IPAddress:
    """One IP address (no prefix), for a route's gateway or source."""
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return value
    if not isinstance(value, str):
        raise TypeError(f"{what} must be an IP address string, not {value!r}")
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        raise ValueError(f"bad {what} {value!r}: expected an IP address like '10.8.0.1'") from None


def _gateway(value: object) -> IPAddress | None:
    return None if value is None else parse_ip(value, "gateway")


def _source(value: object) -> IPAddress | None:
    return None if value is None else parse_ip(value, "source")


def check_uint32(value: object, what: str, *, low: int = 0, high: int = 0xFFFFFFFF) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{what} must be between {low} and {high}, not {value}")
    return value


def _metric(value: object) -> int | None:
    return None if value is None else check_uint32(value, "metric")


def _table(value: object) -> int | None:
    # 0 is RT_TABLE_UNSPEC, which the kernel reads as "the main table" on add
    # and "every table" in a dump: ambiguous, so refused.
    return None if value is None else check_uint32(value, "table", low=1)


def _scope(value: object) -> RouteScope | None:
    if value is None:
        return None
    if value not in ROUTE_SCOPES:
        raise ValueError(f"scope must be one of {', '.join(ROUTE_SCOPES)} or None, not {value!r}")
    return value  # type: ignore[return-value]  # checked just above


def _route_prefix(value: object) -> Network:
    if not isinstance(value, (str, ipaddress.IPv4Network, ipaddress.IPv6Network)):
        raise TypeError(f"route prefix must be a string like '10.9.0.0/16', not {value!r}")
    return parse_network(value)


@attrs.frozen(kw_only=True)
class Route:
    """One route through a device, as :meth:`~trio_tun.PacketStream.routes` reports it
    and :meth:`~trio_tun.PacketStream.add_route` takes it.

    Building one checks it (types, families, ranges) and performs no syscall.
    ``str(route)`` is the prefix alone, as ``routes()`` returned before it
    returned ``Route`` values; ``repr`` shows everything.
    """

    #: The destination network (``0.0.0.0/0`` for a default route).
    prefix: Network = attrs.field(converter=_route_prefix)
    #: The next hop, or ``None`` for a route straight into the device.
    gateway: IPAddress | None = attrs.field(default=None, converter=_gateway)
    #: The preferred source address for traffic on this route (``ip route ... src``).
    source: IPAddress | None = attrs.field(default=None, converter=_source)
    #: The route's metric (Linux's priority), or ``None`` for the system's default.
    metric: int | None = attrs.field(default=None, converter=_metric)
    #: The routing table (Linux), the main one (254) when ``None`` is given.
    table: int | None = attrs.field(default=None, converter=_table)
    #: ``"global"``, ``"site"``, ``"link"`` or ``"host"``, or ``None`` for the system's choice.
    scope: RouteScope | None = attrs.field(default=None, converter=_scope)

    def __attrs_post_init__(self) -> None:
        for what in ("gateway", "source"):
            value = getattr(self, what)
            if value is not None and value.version != self.prefix.version:
                raise ValueError(
                    f"route to {self.prefix}: {what} {value} is IPv{value.version}, "
                    f"the prefix IPv{self.prefix.version}"
                )
        if self.gateway is not None and self.scope in ("link", "host"):
            raise ValueError(
                f"route to {self.prefix}: a route via a gateway can't have scope "
                f"{self.scope!r} (the gateway itself must be reachable)"
            )

    def __str__(self) -> str:
        return str(self.prefix)


def parse_network(
    value: str | ipaddress.IPv4Network | ipaddress.IPv6Network,
) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return value
    try:
        return ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"bad route prefix {value!r}: {exc}") from None


def check_name_type(name: object) -> None:
    """Every backend takes a string or ``None``; the rules beyond that are each system's own."""
    if name is not None and not isinstance(name, str):
        raise TypeError(f"device name must be a string or None, not {name!r}")


def validate_name(name: str | None) -> None:
    """The interface-name rules shared by Linux, macOS and the BSDs (``IFNAMSIZ``)."""
    if name is None:
        return
    encoded = name.encode("utf-8", "surrogateescape")
    if not encoded:
        raise ValueError("device name must not be empty (pass name=None to let the kernel pick)")
    if len(encoded) >= IFNAMSIZ:
        raise ValueError(
            f"device name {name!r} is {len(encoded)} bytes; Linux allows at most {IFNAMSIZ - 1}"
        )
    if name in {".", ".."}:
        raise ValueError(f"device name {name!r} is reserved")
    bad = [c for c in name if c in {"/", ":"} or c.isspace() or not c.isprintable()]
    if bad:
        raise ValueError(f"device name {name!r} contains {bad[0]!r}, which Linux rejects")
    check_pattern(name)


def check_pattern(name: str) -> None:
    """A name may hold one ``%d`` for the system to number, after a non-numeric prefix.

    ``"%d"`` alone would make a device called ``0``, which is not what anyone
    asking for a kernel-chosen name means.
    """
    if name.count("%") > 1 or ("%" in name and "%d" not in name):
        raise ValueError(f"device name {name!r}: the only pattern allowed is a single '%d'")
    prefix = name.replace("%d", "")
    if "%d" in name and (not prefix or prefix.isdigit()):
        raise ValueError(
            f"device name {name!r} would give the device a bare number as its name: pass "
            "name=None to let the system pick, or put a prefix before '%d' (e.g. 'vpn%d')"
        )


def validate_mtu(mtu: int | None, *, ipv6: bool = False) -> None:
    if mtu is None:
        return
    if isinstance(mtu, bool) or not isinstance(mtu, int):
        raise TypeError(f"mtu must be an int, not {mtu!r}")
    low = MIN_MTU_IPV6 if ipv6 else MIN_MTU
    if not low <= mtu <= MAX_MTU:
        why = " (IPv6 addresses need at least 1280)" if ipv6 else ""
        raise ValueError(f"mtu {mtu} out of range {low}..{MAX_MTU}{why}")


def parse_mac(mac: str | bytes | None) -> bytes | None:
    if mac is None:
        return None
    if isinstance(mac, bytes):
        raw = mac
    else:
        parts = mac.replace("-", ":").split(":")
        try:
            if len(parts) != 6 or any(len(p) != 2 for p in parts):
                raise ValueError
            raw = bytes(int(p, 16) for p in parts)
        except ValueError:
            raise ValueError(
                f"bad MAC address {mac!r}: expected six hex bytes like '02:00:00:00:00:01'"
            ) from None
    if len(raw) != 6:
        raise ValueError(f"MAC address must be 6 bytes, got {len(raw)}")
    if raw[0] & 1:
        raise ValueError(f"MAC address {raw.hex(':')} is multicast; a device needs unicast")
    return raw


def _addresses(value: Iterable[AnyAddressLike]) -> tuple[AnyAddress, ...]:
    if isinstance(value, (str, PeerAddress)):
        value = [value]
    addresses = tuple(parse_any_address(a) for a in value)
    # The same IP twice (even with two prefix lengths) is a typo: the system
    # would refuse the second one only after the device was made.
    seen: dict[IPAddress, AnyAddress] = {}
    for addr in addresses:
        first = seen.setdefault(addr.ip, addr)
        if first is not addr:
            raise ValueError(
                f"addresses= names {addr.ip} more than once ({first} and {addr}); "
                "a device holds each address once"
            )
    return addresses


def with_peer(addresses: Iterable[AnyAddressLike], peer: AddressLike | None) -> list[AnyAddress]:
    """``open_tun(addresses=..., peer=...)``: *peer* joins the one address of its IP version."""
    if isinstance(addresses, (str, PeerAddress)):
        addresses = [addresses]
    parsed = [parse_any_address(a) for a in addresses]
    if peer is None:
        return parsed
    if isinstance(peer, PeerAddress):
        raise TypeError(f"peer= takes one address, not {peer}")
    version = parse_address(peer).version
    matching = [i for i, a in enumerate(parsed) if a.version == version]
    if len(matching) != 1:
        found = "none" if not matching else ", ".join(str(parsed[i]) for i in matching)
        raise ValueError(
            f"peer={peer!r} needs exactly one IPv{version} address in addresses= to pair "
            f"with (found {found}); for several, write each as 'LOCAL peer PEER' in "
            "addresses= or use add_address(..., peer=...)"
        )
    (i,) = matching
    parsed[i] = make_peer_address(parsed[i], peer)
    return parsed


def _netns_value(value: NetnsLike) -> str | int | None:
    if value is None or isinstance(value, int):
        if isinstance(value, bool):
            raise TypeError("netns must be a name, a path or an fd")
        return value
    path = resolve_netns(value)
    if not os.path.exists(path):
        raise ValueError(
            f"network namespace {os.fspath(value)!r} does not exist ({path} is missing)"
        )
    return path


def resolve_netns(netns: str | os.PathLike[str]) -> str:
    """Map a namespace name (as made by ``ip netns add``) or a path to a path."""
    text = os.fspath(netns)
    if "/" in text:
        return text
    return os.path.join(NETNS_RUN_DIR, text)


def _optional_path(value: str | os.PathLike[str] | None) -> str | None:
    return None if value is None else os.fspath(value)


def _owner(value: int | None) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"owner/group must be a numeric id >= 0, not {value!r}")
    return value


@attrs.frozen(kw_only=True)
class TunConfig:
    """A validated device request.  Building one performs no syscall."""

    layer: Layer = Layer.L3
    name: str | None = attrs.field(default=None)
    mtu: int | None = None
    addresses: tuple[AnyAddress, ...] = attrs.field(default=(), converter=_addresses)
    mac: bytes | None = attrs.field(default=None, converter=parse_mac)
    up: bool = True
    persist: bool = False
    owner: int | None = attrs.field(default=None, converter=_owner)
    group: int | None = attrs.field(default=None, converter=_owner)
    packet_info: bool = False
    netns: str | int | None = attrs.field(default=None, converter=_netns_value)
    offload: OffloadMode = False
    queues: int = 1
    #: Windows only: where ``wintun.dll`` is (default: beside the application,
    #: then the DLL search path).
    wintun_dll: str | None = attrs.field(default=None, converter=_optional_path)
    #: Windows only: the wintun session ring in bytes (default 4 MiB).
    ring_capacity: int | None = None
    #: ``False``: no IPv6 link-local address (``fe80::``) nor the router
    #: solicitations that come with it (Linux ``IFLA_INET6_ADDR_GEN_MODE`` none,
    #: set before the device goes up).
    ipv6_link_local: bool = True

    @name.validator
    def _check_name(self, _: attrs.Attribute[str | None], value: str | None) -> None:
        # The name rules differ per system; each backend checks its own when
        # asked to open (still before any syscall).
        check_name_type(value)

    def __attrs_post_init__(self) -> None:
        validate_mtu(self.mtu, ipv6=any(a.version == 6 for a in self.addresses))
        if self.mac is not None and self.layer is not Layer.L2:
            raise ValueError("mac= only applies to TAP devices (open_tap)")
        if self.offload not in ("auto", True, False):
            raise ValueError(f"offload must be 'auto', True or False, not {self.offload!r}")
        if isinstance(self.queues, bool) or not isinstance(self.queues, int):
            raise TypeError(f"queues must be an int, not {self.queues!r}")
        if not 1 <= self.queues <= MAX_QUEUES:
            raise ValueError(f"queues must be between 1 and {MAX_QUEUES}, not {self.queues}")
        if not isinstance(self.ipv6_link_local, bool):
            raise TypeError(f"ipv6_link_local must be True or False, not {self.ipv6_link_local!r}")
        if self.packet_info and self.offload is True:
            raise ValueError("packet_info=True and offload=True can't be combined")
