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

from . import _netns

IFNAMSIZ: Final = 16  # includes the terminating NUL
MIN_MTU: Final = 68  # RFC 791: every IPv4 host must take 68-byte datagrams
MIN_MTU_IPV6: Final = 1280  # RFC 8200
MAX_MTU: Final = 65535  # the TUN driver's own ceiling
MAX_QUEUES: Final = 256  # the TUN driver's MAX_TAP_QUEUES

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


def validate_name(name: str | None) -> None:
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
    if name.count("%") > 1 or ("%" in name and "%d" not in name):
        raise ValueError(f"device name {name!r}: the only pattern allowed is a single '%d'")


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
    return tuple(parse_address(a) for a in value)


def _netns_value(value: NetnsLike) -> str | int | None:
    if value is None or isinstance(value, int):
        if isinstance(value, bool):
            raise TypeError("netns must be a name, a path or an fd")
        return value
    path = _netns.resolve(value)
    if not os.path.exists(path):
        raise ValueError(
            f"network namespace {os.fspath(value)!r} does not exist ({path} is missing)"
        )
    return path


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

    @name.validator
    def _check_name(self, _: attrs.Attribute[str | None], value: str | None) -> None:
        validate_name(value)

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
