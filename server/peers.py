"""Who is asking, and over what: the client's IP and scheme, from forwarded headers of trusted proxies only.

A proxy in ``STREAMFAN_TRUSTED_PROXIES`` (loopback by default) may say who its client is
(``X-Forwarded-For``, the rightmost address it did not add itself) and whether it spoke https
(``X-Forwarded-Proto``); anyone else's headers are ignored, so a client cannot choose its own
address for the rate limits, nor make a cookie insecure.

Hand-written rather than aiohttp-remotes' ``XForwardedFiltered`` middleware (the same rule): a
middleware frame stays alive for an event stream's whole life (docs/measurements.md,
no-middleware). These are plain functions the handlers call.
"""

import ipaddress
from functools import lru_cache

from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[Network, ...]:
    """``"127.0.0.0/8, ::1"`` → networks (a ``ValueError`` names the bad entry)."""
    networks = []
    for item in text.split(","):
        item = item.strip()
        if item:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network") from None
    return tuple(networks)


@lru_cache(maxsize=4096)
def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


@lru_cache(maxsize=4096)
def within(address: str, networks: tuple[Network, ...]) -> bool:
    """Cached: every new stream asks three or four times (docs/measurements.md, within-cache)."""
    ip = _address(address)
    return ip is not None and any(ip in network for network in networks)


def client_ip(request: web.BaseRequest, trusted: tuple[Network, ...]) -> str:
    """The client's address: the peer's, or what a chain of trusted proxies says it was."""
    peer = request.remote or ""
    if not within(peer, trusted):
        return peer
    forwarded = [part.strip() for part in ",".join(request.headers.getall("X-Forwarded-For", [])).split(",")]
    for hop in reversed([part for part in forwarded if part]):
        if _address(hop) is None:
            return peer  # a malformed chain: trust none of it
        if not within(hop, trusted):
            return hop
    return peer


def client_scheme(request: web.BaseRequest, trusted: tuple[Network, ...]) -> str:
    """``https`` when the client spoke TLS to us or to a trusted proxy in front of us."""
    if request.secure:
        return "https"
    if within(request.remote or "", trusted):
        proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        if proto in ("http", "https"):
            return proto
    return request.scheme
