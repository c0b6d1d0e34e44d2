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


def _addresses(value: Iterable[AddressLike]) -> tuple[Address, ...]:
    if isinstance(value, str):
        value = [value]
    addresses = tuple(parse_address(a) for a in value)
    # The same IP twice (even with two prefix lengths) is a typo: the system
    # would refuse the second one only after the device was made.
    seen: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, Address] = {}
    for addr in addresses:
        first = seen.setdefault(addr.ip, addr)
        if first is not addr:
            raise ValueError(
                f"addresses= names {addr.ip} more than once ({first} and {addr}); "
                "a device holds each address once"
            )
    return addresses


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
    addresses: tuple[Address, ...] = attrs.field(default=(), converter=_addresses)
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
        if self.packet_info and self.offload is True:
            raise ValueError("packet_info=True and offload=True can't be combined")
