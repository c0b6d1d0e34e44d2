"""Interface configuration on macOS and the BSDs: ioctls and routing sockets.

All four systems configure interfaces the 4.4BSD way: ``SIOCAIFADDR`` and
``SIOCAIFADDR_IN6`` add addresses, ``SIOCSIFMTU``/``SIOCSIFFLAGS`` set the MTU
and link state, and routes are messages (``struct rt_msghdr`` followed by
sockaddrs) written to a ``PF_ROUTE`` socket.  They differ in details that
matter byte for byte — structure sizes (which are encoded in the ioctl
numbers), ``AF_INET6``, the routing-message header, sockaddr alignment — so
everything here is parametrised by a :class:`Flavor`.

Nothing here calls the system directly: :class:`Syscalls` is the seam, a
small object with the handful of calls used (the real one is in
``_posix.py``).  That is how this code is tested on Linux, against the
layouts in the systems' headers.  Only 64-bit systems are covered
(``time_t`` and ``u_long`` are 8 bytes in the layouts below).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import itertools
import struct
from collections.abc import Iterator, Sequence
from typing import Final, NamedTuple, Protocol

import attrs

from .._config import AnyAddress, IPAddress, Network, PeerAddress, Route
from .._control import NamedControl
from .._errors import control_error
from .._framing import DARWIN, FREEBSD, NETBSD, OPENBSD, AfFamilies

#: What a BSD or macOS user lacks when an ioctl or routing message is refused.
NEEDS_ROOT: Final = "administrator rights (run as root)"


def translate_errno(exc: OSError, what: str) -> Exception:
    """The exception an ioctl or routing-socket failure means (see ``_errors.control_error``)."""
    return control_error(exc.errno, what, privilege=NEEDS_ROOT) or exc


# -- ioctl numbers (<sys/ioccom.h>, the same encoding on all four) -------------

IOCPARM_MASK: Final = 0x1FFF
IOC_VOID: Final = 0x20000000
IOC_OUT: Final = 0x40000000
IOC_IN: Final = 0x80000000
IOC_INOUT: Final = IOC_IN | IOC_OUT


def _ioc(inout: int, group: str, num: int, size: int) -> int:
    return inout | ((size & IOCPARM_MASK) << 16) | (ord(group) << 8) | num


def iow(group: str, num: int, size: int) -> int:
    """``_IOW(group, num, type)`` for a type of *size* bytes."""
    return _ioc(IOC_IN, group, num, size)


def ior(group: str, num: int, size: int) -> int:
    """``_IOR(group, num, type)`` for a type of *size* bytes."""
    return _ioc(IOC_OUT, group, num, size)


def iowr(group: str, num: int, size: int) -> int:
    """``_IOWR(group, num, type)`` for a type of *size* bytes."""
    return _ioc(IOC_INOUT, group, num, size)


# -- constants shared by all four ----------------------------------------------

IFNAMSIZ: Final = 16
AF_UNSPEC: Final = 0
AF_INET: Final = 2
AF_ROUTE: Final = 17
PF_ROUTE: Final = AF_ROUTE
AF_LINK: Final = 18
SOCK_DGRAM: Final = 2
SOCK_RAW: Final = 3
CTL_NET: Final = 4
NET_RT_DUMP: Final = 1
IFF_UP: Final = 0x1
IFF_POINTOPOINT: Final = 0x10

RTM_ADD: Final = 0x1
RTM_DELETE: Final = 0x2
RTM_GET: Final = 0x4
RTF_UP: Final = 0x1
RTF_GATEWAY: Final = 0x2
RTF_HOST: Final = 0x4
RTF_LLINFO: Final = 0x400
RTF_STATIC: Final = 0x800
RTA_DST: Final = 0x1
RTA_GATEWAY: Final = 0x2
RTA_NETMASK: Final = 0x4
RTA_IFP: Final = 0x10
RTA_IFA: Final = 0x20

ND6_INFINITE_LIFETIME: Final = 0xFFFFFFFF

SOCKADDR_IN: Final = struct.Struct("=BBH4s8x")  # <netinet/in.h> struct sockaddr_in: 16
SOCKADDR_IN6: Final = struct.Struct("=BBHI16sI")  # <netinet6/in6.h> struct sockaddr_in6: 28
SOCKADDR_DL_HEAD: Final = struct.Struct("=BBHBBBB")  # <net/if_dl.h>: len, family, index, ...


@attrs.frozen
class RouteLayout:
    """Where the fields of one system's ``struct rt_msghdr`` live."""

    #: ``sizeof(struct rt_msghdr)``.
    size: int
    #: Field name -> (offset, struct format) for the fields we read or write.
    fields: dict[str, tuple[int, str]]
    #: ``RTM_VERSION``.
    version: int
    #: Routing-socket sockaddrs are padded to a multiple of this.
    align: int

    def pack(self, **values: int) -> bytearray:
        message = bytearray(self.size)
        for name, value in values.items():
            offset, fmt = self.fields[name]
            struct.pack_into("=" + fmt, message, offset, value)
        return message

    def unpack(self, data: bytes | memoryview, name: str, base: int = 0) -> int:
        offset, fmt = self.fields[name]
        return int(struct.unpack_from("=" + fmt, data, base + offset)[0])


_COMMON_RTM = {
    "msglen": (0, "H"),
    "version": (2, "B"),
    "type": (3, "B"),
    "index": (4, "H"),
    "flags": (8, "i"),
    "addrs": (12, "i"),
    "pid": (16, "i"),
    "seq": (20, "i"),
    "errno": (24, "i"),
}

#: xnu ``<net/route.h>``: 36-byte header + ``struct rt_metrics`` (14 x u_int32) = 92.
DARWIN_RTM: Final = RouteLayout(92, _COMMON_RTM, version=5, align=4)
#: FreeBSD ``<net/route.h>``: ``u_long rtm_inits`` at 32, ``rt_metrics`` (14 x u_long) = 152.
FREEBSD_RTM: Final = RouteLayout(152, _COMMON_RTM, version=5, align=8)
#: NetBSD ``<net/route.h>``: 64-bit aligned ``rt_metrics`` (10 x 8) at 40 = 120, RTM_VERSION 4.
NETBSD_RTM: Final = RouteLayout(120, _COMMON_RTM, version=4, align=8)
#: OpenBSD ``<net/route.h>``: ``rtm_hdrlen``/``tableid``/``priority`` come first = 96.
OPENBSD_RTM: Final = RouteLayout(
    96,
    {
        "msglen": (0, "H"),
        "version": (2, "B"),
        "type": (3, "B"),
        "hdrlen": (4, "H"),
        "index": (6, "H"),
        "tableid": (8, "H"),
        "priority": (10, "B"),
        "addrs": (12, "i"),
        "flags": (16, "i"),
        "fmask": (20, "i"),
        "pid": (24, "i"),
        "seq": (28, "i"),
        "errno": (32, "i"),
    },
    version=5,
    align=8,
)


@attrs.frozen(kw_only=True)
class Flavor:
    """The byte-level facts of one BSD-family system (64-bit).

    Defaults are the value most of the systems share; each flavor below names
    only where it differs.
    """

    name: str
    families: AfFamilies
    #: ``sizeof(struct ifreq)``: 32, but 144 on NetBSD (``sockaddr_storage`` in the union).
    ifreq_size: int = 32
    #: ``sizeof(struct ifaliasreq)``: 64, 68 on FreeBSD (``ifra_vhid``).
    ifaliasreq_size: int = 64
    #: ``sizeof(struct in6_aliasreq)``: 128, 136 on FreeBSD (``ifra_vhid`` + padding).
    in6_aliasreq_size: int = 128
    #: ``sizeof(struct in6_ifreq)``: 16 + ``struct icmp6_ifstat`` (34 x 8) = 288.
    in6_ifreq_size: int = 288
    #: The ``nr`` of ``SIOCAIFADDR``: 26, but 43 on FreeBSD >= 10.
    aifaddr_nr: int = 26
    #: The ``nr`` of ``SIOCAIFADDR_IN6``: 26, 27 on FreeBSD, 107 on NetBSD.
    aifaddr_in6_nr: int = 26
    #: The ``nr`` of ``SIOCGIFMTU``/``SIOCSIFMTU``: 51/52 (Darwin, FreeBSD), 126/127 otherwise.
    gifmtu_nr: int = 126
    sifmtu_nr: int = 127
    route: RouteLayout
    #: ``sizeof(struct sockaddr_dl)``.
    sockaddr_dl_size: int
    #: ``IN6_IFF_NODAD`` (0 where the system has none).
    in6_iff_nodad: int = 0x20
    #: The ``nr`` of ``SIOCSIFLLADDR``, which sets a tap's MAC: 60 on FreeBSD,
    #: 31 on OpenBSD; ``None`` where it isn't offered here (NetBSD sets it with
    #: ``SIOCALIFADDR`` link-layer requests; macOS has no tap).
    siocsiflladdr_nr: int | None = None
    #: Whether an interface outlives its fd, so that persisting means
    #: "don't destroy it on close" (the BSDs; a utun dies with its socket).
    persists: bool = True

    @property
    def siocsifflags(self) -> int:
        return iow("i", 16, self.ifreq_size)

    @property
    def siocgifflags(self) -> int:
        return iowr("i", 17, self.ifreq_size)

    @property
    def siocdifaddr(self) -> int:
        return iow("i", 25, self.ifreq_size)

    @property
    def siocaifaddr(self) -> int:
        return iow("i", self.aifaddr_nr, self.ifaliasreq_size)

    @property
    def siocgifmtu(self) -> int:
        return iowr("i", self.gifmtu_nr, self.ifreq_size)

    @property
    def siocsifmtu(self) -> int:
        return iow("i", self.sifmtu_nr, self.ifreq_size)

    @property
    def siocifdestroy(self) -> int:
        return iow("i", 121, self.ifreq_size)

    @property
    def siocsiflladdr(self) -> int | None:
        nr = self.siocsiflladdr_nr
        return None if nr is None else iow("i", nr, self.ifreq_size)

    @property
    def siocaifaddr_in6(self) -> int:
        return iow("i", self.aifaddr_in6_nr, self.in6_aliasreq_size)

    @property
    def siocdifaddr_in6(self) -> int:
        return iow("i", 25, self.in6_ifreq_size)


DARWIN_FLAVOR: Final = Flavor(
    name="darwin",
    families=DARWIN,
    gifmtu_nr=51,
    sifmtu_nr=52,
    route=DARWIN_RTM,
    sockaddr_dl_size=20,
    persists=False,
)
FREEBSD_FLAVOR: Final = Flavor(
    name="freebsd",
    families=FREEBSD,
    ifaliasreq_size=68,
    in6_aliasreq_size=136,
    aifaddr_nr=43,
    aifaddr_in6_nr=27,
    gifmtu_nr=51,
    sifmtu_nr=52,
    route=FREEBSD_RTM,
    sockaddr_dl_size=54,
    siocsiflladdr_nr=60,
)
OPENBSD_FLAVOR: Final = Flavor(
    name="openbsd",
    families=OPENBSD,
    route=OPENBSD_RTM,
    sockaddr_dl_size=32,
    in6_iff_nodad=0,
    siocsiflladdr_nr=31,
)
NETBSD_FLAVOR: Final = Flavor(
    name="netbsd",
    families=NETBSD,
    ifreq_size=144,
    aifaddr_in6_nr=107,
    route=NETBSD_RTM,
    sockaddr_dl_size=32,
)

# -- structures -----------------------------------------------------------------


def _name(name: str) -> bytes:
    raw = name.encode()
    if len(raw) >= IFNAMSIZ:
        raise ValueError(f"interface name {name!r} is longer than {IFNAMSIZ - 1} bytes")
    return raw.ljust(IFNAMSIZ, b"\0")


def ifreq(flavor: Flavor, name: str, payload: bytes = b"") -> bytes:
    """A ``struct ifreq``: the name, then *payload* at the union (offset 16)."""
    return (_name(name) + payload).ljust(flavor.ifreq_size, b"\0")


def ifreq_int(flavor: Flavor, name: str, value: int) -> bytes:
    """``struct ifreq`` carrying ``ifr_mtu``/``ifr_intval`` (an int at 16)."""
    return ifreq(flavor, name, struct.pack("=i", value))


def ifreq_flags(flavor: Flavor, name: str, flags: int) -> bytes:
    """``struct ifreq`` carrying ``ifr_flags`` (a short at 16)."""
    return ifreq(flavor, name, struct.pack("=h", _to_short(flags)))


def ifreq_get_int(answer: bytes) -> int:
    return int(struct.unpack_from("=i", answer, IFNAMSIZ)[0])


def ifreq_get_flags(answer: bytes) -> int:
    return int(struct.unpack_from("=H", answer, IFNAMSIZ)[0])


def ifreq_get_name(answer: bytes) -> str:
    return answer[:IFNAMSIZ].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _to_short(flags: int) -> int:
    flags &= 0xFFFF
    return flags - 0x10000 if flags & 0x8000 else flags


def sockaddr_in(address: ipaddress.IPv4Address | None) -> bytes:
    """``struct sockaddr_in`` (16 bytes); ``None`` gives an all-zero sockaddr."""
    if address is None:
        return bytes(SOCKADDR_IN.size)
    return SOCKADDR_IN.pack(SOCKADDR_IN.size, AF_INET, 0, address.packed)


def sockaddr_in6(families: AfFamilies, address: ipaddress.IPv6Address | None) -> bytes:
    """``struct sockaddr_in6`` (28 bytes); ``None`` gives an all-zero sockaddr."""
    if address is None:
        return bytes(SOCKADDR_IN6.size)
    return SOCKADDR_IN6.pack(SOCKADDR_IN6.size, families.inet6, 0, 0, address.packed, 0)


def sockaddr_dl(flavor: Flavor, index: int) -> bytes:
    """A ``struct sockaddr_dl`` naming an interface by index (a route's gateway)."""
    head = SOCKADDR_DL_HEAD.pack(flavor.sockaddr_dl_size, AF_LINK, index, 0, 0, 0, 0)
    return head.ljust(flavor.sockaddr_dl_size, b"\0")


def ifaliasreq(
    flavor: Flavor,
    name: str,
    address: ipaddress.IPv4Address,
    destination: ipaddress.IPv4Address | None,
    netmask: ipaddress.IPv4Address,
) -> bytes:
    """``struct ifaliasreq``: name, ``ifra_addr`` (16), ``ifra_broadaddr``/dstaddr (32),
    ``ifra_mask`` (48), then FreeBSD's ``ifra_vhid`` (64, left 0)."""
    body = _name(name) + sockaddr_in(address) + sockaddr_in(destination) + sockaddr_in(netmask)
    return body.ljust(flavor.ifaliasreq_size, b"\0")


IN6_ALIASREQ_FLAGS: Final = 100
IN6_ALIASREQ_LIFETIME: Final = 104
_LIFETIME: Final = struct.Struct("=qqII")  # struct in6_addrlifetime: expire, preferred, vl, pl


def in6_aliasreq(
    flavor: Flavor,
    name: str,
    address: ipaddress.IPv6Address,
    prefixmask: ipaddress.IPv6Address,
    destination: ipaddress.IPv6Address | None = None,
) -> bytes:
    """``struct in6_aliasreq``: name, ``ifra_addr`` (16), ``ifra_dstaddr`` (44),
    ``ifra_prefixmask`` (72), ``ifra_flags`` (100), ``ifra_lifetime`` (104, 24 bytes),
    then FreeBSD's ``ifra_vhid`` (128); infinite lifetimes, ``IN6_IFF_NODAD`` where
    the system has it (Linux adds addresses with ``IFA_F_NODAD`` too)."""
    families = flavor.families
    body = (
        _name(name)
        + sockaddr_in6(families, address)
        + sockaddr_in6(families, destination)
        + sockaddr_in6(families, prefixmask)
        + struct.pack("=i", flavor.in6_iff_nodad)
        + _LIFETIME.pack(0, 0, ND6_INFINITE_LIFETIME, ND6_INFINITE_LIFETIME)
    )
    return body.ljust(flavor.in6_aliasreq_size, b"\0")


def in6_ifreq(flavor: Flavor, name: str, address: ipaddress.IPv6Address) -> bytes:
    """``struct in6_ifreq`` carrying ``ifr_addr`` (a sockaddr_in6 at 16)."""
    body = _name(name) + sockaddr_in6(flavor.families, address)
    return body.ljust(flavor.in6_ifreq_size, b"\0")


# -- routing messages -------------------------------------------------------------


def _roundup(length: int, align: int) -> int:
    if length <= 0:
        return align
    return 1 + ((length - 1) | (align - 1))


def _pad(sockaddr: bytes, align: int) -> bytes:
    return sockaddr.ljust(_roundup(len(sockaddr), align), b"\0")


def route_message(
    flavor: Flavor,
    rtm_type: int,
    network: Network,
    ifindex: int,
    *,
    seq: int,
    pid: int,
    gateway: IPAddress | None = None,
    source: IPAddress | None = None,
) -> bytes:
    """One ``RTM_ADD``/``RTM_DELETE`` message: *network* routed to interface *ifindex*.

    ``rt_msghdr``, then the sockaddrs in ``RTA_*`` bit order, each padded to
    the system's alignment: the destination; the gateway, which is a
    ``sockaddr_dl`` naming the interface (an interface route, like ``route add
    -interface``) or, with *gateway*, that address (``RTF_GATEWAY``); for a
    network, its mask; with *gateway*, the interface again as ``RTA_IFP`` so
    the route leaves through this device; with *source*, ``RTA_IFA`` (the
    address the route's traffic is sent from, ``route add -ifa``).
    """
    layout = flavor.route
    host = network.prefixlen == network.max_prefixlen
    flags = RTF_UP | RTF_STATIC | (RTF_HOST if host else 0)
    addrs = RTA_DST | RTA_GATEWAY | (0 if host else RTA_NETMASK)
    parts = [_sockaddr_for(flavor, network.network_address)]
    if gateway is None:
        parts.append(sockaddr_dl(flavor, ifindex))
    else:
        flags |= RTF_GATEWAY
        parts.append(_sockaddr_for(flavor, gateway))
    if not host:
        parts.append(_sockaddr_for(flavor, network.netmask))
    if gateway is not None:
        addrs |= RTA_IFP
        parts.append(sockaddr_dl(flavor, ifindex))
    if source is not None:
        addrs |= RTA_IFA
        parts.append(_sockaddr_for(flavor, source))
    body = b"".join(_pad(part, layout.align) for part in parts)
    values = {
        "msglen": layout.size + len(body),
        "version": layout.version,
        "type": rtm_type,
        "index": ifindex,
        "flags": flags,
        "addrs": addrs,
        "pid": pid,
        "seq": seq,
    }
    if "hdrlen" in layout.fields:
        values["hdrlen"] = layout.size
    return bytes(layout.pack(**values)) + body


def _sockaddr_for(flavor: Flavor, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    if isinstance(address, ipaddress.IPv4Address):
        return sockaddr_in(address)
    return sockaddr_in6(flavor.families, address)


class RouteEntry(NamedTuple):
    """One message of a routing-table dump, decoded as far as we need."""

    type: int
    ifindex: int
    flags: int
    destination: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    prefixlen: int | None
    #: The next hop, for an ``RTF_GATEWAY`` route.
    gateway: IPAddress | None = None
    #: ``RTA_IFA``: the address the route's traffic leaves from.
    source: IPAddress | None = None


def _address(
    flavor: Flavor, sockaddr: bytes
) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if len(sockaddr) < 2:
        return None
    family = sockaddr[1]
    if family == AF_INET and len(sockaddr) >= 8:
        return ipaddress.IPv4Address(sockaddr[4:8])
    if family == flavor.families.inet6 and len(sockaddr) >= 24:
        return ipaddress.IPv6Address(_clear_scope(sockaddr[8:24]))
    return None


def _clear_scope(raw: bytes) -> bytes:
    """Drop the KAME scope id embedded in bytes 2-3 of link-local addresses."""
    if raw[0] == 0xFE and raw[1] & 0xC0 == 0x80:
        return raw[:2] + b"\0\0" + raw[4:]
    return raw


def _mask_prefix(sockaddr: bytes, version: int) -> int | None:
    """Prefix length of a (possibly truncated) routing-socket netmask sockaddr."""
    start, width = (4, 4) if version == 4 else (8, 16)
    raw = sockaddr[start : start + width].ljust(width, b"\0")
    value = int.from_bytes(raw, "big")
    bits = width * 8
    inverted = ~value & ((1 << bits) - 1)
    if inverted & (inverted + 1):
        return None  # not a contiguous mask
    return bits - inverted.bit_length()


def _sockaddrs(
    data: bytes, start: int, end: int, addrs: int, align: int
) -> Iterator[tuple[int, bytes]]:
    offset = start
    bit = 1
    while addrs >= bit and offset < end:
        if addrs & bit:
            length = data[offset]
            yield bit, data[offset : offset + length]
            offset += _roundup(length, align)
        bit <<= 1


def parse_route_dump(flavor: Flavor, data: bytes) -> list[RouteEntry]:
    """Decode a ``NET_RT_DUMP`` sysctl answer (a run of routing messages)."""
    layout = flavor.route
    entries: list[RouteEntry] = []
    offset = 0
    while offset + 4 <= len(data):
        msglen = layout.unpack(data, "msglen", offset)
        if msglen < 4 or offset + msglen > len(data):
            break
        if layout.unpack(data, "version", offset) == layout.version and msglen >= layout.size:
            start = offset + (
                layout.unpack(data, "hdrlen", offset) if "hdrlen" in layout.fields else layout.size
            )
            addrs = layout.unpack(data, "addrs", offset)
            found = dict(_sockaddrs(data, start, offset + msglen, addrs, layout.align))
            destination = _address(flavor, found[RTA_DST]) if RTA_DST in found else None
            prefixlen: int | None = None
            if destination is not None:
                if RTA_NETMASK in found:
                    prefixlen = _mask_prefix(found[RTA_NETMASK], destination.version)
                else:
                    prefixlen = destination.max_prefixlen
            flags = layout.unpack(data, "flags", offset)
            gateway = None
            if flags & RTF_GATEWAY and RTA_GATEWAY in found:
                gateway = _address(flavor, found[RTA_GATEWAY])
            source = _address(flavor, found[RTA_IFA]) if RTA_IFA in found else None
            entries.append(
                RouteEntry(
                    type=layout.unpack(data, "type", offset),
                    ifindex=layout.unpack(data, "index", offset),
                    flags=flags,
                    destination=destination,
                    prefixlen=prefixlen,
                    gateway=gateway,
                    source=source,
                )
            )
        offset += msglen
    return entries


# -- the seam -------------------------------------------------------------------


class IfAddr(NamedTuple):
    """One ``getifaddrs()`` entry: interface name and raw sockaddrs."""

    name: str
    address: bytes
    netmask: bytes | None
    #: ``ifa_dstaddr`` of a point-to-point interface (``None`` elsewhere).
    destination: bytes | None = None


class Syscalls(Protocol):
    """The system calls the BSD-family backends make, as one replaceable object."""

    def open_device(self, path: str) -> int:
        """``open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC)``."""

    def close(self, fd: int) -> None: ...

    def socket(self, family: int, type: int, proto: int) -> int:
        """A new close-on-exec socket, as a bare fd."""

    def ioctl(self, fd: int, request: int, arg: bytes) -> bytes:
        """``ioctl(fd, request, buffer)``; returns the buffer as the kernel left it."""

    def connect(self, fd: int, address: bytes) -> None:
        """``connect(fd, (struct sockaddr *)address, len(address))``."""

    def getsockopt(self, fd: int, level: int, option: int, size: int) -> bytes: ...

    def write(self, fd: int, data: bytes) -> int: ...

    def sysctl(self, mib: Sequence[int]) -> bytes: ...

    def getifaddrs(self) -> list[IfAddr]: ...

    def if_nametoindex(self, name: str) -> int: ...

    def getpid(self) -> int: ...


# -- the InterfaceControl of the BSD family ----------------------------------------

_SEQUENCE = itertools.count(1)


class BsdInterfaceControl(NamedControl):
    """Addresses, MTU, link state and routes of one interface, through :class:`Syscalls`.

    A point-to-point interface (utun, tun) gets IPv4 addresses with itself as
    the destination and an explicit route for the address's network, so that
    ``add_address("10.8.0.1/24")`` routes 10.8.0.0/24 into the device as it
    does on Linux.  A broadcast interface (tap) gets the network's broadcast
    address and its connected route from the kernel.
    """

    def __init__(
        self,
        syscalls: Syscalls,
        flavor: Flavor,
        name: str,
        index: int,
        *,
        point_to_point: bool,
        destroy_on_close: bool = False,
    ) -> None:
        super().__init__(name, index)
        self._sys = syscalls
        self._destroy_on_close = destroy_on_close
        self._flavor = flavor
        self._p2p = point_to_point

    @property
    def flavor(self) -> Flavor:
        return self._flavor

    def close(self) -> None:
        """Done with the device; a cloned interface not asked to persist is destroyed.

        Called after the device's fd is closed, which on the BSDs leaves the
        cloned interface behind (unlike Linux and macOS).
        """
        if self._closed:
            return
        self._closed = True
        if self._destroy_on_close:
            with contextlib.suppress(OSError, LookupError, ValueError):
                self.destroy()

    # -- plumbing

    def _ioctl(self, family: int, request: int, arg: bytes, what: str) -> bytes:
        fd = self._sys.socket(family, SOCK_DGRAM, 0)
        try:
            return self._sys.ioctl(fd, request, arg)
        except OSError as exc:
            raise translate_errno(exc, f"{what} on {self._name}") from None
        finally:
            self._sys.close(fd)

    def _route(
        self,
        rtm_type: int,
        network: Network,
        what: str,
        *,
        gateway: IPAddress | None = None,
        source: IPAddress | None = None,
    ) -> None:
        message = route_message(
            self._flavor,
            rtm_type,
            network,
            self._index,
            seq=next(_SEQUENCE),
            pid=self._sys.getpid(),
            gateway=gateway,
            source=source,
        )
        fd = self._sys.socket(PF_ROUTE, SOCK_RAW, AF_UNSPEC)
        try:
            self._sys.write(fd, message)
        except OSError as exc:
            raise translate_errno(exc, f"{what} {network} via {self._name}") from None
        finally:
            self._sys.close(fd)

    # -- InterfaceControl

    def get_mtu(self) -> int:
        answer = self._ioctl(
            AF_INET, self._flavor.siocgifmtu, ifreq_int(self._flavor, self._name, 0), "SIOCGIFMTU"
        )
        return ifreq_get_int(answer)

    def set_mtu(self, mtu: int) -> None:
        request = ifreq_int(self._flavor, self._name, mtu)
        self._ioctl(AF_INET, self._flavor.siocsifmtu, request, "setting the MTU")

    def _flags(self) -> int:
        request = ifreq_flags(self._flavor, self._name, 0)
        answer = self._ioctl(AF_INET, self._flavor.siocgifflags, request, "SIOCGIFFLAGS")
        return ifreq_get_flags(answer)

    def set_up(self, up: bool) -> None:
        flags = self._flags()
        wanted = flags | IFF_UP if up else flags & ~IFF_UP
        if wanted != flags:
            request = ifreq_flags(self._flavor, self._name, wanted)
            self._ioctl(AF_INET, self._flavor.siocsifflags, request, "setting the link state")

    def is_up(self) -> bool:
        return bool(self._flags() & IFF_UP)

    def addresses(self) -> list[AnyAddress]:
        found: list[AnyAddress] = []
        for entry in self._sys.getifaddrs():
            if entry.name != self._name:
                continue
            address = _address(self._flavor, entry.address)
            if address is None:
                continue
            prefixlen: int = address.max_prefixlen
            if entry.netmask:
                mask = _mask_prefix(entry.netmask, address.version)
                if mask is not None:
                    prefixlen = mask
            peer = _address(self._flavor, entry.destination) if entry.destination else None
            if peer is not None and peer != address and peer.version == address.version:
                # ``ifa_dstaddr`` of a point-to-point address.  (One whose
                # destination is itself is how a plain address is added here.)
                found.append(PeerAddress(address, ipaddress.ip_interface(f"{peer}/{prefixlen}")))
            else:
                found.append(ipaddress.ip_interface(f"{address}/{prefixlen}"))
        return found

    def _routed_network(self, address: AnyAddress) -> Network | None:
        """The network an explicit route must bring into a point-to-point device, if any."""
        network = address.network
        if not self._p2p or network.prefixlen == network.max_prefixlen:
            return None
        return network

    def add_address(self, address: AnyAddress) -> None:
        if any(have.ip == address.ip for have in self.addresses()):
            raise FileExistsError(errno.EEXIST, f"{address} is already an address of {self._name}")
        flavor = self._flavor
        peer = address.peer if isinstance(address, PeerAddress) else None
        if peer is not None and not self._p2p:
            raise ValueError(
                f"{address}: a peer address needs a point-to-point interface; "
                f"{self._name} is a broadcast (tap) one"
            )
        if isinstance(address.ip, ipaddress.IPv4Address):
            netmask = ipaddress.IPv4Network(address.network).netmask
            if peer is not None:
                destination: ipaddress.IPv4Address | None = ipaddress.IPv4Address(peer.ip)
            elif self._p2p:
                destination = address.ip
            elif address.network.prefixlen < 31:
                destination = ipaddress.IPv4Network(address.network).broadcast_address
            else:
                destination = None
            request = ifaliasreq(flavor, self._name, address.ip, destination, netmask)
            self._ioctl(AF_INET, flavor.siocaifaddr, request, f"adding {address}")
        else:
            if peer is not None:
                # The kernels take a destination only with a /128 (the host
                # route to it); a wider peer prefix is the route added below.
                request = in6_aliasreq(
                    flavor,
                    self._name,
                    address.ip,
                    ipaddress.IPv6Network("::/128").netmask,
                    ipaddress.IPv6Address(peer.ip),
                )
            else:
                mask = ipaddress.IPv6Network(address.network).netmask
                request = in6_aliasreq(flavor, self._name, address.ip, mask)
            self._ioctl(flavor.families.inet6, flavor.siocaifaddr_in6, request, f"adding {address}")
        network = self._routed_network(address)
        if network is not None:
            with contextlib.suppress(FileExistsError):  # the kernel made it already
                self._route(RTM_ADD, network, "routing")

    def remove_address(self, address: AnyAddress) -> None:
        flavor = self._flavor
        if isinstance(address.ip, ipaddress.IPv4Address):
            request = ifreq(flavor, self._name, sockaddr_in(address.ip))
            self._ioctl(AF_INET, flavor.siocdifaddr, request, f"removing {address}")
        else:
            request = in6_ifreq(flavor, self._name, address.ip)
            self._ioctl(
                flavor.families.inet6, flavor.siocdifaddr_in6, request, f"removing {address}"
            )
        network = self._routed_network(address)
        if network is not None:
            with contextlib.suppress(LookupError):  # gone with the address already
                self._route(RTM_DELETE, network, "unrouting")

    def _refuse_route_options(self, route: Route) -> None:
        system = self._flavor.name
        if route.metric is not None:
            raise NotImplementedError(
                f"route metrics are not supported on {system} (Linux and Windows only)"
            )
        if route.table is not None:
            raise NotImplementedError(
                f"routing tables (table=) are not supported on {system} (Linux only)"
            )
        if route.scope is not None:
            raise NotImplementedError(f"route scopes (scope=) are Linux's, not {system}'s")

    def add_route(self, route: Route) -> None:
        self._refuse_route_options(route)
        self._route(
            RTM_ADD,
            route.prefix,
            "adding a route to",
            gateway=route.gateway,
            source=route.source,
        )

    def remove_route(self, route: Route) -> None:
        self._refuse_route_options(route)
        self._route(RTM_DELETE, route.prefix, "removing the route to", gateway=route.gateway)

    def routes(self, table: int | None) -> list[Route]:
        if table is not None:
            raise NotImplementedError(
                f"routing tables (table=) are not supported on {self._flavor.name} (Linux only)"
            )
        try:
            dump = self._sys.sysctl((CTL_NET, PF_ROUTE, 0, AF_UNSPEC, NET_RT_DUMP, 0))
        except OSError as exc:
            raise translate_errno(exc, "reading the routing table") from None
        found: list[Route] = []
        for entry in parse_route_dump(self._flavor, dump):
            if entry.ifindex != self._index or entry.destination is None:
                continue
            if entry.prefixlen is None or entry.flags & RTF_LLINFO:
                continue
            if entry.flags & RTF_HOST and not entry.flags & RTF_STATIC:
                continue  # the kernel's own host routes (local and peer addresses)
            destination = entry.destination
            if destination.is_multicast or destination.is_link_local:
                continue
            route = Route(
                prefix=ipaddress.ip_network(f"{destination}/{entry.prefixlen}", strict=False),
                gateway=entry.gateway,
                source=entry.source,
            )
            if route not in found:
                found.append(route)
        return found

    def set_persist(self, persist: bool, fd: int) -> None:
        if not self._flavor.persists:
            raise NotImplementedError(
                f"persist is not available on {self._flavor.name}: a utun interface "
                "exists exactly as long as its socket"
            )
        self._destroy_on_close = not persist

    def set_owner(self, uid: int, fd: int) -> None:
        raise NotImplementedError(
            f"set_owner is Linux's (TUNSETOWNER); on {self._flavor.name} give the user "
            "access to the device node instead"
        )

    def set_group(self, gid: int, fd: int) -> None:
        raise NotImplementedError(
            f"set_group is Linux's (TUNSETGROUP); on {self._flavor.name} give the group "
            "access to the device node instead"
        )

    def set_mac(self, mac: bytes) -> None:
        """``SIOCSIFLLADDR``: the ifreq's ``ifr_addr`` carries the six bytes
        (``sa_len`` 6, ``sa_family`` ``AF_LINK``, the MAC in ``sa_data``)."""
        flavor = self._flavor
        number = flavor.siocsiflladdr
        if number is None:
            raise NotImplementedError(f"set_mac is not available on {flavor.name}")
        request = ifreq(flavor, self._name, bytes([len(mac), AF_LINK]) + mac)
        self._ioctl(AF_INET, number, request, "setting the MAC address")

    def destroy(self) -> None:
        """``SIOCIFDESTROY``: delete the interface (tun/tap clones on the BSDs)."""
        request = ifreq(self._flavor, self._name)
        self._ioctl(AF_INET, self._flavor.siocifdestroy, request, "destroying the interface")


__all__ = [
    "DARWIN_FLAVOR",
    "FREEBSD_FLAVOR",
    "NETBSD_FLAVOR",
    "OPENBSD_FLAVOR",
    "BsdInterfaceControl",
    "Flavor",
    "IfAddr",
    "RouteEntry",
    "RouteLayout",
    "Syscalls",
    "ifaliasreq",
    "ifreq",
    "in6_aliasreq",
    "in6_ifreq",
    "ior",
    "iow",
    "iowr",
    "parse_route_dump",
    "route_message",
    "sockaddr_dl",
    "sockaddr_in",
    "sockaddr_in6",
]
