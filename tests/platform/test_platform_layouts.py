"""Structure layouts, byte for byte, against the platforms' headers (64-bit).

Each expectation names the header it comes from.  The BSD-family requests
are also decoded independently by the fake kernel in ``bsd_fakes``; here the
packers are checked field by field.
"""

from __future__ import annotations

import ctypes
import ipaddress
import struct

import pytest
from bsd_fakes import DARWIN_REQUESTS, FREEBSD_REQUESTS, NETBSD_REQUESTS, OPENBSD_REQUESTS

from trio_tun.platform import _bsdnet as b
from trio_tun.platform import _winapi as w
from trio_tun.platform import bsd, darwin

FLAVORS = {
    "darwin": (b.DARWIN_FLAVOR, DARWIN_REQUESTS),
    "freebsd": (b.FREEBSD_FLAVOR, FREEBSD_REQUESTS),
    "openbsd": (b.OPENBSD_FLAVOR, OPENBSD_REQUESTS),
    "netbsd": (b.NETBSD_FLAVOR, NETBSD_REQUESTS),
}
ADDR = ipaddress.IPv4Address("10.8.0.1")
ADDR6 = ipaddress.IPv6Address("fd00:8::1")


@pytest.mark.parametrize("name", FLAVORS)
def test_request_numbers(name: str) -> None:
    flavor, expected = FLAVORS[name]
    computed = {
        "SIOCSIFFLAGS": flavor.siocsifflags,
        "SIOCGIFFLAGS": flavor.siocgifflags,
        "SIOCDIFADDR": flavor.siocdifaddr,
        "SIOCAIFADDR": flavor.siocaifaddr,
        "SIOCGIFMTU": flavor.siocgifmtu,
        "SIOCSIFMTU": flavor.siocsifmtu,
        "SIOCDIFADDR_IN6": flavor.siocdifaddr_in6,
        "SIOCAIFADDR_IN6": flavor.siocaifaddr_in6,
        "SIOCIFDESTROY": flavor.siocifdestroy,
    }
    for request, number in expected.items():
        if request in computed:
            assert computed[request] == number, request
    assert DARWIN_REQUESTS["CTLIOCGINFO"] == darwin.CTLIOCGINFO
    assert bsd.FREEBSD.tun_gifname == FREEBSD_REQUESTS["TUNGIFNAME"]
    assert bsd.FREEBSD.tunsifhead == FREEBSD_REQUESTS["TUNSIFHEAD"]
    assert bsd.NETBSD.tunsifhead == NETBSD_REQUESTS["TUNSIFHEAD"]
    assert bsd.NETBSD.tap_gifname == NETBSD_REQUESTS["TAPGIFNAME"]
    assert bsd.OPENBSD.tunsifhead is None  # the header is always on


def test_sockaddrs() -> None:
    # <netinet/in.h> struct sockaddr_in: sin_len, sin_family, sin_port, sin_addr (4), sin_zero[8]
    sin = b.sockaddr_in(ADDR)
    assert sin == bytes([16, 2, 0, 0, 10, 8, 0, 1]) + bytes(8)
    # <netinet6/in6.h> struct sockaddr_in6: len, family, port, flowinfo (4), addr (8), scope (24)
    for flavor, family in ((b.DARWIN_FLAVOR, 30), (b.FREEBSD_FLAVOR, 28), (b.OPENBSD_FLAVOR, 24)):
        sin6 = b.sockaddr_in6(flavor.families, ADDR6)
        assert len(sin6) == 28 and sin6[:2] == bytes([28, family])
        assert sin6[2:8] == bytes(6) and sin6[8:24] == ADDR6.packed and sin6[24:] == bytes(4)
    # <net/if_dl.h> struct sockaddr_dl: sdl_len, sdl_family (AF_LINK 18), sdl_index (2), ...
    #   sizeof: xnu 20 (sdl_data[12]), FreeBSD 54 (sdl_data[46]), OpenBSD 32 (sdl_data[24]),
    #   NetBSD 32 (struct dl_addr with dl_data[24])
    for flavor, size in (
        (b.DARWIN_FLAVOR, 20),
        (b.FREEBSD_FLAVOR, 54),
        (b.OPENBSD_FLAVOR, 32),
        (b.NETBSD_FLAVOR, 32),
    ):
        dl = b.sockaddr_dl(flavor, 0x1234)
        assert len(dl) == size and dl[0] == size and dl[1] == 18
        assert struct.unpack_from("=H", dl, 2)[0] == 0x1234 and dl[4:] == bytes(size - 4)


@pytest.mark.parametrize("name", FLAVORS)
def test_ifreq(name: str) -> None:
    flavor, _ = FLAVORS[name]
    # <net/if.h> struct ifreq: ifr_name[IFNAMSIZ 16] then the union; 32 bytes, but 144 on
    # NetBSD, whose union holds a struct sockaddr_storage (128).
    size = 144 if name == "netbsd" else 32
    request = b.ifreq_int(flavor, "utun3", 1400)
    assert len(request) == size
    assert request[:16] == b"utun3".ljust(16, b"\0")
    assert struct.unpack_from("=i", request, 16)[0] == 1400  # ifr_mtu
    assert b.ifreq_get_int(request) == 1400
    flags = b.ifreq_flags(flavor, "utun3", 0x8051)
    assert struct.unpack_from("=H", flags, 16)[0] == 0x8051  # short ifr_flags
    assert b.ifreq_get_flags(flags) == 0x8051
    assert b.ifreq_get_name(b"tun0" + bytes(28)) == "tun0"
    with pytest.raises(ValueError):
        b.ifreq(flavor, "x" * 16)


@pytest.mark.parametrize("name", FLAVORS)
def test_ifaliasreq(name: str) -> None:
    flavor, _ = FLAVORS[name]
    # struct ifaliasreq: ifra_name 0, ifra_addr 16, ifra_broadaddr (dstaddr) 32, ifra_mask 48;
    # FreeBSD adds int ifra_vhid at 64 (68 bytes).
    request = b.ifaliasreq(
        flavor,
        "tun0",
        ADDR,
        ipaddress.IPv4Address("10.8.0.2"),
        ipaddress.IPv4Address("255.255.255.0"),
    )
    assert len(request) == (68 if name == "freebsd" else 64)
    assert request[:16] == b"tun0".ljust(16, b"\0")
    assert request[16:32] == b.sockaddr_in(ADDR)
    assert request[32:48] == b.sockaddr_in(ipaddress.IPv4Address("10.8.0.2"))
    assert request[48:64] == b.sockaddr_in(ipaddress.IPv4Address("255.255.255.0"))
    assert request[64:] == bytes(len(request) - 64)
    no_destination = b.ifaliasreq(flavor, "tun0", ADDR, None, ADDR)
    assert no_destination[32:48] == bytes(16)


@pytest.mark.parametrize("name", FLAVORS)
def test_in6_aliasreq_and_in6_ifreq(name: str) -> None:
    flavor, _ = FLAVORS[name]
    mask = ipaddress.IPv6Address("ffff:ffff:ffff:ffff::")
    # <netinet6/in6_var.h> struct in6_aliasreq: name 0, ifra_addr 16, ifra_dstaddr 44,
    # ifra_prefixmask 72, int ifra_flags 100, struct in6_addrlifetime ifra_lifetime 104
    # (time_t expire 104, time_t preferred 112, u_int32 vltime 120, pltime 124); 128 bytes,
    # FreeBSD 136 (int ifra_vhid at 128, padded to 8).
    request = b.in6_aliasreq(flavor, "tun0", ADDR6, mask)
    assert len(request) == (136 if name == "freebsd" else 128)
    assert request[16:44] == b.sockaddr_in6(flavor.families, ADDR6)
    assert request[44:72] == bytes(28)
    assert request[72:100] == b.sockaddr_in6(flavor.families, mask)
    assert struct.unpack_from("=i", request, 100)[0] == flavor.in6_iff_nodad
    expire, preferred, vltime, pltime = struct.unpack_from("=qqII", request, 104)
    assert (expire, preferred) == (0, 0)
    assert vltime == pltime == 0xFFFFFFFF  # ND6_INFINITE_LIFETIME
    assert request[128:] == bytes(len(request) - 128)
    # IN6_IFF_NODAD: 0x20 (xnu, FreeBSD, NetBSD); OpenBSD's in6_var.h no longer defines it.
    assert flavor.in6_iff_nodad == (0 if name == "openbsd" else 0x20)
    # struct in6_ifreq: name 0, union at 16 whose largest member is struct icmp6_ifstat
    # (34 u_int64 = 272): 288 bytes on all four.
    ifreq6 = b.in6_ifreq(flavor, "tun0", ADDR6)
    assert len(ifreq6) == 288 and ifreq6[16:44] == b.sockaddr_in6(flavor.families, ADDR6)


# <net/route.h> struct rt_msghdr, per system (see bsd_fakes.RTM for the field lists):
RT_MSGHDR = {
    "darwin": {"size": 92, "version": 5, "index": 4, "flags": 8, "addrs": 12, "pid": 16,
               "seq": 20, "align": 4},
    "freebsd": {"size": 152, "version": 5, "index": 4, "flags": 8, "addrs": 12, "pid": 16,
                "seq": 20, "align": 8},
    "netbsd": {"size": 120, "version": 4, "index": 4, "flags": 8, "addrs": 12, "pid": 16,
               "seq": 20, "align": 8},
    "openbsd": {"size": 96, "version": 5, "index": 6, "flags": 16, "addrs": 12, "pid": 24,
                "seq": 28, "align": 8},
}  # fmt: skip


@pytest.mark.parametrize("name", FLAVORS)
def test_route_message(name: str) -> None:
    flavor, _ = FLAVORS[name]
    layout = RT_MSGHDR[name]
    network = ipaddress.ip_network("10.8.0.0/24")
    message = b.route_message(flavor, b.RTM_ADD, network, 7, seq=99, pid=4242)
    size, align = layout["size"], layout["align"]
    dl = flavor.sockaddr_dl_size
    dl_padded = (dl + align - 1) // align * align
    assert len(message) == size + 16 + dl_padded + 16
    msglen, version, rtm_type = struct.unpack_from("=HBB", message, 0)
    assert (msglen, version, rtm_type) == (len(message), layout["version"], 1)
    assert struct.unpack_from("=H", message, layout["index"])[0] == 7
    assert struct.unpack_from("=i", message, layout["flags"])[0] == 0x801  # RTF_UP|RTF_STATIC
    assert struct.unpack_from("=i", message, layout["addrs"])[0] == 0x7  # DST|GATEWAY|NETMASK
    assert struct.unpack_from("=i", message, layout["pid"])[0] == 4242
    assert struct.unpack_from("=i", message, layout["seq"])[0] == 99
    if name == "openbsd":
        assert struct.unpack_from("=H", message, 4)[0] == 96  # rtm_hdrlen
    body = message[size:]
    assert body[:16] == b.sockaddr_in(network.network_address)
    assert body[16 : 16 + dl] == b.sockaddr_dl(flavor, 7)
    assert body[16 + dl_padded :] == b.sockaddr_in(network.netmask)
    # A host route: RTF_HOST, no netmask.
    host = b.route_message(
        flavor, b.RTM_DELETE, ipaddress.ip_network("fd00::1/128"), 7, seq=1, pid=1
    )
    assert struct.unpack_from("=i", host, layout["flags"])[0] == 0x805
    assert struct.unpack_from("=i", host, layout["addrs"])[0] == 0x3
    sin6_padded = (28 + align - 1) // align * align  # 28 on xnu (4-byte), else 32
    assert len(host) == size + sin6_padded + dl_padded


@pytest.mark.parametrize("name", FLAVORS)
def test_route_dump_parsing(name: str) -> None:
    flavor, _ = FLAVORS[name]
    networks = ["10.8.0.0/24", "0.0.0.0/0", "fd00:8::/64", "192.0.2.7/32"]
    dump = b"".join(
        b.route_message(flavor, b.RTM_GET, ipaddress.ip_network(n), 3 + i, seq=i, pid=1)
        for i, n in enumerate(networks)
    )
    entries = b.parse_route_dump(flavor, dump + b"\x00\x00")  # a torn tail is ignored
    assert [(str(e.destination), e.prefixlen, e.ifindex) for e in entries] == [
        ("10.8.0.0", 24, 3),
        ("0.0.0.0", 0, 4),
        ("fd00:8::", 64, 5),
        ("192.0.2.7", 32, 6),
    ]
    # Link-local addresses come with the KAME scope id embedded in bytes 2-3.
    embedded = b.sockaddr_in6(flavor.families, ipaddress.IPv6Address("fe80:4::1"))
    assert str(b._address(flavor, embedded)) == "fe80::1"


def test_ctl_info_and_sockaddr_ctl_sizes() -> None:
    # <sys/kern_control.h>
    assert darwin.CTL_INFO.size == 100  # u_int32_t ctl_id; char ctl_name[MAX_KCTL_NAME 96]
    assert darwin.SOCKADDR_CTL.size == 32  # 2 u_char, u_int16_t, u_int32_t id, unit, [5]
    assert darwin.MAX_KCTL_NAME == 96
    # <net/if_utun.h>, <sys/sys_domain.h>, <sys/socket.h>
    assert darwin.UTUN_OPT_IFNAME == 2
    assert darwin.SYSPROTO_CONTROL == 2 and darwin.AF_SYS_CONTROL == 2
    assert darwin.AF_SYSTEM == darwin.PF_SYSTEM == 32


def _offsets(structure: type[ctypes.Structure]) -> dict[str, int]:
    return {name: getattr(structure, name).offset for name, *_ in structure._fields_}


def test_windows_structures() -> None:
    # ws2ipdef.h: SOCKADDR_INET is a union of SOCKADDR_IN (16), SOCKADDR_IN6 (28), si_family
    assert ctypes.sizeof(w.SOCKADDR_INET) == 28
    assert ctypes.sizeof(w.SOCKADDR_IN) == 16 and w.SOCKADDR_IN.sin_addr.offset == 4
    assert ctypes.sizeof(w.SOCKADDR_IN6) == 28 and w.SOCKADDR_IN6.sin6_addr.offset == 8
    # netioapi.h MIB_UNICASTIPADDRESS_ROW (x64): 80 bytes
    assert ctypes.sizeof(w.MIB_UNICASTIPADDRESS_ROW) == 80
    assert _offsets(w.MIB_UNICASTIPADDRESS_ROW) == {
        "Address": 0,
        "InterfaceLuid": 32,
        "InterfaceIndex": 40,
        "PrefixOrigin": 44,
        "SuffixOrigin": 48,
        "ValidLifetime": 52,
        "PreferredLifetime": 56,
        "OnLinkPrefixLength": 60,
        "SkipAsSource": 61,
        "DadState": 64,
        "ScopeId": 68,
        "CreationTimeStamp": 72,
    }
    # netioapi.h MIB_IPINTERFACE_ROW (x64): 168 bytes
    assert ctypes.sizeof(w.MIB_IPINTERFACE_ROW) == 168
    offsets = _offsets(w.MIB_IPINTERFACE_ROW)
    assert {k: offsets[k] for k in (
        "Family", "InterfaceLuid", "InterfaceIndex", "MaxReassemblySize",
        "InterfaceIdentifier", "AdvertisingEnabled", "RouterDiscoveryBehavior",
        "LinkLocalAddressTimeout", "ZoneIndices", "SitePrefixLength", "Metric", "NlMtu",
        "Connected", "ReachableTime", "TransmitOffload", "DisableDefaultRoutes",
    )} == {
        "Family": 0, "InterfaceLuid": 8, "InterfaceIndex": 16, "MaxReassemblySize": 20,
        "InterfaceIdentifier": 24, "AdvertisingEnabled": 40, "RouterDiscoveryBehavior": 52,
        "LinkLocalAddressTimeout": 76, "ZoneIndices": 80, "SitePrefixLength": 144,
        "Metric": 148, "NlMtu": 152, "Connected": 156, "ReachableTime": 160,
        "TransmitOffload": 164, "DisableDefaultRoutes": 166,
    }  # fmt: skip
    # netioapi.h MIB_IPFORWARD_ROW2 (x64): 104 bytes; IP_ADDRESS_PREFIX is 32
    assert ctypes.sizeof(w.IP_ADDRESS_PREFIX) == 32
    assert w.IP_ADDRESS_PREFIX.PrefixLength.offset == 28
    assert ctypes.sizeof(w.MIB_IPFORWARD_ROW2) == 104
    assert _offsets(w.MIB_IPFORWARD_ROW2) == {
        "InterfaceLuid": 0, "InterfaceIndex": 8, "DestinationPrefix": 12, "NextHop": 44,
        "SitePrefixLength": 72, "ValidLifetime": 76, "PreferredLifetime": 80, "Metric": 84,
        "Protocol": 88, "Loopback": 92, "AutoconfigureAddress": 93, "Publish": 94,
        "Immortal": 95, "Age": 96, "Origin": 100,
    }  # fmt: skip


def test_windows_constants() -> None:
    # wintun.h
    assert w.WINTUN_MIN_RING_CAPACITY == 0x20000
    assert w.WINTUN_MAX_RING_CAPACITY == 0x4000000
    assert w.WINTUN_MAX_IP_PACKET_SIZE == 0xFFFF
    # winerror.h
    assert (w.ERROR_NO_MORE_ITEMS, w.ERROR_HANDLE_EOF, w.ERROR_BUFFER_OVERFLOW) == (259, 38, 111)
    assert (w.ERROR_INVALID_DATA, w.ERROR_OBJECT_ALREADY_EXISTS, w.ERROR_NOT_FOUND) == (
        13,
        5010,
        1168,
    )
    # ws2def.h: AF_INET6 is 23 on Windows
    assert (w.AF_INET, w.AF_INET6) == (2, 23)
