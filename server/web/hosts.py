"""The names this collector answers to: the defence against DNS rebinding.

A web page on evil.example can point its own name at the collector's LAN
address (DNS rebinding); the browser then counts the collector as part of
evil.example and lets that page read it, `Origin` and all. Such requests
still say `Host: evil.example:8765`, so the collector refuses a request whose
`Host` is not an IP literal, `localhost`, one of this machine's own names or
a name listed in `listen.allowed_hosts`.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

# A Host header: a DNS name or an IP literal (IPv6 in brackets), then an optional port.
# Anything else (user info, paths, spaces, percent signs) names no host of ours.
_HOST_HEADER = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:[0-9]{1,5})?")


def host_name(host: str | None) -> str | None:
    """The name in a `Host` header value, lowercased and without port or final dot;
    None when the value is not a well-formed host[:port]."""
    if host is None or not _HOST_HEADER.fullmatch(host):
        return None
    name = urlsplit("//" + host).hostname
    return name.rstrip(".") if name else None


def is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def own_names() -> set[str]:
    """This machine's own names. getfqdn() may ask DNS: call it off the event loop."""
    hostname = socket.gethostname()
    # `.local`: the name Avahi (mDNS) gives a Raspberry Pi on the LAN.
    return {"localhost", hostname, hostname + ".local", socket.getfqdn()}


class AllowedHosts:
    """Which `Host` values the collector answers to."""

    def __init__(self, names: Iterable[str]):
        self.names = frozenset(n.lower().rstrip(".") for n in names if n)

    def allows(self, host: str | None) -> bool:
        """Is this `Host` header value (host[:port]) one of ours?"""
        name = host_name(host)
        return name is not None and (is_ip_literal(name) or name in self.names)


def same_origin(origin: str | None, host: str | None, ours: AllowedHosts) -> bool:
    """May a handshake with this `Origin` use the feed of the server at `Host`?

    No Origin: not a browser (curl, a script), which could forge one anyway.
    A browser always sends it, and it must name this very host and port. Both
    are the attacker's choice after a DNS rebinding, so agreeing is not enough:
    the name they agree on must be one of this collector's.
    """
    if origin is None:
        return True
    if not host:
        return False
    try:
        parts = urlsplit(origin)
    except ValueError:  # "http://[": not an origin at all
        return False
    return (parts.scheme in ("http", "https") and ours.allows(parts.netloc)
            and parts.netloc.lower() == host.strip().lower())
