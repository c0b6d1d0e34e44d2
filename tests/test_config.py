"""Configuration is validated before any system call (no root needed)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

import trio_tun
from trio_tun import Layer, TunConfig
from trio_tun._config import parse_address, parse_mac, validate_name
from trio_tun.platform.linux import tun


@pytest.mark.parametrize(
    "name",
    ["a" * 16, "with/slash", "sp ace", "co:lon", "", "..", "two%d%d", "pct%s", "tab\tx"],
)
def test_bad_names_rejected(name: str) -> None:
    # Name rules are each backend's; Linux's (IFNAMSIZ) are checked when open_tun
    # is called, before the block is entered and before any system call.
    with pytest.raises(ValueError):
        validate_name(name)
    with pytest.raises(ValueError):
        trio_tun.open_tun(name)


@pytest.mark.parametrize("name", ["a" * 15, "vpn%d", "tun0", "wg-home_1"])
def test_good_names_accepted(name: str) -> None:
    assert TunConfig(name=name).name == name
    validate_name(name)


def test_name_must_be_a_string() -> None:
    with pytest.raises(TypeError, match="string"):
        TunConfig(name=123)  # type: ignore[arg-type]


def test_name_length_counts_bytes_not_characters() -> None:
    with pytest.raises(ValueError, match="bytes"):
        validate_name("é" * 8)  # 16 bytes in UTF-8


@pytest.mark.parametrize("mtu", [0, 67, 65536, -1])
def test_mtu_out_of_range(mtu: int) -> None:
    with pytest.raises(ValueError, match="mtu"):
        TunConfig(mtu=mtu)


def test_ipv6_needs_1280() -> None:
    TunConfig(mtu=1000, addresses=["10.0.0.1/24"])
    with pytest.raises(ValueError, match="1280"):
        TunConfig(mtu=1000, addresses=["fd00::1/64"])


@pytest.mark.parametrize("addr", ["10.0.0.1/33", "10.0.0/24", "fd00::1/129", "nonsense", ""])
def test_bad_prefix(addr: str) -> None:
    with pytest.raises(ValueError, match="bad address"):
        TunConfig(addresses=[addr])


def test_addresses_parsed_and_single_string_accepted() -> None:
    cfg = TunConfig(addresses=["10.8.0.1/24", "fd00:8::1/64"])
    assert cfg.addresses == (
        ipaddress.ip_interface("10.8.0.1/24"),
        ipaddress.ip_interface("fd00:8::1/64"),
    )
    assert TunConfig(addresses="10.0.0.1").addresses[0].network.prefixlen == 32  # type: ignore[arg-type]


def test_unknown_netns() -> None:
    with pytest.raises(ValueError, match="does not exist"):
        TunConfig(netns="trio-tun-no-such-namespace")


def test_mac_only_for_tap_and_validated() -> None:
    with pytest.raises(ValueError, match="TAP"):
        TunConfig(mac="02:00:00:00:00:01")
    assert TunConfig(layer=Layer.L2, mac="02:00:00:00:00:01").mac == bytes.fromhex("020000000001")
    with pytest.raises(ValueError, match="multicast"):
        parse_mac("01:00:5e:00:00:01")
    with pytest.raises(ValueError):
        parse_mac("02:00:00:00:00")


def test_queues_and_offload_values() -> None:
    with pytest.raises(ValueError):
        TunConfig(queues=0)
    with pytest.raises(ValueError):
        TunConfig(offload="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        TunConfig(packet_info=True, offload=True)


def test_open_tun_validates_before_any_syscall(monkeypatch: pytest.MonkeyPatch) -> None:
    # If validation ran late, open_tun_file would be reached and this would fire.
    def boom() -> int:
        raise AssertionError("a syscall was attempted before validation")

    monkeypatch.setattr(tun, "open_tun_file", boom)
    with pytest.raises(ValueError):
        trio_tun.open_tun("x" * 20)
    with pytest.raises(ValueError):
        trio_tun.open_tun(mtu=10)
    with pytest.raises(ValueError):
        trio_tun.open_tap(addresses=["300.1.1.1/24"])


@given(st.ip_addresses(), st.integers(0, 128))
def test_parse_address_roundtrip(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, plen: int
) -> None:
    plen = min(plen, ip.max_prefixlen)
    parsed = parse_address(f"{ip}/{plen}")
    assert parsed.ip == ip and parsed.network.prefixlen == plen


@given(st.text(max_size=20))
def test_validate_name_never_crashes_unexpectedly(name: str) -> None:
    try:
        validate_name(name)
    except ValueError:
        return
    encoded = name.encode("utf-8", "surrogateescape")
    assert 0 < len(encoded) <= 15 and "/" not in name


@pytest.mark.parametrize(
    "addresses",
    [
        ["10.0.0.1/24", "10.0.0.1/24"],
        ["10.0.0.1/24", "10.0.0.1/16"],  # one address, two prefixes: still one address
        ["fd00::1/64", "10.0.0.2/24", "fd00:0::1/128"],
    ],
)
def test_duplicate_addresses_rejected_at_construction(addresses: list[str]) -> None:
    with pytest.raises(ValueError, match="more than once") as info:
        TunConfig(addresses=addresses)
    assert str(parse_address(addresses[-1]).ip) in str(info.value)
    with pytest.raises(ValueError, match="more than once"):
        trio_tun.open_tun(addresses=addresses)


@pytest.mark.parametrize("name", ["%d", "0%d", "12%d"])
def test_all_digit_name_pattern_rejected(name: str) -> None:
    # "%d" alone would make the kernel call the device "0": the user meant name=None.
    with pytest.raises(ValueError, match="name=None"):
        validate_name(name)
    with pytest.raises(ValueError, match="name=None"):
        trio_tun.open_tun(name)
