"""InstallationAuth against a canned token endpoint and provider, through httpx.MockTransport."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest

from writejobs.clock import iso
from writejobs.errors import PermanentProviderError, RetryableProviderError
from writejobs.providers.base import WriteItem, WriteOptions
from writejobs.providers.hubspot import HubSpotAdapter
from writejobs.providers.oauth import InstallationAuth, bearer_credentials, oauth2_credentials

NOW = datetime(2025, 3, 6, 22, 9, 0, tzinfo=UTC)
TOKEN_URL = "https://auth.example.com/oauth/token"
API = "https://api.example.com"
CLIENT = oauth2_credentials(token_url=TOKEN_URL, client_id="cid", client_secret="s3cret")


class FakeServers:
    """A token endpoint that answers with `token_answers` in turn (then the last again),
    and a provider that accepts the bearer tokens in `live`."""

    def __init__(self, *token_answers: httpx.Response) -> None:
        self.token_answers = list(token_answers) or [_granted("at-1")]
        self.live: set[str] = {"at-1", "at-2", "static"}
        self.token_forms: list[dict[str, str]] = []
        self.api_tokens: list[str | None] = []
        self._lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            if str(request.url) == TOKEN_URL:
                self.token_forms.append(dict(parse_qsl(request.content.decode())))
                answer = self.token_answers[min(len(self.token_forms), len(self.token_answers)) - 1]
                return httpx.Response(
                    answer.status_code, headers=answer.headers, content=answer.content
                )
            header = request.headers.get("Authorization")
            token = header.removeprefix("Bearer ") if header else None
            self.api_tokens.append(token)
            if token in self.live:
                return httpx.Response(200, json={"ok": True})
            return httpx.Response(401, json={"message": "expired"})


def _granted(token: str, **extra: Any) -> httpx.Response:
    return httpx.Response(200, json={"access_token": token, "expires_in": 1800, **extra})


MakeClient = Callable[..., tuple[httpx.Client, FakeServers, list[dict[str, Any]]]]


@pytest.fixture
def make_client() -> Iterator[MakeClient]:
    """A provider client over `InstallationAuth(credentials)`; the credentials it stored back."""
    clients: list[httpx.Client] = []

    def make(
        credentials: dict[str, Any],
        servers: FakeServers | None = None,
        *,
        clock: Callable[[], datetime] = lambda: NOW,
        load_latest: Callable[[], dict[str, Any] | None] | None = None,
    ) -> tuple[httpx.Client, FakeServers, list[dict[str, Any]]]:
        servers = servers or FakeServers()
        stored: list[dict[str, Any]] = []
        transport = httpx.MockTransport(servers)
        token_client = httpx.Client(transport=transport)
        auth = InstallationAuth(
            credentials,
            provider="hubspot",
            token_client=token_client,
            on_refresh=stored.append,
            load_latest=load_latest,
            clock=clock,
        )
        client = httpx.Client(transport=transport, base_url=API, auth=auth)
        clients.extend([token_client, client])
        return client, servers, stored

    yield make
    for client in clients:
        client.close()


def test_client_credentials_fetch_a_token_before_the_first_call(make_client: MakeClient) -> None:
    client, servers, stored = make_client(CLIENT)

    response = client.post("/things", json={"a": 1})

    assert response.status_code == 200
    assert servers.token_forms == [
        {"grant_type": "client_credentials", "client_id": "cid", "client_secret": "s3cret"}
    ]
    assert servers.api_tokens == ["at-1"]
    assert stored == [
        CLIENT | {"access_token": "at-1", "expires_at": iso(NOW + timedelta(0, 1800))}
    ]


def test_the_cached_token_serves_later_calls(make_client: MakeClient) -> None:
    client, servers, stored = make_client(CLIENT)

    for _ in range(3):
        assert client.get("/things").status_code == 200

    assert len(servers.token_forms) == 1
    assert servers.api_tokens == ["at-1", "at-1", "at-1"]
    assert len(stored) == 1


def test_a_token_expiring_within_a_minute_is_renewed_before_the_call(
    make_client: MakeClient,
) -> None:
    expiring = CLIENT | {"access_token": "at-1", "expires_at": iso(NOW + timedelta(seconds=59))}
    client, servers, _stored = make_client(expiring, FakeServers(_granted("at-2")))

    assert client.get("/things").status_code == 200

    assert len(servers.token_forms) == 1
    assert servers.api_tokens == ["at-2"]


def test_a_401_renews_the_token_once_and_sends_the_call_again(make_client: MakeClient) -> None:
    valid = CLIENT | {"access_token": "revoked", "expires_at": iso(NOW + timedelta(hours=1))}
    client, servers, stored = make_client(valid, FakeServers(_granted("at-2")))

    response = client.post("/things", json={"a": 1})

    assert response.status_code == 200
    assert servers.api_tokens == ["revoked", "at-2"]
    assert len(servers.token_forms) == 1
    assert stored[-1]["access_token"] == "at-2"


def test_a_second_401_is_the_calls_answer_with_no_further_renewal(
    make_client: MakeClient,
) -> None:
    servers = FakeServers(_granted("also-refused"))
    client, servers, _stored = make_client(CLIENT | {"access_token": "revoked"}, servers)

    response = client.get("/things")

    assert response.status_code == 401
    assert servers.api_tokens == ["revoked", "also-refused"]
    assert len(servers.token_forms) == 1


def test_a_rotated_refresh_token_is_stored_and_used_next(make_client: MakeClient) -> None:
    credentials = oauth2_credentials(
        token_url=TOKEN_URL, client_id="cid", client_secret="s3cret", refresh_token="rt-1"
    )
    servers = FakeServers(_granted("at-1", refresh_token="rt-2"), _granted("at-2"))
    client, servers, stored = make_client(credentials, servers)
    assert client.get("/things").status_code == 200
    servers.live.discard("at-1")

    assert client.get("/things").status_code == 200

    assert [f["grant_type"] for f in servers.token_forms] == ["refresh_token", "refresh_token"]
    assert [f["refresh_token"] for f in servers.token_forms] == ["rt-1", "rt-2"]
    assert stored[0]["refresh_token"] == "rt-2"
    # A server that does not rotate leaves the refresh token as it was.
    assert stored[1]["refresh_token"] == "rt-2" and stored[1]["access_token"] == "at-2"


def test_a_token_endpoint_refusing_the_client_is_a_permanent_call_failure(
    make_client: MakeClient,
) -> None:
    refused = httpx.Response(
        400, json={"error": "invalid_client", "error_description": "unknown client"}
    )
    client, _servers, stored = make_client(CLIENT, FakeServers(refused))

    with pytest.raises(PermanentProviderError) as raised:
        client.get("/things")

    assert raised.value.status_code == 401
    assert "400: invalid_client (unknown client)" in raised.value.message
    assert "s3cret" not in raised.value.message
    assert stored == []


def test_a_token_endpoint_503_is_retryable_with_its_retry_after(make_client: MakeClient) -> None:
    unavailable = httpx.Response(503, headers={"Retry-After": "7"}, text="down")
    client, servers, _stored = make_client(CLIENT, FakeServers(unavailable))

    with pytest.raises(RetryableProviderError) as raised:
        client.get("/things")

    assert raised.value.status_code == 503 and raised.value.retry_after_s == 7.0
    assert servers.api_tokens == []


def test_an_unreachable_token_endpoint_is_retryable() -> None:
    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with httpx.Client(transport=httpx.MockTransport(unreachable)) as token_client:
        auth = InstallationAuth(CLIENT, provider="hubspot", token_client=token_client)
        transport = httpx.MockTransport(FakeServers())
        with httpx.Client(base_url=API, auth=auth, transport=transport) as client:
            with pytest.raises(RetryableProviderError, match="unreachable"):
                client.get("/things")


def test_threads_sharing_the_client_fetch_one_token(make_client: MakeClient) -> None:
    client, servers, _stored = make_client(CLIENT)

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda _: client.get("/things").status_code, range(16)))

    assert statuses == [200] * 16
    assert len(servers.token_forms) == 1


def test_a_token_another_process_stored_is_used_instead_of_fetching_one(
    make_client: MakeClient,
) -> None:
    renewed_elsewhere = CLIENT | {"access_token": "at-2"}
    client, servers, stored = make_client(
        CLIENT | {"access_token": "revoked"}, load_latest=lambda: renewed_elsewhere
    )

    assert client.get("/things").status_code == 200

    assert servers.api_tokens == ["revoked", "at-2"]
    assert servers.token_forms == [] and stored == []


@pytest.mark.parametrize(
    "credentials",
    [bearer_credentials("static"), {"access_token": "static"}, {"token": "static"}],
    ids=["bearer", "legacy-access-token", "legacy-token"],
)
def test_bearer_credentials_send_their_token_and_never_call_a_token_endpoint(
    make_client: MakeClient, credentials: dict[str, Any]
) -> None:
    client, servers, _stored = make_client(credentials)
    servers.live.clear()

    assert client.get("/things").status_code == 401

    assert servers.api_tokens == ["static"]
    assert servers.token_forms == []


def test_an_adapter_reports_a_refused_client_as_the_calls_failure(make_client: MakeClient) -> None:
    refused = httpx.Response(401, json={"error": "invalid_client"})
    client, _servers, _stored = make_client(CLIENT, FakeServers(refused))
    adapter = HubSpotAdapter(client, clock=lambda: NOW)

    with pytest.raises(PermanentProviderError) as raised:
        adapter.write_one("contacts", "create", WriteItem({"email": "a@b.co"}), WriteOptions())

    assert raised.value.status_code == 401


def test_a_streamed_body_answered_401_is_not_buffered_to_replay_but_retried_by_the_caller(
    make_client: MakeClient,
) -> None:
    valid = CLIENT | {"access_token": "revoked", "expires_at": iso(NOW + timedelta(hours=1))}
    client, servers, stored = make_client(valid, FakeServers(_granted("at-2")))
    pulled: list[int] = []

    def csv_chunks() -> Iterator[bytes]:
        for i in range(3):
            pulled.append(i)
            yield b"Id,Name\n1,a\n"

    # a streamed upload is sent once; the renewed token is kept for the caller's next try
    with pytest.raises(RetryableProviderError, match="upload must be sent again") as raised:
        client.put("/upload", content=csv_chunks())

    assert raised.value.status_code == 401
    assert servers.api_tokens == ["revoked"]
    assert pulled == [0, 1, 2]
    assert stored[-1]["access_token"] == "at-2"
    assert client.put("/upload", content=csv_chunks()).status_code == 200
    assert servers.api_tokens == ["revoked", "at-2"]
