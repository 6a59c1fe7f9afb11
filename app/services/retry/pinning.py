"""Sending a webhook to the address its URL was checked at: resolve, vet every address, pin."""

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from app.urls import IPAddress, Target, UrlForbidden, UrlPolicy, check_url, pick_address

SEND_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
RESOLVE_TIMEOUT_SECONDS = 5.0

# Every address a host name resolves to now: `resolve_host` in service, a table in tests.
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]


def delivery_client(verify: ssl.SSLContext | bool = True) -> httpx.AsyncClient:
    """The HTTP client deliveries go out on, built for pinned requests (see `pin`).

    No keep-alive: a pinned request's pool key is the address, not the name, so a kept
    connection could carry a request for one name over TLS verified for another name on the
    same address. No redirects: a 3xx could point anywhere, inward included; it counts as a
    failed try. No proxy from the environment: the vetted address is what must be reached.
    `verify` is what TLS trusts: the system's CAs, or a test's own.
    """
    return httpx.AsyncClient(
        verify=verify,
        timeout=SEND_TIMEOUT,
        follow_redirects=False,
        trust_env=False,
        limits=httpx.Limits(max_keepalive_connections=0),
    )


async def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Every address the system resolver gives for `host` now (the loop's getaddrinfo)."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(RESOLVE_TIMEOUT_SECONDS):
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: list[IPAddress] = []
    for *_, sockaddr in infos:
        try:
            address = ipaddress.ip_address(sockaddr[0])
        except ValueError as exc:
            raise UrlForbidden("the host resolves to an address that cannot be read") from exc
        if address not in found:
            found.append(address)
    return found


@dataclass(frozen=True)
class Pinned:
    """A request target fixed to one vetted address."""

    url: httpx.URL
    headers: dict[str, str]
    extensions: dict[str, Any]
    address: IPAddress


def sender_url(url: str, policy: UrlPolicy) -> tuple[Target, httpx.URL]:
    """`check_url`, and the URL as httpx will send it, refused (`UrlForbidden`) unless both
    read the same host: a checker and a sender that disagree are how filters are bypassed."""
    target = check_url(url, policy)
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise UrlForbidden("the URL cannot be read by the sender") from exc
    # `raw_host`: `host` is the Unicode form of a punycode name.
    raw_host = parsed.raw_host.decode("ascii")
    if target.address is None:
        same = raw_host.rstrip(".") == target.host.rstrip(".")
    else:
        try:
            same = ipaddress.ip_address(raw_host) == target.address
        except ValueError:
            same = False
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if not same or parsed.scheme != target.scheme or port != target.port:
        raise UrlForbidden("the URL's host reads differently to the sender")
    return target, parsed


async def pin(url: str, policy: UrlPolicy, resolve: Resolver) -> Pinned:
    """Check `url` again, resolve its host, refuse (`UrlForbidden`) when any address is
    refused, and aim the request at the first address: the connection goes to an address
    that was checked, whatever the name resolves to a moment later (DNS rebinding).

    The URL's host is replaced by the address; the `Host` header keeps the name, and for
    https the `sni_hostname` request extension makes httpcore send the name as SNI and verify
    the certificate against the name (`server_hostname`), so TLS is as strict as unpinned.
    `OSError` / `TimeoutError` from resolving reach the caller: a failed lookup is an outage
    to retry, not a refusal.
    """
    target, parsed = sender_url(url, policy)
    if target.address is not None:
        address = target.address
    else:
        resolved = await resolve(target.host.rstrip("."), target.port)
        if not resolved:
            raise OSError(f"no address for {target.host}")
        address = pick_address(resolved, policy)
    extensions: dict[str, Any] = {}
    if target.scheme == "https" and target.address is None:
        extensions["sni_hostname"] = target.host.rstrip(".")
    return Pinned(
        url=parsed.copy_with(host=str(address)),
        headers={"Host": parsed.netloc.decode("ascii")},
        extensions=extensions,
        address=address,
    )
