"""Which addresses we connect to on a third party's say-so (result URLs, ``notify_url``).

Python's ``is_global`` misses several special-purpose blocks (192.0.0.8, the newer IPv6
documentation and SRv6 prefixes, fec0::/10) and never looks inside IPv6 addresses that carry
an IPv4 address. The rule here: an address is allowed when an operator's allow list admits it,
or when it is ordinary global unicast: IPv4 outside every block of the IANA IPv4
Special-Purpose Address Registry and multicast; IPv6 inside 2000::/3 (the only block IANA
allocates for global unicast) and outside every block of the IPv6 Special-Purpose Address
Registry. IPv4-mapped (``::ffff:a.b.c.d``) and NAT64 (``64:ff9b::a.b.c.d``) addresses are judged
by the IPv4 address they carry; the deprecated embeddings (IPv4-compatible ``::a.b.c.d``,
SIIT ``::ffff:0:a.b.c.d``, 6to4, Teredo) and local-use NAT64 are refused whatever they carry.

Sources: https://www.iana.org/assignments/iana-ipv4-special-registry/ and
https://www.iana.org/assignments/iana-ipv6-special-registry/ (both as of 2025), RFC 6052
(NAT64 prefixes), RFC 3879 (site-local fec0::/10, deprecated), RFC 4291 (address space).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# (block, name). Blocks the registry marks globally reachable (anycast for PCP and TURN,
# AS112, AMT) are refused too: none of them serves images or application webhooks.
SPECIAL_V4: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "this network"),
    ("10.0.0.0/8", "private-use"),
    ("100.64.0.0/10", "shared address space (carrier-grade NAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local (cloud metadata)"),
    ("172.16.0.0/12", "private-use"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation (TEST-NET-1)"),
    ("192.31.196.0/24", "AS112-v4"),
    ("192.52.193.0/24", "AMT"),
    ("192.88.99.0/24", "deprecated 6to4 relay anycast"),
    ("192.168.0.0/16", "private-use"),
    ("192.175.48.0/24", "direct delegation AS112 service"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation (TEST-NET-2)"),
    ("203.0.113.0/24", "documentation (TEST-NET-3)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("255.255.255.255/32", "limited broadcast"),
)

SPECIAL_V6: tuple[tuple[str, str], ...] = (
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("64:ff9b::/96", "IPv4/IPv6 translation (NAT64)"),
    ("64:ff9b:1::/48", "local-use IPv4/IPv6 translation"),
    ("100::/64", "discard-only"),
    ("100:0:0:1::/64", "dummy IPv6 prefix"),
    ("2001::/23", "IETF protocol assignments (includes Teredo 2001::/32)"),
    ("2001:db8::/32", "documentation"),
    ("2002::/16", "6to4"),
    ("2620:4f:8000::/48", "direct delegation AS112 service"),
    ("3fff::/20", "documentation"),
    ("5f00::/16", "segment routing (SRv6) SIDs"),
    ("fc00::/7", "unique-local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
)

_V4 = [(ipaddress.IPv4Network(net), name) for net, name in SPECIAL_V4]
_V6 = [(ipaddress.IPv6Network(net), name) for net, name in SPECIAL_V6]
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_COMPAT = ipaddress.IPv6Network("::/96")
_SIIT = ipaddress.IPv6Network("::ffff:0:0:0/96")
_6TO4 = ipaddress.IPv6Network("2002::/16")
_TEREDO = ipaddress.IPv6Network("2001::/32")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address an IPv6 address carries, with the form's name, or None."""
    value = int(ip)
    low32 = ipaddress.IPv4Address(value & 0xFFFFFFFF)
    if ip in _MAPPED:
        return low32, "IPv4-mapped"
    if ip in _NAT64:
        return low32, "NAT64"
    if ip in _SIIT:
        return low32, "SIIT IPv4-translated"
    if ip in _COMPAT and value > 1:
        return low32, "IPv4-compatible"
    if ip in _6TO4:
        return ipaddress.IPv4Address((value >> 80) & 0xFFFFFFFF), "6to4"
    if ip in _TEREDO:  # the client address, obfuscated by inversion (RFC 4380)
        return ipaddress.IPv4Address(~value & 0xFFFFFFFF), "Teredo"
    return None


def refusal(ip: IPAddress, allowed: Iterable[IPNetwork] = ()) -> str | None:
    """Why ``ip`` must not be connected to, or None when it may be."""
    allowed = list(allowed)
    if any(ip in net for net in allowed):
        return None
    if isinstance(ip, ipaddress.IPv4Address):
        for net, name in _V4:
            if ip in net:
                return f"{name} ({net})"
        return None
    inner = embedded_ipv4(ip)
    if inner is not None:
        v4, form = inner
        if form in ("IPv4-mapped", "NAT64"):
            why = refusal(v4, allowed)
            return f"{form} address carrying {v4}: {why}" if why else None
        return f"{form} address carrying {v4}, a deprecated or local embedding"
    for net6, name in _V6:
        if ip in net6:
            return f"{name} ({net6})"
    if ip not in _GLOBAL_UNICAST_V6:
        return "reserved by the IETF (outside global unicast 2000::/3)"
    return None


def parse_networks(values: Iterable[str]) -> list[IPNetwork]:
    nets: list[IPNetwork] = []
    for value in values:
        nets.append(ipaddress.ip_network(value, strict=False))
    return nets
