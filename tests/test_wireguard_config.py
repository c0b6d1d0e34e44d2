"""wg-quick configuration files."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

# The protocol core needs `cryptography` (X25519, ChaCha20-Poly1305).
pytest.importorskip("cryptography")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from wgpeer import WireGuardDevice, crypto, parse_config, parse_endpoint

KEY_A = crypto.encode_key(crypto.clamp(bytes(range(32))))
KEY_B = crypto.encode_key(crypto.public_key(crypto.clamp(bytes(range(1, 33)))))
KEY_C = crypto.encode_key(crypto.public_key(crypto.clamp(bytes(range(2, 34)))))
PSK = crypto.encode_key(bytes(range(5, 37)))

IFACE = f"[Interface]\nPrivateKey = {KEY_A}\n"
PEER_B = f"[Peer]\nPublicKey = {KEY_B}\n"

GOOD = f"""
# a comment
[Interface]
PrivateKey = {KEY_A}
ListenPort = 51820
Address = 10.8.0.1/24, fd00:8::1/64
Address = 10.9.0.1/32
MTU = 1400
DNS = 1.1.1.1   # wg-quick only

[Peer]
PublicKey = {KEY_B}
PresharedKey = {PSK}
AllowedIPs = 10.8.0.2/32, fd00:8::2/128
AllowedIPs = 192.168.5.9/24
Endpoint = 192.0.2.7:51821
PersistentKeepalive = 25

[peer]
publickey = {KEY_C}
endpoint = [2001:db8::7]:4500
persistentkeepalive = off
"""


def test_parse_full_file() -> None:
    cfg = parse_config(GOOD)
    iface = cfg.interface
    assert crypto.encode_key(iface.private_key) == KEY_A
    assert iface.listen_port == 51820
    assert iface.addresses == ("10.8.0.1/24", "fd00:8::1/64", "10.9.0.1/32")
    assert iface.mtu == 1400
    assert cfg.ignored == ((9, "dns"),)
    first, second = cfg.peers
    assert crypto.encode_key(first.public_key) == KEY_B
    assert first.preshared_key == crypto.decode_key(PSK)
    assert first.allowed_ips == ("10.8.0.2/32", "fd00:8::2/128", "192.168.5.0/24")
    assert first.endpoint == ("192.0.2.7", 51821)
    assert first.persistent_keepalive == 25
    assert second.endpoint == ("2001:db8::7", 4500)
    assert second.persistent_keepalive == 0 and second.preshared_key is None


def test_device_from_config() -> None:
    dev = WireGuardDevice.from_config(parse_config(GOOD))
    assert dev.listen_port == 51820 and dev.mtu == 1400
    assert len(dev.peers) == 2
    peer = dev.peers[crypto.decode_key(KEY_B)]
    assert dev.allowed_ips.lookup("192.168.5.200") is peer
    assert peer.persistent_keepalive == 25


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "line 1: there must be exactly one \\[Interface\\]"),
        ("PrivateKey = x", "line 1: a setting before any"),
        ("[Interface]\nListenPort = 1", "line 1: \\[Interface\\] needs a PrivateKey"),
        (IFACE + "[Interface]", "line 3: there must be exactly one"),
        (IFACE + "ListenPort = 70000", "line 3: ListenPort must be"),
        (IFACE + "ListenPort = x", "line 3: ListenPort must be a"),
        (IFACE + "Address = 10.0.0.300/24", "line 3: "),
        (IFACE + "MTU = 100", "line 3: MTU must be"),
        (IFACE + "Colour = red", "line 3: unknown \\[Interface\\] key"),
        ("[Interface]\nPrivateKey = short", "line 2: a key is 44"),
        (
            IFACE + "[Peer]\nAllowedIPs = 1.2.3.4/32",
            "line 3: \\[Peer\\] needs",
        ),
        (
            IFACE + PEER_B + "Endpoint = nope",
            "line 5: bad endpoint",
        ),
        (
            IFACE + PEER_B + "Endpoint = ::1:5",
            "line 5: .*brackets",
        ),
        (
            IFACE + PEER_B + "AllowedIPs = 10.0.0.0/33",
            "line 5: ",
        ),
        (
            IFACE + PEER_B + f"[Peer]\nPublicKey = {KEY_B}",
            "line 5: peer repeats the public key of line 3",
        ),
        (IFACE + "bogus line", "line 3: expected 'Key = value'"),
        (IFACE + "[Wat]", "line 3: unknown section"),
    ],
)
def test_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_config(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("example.org:51820", ("example.org", 51820)),
        ("[fe80::1%eth0]:1", ("fe80::1%eth0", 1)),
        (" 10.0.0.1:65535 ", ("10.0.0.1", 65535)),
    ],
)
def test_endpoints(text: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint(text) == expected


@settings(deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_parses_or_raises_value_error(text: str) -> None:
    try:
        parse_config(text)
    except ValueError as exc:
        assert str(exc).startswith("line ")


@settings(deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                f"PrivateKey = {KEY_A}",
                "ListenPort = 5",
                "MTU = 1280",
                "Address = 10.0.0.1/24",
                "[Peer]",
                f"PublicKey = {KEY_B}",
                "AllowedIPs = 0.0.0.0/0",
                "Endpoint = [::1]:9",
                "# c",
                "",
            ]
        ),
        max_size=12,
    )
)
def test_shuffled_settings_parse_or_raise_value_error(lines: list[str]) -> None:
    try:
        parse_config("[Interface]\n" + "\n".join(lines))
    except ValueError as exc:
        assert str(exc).startswith("line ")
