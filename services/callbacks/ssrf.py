"""Keeping webhook requests away from the platform's own network (SSRF).

A URL's host is resolved and every address checked: loopback, private, link-local, multicast,
reserved, unspecified and other non-global addresses are refused, IPv4-mapped IPv6 included.
The check runs when an endpoint is saved and again on every attempt, inside the HTTP client's
resolver, so the connection goes to the very address that was checked (no DNS rebinding).
Hosts named in a setting are exempt: the sandbox's and the tests' local receivers.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Collection
from urllib.parse import SplitResult, urlsplit, urlunsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

MAX_URL_LENGTH = 2048


class AddressRefused(OSError):
    """The host resolves to an address webhooks may not reach."""


def refusal(address: str) -> str | None:
    """Why ``address`` may not be called, or None when it is a public address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.sixtofour is not None:
            ip = ip.sixtofour
        elif ip.teredo is not None:
            ip = ip.teredo[1]
    for label, flag in (
        ("loopback", ip.is_loopback),
        ("private", ip.is_private),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("unspecified", ip.is_unspecified),
    ):
        if flag:
            return f"{label} address {ip}"
    if not ip.is_global:
        return f"non-public address {ip}"
    return None


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def url_problem(url: str, *, require_https: bool, allowed_hosts: Collection[str]) -> str | None:
    """What is wrong with ``url`` as a webhook target before any lookup, or None."""
    if len(url) > MAX_URL_LENGTH:
        return f"must be at most {MAX_URL_LENGTH} characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "is not a valid URL"
    del port
    if parts.scheme not in ("http", "https"):
        return "must be an http or https URL"
    host = parts.hostname
    if not host:
        return "must name a host"
    if parts.fragment:
        return "must not have a fragment"
    if require_https and parts.scheme != "https" and host not in allowed_hosts:
        return "must use https for a production application"
    if host not in allowed_hosts and is_ip_literal(host):
        why = refusal(host.strip("[]"))
        if why is not None:
            return f"points at a {why}"
    return None


async def resolve_checked(
    host: str, port: int, *, allowed_hosts: Collection[str], resolver: AbstractResolver
) -> list[ResolveResult]:
    """Resolve ``host``; refuse it when any of its addresses is not public."""
    if is_ip_literal(host):
        bare = host.strip("[]")
        if host not in allowed_hosts and bare not in allowed_hosts:
            why = refusal(bare)
            if why is not None:
                raise AddressRefused(f"{host} is a {why}")
        family = socket.AF_INET6 if ":" in bare else socket.AF_INET
        return [ResolveResult(hostname=host, host=bare, port=port, family=family, proto=0, flags=0)]
    try:
        found = await resolver.resolve(host, port, family=socket.AF_UNSPEC)
    except OSError as exc:
        raise AddressRefused(f"{host} does not resolve") from exc
    if host not in allowed_hosts:
        for entry in found:
            why = refusal(entry["host"])
            if why is not None:
                raise AddressRefused(f"{host} resolves to a {why}")
    return found


class CheckedResolver(AbstractResolver):
    """The HTTP client's resolver: it hands the connector only addresses that passed."""

    def __init__(self, allowed_hosts: Collection[str]) -> None:
        self._allowed = frozenset(allowed_hosts)
        self._resolver = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return await resolve_checked(
            host, port, allowed_hosts=self._allowed, resolver=self._resolver
        )

    async def close(self) -> None:
        await self._resolver.close()


def check_ip_literal(url: str, allowed_hosts: Collection[str]) -> None:
    """The connector skips its resolver for an IP literal, so such a URL is checked here."""
    host = urlsplit(url).hostname or ""
    if host in allowed_hosts or not is_ip_literal(host):
        return
    why = refusal(host)
    if why is not None:
        raise AddressRefused(f"{host} is a {why}")


def redact_url(url: str) -> str:
    """The URL without credentials or query values, fit for logs and mail."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a malformed IPv6 host, or a port that is not a number in range
        return "<invalid url>"
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if port is not None:
        netloc += f":{port}"
    query = "&".join(
        f"{pair.split('=', 1)[0]}=redacted" if "=" in pair else "redacted"
        for pair in parts.query.split("&")
        if pair
    )
    return urlunsplit(SplitResult(parts.scheme, netloc, parts.path, query, ""))
