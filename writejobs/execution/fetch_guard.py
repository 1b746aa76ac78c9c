"""Fetching a caller's `recordsURL` without letting it reach into our own network.

A bulk write may name its CSV by URL, and the worker fetches it. Fetched naively,
such a URL is a server-side request forgery: `http://169.254.169.254/` reads the
cloud metadata service, `http://10.0.0.5:6379/` talks to Redis. So every hop,
the first URL and each redirect alike, must be `https://` (plain `http://` only
for hosts the operator allows), and every address its host resolves to must be a
public one. The request then goes to the address that was checked, not to the
name again, so a DNS answer that changes between the check and the connection
(DNS rebinding) cannot swap in another address. The body is streamed in chunks
and cut off past `max_bytes`, so a 150 MiB file never sits in memory, and the
whole fetch is cut off past `total_timeout_s`, so a host that drips its bytes
cannot hold a worker's pool process until the operation's deadline.

Hosts in `allowed_http_hosts` (the sandbox on 127.0.0.1 in tests) are trusted
by configuration: any scheme, any address, connected to by name.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

# UnsafeUrl re-exported: cli.webhook_admin imports it from here.
from writejobs.errors import FetchFailed
from writejobs.errors import UnsafeUrl as UnsafeUrl

MAX_REDIRECTS = 5
# Long enough for a slow file host between two chunks; `total_timeout_s` bounds the whole.
DEFAULT_TIMEOUT_S = 30.0
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_RETRYABLE_STATUSES = frozenset({408, 429})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@contextmanager
def open_csv_url(
    url: str,
    *,
    allowed_http_hosts: frozenset[str],
    max_bytes: int,
    total_timeout_s: float = 300.0,
    client: httpx.Client | None = None,
) -> Iterator[Iterator[bytes]]:
    """Open `url` and yield its body as an iterator of byte chunks.

    Follows up to `MAX_REDIRECTS` redirects, checking each hop. Raises `UnsafeUrl`
    before any request goes to a refused scheme or address, and `FetchFailed` when
    the server cannot be reached, answers other than 2xx, or sends more than
    `max_bytes` (its Content-Length up front, the bytes counted while iterating),
    or takes longer than `total_timeout_s` from the first request to the last
    byte (retryable: the host may be faster later). The limit is checked as
    chunks arrive and each read waits at most `DEFAULT_TIMEOUT_S` (or what is
    left of the limit, whichever is less), so a fetch ends by the limit plus
    one read's wait at the latest.

    `client` is for tests; it must not use a proxy (a proxy would resolve the name
    itself, past the address check), so the default client ignores the environment.
    """
    allowed = frozenset(host.lower() for host in allowed_http_hosts)
    own_client = client is None
    read_timeout_s = min(DEFAULT_TIMEOUT_S, total_timeout_s)
    http = client or httpx.Client(timeout=read_timeout_s, trust_env=False)
    ends_at = time.monotonic() + total_timeout_s
    try:
        response = _open_following_redirects(http, url, allowed)
        try:
            _check_status(response)
            length = response.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > max_bytes:
                raise FetchFailed(f"recordsURL is {int(length)} bytes, more than {max_bytes}")
            yield _bounded_chunks(response, max_bytes, ends_at, total_timeout_s)
        finally:
            response.close()
    finally:
        if own_client:
            http.close()


def check_url(url: httpx.URL, allowed_http_hosts: frozenset[str]) -> IPAddress | None:
    """The address to connect to for `url`, once its scheme and addresses pass.

    None for an allowed host (connected to by name). Raises `UnsafeUrl` naming the
    first refused address, and `FetchFailed` when the host does not resolve.
    """
    host = url.host.lower()
    if url.scheme not in ("http", "https") or not host:
        raise UnsafeUrl(f"recordsURL must be an https:// URL, not {_shown(url)}")
    if host in allowed_http_hosts:
        return None
    if url.scheme != "https":
        raise UnsafeUrl(f"recordsURL must start with https://, not {_shown(url)}")
    addresses = _resolve(host, url.port or 443)
    for address in addresses:
        kind = refused_kind(address)
        if kind is not None:
            embedded = embedded_ipv4(address) if isinstance(address, ipaddress.IPv6Address) else []
            via = f" ({', '.join(map(str, embedded))})" if embedded else ""
            raise UnsafeUrl(f"recordsURL resolves to {address}{via}, {kind} address: refused")
    return addresses[0]


# NAT64 (RFC 6052's well-known prefix): the last 32 bits are the IPv4 address reached.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def refused_kind(address: IPAddress) -> str | None:
    """Why `address` is no place to send a request ("a private"), or None if it is public.

    An IPv6 address that embeds an IPv4 one and is routed to it (IPv4-mapped,
    6to4 `2002::/16`, Teredo `2001::/32`, NAT64 `64:ff9b::/96`) is judged by
    the IPv4 address: `2002:7f00:1::` is 127.0.0.1 however it is written.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = embedded_ipv4(address)
        if embedded:
            kinds = [refused_kind(ipv4) for ipv4 in embedded]
            return next((kind for kind in kinds if kind is not None), None)
    checks = (
        # Loopback and link-local first: they are also "private", but less clearly so.
        (address.is_loopback, "a loopback"),
        (address.is_link_local, "a link-local"),
        (address.is_unspecified, "an unspecified"),
        (address.is_multicast, "a multicast"),
        (address.is_private, "a private"),
        (address.is_reserved, "a reserved"),
        # Shared (100.64/10), documentation and benchmark ranges: not the internet either.
        (not address.is_global, "a non-public"),
    )
    return next((kind for refused, kind in checks if refused), None)


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address stands for; empty when it embeds none.

    Teredo carries two (its server and, obfuscated, the client it reaches): both
    must pass.
    """
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        server, client = address.teredo
        return [server, client]
    if address in _NAT64:
        return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    return []


def _open_following_redirects(
    http: httpx.Client, url: str, allowed: frozenset[str]
) -> httpx.Response:
    try:
        current = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise UnsafeUrl(f"recordsURL is not a valid URL: {exc}") from exc
    for _hop in range(MAX_REDIRECTS + 1):
        address = check_url(current, allowed)
        response = _send(http, current, address)
        location = response.headers.get("Location")
        if response.status_code not in _REDIRECT_STATUSES or not location:
            return response
        response.close()
        try:
            # Relative to the URL as the caller wrote it, not the pinned address.
            current = current.join(location)
        except httpx.InvalidURL as exc:
            raise UnsafeUrl(f"recordsURL redirects to an invalid URL: {exc}") from exc
    raise FetchFailed(f"recordsURL redirects more than {MAX_REDIRECTS} times")


def _send(http: httpx.Client, url: httpx.URL, address: IPAddress | None) -> httpx.Response:
    headers: dict[str, str] = {"Accept": "text/csv, */*"}
    extensions: dict[str, Any] = {}
    target = url
    if address is not None:
        # Connect to the checked address; name the host for virtual hosting and TLS.
        target = url.copy_with(host=str(address))
        headers["Host"] = _host_header(url)
        if url.scheme == "https":
            extensions["sni_hostname"] = url.host
    request = http.build_request("GET", target, headers=headers, extensions=extensions)
    try:
        return http.send(request, stream=True, follow_redirects=False)
    except httpx.TransportError as exc:
        raise FetchFailed(f"recordsURL unreachable: {exc}", retryable=True) from exc


def _check_status(response: httpx.Response) -> None:
    if response.is_success:
        return
    status = response.status_code
    retryable = status in _RETRYABLE_STATUSES or status >= 500
    raise FetchFailed(
        f"recordsURL answered HTTP {status} {response.reason_phrase}", retryable=retryable
    )


def _bounded_chunks(
    response: httpx.Response, max_bytes: int, ends_at: float, total_timeout_s: float
) -> Iterator[bytes]:
    received = 0
    try:
        # Decoded bytes are counted, so a small gzip body cannot unpack past the limit.
        for chunk in response.iter_bytes():
            received += len(chunk)
            if received > max_bytes:
                raise FetchFailed(f"recordsURL is larger than {max_bytes} bytes")
            if time.monotonic() > ends_at:
                raise FetchFailed(
                    f"recordsURL took longer than {total_timeout_s:g}s to download "
                    f"({received} bytes by then)",
                    retryable=True,
                )
            yield chunk
    except httpx.TransportError as exc:
        raise FetchFailed(f"recordsURL broke off: {exc}", retryable=True) from exc
    except httpx.DecodingError as exc:
        raise FetchFailed(f"recordsURL sent a body that does not decode: {exc}") from exc


def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        retryable = exc.errno == socket.EAI_AGAIN
        raise FetchFailed(
            f"recordsURL host {host} does not resolve: {exc}", retryable=retryable
        ) from exc
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        # Drop an IPv6 scope ("fe80::1%eth0"): the address itself is what is checked.
        text = str(sockaddr[0]).split("%", 1)[0]
        address = ipaddress.ip_address(text)
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise FetchFailed(f"recordsURL host {host} has no address")
    return addresses


def _host_header(url: httpx.URL) -> str:
    host = f"[{url.host}]" if ":" in url.host else url.host
    return host if url.port is None else f"{host}:{url.port}"


def _shown(url: httpx.URL) -> str:
    """The URL without its query or credentials, which may hold a signature or a password."""
    return str(url.copy_with(query=None, fragment=None, username=None, password=None))
