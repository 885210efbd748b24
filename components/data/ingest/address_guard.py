"""Deciding whether a downloader may contact an IP address.

Image-text tables come from the open web, so a URL (or a redirect, or a DNS
answer) may point at the machine itself, the cluster's private network or a
cloud metadata service that hands out credentials. Only globally routable
unicast addresses are contacted, unless an explicit allow-list names the
address (tests and intranet mirrors). The guard checks IP addresses, never
host names: the caller resolves once, checks, and connects to the checked IP.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Instance metadata and platform services. Most are link-local or shared anyway;
# Azure's wireserver and Oracle's metadata sit in ranges Python calls global.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.169.253",  # AWS VPC DNS
        "169.254.0.23",  # Tencent Cloud
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure wireserver
        "192.0.0.192",  # Oracle Cloud
    )
)
SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT, also used by clouds


class BlockedAddress(Exception):
    """An address the downloader refuses to contact; the message names it and says why."""

    def __init__(self, address: str, reason: str):
        super().__init__(f"{address} is {reason}")
        self.address = address
        self.reason = reason


def _parse_address(ip: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(ip.split("%", 1)[0])  # a zone id ("fe80::1%eth0") changes no range
    except ValueError:
        return None


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    # An IPv4-mapped or 6to4 address reaches the IPv4 host it embeds.
    return addr.ipv4_mapped or addr.sixtofour


def _range_reason(addr: IPAddress) -> str | None:
    checks = (
        (addr.is_unspecified, "unspecified"),
        (addr.is_loopback, "loopback"),
        (addr.is_link_local, "link-local"),
        (addr.is_multicast, "multicast"),
        (addr in SHARED_ADDRESS_SPACE, "shared address space (100.64.0.0/10)"),
        (addr.is_private, "private"),
        (addr.is_reserved, "reserved"),
        (getattr(addr, "is_site_local", False), "site-local"),
        (not addr.is_global, "not globally routable"),
    )
    return next((reason for hit, reason in checks if hit), None)


def blocked_reason(ip: str) -> str | None:
    """Why ``ip`` must not be contacted (ignoring any allow-list), or None when it may be."""
    addr = _parse_address(ip)
    if addr is None:
        return "not an IP address"
    if isinstance(addr, ipaddress.IPv6Address):
        inner = _embedded_ipv4(addr)
        if inner is not None:
            reason = blocked_reason(str(inner))
            return f"an IPv6 form of {inner}, which is {reason}" if reason else None
    if addr in METADATA_ADDRESSES:
        return "a cloud metadata address"
    return _range_reason(addr)


def _parse_network(entry: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError as exc:
        raise ValueError(f"allowed address {entry!r} is neither an IP address nor a CIDR network") from exc


@dataclass(frozen=True)
class AddressGuard:
    """Refuses non-public addresses except those the allow-list names.

    ``allowed`` holds IP addresses or CIDR networks, e.g. ``("127.0.0.1", "10.0.0.0/8")``.
    """

    allowed: tuple[str, ...] = ()
    _networks: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if isinstance(self.allowed, str):
            raise TypeError("allowed must be a sequence of addresses or networks, not one string")
        object.__setattr__(self, "allowed", tuple(self.allowed))
        object.__setattr__(self, "_networks", tuple(_parse_network(a) for a in self.allowed))

    def is_allow_listed(self, ip: str) -> bool:
        addr = _parse_address(ip)
        return addr is not None and any(addr in net for net in self._networks)

    def check(self, ip: str) -> None:
        """Return if ``ip`` may be contacted; raise ``BlockedAddress`` otherwise."""
        if self.is_allow_listed(ip):
            return
        reason = blocked_reason(ip)
        if reason is not None:
            raise BlockedAddress(ip, reason)
