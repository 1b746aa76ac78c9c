"""open_csv_url: refused addresses and schemes, redirects re-checked, pinning, limits."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.servers import serve_in_thread
from writejobs.errors import FetchFailed, UnsafeUrl
from writejobs.execution.fetch_guard import open_csv_url, refused_kind

LOOPBACK = frozenset({"127.0.0.1"})
MiB = 1024 * 1024
BIG_BODY = b"".join(f"{i},user{i}@example.com\n".encode() for i in range(60_000))


class RecordingTransport(httpx.BaseTransport):
    """Sends only to loopback, and keeps every request it was asked to send."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self._inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert request.url.host == "127.0.0.1", f"a request left loopback: {request.url}"
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


def files_app() -> Starlette:
    async def big(_request: Request) -> Response:
        return Response(BIG_BODY, media_type="text/csv")

    async def streamed(_request: Request) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            for _ in range(4):
                yield b"x" * MiB

        # No Content-Length: only counting while streaming can stop it.
        return StreamingResponse(body(), media_type="text/csv")

    async def redirect(request: Request) -> RedirectResponse:
        return RedirectResponse(request.query_params["to"], status_code=302)

    async def slow(request: Request) -> StreamingResponse:
        """A host that drips its body: a line every `gap` seconds, after `first` seconds."""
        first = float(request.query_params.get("first", "0"))
        gap = float(request.query_params.get("gap", "0.1"))

        async def body() -> AsyncIterator[bytes]:
            await asyncio.sleep(first)
            for i in range(int(request.query_params.get("lines", "40"))):
                yield f"{i},user{i}@example.com\n".encode()
                await asyncio.sleep(gap)

        return StreamingResponse(body(), media_type="text/csv")

    return Starlette(
        routes=[
            Route("/big.csv", big),
            Route("/streamed.csv", streamed),
            Route("/redirect", redirect),
            Route("/slow.csv", slow),
        ]
    )


@pytest.fixture(scope="module")
def files_url() -> Iterator[str]:
    with serve_in_thread(files_app()) as url:
        yield url


@pytest.fixture
def transport() -> RecordingTransport:
    return RecordingTransport()


@pytest.fixture
def client(transport: RecordingTransport) -> Iterator[httpx.Client]:
    with httpx.Client(transport=transport, timeout=10) as client:
        yield client


def fetch_all(
    url: str,
    client: httpx.Client,
    *,
    max_bytes: int = 10 * MiB,
    allowed: frozenset[str] = LOOPBACK,
) -> list[bytes]:
    with open_csv_url(url, allowed_http_hosts=allowed, max_bytes=max_bytes, client=client) as it:
        return list(it)


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> None:
    real = socket.getaddrinfo

    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in answers:
            return real(host, port, *args, **kwargs)
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in answers[host]
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://127.0.0.1/a.csv", "recordsURL resolves to 127.0.0.1, a loopback address"),
        ("https://10.0.0.1/a.csv", "recordsURL resolves to 10.0.0.1, a private address: refused"),
        ("https://169.254.169.254/latest/meta-data/", "169.254.169.254, a link-local address"),
        ("https://[::1]/a.csv", "recordsURL resolves to ::1, a loopback address"),
        ("https://[fe80::1]/a.csv", "fe80::1, a link-local address"),
        ("https://0.0.0.0/a.csv", "0.0.0.0, an unspecified address"),
        ("https://224.0.0.1/a.csv", "224.0.0.1, a multicast address"),
        ("https://100.64.0.1/a.csv", "100.64.0.1, a non-public address"),
        ("https://[::ffff:10.0.0.1]/a.csv", "a private address"),
        # 6to4, Teredo and NAT64 forms of internal IPv4 addresses
        ("https://[2002:7f00:1::]/a.csv", "2002:7f00:1:: (127.0.0.1), a loopback address"),
        ("https://[2002:a9fe:a9fe::]/a.csv", "(169.254.169.254), a link-local address"),
        ("https://[2001:0:4136:e378:8000:63bf:80ff:fffe]/a.csv", "127.0.0.1), a loopback"),
        ("https://[64:ff9b::a00:1]/a.csv", "64:ff9b::a00:1 (10.0.0.1), a private address"),
        ("http://files.example.com/a.csv", "must start with https://"),
        ("ftp://files.example.com/a.csv", "must be an https:// URL"),
    ],
)
def test_a_refused_url_is_never_requested(
    url: str, message: str, client: httpx.Client, transport: RecordingTransport
) -> None:
    # given a URL to an internal address or over plain http, and no allowed hosts
    # when it is opened, then it is refused before any request is sent
    with pytest.raises(UnsafeUrl, match=re.escape(message)):
        fetch_all(url, client, allowed=frozenset())
    assert transport.requests == []


def test_a_hostname_resolving_to_a_private_address_is_refused(
    monkeypatch: pytest.MonkeyPatch, client: httpx.Client, transport: RecordingTransport
) -> None:
    # given a public-looking name whose DNS answer includes a private address
    fake_dns(monkeypatch, {"files.example.com": ["93.184.216.34", "10.0.0.1"]})
    # when it is opened, then it is refused and nothing is sent
    with pytest.raises(UnsafeUrl, match="resolves to 10.0.0.1, a private address: refused"):
        fetch_all("https://files.example.com/a.csv", client)
    assert transport.requests == []


def test_the_request_goes_to_the_checked_address_under_the_original_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given a name that resolves to a public address
    fake_dns(monkeypatch, {"files.example.com": ["93.184.216.34"]})
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"a,b\n1,2\n")

    # when it is fetched
    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        chunks = fetch_all("https://files.example.com:8443/a.csv?sig=x", client)

    # then the connection is pinned to that address, with the name for Host and TLS
    assert b"".join(chunks) == b"a,b\n1,2\n"
    (request,) = seen
    assert str(request.url) == "https://93.184.216.34:8443/a.csv?sig=x"
    assert request.headers["Host"] == "files.example.com:8443"
    assert request.extensions["sni_hostname"] == "files.example.com"


def test_http_to_an_allowed_host_streams_a_body_larger_than_one_chunk(
    files_url: str, client: httpx.Client
) -> None:
    # given an allowed loopback server with a ~1.3 MiB CSV
    # when it is fetched
    chunks = fetch_all(f"{files_url}/big.csv", client)
    # then it arrives whole, in several chunks
    assert len(chunks) > 1
    assert b"".join(chunks) == BIG_BODY


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("https://169.254.169.254/latest/meta-data/", "169.254.169.254, a link-local address"),
        ("https://10.0.0.1/records.csv", "recordsURL resolves to 10.0.0.1, a private address"),
        ("http://10.0.0.1/records.csv", "must start with https://"),
    ],
)
def test_a_redirect_to_an_internal_address_is_refused(
    target: str, message: str, files_url: str, client: httpx.Client, transport: RecordingTransport
) -> None:
    # given an allowed server that redirects to an internal address
    url = str(httpx.URL(f"{files_url}/redirect", params={"to": target}))
    # when it is fetched, then the redirect is refused
    with pytest.raises(UnsafeUrl, match=message.replace(".", r"\.")):
        fetch_all(url, client)
    # and only the redirecting server was asked
    assert [r.url.path for r in transport.requests] == ["/redirect"]


def test_redirects_between_allowed_urls_are_followed_up_to_five(
    files_url: str, client: httpx.Client
) -> None:
    # given a chain of redirects ending at the CSV
    def chain(hops: int) -> str:
        url = f"{files_url}/big.csv"
        for _ in range(hops):
            url = str(httpx.URL(f"{files_url}/redirect", params={"to": url}))
        return url

    # when it is fetched, then five hops are followed and six are too many
    assert b"".join(fetch_all(chain(5), client)) == BIG_BODY
    with pytest.raises(FetchFailed, match="redirects more than 5 times"):
        fetch_all(chain(6), client)


def test_a_content_length_over_max_bytes_is_refused_before_reading(
    files_url: str, client: httpx.Client
) -> None:
    with pytest.raises(FetchFailed, match=rf"is {len(BIG_BODY)} bytes, more than {MiB}"):
        fetch_all(f"{files_url}/big.csv", client, max_bytes=MiB)


def test_a_streamed_body_is_cut_off_past_max_bytes(files_url: str, client: httpx.Client) -> None:
    # given a 4 MiB body sent without a Content-Length
    received = 0
    # when it is read with a 2 MiB limit
    with pytest.raises(FetchFailed, match=f"larger than {2 * MiB} bytes"):
        with open_csv_url(
            f"{files_url}/streamed.csv",
            allowed_http_hosts=LOOPBACK,
            max_bytes=2 * MiB,
            client=client,
        ) as chunks:
            for chunk in chunks:
                received += len(chunk)
    # then no more than the limit was handed out
    assert received <= 2 * MiB


def test_a_missing_file_fails_and_a_server_error_is_retryable(
    files_url: str, client: httpx.Client
) -> None:
    with pytest.raises(FetchFailed, match="HTTP 404") as missing:
        fetch_all(f"{files_url}/nothing.csv", client)
    assert not missing.value.retryable

    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(503)

    with httpx.Client(transport=httpx.MockTransport(handler)) as failing:
        with pytest.raises(FetchFailed, match="HTTP 503") as unavailable:
            fetch_all(f"{files_url}/a.csv", failing)
    assert unavailable.value.retryable


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("2002:7f00:1::", "a loopback"),
        ("2002:808:808::", None),
        ("64:ff9b::7f00:1", "a loopback"),
        ("64:ff9b::808:808", None),
        # Teredo: server 65.54.227.120, client 127.0.0.1 (stored inverted) / 8.8.8.8
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "a loopback"),
        ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", None),
        ("2001:0:a00:1:8000:63bf:f7f7:f7f7", "a private"),
        ("::ffff:8.8.8.8", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_an_ipv6_address_embedding_ipv4_is_judged_by_the_ipv4_address(
    address: str, kind: str | None
) -> None:
    assert refused_kind(ipaddress.ip_address(address)) == kind


def test_a_host_that_drips_its_body_is_cut_off_at_the_overall_limit(files_url: str) -> None:
    # given a host that keeps sending a line every 0.1 s, for 4 s in all
    received: list[bytes] = []
    # when it is fetched with a 0.5 s limit on the whole download
    with pytest.raises(FetchFailed, match=r"took longer than 0.5s") as cut:
        with open_csv_url(
            f"{files_url}/slow.csv?lines=40&gap=0.1",
            allowed_http_hosts=LOOPBACK,
            max_bytes=MiB,
            total_timeout_s=0.5,
        ) as chunks:
            received.extend(chunks)
    # then the fetch ends part way, and may be tried again later
    assert cut.value.retryable
    assert 0 < len(received) < 40


def test_a_host_that_sends_nothing_is_cut_off_at_the_overall_limit(files_url: str) -> None:
    # given a host that waits 5 s before its first byte (each read may wait 30 s)
    # when the whole fetch may take 0.5 s, then the read itself gives up with it
    # (not 5 s later, when the first byte would come), retryably
    with pytest.raises(FetchFailed, match="broke off") as cut:
        with open_csv_url(
            f"{files_url}/slow.csv?first=5&lines=1",
            allowed_http_hosts=LOOPBACK,
            max_bytes=MiB,
            total_timeout_s=0.5,
        ) as chunks:
            list(chunks)
    assert cut.value.retryable


def test_a_slow_host_within_the_overall_limit_is_read_to_the_end(files_url: str) -> None:
    with open_csv_url(
        f"{files_url}/slow.csv?lines=5&gap=0.05",
        allowed_http_hosts=LOOPBACK,
        max_bytes=MiB,
        total_timeout_s=60,
    ) as chunks:
        body = b"".join(chunks)
    assert body.count(b"\n") == 5
