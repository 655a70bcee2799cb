"""The address guard against every block of IANA's special-purpose registries (finding 6).

The tables below are typed from the registries themselves, not from receiver/netguard.py:
https://www.iana.org/assignments/iana-ipv4-special-registry/ (IPv4, as of 2025) and
https://www.iana.org/assignments/iana-ipv6-special-registry/ (IPv6, updated 2025-10-09), plus
multicast and the deprecated site-local block from the address-space registries
(https://www.iana.org/assignments/ipv6-address-space/, RFC 3879). For every block the first,
a middle and the last address must be refused, through the fetcher (with a message naming
``fetch.allowed_networks``) and through the notifier's guard.
"""

from __future__ import annotations

import ipaddress

import httpx
import pytest

from receiver import netguard
from receiver.config import FetchSettings
from receiver.errors import FetchRefused
from receiver.fetch import Fetcher

pytestmark = pytest.mark.anyio

IANA_IPV4 = [
    "0.0.0.0/8",  # "This network" (RFC 791)
    "0.0.0.0/32",  # "This host on this network"
    "10.0.0.0/8",  # Private-Use (RFC 1918)
    "100.64.0.0/10",  # Shared Address Space (RFC 6598)
    "127.0.0.0/8",  # Loopback
    "169.254.0.0/16",  # Link Local (cloud metadata at 169.254.169.254)
    "172.16.0.0/12",  # Private-Use
    "192.0.0.0/24",  # IETF Protocol Assignments (RFC 6890)
    "192.0.0.0/29",  # IPv4 Service Continuity Prefix (RFC 7335)
    "192.0.0.8/32",  # IPv4 dummy address (RFC 7600): passes Python 3.11's is_global
    "192.0.0.9/32",  # Port Control Protocol Anycast (RFC 7723)
    "192.0.0.10/32",  # Traversal Using Relays around NAT Anycast (RFC 8155)
    "192.0.0.170/32",  # NAT64/DNS64 Discovery (RFC 7050)
    "192.0.0.171/32",  # NAT64/DNS64 Discovery
    "192.0.2.0/24",  # Documentation (TEST-NET-1)
    "192.31.196.0/24",  # AS112-v4 (RFC 7535)
    "192.52.193.0/24",  # AMT (RFC 7450)
    "192.88.99.0/24",  # Deprecated (6to4 Relay Anycast) (RFC 7526)
    "192.168.0.0/16",  # Private-Use
    "192.175.48.0/24",  # Direct Delegation AS112 Service (RFC 7534)
    "198.18.0.0/15",  # Benchmarking (RFC 2544)
    "198.51.100.0/24",  # Documentation (TEST-NET-2)
    "203.0.113.0/24",  # Documentation (TEST-NET-3)
    "240.0.0.0/4",  # Reserved (RFC 1112)
    "255.255.255.255/32",  # Limited Broadcast (RFC 8190)
    "224.0.0.0/4",  # Multicast (IPv4 address space registry)
]

IANA_IPV6 = [
    "::1/128",  # Loopback Address (RFC 4291)
    "::/128",  # Unspecified Address
    "::ffff:0:0/96",  # IPv4-mapped Address: judged by the IPv4 inside, tested below
    "64:ff9b::/96",  # IPv4-IPv6 Translat. (RFC 6052): judged by the IPv4 inside
    "64:ff9b:1::/48",  # IPv4-IPv6 Translat. local use (RFC 8215)
    "100::/64",  # Discard-Only Address Block (RFC 6666)
    "100:0:0:1::/64",  # Dummy IPv6 Prefix (RFC 9780)
    "2001::/23",  # IETF Protocol Assignments (RFC 2928)
    "2001::/32",  # TEREDO (RFC 4380)
    "2001:1::1/128",  # Port Control Protocol Anycast (RFC 7723)
    "2001:1::2/128",  # Traversal Using Relays around NAT Anycast (RFC 8155)
    "2001:1::3/128",  # DNS-SD Service Registration Protocol Anycast (RFC 9665)
    "2001:2::/48",  # Benchmarking (RFC 5180)
    "2001:3::/32",  # AMT (RFC 7450)
    "2001:4:112::/48",  # AS112-v6 (RFC 7535)
    "2001:10::/28",  # Deprecated (previously ORCHID) (RFC 4843)
    "2001:20::/28",  # ORCHIDv2 (RFC 7343)
    "2001:30::/28",  # Drone Remote ID Protocol Entity Tags (RFC 9374)
    "2001:db8::/32",  # Documentation (RFC 3849)
    "2002::/16",  # 6to4 (RFC 3056)
    "2620:4f:8000::/48",  # Direct Delegation AS112 Service (RFC 7534)
    "3fff::/20",  # Documentation (RFC 9637)
    "5f00::/16",  # Segment Routing (SRv6) SIDs (RFC 9602)
    "fc00::/7",  # Unique-Local (RFC 4193)
    "fe80::/10",  # Link-Local Unicast (RFC 4291)
    "fec0::/10",  # Site-local, deprecated (RFC 3879; address-space registry)
    "ff00::/8",  # Multicast (address-space registry)
]

# Blocks whose addresses carry an IPv4 address that decides (tested separately).
EMBEDDING = {"::ffff:0:0/96", "64:ff9b::/96"}


def samples(cidr: str) -> list[str]:
    net = ipaddress.ip_network(cidr)
    first, last = int(net.network_address), int(net.broadcast_address)
    cls = type(net.network_address)
    return sorted({str(cls(first)), str(cls((first + last) // 2)), str(cls(last))})


TABLE = [
    (cidr, addr)
    for cidr in IANA_IPV4 + IANA_IPV6
    if cidr not in EMBEDDING
    for addr in samples(cidr)
]


@pytest.mark.parametrize(("block", "address"), TABLE)
def test_every_special_purpose_address_is_refused(block: str, address: str) -> None:
    assert netguard.refusal(ipaddress.ip_address(address)) is not None, (block, address)


@pytest.mark.parametrize(
    "address",
    [
        "::127.0.0.1",  # IPv4-compatible (deprecated), loopback inside
        "::10.0.0.1",
        "::8.8.8.8",  # deprecated embedding, refused whatever it carries
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:169.254.169.254",
        "::ffff:192.0.0.8",
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b:1::7f00:1",  # local-use NAT64
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2002:0808:0808::1",  # 6to4 of a public address: still refused (deprecated)
        "::ffff:0:7f00:1",  # SIIT IPv4-translated 127.0.0.1
        "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1 (inverted)
        "fec0::1",
    ],
)
def test_ipv4_inside_ipv6_is_decoded_and_refused(address: str) -> None:
    assert netguard.refusal(ipaddress.ip_address(address)) is not None


def test_embedded_forms_are_decoded() -> None:
    def inner(text: str) -> str | None:
        found = netguard.embedded_ipv4(ipaddress.IPv6Address(text))
        return str(found[0]) if found else None

    assert inner("::127.0.0.1") == "127.0.0.1"
    assert inner("::ffff:10.1.2.3") == "10.1.2.3"
    assert inner("64:ff9b::0a01:0203") == "10.1.2.3"
    assert inner("2002:0a01:0203::5") == "10.1.2.3"
    assert inner("::ffff:0:0a01:0203") == "10.1.2.3"
    assert inner("2001:0:4136:e378:8000:63bf:f5fe:fdfc") == "10.1.2.3"
    assert inner("2606:4700::1111") is None


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "93.184.216.34",
        "2606:4700::1111",
        "2a00:1450:4001::200e",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
    ],
)
def test_ordinary_public_addresses_pass(address: str) -> None:
    assert netguard.refusal(ipaddress.ip_address(address)) is None


def test_the_allow_list_admits_its_networks_only() -> None:
    allowed = netguard.parse_networks(["127.0.0.0/8", "fd00::/8"])
    assert netguard.refusal(ipaddress.ip_address("127.0.0.1"), allowed) is None
    assert netguard.refusal(ipaddress.ip_address("::ffff:127.0.0.1"), allowed) is None
    assert netguard.refusal(ipaddress.ip_address("fd00::5"), allowed) is None
    assert netguard.refusal(ipaddress.ip_address("10.0.0.1"), allowed) is not None


def _fetcher(dns: dict[str, list[str]], **settings: object) -> Fetcher:
    async def resolver(host: str, port: int) -> list[str]:
        return dns[host]

    def origin(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"connected to {request.url}")

    return Fetcher(
        FetchSettings(**settings),  # type: ignore[arg-type]
        transport=httpx.MockTransport(origin),
        resolver=resolver,
    )


@pytest.mark.parametrize(("block", "address"), TABLE[::3])
async def test_the_fetcher_never_connects_to_a_special_address(block: str, address: str) -> None:
    fetcher = _fetcher({"img.example": [address]})
    with pytest.raises(FetchRefused, match=r"fetch\.allowed_networks"):
        await fetcher.fetch("https://img.example/a.png")
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(FetchRefused, match=r"fetch\.allowed_networks"):
        await fetcher.fetch(f"http://{host}/a.png")
    await fetcher.aclose()


async def test_loopback_refusal_names_the_setting_to_change() -> None:
    fetcher = _fetcher({"localhost": ["127.0.0.1"]})
    with pytest.raises(FetchRefused) as caught:
        await fetcher.fetch("http://localhost:9000/x.png?sig=secret")
    assert "fetch.allowed_networks" in caught.value.message
    assert "loopback" in caught.value.message
    assert "secret" not in caught.value.message
    await fetcher.aclose()
