"""One signed webhook POST, sent only to an address the SSRF guard lets through.

A destination URL is held to the rule of a bulk write's `recordsURL`
(`fetch_guard`): `https://` to public addresses only, plain `http://` to any
address only for the hosts `WRITEJOBS_FETCH_ALLOWED_HTTP_HOSTS` names. It is
checked when the destination is added and again before every POST, and the
POST goes to the address that was checked (no DNS rebinding), with the host
named for TLS and virtual hosting. Redirects are not followed: a 3xx is a
failed attempt, as Svix treats it.

The body is signed the Standard Webhooks way (`standardwebhooks`): headers
`webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature`
(`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`), so Svix receivers verify
it unchanged.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook

from writejobs.errors import UnsafeUrl
from writejobs.execution.fetch_guard import IPAddress, refused_kind

EXCERPT_BYTES = 1024
USER_AGENT = "writejobs-webhooks/1"


def check_destination_url(url: str, allowed_http_hosts: frozenset[str]) -> IPAddress | None:
    """The address to POST to for `url`; None for an allowed host (connected to by name).

    Raises `UnsafeUrl` naming why the URL is refused: a scheme other than https
    (or http to an allowed host), a host that does not resolve, or any of its
    addresses not public.
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise UnsafeUrl(f"webhook URL is not a valid URL: {exc}") from exc
    host = parsed.host.lower()
    if parsed.scheme not in ("http", "https") or not host:
        raise UnsafeUrl("webhook URL must be an https:// URL")
    if host in allowed_http_hosts:
        return None
    if parsed.scheme != "https":
        raise UnsafeUrl("webhook URL must start with https:// (plain http only for allowed hosts)")
    try:
        infos = socket.getaddrinfo(host, parsed.port or 443, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UnsafeUrl(f"webhook URL host {host} does not resolve: {exc}") from exc
    addresses: list[IPAddress] = []
    for *_rest, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        kind = refused_kind(address)
        if kind is not None:
            raise UnsafeUrl(f"webhook URL resolves to {address}, {kind} address: refused")
        addresses.append(address)
    if not addresses:
        raise UnsafeUrl(f"webhook URL host {host} has no address")
    return addresses[0]


@dataclass(frozen=True, slots=True)
class Sent:
    """How an attempt went: the status (None: no answer), its time, the receiver's words."""

    status_code: int | None
    latency_ms: int
    excerpt: str

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def signed_headers(secret: str, event_id: str, body: str, now: datetime) -> dict[str, str]:
    """The Standard Webhooks headers for `body`."""
    at = now.astimezone(UTC)
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(event_id, at, body),
    }


def post(
    client: httpx.Client,
    url: str,
    body: str,
    headers: dict[str, str],
    *,
    allowed_http_hosts: frozenset[str],
) -> Sent:
    """POST `body` to `url` through the guard; never raises for the receiver's failures."""
    started = time.monotonic()
    try:
        address = check_destination_url(url, allowed_http_hosts)
    except UnsafeUrl as exc:
        return Sent(None, 0, f"refused: {exc}")
    target = httpx.URL(url)
    all_headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        **headers,
    }
    extensions: dict[str, Any] = {}
    if address is not None:
        all_headers["Host"] = _host_header(target)
        if target.scheme == "https":
            extensions["sni_hostname"] = target.host
        target = target.copy_with(host=str(address))
    request = client.build_request(
        "POST", target, content=body.encode(), headers=all_headers, extensions=extensions
    )
    try:
        response = client.send(request, stream=True, follow_redirects=False)
    except httpx.HTTPError as exc:
        return Sent(None, _ms(started), f"{type(exc).__name__}: {exc}"[:EXCERPT_BYTES])
    try:
        excerpt = _excerpt(response)
    finally:
        response.close()
    return Sent(response.status_code, _ms(started), excerpt)


def _excerpt(response: httpx.Response) -> str:
    received = b""
    try:
        for chunk in response.iter_bytes():
            received += chunk
            if len(received) >= EXCERPT_BYTES:
                break
    except httpx.HTTPError:
        pass
    return received[:EXCERPT_BYTES].decode("utf-8", errors="replace")


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _host_header(url: httpx.URL) -> str:
    host = f"[{url.host}]" if ":" in url.host else url.host
    return host if url.port is None else f"{host}:{url.port}"
